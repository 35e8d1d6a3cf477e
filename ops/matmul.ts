/**
 * Matrix products: batched `matmul` with NumPy-broadcast batch dimensions and `linear`
 * (x·Wᵀ + b, the Hugging Face nn.Linear convention), both differentiable.
 *
 * Operands are read in place when their last two dimensions have a unit stride on either side,
 * so a transposed view (`transpose(w)` of a contiguous [N, K] weight) costs no copy: the kernel is
 * specialised to walk such an operand down its columns. Other strided operands are copied first.
 * B (and A) may be f16 (frozen weights); it is widened in the kernel and accumulation is f32.
 * Backward rules use the same transposed reads: dA = dC·Bᵀ, dB = Aᵀ·dC, summed over broadcast
 * batch dimensions (folded into the contraction when B is shared by the whole batch).
 *
 * Two kernel variants form the "matmul" family (see ./variants.ts):
 * - "buffer": shared-memory tiles read from storage buffers, the variant for real GPUs;
 * - "texture": operands packed into rgba32float textures first, preferred on software adapters,
 *   where texture loads are an order of magnitude faster than storage-buffer loads.
 *
 * @module
 */
import { onBackwardStart, record } from "./autograd.ts";
import type { Gpu } from "./device.ts";
import {
  add as binaryAdd,
  assign,
  broadcastShapes,
  ELEMENTWISE_HELPERS,
  fillInto,
  gelu as geluOp,
  map,
  registerOutputPacks,
  UNARY,
} from "./elementwise.ts";
import { dropout as dropoutOp, dropoutThreshold } from "./dropout.ts";
import { RNG_WGSL, seedU32 } from "./random.ts";
import { reduceRaw, sumTo } from "./reduce.ts";
import {
  type Bindable,
  defineKernel,
  grid1d,
  type Kernel,
  linearIndex,
  memoKernel,
  rt,
  type ScratchTexture,
} from "./runtime.ts";
import { contiguousStrides, type DType, empty, numel, type Tensor } from "./tensor.ts";
import { type KernelFamily, kernelFamily, type VariantTiming } from "./variants.ts";

// ---- planning ---------------------------------------------------------------------------------

/**
 * One matrix operand as the kernels read it: element (r, c) of batch entry z sits at
 * `offset + Σ batchStrides[d]·z_d + r·rowStride + c·colStride` of `tensor`'s buffer, where one of
 * the two strides is 1 (`transposed` says which: true when the rows are the unit-stride side).
 */
export interface MatrixOperand {
  /** The tensor whose buffer is bound. */
  readonly tensor: Tensor;
  /** Rows per matrix (M for A, K for B). */
  readonly rows: number;
  /** Columns per matrix (K for A, N for B). */
  readonly cols: number;
  /** Element offset of entry (0, 0) of batch entry 0. */
  readonly offset: number;
  /** Elements between consecutive rows. */
  readonly rowStride: number;
  /** Elements between consecutive columns. */
  readonly colStride: number;
  /** True when the rows side has unit stride (the operand is a transposed view). */
  readonly transposed: boolean;
  /** Element stride per batch dimension of the plan; 0 where this operand is broadcast. */
  readonly batchStrides: readonly number[];
}

/** A matmul ready to dispatch: C[z] = A[z]·B[z] (+ bias) for every batch entry z. */
export interface MatmulPlan {
  /** Rows of A and C. */
  readonly M: number;
  /** Columns of B and C. */
  readonly N: number;
  /** The contracted dimension. */
  readonly K: number;
  /** Batch dimensions after dropping unit dims and merging mergeable ones. */
  readonly batchDims: readonly number[];
  /** Number of batch entries (the product of `batchDims`). */
  readonly batch: number;
  /** The left operand, [M, K] per batch entry. */
  readonly a: MatrixOperand;
  /** The right operand, [K, N] per batch entry. */
  readonly b: MatrixOperand;
  /** [N] contiguous, added to every row; null when absent. */
  readonly bias: Tensor | null;
  /** Contiguous output storage; batch entry z starts at `outOffset + z·M·N`. */
  readonly out: Tensor;
  /** Element offset of C's first entry in `out`. */
  readonly outOffset: number;
  /** A is read by several products in a row (a layer input): variants may keep its staging. */
  readonly reuseA?: boolean;
  /** B likewise (a layer input or gradient read as a transposed right operand). */
  readonly reuseB?: boolean;
  /** C is read next by other products: variants may stage it as they write it. */
  readonly packOut?: boolean;
  /** The product is scaled by this before the bias is added (1: plain). */
  readonly alpha: number;
  /** Add into `out`'s current values instead of overwriting them (C += α·A·B). */
  readonly accumulate: boolean;
  /** Epilogue dropout of the product (+ bias), the mask of `dropout(y, p, {seed, stream})`. */
  readonly dropout?: EpilogueDropout | null;
  /** Added after the dropout: contiguous f32 of the output's shape (a residual). */
  readonly residual?: Tensor | null;
  /** The value is multiplied by GELU′(z) of this contiguous f32 z of the output's shape. */
  readonly geluGrad?: Tensor | null;
  /** Also write gelu(C)'s pack and keep it for the product that reads gelu(C) next. */
  readonly packGelu?: boolean;
}

/** Dropout applied in a matmul's epilogue: the same (seed, stream) mask as ops/dropout.ts. */
export interface EpilogueDropout {
  /** Drop probability in (0, 1). */
  p: number;
  /** The dropout call's seed (as given to `dropout`). */
  seed: number;
  /** The dropout call's stream. */
  stream: number;
  /**
   * Row r of the masked matrix draws the mask of row r·rowStep (default 1): rows gathered from a
   * larger tensor every rowStep rows (an encoder's [CLS] rows, one per T tokens) keep the masks
   * they have there, so computing only those rows gives the same bits.
   */
  rowStep?: number;
}

/** The mask options `dropout` takes for an epilogue dropout's (seed, stream, row step). */
function maskOf(d: EpilogueDropout): { seed: number; stream: number; rowStep?: number } {
  return d.rowStep === undefined
    ? { seed: d.seed, stream: d.stream }
    : { seed: d.seed, stream: d.stream, rowStep: d.rowStep };
}

/** The mask row step of a dropout (1 unless {@link EpilogueDropout.rowStep} says otherwise). */
function rowStepOf(d: EpilogueDropout | undefined | null): number {
  const step = d?.rowStep ?? 1;
  if (!Number.isInteger(step) || step < 1) {
    throw new Error(`dropout: rowStep must be an integer ≥ 1, got ${d?.rowStep}`);
  }
  return step;
}

/** What a variant needs to know to say whether it supports a call. */
export interface MatmulShapes {
  /** Rows of the product (after folding a shared-B batch into rows). */
  M: number;
  /** Columns of the product. */
  N: number;
  /** The contracted dimension. */
  K: number;
  /** Batch entries. */
  batch: number;
  /** Distinct A matrices (A's own batch entries; 1 when broadcast over the batch). */
  aMatrices: number;
  /** Distinct B matrices. */
  bMatrices: number;
  /** Storage type of A. */
  aDtype: DType;
  /** Storage type of B. */
  bDtype: DType;
  /** The product has a dropout or residual epilogue (it cannot be split along K). */
  epilogue?: boolean;
}

/** A matmul implementation: records the dispatches that fill `plan.out`. */
export type MatmulRun = (plan: MatmulPlan) => void;

/** The matmul kernel family; its variants are "buffer" and "texture". */
export const MATMUL: KernelFamily<MatmulShapes, MatmulRun> = kernelFamily("matmul");

const FLOAT: readonly DType[] = ["f32", "f16"];

function checkFloat(t: Tensor, what: string): void {
  if (!FLOAT.includes(t.dtype)) {
    throw new Error(`${what}: ${t} must be f32 or f16, got ${t.dtype}`);
  }
}

/** Raw copy (not recorded) keeping the dtype. */
function copyOf(t: Tensor): Tensor {
  return map([t], "a", { dtype: t.dtype });
}

/** Strides of `t`'s leading dims read as `batchShape` (0 on broadcast or missing dims). */
function batchStridesOf(t: Tensor, batchShape: readonly number[]): number[] {
  const own = t.rank - 2;
  return batchShape.map((d, o) => {
    const i = o - (batchShape.length - own);
    if (i < 0 || (t.shape[i] === 1 && d !== 1)) return 0;
    return t.strides[i];
  });
}

/** Read `t`'s last two dims in place when one side has unit stride; copy otherwise. */
function matrixOf(
  t: Tensor,
  batchShape: readonly number[],
  temps: Tensor[],
): MatrixOperand {
  const rows = t.shape[t.rank - 2], cols = t.shape[t.rank - 1];
  const sr = t.strides[t.rank - 2], sc = t.strides[t.rank - 1];
  const base = { rows, cols, offset: t.offset };
  if (cols === 1 || sc === 1) {
    return {
      ...base,
      tensor: t,
      rowStride: sr,
      colStride: 1,
      transposed: false,
      batchStrides: batchStridesOf(t, batchShape),
    };
  }
  if (rows === 1 || sr === 1) {
    return {
      ...base,
      tensor: t,
      rowStride: 1,
      colStride: sc,
      transposed: true,
      batchStrides: batchStridesOf(t, batchShape),
    };
  }
  const c = copyOf(t);
  temps.push(c);
  return matrixOf(c, batchShape, temps);
}

/**
 * Drop unit batch dims and merge neighbours that step uniformly for A, B and the output, then
 * fold a batch that B is shared across into A's rows (one big product instead of many).
 */
function simplify(
  M: number,
  batchShape: readonly number[],
  a: MatrixOperand,
  b: MatrixOperand,
): { M: number; batchDims: number[]; a: MatrixOperand; b: MatrixOperand } {
  const dims: number[] = [], sa: number[] = [], sb: number[] = [];
  batchShape.forEach((d, i) => {
    if (d === 1) return;
    const last = dims.length - 1;
    if (
      last >= 0 && sa[last] === a.batchStrides[i] * d && sb[last] === b.batchStrides[i] * d
    ) {
      dims[last] *= d;
      sa[last] = a.batchStrides[i];
      sb[last] = b.batchStrides[i];
      return;
    }
    dims.push(d);
    sa.push(a.batchStrides[i]);
    sb.push(b.batchStrides[i]);
  });
  if (dims.length === 1 && sb[0] === 0 && sa[0] === M * a.rowStride) {
    return {
      M: M * dims[0],
      batchDims: [],
      a: { ...a, rows: M * dims[0], batchStrides: [] },
      b: { ...b, batchStrides: [] },
    };
  }
  return { M, batchDims: dims, a: { ...a, batchStrides: sa }, b: { ...b, batchStrides: sb } };
}

/** Number of distinct matrices of an operand (the product of its non-broadcast batch dims). */
function ownMatrices(batchDims: readonly number[], strides: readonly number[]): number {
  return batchDims.reduce((p, d, i) => (strides[i] === 0 ? p : p * d), 1);
}

/** The shapes a variant is chosen by. */
export function matmulShapes(plan: MatmulPlan): MatmulShapes {
  return {
    M: plan.M,
    N: plan.N,
    K: plan.K,
    batch: plan.batch,
    aMatrices: ownMatrices(plan.batchDims, plan.a.batchStrides),
    bMatrices: ownMatrices(plan.batchDims, plan.b.batchStrides),
    aDtype: plan.a.tensor.dtype,
    bDtype: plan.b.tensor.dtype,
    epilogue: !!(plan.dropout || plan.residual || plan.geluGrad),
  };
}

/** The autotuning key of a plan. */
export function matmulKey(s: MatmulShapes): string {
  return `${s.batch}x${s.M}x${s.K}x${s.N}:${s.aDtype}${s.bDtype}${s.epilogue ? ":epilogue" : ""}`;
}

// ---- the storage-buffer variant ---------------------------------------------------------------

/** Tile shape of the storage-buffer kernel. */
export interface BufferTile {
  /** Output rows per workgroup. */
  m: number;
  /** Output columns per workgroup. */
  n: number;
  /** Depth of the K slice staged in workgroup memory per step. */
  k: number;
  /** Output rows per thread. */
  perThreadM: number;
  /** Output columns per thread (a multiple of 4: accumulators are vec4). */
  perThreadN: number;
}

/** The tile the buffer variant uses: 64×64 outputs, 16×16 threads of 4×4, K in slices of 16. */
export const BUFFER_TILE: BufferTile = { m: 64, n: 64, k: 16, perThreadM: 4, perThreadN: 4 };

interface KernelTypes {
  transA: boolean;
  transB: boolean;
  aType: DType;
  bType: DType;
  biasType: DType | null;
  batchRank: number;
  accumulate: boolean;
  epilogue: Epilogue;
}

/** Optional epilogue stages after α·acc + bias: dropout, then a residual add. */
interface Epilogue {
  dropout: boolean;
  /** The dropout's mask rows step (see {@link EpilogueDropout.rowStep}): a `drop_rstep` param. */
  dropRows?: boolean;
  residual: boolean;
  /** Multiply by GELU′(z[index]) first (the GELU's backward before a Linear's dx). */
  geluGrad?: boolean;
}

const NO_EPILOGUE: Epilogue = { dropout: false, residual: false };

/** Bindings, parameters and helpers an epilogue adds to a kernel. */
function epilogueDecls(e: Epilogue): {
  bindings: { name: string; type: "f32"; access: "read" }[];
  params: [string, "u32" | "f32"][];
  helpers: string;
} {
  return {
    bindings: [
      ...(e.residual ? [{ name: "residual", type: "f32" as const, access: "read" as const }] : []),
      ...(e.geluGrad ? [{ name: "gelu_in", type: "f32" as const, access: "read" as const }] : []),
    ],
    params: [
      ...(e.dropout
        ? [["drop_seed", "u32"], ["drop_stream", "u32"], ["drop_threshold", "u32"], [
          "drop_scale",
          "f32",
        ]] as [string, "u32" | "f32"][]
        : []),
      ...(e.dropRows ? [["drop_rstep", "u32"]] as [string, "u32"][] : []),
      ...(e.residual ? [["res_off", "u32"]] as [string, "u32"][] : []),
      ...(e.geluGrad ? [["gelu_off", "u32"]] as [string, "u32"][] : []),
      ...(e.dropout || e.residual || e.geluGrad ? [["e_off", "u32"]] as [string, "u32"][] : []),
    ],
    helpers: (e.dropout ? RNG_WGSL : "") + (e.geluGrad ? geluWgsl() : ""),
  };
}

function epilogueOf(plan: MatmulPlan): Epilogue {
  return {
    dropout: !!plan.dropout,
    ...(rowStepOf(plan.dropout) !== 1 ? { dropRows: true } : {}),
    residual: !!plan.residual,
    ...(plan.geluGrad ? { geluGrad: true } : {}),
  };
}

/** Uniform values of a plan's epilogue. */
function epilogueParams(plan: MatmulPlan): Record<string, number> {
  const p: Record<string, number> = {};
  if (plan.dropout) {
    p.drop_seed = seedU32(plan.dropout.seed);
    p.drop_stream = plan.dropout.stream;
    p.drop_threshold = dropoutThreshold(plan.dropout.p);
    p.drop_scale = 1 / (1 - plan.dropout.p);
    if (rowStepOf(plan.dropout) !== 1) p.drop_rstep = rowStepOf(plan.dropout);
  }
  if (plan.residual) p.res_off = plan.residual.offset;
  if (plan.geluGrad) p.gelu_off = plan.geluGrad.offset;
  if (plan.dropout || plan.residual || plan.geluGrad) p.e_off = plan.out.offset;
  return p;
}

const cached = (key: string, build: () => Kernel): Kernel => memoKernel("matmul", key, build);

/**
 * GELU and its derivative for packs and epilogues, from the elementwise op's own expressions
 * (the gradient's `g` bound to 1: 1 · d is d exactly), so fused and separate ops agree in bits.
 */
const geluWgsl = (): string =>
  `${ELEMENTWISE_HELPERS}
fn gelu_f32(a: f32) -> f32 { return ${UNARY.gelu.fwd}; }
fn gelu_grad_f32(a: f32) -> f32 { let g = 1.0; return ${UNARY.gelu.grad}; }
`;

/** WGSL that walks batch entry `z` into per-operand base offsets `<name>_base`. */
function batchBases(batchRank: number, operands: { name: string; start: string }[]): string {
  const lines = operands.map((o) => `  var ${o.name}_base = ${o.start};`);
  if (batchRank > 0) lines.push("  var rest = z;");
  for (let d = batchRank - 1; d >= 0; d--) {
    lines.push(`  { let c = rest % params.bd${d}; rest = rest / params.bd${d};`);
    for (const o of operands) lines.push(`    ${o.name}_base += c * params.${o.name}_bs${d};`);
    lines.push("  }");
  }
  return lines.join("\n");
}

function batchParams(batchRank: number, names: string[]): [string, "u32"][] {
  const p: [string, "u32"][] = [];
  for (let d = 0; d < batchRank; d++) {
    p.push([`bd${d}`, "u32"]);
    for (const n of names) p.push([`${n}_bs${d}`, "u32"]);
  }
  return p;
}

/** Loads one operand tile into workgroup memory, coalesced along the operand's unit stride. */
function loadTile(o: {
  src: string;
  dst: string;
  rows: number;
  cols: number;
  threads: number;
  transposed: boolean;
  row0: string;
  col0: string;
  rowLimit: string;
  colLimit: string;
  ld: string;
  /** Workgroup-memory index of tile element (r, c). */
  at: (r: string, c: string) => string;
}): string {
  const per = (o.rows * o.cols) / o.threads;
  if (!Number.isInteger(per)) throw new Error("matmul tile: elements must divide among threads");
  const addr = o.transposed ? `gr + gc * ${o.ld}` : `gr * ${o.ld} + gc`;
  return `  for (var e = 0u; e < ${per}u; e++) {
    let flat = e * ${o.threads}u + li;
    let r = ${o.transposed ? `flat % ${o.rows}u` : `flat / ${o.cols}u`};
    let c = ${o.transposed ? `flat / ${o.rows}u` : `flat % ${o.cols}u`};
    let gr = ${o.row0} + r;
    let gc = ${o.col0} + c;
    var v = 0.0;
    if (gr < ${o.rowLimit} && gc < ${o.colLimit}) { v = f32(${o.src}[${o.src}_base + ${addr}]); }
    ${o.dst}[${o.at("r", "c")}] = v;
  }`;
}

/**
 * Store a thread's vec4 accumulators, guarding the ragged edges: the epilogue scales by α, adds
 * the bias, and (accumulating) adds C's current value, so LoRA's s·(h·Bᵀ) lands on the base
 * output without a separate scale and add. α = 1 multiplies exactly, so plain products keep
 * their bits. The thread's bias values are loaded once, before the rows: C is written between
 * the rows, and the compiler cannot know that C's stores leave the bias unchanged.
 *
 * With `pack` (a texture product's packOut) each row also stores its values into the write-only
 * texture P in the packed layout (texel (n4, m)), zero past column N so P reads as a pack of C
 * would: the values C receives, or (`pack.gelu`) gelu of them — computed once for both stores.
 */
function storeLines(
  rowsPerThread: number,
  vec4PerRow: number,
  hasBias: boolean,
  accumulate: boolean,
  epilogue: Epilogue = NO_EPILOGUE,
  pack?: { gelu: boolean },
  vec4C = false,
): string {
  const plain = !accumulate && !epilogue.dropout && !epilogue.residual && !epilogue.geluGrad;
  if (pack && !plain) throw new Error("matmul: a packed copy of C needs a plain store");
  // vec4 stores serve epilogue products only (see vec4Stores): no accumulation, no pack.
  if (vec4C && (accumulate || pack)) throw new Error("matmul: vec4 stores of C store plainly");
  const lines: string[] = [];
  if (hasBias) {
    for (let j = 0; j < vec4PerRow; j++) {
      for (let l = 0; l < 4; l++) {
        lines.push(`  let bias_${j}_${l} = f32(bias[params.bias_off + n_out + ${4 * j + l}u]);`);
      }
    }
  }
  for (let i = 0; i < rowsPerThread; i++) {
    lines.push(`  if (m_out + ${i}u < params.M) {`);
    for (let j = 0; j < vec4PerRow; j++) {
      const lanes: string[] = [];
      for (let l = 0; l < 4; l++) {
        const n = `n_out + ${4 * j + l}u`;
        const bias = hasBias ? ` + bias_${j}_${l}` : "";
        // The element's row-major index in the whole output (row chunks keep it global).
        const index = `(c_base - params.e_off + (m_out + ${i}u) * params.N + ${n})`;
        const at = `C[c_base + (m_out + ${i}u) * params.N + ${n}]`;
        const prior = accumulate ? `${at} + ` : "";
        let value = `params.alpha * acc[${i * vec4PerRow + j}][${l}]${bias}`;
        if (epilogue.geluGrad) {
          value = `(${value}) * gelu_grad_f32(gelu_in[params.gelu_off + ${index}])`;
        }
        if (epilogue.dropout) {
          // The mask's index: the element's, or with row steps that of row r·step of the whole.
          const maskIndex = epilogue.dropRows
            ? `(((c_base - params.e_off) / params.N + m_out + ${i}u) * params.drop_rstep * ` +
              `params.N + ${n})`
            : index;
          value = `select(0.0, (${value}) * params.drop_scale, ` +
            `rng_u32(params.drop_seed, params.drop_stream, ${maskIndex}) >= params.drop_threshold)`;
        }
        if (epilogue.residual) value = `${value} + residual[params.res_off + ${index}]`;
        if (vec4C) {
          const v = `v_${i}_${j}_${l}`;
          lines.push(`    let ${v} = ${value};`);
          lanes.push(v);
          continue;
        }
        if (pack) {
          const v = `v_${i}_${j}_${l}`;
          lines.push(`    let ${v} = ${value};`);
          lines.push(`    if (${n} < params.N) { ${at} = ${v}; }`);
          lanes.push(`select(0.0, ${pack.gelu ? `gelu_f32(${v})` : v}, ${n} < params.N)`);
          continue;
        }
        // Accumulating adds the whole epilogue value: C + (dropped + residual).
        const sum = accumulate && epilogue.residual ? `${prior}(${value})` : `${prior}${value}`;
        lines.push(`    if (${n} < params.N) { ${at} = ${sum}; }`);
      }
      if (vec4C) {
        // C bound as vec4s (N and C's offset multiples of 4): one store per four columns.
        const at = `C[(c_base + (m_out + ${i}u) * params.N + n_out) / 4u + ${j}u]`;
        lines.push(`    if (n_out + ${4 * j}u < params.N) { ${at} = vec4f(${lanes.join(", ")}); }`);
        continue;
      }
      if (pack) {
        lines.push(
          `    textureStore(P, vec2u(n4 + ${j}u, m_out + ${i}u), vec4f(${lanes.join(", ")}));`,
        );
      }
    }
    lines.push("  }");
  }
  return lines.join("\n");
}

function biasBinding(t: DType | null): { name: string; type: DType; access: "read" }[] {
  return t ? [{ name: "bias", type: t, access: "read" }] : [];
}

/** The tiled storage-buffer kernel for one combination of operand layouts and dtypes. */
function bufferKernel(tile: BufferTile, t: KernelTypes): Kernel {
  return cached(`buffer|${JSON.stringify(tile)}|${JSON.stringify(t)}`, () => {
    const { m: TM, n: TN, k: TK, perThreadM: PM, perThreadN: PN } = tile;
    if (PN % 4 !== 0 || TM % PM !== 0 || TN % PN !== 0) {
      throw new Error(`matmul: invalid buffer tile ${JSON.stringify(tile)}`);
    }
    const TX = TN / PN, TY = TM / PM, threads = TX * TY, V = PN / 4;
    const inner: string[] = [];
    for (let j = 0; j < V; j++) {
      const b = [0, 1, 2, 3].map((l) => `Bs[kk * ${TN}u + tx * ${PN}u + ${4 * j + l}u]`);
      inner.push(`      let b${j} = vec4f(${b.join(", ")});`);
    }
    for (let i = 0; i < PM; i++) {
      inner.push(`      { let a = As[kk * ${TM}u + ty * ${PM}u + ${i}u];`);
      for (let j = 0; j < V; j++) inner.push(`        acc[${i * V + j}] += a * b${j};`);
      inner.push("      }");
    }
    return defineKernel({
      name: `matmul_buffer${t.transA ? "_tA" : ""}${t.transB ? "_tB" : ""}`,
      bindings: [
        { name: "A", type: t.aType, access: "read" },
        { name: "B", type: t.bType, access: "read" },
        ...biasBinding(t.biasType),
        ...epilogueDecls(t.epilogue).bindings,
        { name: "C", type: "f32", access: "read_write" },
      ],
      params: [
        ["M", "u32"],
        ["N", "u32"],
        ["K", "u32"],
        ["a_off", "u32"],
        ["b_off", "u32"],
        ["lda", "u32"],
        ["ldb", "u32"],
        ["c_off", "u32"],
        ["bias_off", "u32"],
        ["batch_base", "u32"],
        ["alpha", "f32"],
        ...epilogueDecls(t.epilogue).params,
        ...batchParams(t.batchRank, ["A", "B"]),
      ],
      source: /* wgsl */ `${epilogueDecls(t.epilogue).helpers}
// Tiled matmul from storage buffers. Workgroup (${TX}, ${TY}) computes a ${TM}×${TN} tile of C;
// thread (tx, ty) owns rows ty·${PM}…+${PM - 1} and columns tx·${PN}…+${PN - 1} as vec4
// accumulators. Each step stages a ${TM}×${TK} slice of A and a ${TK}×${TN} slice of B in
// workgroup memory, both K-major, loaded along each operand's unit stride (a transposed operand
// is loaded down its columns). Out-of-range elements load as 0; stores are guarded.
var<workgroup> As: array<f32, ${TK * TM}>;
var<workgroup> Bs: array<f32, ${TK * TN}>;
@compute @workgroup_size(${TX}, ${TY})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let z = wid.z + params.batch_base;
${
        batchBases(t.batchRank, [{ name: "A", start: "params.a_off" }, {
          name: "B",
          start: "params.b_off",
        }])
      }
  let c_base = params.c_off + z * params.M * params.N;
  let m0 = wid.y * ${TM}u;
  let n0 = wid.x * ${TN}u;
  let tx = lid.x;
  let ty = lid.y;
  var acc: array<vec4f, ${PM * V}>;
  for (var k0 = 0u; k0 < params.K; k0 += ${TK}u) {
${
        loadTile({
          src: "A",
          dst: "As",
          rows: TM,
          cols: TK,
          threads,
          transposed: t.transA,
          row0: "m0",
          col0: "k0",
          rowLimit: "params.M",
          colLimit: "params.K",
          ld: "params.lda",
          at: (r, c) => `${c} * ${TM}u + ${r}`,
        })
      }
${
        loadTile({
          src: "B",
          dst: "Bs",
          rows: TK,
          cols: TN,
          threads,
          transposed: t.transB,
          row0: "k0",
          col0: "n0",
          rowLimit: "params.K",
          colLimit: "params.N",
          ld: "params.ldb",
          at: (r, c) => `${r} * ${TN}u + ${c}`,
        })
      }
    workgroupBarrier();
    for (var kk = 0u; kk < ${TK}u; kk++) {
${inner.join("\n")}
    }
    workgroupBarrier();
  }
  let m_out = m0 + ty * ${PM}u;
  let n_out = n0 + tx * ${PN}u;
${storeLines(PM, V, t.biasType !== null, t.accumulate, t.epilogue)}
}`,
    });
  });
}

function kernelTypes(plan: MatmulPlan): KernelTypes {
  return {
    transA: plan.a.transposed,
    transB: plan.b.transposed,
    aType: plan.a.tensor.dtype,
    bType: plan.b.tensor.dtype,
    biasType: plan.bias?.dtype ?? null,
    batchRank: plan.batchDims.length,
    accumulate: plan.accumulate,
    epilogue: epilogueOf(plan),
  };
}

/** The leading dimension: the stride of the operand's non-unit side. */
function ld(o: MatrixOperand): number {
  return o.transposed ? o.colStride : o.rowStride;
}

const MAX_GRID = 65535;

/** Dispatch `kernel` once per chunk of at most 65535 batch entries (grid z). */
function dispatchBatches(
  kernel: Kernel,
  bindings: readonly Bindable[],
  params: Record<string, number>,
  gx: number,
  gy: number,
  batch: number,
): void {
  for (let base = 0; base < batch; base += MAX_GRID) {
    rt().dispatch(kernel, bindings, { ...params, batch_base: base }, [
      gx,
      gy,
      Math.min(MAX_GRID, batch - base),
    ]);
  }
}

function commonParams(plan: MatmulPlan): Record<string, number> {
  const p: Record<string, number> = {
    M: plan.M,
    N: plan.N,
    K: plan.K,
    c_off: plan.outOffset,
    bias_off: plan.bias?.offset ?? 0,
    alpha: plan.alpha,
    ...epilogueParams(plan),
  };
  plan.batchDims.forEach((d, i) => (p[`bd${i}`] = d));
  return p;
}

function runBuffer(plan: MatmulPlan, tile: BufferTile = BUFFER_TILE): void {
  const kernel = bufferKernel(tile, kernelTypes(plan));
  const p = commonParams(plan);
  p.a_off = plan.a.offset;
  p.b_off = plan.b.offset;
  p.lda = ld(plan.a);
  p.ldb = ld(plan.b);
  plan.batchDims.forEach((_, i) => {
    p[`A_bs${i}`] = plan.a.batchStrides[i];
    p[`B_bs${i}`] = plan.b.batchStrides[i];
  });
  const bindings = [
    plan.a.tensor,
    plan.b.tensor,
    ...(plan.bias ? [plan.bias] : []),
    ...(plan.residual ? [plan.residual] : []),
    ...(plan.geluGrad ? [plan.geluGrad] : []),
    plan.out,
  ];
  dispatchBatches(
    kernel,
    bindings,
    p,
    Math.ceil(plan.N / tile.n),
    Math.ceil(plan.M / tile.m),
    plan.batch,
  );
}

MATMUL.register({
  name: "buffer",
  preference: () => 1,
  supports: () => true,
  run: (plan) => runBuffer(plan),
});

// ---- the texture variant ----------------------------------------------------------------------

/** Work split of the texture kernel. */
export interface TextureTile {
  /** Output rows per thread. */
  rowsPerThread: number;
  /** Output vec4 columns per thread. */
  vec4PerThread: number;
  /** Workgroup width in threads. */
  wgX: number;
  /** Workgroup height in threads. */
  wgY: number;
}

/** Wide tile for wide outputs: 8 rows × 16 columns per thread, 8×8 threads. */
export const TEXTURE_TILE: TextureTile = { rowsPerThread: 8, vec4PerThread: 4, wgX: 8, wgY: 8 };
/** Narrow tile for outputs of at most 64 columns. */
export const TEXTURE_TILE_NARROW: TextureTile = {
  rowsPerThread: 8,
  vec4PerThread: 1,
  wgX: 8,
  wgY: 8,
};

/**
 * Pack kernel: texel (x, y) of an rgba32float texture receives elements (r, 4x…4x+3) of matrix
 * `y / rows_padded` (the matrices stacked down the texture), row r = y % rows_padded; rows
 * r ≥ rows and columns ≥ cols are written as 0 so the product needs no K guard. Grid z walks the
 * matrices: entry `z_base + gid.z` decomposed over the packed batch dims.
 */
function packKernel(
  srcType: DType,
  packRank: number,
  vec4: boolean,
  dropout = false,
  gelu = false,
  dropRows = false,
): Kernel {
  if (dropout && gelu) throw new Error("matmul: a pack applies dropout or GELU, not both");
  const key = `pack|${srcType}|${packRank}|${vec4}|${dropout}${gelu ? "|gelu" : ""}${
    dropRows ? "|rows" : ""
  }`;
  return cached(key, () => {
    const params: [string, "u32" | "f32"][] = [
      ["rows", "u32"],
      ["rows_padded", "u32"],
      ["cols", "u32"],
      ["texels", "u32"],
      ["off", "u32"],
      ["sr", "u32"],
      ["sc", "u32"],
      ["z_base", "u32"],
    ];
    const walk: string[] = ["  var base = params.off;", "  var rest = params.z_base + gid.z;"];
    for (let d = packRank - 1; d >= 0; d--) {
      params.push([`pd${d}`, "u32"], [`ps${d}`, "u32"]);
      walk.push(
        `  base += (rest % params.pd${d}) * params.ps${d}; rest = rest / params.pd${d};`,
      );
    }
    if (dropout) {
      params.push(["drop_seed", "u32"], ["drop_stream", "u32"], ["drop_threshold", "u32"], [
        "drop_scale",
        "f32",
      ]);
      if (dropRows) params.push(["drop_rstep", "u32"]);
    }
    // Dropout (a single matrix): element (r, c) is kept by the mask `dropout` draws for index
    // r·cols + c, the element's row-major index in the operand (with row steps: that of row
    // r·step), and scaled as it scales.
    const maskRow = dropRows ? "r * params.drop_rstep" : "r";
    const keep = (v: string, c: string) =>
      `select(0.0, ${v} * params.drop_scale, ` +
      `rng_u32(params.drop_seed, params.drop_stream, ${maskRow} * params.cols + ${c}) >= ` +
      "params.drop_threshold)";
    const vecLoad = dropout
      ? `    let s = src[(base + r * params.sr) / 4u + x];
    for (var j = 0u; j < 4u; j++) { v[j] = ${keep("s[j]", "4u * x + j")}; }`
      : gelu
      ? `    let s = src[(base + r * params.sr) / 4u + x];
    for (var j = 0u; j < 4u; j++) { v[j] = gelu_f32(s[j]); }`
      : "    v = src[(base + r * params.sr) / 4u + x];";
    const loaded = `f32(src[base + r * params.sr + c * params.sc])`;
    // GELU (a Linear reading gelu(z)): the elementwise op's own expression, so the pack holds the
    // bits gelu(z) would.
    const element = gelu ? `gelu_f32(${loaded})` : loaded;
    return defineKernel({
      name: dropout ? "matmul_pack_dropout" : gelu ? "matmul_pack_gelu" : "matmul_pack",
      bindings: [
        { name: "src", type: vec4 ? "vec4f" : srcType, access: "read" },
        { name: "dst", texture: "rgba32float", access: "write" },
      ],
      params,
      source: /* wgsl */ `${dropout ? RNG_WGSL : ""}${gelu ? geluWgsl() : ""}
// One thread per texel, threads walking each row's texels in order (64 per workgroup, matrix
// entry in grid z): on software adapters neighbouring lanes then read neighbouring elements,
// about twice as fast as 8×8 tiles. The vec4 form (a row-major f32 operand whose rows, columns
// and offsets are multiples of 4) loads each texel in one read.
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(64)};
  let x = i % params.texels;
  let r = i / params.texels;
  if (r >= params.rows_padded) { return; }
${walk.join("\n")}
  var v = vec4f(0.0);
  if (r < params.rows) {
${
        vec4 ? vecLoad : `    for (var j = 0u; j < 4u; j++) {
      let c = 4u * x + j;
      if (c < params.cols) { v[j] = ${dropout ? keep(element, "c") : element}; }
    }`
      }
  }
  textureStore(dst, vec2u(x, gid.z * params.rows_padded + r), v);
}`,
    });
  });
}

/** Compile-time choices of the texture product kernel besides its tile. */
interface TextureKernelOptions {
  biasType: DType | null;
  batchRank: number;
  accumulate: boolean;
  epilogue: Epilogue;
  /** TA holds Aᵀ packed (texel (m4, k) = A[4m4…4m4+3, k]): a weight gradient's gᵀ. */
  aTransposed: boolean;
  /** TB holds Bᵀ packed (texel (k4, n) = B[4k4…4k4+3, n]): a weight W read as Wᵀ. */
  bTransposed: boolean;
  /** Also store C into the write-only texture P in the packed layout (texel (n4, m)). */
  packOut: boolean;
  /** P receives gelu of C's values (bias included) instead of C's. */
  packGelu?: boolean;
  /** C is bound as vec4s and stored four columns at a time (N and C's offset multiples of 4). */
  vec4C?: boolean;
}

/** The product kernel reading A and B from packed textures. */
function textureKernel(tile: TextureTile, o: TextureKernelOptions): Kernel {
  const key = `texture|${JSON.stringify(tile)}|${JSON.stringify(o)}`;
  return cached(key, () => {
    const { rowsPerThread: RM, vec4PerThread: CN, wgX, wgY } = tile;
    const { biasType, batchRank, accumulate, epilogue, aTransposed, bTransposed } = o;
    if (aTransposed && RM % 4 !== 0) throw new Error("matmul: Aᵀ texels need rows in fours");
    const body: string[] = [];
    if (aTransposed) {
      // TA holds Aᵀ packed: texel (m4, k) = A[4m4…4m4+3, k]. Four k's of four rows per load.
      for (let q = 0; q < RM / 4; q++) {
        for (let j = 0; j < 4; j++) {
          body.push(
            `    let t${q}_${j} = textureLoad(TA, vec2u(m_out / 4u + ${q}u, 4u * k4 + ${j}u));`,
          );
        }
      }
    }
    for (let c = 0; c < CN; c++) {
      if (bTransposed) {
        // TB holds Bᵀ packed: texel (k4, n) = B[4k4…4k4+3, n]. Four k's of one column per load,
        // regrouped into the four k rows of four columns the plain layout would have loaded.
        for (let j = 0; j < 4; j++) {
          body.push(
            `    let u${c}_${j} = textureLoad(TB, vec2u(k4, 4u * (n4 + ${c}u) + ${j}u));`,
          );
        }
        for (let j = 0; j < 4; j++) {
          const l = "xyzw"[j];
          body.push(
            `    let b${c}_${j} = vec4f(u${c}_0.${l}, u${c}_1.${l}, u${c}_2.${l}, u${c}_3.${l});`,
          );
        }
        continue;
      }
      for (let j = 0; j < 4; j++) {
        body.push(
          `    let b${c}_${j} = textureLoad(TB, vec2u(n4 + ${c}u, B_base + 4u * k4 + ${j}u));`,
        );
      }
    }
    for (let r = 0; r < RM; r++) {
      const q = Math.floor(r / 4), l = "xyzw"[r % 4];
      body.push(
        aTransposed
          ? `    { let a = vec4f(t${q}_0.${l}, t${q}_1.${l}, t${q}_2.${l}, t${q}_3.${l});`
          : `    { let a = textureLoad(TA, vec2u(k4, A_base + m_out + ${r}u));`,
      );
      for (let c = 0; c < CN; c++) {
        body.push(
          `      acc[${r * CN + c}] += a.x * b${c}_0 + a.y * b${c}_1 + a.z * b${c}_2 + ` +
            `a.w * b${c}_3;`,
        );
      }
      body.push("    }");
    }
    const name = `matmul_texture${aTransposed ? "_tA" : ""}${bTransposed ? "_tB" : ""}`;
    return defineKernel({
      name,
      bindings: [
        { name: "TA", texture: "rgba32float", access: "read" },
        { name: "TB", texture: "rgba32float", access: "read" },
        ...biasBinding(biasType),
        ...epilogueDecls(epilogue).bindings,
        { name: "C", type: o.vec4C ? "vec4f" : "f32", access: "read_write" },
        ...(o.packOut ? [{ name: "P", texture: "rgba32float", access: "write" } as const] : []),
      ],
      params: [
        ["M", "u32"],
        ["N", "u32"],
        ["K", "u32"],
        ["c_off", "u32"],
        ["bias_off", "u32"],
        ["batch_base", "u32"],
        ["alpha", "f32"],
        ...epilogueDecls(epilogue).params,
        ...batchParams(batchRank, ["A", "B"]),
      ],
      source: /* wgsl */ `${epilogueDecls(epilogue).helpers}${
        o.packGelu && !epilogue.geluGrad ? geluWgsl() : ""
      }
// Matmul from packed textures: TA texel (k4, row) holds A[row, 4k4…4k4+3], TB texel (n4, k)
// holds B[k, 4n4…4n4+3] (or, transposed packs, the layouts named above); batch entries are
// stacked down the rows. Thread (x, y) owns ${RM} rows × ${CN} vec4 columns of C and reads its
// operands straight from the textures (no workgroup memory: on software rasterisers texture
// loads are the fast path and barriers are not). Rows and columns past the edge read harmless
// texels whose results are never stored.
@compute @workgroup_size(${wgX}, ${wgY})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let z = wid.z + params.batch_base;
  let n4 = gid.x * ${CN}u;
  let m_out = gid.y * ${RM}u;
  let n_out = 4u * n4;
  if (m_out >= params.M || n_out >= params.N) { return; }
${batchBases(batchRank, [{ name: "A", start: "0u" }, { name: "B", start: "0u" }])}
  let c_base = params.c_off + z * params.M * params.N;
  var acc: array<vec4f, ${RM * CN}>;
  let k4_end = (params.K + 3u) / 4u;
  for (var k4 = 0u; k4 < k4_end; k4++) {
${body.join("\n")}
  }
${
        storeLines(
          RM,
          CN,
          biasType !== null,
          accumulate,
          epilogue,
          o.packOut ? { gelu: !!o.packGelu } : undefined,
          o.vec4C ?? false,
        )
      }
}`,
    });
  });
}

/** Texture rows per batch dim of an operand's own (packed, contiguous) batch. */
function packedRowStrides(
  batchDims: readonly number[],
  strides: readonly number[],
  rowsPerMatrix: number,
): number[] {
  const out = new Array<number>(batchDims.length).fill(0);
  let acc = rowsPerMatrix;
  for (let d = batchDims.length - 1; d >= 0; d--) {
    if (strides[d] === 0) continue;
    out[d] = acc;
    acc *= batchDims[d];
  }
  return out;
}

/** Batch dims a pack walks: each with its size and the operand's element stride. */
interface PackDim {
  d: number;
  s: number;
}

// ---- packed-operand cache --------------------------------------------------------------------

interface PackEntry {
  buffer: GPUBuffer;
  key: string;
  version: number;
  tex: ScratchTexture;
  bytes: number;
  pinned: boolean;
  /** Written by the tensor's producer (keepOutputPack), not by a product that read it. */
  produced?: boolean;
  /** Kept for a later reader in another layout (see {@link keepTexture}). */
  kept?: boolean;
}

/**
 * Packed textures kept for reuse, keyed by (buffer, layout) and valid while the buffer's write
 * version is unchanged. Two kinds: frozen weights ("weights", no grad) are pinned, so each is
 * packed once per run in each layout it is read in (a merge or any in-place write bumps the
 * version, a dispose drops the entry); a layer input that several products read in a row (q, k,
 * v and LoRA's A all read x) is kept in a small LRU, so it is packed once for all of them. Held
 * textures count as "scratch" in the memory report like any other.
 */
class PackCache {
  #byBuffer = new Map<GPUBuffer, PackEntry[]>();
  #transient: PackEntry[] = [];
  #pinnedBytes = 0;
  #transientBytes = 0;
  #kept: PackEntry[] = [];
  #keptBytes = 0;
  #hooked: unknown = null;
  /**
   * Most bytes of {@link keepTexture}'s textures held (attention's k and v packs for dQ's
   * backward, LoRA's dropped pack of x for dA, gelu(z)'s pack for output.dense); beyond it the
   * oldest are dropped and made again by their reader.
   */
  keptBudget = 8 * 2 ** 20;
  /** Most bytes of frozen-weight textures held; weights beyond it are packed per call. */
  pinnedBudget = 64 * 2 ** 20;
  /**
   * Layer-input textures held, least recently used dropped first. Two cover the reuse patterns
   * (q, k and v reading x; LoRA's backward reading g twice) while bounding the extra memory to
   * two activations.
   */
  transientEntries = 2;
  /**
   * Entries of at most this many bytes (LoRA's rank-r h = xd·Aᵀ, whose pack for h·Bᵀ in forward
   * is B's operand of dB = gᵀ·h in backward) are kept apart, up to `smallEntries` of them, so
   * they survive from forward to backward at a cost of kilobytes.
   */
  smallBytes = 64 * 1024;
  /** How many small layer-input textures are held. */
  smallEntries = 64;

  #hook(): void {
    const r = rt();
    if (this.#hooked === r) return;
    this.#hooked = r;
    r.onBufferReleased((b) => this.drop(b));
    r.onClearTextures(() => this.clear());
  }

  get(buffer: GPUBuffer, key: string): ScratchTexture | null {
    const list = this.#byBuffer.get(buffer);
    if (!list) return null;
    const version = rt().writeVersion(buffer);
    if (list.some((e) => e.version !== version)) {
      this.drop(buffer);
      return null;
    }
    const e = list.find((x) => x.key === key);
    if (!e) return null;
    if (!e.pinned && !e.kept) {
      this.#transient.splice(this.#transient.indexOf(e), 1);
      this.#transient.push(e);
    }
    return e.tex;
  }

  /** Whether a frozen-weight texture of `bytes` more would be kept (within the budget). */
  fitsPinned(bytes: number): boolean {
    return this.#pinnedBytes + bytes <= this.pinnedBudget;
  }

  /** Keep `tex` for (buffer, key); false when over budget (the caller releases it). */
  put(
    buffer: GPUBuffer,
    key: string,
    tex: ScratchTexture,
    pinned: boolean,
    produced = false,
  ): boolean {
    const bytes = tex.width * tex.height * 16;
    if (pinned && !this.fitsPinned(bytes)) return false;
    const e = this.#add({ buffer, key, tex, bytes, pinned, produced });
    if (pinned) this.#pinnedBytes += bytes;
    else {
      this.#transient.push(e);
      this.#transientBytes += bytes;
      const small = (x: PackEntry) => x.bytes <= this.smallBytes;
      const isSmall = small(e);
      const limit = isSmall ? this.smallEntries : this.transientEntries;
      const same = this.#transient.filter((x) => small(x) === isSmall);
      for (let i = 0; i < same.length - limit; i++) this.#remove(same[i]);
    }
    return true;
  }

  /** Keep `tex` for (buffer, key) in the kept class (see {@link keepTexture}). */
  keep(buffer: GPUBuffer, key: string, tex: ScratchTexture): boolean {
    const bytes = tex.width * tex.height * 16;
    if (bytes > this.keptBudget) return false;
    const e = this.#add({ buffer, key, tex, bytes, pinned: false, kept: true });
    this.#kept.push(e);
    this.#keptBytes += bytes;
    while (this.#keptBytes > this.keptBudget) this.#remove(this.#kept[0]);
    return true;
  }

  /** Take (buffer, key)'s entry out of the cache: its texture is the caller's to release. */
  take(buffer: GPUBuffer, key: string): ScratchTexture | null {
    const tex = this.get(buffer, key);
    if (!tex) return null;
    const e = this.#byBuffer.get(buffer)!.find((x) => x.key === key)!;
    this.#remove(e, false);
    return tex;
  }

  /** A new entry for `fields` (at the buffer's current write version), listed under its buffer. */
  #add(fields: Omit<PackEntry, "version">): PackEntry {
    this.#hook();
    const e: PackEntry = { ...fields, version: rt().writeVersion(fields.buffer) };
    const list = this.#byBuffer.get(e.buffer) ?? [];
    list.push(e);
    this.#byBuffer.set(e.buffer, list);
    return e;
  }

  #remove(e: PackEntry, release = true): void {
    const list = this.#byBuffer.get(e.buffer)!;
    list.splice(list.indexOf(e), 1);
    if (list.length === 0) this.#byBuffer.delete(e.buffer);
    if (e.pinned) this.#pinnedBytes -= e.bytes;
    else if (e.kept) {
      this.#kept.splice(this.#kept.indexOf(e), 1);
      this.#keptBytes -= e.bytes;
    } else {
      this.#transient.splice(this.#transient.indexOf(e), 1);
      this.#transientBytes -= e.bytes;
    }
    if (release) rt().textures.release(e.tex);
  }

  /**
   * Hand a producer's pack of (buffer, key) over to a product that reads it once: the entry
   * leaves the cache (its texture is the caller's to release), so the pack lives no longer than
   * the product's own pack would have. False (nothing changes) for any other entry.
   */
  handOver(buffer: GPUBuffer, key: string): boolean {
    const e = this.#byBuffer.get(buffer)?.find((x) => x.key === key);
    if (!e?.produced) return false;
    this.#remove(e, false);
    return true;
  }

  /** Drop the full-size layer-input entries (small ones, weights and constants stay). */
  clearTransient(): void {
    for (const e of [...this.#transient]) if (e.bytes > this.smallBytes) this.#remove(e);
  }

  drop(buffer: GPUBuffer): void {
    const list = this.#byBuffer.get(buffer);
    if (list) { for (const e of [...list]) this.#remove(e); }
  }

  clear(): void {
    for (const list of [...this.#byBuffer.values()]) for (const e of [...list]) this.#remove(e);
  }

  /** Bytes of textures held. */
  get bytes(): number {
    return this.#pinnedBytes + this.#transientBytes + this.#keptBytes;
  }
}

const packCache = new PackCache();
// Forward layer inputs are not read again in backward (weight gradients read g's packs).
onBackwardStart(() => packCache.clearTransient());

/** Engine-made constants (the ones column of bias gradients) pinned like frozen weights. */
const constantOperands = new WeakSet<Tensor>();

/** Drop every cached packed operand (their textures go back to the pool). */
export function clearPackCache(): void {
  packCache.clear();
}

/** Bytes of packed-operand textures the texture variant holds for reuse. */
export function packCacheBytes(): number {
  return packCache.bytes;
}

/**
 * A texture for an elementwise or row-wise producer (LayerNorm) to write its [rows, cols] f32
 * output into in the packed A layout as it stores it — texel (x, r) holds elements (r, 4x…4x+3),
 * zero past `cols` — so the products that read the output next find its pack in the cache
 * instead of packing it (see {@link keepOutputPack}). Null when products would not read packs
 * here (the texture variant is not the one chosen for such a product) or the output does not fit.
 */
export function outputPackTexture(rows: number, cols: number): ScratchTexture | null {
  const max = rt().textures.maxDimension;
  if (rows === 0 || cols === 0 || rows > max || Math.ceil(cols / 4) > max) return null;
  const shapes: MatmulShapes = {
    M: rows,
    N: cols,
    K: cols,
    batch: 1,
    aMatrices: 1,
    bMatrices: 1,
    aDtype: "f32",
    bDtype: "f32",
  };
  if (MATMUL.choose(shapes, matmulKey(shapes)).name !== "texture") return null;
  return rt().textures.acquire(Math.ceil(cols / 4), rows);
}

/**
 * Keep the pack a producer wrote of `out` with {@link outputPackTexture}: `out`'s storage read as
 * row-major [rows, cols] from its offset (`cols` defaults to its last dimension; attention's
 * heads-interleaved output is [B·T, H·D]). Registered after the producer's dispatch, so the entry
 * carries the write version that dispatch gave `out`'s buffer, it serves the products that read
 * that matrix as their left operand (held like a layer input's pack, for the forward pass).
 */
export function keepOutputPack(
  out: Tensor,
  tex: ScratchTexture,
  cols: number = out.shape[out.rank - 1],
): void {
  const o: MatrixOperand = {
    tensor: out,
    rows: out.size / cols,
    cols,
    offset: out.offset,
    rowStride: cols,
    colStride: 1,
    transposed: false,
    batchStrides: [],
  };
  const key = packKey(o, [], 0, 1, o.rows);
  if (!packCache.put(out.buffer, key, tex, false, true)) rt().textures.release(tex);
}

/**
 * Keep a texture another op made of `t`'s storage (in a layout of its own, named by `key`) for a
 * later reader of the same values: attention's forward packs of k and v for dQ's backward,
 * LoRA's dropped pack of x for dA, intermediate.dense's pack of gelu(z) for output.dense. Valid
 * while `t`'s buffer is unchanged; dropped when the buffer is released or the
 * kept textures pass {@link PackCache.keptBudget}. False (the caller releases it) when refused.
 */
export function keepTexture(t: Tensor, key: string, tex: ScratchTexture): boolean {
  return packCache.keep(t.buffer, key, tex);
}

/** Set the most bytes {@link keepTexture} holds (0 keeps none); returns the previous budget. */
export function setKeptTextureBudget(bytes: number): number {
  const before = packCache.keptBudget;
  packCache.keptBudget = bytes;
  return before;
}

/** The texture {@link keepTexture} kept for (t, key), taken out of the cache (caller releases). */
export function takeKeptTexture(t: Tensor, key: string): ScratchTexture | null {
  return packCache.take(t.buffer, key);
}

// Elementwise kernels write their outputs' packs through these (see MapOptions.packOut).
registerOutputPacks({
  texture: outputPackTexture,
  keep: (out, tex) => keepOutputPack(out, tex),
});

/** A packed operand: the texture, and whether the cache owns it (then it is not released). */
interface Packed {
  tex: ScratchTexture;
  cached: boolean;
}

/**
 * Pack `count` matrices of an operand (entries `zBase…` over `dims`) into a scratch texture,
 * stacked every `rowsPadded` rows; served from (and kept in) the pack cache for frozen weights,
 * small trainable parameters and, when `reuse` is set, for a layer input.
 */
function pack(
  o: MatrixOperand,
  dims: readonly PackDim[],
  zBase: number,
  count: number,
  rowsPadded: number,
  reuse = false,
): Packed {
  const t = o.tensor;
  const pinned = pinnedOperand(t);
  // Any product may find a pack another left (an A-layout pack is also the B-layout one).
  const key = packKey(o, dims, zBase, count, rowsPadded);
  const hit = packCache.get(t.buffer, key);
  if (hit && !reuse && packCache.handOver(t.buffer, key)) return { tex: hit, cached: false };
  if (hit) return { tex: hit, cached: true };
  const tex = packInto(o, dims, zBase, count, rowsPadded);
  // A small trainable parameter (LoRA's A and B, a head's weight) is read by its forward product
  // and again by its backward ones: its pack stays until the optimizer's write invalidates it.
  // (Products read parameters through views, which carry the category but not requiresGrad.)
  const parameter = t.category === "trainable" &&
    tex.width * tex.height * 16 <= packCache.smallBytes;
  const cached = (pinned || reuse || parameter) && packCache.put(t.buffer, key, tex, pinned);
  return { tex, cached };
}

/** Frozen weights and registered constants: their packs are kept for the run. */
function pinnedOperand(t: Tensor): boolean {
  return (t.category === "weights" && !t.requiresGrad) || constantOperands.has(t);
}

/** The cache key of a pack: the operand's layout and the texture's. */
function packKey(
  o: MatrixOperand,
  dims: readonly PackDim[],
  zBase: number,
  count: number,
  rowsPadded: number,
): string {
  return [
    o.tensor.dtype,
    o.offset,
    o.rows,
    o.cols,
    o.rowStride,
    o.colStride,
    zBase,
    count,
    rowsPadded,
    ...dims.flatMap((x) => [x.d, x.s]),
  ].join(",");
}

/**
 * For a transposed A (A = Gᵀ, G [K, M] row-major: a weight gradient's gᵀ), the cached A-layout
 * pack of G, when a product that read G as its left operand left one (LoRA's dx = g·W and
 * dh = g·B, Linear's dx = g·W). The product then reads Aᵀ's texels instead of packing A again.
 */
function cachedTransposePack(plan: MatmulPlan): ScratchTexture | null {
  const a = plan.a;
  if (!a.transposed || plan.batch !== 1 || plan.K % 4 !== 0 || a.rows === 1) return null;
  const g: MatrixOperand = {
    tensor: a.tensor,
    rows: a.cols,
    cols: a.rows,
    offset: a.offset,
    rowStride: a.colStride,
    colStride: 1,
    transposed: false,
    batchStrides: [],
  };
  return packCache.get(a.tensor.buffer, packKey(g, [], 0, 1, plan.K));
}

let packByCopy = true;

/**
 * Whether a pack of one f32 matrix with 64-element aligned rows is the driver's buffer-to-texture
 * copy (the default) or, false, the pack kernel like every other pack: for benchmarks and tests
 * that compare the two (the textures hold the same bits either way).
 */
export function setPackByCopy(enabled: boolean): void {
  packByCopy = enabled;
}

function packInto(
  o: MatrixOperand,
  dims: readonly PackDim[],
  zBase: number,
  count: number,
  rowsPadded: number,
  drop?: EpilogueDropout,
  gelu = false,
): ScratchTexture {
  const texels = Math.ceil(o.cols / 4);
  const tex = rt().textures.acquire(texels, count * rowsPadded);
  const p: Record<string, number> = {
    rows: o.rows,
    rows_padded: rowsPadded,
    cols: o.cols,
    texels,
    off: o.offset,
    sr: o.rowStride,
    sc: o.colStride,
    z_base: zBase,
  };
  dims.forEach((x, i) => {
    p[`pd${i}`] = x.d;
    p[`ps${i}`] = x.s;
  });
  const vec4 = o.tensor.dtype === "f32" && o.colStride === 1 && o.cols % 4 === 0 &&
    o.offset % 4 === 0 && (o.rows === 1 || o.rowStride % 4 === 0) &&
    dims.every((x) => x.s % 4 === 0);
  // One matrix whose rows lie 64-element aligned (a layer's activation, a weight of width
  // 64n) is a texel image as it is: the driver's copy moves it, far cheaper than the kernel's
  // storage-buffer loads on software adapters. Its bits are the kernel's (f32 copied as is).
  if (
    packByCopy && vec4 && !drop && !gelu && count === 1 && dims.length === 0 && zBase === 0 &&
    rowsPadded === o.rows &&
    (o.rows === 1 || o.rowStride % 64 === 0)
  ) {
    const bytesPerRow = o.rows === 1 ? 256 * Math.ceil(texels / 16) : o.rowStride * 4;
    rt().copyToTexture(o.tensor.buffer, o.offset * 4, bytesPerRow, tex, texels, o.rows);
    return tex;
  }
  if (drop) {
    if (count !== 1 || dims.length > 0) throw new Error("matmul: a dropout pack is one matrix");
    p.drop_seed = seedU32(drop.seed);
    p.drop_stream = drop.stream;
    p.drop_threshold = dropoutThreshold(drop.p);
    p.drop_scale = 1 / (1 - drop.p);
    if (rowStepOf(drop) !== 1) p.drop_rstep = rowStepOf(drop);
  }
  const [gx, gy] = grid1d(Math.ceil((texels * rowsPadded) / 64));
  if (gelu && (count !== 1 || dims.length > 0)) {
    throw new Error("matmul: a GELU pack is one matrix");
  }
  const kernel = packKernel(o.tensor.dtype, dims.length, vec4, !!drop, gelu, rowStepOf(drop) !== 1);
  rt().dispatch(kernel, [o.tensor, tex], p, [
    gx,
    gy,
    count,
  ]);
  return tex;
}

function textureFits(g: Gpu, s: MatmulShapes): boolean {
  const max = g.device.limits.maxTextureDimension2D;
  // A tall single product is split into row chunks, a tall batch into batch chunks, and a single
  // product whose K exceeds a texture (an LM head's dx = g·W over a 50k vocabulary) into K chunks
  // accumulated in place — unless an epilogue (dropout, residual) must see the whole sum.
  const kFits = 4 * Math.ceil(s.K / 4) <= max || (s.batch === 1 && !s.epilogue);
  return kFits && Math.ceil(s.N / 4) <= max && (s.batch === 1 || s.M <= max);
}

/**
 * Run a single product whose K exceeds a texture as a sum of K chunks that each fit: the first
 * chunk writes (or, accumulating, adds) α·A₀B₀ + bias, the rest add α·AᵢBᵢ. Every chunk but
 * the last is a multiple of 4 long, so each chunk's packs stay aligned.
 */
function runTextureKChunks(plan: MatmulPlan, max: number): void {
  const chunk = 4 * Math.floor(max / 4);
  for (let k0 = 0; k0 < plan.K; k0 += chunk) {
    const k = Math.min(chunk, plan.K - k0);
    runTexture({
      ...plan,
      K: k,
      a: { ...plan.a, cols: k, offset: plan.a.offset + k0 * plan.a.colStride },
      b: { ...plan.b, rows: k, offset: plan.b.offset + k0 * plan.b.rowStride },
      bias: k0 === 0 ? plan.bias : null,
      accumulate: k0 === 0 ? plan.accumulate : true,
      reuseA: false,
      packOut: false,
    });
  }
}

/** Packed operands of one texture product and how the kernel reads them. */
interface TextureOperands {
  a: Packed;
  b: Packed;
  /** Texture rows per batch dim of A and B (empty for a single product). */
  rowStridesA: readonly number[];
  rowStridesB: readonly number[];
  /** A arrives as a pack of Aᵀ (see {@link cachedTransposePack}). */
  aTransposed: boolean;
  /** B arrives as a pack of Bᵀ (a weight's own row-major pack, see {@link naturalOf}). */
  bTransposed: boolean;
}

/** Record the product over packed textures; `packOut` also receives C in the packed layout. */
/**
 * Whether a texture product stores C four columns at a time: measured on llvmpipe
 * (bench/results/step-h10o.md), vec4 stores win for the products with a GELU-gradient or residual
 * epilogue (the N 512 dx with GELU′: 6.9 → 5.8 ms; the residual products 7.2 → 5.5 ms at N 512)
 * and lose for plain, bias-only and accumulating ones (plain N 128: 1.0 → 3.8 ms), so only the
 * former take them. Needs N and C's offset in fours.
 */
function vec4Stores(plan: MatmulPlan): boolean {
  return plan.N % 4 === 0 && plan.outOffset % 4 === 0 && !plan.accumulate &&
    (!!plan.geluGrad || !!plan.residual);
}

function productFromTextures(
  plan: MatmulPlan,
  o: TextureOperands,
  packOut: ScratchTexture | null = null,
): void {
  const tile = plan.N <= 64 ? TEXTURE_TILE_NARROW : TEXTURE_TILE;
  const kernel = textureKernel(tile, {
    biasType: plan.bias?.dtype ?? null,
    batchRank: plan.batchDims.length,
    accumulate: plan.accumulate,
    epilogue: epilogueOf(plan),
    aTransposed: o.aTransposed,
    bTransposed: o.bTransposed,
    packOut: packOut !== null,
    ...(packOut && plan.packGelu ? { packGelu: true } : {}),
    ...(vec4Stores(plan) ? { vec4C: true } : {}),
  });
  const p = commonParams(plan);
  plan.batchDims.forEach((_, i) => {
    p[`A_bs${i}`] = o.rowStridesA[i];
    p[`B_bs${i}`] = o.rowStridesB[i];
  });
  dispatchBatches(
    kernel,
    [
      o.a.tex,
      o.b.tex,
      ...(plan.bias ? [plan.bias] : []),
      ...(plan.residual ? [plan.residual] : []),
      ...(plan.geluGrad ? [plan.geluGrad] : []),
      plan.out,
      ...(packOut ? [packOut] : []),
    ],
    p,
    Math.ceil(plan.N / (4 * tile.vec4PerThread * tile.wgX)),
    Math.ceil(plan.M / (tile.rowsPerThread * tile.wgY)),
    plan.batch,
  );
  if (!o.a.cached) rt().textures.release(o.a.tex);
  if (!o.b.cached) rt().textures.release(o.b.tex);
}

/**
 * The row-major operand behind a transposed B (B = Wᵀ of a row-major W [N, K]): packing W as it
 * lies gives the texture a `bTransposed` product reads, and the same pack serves every other
 * product that reads W (g·W reads it as a plain B, the A-layout pack is the B-layout one), so a
 * weight is packed once for its forward and backward. Null when B is not such a view.
 */
function naturalOf(b: MatrixOperand, max: number): MatrixOperand | null {
  if (!b.transposed || b.rows === 1 || 4 * Math.ceil(b.cols / 4) > max) return null;
  return {
    tensor: b.tensor,
    rows: b.cols,
    cols: b.rows,
    offset: b.offset,
    rowStride: b.colStride,
    colStride: 1,
    transposed: false,
    batchStrides: [],
  };
}

/** The output of a single product as the operand a later product would read it as. */
function outputOperand(plan: MatmulPlan): MatrixOperand {
  const v = plan.out.view([plan.M, plan.N], contiguousStrides([plan.M, plan.N]), plan.outOffset);
  const o = matrixOf(v, [], []);
  v.dispose();
  return { ...o, tensor: plan.out };
}

/**
 * One product (no batch) whose operands fit a texture: A from its pack (or the cached pack of
 * Aᵀ), B from its pack (or a transposed weight's own pack); with `packOut` the output's pack is
 * written by the same dispatch and left in the cache for the products that read it next.
 */
function runTextureSingle(
  plan: MatmulPlan,
  kPad: number,
  max: number,
  given: { a?: Packed; b?: Packed; bNatural?: boolean } = {},
): void {
  const cachedT = given.a ? null : cachedTransposePack(plan);
  const a: Packed = given.a ??
    (cachedT ? { tex: cachedT, cached: true } : pack(plan.a, [], 0, 1, plan.M, plan.reuseA));
  // A frozen weight read as Wᵀ gets a pack of its own in the plain B layout, kept for the run
  // like its other packs: the kernel reads that layout ~30 % faster than W's own pack through
  // `bTransposed` (bench/results/step-h10n.md). A weight that trains keeps the one shared pack
  // (it would be packed twice every step), and so does a frozen one past the kept-pack budget
  // (its strided pack would be made on every call, where W's own is a driver copy).
  const ownPackT = !given.b && plan.b.transposed && pinnedOperand(plan.b.tensor) &&
    packCache.fitsPinned(16 * Math.ceil(plan.N / 4) * kPad);
  const natural = given.b || ownPackT ? null : naturalOf(plan.b, max);
  // W's rows padded to fours: the key a plain B-layout pack of W (g·W) looks up.
  const b = given.b ??
    (natural
      ? pack(natural, [], 0, 1, 4 * Math.ceil(natural.rows / 4), plan.reuseB)
      : pack(plan.b, [], 0, 1, kPad, plan.reuseB));
  const plain = plan.M <= max && !plan.accumulate && !plan.dropout && !plan.residual &&
    !plan.geluGrad;
  // gelu(C)'s pack (bias allowed: the pack lines add it as the store does) or C's own.
  const wantGelu = (plan.packGelu ?? false) && plain;
  const wantPack = wantGelu || ((plan.packOut ?? false) && plain && !plan.bias);
  const out = wantPack ? rt().textures.acquire(Math.ceil(plan.N / 4), plan.M) : null;
  productFromTextures(plan, {
    a,
    b,
    rowStridesA: [],
    rowStridesB: [],
    aTransposed: cachedT !== null,
    bTransposed: natural !== null || (given.bNatural ?? false),
  }, out);
  if (out) {
    // Registered after the dispatch, so the entry carries the version the write gave C.
    const o = outputOperand(plan);
    const kept = wantGelu
      ? keepTexture(plan.out, geluPackKey(o, plan.M), out)
      : packCache.put(plan.out.buffer, packKey(o, [], 0, 1, plan.M), out, false);
    if (!kept) rt().textures.release(out);
  }
}

/** The kept-texture key of gelu(o)'s pack (see {@link MatmulOptions.packGelu}). */
function geluPackKey(o: MatrixOperand, rowsPadded: number): string {
  return `gelu|${packKey(o, [], 0, 1, rowsPadded)}`;
}

function runTexture(plan: MatmulPlan): void {
  const max = rt().textures.maxDimension;
  const { M, N, K, batchDims } = plan;
  const kPad = 4 * Math.ceil(K / 4);
  if (kPad > max) {
    if (plan.batch !== 1 || plan.dropout || plan.residual || plan.geluGrad) {
      throw new Error(`matmul texture variant: K ${K} exceeds a texture (${max}) for this plan`);
    }
    runTextureKChunks(plan, max);
    return;
  }
  if (plan.batch === 1 && M > max) {
    // Rows of A are independent: run the product in chunks of rows that fit a texture.
    for (let r0 = 0; r0 < M; r0 += max) {
      const rows = Math.min(max, M - r0);
      runTexture({
        ...plan,
        M: rows,
        a: { ...plan.a, rows, offset: plan.a.offset + r0 * plan.a.rowStride },
        outOffset: plan.outOffset + r0 * N,
        packOut: false,
      });
    }
    return;
  }
  if (plan.batch === 1) {
    runTextureSingle(plan, kPad, max);
    return;
  }
  const own = (o: MatrixOperand) =>
    batchDims.map((d, i) => ({ d, s: o.batchStrides[i] })).filter((x) => x.s !== 0);
  const countOf = (dims: PackDim[]) => dims.reduce((p, x) => p * x.d, 1);
  const ownA = own(plan.a), ownB = own(plan.b);
  const plain = { aTransposed: false, bTransposed: false };
  if (countOf(ownA) * M <= max && countOf(ownB) * kPad <= max) {
    // Each operand's distinct matrices fit one texture: pack each once.
    productFromTextures(plan, {
      a: pack(plan.a, ownA, 0, countOf(ownA), M, plan.reuseA),
      b: pack(plan.b, ownB, 0, countOf(ownB), kPad),
      rowStridesA: packedRowStrides(batchDims, plan.a.batchStrides, M),
      rowStridesB: packedRowStrides(batchDims, plan.b.batchStrides, kPad),
      ...plain,
    });
    return;
  }
  // A tall batch: pack the matrices of a chunk of batch entries at a time, one per entry.
  const all = (o: MatrixOperand) => batchDims.map((d, i) => ({ d, s: o.batchStrides[i] }));
  const chunk = Math.floor(max / Math.max(M, kPad));
  for (let z0 = 0; z0 < plan.batch; z0 += chunk) {
    const count = Math.min(chunk, plan.batch - z0);
    productFromTextures(
      { ...plan, batchDims: [count], batch: count, outOffset: plan.outOffset + z0 * M * N },
      {
        a: pack(plan.a, all(plan.a), z0, count, M, plan.reuseA),
        b: pack(plan.b, all(plan.b), z0, count, kPad),
        rowStridesA: [M],
        rowStridesB: [kPad],
        ...plain,
      },
    );
  }
}

MATMUL.register({
  name: "texture",
  // Verified faster on llvmpipe (see bench/results/llvmpipe.md); buffers win on real GPUs.
  preference: (g) => (g.adapter.isFallback ? 2 : 0),
  supports: textureFits,
  run: runTexture,
});

// ---- the ops ----------------------------------------------------------------------------------

/** Options of {@link matmulRaw}. */
export interface MatmulOptions {
  /** [N] added to every output row (fused into the kernel's store). */
  bias?: Tensor;
  /**
   * A is read by several products in a row (a layer input feeding q, k, v): variants that stage
   * operands may keep A's staged copy for the next product that reads it unchanged.
   */
  reuseA?: boolean;
  /**
   * B is read by other products too (LoRA's hᵀ = A·xdᵀ reads the layer input x as Bᵀ): variants
   * that stage operands may keep B's staged copy.
   */
  reuseB?: boolean;
  /**
   * The result is read next by other products (LoRA's h = xd·Aᵀ by h·Bᵀ and dB = gᵀ·h): variants
   * that stage operands may write the staged copy in the same dispatch as the result. Honoured
   * for a plain product (no bias, accumulation or epilogue).
   */
  packOut?: boolean;
  /** Scale the product by α before the bias is added (default 1). */
  alpha?: number;
  /**
   * Add α·A·B (+ bias) into this tensor (contiguous f32 of the result's shape) instead of a new
   * one; the call returns it.
   */
  into?: Tensor;
  /** Dropout on α·A·B + bias in the epilogue (the mask `dropout` draws for the same call). */
  dropout?: EpilogueDropout;
  /**
   * Added last (after the dropout): contiguous f32 of the result's shape. With `into`, the sum
   * dropout(α·A·B + bias) + residual is what is added into the target.
   */
  residual?: Tensor;
  /**
   * The GELU's backward in the epilogue: (α·A·B + bias) · GELU′(z) for this z (contiguous f32 of
   * the result's shape), before the dropout and residual — a Linear's dx turned into the
   * gradient of the GELU's input (see {@link linearResidual}'s `inputGelu`).
   */
  geluGrad?: Tensor;
  /**
   * Also write gelu(α·A·B + bias)'s pack in the same dispatch, kept for the product that reads
   * gelu of this result next (linearResidual's `inputGelu`): intermediate.dense before a frozen
   * output.dense. Honoured on the texture variant for a single product without accumulation or
   * other epilogue; otherwise that product packs gelu itself.
   */
  packGelu?: boolean;
}

function shapeStr(t: Tensor): string {
  return `[${t.shape.join(", ")}]`;
}

/** View `t` with a unit dimension inserted before dim `at` (stride 1: never stepped). */
function withUnitDim(t: Tensor, at: number): Tensor {
  const shape = [...t.shape], strides = [...t.strides];
  shape.splice(at, 0, 1);
  strides.splice(at, 0, 1);
  return t.view(shape, strides);
}

/** The view of `t` with its last two dimensions swapped (no copy). */
function transposedView(t: Tensor): Tensor {
  const shape = [...t.shape], strides = [...t.strides];
  const n = t.rank;
  [shape[n - 2], shape[n - 1]] = [shape[n - 1], shape[n - 2]];
  [strides[n - 2], strides[n - 1]] = [strides[n - 1], strides[n - 2]];
  return t.view(shape, strides);
}

/**
 * A·B without recording (for ops that record their own backward): batched over NumPy-broadcast
 * leading dimensions, rank-1 operands as in torch.matmul, an optional fused bias.
 */
export function matmulRaw(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  const call = prepare(a, b, options.bias, options);
  if (call.plan) {
    const shapes = matmulShapes(call.plan);
    MATMUL.choose(shapes, matmulKey(shapes)).run(call.plan);
  }
  return finish(call, options.into);
}

/** A validated call: the output, its plan (null when there is nothing to multiply). */
interface PreparedCall {
  plan: MatmulPlan | null;
  out: Tensor;
  /** Copies and views to dispose once the dispatches are recorded. */
  temps: Tensor[];
  /** The result's shape (rank-1 operands' unit dims dropped). */
  finalShape: number[];
}

/** Validate, allocate the output and plan the product (empty and K = 0 cases are filled here). */
function prepare(
  a: Tensor,
  b: Tensor,
  bias: Tensor | undefined,
  options: MatmulOptions = {},
): PreparedCall {
  checkFloat(a, "matmul operand A");
  checkFloat(b, "matmul operand B");
  if (a.rank === 0 || b.rank === 0) {
    throw new Error(`matmul: operands need rank ≥ 1, got A ${shapeStr(a)} and B ${shapeStr(b)}`);
  }
  const [M, K] = a.rank === 1 ? [1, a.shape[0]] : a.shape.slice(-2);
  const [K2, N] = b.rank === 1 ? [b.shape[0], 1] : b.shape.slice(-2);
  if (K !== K2) {
    throw new Error(
      `matmul: A ${shapeStr(a)} and B ${shapeStr(b)} have inner dimensions ${K} and ${K2}`,
    );
  }
  let batchShape: number[];
  try {
    batchShape = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2));
  } catch {
    throw new Error(
      `matmul: batch dimensions of A ${shapeStr(a)} and B ${shapeStr(b)} do not broadcast`,
    );
  }
  if (bias) {
    checkFloat(bias, "matmul bias");
    if (bias.rank !== 1 || bias.shape[0] !== N) {
      throw new Error(`matmul: bias ${shapeStr(bias)} must have shape [${N}]`);
    }
  }
  const finalShape = [...batchShape];
  if (a.rank > 1) finalShape.push(M);
  if (b.rank > 1) finalShape.push(N);
  const into = options.into;
  if (
    into &&
    (into.dtype !== "f32" || !into.isContiguous || into.size !== numel(finalShape) ||
      into.shape.join() !== finalShape.join())
  ) {
    throw new Error(
      `matmul: accumulation target ${into} must be contiguous f32 of shape [${finalShape}]`,
    );
  }
  const residual = options.residual;
  if (
    residual &&
    (residual.dtype !== "f32" || !residual.isContiguous ||
      residual.shape.join() !== finalShape.join())
  ) {
    throw new Error(`matmul: residual ${residual} must be contiguous f32 of shape [${finalShape}]`);
  }
  const geluIn = options.geluGrad;
  if (
    geluIn &&
    (geluIn.dtype !== "f32" || !geluIn.isContiguous || geluIn.shape.join() !== finalShape.join())
  ) {
    throw new Error(
      `matmul: geluGrad input ${geluIn} must be contiguous f32 of shape [${finalShape}]`,
    );
  }
  if ((residual || options.dropout || geluIn) && (numel(finalShape) === 0 || K === 0)) {
    throw new Error("matmul: dropout and residual epilogues need a non-empty product with K > 0");
  }
  if (options.dropout && !(options.dropout.p > 0 && options.dropout.p < 1)) {
    throw new Error(`matmul: epilogue dropout p must be in (0, 1), got ${options.dropout.p}`);
  }
  const out = into
    ? into.view([...batchShape, M, N], contiguousStrides([...batchShape, M, N]))
    : empty([...batchShape, M, N]);
  const temps: Tensor[] = [];
  if (into && (out.size === 0 || K === 0)) {
    // Nothing to add but the bias.
    if (out.size > 0 && bias) {
      const sum = map([out, bias], "a + b");
      assign(out, sum);
      sum.dispose();
    }
    return { plan: null, out, temps, finalShape };
  }
  if (out.size === 0 || K === 0) {
    if (out.size > 0 && bias) assign(out, bias);
    else if (out.size > 0) fillInto(out, 0);
    return { plan: null, out, temps, finalShape };
  }
  const a2 = a.rank === 1 ? withUnitDim(a, 0) : a;
  const b2 = b.rank === 1 ? withUnitDim(b, 1) : b;
  for (const v of [a2, b2]) if (v !== a && v !== b) temps.push(v);
  const biasC = bias && bias.strides[0] !== 1 && N > 1 ? copyOf(bias) : bias;
  if (biasC && biasC !== bias) temps.push(biasC);
  const s = simplify(
    M,
    batchShape,
    matrixOf(a2, batchShape, temps),
    matrixOf(b2, batchShape, temps),
  );
  const plan: MatmulPlan = {
    M: s.M,
    N,
    K,
    batchDims: s.batchDims,
    batch: numel(s.batchDims),
    a: s.a,
    b: s.b,
    bias: biasC ?? null,
    out,
    outOffset: into ? into.offset : 0,
    reuseA: options.reuseA ?? false,
    reuseB: options.reuseB ?? false,
    packOut: options.packOut ?? false,
    alpha: options.alpha ?? 1,
    accumulate: into !== undefined,
    dropout: options.dropout ?? null,
    residual: options.residual ?? null,
    geluGrad: options.geluGrad ?? null,
    packGelu: options.packGelu ?? false,
  };
  return { plan, out, temps, finalShape };
}

/** Dispose the call's temporaries and return the output in its final shape. */
function finish(call: PreparedCall, into?: Tensor): Tensor {
  for (const t of call.temps) t.dispose();
  const { out, finalShape } = call;
  if (into) {
    out.dispose();
    return into;
  }
  if (finalShape.length === out.rank) return out;
  const y = out.view(finalShape, contiguousStrides(finalShape));
  out.dispose();
  return y;
}

/**
 * Time every matmul variant that supports A·B on this adapter and record the fastest for calls
 * of the same shapes (see {@link KernelFamily.autotune}); later `matmul` calls with that key use
 * it. Each variant runs once untimed first (pipeline compilation), then the best of
 * `iterations` timed runs counts. Returns the timings, fastest first.
 */
export async function autotuneMatmul(
  a: Tensor,
  b: Tensor,
  iterations = 3,
): Promise<VariantTiming[]> {
  const call = prepare(a, b, undefined);
  const plan = call.plan;
  try {
    if (!plan) return [];
    const shapes = matmulShapes(plan);
    return await MATMUL.autotune(shapes, matmulKey(shapes), async (v) => {
      v.run(plan);
      await rt().sync();
      let best = Infinity;
      for (let i = 0; i < iterations; i++) {
        const t0 = performance.now();
        const gpuMs = await rt().timeGpu(() => v.run(plan));
        best = Math.min(best, gpuMs ?? performance.now() - t0);
      }
      return best;
    });
  } finally {
    finish(call).dispose();
  }
}

/** `t` as its last two dims with every leading dim folded into the rows, when a view can. */
function foldRows(t: Tensor): Tensor | null {
  const n = t.rank;
  let rows = t.shape[n - 2], rowStride = t.strides[n - 2];
  for (let i = n - 3; i >= 0; i--) {
    if (t.shape[i] === 1) continue;
    if (rows !== 1 && t.strides[i] !== rowStride * rows) return null;
    if (rows === 1) rowStride = t.strides[i];
    rows *= t.shape[i];
  }
  return t.view([rows, t.shape[n - 1]], [rowStride, t.strides[n - 1]]);
}

/** Reshape a contiguous gradient back to `shape` (a view), disposing the original. */
function reshapeTo(g: Tensor, shape: readonly number[]): Tensor {
  if (g.shape.join() === shape.join()) return g;
  const v = g.view(shape, contiguousStrides(shape));
  g.dispose();
  return v;
}

/** dA = dC·Bᵀ, summed over the batch dims A was broadcast along. */
function matmulGradA(a2: Tensor, b2: Tensor, g2: Tensor, aShape: readonly number[]): Tensor {
  const bT = transposedView(b2);
  const full = matmulRaw(g2, bT);
  bT.dispose();
  if (full.shape.join() === a2.shape.join()) return reshapeTo(full, aShape);
  const r = sumTo(full, a2.shape);
  full.dispose();
  return reshapeTo(r, aShape);
}

/** dB = Aᵀ·dC; a B shared by the whole batch contracts over batch and rows in one product. */
function matmulGradB(a2: Tensor, b2: Tensor, g2: Tensor, bShape: readonly number[]): Tensor {
  if (b2.shape.slice(0, -2).every((d) => d === 1)) {
    const af = foldRows(a2), gf = af ? foldRows(g2) : null;
    if (af && gf && af.shape[0] === gf.shape[0]) {
      const aT = transposedView(af);
      const r = matmulRaw(aT, gf);
      for (const t of [aT, af, gf]) t.dispose();
      return reshapeTo(r, bShape);
    }
    af?.dispose();
    gf?.dispose();
  }
  const aT = transposedView(a2);
  const full = matmulRaw(aT, g2);
  aT.dispose();
  if (full.shape.join() === b2.shape.join()) return reshapeTo(full, bShape);
  const r = sumTo(full, b2.shape);
  full.dispose();
  return reshapeTo(r, bShape);
}

/**
 * Matrix product with torch.matmul semantics: [..., M, K]·[..., K, N] → [..., M, N] with
 * NumPy-broadcast batch dims; a rank-1 A is a row, a rank-1 B a column (their unit dim is
 * dropped from the result). Differentiable in both operands.
 *
 * @example
 * ```ts
 * import { init, matmul, tensor, transpose } from "./mod.ts";
 * await init();
 * const x = tensor([[1, 2], [3, 4]]);
 * const w = tensor([[1, 0], [0, 1], [1, 1]]); // [dOut, dIn]
 * const y = matmul(x, transpose(w)); // [2, 3], reads w transposed in place
 * ```
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  const y = matmulRaw(a, b);
  return record("matmul", y, [a, b], (g) => {
    const a2 = a.rank === 1 ? withUnitDim(a, 0) : a;
    const b2 = b.rank === 1 ? withUnitDim(b, 1) : b;
    // Put back the unit dims a rank-1 operand dropped: M before N, N last.
    let g2 = a.rank === 1 ? withUnitDim(g, b.rank === 1 ? g.rank : g.rank - 1) : g;
    if (b.rank === 1) {
      const v = withUnitDim(g2, g2.rank);
      if (g2 !== g) g2.dispose();
      g2 = v;
    }
    const ga = a.requiresGrad ? matmulGradA(a2, b2, g2, a.shape) : null;
    const gb = b.requiresGrad ? matmulGradB(a2, b2, g2, b.shape) : null;
    for (const t of [a2, b2, g2]) if (t !== a && t !== b && t !== g) t.dispose();
    return [ga, gb];
  });
}

const onesColumns = new Map<number, Tensor>();

/**
 * A linear's bias gradient Σ_rows g [dOut] of g [rows, dOut]. On the texture variant it is the
 * product gᵀ·1 — reading the pack g·W left (see {@link cachedTransposePack}) against a constant
 * column of ones whose pack stays cached — one dispatch instead of a two-pass reduction.
 * Elsewhere it is the reduction.
 */
function sumRows(g2: Tensor): Tensor {
  const [rows, n] = g2.shape;
  const shapes: MatmulShapes = {
    M: n,
    N: 1,
    K: rows,
    batch: 1,
    aMatrices: 1,
    bMatrices: 1,
    aDtype: "f32",
    bDtype: "f32",
  };
  if (rows === 0 || MATMUL.choose(shapes, matmulKey(shapes)).name !== "texture") {
    return reduceRaw(g2, "sum", [0]);
  }
  let ones = onesColumns.get(rows);
  if (!ones || ones.disposed) {
    ones = noGradOnes(rows);
    onesColumns.set(rows, ones);
  }
  const gT = transposedView(g2);
  const col = matmulRaw(gT, ones);
  gT.dispose();
  return reshapeTo(col, [n]);
}

/** A kept [rows, 1] column of ones, a constant the pack cache pins like a frozen weight. */
function noGradOnes(rows: number): Tensor {
  const t = empty([rows, 1], { category: "scratch" }).keep();
  fillInto(t, 1);
  constantOperands.add(t);
  return t;
}

/** `x` as [rows, dIn]: a view when the leading dims fold into rows, a copy otherwise. */
function rowsOf(x: Tensor): Tensor {
  const x2 = x.rank === 1 ? withUnitDim(x, 0) : x;
  const f = foldRows(x2);
  if (x2 !== x) x2.dispose();
  if (f) return f;
  const c = copyOf(x);
  const v = c.view([c.size / x.shape[x.rank - 1], x.shape[x.rank - 1]], [x.shape[x.rank - 1], 1]);
  c.dispose();
  return v;
}

/** y2 = x2·Wᵀ + b (+ epilogue) for x2 [rows, dIn] and W [dOut, dIn], W read transposed in place. */
function linearProduct(
  x2: Tensor,
  weight: Tensor,
  bias: Tensor | undefined,
  extra: Pick<MatmulOptions, "residual" | "dropout" | "packGelu"> = {},
): Tensor {
  const wT = transposedView(weight);
  // x2 is a layer input: q, k and v (and LoRA's A) read it in a row.
  const y2 = matmulRaw(x2, wT, { bias, reuseA: true, ...extra });
  wT.dispose();
  return y2;
}

/**
 * A·B as a gradient of shape `shape` (A [rows, K], B [K, n], rows·n elements): a new tensor, or,
 * given `target` (autograd's pending gradient of the same input, see {@link BackwardFn}), added
 * into it in the product's epilogue and `target` returned — the bits `target + A·B` as a separate
 * add would give (the epilogue adds α·A·B onto C exactly as the add would).
 */
function gradProduct(
  a: Tensor,
  b: Tensor,
  shape: readonly number[],
  target: Tensor | null,
  options: MatmulOptions = {},
): Tensor {
  if (!target) return reshapeTo(matmulRaw(a, b, options), shape);
  const n = b.shape[b.rank - 1];
  const into = target.view([a.shape[0], n], [n, 1]);
  matmulRaw(a, b, { ...options, into });
  into.dispose();
  return target;
}

/**
 * The gradients of y = x·Wᵀ + b from g2 = dy as [rows, dOut]: dx = g·W (shaped as x; added into
 * `dxInto` when given), dW = gᵀ·x2, db = Σ g, each null when its input needs none. g's pack is
 * kept when a second product reads it (dW, db, or `gReadAgain`: LoRA's dh = s·g·B).
 */
function linearGrads(
  g2: Tensor,
  x: Tensor,
  x2: Tensor,
  weight: Tensor,
  bias: Tensor | undefined,
  gReadAgain = false,
  dxInto: Tensor | null = null,
): [Tensor | null, Tensor | null, Tensor | null] {
  const reuseG = gReadAgain || weight.requiresGrad || (bias?.requiresGrad ?? false);
  const dx = x.requiresGrad ? gradProduct(g2, weight, x.shape, dxInto, { reuseA: reuseG }) : null;
  let dw: Tensor | null = null;
  if (weight.requiresGrad) {
    const gT = transposedView(g2);
    dw = matmulRaw(gT, x2);
    gT.dispose();
  }
  const db = bias?.requiresGrad ? sumRows(g2) : null;
  return [dx, dw, db];
}

/**
 * y = x·Wᵀ + b with `weight` stored [dOut, dIn] as in Hugging Face nn.Linear; x is [..., dIn].
 * W is read transposed in place and may be f16 (a frozen weight). Differentiable: dx = g·W,
 * dW = gᵀ·x summed over all leading dims, db = Σ g.
 *
 * @example
 * ```ts
 * import { init, linear, tensor } from "./mod.ts";
 * await init();
 * const y = linear(tensor([[1, 2, 3]]), tensor([[1, 0, 0], [0, 1, 1]]), tensor([0.5, -1]));
 * console.log(await y.toArray()); // [1.5, 4]
 * ```
 */
export function linear(
  x: Tensor,
  weight: Tensor,
  bias?: Tensor,
  options: Pick<MatmulOptions, "packGelu"> = {},
): Tensor {
  if (weight.rank !== 2) throw new Error(`linear: weight ${weight} must be [dOut, dIn]`);
  const [dOut, dIn] = weight.shape;
  if (x.rank < 1 || x.shape[x.rank - 1] !== dIn) {
    throw new Error(`linear: input ${x} must end in dIn = ${dIn} (weight ${weight})`);
  }
  if (bias && (bias.rank !== 1 || bias.shape[0] !== dOut)) {
    throw new Error(`linear: bias ${bias} must have shape [${dOut}] (weight ${weight})`);
  }
  const x2 = rowsOf(x);
  const y = reshapeTo(linearProduct(x2, weight, bias, options), [...x.shape.slice(0, -1), dOut]);
  const inputs = bias ? [x, weight, bias] : [x, weight];
  const recorded = record("linear", y, inputs, (g, sumInto) => {
    const g2 = rowsOf(g);
    // x's gradient is added onto another consumer's pending one in dx's epilogue.
    const grads = linearGrads(g2, x, x2, weight, bias, false, sumInto?.(0) ?? null);
    g2.dispose();
    return grads;
  }, [weight, x2]);
  // Only dW reads x in backward: a frozen weight's layer input is not kept for it.
  if (!recorded.requiresGrad || !weight.requiresGrad) x2.dispose();
  return recorded;
}

/**
 * A·B where the operand on `side` enters as dropout(operand) — the mask `dropout(t, p, {seed,
 * stream})` draws for the operand's tensor t — or as gelu(operand), applied while packing it, on
 * the texture variant, so the transformed copy is never stored. Null (nothing recorded) when
 * this call would not run as one texture product; the caller then materialises the operand.
 */
function maskedOperandProduct(
  a: Tensor,
  b: Tensor,
  side: "a" | "b",
  drop: EpilogueDropout | "gelu",
  options: MatmulOptions = {},
): Tensor | null {
  const masked = side === "a" ? a : b;
  const gelu = drop === "gelu";
  if (masked.dtype !== "f32" || masked.rank !== 2 || !(gelu || (drop.p > 0 && drop.p < 1))) {
    return null;
  }
  const call = prepare(a, b, options.bias, options);
  const plan = call.plan;
  const max = rt().textures.maxDimension;
  const kPad = plan ? 4 * Math.ceil(plan.K / 4) : 0;
  const o = plan && (side === "a" ? plan.a : plan.b);
  // The mask index r·cols + c is the element's row-major index in the rank-2 operand, whether
  // the plan reads it in place or from a copy.
  if (!plan || !o || !oneTextureProduct(plan, kPad, max)) {
    for (const t of call.temps) t.dispose();
    call.out.dispose();
    return null;
  }
  const rows = side === "a" ? plan.M : kPad;
  // A dropout pack the forward kept for this product (LoRA's dA) is taken instead of made.
  // So is gelu(x)'s pack written by the product that made x (MatmulOptions.packGelu).
  const kept = takeKeptTexture(
    o.tensor,
    gelu ? geluPackKey(o, rows) : dropPackKey(o, rows, drop),
  );
  const tex = kept ??
    (gelu ? packInto(o, [], 0, 1, rows, undefined, true) : packInto(o, [], 0, 1, rows, drop));
  runTextureSingle(plan, kPad, max, { [side]: { tex, cached: false } });
  return finish(call);
}

/** Whether `plan` runs as one texture product whose operands and output fit a texture. */
function oneTextureProduct(plan: MatmulPlan, kPad: number, max: number): boolean {
  return plan.batch === 1 && plan.M <= max && kPad <= max && Math.ceil(plan.N / 4) <= max &&
    MATMUL.choose(matmulShapes(plan), matmulKey(matmulShapes(plan))).name === "texture";
}

/** a·xᵀ through the transposed view of x. */
function plainTransposedProduct(a: Tensor, x: Tensor, options: MatmulOptions): Tensor {
  const xT = transposedView(x);
  const out = matmulRaw(a, xT, options);
  xT.dispose();
  return out;
}

/**
 * a·dropout(x)ᵀ for a row-major rank-2 x [N, K] — the mask `dropout(x, p, {seed, stream})`
 * draws, applied while packing x as it lies (the pack a product reading x as its left operand
 * would have), on the texture variant: LoRA's hᵀ = A·xdᵀ with the adapter's dropout fused. Null
 * (nothing recorded) when this would not run as one texture product; the caller then
 * materialises the dropout.
 */
function maskedTransposedProduct(
  a: Tensor,
  x: Tensor,
  drop: EpilogueDropout,
  options: MatmulOptions = {},
  keepPack = false,
): Tensor | null {
  if (x.dtype !== "f32" || x.rank !== 2 || !(drop.p > 0 && drop.p < 1)) return null;
  const xT = transposedView(x);
  const call = prepare(a, xT, undefined, options);
  const plan = call.plan;
  const max = rt().textures.maxDimension;
  const kPad = plan ? 4 * Math.ceil(plan.K / 4) : 0;
  const o = plan && naturalOf(plan.b, max);
  // B' = xᵀ is read through x's own pack: N of its rows down the texture.
  if (!plan || !o || plan.N > max || !oneTextureProduct(plan, kPad, max)) {
    for (const t of [...call.temps, call.out, xT]) t.dispose();
    return null;
  }
  const rows = 4 * Math.ceil(o.rows / 4);
  const tex = packInto(o, [], 0, 1, rows, drop);
  runTextureSingle(plan, kPad, max, { b: { tex, cached: keepPack }, bNatural: true });
  // With `keepPack` the dropped pack waits for dA = dhᵀ·dropout(x) in backward (the same texels).
  if (keepPack && !keepTexture(o.tensor, dropPackKey(o, rows, drop), tex)) {
    rt().textures.release(tex);
  }
  const out = finish(call);
  xT.dispose();
  return out;
}

/** The kept-texture key of a dropout pack of `o` (see {@link maskedTransposedProduct}). */
function dropPackKey(o: MatrixOperand, rowsPadded: number, drop: EpilogueDropout): string {
  return `dropout|${packKey(o, [], 0, 1, rowsPadded)}|${drop.p}|${drop.seed}|${drop.stream}|${
    rowStepOf(drop)
  }`;
}

/**
 * A Linear with a low-rank update, LoRA's forward, as one op:
 * y = x·Wᵀ + b + s·(xd·Aᵀ)·Bᵀ with W [dOut, dIn], A [r, dIn], B [dOut, r]; `xd` is the adapter's
 * input (x after LoRA dropout, or x itself). With `inputDropout`, the adapter's input is
 * dropout(xd) with that (p, seed, stream) — the mask `dropout` draws — applied inside the op: on
 * the texture variant while packing x for xd·Aᵀ, so the dropped copy is never stored (its pack is
 * kept for dA in backward as a scratch texture, or made again there past the kept-texture
 * budget), and its gradient is added onto dx in the epilogue of dh·A. The update's product lands
 * on the base output in the matmul's epilogue (C += s·h·Bᵀ), so no base output, update or scaled
 * copy is materialised, and backward keeps only xd and hᵀ = A·xdᵀ [r, ...] (and x when W
 * trains). Differentiable in every input: dx = g·W,
 * dW = gᵀ·x, db = Σ g, dh = s·g·B, dB = s·gᵀ·h, dA = dhᵀ·xd, dxd = dh·A.
 *
 * @example
 * ```ts
 * import { init, lowRankLinear, tensor } from "./mod.ts";
 * await init();
 * const x = tensor([[1, 2]]);
 * const y = lowRankLinear(x, tensor([[1, 0], [0, 1]]), undefined, x, tensor([[1, 1]]),
 *   tensor([[1], [0]]), 0.5); // [[1 + 0.5·3, 2]] = [[2.5, 2]]
 * ```
 */
export function lowRankLinear(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | undefined,
  xd: Tensor,
  loraA: Tensor,
  loraB: Tensor,
  scaling: number,
  inputDropout?: LinearDropout,
): Tensor {
  if (weight.rank !== 2) throw new Error(`lowRankLinear: weight ${weight} must be [dOut, dIn]`);
  const [dOut, dIn] = weight.shape;
  if (x.rank < 1 || x.shape[x.rank - 1] !== dIn) {
    throw new Error(`lowRankLinear: input ${x} must end in dIn = ${dIn} (weight ${weight})`);
  }
  if (xd.shape.join() !== x.shape.join()) {
    throw new Error(`lowRankLinear: adapter input ${xd} must have the shape of ${x}`);
  }
  if (loraA.rank !== 2 || loraA.shape[1] !== dIn) {
    throw new Error(`lowRankLinear: A ${loraA} must be [r, ${dIn}]`);
  }
  const r = loraA.shape[0];
  if (loraB.rank !== 2 || loraB.shape[0] !== dOut || loraB.shape[1] !== r) {
    throw new Error(`lowRankLinear: B ${loraB} must be [${dOut}, ${r}]`);
  }
  if (bias && (bias.rank !== 1 || bias.shape[0] !== dOut)) {
    throw new Error(`lowRankLinear: bias ${bias} must have shape [${dOut}]`);
  }
  if (inputDropout && !(inputDropout.p >= 0 && inputDropout.p <= 1)) {
    throw new Error(`lowRankLinear: inputDropout.p must be in [0, 1], got ${inputDropout.p}`);
  }
  const drop = inputDropout && inputDropout.p > 0 ? inputDropout : undefined;
  const x2 = rowsOf(x);
  const bT = transposedView(loraB);
  // The rank-r products run transposed — hᵀ = A·xdᵀ [r, rows] and dhᵀ = s·Bᵀ·gᵀ rather than
  // h = xd·Aᵀ and dh = s·g·B — and h, dh are read as views of them: an output of r columns
  // leaves most lanes of a software adapter's SIMD idle (lanes walk an output row), measured 6×
  // slower than the transposed product at rows 1024, r 8 (bench/results/step-h10n.md); the
  // products' terms and their order are the same either way.
  // The fused dropout needs the adapter's input to be x itself (read in place) and a texture
  // product; otherwise the dropout op runs first and the op proceeds on its output.
  const hTMasked = drop && xd === x
    ? maskedTransposedProduct(loraA, x2, drop, { packOut: true }, loraA.requiresGrad)
    : null;
  if (drop && !hTMasked) {
    bT.dispose();
    x2.dispose();
    const dropped = dropoutOp(xd, drop.p, maskOf(drop));
    return lowRankLinear(x, weight, bias, dropped, loraA, loraB, scaling);
  }
  const xd2 = xd === x ? x2 : rowsOf(xd);
  const y2 = linearProduct(x2, weight, bias);
  // xd is read again only when it is x itself (no dropout). hᵀ is read only by products (h·Bᵀ
  // now, dB = gᵀ·h in backward): its pack is written with it and stays cached (it is small).
  const hT = hTMasked ?? plainTransposedProduct(loraA, xd2, { reuseB: xd === x, packOut: true });
  const h = transposedView(hT);
  matmulRaw(h, bT, { alpha: scaling, into: y2 });
  for (const t of [bT, h]) t.dispose();
  const y = reshapeTo(y2, [...x.shape.slice(0, -1), dOut]);
  // With the fused dropout xd is x: its gradient is x's (summed in dh·A's epilogue).
  const fused = hTMasked !== null;
  const inputs = [x, weight, ...(bias ? [bias] : []), ...(fused ? [] : [xd]), loraA, loraB];
  const recorded = record("lowRankLinear", y, inputs, (g, sumInto) => {
    const g2 = rowsOf(g);
    const gT = transposedView(g2);
    // x's pending gradient from its other consumers: dx is added onto it in an epilogue (the
    // last one that writes dx, so the sum's bits are those of a separate add).
    const dxInto = x.requiresGrad ? sumInto?.(0) ?? null : null;
    // g's pack also serves dhᵀ = s·Bᵀ·gᵀ and dB = s·gᵀ·h.
    let [dx, dw, db] = linearGrads(g2, x, x2, weight, bias, true, fused ? null : dxInto);
    const needDxd = fused ? x.requiresGrad : xd.requiresGrad;
    let dhT: Tensor | null = null;
    if (loraA.requiresGrad || needDxd) {
      const lbT = transposedView(loraB);
      dhT = matmulRaw(lbT, gT, { alpha: scaling, reuseB: true, packOut: true });
      lbT.dispose();
    }
    let dB: Tensor | null = null;
    if (loraB.requiresGrad) {
      const hv = transposedView(hT);
      dB = matmulRaw(gT, hv, { alpha: scaling });
      hv.dispose();
    }
    let dA: Tensor | null = null, dxd: Tensor | null = null;
    if (dhT) {
      const dh = transposedView(dhT);
      // dhᵀ's pack (written with it) serves dxd = dh·A (read as the pack of dh's transpose) and
      // dA = dhᵀ·xd.
      if (needDxd && fused && dx) {
        // dx += dropout(dh·A): the dropout's backward and the sum of x's two paths in one store;
        // with a pending gradient P of x, P += dropout(dh·A) + g·W in the same store.
        const rows = x2.shape[0];
        const into = (dxInto ?? dx).view([rows, dIn], [dIn, 1]);
        const gw = dxInto ? dx.view([rows, dIn], [dIn, 1]) : undefined;
        matmulRaw(dh, loraA, { into, dropout: drop, reuseA: true, residual: gw });
        into.dispose();
        if (gw && dxInto) {
          gw.dispose();
          dx.dispose();
          dx = dxInto;
        }
      } else if (needDxd) {
        // xd's pending gradient (x's when xd is x, which dx was just added onto) takes dxd too.
        const xdInto = sumInto?.(bias ? 3 : 2) ?? null;
        dxd = gradProduct(dh, loraA, xd.shape, xdInto, { reuseA: true });
      }
      if (loraA.requiresGrad) {
        dA = fused ? maskedOperandProduct(dhT, x2, "b", drop!) : null;
        if (!dA) {
          // Not one texture product (or no fused dropout): dA reads xd as a tensor.
          const xdT = fused ? dropoutOp(x2, drop!.p, maskOf(drop!)) : xd2;
          dA = matmulRaw(dhT, xdT);
          if (xdT !== xd2) xdT.dispose();
        }
      }
      dh.dispose();
      dhT.dispose();
    }
    gT.dispose();
    g2.dispose();
    return [dx, dw, ...(bias ? [db] : []), ...(fused ? [] : [dxd]), dA, dB];
  }, [weight, loraA, loraB, x2, xd2, hT]);
  if (!recorded.requiresGrad) {
    x2.dispose();
    if (xd2 !== x2) xd2.dispose();
    hT.dispose();
  } else if (!weight.requiresGrad && xd2 !== x2) {
    x2.dispose(); // only dW reads x in backward
  }
  return recorded;
}

/** Dropout of a fused linear: probability and the (seed, stream) of its mask. */
export type LinearDropout = EpilogueDropout;

/** Options of {@link linearResidual}. */
export interface LinearResidualOptions {
  /**
   * The Linear reads gelu(x): y = dropout(gelu(x)·Wᵀ + b) + residual, x being the GELU's input
   * (a transformer FFN's intermediate.dense output). With W and b frozen, on the texture
   * variant, GELU runs while x is packed for the product and its backward in the epilogue of
   * dx = g·W — gelu(x) is neither stored nor kept, and x's gradient comes out of that one
   * product; otherwise the composed ops run. Either way the bits of gelu then linearResidual.
   */
  inputGelu?: boolean;
}

/**
 * linearResidual over gelu(x) as one forward product and one backward product (see
 * {@link LinearResidualOptions.inputGelu}); null when that does not apply.
 */
function geluLinearResidual(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | undefined,
  residual: Tensor,
  dp: LinearDropout | undefined,
): Tensor | null {
  const [dOut, dIn] = weight.shape;
  if (
    weight.requiresGrad || (bias?.requiresGrad ?? false) || x.dtype !== "f32" || dIn === 0 ||
    x.size === 0 || dp?.p === 1 || !residual.isContiguous || residual.dtype !== "f32"
  ) return null;
  const x2 = rowsOf(x);
  if (!x2.isContiguous) {
    x2.dispose();
    return null;
  }
  const rows = x2.shape[0];
  const res2 = residual.view([rows, dOut], [dOut, 1]);
  const wT = transposedView(weight);
  const y2 = maskedOperandProduct(x2, wT, "a", "gelu", {
    bias,
    residual: res2,
    dropout: dp,
  });
  wT.dispose();
  res2.dispose();
  if (!y2) {
    x2.dispose();
    return null;
  }
  const outShape = [...x.shape.slice(0, -1), dOut];
  const y = reshapeTo(y2, outShape);
  const inputs = bias ? [x, weight, bias, residual] : [x, weight, residual];
  const recorded = record("linearResidual", y, inputs, (g, sumInto) => {
    let gx: Tensor | null = null;
    if (x.requiresGrad) {
      // dx = (dropout(g)·W) · GELU′(x), the mask applied while packing g, GELU′ in the store.
      const dxInto = sumInto?.(0) ?? null;
      const g2 = rowsOf(g);
      const into = dxInto?.view([rows, dIn], [dIn, 1]);
      const opts: MatmulOptions = { geluGrad: x2, ...(into ? { into } : {}) };
      let dx = dp ? maskedOperandProduct(g2, weight, "a", dp, opts) : null;
      g2.dispose();
      if (!dx) {
        const gd = dp ? dropoutOp(g, dp.p, maskOf(dp)) : g;
        const gd2 = rowsOf(gd);
        dx = matmulRaw(gd2, weight, opts);
        gd2.dispose();
        if (gd !== g) gd.dispose();
      }
      into?.dispose();
      gx = dxInto;
      if (gx) dx.dispose(); // a view of the pending gradient it was added into
      else gx = reshapeTo(dx, x.shape);
    }
    return bias ? [gx, null, null, g] : [gx, null, g];
  }, [weight, x2]);
  x2.release(); // freed once the rule that reads it has run (at once without one)
  return recorded;
}

/**
 * y = dropout(x·Wᵀ + b) + residual — a Linear followed by dropout and a residual add (a
 * transformer sub-layer's output before its LayerNorm) as one op. Dropout and the add run in the
 * product's epilogue, so neither the Linear's output nor the dropped copy is materialised, and
 * the mask is the one `dropout(y, p, {seed, stream})` would draw (recomputed in backward). Without
 * `drop` it is x·Wᵀ + b + residual. Differentiable: with gd = mask ⊙ g / (1 − p), dx = gd·W,
 * dW = gdᵀ·x, db = Σ gd, d residual = g.
 *
 * @example
 * ```ts
 * import { init, linearResidual, tensor } from "./mod.ts";
 * await init();
 * const y = linearResidual(tensor([[1, 2]]), tensor([[1, 1]]), undefined, tensor([[10]]));
 * console.log(await y.toArray()); // [13]
 * ```
 */
export function linearResidual(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | undefined,
  residual: Tensor,
  drop?: LinearDropout,
  options: LinearResidualOptions = {},
): Tensor {
  if (weight.rank !== 2) throw new Error(`linearResidual: weight ${weight} must be [dOut, dIn]`);
  const [dOut, dIn] = weight.shape;
  if (x.rank < 1 || x.shape[x.rank - 1] !== dIn) {
    throw new Error(`linearResidual: input ${x} must end in dIn = ${dIn} (weight ${weight})`);
  }
  const outShape = [...x.shape.slice(0, -1), dOut];
  if (residual.shape.join() !== outShape.join()) {
    throw new Error(`linearResidual: residual ${residual} must have shape [${outShape}]`);
  }
  if (drop && !(drop.p >= 0 && drop.p <= 1)) {
    throw new Error(`linearResidual: dropout p must be in [0, 1], got ${drop.p}`);
  }
  const dp = drop && drop.p > 0 ? drop : undefined;
  if (options.inputGelu) {
    const fused = geluLinearResidual(x, weight, bias, residual, dp);
    if (fused) return fused;
    // Not one texture product, or W or b trains (their gradients read gelu(x)): the composed ops.
    const a = geluOp(x, { packOut: true }); // its pack is read next, by the product
    const y = linearResidual(a, weight, bias, residual, drop);
    a.release();
    return y;
  }
  if (dIn === 0 || x.size === 0 || dp?.p === 1) {
    // Degenerate shapes or p = 1: the composed ops handle them.
    const y = linear(x, weight, bias);
    const d = dp ? dropoutOp(y, dp.p, maskOf(dp)) : y;
    return binaryAdd(d, residual);
  }
  const x2 = rowsOf(x);
  const res = residual.isContiguous && residual.dtype === "f32" ? residual : copyOf(residual);
  const res2 = res.view([x2.shape[0], dOut], [dOut, 1]);
  const y2 = linearProduct(x2, weight, bias, { residual: res2, dropout: dp });
  res2.dispose();
  if (res !== residual) res.dispose();
  const y = reshapeTo(y2, outShape);
  const inputs = bias ? [x, weight, bias, residual] : [x, weight, residual];
  const recorded = record("linearResidual", y, inputs, (g, sumInto) => {
    const dxInto = x.requiresGrad ? sumInto?.(0) ?? null : null;
    if (dp && x.requiresGrad && !weight.requiresGrad && !(bias?.requiresGrad ?? false)) {
      // Only dx reads the dropped gradient (W and b frozen): on the texture variant the mask is
      // applied while packing g for dx = dropout(g)·W, so no dropped copy is made.
      const g2 = rowsOf(g);
      const rows = g2.shape[0];
      const into = dxInto?.view([rows, dIn], [dIn, 1]);
      const dx = maskedOperandProduct(g2, weight, "a", dp, into ? { into } : {});
      g2.dispose();
      into?.dispose();
      if (dx) {
        let gx = dxInto;
        if (gx) dx.dispose(); // a view of the pending gradient it was added into
        else gx = reshapeTo(dx, x.shape);
        return bias ? [gx, null, null, g] : [gx, null, g];
      }
    }
    const gd = dp ? dropoutOp(g, dp.p, maskOf(dp)) : g;
    const g2 = rowsOf(gd);
    const [dx, dw, db] = linearGrads(g2, x, x2, weight, bias, false, dxInto);
    g2.dispose();
    if (gd !== g) gd.dispose();
    return bias ? [dx, dw, db, g] : [dx, dw, g];
  }, [weight, x2]);
  if (!recorded.requiresGrad || !weight.requiresGrad) x2.dispose();
  return recorded;
}
