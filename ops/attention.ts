/**
 * Scaled dot-product attention with fused WGSL kernels (FlashAttention-style): the T×S score
 * matrix never reaches global memory. The forward streams keys past each query row with an online
 * softmax and keeps each row's logsumexp; the backward recomputes probabilities from it, writing
 * dQ per query row and dK/dV per key row, so every gradient element is written by exactly one
 * invocation (deterministic, no atomics).
 *
 * Supports grouped-query attention (query head h reads kv head ⌊h·Hkv/Hq⌋), causal masking
 * aligned to the end of the keys (query i sees keys j ≤ i + S − T, as with a KV cache), a key
 * padding mask, q/k/v given as strided views (read in place), and dropout on the attention
 * probabilities with a counter-based mask that the backward regenerates (see {@link
 * attentionDropoutKeep}), so the probabilities are never stored, with or without dropout.
 *
 * Two kernel variants form the "attention" family (see ./variants.ts); they share every kernel
 * generator and differ only in where the streamed rows (K/V, or Q/dO for dK/dV) are read from:
 * - "workgroup": tiles staged through workgroup memory by the whole workgroup, for GPUs;
 * - "texture": the streamed operands packed into rgba32float textures first and read with
 *   `textureLoad`, preferred on software adapters (llvmpipe), where storage-buffer and
 *   workgroup-memory reads are per-lane gathers and texture loads are several times faster.
 *
 * @module
 */
import { needsGrad, record } from "./autograd.ts";
import type { Gpu } from "./device.ts";
import { dropoutThreshold } from "./dropout.ts";
import { map, zeros } from "./elementwise.ts";
import { pcgHash, RNG_WGSL, rngU32, seedU32 } from "./random.ts";
import {
  type Bindable,
  type BindingDecl,
  defineKernel,
  grid1d,
  type Kernel,
  linearIndex,
  rt,
  type ScratchTexture,
} from "./runtime.ts";
import { keepOutputPack, keepTexture, outputPackTexture, takeKeptTexture } from "./matmul.ts";
import { empty, type Tensor } from "./tensor.ts";
import { type KernelFamily, kernelFamily } from "./variants.ts";

/** Options of {@link scaledDotProductAttention}. */
export interface AttentionOptions {
  /** Mask keys after each query's position; the last query row aligns with the last key. */
  causal?: boolean;
  /** [B, S], f32 or i32: nonzero keeps a key, 0 masks it (padding) for every query. */
  keyPaddingMask?: Tensor;
  /** Multiplier of q·k before the softmax (default 1/√D). */
  scale?: number;
  /** Overrides the workgroup shape the variant picks (for kernel tests and tuning). */
  tiling?: AttentionTiling;
  /** Dropout on the attention probabilities (training); absent or p = 0: none. */
  dropout?: AttentionDropout;
  /**
   * The output, merged to [B, T, Hq·D], is read next by a matrix product (a transformer's
   * attention output projection): where products read packed operands (the matmul's texture
   * variant) and D is a multiple of 4, the forward kernel writes that matrix's pack as it stores
   * the output and leaves it cached for the product. A hint: the values are the same either way.
   */
  packOut?: boolean;
  /**
   * q, k and v's gradients, merged to [B, L, H·D], are read next by matrix products (the
   * backward of the projections that made q, k and v): as `packOut`, the backward kernels write
   * their packs as they store the gradients.
   */
  packGrads?: boolean;
}

/**
 * Dropout on the attention probabilities: probability (b, h, i, j) is zeroed with probability `p`
 * and the kept ones scaled by 1/(1−p), after the softmax and before the product with v, as
 * nn.Dropout on attention_probs in Hugging Face's BERT/RoBERTa. The mask is
 * {@link attentionDropoutKeep} of (seed, stream, b·Hq + h, i, j).
 */
export interface AttentionDropout {
  /** Drop probability in [0, 1]. */
  p: number;
  /** Any integer (folded to 32 bits). */
  seed: number;
  /** The call's stream, an integer in [0, 2³²); every call of a run takes its own. */
  stream: number;
}

/**
 * Whether attention dropout keeps probability (query row `row` of head `batchHead` = b·Hq + h,
 * key `key`): pcg(key + pcg(row + rng_u32(seed, stream, batchHead))) ≥ round(p·2³²). One hash
 * per (batch·head) and per row is shared by the row's keys, so the kernels pay one hash per
 * probability; the backward recomputes the same bits. The plain-TS twin of the kernels' rule
 * (tests rebuild explicit masks with it).
 */
export function attentionDropoutKeep(
  d: AttentionDropout,
  batchHead: number,
  row: number,
  key: number,
): boolean {
  if (d.p === 1) return false;
  const rowKey = pcgHash((row + rngU32(seedU32(d.seed), d.stream, batchHead)) >>> 0);
  return pcgHash((key + rowKey) >>> 0) >= dropoutThreshold(d.p);
}

/** Workgroup shape of the attention kernels: invocations, and rows each invocation owns. */
export interface AttentionTiling {
  /** Invocations per workgroup. */
  threads: number;
  /** Rows each invocation owns: query rows (forward, dQ) or key rows (dK/dV). */
  rowsPerThread: number;
}

/** Sizes of one attention call; the attention family chooses its variant by them. */
export interface AttentionShapes {
  /** B. */
  batch: number;
  /** Hq, a multiple of Hkv. */
  queryHeads: number;
  /** Hkv. */
  kvHeads: number;
  /** T. */
  queryLen: number;
  /** S. */
  keyLen: number;
  /** D. */
  headDim: number;
}

/** Where a variant's kernels read the rows streamed past each owned row from. */
export type AttentionOperands = "workgroup" | "texture";

/** The attention kernel family; its variants are "workgroup" and "texture". */
export const ATTENTION: KernelFamily<AttentionShapes, AttentionOperands> = kernelFamily(
  "attention",
);

/** Compile-time constants a kernel is specialised on. */
interface TileShape {
  headDim: number;
  /** Invocations per workgroup. */
  threads: number;
  /** Rows each invocation owns: query rows (forward, dQ) or key rows (dK/dV). */
  rowsPerThread: number;
  /** Whether a key padding mask is bound. */
  masked: boolean;
  /** Whether the probabilities are dropped out (the dropout params are bound). */
  dropout: boolean;
  operands: AttentionOperands;
  /** "workgroup": streamed rows staged per step. */
  tile: number;
  /** "texture": operand rows per texture line (a power of two). */
  lineRows: number;
  /** Forward only: the output is also stored into texture P as the pack of [B·T, Hq·D]. */
  packOut?: boolean;
}

/** Running maximum before any key was seen; finite so that no kernel ever handles infinities. */
const NO_SCORE = -3.0e38;
/** Logsumexp stored for a row that sees no key: exp(s − this) is 0 for every real score. */
const EMPTY_ROW_LSE = 3.0e38;

function validate(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | undefined): AttentionShapes {
  for (const [name, t] of [["q", q], ["k", k], ["v", v]] as const) {
    if (t.rank !== 4) {
      throw new Error(
        `scaledDotProductAttention: ${name} must have rank 4 ([B, H, T, D]), got [${t.shape}]`,
      );
    }
    if (t.dtype !== "f32") {
      throw new Error(`scaledDotProductAttention: ${name} must be f32, got ${t.dtype}`);
    }
    if (t.strides.some((stride) => stride < 0)) {
      throw new Error(
        `scaledDotProductAttention: ${name} has negative strides [${t.strides}]; make it contiguous`,
      );
    }
  }
  const [batch, queryHeads, queryLen, headDim] = q.shape;
  const [kb, kvHeads, keyLen, kd] = k.shape;
  if (kb !== batch || kd !== headDim) {
    throw new Error(
      `scaledDotProductAttention: k [${k.shape}] must be [${batch}, Hkv, S, ${headDim}] to match q [${q.shape}]`,
    );
  }
  if (v.shape.join() !== k.shape.join()) {
    throw new Error(`scaledDotProductAttention: v [${v.shape}] must equal k's shape [${k.shape}]`);
  }
  if (kvHeads === 0 || queryHeads % kvHeads !== 0) {
    throw new Error(
      `scaledDotProductAttention: query heads (${queryHeads}) must be a multiple of kv heads (${kvHeads})`,
    );
  }
  if (mask) {
    if (mask.shape.join() !== [batch, keyLen].join()) {
      throw new Error(
        `scaledDotProductAttention: keyPaddingMask must be [B, S] = [${batch}, ${keyLen}], got [${mask.shape}]`,
      );
    }
    if (mask.dtype !== "f32" && mask.dtype !== "i32") {
      throw new Error(
        `scaledDotProductAttention: keyPaddingMask must be f32 or i32, got ${mask.dtype}`,
      );
    }
  }
  return { batch, queryHeads, kvHeads, queryLen, keyLen, headDim };
}

// ---- variants and workgroup shapes ---------------------------------------------------------------

/** Number of vec4s a head row occupies (the last one zero-padded when D is not a multiple of 4). */
function vecsPerRow(headDim: number): number {
  return Math.ceil(headDim / 4);
}

/** The largest tile (at most 32 rows) whose two vec4 row blocks and two scalars fit, or 0. */
function workgroupTile(g: Gpu, headDim: number): number {
  const budget = g.device.limits.maxComputeWorkgroupStorageSize;
  const fits = (tile: number) => 2 * tile * (vecsPerRow(headDim) * 16 + 4) <= budget;
  let tile = 32;
  while (tile > 1 && !fits(tile)) tile /= 2;
  return fits(tile) ? tile : 0;
}

/** Operand rows per texture line: the largest power of two whose texels fit one line, or 0. */
function textureLineRows(g: Gpu, headDim: number): number {
  const perLine = Math.floor(g.device.limits.maxTextureDimension2D / vecsPerRow(headDim));
  return perLine < 1 ? 0 : 2 ** Math.floor(Math.log2(perLine));
}

function textureFits(g: Gpu, s: AttentionShapes): boolean {
  const lineRows = textureLineRows(g, s.headDim);
  const lines = (rows: number) => Math.ceil(rows / lineRows);
  const max = g.device.limits.maxTextureDimension2D;
  return lineRows > 0 &&
    lines(s.batch * s.queryHeads * s.queryLen) <= max &&
    lines(s.batch * s.kvHeads * s.keyLen) <= max;
}

ATTENTION.register({
  name: "workgroup",
  preference: () => 1,
  supports: (g, s) => workgroupTile(g, s.headDim) > 0,
  run: "workgroup",
});

ATTENTION.register({
  name: "texture",
  // On llvmpipe (bench/attention_bench.ts, B 8, H 12, T 128, D 64) 13× faster than "workgroup":
  // forward 195 against 2562 ms. Workgroup memory is the fast path on real GPUs.
  preference: (g) => (g.adapter.isFallback ? 2 : 0),
  supports: textureFits,
  run: "texture",
});

/**
 * Rows per invocation of the texture variant. Every streamed row is read once per invocation
 * and reused for each owned row from registers; more rows read less but unroll more code.
 * Measured on llvmpipe at B 1, H 12, T 128, D 64 (forward, forward + backward; cold compile of
 * both): 1 row 6.2 ms, 49 ms, 3.4 s; 2 rows 4.4 ms, 29 ms, 8.2 s; 4 rows 7.8 ms, 34 ms, 24 s.
 */
const TEXTURE_ROWS_PER_THREAD = 2;

/**
 * The workgroup shape: on GPUs ("workgroup") one row per invocation, 64 together (16 when the
 * work is tiny); for "texture" 8 invocations (one llvmpipe SIMD vector) of a few rows each.
 */
function tileShape(
  operands: AttentionOperands,
  headDim: number,
  rowCount: number,
  masked: boolean,
  dropout: boolean,
  override: AttentionTiling | undefined,
): TileShape {
  const g = rt().gpu;
  const base = {
    headDim,
    masked,
    dropout,
    operands,
    tile: operands === "workgroup" ? workgroupTile(g, headDim) : 0,
    lineRows: operands === "texture" ? textureLineRows(g, headDim) : 0,
  };
  if (override) return { ...base, ...override };
  if (operands === "workgroup") {
    return { ...base, threads: rowCount <= 16 ? 16 : 64, rowsPerThread: 1 };
  }
  return { ...base, threads: 8, rowsPerThread: rowCount <= 8 ? 1 : TEXTURE_ROWS_PER_THREAD };
}

// ---- WGSL pieces shared by the kernels -----------------------------------------------------------

/** Uniform parameters locating a strided [B, H, L, D] operand. */
function stridedParams(name: string): [string, "u32"][] {
  return ["off", "sb", "sh", "sl", "sd"].map((s) => [`${name}_${s}`, "u32"]);
}

function stridedValues(name: string, t: Tensor): Record<string, number> {
  const [sb, sh, sl, sd] = t.strides;
  return {
    [`${name}_off`]: t.offset,
    [`${name}_sb`]: sb,
    [`${name}_sh`]: sh,
    [`${name}_sl`]: sl,
    [`${name}_sd`]: sd,
  };
}

/**
 * `fn NAME_vec4(b, h, l, c) -> vec4f`: elements 4c … 4c+3 of row (b, h, l) of the strided operand
 * bound as `NAME`, zero past D.
 */
function stridedVec4Fn(name: string, headDim: number): string {
  const lanes = [0, 1, 2, 3].map((x) => {
    const d = `4u * c + ${x}u`;
    return headDim % 4 === 0
      ? `${name}[base + (${d}) * params.${name}_sd]`
      : `select(0.0, ${name}[base + min(${d}, D - 1u) * params.${name}_sd], ${d} < D)`;
  });
  return `fn ${name}_vec4(b: u32, h: u32, l: u32, c: u32) -> vec4f {
  let base = params.${name}_off + b * params.${name}_sb + h * params.${name}_sh +
    l * params.${name}_sl;
  return vec4f(${lanes.join(", ")});
}`;
}

/**
 * `count` generated lines. Everything indexed by owned row or by vec4 is unrolled into named
 * variables: llvmpipe keeps private arrays indexed at run time in scratch memory, read by
 * per-lane gathers, while named values stay in registers (on GPUs the two compile alike).
 */
function unroll(count: number, line: (i: number) => string, indent: string): string {
  return Array.from({ length: count }, (_, i) => indent + line(i)).join("\n");
}

/** The dot product of two head rows given as vec4 expressions (one horizontal sum at the end). */
function rowDot(headDim: number, a: (c: number) => string, b: (c: number) => string): string {
  const terms = Array.from({ length: vecsPerRow(headDim) }, (_, c) => `${a(c)} * ${b(c)}`);
  return `dot(${terms.join(" + ")}, vec4f(1.0))`;
}

/** Stores of the register row `reg(c)` (times `factor`) into contiguous `target` at `base`. */
function storeRow(
  headDim: number,
  target: string,
  base: string,
  reg: (c: number) => string,
  factor: string,
  indent: string,
): string {
  return unroll(
    headDim,
    (d) => `${target}[${base} + ${d}u] = ${reg(d >> 2)}.${"xyzw"[d & 3]}${factor};`,
    indent,
  );
}

/**
 * WGSL storing a row's vec4 registers `reg(c)` (times `factor`) into texture `target` as the pack
 * of the merged [B·L, H·D] matrix: texel (head·D/4 + c, tokenRow). D is a multiple of 4, so a
 * head's columns are whole texels and the values are the ones {@link storeRow} writes.
 */
function storePackedRow(
  headDim: number,
  target: string,
  head: string,
  tokenRow: string,
  reg: (c: number) => string,
  factor: string,
  indent: string,
): string {
  return unroll(
    vecsPerRow(headDim),
    (c) =>
      `textureStore(${target}, vec2u(${head} * ${headDim / 4}u + ${c}u, ${tokenRow}), ` +
      `${reg(c)}${factor});`,
    indent,
  );
}

/** Write-only texture bindings for a kernel's packed outputs. */
function packBindings(names: readonly string[]) {
  return names.map((name) => ({ name, texture: "rgba32float", access: "write" } as const));
}

const GEOMETRY_PARAMS: [string, "u32" | "f32"][] = [
  ["kv_heads", "u32"],
  ["group", "u32"],
  ["tq", "u32"],
  ["sk", "u32"],
  ["causal", "u32"],
  ["scale", "f32"],
];

function geometryValues(
  s: AttentionShapes,
  causal: boolean,
  scale: number,
): Record<string, number> {
  return {
    kv_heads: s.kvHeads,
    group: s.queryHeads / s.kvHeads,
    tq: s.queryLen,
    sk: s.keyLen,
    causal: causal ? 1 : 0,
    scale,
  };
}

/**
 * WGSL of attention dropout ({@link attentionDropoutKeep}): the per-row key and the multiplier
 * of probability (row, key) — 0 when dropped, 1/(1−p) when kept.
 */
const DROPOUT_WGSL = /* wgsl */ `
fn drop_row_key(batch_head: u32, row: u32) -> u32 {
  return pcg_hash(row + rng_u32(params.drop_seed, params.drop_stream, batch_head));
}
fn drop_mul(row_key: u32, key: u32) -> f32 {
  return select(0.0, params.drop_scale, pcg_hash(key + row_key) >= params.drop_threshold);
}
`;

const DROPOUT_PARAMS: [string, "u32" | "f32"][] = [
  ["drop_seed", "u32"],
  ["drop_stream", "u32"],
  ["drop_threshold", "u32"],
  ["drop_scale", "f32"],
];

function dropoutValues(d: AttentionDropout | undefined): Record<string, number> {
  if (!d) return { drop_seed: 0, drop_stream: 0, drop_threshold: 0, drop_scale: 1 };
  return {
    drop_seed: seedU32(d.seed),
    drop_stream: d.stream,
    drop_threshold: dropoutThreshold(d.p),
    // p = 1 drops everything (the clamped threshold would keep one u32 value in 2³²).
    drop_scale: d.p === 1 ? 0 : 1 / (1 - d.p),
  };
}

function constants(s: TileShape): string {
  const layout = s.operands === "workgroup"
    ? `const TILE: u32 = ${s.tile}u;`
    : `const LINE_ROWS: u32 = ${s.lineRows}u;
// Texel of vec4 0 of packed operand row \`row\` (see the pack kernel).
fn texel_of(row: u32) -> vec2u {
  return vec2u((row % LINE_ROWS) * NV, row / LINE_ROWS);
}`;
  return `${s.dropout ? RNG_WGSL + DROPOUT_WGSL : ""}const D: u32 = ${s.headDim}u;
const NV: u32 = ${vecsPerRow(s.headDim)}u;
const THREADS: u32 = ${s.threads}u;
const ROWS: u32 = THREADS * ${s.rowsPerThread}u;
${layout}
const NO_SCORE: f32 = ${NO_SCORE.toExponential()};
const EMPTY_ROW_LSE: f32 = ${EMPTY_ROW_LSE.toExponential()};
// Keys [0, limit) are visible to query t: all of them, or up to t + S − T when causal.
fn key_limit(t: u32) -> i32 {
  let s = i32(params.sk);
  if (params.causal == 0u) { return s; }
  return clamp(i32(t) + 1 + s - i32(params.tq), 0, s);
}`;
}

/** A vec4 operand streamed past the owned rows. */
interface StreamedOperand {
  /** Register prefix in the body: `${reg}0`, `${reg}1`, … hold the streamed row. */
  reg: string;
  /** Buffer binding (strided, "workgroup") and texture binding ("texture"). */
  buffer: string;
  texture: string;
  /** Multiply by params.scale when read (q). */
  scaled: boolean;
}

/** A scalar per streamed row (mask flag, lse, D_i) made available to the body. */
interface StreamedScalar {
  name: string;
  /** WGSL value for streamed row `n` (a u32 expression < the stream's length). */
  value: (n: string) => string;
}

/** Rows streamed past each owned row: keys (forward, dQ) or queries of one head (dK/dV). */
interface Stream {
  /** Uniform WGSL bounds of the streamed index. */
  start: string;
  end: string;
  /** The stream's length (for clamping staged reads) and head for strided reads. */
  length: string;
  head: string;
  /** The streamed row's index in the packed operand texture. */
  packedRow: (n: string) => string;
  operands: StreamedOperand[];
  scalars: StreamedScalar[];
  /** Uniform condition (over the scalars) under which a streamed row is skipped. */
  skip?: string;
  /** Name of the streamed index (i32) the body sees. */
  index: string;
  /** The body, already unrolled over the owned rows. */
  body: string;
}

/**
 * The loop over a stream. "workgroup": the workgroup stages TILE rows (and their scalars) in
 * workgroup memory between barriers, then every invocation walks them; "texture": each
 * invocation reads the rows straight from the packed textures, with no barrier.
 */
function streamLoop(s: TileShape, st: Stream): string {
  const nv = vecsPerRow(s.headDim);
  const scale = (o: StreamedOperand) => (o.scaled ? " * params.scale" : "");
  const skip = st.skip ? `\n      if (${st.skip}) { continue; }` : "";
  if (s.operands === "texture") {
    return `
    for (var n = ${st.start}; n < ${st.end}; n++) {
${
      unroll(st.scalars.length, (i) =>
        `let ${st.scalars[i].name} = ${st.scalars[i].value("n")};`, "      ")
    }${skip}
      let ${st.index} = i32(n);
      let tx = texel_of(${st.packedRow("n")});
${
      st.operands.map((o) =>
        unroll(
          nv,
          (c) =>
            `let ${o.reg}${c} = textureLoad(${o.texture}, vec2u(tx.x + ${c}u, tx.y))${scale(o)};`,
          "      ",
        )
      ).join("\n")
    }
${st.body}
    }`;
  }
  return `
    for (var n0 = ${st.start}; n0 < ${st.end}; n0 += TILE) {
      for (var e = lid; e < TILE * NV; e += THREADS) {
        let n = min(n0 + e / NV, ${st.length} - 1u);
${
    st.operands.map((o) =>
      `        ${o.buffer}_tile[e] = ${o.buffer}_vec4(b, ${st.head}, n, e % NV)${scale(o)};`
    ).join("\n")
  }
      }
      for (var e = lid; e < TILE; e += THREADS) {
        let n = min(n0 + e, ${st.length} - 1u);
${
    unroll(st.scalars.length, (i) =>
      `${st.scalars[i].name}_tile[e] = ${st.scalars[i].value("n")};`, "        ")
  }
      }
      workgroupBarrier();
      let count = min(TILE, ${st.end} - n0);
      for (var nn = 0u; nn < count; nn++) {
${
    unroll(st.scalars.length, (i) =>
      `let ${st.scalars[i].name} = ${st.scalars[i].name}_tile[nn];`, "        ")
  }${skip.replace("\n      ", "\n        ")}
        let ${st.index} = i32(n0 + nn);
        let base = nn * NV;
${
    st.operands.map((o) =>
      unroll(nv, (c) => `let ${o.reg}${c} = ${o.buffer}_tile[base + ${c}u];`, "        ")
    )
      .join("\n")
  }
${st.body}
      }
      workgroupBarrier();
    }`;
}

/** Workgroup arrays a "workgroup" stream stages into (nothing for "texture"). */
function streamDecls(s: TileShape, operands: StreamedOperand[], scalars: string[]): string {
  if (s.operands === "texture") return "";
  return [
    ...operands.map((o) => `var<workgroup> ${o.buffer}_tile: array<vec4f, TILE * NV>;`),
    ...scalars.map((n) => `var<workgroup> ${n}_tile: array<f32, TILE>;`),
  ].join("\n");
}

/** Bindings of streamed operands: strided buffers ("workgroup") or packed textures ("texture"). */
function streamBindings(s: TileShape, operands: StreamedOperand[]): BindingDecl[] {
  return operands.map((o): BindingDecl =>
    s.operands === "texture"
      ? { name: o.texture, texture: "rgba32float", access: "read" }
      : { name: o.buffer, type: "f32", access: "read" }
  );
}

/** Vec4 loaders of the strided buffers a kernel binds. */
function loaders(s: TileShape, rowOperands: string[], streamed: StreamedOperand[]): string {
  const buffers = [
    ...rowOperands,
    ...(s.operands === "workgroup" ? streamed.map((o) => o.buffer) : []),
  ];
  return buffers.map((name) => stridedVec4Fn(name, s.headDim)).join("\n");
}

const KEY_VALUE_STREAM: StreamedOperand[] = [
  { reg: "kc", buffer: "k", texture: "k_tex", scaled: false },
  { reg: "vc", buffer: "v", texture: "v_tex", scaled: false },
];

const QUERY_STREAM: StreamedOperand[] = [
  { reg: "qc", buffer: "q", texture: "q_tex", scaled: true },
  { reg: "dc", buffer: "grad_out", texture: "grad_out_tex", scaled: false },
];

const KEEP_BINDING = { name: "keep", type: "f32", access: "read" } as const;

/**
 * Prologue of the kernels that own query rows: a workgroup's rows are ROWS consecutive
 * (query head, position) pairs of the heads sharing kv head `kvh`; invocation `lid` owns rows
 * first_row + lid + r·THREADS. `key_end` (uniform) is the causal limit of the workgroup's last row.
 */
function queryRowPrologue(s: TileShape): string {
  return `
  let b = wg.z;
  let kvh = wg.y;
  let row_count = params.group * params.tq;
  let first_row = wg.x * ROWS;
  let last = min(first_row + ROWS, row_count) - 1u;
  var t_max = last % params.tq;
  if (first_row / params.tq != last / params.tq) { t_max = params.tq - 1u; }
  let key_end = u32(key_limit(t_max));
${
    unroll(
      s.rowsPerThread,
      (r) =>
        `let row${r} = first_row + lid + ${r}u * THREADS;
  let live${r} = row${r} < row_count;
  let head${r} = kvh * params.group + min(row${r}, row_count - 1u) / params.tq;
  let pos${r} = min(row${r}, row_count - 1u) % params.tq;
  let limit${r} = key_limit(pos${r});
  let out_row${r} = (b * params.kv_heads * params.group + head${r}) * params.tq + pos${r};
  let heads_base${r} = ((b * params.tq + pos${r}) * params.kv_heads * params.group + head${r}) * D;${
          s.dropout
            ? `
  let row_key${r} = drop_row_key(b * params.kv_heads * params.group + head${r}, pos${r});`
            : ""
        }`,
      "  ",
    )
  }`;
}

/** The key stream of the query-row kernels (forward, dQ): keys [0, key_end) of kv head `kvh`. */
function keyStream(s: TileShape, body: string): Stream {
  return {
    start: "0u",
    end: "key_end",
    length: "params.sk",
    head: "kvh",
    packedRow: (n) => `(b * params.kv_heads + kvh) * params.sk + ${n}`,
    operands: KEY_VALUE_STREAM,
    scalars: s.masked ? [{ name: "keep_j", value: (n) => `keep[b * params.sk + ${n}]` }] : [],
    skip: s.masked ? "keep_j == 0.0" : undefined,
    index: "j",
    body,
  };
}

const kernels = new Map<string, Kernel>();

function cached(kind: string, s: TileShape, build: () => Kernel): Kernel {
  const key = `${kind}|${JSON.stringify(s)}`;
  let k = kernels.get(key);
  if (!k) {
    k = build();
    kernels.set(key, k);
  }
  return k;
}

const FORWARD_PARAMS = [...GEOMETRY_PARAMS, ...["q", "k", "v"].flatMap(stridedParams)];
const BACKWARD_PARAMS = [...FORWARD_PARAMS, ...stridedParams("grad_out")];

/** The uniform parameters of a kernel: `base`, and the dropout ones when it drops out. */
function paramsOf(s: TileShape, base: [string, "u32" | "f32"][]): [string, "u32" | "f32"][] {
  return s.dropout ? [...base, ...DROPOUT_PARAMS] : base;
}

/** WGSL: the dropout multiplier `dm` of (owned row r's key, key `key`), or nothing. */
function dropMul(s: TileShape, rowKey: string, key: string): string {
  return s.dropout ? `let dm = drop_mul(${rowKey}, ${key});` : "";
}

// ---- forward -------------------------------------------------------------------------------------

/*
 * Forward layout: workgroup (x: block of ROWS query rows, y: kv head, z: batch); a block's rows
 * run over the (query head, position) pairs of the query heads sharing that kv head, so a GQA
 * group shares every streamed key. Each invocation keeps its rows' scaled q and output
 * accumulators in registers (vec4s) and folds keys in one by one with an online softmax (running
 * max m, rescaled only when it grows; running sum l). Keys arrive in TILE-row blocks staged in
 * workgroup memory ("workgroup") or straight from packed textures ("texture"). Writes out
 * [B, Hq, T, D] stored as [B, T, Hq, D] (see {@link headsInterleaved}) and the row logsumexp
 * m + log l ([B, Hq, T], contiguous).
 */
function forwardKernel(s: TileShape): Kernel {
  const D = s.headDim;
  const nv = vecsPerRow(D);
  // The normaliser l sums the undropped probabilities; only the weights of v are dropped.
  const pd = s.dropout ? "(p * dm)" : "p";
  const body = unroll(s.rowsPerThread, (r) =>
    `if (j < limit${r}) {
        let x = ${rowDot(D, (c) => `qs${r}_${c}`, (c) => `kc${c}`)};
        if (x > m${r}) {
          let alpha = exp(m${r} - x);
          l${r} *= alpha;
${unroll(nv, (c) => `acc${r}_${c} *= alpha;`, "          ")}
          m${r} = x;
        }
        let p = exp(x - m${r});
        l${r} += p;
        ${dropMul(s, `row_key${r}`, "u32(j)")}
${unroll(nv, (c) => `acc${r}_${c} += ${pd} * vc${c};`, "        ")}
      }`, "      ");
  return cached("forward", s, () =>
    defineKernel({
      name: `attention_forward_${s.operands}`,
      bindings: [
        { name: "q", type: "f32", access: "read" },
        ...streamBindings(s, KEY_VALUE_STREAM),
        ...(s.masked ? [KEEP_BINDING] : []),
        { name: "out", type: "f32", access: "read_write" },
        { name: "lse", type: "f32", access: "read_write" },
        ...packBindings(s.packOut ? ["P"] : []),
      ],
      params: paramsOf(s, FORWARD_PARAMS),
      source: `${constants(s)}
${loaders(s, ["q"], KEY_VALUE_STREAM)}
${streamDecls(s, KEY_VALUE_STREAM, s.masked ? ["keep_j"] : [])}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {${
        queryRowPrologue(s)
      }
${
        unroll(s.rowsPerThread, (r) =>
          `var m${r} = NO_SCORE;
  var l${r} = 0.0;
${unroll(nv, (c) => `let qs${r}_${c} = q_vec4(b, head${r}, pos${r}, ${c}u) * params.scale;`, "  ")}
${unroll(nv, (c) => `var acc${r}_${c} = vec4f(0.0);`, "  ")}`, "  ")
      }${streamLoop(s, keyStream(s, body))}
${
        unroll(s.rowsPerThread, (r) =>
          `if (live${r}) {
    let inv = select(0.0, 1.0 / l${r}, l${r} > 0.0);
${
            storeRow(
              D,
              "out",
              `heads_base${r}`,
              (c) => `acc${r}_${c}`,
              " * inv",
              "    ",
            )
          }${
            s.packOut
              ? "\n" +
                storePackedRow(
                  D,
                  "P",
                  `head${r}`,
                  `b * params.tq + pos${r}`,
                  (c) => `acc${r}_${c}`,
                  " * inv",
                  "    ",
                )
              : ""
          }
    lse[out_row${r}] = select(EMPTY_ROW_LSE, m${r} + log(l${r}), l${r} > 0.0);
  }`, "  ")
      }
}`,
    }));
}

// ---- backward ------------------------------------------------------------------------------------

/*
 * Delta layout: one invocation per query row computes D_i = Σ_d dO[i, d]·O[i, d] (both strided),
 * the correction term of the softmax backward shared by dQ and dK.
 */
const deltaKernel = defineKernel({
  name: "attention_delta",
  bindings: [
    { name: "grad_out", type: "f32", access: "read" },
    { name: "out", type: "f32", access: "read" },
    { name: "delta", type: "f32", access: "read_write" },
  ],
  params: [
    ["rows", "u32"],
    ["heads", "u32"],
    ["tq", "u32"],
    ["dim", "u32"],
    ...stridedParams("grad_out"),
    ...stridedParams("out"),
  ],
  source: `
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(64)};
  if (i >= params.rows) { return; }
  let t = i % params.tq;
  let h = (i / params.tq) % params.heads;
  let b = i / (params.tq * params.heads);
  let base = params.grad_out_off + b * params.grad_out_sb + h * params.grad_out_sh +
    t * params.grad_out_sl;
  let o_base = params.out_off + b * params.out_sb + h * params.out_sh + t * params.out_sl;
  var acc = 0.0;
  for (var d = 0u; d < params.dim; d++) {
    acc += grad_out[base + d * params.grad_out_sd] * out[o_base + d * params.out_sd];
  }
  delta[i] = acc;
}`,
});

const LSE_DELTA_BINDINGS = [
  { name: "lse", type: "f32", access: "read" },
  { name: "delta", type: "f32", access: "read" },
] as const;

/*
 * dQ layout: the forward's grid, row ownership and key stream. Each invocation keeps its rows'
 * scaled q, dO, lse and D_i in registers: p = exp(s − lse), dS = p·(dO·v − D_i), dq += dS·k.
 * Rows that see no key end with dq = 0.
 */
function gradQueryKernel(s: TileShape): Kernel {
  const D = s.headDim;
  const nv = vecsPerRow(D);
  const body = unroll(s.rowsPerThread, (r) =>
    `if (j < limit${r}) {
        let x = ${rowDot(D, (c) => `qs${r}_${c}`, (c) => `kc${c}`)};
        let dp = ${rowDot(D, (c) => `dos${r}_${c}`, (c) => `vc${c}`)};
        ${dropMul(s, `row_key${r}`, "u32(j)")}
        let ds = exp(x - row_lse${r}) * (${s.dropout ? "dp * dm" : "dp"} - row_delta${r});
${unroll(nv, (c) => `dq${r}_${c} += ds * kc${c};`, "        ")}
      }`, "      ");
  return cached("grad_q", s, () =>
    defineKernel({
      name: `attention_grad_q_${s.operands}`,
      bindings: [
        { name: "q", type: "f32", access: "read" },
        { name: "grad_out", type: "f32", access: "read" },
        ...streamBindings(s, KEY_VALUE_STREAM),
        ...LSE_DELTA_BINDINGS,
        ...(s.masked ? [KEEP_BINDING] : []),
        { name: "grad_q", type: "f32", access: "read_write" },
        ...packBindings(s.packOut ? ["PQ"] : []),
      ],
      params: paramsOf(s, BACKWARD_PARAMS),
      source: `${constants(s)}
${loaders(s, ["q", "grad_out"], KEY_VALUE_STREAM)}
${streamDecls(s, KEY_VALUE_STREAM, s.masked ? ["keep_j"] : [])}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {${
        queryRowPrologue(s)
      }
${
        unroll(s.rowsPerThread, (r) =>
          `let row_lse${r} = lse[out_row${r}];
  let row_delta${r} = delta[out_row${r}];
${unroll(nv, (c) => `let qs${r}_${c} = q_vec4(b, head${r}, pos${r}, ${c}u) * params.scale;`, "  ")}
${unroll(nv, (c) => `let dos${r}_${c} = grad_out_vec4(b, head${r}, pos${r}, ${c}u);`, "  ")}
${unroll(nv, (c) => `var dq${r}_${c} = vec4f(0.0);`, "  ")}`, "  ")
      }${streamLoop(s, keyStream(s, body))}
${
        unroll(s.rowsPerThread, (r) =>
          `if (live${r}) {
${
            storeRow(
              D,
              "grad_q",
              `heads_base${r}`,
              (c) => `dq${r}_${c}`,
              " * params.scale",
              "    ",
            )
          }${
            s.packOut
              ? "\n" +
                storePackedRow(
                  D,
                  "PQ",
                  `head${r}`,
                  `b * params.tq + pos${r}`,
                  (c) => `dq${r}_${c}`,
                  " * params.scale",
                  "    ",
                )
              : ""
          }
  }`, "  ")
      }
}`,
    }));
}

/*
 * dK/dV layout: workgroup (x: block of ROWS key rows, y: kv head, z: batch); invocation `lid`
 * owns keys first_key + lid + r·THREADS, holding their k, v, dk, dv in registers (vec4s). It
 * streams the queries of every head in the group (scaled q, dO, lse, D_i; staged or from
 * textures as in the forward), starting at the first query the block's earliest key is visible
 * to when causal: p = exp(s − lse), dv += p·dO, dS = p·(dO·v − D_i), dk += dS·q·scale. Masked
 * or out-of-range keys end with zeros. dQ, dK and dV are stored heads-interleaved like the output.
 */
function gradKeyValueKernel(s: TileShape): Kernel {
  const D = s.headDim;
  const nv = vecsPerRow(D);
  const body = unroll(s.rowsPerThread, (r) =>
    `if (live${r} && i >= first_query${r}) {
          let x = ${rowDot(D, (c) => `qc${c}`, (c) => `ks${r}_${c}`)};
          let dp = ${rowDot(D, (c) => `dc${c}`, (c) => `vs${r}_${c}`)};
          let p = exp(x - row_lse);
          ${dropMul(s, "row_key", `key${r}`)}
          let ds = p * (${s.dropout ? "dp * dm" : "dp"} - row_delta);
${unroll(nv, (c) => `dv${r}_${c} += ${s.dropout ? "(p * dm)" : "p"} * dc${c};`, "          ")}
${unroll(nv, (c) => `dk${r}_${c} += ds * qc${c};`, "          ")}
        }`, "        ");
  // Dropout: the streamed query's row key, shared by every owned key.
  const rowKeyLine = s.dropout ? "        let row_key = pcg_hash(u32(i) + head_key);\n" : "";
  const stream: Stream = {
    start: "q_start",
    end: "params.tq",
    length: "params.tq",
    head: "h",
    packedRow: (n) => `row_base + ${n}`,
    operands: QUERY_STREAM,
    scalars: [
      { name: "row_lse", value: (n) => `lse[row_base + ${n}]` },
      { name: "row_delta", value: (n) => `delta[row_base + ${n}]` },
    ],
    index: "i",
    body: rowKeyLine + body,
  };
  return cached("grad_kv", s, () =>
    defineKernel({
      name: `attention_grad_kv_${s.operands}`,
      bindings: [
        { name: "k", type: "f32", access: "read" },
        { name: "v", type: "f32", access: "read" },
        ...streamBindings(s, QUERY_STREAM),
        ...LSE_DELTA_BINDINGS,
        ...(s.masked ? [KEEP_BINDING] : []),
        { name: "grad_k", type: "f32", access: "read_write" },
        { name: "grad_v", type: "f32", access: "read_write" },
        ...packBindings(s.packOut ? ["PK", "PV"] : []),
      ],
      params: paramsOf(s, BACKWARD_PARAMS),
      source: `${constants(s)}
${loaders(s, ["k", "v"], QUERY_STREAM)}
${streamDecls(s, QUERY_STREAM, ["row_lse", "row_delta"])}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let b = wg.z;
  let kvh = wg.y;
  let first_key = wg.x * ROWS;
  // Query i sees key j when i ≥ j + T − S (causal); the block's first key bounds the start.
  let shift = i32(params.tq) - i32(params.sk);
  var q_start = 0u;
  if (params.causal != 0u) { q_start = u32(clamp(i32(first_key) + shift, 0, i32(params.tq))); }
${
        unroll(s.rowsPerThread, (r) =>
          `let key${r} = first_key + lid + ${r}u * THREADS;
  let key_c${r} = min(key${r}, params.sk - 1u);
  let live${r} = key${r} < params.sk${s.masked ? ` && keep[b * params.sk + key_c${r}] != 0.0` : ""};
  let first_query${r} = select(0, i32(key${r}) + shift, params.causal != 0u);
${unroll(nv, (c) => `let ks${r}_${c} = k_vec4(b, kvh, key_c${r}, ${c}u);`, "  ")}
${unroll(nv, (c) => `let vs${r}_${c} = v_vec4(b, kvh, key_c${r}, ${c}u);`, "  ")}
${unroll(nv, (c) => `var dk${r}_${c} = vec4f(0.0);`, "  ")}
${unroll(nv, (c) => `var dv${r}_${c} = vec4f(0.0);`, "  ")}`, "  ")
      }
  for (var gh = 0u; gh < params.group; gh++) {
    let h = kvh * params.group + gh;
    let row_base = (b * params.kv_heads * params.group + h) * params.tq;${
        s.dropout
          ? `
    let head_key = rng_u32(params.drop_seed, params.drop_stream, b * params.kv_heads * params.group + h);`
          : ""
      }${streamLoop(s, stream)}
  }
${
        unroll(s.rowsPerThread, (r) =>
          `if (key${r} < params.sk) {
    let o = ((b * params.sk + key${r}) * params.kv_heads + kvh) * D;
${
            storeRow(
              D,
              "grad_k",
              "o",
              (c) => `dk${r}_${c}`,
              "",
              "    ",
            )
          }
${storeRow(D, "grad_v", "o", (c) => `dv${r}_${c}`, "", "    ")}${
            s.packOut
              ? ["PK", "PV"].map((t) =>
                "\n" +
                storePackedRow(
                  D,
                  t,
                  "kvh",
                  `b * params.sk + key${r}`,
                  (c) => `${t === "PK" ? "dk" : "dv"}${r}_${c}`,
                  "",
                  "    ",
                )
              ).join("")
              : ""
          }
  }`, "  ")
      }
}`,
    }));
}

// ---- packing for the texture variant -------------------------------------------------------------

/*
 * Pack layout: one invocation per texel. Row `row` of a strided [B, H, L, D] operand (rows in
 * (b, h, l) order) fills texels ((row % LINE_ROWS)·NV + c, row / LINE_ROWS), c < NV, of an
 * rgba32float texture with elements 4c … 4c+3, zero past D.
 */
function packKernel(s: TileShape): Kernel {
  return cached("pack", { ...s, threads: 64, rowsPerThread: 1, masked: false }, () =>
    defineKernel({
      name: "attention_pack",
      bindings: [
        { name: "src", type: "f32", access: "read" },
        { name: "dst", texture: "rgba32float", access: "write" },
      ],
      params: [["rows", "u32"], ["heads", "u32"], ["len", "u32"], ...stridedParams("src")],
      source: `const D: u32 = ${s.headDim}u;
const NV: u32 = ${vecsPerRow(s.headDim)}u;
const LINE_ROWS: u32 = ${s.lineRows}u;
${stridedVec4Fn("src", s.headDim)}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(64)};
  if (i >= params.rows * NV) { return; }
  let row = i / NV;
  let c = i % NV;
  let l = row % params.len;
  let h = (row / params.len) % params.heads;
  let b = row / (params.len * params.heads);
  let x = (row % LINE_ROWS) * NV + c;
  textureStore(dst, vec2u(x, row / LINE_ROWS), src_vec4(b, h, l, c));
}`,
    }));
}

/** Pack `t` ([B, H, L, D], any strides) into a scratch texture laid out as `s` reads it. */
function packRows(t: Tensor, s: TileShape): ScratchTexture {
  const [batch, heads, len] = t.shape;
  const rows = batch * heads * len;
  const nv = vecsPerRow(s.headDim);
  const tex = rt().textures.acquire(nv * Math.min(rows, s.lineRows), Math.ceil(rows / s.lineRows));
  rt().dispatch(
    packKernel(s),
    [t, tex],
    { rows, heads, len, ...stridedValues("src", t) },
    grid1d(Math.ceil((rows * nv) / 64)),
  );
  return tex;
}

/**
 * Dispatch `kernel` with the streamed operands bound as `s` reads them: the tensors themselves
 * ("workgroup") or textures packed from them for this dispatch ("texture").
 */
function dispatchStreamed(
  kernel: Kernel,
  s: TileShape,
  before: readonly Bindable[],
  streamed: readonly Tensor[],
  after: readonly Bindable[],
  params: Record<string, number>,
  grid: [number, number, number],
  keep = false,
): void {
  if (s.operands === "workgroup") {
    rt().dispatch(kernel, [...before, ...streamed, ...after], params, grid);
    return;
  }
  // A pack the forward kept (`keep`) serves the backward kernel that streams the same operand
  // in the same tile shape (dQ's reads k and v as the forward did), which then frees it.
  const keys = streamed.map((t) =>
    `attention|${JSON.stringify(s)}|${t.offset}|${t.shape.join()}|${t.strides.join()}`
  );
  const textures = streamed.map((t, i) => takeKeptTexture(t, keys[i]) ?? packRows(t, s));
  rt().dispatch(kernel, [...before, ...textures, ...after], params, grid);
  textures.forEach((tex, i) => {
    if (!keep || !keepTexture(streamed[i], keys[i], tex)) rt().textures.release(tex);
  });
}

// ---- the op --------------------------------------------------------------------------------------

/**
 * A new [B, H, L, D] tensor stored as [B, L, H, D] (a permuted view). Attention writes its output
 * and gradients in this layout because their consumers want the heads side by side: the output
 * is transposed back and merged into [B, L, H·D] (a view instead of a copy), and q/k/v's
 * gradients flow back through the same transpose and reshape onto the projections' outputs.
 */
function headsInterleaved(b: number, h: number, l: number, d: number): Tensor {
  const t = empty([b, l, h, d]);
  const v = t.view([b, h, l, d], [l * h * d, d, h * d, 1]);
  t.dispose();
  return v;
}

/** The dropout option checked, or undefined when it drops nothing. */
function validDropout(d: AttentionDropout | undefined): AttentionDropout | undefined {
  if (!d) return undefined;
  if (!(d.p >= 0 && d.p <= 1)) {
    throw new Error(`scaledDotProductAttention: dropout.p must be in [0, 1], got ${d.p}`);
  }
  if (!Number.isInteger(d.seed)) {
    throw new Error(`scaledDotProductAttention: dropout.seed must be an integer, got ${d.seed}`);
  }
  if (!Number.isInteger(d.stream) || d.stream < 0 || d.stream >= 4294967296) {
    throw new Error(
      `scaledDotProductAttention: dropout.stream must be an integer in [0, 2^32), got ${d.stream}`,
    );
  }
  return d.p === 0 ? undefined : d;
}

/**
 * Attention softmax(scale·q·kᵀ + mask)·v over q [B, Hq, T, D] and k, v [B, Hkv, S, D], computed
 * by fused kernels that never store the T×S scores. Query head h uses kv head ⌊h·Hkv/Hq⌋
 * (grouped-query attention). With `causal`, query i sees keys j ≤ i + S − T, so a query block
 * appended to a KV cache attends to the whole cache. Rows whose keys are all masked output 0 and
 * get zero gradients. With `dropout`, softmax(…) is replaced by dropout(softmax(…)) with the mask
 * of {@link attentionDropoutKeep}, regenerated in the backward. Differentiable in q, k and v.
 *
 * @example
 * ```ts
 * import { init, randNormal, scaledDotProductAttention } from "./mod.ts";
 * await init();
 * const q = randNormal([1, 4, 8, 16], 0, 1, { seed: 1 });
 * const kv = randNormal([1, 2, 8, 16], 0, 1, { seed: 2 });
 * const out = scaledDotProductAttention(q, kv, kv, { causal: true }); // [1, 4, 8, 16]
 * ```
 */
export function scaledDotProductAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options: AttentionOptions = {},
): Tensor {
  const mask = options.keyPaddingMask;
  const shapes = validate(q, k, v, mask);
  const causal = options.causal ?? false;
  const scale = options.scale ?? 1 / Math.sqrt(shapes.headDim);
  if (!Number.isFinite(scale)) {
    throw new Error(`scaledDotProductAttention: scale must be finite, got ${scale}`);
  }
  const tiling = options.tiling;
  if (
    tiling &&
    !(Number.isInteger(tiling.threads) && tiling.threads >= 1 &&
      tiling.threads <= rt().device.limits.maxComputeInvocationsPerWorkgroup &&
      Number.isInteger(tiling.rowsPerThread) && tiling.rowsPerThread >= 1)
  ) {
    throw new Error(
      `scaledDotProductAttention: tiling must have integer threads (1 to the device limit) and rowsPerThread ≥ 1, got ${
        JSON.stringify(tiling)
      }`,
    );
  }
  const drop = validDropout(options.dropout);
  const { batch, queryHeads, kvHeads, queryLen, keyLen, headDim } = shapes;
  if (q.size === 0 || keyLen === 0) {
    // No key (or nothing to compute): every row is fully masked.
    const out = zeros(q.shape);
    return record("scaledDotProductAttention", out, [q, k, v], () => [
      zeros(q.shape),
      zeros(k.shape),
      zeros(v.shape),
    ]);
  }
  const operands = ATTENTION.choose(shapes).run;
  // The kernels read the mask as contiguous f32 keep flags (nonzero keeps), from offset 0: such a
  // mask is bound as it is, any other dtype or layout is converted first.
  const direct = mask && mask.dtype === "f32" && mask.isContiguous && mask.offset === 0;
  const keep = mask && !direct ? map([mask], "select(0.0, 1.0, a != 0.0)") : mask;
  const masked = keep ? [keep] : [];
  const out = headsInterleaved(batch, queryHeads, queryLen, headDim);
  const lse = empty([batch, queryHeads, queryLen]);
  const rowCount = (queryHeads / kvHeads) * queryLen;
  const rowShape = tileShape(operands, headDim, rowCount, keep !== undefined, !!drop, tiling);
  // The merged output's pack for the product that reads it next: texel (c, b·T + t) holds
  // columns 4c…4c+3 of [B·T, Hq·D], whole within one head when D is a multiple of 4.
  const width = queryHeads * headDim;
  const pack = options.packOut && headDim % 4 === 0
    ? outputPackTexture(batch * queryLen, width)
    : null;
  const packGrads = (options.packGrads ?? false) && headDim % 4 === 0;
  const params: Record<string, number> = {
    ...geometryValues(shapes, causal, scale),
    ...dropoutValues(drop),
    ...stridedValues("q", q),
    ...stridedValues("k", k),
    ...stridedValues("v", v),
  };
  const rowGrid: [number, number, number] = [
    Math.ceil(rowCount / (rowShape.threads * rowShape.rowsPerThread)),
    kvHeads,
    batch,
  ];
  dispatchStreamed(
    forwardKernel({ ...rowShape, packOut: pack !== null }),
    rowShape,
    [q],
    [k, v],
    [...masked, out, lse, ...(pack ? [pack] : [])],
    params,
    rowGrid,
    q.requiresGrad && needsGrad(q, k, v), // dQ's backward streams k and v again
  );
  if (pack) keepOutputPack(out, pack, width);
  if (!needsGrad(q, k, v)) {
    lse.dispose();
    if (keep !== mask) keep?.dispose();
    return out;
  }
  return record("scaledDotProductAttention", out, [q, k, v], (gradOut) => {
    const delta = empty([batch, queryHeads, queryLen]);
    const rows = batch * queryHeads * queryLen;
    rt().dispatch(
      deltaKernel,
      [gradOut, out, delta],
      {
        rows,
        heads: queryHeads,
        tq: queryLen,
        dim: headDim,
        ...stridedValues("grad_out", gradOut),
        ...stridedValues("out", out),
      },
      grid1d(Math.ceil(rows / 64)),
    );
    const gradParams = { ...params, ...stridedValues("grad_out", gradOut) };
    // dK, dV first, then dQ: with their packs kept (packGrads), the pack cache's two layer-input
    // slots then hold v's and q's, which the projections' backward read first and last.
    let gradK: Tensor | null = null;
    let gradV: Tensor | null = null;
    if (k.requiresGrad || v.requiresGrad) {
      gradK = headsInterleaved(batch, kvHeads, keyLen, headDim);
      gradV = headsInterleaved(batch, kvHeads, keyLen, headDim);
      const keyShape = tileShape(operands, headDim, keyLen, keep !== undefined, !!drop, tiling);
      const kvWidth = kvHeads * headDim;
      const packK = packGrads ? outputPackTexture(batch * keyLen, kvWidth) : null;
      const packV = packK ? outputPackTexture(batch * keyLen, kvWidth) : null;
      dispatchStreamed(
        gradKeyValueKernel({ ...keyShape, packOut: packV !== null }),
        keyShape,
        [k, v],
        [q, gradOut],
        [lse, delta, ...masked, gradK, gradV, ...(packK && packV ? [packK, packV] : [])],
        gradParams,
        [Math.ceil(keyLen / (keyShape.threads * keyShape.rowsPerThread)), kvHeads, batch],
      );
      // A pack is kept only for a gradient that flows on (k may be a frozen projection's).
      if (packK && packV) {
        if (k.requiresGrad) keepOutputPack(gradK, packK, kvWidth);
        else rt().textures.release(packK);
        keepOutputPack(gradV, packV, kvWidth);
      }
    }
    let gradQ: Tensor | null = null;
    if (q.requiresGrad) {
      gradQ = headsInterleaved(batch, queryHeads, queryLen, headDim);
      const packQ = packGrads ? outputPackTexture(batch * queryLen, width) : null;
      dispatchStreamed(
        gradQueryKernel({ ...rowShape, packOut: packQ !== null }),
        rowShape,
        [q, gradOut],
        [k, v],
        [lse, delta, ...masked, gradQ, ...(packQ ? [packQ] : [])],
        gradParams,
        rowGrid,
      );
      if (packQ) keepOutputPack(gradQ, packQ, width);
    }
    delta.dispose();
    return [gradQ, gradK, gradV];
  }, keep === mask && mask ? [q, k, v, out, mask] : [q, k, v, out]);
}
