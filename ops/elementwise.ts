/**
 * Elementwise ops: one kernel generator for any number of strided, broadcast inputs, and a table
 * of unary/binary ops declared once as data (forward expression + gradient expressions) from which
 * both the WGSL kernels and the autograd rules are generated.
 *
 * Kernel layout: one thread per output element, 256 threads per workgroup, the grid split over
 * x/y by `grid1d`. Each operand carries shape strides (0 on broadcast dimensions) and an element
 * offset in the uniform parameters, so transposed, sliced and broadcast views are read in place.
 * Operands that are contiguous with the output's shape skip the index arithmetic.
 *
 * @module
 */
import { record, registerGradArith } from "./autograd.ts";
import {
  defineKernel,
  grid1d,
  type Kernel,
  linearIndex,
  rt,
  type ScratchTexture,
} from "./runtime.ts";
import { RNG_WGSL, seedU32 } from "./random.ts";
import {
  BYTES_PER_ELEMENT,
  contiguousStrides,
  type DType,
  empty,
  numel,
  registerContiguous,
  type Tensor,
  type TensorOptions,
} from "./tensor.ts";
import { registerReduceHooks, sumTo } from "./reduce.ts";

const WG = 256;

/** The arithmetic type an expression is evaluated in. */
export type ComputeType = "f32" | "i32" | "u32";

/** Options of {@link map}. */
export interface MapOptions {
  /** Extra f32 scalars, available in the expression as `s_NAME`. */
  scalars?: Record<string, number>;
  /** Extra u32 scalars, available as `u_NAME`. */
  uints?: Record<string, number>;
  /** Output dtype (default f32, or the compute type). */
  dtype?: DType;
  /** Type the inputs are converted to and the expression evaluated in (default f32). */
  compute?: ComputeType;
  /** Write into this tensor (may be a strided view) instead of allocating an output. */
  out?: Tensor;
  /** Extra WGSL functions the expression uses. */
  helpers?: string;
  /** Category of a newly allocated output. */
  category?: TensorOptions["category"];
  /**
   * The output is read next by matrix products: where they read packed operands, the kernel
   * also writes its pack (see {@link registerOutputPacks}). Honoured for a contiguous f32 output
   * of contiguous inputs whose last dimension is a multiple of 4; a hint otherwise.
   */
  packOut?: boolean;
}

/** How a producer obtains and registers the packed copy of its output (the matmul's cache). */
export interface OutputPacks {
  /** A texture for the pack of a [rows, cols] output, or null where products read no packs. */
  texture(rows: number, cols: number): ScratchTexture | null;
  /** Register `tex` as the pack of `out` (after the dispatch that wrote both). */
  keep(out: Tensor, tex: ScratchTexture): void;
}

let outputPacks: OutputPacks | null = null;

/** Called once by the matmul module (which owns the pack cache); avoids an import cycle. */
export function registerOutputPacks(p: OutputPacks): void {
  outputPacks = p;
}

/** The shape all `shapes` broadcast to (NumPy rules), or an error naming both. */
export function broadcastShapes(...shapes: (readonly number[])[]): number[] {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) {
      const o = rank - s.length + i;
      const d = s[i];
      if (d === out[o] || d === 1) continue;
      if (out[o] === 1) out[o] = d;
      else {
        throw new Error(
          `shapes ${shapes.map((x) => `[${x.join(", ")}]`).join(" and ")} do not broadcast`,
        );
      }
    }
  }
  return out;
}

/** Strides of `t` read as a tensor of `shape` (0 on broadcast dimensions). */
function broadcastStrides(t: Tensor, shape: readonly number[]): number[] {
  const rank = shape.length;
  const s = new Array<number>(rank).fill(0);
  for (let i = 0; i < t.rank; i++) {
    const o = rank - t.rank + i;
    s[o] = t.shape[i] === 1 && shape[o] !== 1 ? 0 : t.strides[i];
  }
  return s;
}

function sameAsContiguous(strides: readonly number[], shape: readonly number[]): boolean {
  const c = contiguousStrides(shape);
  return shape.every((d, i) => d === 1 || strides[i] === c[i]);
}

const kernelCache = new Map<string, Kernel>();

function wgslType(d: DType): string {
  return d;
}

/**
 * Evaluate a WGSL expression elementwise over broadcast inputs, named `a`, `b`, `c`, … in the
 * expression (already converted to the compute type). Not recorded on the tape: ops built on it
 * record their own backward.
 */
export function map(inputs: readonly Tensor[], expr: string, options: MapOptions = {}): Tensor {
  const compute = options.compute ?? "f32";
  const shape = options.out
    ? [...options.out.shape]
    : broadcastShapes(...inputs.map((t) => t.shape));
  if (options.out) {
    // The output shape is fixed: inputs must broadcast to it.
    const b = broadcastShapes(shape, ...inputs.map((t) => t.shape));
    if (b.join() !== shape.join()) {
      throw new Error(`map: inputs do not broadcast to the output shape [${shape.join(", ")}]`);
    }
  }
  const out = options.out ??
    empty(shape, { dtype: options.dtype ?? compute, category: options.category });
  const n = numel(shape);
  if (n === 0) return out;
  const rank = Math.max(1, shape.length);
  const dims = shape.length ? shape : [1];
  const inStrides = inputs.map((t) => shape.length ? broadcastStrides(t, shape) : [0]);
  const inContig = inputs.map((_, k) =>
    sameAsContiguous(inStrides[k], dims) && inputs[k].size === n
  );
  const outStrides = shape.length ? [...out.strides] : [1];
  const outContig = sameAsContiguous(outStrides, dims);
  // An input living in the output's buffer is read through the output binding: WebGPU forbids
  // binding one buffer as read-only and read-write in the same dispatch.
  const aliased = inputs.map((t) => options.out !== undefined && t.buffer === out.buffer);
  // The output's pack, written one texel (four elements of a row) per thread.
  const cols = shape.length ? shape[shape.length - 1] : 1;
  const pack = options.packOut && outputPacks && out.dtype === "f32" && outContig &&
      inContig.every((c) => c) && !aliased.some((a) => a) && cols % 4 === 0
    ? outputPacks.texture(n / cols, cols)
    : null;
  const names = "abcdefghijklmnop";
  const scalars = Object.keys(options.scalars ?? {}).sort();
  const uints = Object.keys(options.uints ?? {}).sort();
  const key = [
    expr,
    compute,
    out.dtype,
    rank,
    outContig,
    inputs.map((t, k) => `${t.dtype}${inContig[k] ? "c" : "s"}${aliased[k] ? "=" : ""}`).join(","),
    scalars.join(","),
    uints.join(","),
    options.helpers ?? "",
    pack ? "pack" : "",
  ].join("|");
  let kernel = kernelCache.get(key);
  if (!kernel) {
    const params: [string, "u32" | "f32"][] = [["n", "u32"], ["out_off", "u32"]];
    for (let d = 0; d < rank; d++) params.push([`dim${d}`, "u32"]);
    if (!outContig) { for (let d = 0; d < rank; d++) params.push([`out_s${d}`, "u32"]); }
    inputs.forEach((_, k) => {
      params.push([`in${k}_off`, "u32"]);
      if (!inContig[k]) { for (let d = 0; d < rank; d++) params.push([`in${k}_s${d}`, "u32"]); }
    });
    for (const s of scalars) params.push([`s_${s}`, "f32"]);
    for (const u of uints) params.push([`u_${u}`, "u32"]);
    if (pack) params.push(["texels", "u32"]);
    const strided = !outContig || inContig.some((c) => !c);
    const lines: string[] = [];
    if (strided) {
      lines.push("  var rest = i;");
      if (!outContig) lines.push("  var o_idx = params.out_off;");
      inputs.forEach((_, k) => {
        if (!inContig[k]) lines.push(`  var i${k} = params.in${k}_off;`);
      });
      for (let d = rank - 1; d >= 0; d--) {
        lines.push(`  { let c = rest % params.dim${d}; rest = rest / params.dim${d};`);
        if (!outContig) lines.push(`    o_idx += c * params.out_s${d};`);
        inputs.forEach((_, k) => {
          if (!inContig[k]) lines.push(`    i${k} += c * params.in${k}_s${d};`);
        });
        lines.push("  }");
      }
    }
    inputs.forEach((_, k) => {
      const idx = inContig[k] ? `params.in${k}_off + i` : `i${k}`;
      lines.push(`  let ${names[k]} = ${compute}(${aliased[k] ? "out" : `in${k}`}[${idx}]);`);
    });
    for (const s of scalars) lines.push(`  let s_${s} = params.s_${s};`);
    for (const u of uints) lines.push(`  let u_${u} = params.u_${u};`);
    const oIdx = outContig ? "params.out_off + i" : "o_idx";
    if (pack) {
      // Thread t computes elements 4t…4t+3 (one row's texel) and stores them as texel t too.
      lines.push(`  let v = f32(${expr});`, "  out[params.out_off + i] = v;", "  texel[e] = v;");
    } else lines.push(`  out[${oIdx}] = ${wgslType(out.dtype)}(${expr});`);
    const body = pack
      ? `  let t = ${linearIndex(WG)};
  if (4u * t >= params.n) { return; }
  var texel = vec4f(0.0);
  for (var e = 0u; e < 4u; e++) {
    let i = 4u * t + e;
${lines.map((l) => `  ${l}`).join("\n")}
  }
  textureStore(P, vec2u(t % params.texels, t / params.texels), texel);`
      : `  let i = ${linearIndex(WG)};
  if (i >= params.n) { return; }
${lines.join("\n")}`;
    kernel = defineKernel({
      name: `map(${expr.slice(0, 40)})`,
      bindings: [
        ...inputs.flatMap((t, k) =>
          aliased[k] ? [] : [{ name: `in${k}`, type: t.dtype, access: "read" as const }]
        ),
        { name: "out", type: out.dtype, access: "read_write" },
        ...(pack ? [{ name: "P", texture: "rgba32float", access: "write" } as const] : []),
      ],
      params,
      source: `${ELEMENTWISE_HELPERS}
${options.helpers ?? ""}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
${body}
}`,
    });
    kernelCache.set(key, kernel);
  }
  const p: Record<string, number> = { n, out_off: out.offset };
  dims.forEach((d, i) => (p[`dim${i}`] = d));
  outStrides.forEach((s, i) => (p[`out_s${i}`] = s));
  inputs.forEach((t, k) => {
    p[`in${k}_off`] = t.offset;
    inStrides[k].forEach((s, d) => (p[`in${k}_s${d}`] = s));
  });
  for (const s of scalars) p[`s_${s}`] = options.scalars![s];
  for (const u of uints) p[`u_${u}`] = options.uints![u];
  const bound = inputs.filter((_, k) => !aliased[k]);
  if (pack) {
    p.texels = cols / 4;
    rt().dispatch(kernel, [...bound, out, pack], p, grid1d(Math.ceil(n / 4 / WG)));
    outputPacks!.keep(out, pack);
    return out;
  }
  rt().dispatch(kernel, [...bound, out], p, grid1d(Math.ceil(n / WG)));
  return out;
}

/** WGSL helpers every elementwise kernel may call. */
export const ELEMENTWISE_HELPERS = /* wgsl */ `
// erf with |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26).
fn erf_f32(x: f32) -> f32 {
  let t = 1.0 / (1.0 + 0.3275911 * abs(x));
  let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
    + 0.254829592) * t * exp(-x * x);
  return select(-y, y, x >= 0.0);
}
// tanh that stays finite for large |x|.
fn tanh_f32(x: f32) -> f32 {
  let e = exp(-2.0 * abs(x));
  return sign(x) * (1.0 - e) / (1.0 + e);
}
fn sigmoid_f32(x: f32) -> f32 {
  if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
  let e = exp(x);
  return e / (1.0 + e);
}
// x^y as PyTorch defines it for negative bases with integral exponents.
fn pow_f32(x: f32, y: f32) -> f32 {
  if (y == 0.0) { return 1.0; }
  let r = pow(abs(x), y);
  if (x < 0.0) {
    if (floor(y) != y) { return bitcast<f32>(0x7fc00000u); }
    if (abs(y % 2.0) == 1.0) { return -r; }
  }
  return r;
}
const INV_SQRT2: f32 = 0.7071067811865476;
const INV_SQRT_2PI: f32 = 0.3989422804014327;
`;

// ---- unary and binary ops as data ---------------------------------------------------------------

/** A unary op: forward expression over `a`, gradient expression over `a` (input), `y`, `g`. */
interface UnaryDef {
  fwd: string;
  /** d(out)/d(in) · g; may use a, y (forward output) and g. */
  grad?: string;
}

/** The unary ops. GELU is the erf form (as in BERT/RoBERTa). */
export const UNARY = {
  neg: { fwd: "-a", grad: "-g" },
  exp: { fwd: "exp(a)", grad: "g * y" },
  log: { fwd: "log(a)", grad: "g / a" },
  sqrt: { fwd: "sqrt(a)", grad: "g * 0.5 / y" },
  rsqrt: { fwd: "inverseSqrt(a)", grad: "g * -0.5 * y * y * y" },
  abs: { fwd: "abs(a)", grad: "g * sign(a)" },
  square: { fwd: "a * a", grad: "g * 2.0 * a" },
  reciprocal: { fwd: "1.0 / a", grad: "-g * y * y" },
  sin: { fwd: "sin(a)", grad: "g * cos(a)" },
  cos: { fwd: "cos(a)", grad: "-g * sin(a)" },
  tanh: { fwd: "tanh_f32(a)", grad: "g * (1.0 - y * y)" },
  sigmoid: { fwd: "sigmoid_f32(a)", grad: "g * y * (1.0 - y)" },
  relu: { fwd: "max(a, 0.0)", grad: "select(0.0, g, a > 0.0)" },
  silu: {
    fwd: "a * sigmoid_f32(a)",
    grad: "g * (sigmoid_f32(a) * (1.0 + a * (1.0 - sigmoid_f32(a))))",
  },
  gelu: {
    fwd: "0.5 * a * (1.0 + erf_f32(a * INV_SQRT2))",
    grad: "g * (0.5 * (1.0 + erf_f32(a * INV_SQRT2)) + a * INV_SQRT_2PI * exp(-0.5 * a * a))",
  },
} as const satisfies Record<string, UnaryDef>;

/** Names of the unary ops. */
export type UnaryOp = keyof typeof UNARY;

/** A binary op: forward over `a`, `b`; gradient expressions for each input over a, b, y, g. */
interface BinaryDef {
  fwd: string;
  gradA?: string;
  gradB?: string;
}

/** The binary ops (broadcasting); comparisons return 1.0/0.0 and have no gradient. */
export const BINARY = {
  add: { fwd: "a + b", gradA: "g", gradB: "g" },
  sub: { fwd: "a - b", gradA: "g", gradB: "-g" },
  mul: { fwd: "a * b", gradA: "g * b", gradB: "g * a" },
  div: { fwd: "a / b", gradA: "g / b", gradB: "-g * a / (b * b)" },
  pow: { fwd: "pow_f32(a, b)", gradA: "g * b * pow_f32(a, b - 1.0)", gradB: "g * y * log(a)" },
  maximum: { fwd: "max(a, b)", gradA: "select(0.0, g, a >= b)", gradB: "select(0.0, g, b > a)" },
  minimum: { fwd: "min(a, b)", gradA: "select(0.0, g, a <= b)", gradB: "select(0.0, g, b < a)" },
  eq: { fwd: "select(0.0, 1.0, a == b)" },
  ne: { fwd: "select(0.0, 1.0, a != b)" },
  lt: { fwd: "select(0.0, 1.0, a < b)" },
  le: { fwd: "select(0.0, 1.0, a <= b)" },
  gt: { fwd: "select(0.0, 1.0, a > b)" },
  ge: { fwd: "select(0.0, 1.0, a >= b)" },
} as const satisfies Record<string, BinaryDef>;

/** Names of the binary ops. */
export type BinaryOp = keyof typeof BINARY;

/** The operand names of gradient expressions: inputs `a`, `b`, forward output `y`, gradient `g`. */
type GradOperand = "a" | "b" | "y" | "g";

const GRAD_OPERANDS: readonly GradOperand[] = ["a", "b", "y", "g"];

/** The operands `expr` reads (whole-word matches). */
function operandsOf(expr: string): Set<GradOperand> {
  return new Set(GRAD_OPERANDS.filter((n) => new RegExp(`\\b${n}\\b`).test(expr)));
}

/**
 * Evaluate a gradient expression over the operands it reads, binding only those: a rule never
 * touches a tensor it did not save, so the model may release the others (see autograd).
 */
function gradMap(
  expr: string,
  operands: Partial<Record<GradOperand, Tensor>>,
  options: MapOptions = {},
): Tensor {
  const used = GRAD_OPERANDS.filter((n) => operandsOf(expr).has(n));
  const letters = "abcd";
  const rename = new Map(used.map((n, i) => [n, letters[i]]));
  const e = expr.replace(/\b[abyg]\b/g, (n) => rename.get(n as GradOperand) ?? n);
  const inputs = used.map((n) => {
    const t = operands[n];
    if (!t) throw new Error(`gradient expression ${expr} reads ${n}, which is not given`);
    return t;
  });
  return map(inputs, e, options);
}

/** The forward tensors a gradient expression reads, from `operands`. */
function savedBy(expr: string, operands: Partial<Record<GradOperand, Tensor>>): Tensor[] {
  return [...operandsOf(expr)].flatMap((n) => n === "g" || !operands[n] ? [] : [operands[n]!]);
}

/** Options of {@link unary} (and the unary ops built on it). */
export interface UnaryOptions {
  /** The output is read next by matrix products (an FFN activation): see {@link MapOptions}. */
  packOut?: boolean;
}

/** Apply a unary op from {@link UNARY} (differentiable). */
export function unary(op: UnaryOp, x: Tensor, options: UnaryOptions = {}): Tensor {
  const def: UnaryDef = UNARY[op];
  const y = map([x], def.fwd, { packOut: options.packOut });
  const saves = def.grad ? savedBy(def.grad, { a: x, y }) : [];
  return record(op, y, [x], (g) => {
    if (!def.grad) return [null];
    return [gradMap(def.grad, { a: x, y, g })];
  }, saves);
}

/** A tensor or a number (numbers become scalar parameters, not tensors). */
export type TensorLike = Tensor | number;

/** Apply a binary op from {@link BINARY} with broadcasting (differentiable where defined). */
export function binary(op: BinaryOp, a: TensorLike, b: TensorLike): Tensor {
  const def: BinaryDef = BINARY[op];
  if (typeof a === "number" && typeof b === "number") {
    throw new Error(`${op}: at least one operand must be a tensor`);
  }
  if (typeof b === "number" || typeof a === "number") return binaryScalar(op, def, a, b);
  const y = map([a, b], def.fwd);
  if (!def.gradA) return y;
  const forward = { a, b, y };
  const saves = [
    ...(a.requiresGrad && def.gradA ? savedBy(def.gradA, forward) : []),
    ...(b.requiresGrad && def.gradB ? savedBy(def.gradB, forward) : []),
  ];
  return record(op, y, [a, b], (g) => {
    const grad = (expr: string | undefined, target: Tensor): Tensor | null => {
      if (!expr || !target.requiresGrad) return null;
      // add's gradient is g itself: hand it on (autograd copies it only if two inputs keep it).
      if (expr === "g" && g.shape.join() === target.shape.join()) return g;
      const full = gradMap(expr, { ...forward, g });
      if (full.shape.join() === target.shape.join()) return full;
      const reduced = sumTo(full, target.shape);
      full.dispose();
      return reduced;
    };
    return [grad(def.gradA, a), grad(def.gradB, b)];
  }, saves);
}

function binaryScalar(op: BinaryOp, def: BinaryDef, a: TensorLike, b: TensorLike): Tensor {
  const tensorIsA = typeof a !== "number";
  const t = (tensorIsA ? a : b) as Tensor;
  const value = (tensorIsA ? b : a) as number;
  // The scalar stands in the expression as s_v, the tensor as a.
  const sub = (e: string) =>
    tensorIsA ? e.replace(/\bb\b/g, "s_v") : e.replace(/\ba\b/g, "s_v").replace(/\bb\b/g, "a");
  const y = map([t], sub(def.fwd), { scalars: { v: value } });
  const gexpr = tensorIsA ? def.gradA : def.gradB;
  if (!gexpr) return y;
  const expr = sub(gexpr);
  return record(`${op}Scalar`, y, [t], (g) => {
    return [gradMap(expr, { a: t, y, g }, { scalars: { v: value } })];
  }, savedBy(expr, { a: t, y }));
}

/** a + b (broadcasting). */
export const add = (a: TensorLike, b: TensorLike): Tensor => binary("add", a, b);
/**
 * a + b + c + … in one kernel (broadcasting; summed left to right, so the bits equal the chained
 * `add`s). Each input's gradient is g itself (summed back over broadcast dimensions).
 *
 * @example
 * ```ts
 * import { addN, init, tensor } from "./mod.ts";
 * await init();
 * const y = addN([tensor([1, 2]), tensor([10, 20]), tensor([100, 200])]); // [111, 222]
 * ```
 */
export function addN(terms: readonly Tensor[]): Tensor {
  if (terms.length === 0) throw new Error("addN: at least one tensor is needed");
  if (terms.length > 16) throw new Error(`addN: at most 16 tensors, got ${terms.length}`);
  const names = "abcdefghijklmnop";
  const y = map(terms, terms.map((_, i) => names[i]).join(" + "));
  return record("addN", y, terms, (g) =>
    terms.map((t) => {
      if (!t.requiresGrad) return null;
      return t.shape.join() === g.shape.join() ? g : sumTo(g, t.shape);
    }), []);
}

/** a − b (broadcasting). */
export const sub = (a: TensorLike, b: TensorLike): Tensor => binary("sub", a, b);
/** a · b (broadcasting). */
export const mul = (a: TensorLike, b: TensorLike): Tensor => binary("mul", a, b);
/** a / b (broadcasting). */
export const div = (a: TensorLike, b: TensorLike): Tensor => binary("div", a, b);
/** a^b (broadcasting; negative bases need integral exponents, as in PyTorch). */
export const pow = (a: TensorLike, b: TensorLike): Tensor => binary("pow", a, b);
/** Elementwise maximum (the gradient goes to `a` on ties). */
export const maximum = (a: TensorLike, b: TensorLike): Tensor => binary("maximum", a, b);
/** Elementwise minimum (the gradient goes to `a` on ties). */
export const minimum = (a: TensorLike, b: TensorLike): Tensor => binary("minimum", a, b);
/** −x. */
export const neg = (x: Tensor): Tensor => unary("neg", x);
/** eˣ. */
export const exp = (x: Tensor): Tensor => unary("exp", x);
/** ln x. */
export const log = (x: Tensor): Tensor => unary("log", x);
/** √x. */
export const sqrt = (x: Tensor): Tensor => unary("sqrt", x);
/** 1/√x. */
export const rsqrt = (x: Tensor): Tensor => unary("rsqrt", x);
/** |x|. */
export const abs = (x: Tensor): Tensor => unary("abs", x);
/** tanh x. */
export const tanh = (x: Tensor): Tensor => unary("tanh", x);
/** The logistic sigmoid. */
export const sigmoid = (x: Tensor): Tensor => unary("sigmoid", x);
/** max(x, 0). */
export const relu = (x: Tensor): Tensor => unary("relu", x);
/** x·σ(x) (SwiGLU's gate activation). */
export const silu = (x: Tensor): Tensor => unary("silu", x);
/** GELU, erf form: x·Φ(x). `options`: see {@link UnaryOptions} (a transformer FFN's packs). */
export const gelu = (x: Tensor, options?: UnaryOptions): Tensor => unary("gelu", x, options);

/** Comparison ops: 1.0 where true, 0.0 elsewhere; no gradient. */
export const eq = (a: TensorLike, b: TensorLike): Tensor => binary("eq", a, b);
/** a ≠ b as 1.0/0.0. */
export const ne = (a: TensorLike, b: TensorLike): Tensor => binary("ne", a, b);
/** a < b as 1.0/0.0. */
export const lt = (a: TensorLike, b: TensorLike): Tensor => binary("lt", a, b);
/** a ≤ b as 1.0/0.0. */
export const le = (a: TensorLike, b: TensorLike): Tensor => binary("le", a, b);
/** a > b as 1.0/0.0. */
export const gt = (a: TensorLike, b: TensorLike): Tensor => binary("gt", a, b);
/** a ≥ b as 1.0/0.0. */
export const ge = (a: TensorLike, b: TensorLike): Tensor => binary("ge", a, b);

/** `cond ? a : b` elementwise (cond non-zero means true), broadcasting all three. */
export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  const y = map([cond, a, b], "select(c, b, a != 0.0)");
  return record("where", y, [cond, a, b], (g) => {
    const part = (expr: string, target: Tensor) => {
      if (!target.requiresGrad) return null;
      const full = map([cond, g], expr);
      if (full.shape.join() === target.shape.join()) return full;
      const r = sumTo(full, target.shape);
      full.dispose();
      return r;
    };
    return [null, part("select(0.0, b, a != 0.0)", a), part("select(b, 0.0, a != 0.0)", b)];
  }, [cond]);
}

/** x^p for a constant exponent (differentiable). */
export function powScalar(x: Tensor, p: number): Tensor {
  return binary("pow", x, p);
}

/** Convert dtype (f32↔f16, and to/from i32/u32 by value); differentiable between floats. */
export function cast(x: Tensor, dtype: DType): Tensor {
  if (x.dtype === dtype) return map([x], "a", { dtype, compute: computeOf(dtype) });
  const compute = dtype === "i32" || dtype === "u32" ? dtype : "f32";
  const y = map([x], "a", { dtype, compute });
  const floats = (d: DType) => d === "f32" || d === "f16";
  if (!floats(x.dtype) || !floats(dtype)) return y;
  return record("cast", y, [x], (g) => [map([g], "a", { dtype: x.dtype })], []);
}

function computeOf(d: DType): ComputeType {
  return d === "i32" || d === "u32" ? d : "f32";
}

// ---- copies, fills and creation -----------------------------------------------------------------

/** A contiguous copy of `x` (a new tensor even when `x` is contiguous); differentiable. */
export function contiguous(x: Tensor): Tensor {
  const y = map([x], "a", { dtype: x.dtype, compute: computeOf(x.dtype) });
  return record("contiguous", y, [x], (g) => [map([g], "a")], []);
}
registerContiguous((t) => map([t], "a", { dtype: t.dtype, compute: computeOf(t.dtype) }));

/** Write `value` (broadcast) into `target`, which may be a strided view. Not recorded. */
export function assign(target: Tensor, value: Tensor): void {
  map([value], "a", { out: target, compute: computeOf(target.dtype) });
}

/** target += value in place (broadcasting value). Not recorded. */
export function addInto(target: Tensor, value: Tensor): void {
  map([target, value], "a + b", { out: target });
}

/** Set every element of `target` to `value`. Not recorded. */
export function fillInto(target: Tensor, value: number): void {
  const bpe = BYTES_PER_ELEMENT[target.dtype];
  if (
    Object.is(value, 0) && target.isContiguous && (target.offset * bpe) % 4 === 0 &&
    target.bytes % 4 === 0
  ) {
    // All-zero bits: the driver's fill, not a kernel (far cheaper on software adapters).
    rt().clear(target.buffer, target.offset * bpe, target.bytes);
    return;
  }
  const compute = computeOf(target.dtype);
  map([], compute === "f32" ? "s_v" : `${compute}(s_v)`, {
    out: target,
    scalars: { v: value },
    compute,
  });
}

/** A tensor of `shape` filled with `value`. */
export function full(shape: readonly number[], value: number, options: TensorOptions = {}): Tensor {
  const t = empty(shape, options);
  fillInto(t, value);
  if (options.requiresGrad) t.requiresGrad = true;
  return t;
}

/** Zeros. */
export const zeros = (shape: readonly number[], options: TensorOptions = {}): Tensor =>
  full(shape, 0, options);

/** Ones. */
export const ones = (shape: readonly number[], options: TensorOptions = {}): Tensor =>
  full(shape, 1, options);

/** [start, start+step, …) with `n` elements (f32 unless options.dtype says otherwise). */
export function arange(n: number, start = 0, step = 1, options: TensorOptions = {}): Tensor {
  const t = empty([n], options);
  const compute = computeOf(t.dtype);
  const idx = compute === "f32" ? "f32(i)" : `${compute}(i)`;
  const cst = (v: string) => compute === "f32" ? v : `${compute}(${v})`;
  map([], `${cst("s_start")} + ${idx} * ${cst("s_step")}`, {
    out: t,
    scalars: { start, step },
    compute,
  });
  return t;
}

/** Options of the random creation functions. */
export interface RandomOptions extends TensorOptions {
  /** Any integer (folded into 32 bits); the same seed and stream give the same values. */
  seed: number;
  /** Which stream of the seed to draw from (different tensors of one seed use different streams). */
  stream?: number;
}

/** Uniform samples in [low, high), a pure function of (seed, stream, index). */
export function randUniform(
  shape: readonly number[],
  low: number,
  high: number,
  options: RandomOptions,
): Tensor {
  const t = empty(shape, options);
  map([], "s_low + (s_high - s_low) * rng_uniform(u_seed, u_stream, i)", {
    out: t,
    scalars: { low, high },
    uints: { seed: seedU32(options.seed), stream: options.stream ?? 0 },
    helpers: RNG_WGSL,
  });
  if (options.requiresGrad) t.requiresGrad = true;
  return t;
}

/** Normal samples N(mean, std²) by Box–Muller over two counter streams. */
export function randNormal(
  shape: readonly number[],
  mean: number,
  std: number,
  options: RandomOptions,
): Tensor {
  const t = empty(shape, options);
  const expr = "s_mean + s_std * sqrt(-2.0 * log(1.0 - rng_uniform(u_seed, u_stream, 2u * i)))" +
    " * cos(6.283185307179586 * rng_uniform(u_seed, u_stream, 2u * i + 1u))";
  map([], expr, {
    out: t,
    scalars: { mean, std },
    uints: { seed: seedU32(options.seed), stream: options.stream ?? 0 },
    helpers: RNG_WGSL,
  });
  if (options.requiresGrad) t.requiresGrad = true;
  return t;
}

/** Scale, then add: a·x + b·y elementwise into a new tensor (not recorded; optimizer helpers). */
export function axpby(a: number, x: Tensor, b: number, y: Tensor): Tensor {
  return map([x, y], "s_a * a + s_b * b", { scalars: { a, b } });
}

registerGradArith({
  add: (a, b) => map([a, b], "a + b"),
  addInto,
  ones: (shape) => full(shape, 1),
  copy: (t) => map([t], "a"),
  copyKept: (t) => map([t], "a", { category: "grads" }).keep(),
});

registerReduceHooks({
  map,
  sub: (a, b) => binary("sub", a, b),
  mul: (a, b) => binary("mul", a, b),
  mulScalar: (a, s) => binary("mul", a, s),
});
