/**
 * Softmax and log-softmax along any axis: one fused, numerically stable kernel per direction.
 *
 * A "row" is the line of elements along the softmax axis at one position of every other axis.
 * Rows are addressed through strides, so a non-last axis or a transposed view is read in place;
 * the output is always contiguous in the input's shape. The other axes are coalesced where their
 * strides allow, so a contiguous input with the last axis costs one div/mod per row.
 *
 * @module
 */
import { record } from "./autograd.ts";
import { defineKernel, grid1d, type Kernel, rt } from "./runtime.ts";
import { contiguousStrides, empty, type Tensor } from "./tensor.ts";

/**
 * Threads per row on a software adapter: one 8-lane SIMD vector of llvmpipe, where every
 * workgroup barrier switches coroutines per thread (8 threads run softmax 4.5× faster than 256).
 */
const SOFTWARE_ROW_THREADS = 8;

let forcedRowThreads: number | null = null;

/**
 * Threads per row (the workgroup size) of the row-wise kernels: softmax, the norms and
 * cross-entropy. On a GPU, enough to give each thread ~4 elements, within [32, 256]; on a software
 * adapter, 8 (see {@link setRowThreads} to override).
 */
export function rowThreads(n: number): number {
  if (forcedRowThreads !== null) return forcedRowThreads;
  if (rt().gpu.adapter.isFallback) return SOFTWARE_ROW_THREADS;
  let t = 32;
  while (t < 256 && t * 4 < n) t *= 2;
  return t;
}

/**
 * Force the threads per row of the row-wise kernels (a power of two in [2, 256]), or restore the
 * adapter's default with null. For tuning, and for tests on a software adapter that must exercise
 * the workgroup sizes a GPU uses.
 *
 * @example
 * ```ts
 * import { setRowThreads } from "./softmax.ts";
 * setRowThreads(256);
 * setRowThreads(null);
 * ```
 */
export function setRowThreads(threads: number | null): void {
  const ok = threads === null ||
    (Number.isInteger(threads) && threads >= 2 && threads <= 256 &&
      (threads & (threads - 1)) === 0);
  if (!ok) throw new Error(`setRowThreads: ${threads} is not a power of two in [2, 256]`);
  forcedRowThreads = threads;
}

/** Largest finite f32, the identity of a running max that must stay finite under subtraction. */
export const NEG_F32_MAX = "-3.4028234663852886e38";

/** How one operand's rows are found: an offset, a stride per kept dim, a stride along the row. */
interface OperandRows {
  offset: number;
  keptStrides: number[];
  step: number;
}

/** The rows of a tensor along `axis`, kept dims coalesced jointly for every operand. */
interface RowPlan {
  rows: number;
  n: number;
  keptDims: number[];
  operands: OperandRows[];
}

/** Where a tensor's elements live: what {@link planRows} needs of each operand. */
interface RowLayoutInput {
  strides: readonly number[];
  offset: number;
}

function planRows(shape: readonly number[], axis: number, layouts: RowLayoutInput[]): RowPlan {
  const keptAxes = shape.map((_, i) => i).filter((i) => i !== axis && shape[i] !== 1);
  const dims: number[] = [];
  const strides: number[][] = layouts.map(() => []);
  for (const a of keptAxes) {
    const last = dims.length - 1;
    const mergeable = last >= 0 &&
      layouts.every((l, k) => strides[k][last] === shape[a] * l.strides[a]);
    if (mergeable) {
      dims[last] *= shape[a];
      layouts.forEach((l, k) => (strides[k][last] = l.strides[a]));
    } else {
      dims.push(shape[a]);
      layouts.forEach((l, k) => strides[k].push(l.strides[a]));
    }
  }
  return {
    rows: dims.reduce((p, d) => p * d, 1),
    n: shape[axis],
    keptDims: dims,
    operands: layouts.map((l, k) => ({
      offset: l.offset,
      keptStrides: strides[k],
      step: l.strides[axis],
    })),
  };
}

/**
 * WGSL that sets `NAME_base` for each operand to the element index of the current `row`'s first
 * element, and the matching parameter declarations (`NAME_off`, `NAME_s{d}`, `NAME_step`).
 */
function rowAddressing(names: readonly string[], kept: number): {
  code: string;
  params: [string, "u32"][];
} {
  const params: [string, "u32"][] = [];
  for (let d = 0; d < kept; d++) params.push([`kd${d}`, "u32"]);
  for (const nm of names) {
    params.push([`${nm}_off`, "u32"], [`${nm}_step`, "u32"]);
    for (let d = 0; d < kept; d++) params.push([`${nm}_s${d}`, "u32"]);
  }
  const lines = names.map((nm) => `  var ${nm}_base = params.${nm}_off;`);
  if (kept > 0) lines.push("  var rest = row;");
  for (let d = kept - 1; d >= 0; d--) {
    const adds = names.map((nm) => `${nm}_base += c * params.${nm}_s${d};`).join(" ");
    lines.push(`  { let c = rest % params.kd${d}; rest = rest / params.kd${d}; ${adds} }`);
  }
  return { code: lines.join("\n"), params };
}

function planParams(plan: RowPlan, names: readonly string[]): Record<string, number> {
  const p: Record<string, number> = { rows: plan.rows, n: plan.n };
  plan.keptDims.forEach((d, i) => (p[`kd${i}`] = d));
  names.forEach((nm, k) => {
    const o = plan.operands[k];
    p[`${nm}_off`] = o.offset;
    p[`${nm}_step`] = o.step;
    o.keptStrides.forEach((s, d) => (p[`${nm}_s${d}`] = s));
  });
  return p;
}

const cache = new Map<string, Kernel>();

/** The forward kernel; `log` selects log-softmax. */
function forwardKernel(log: boolean, kept: number, wg: number, dtype: string): Kernel {
  const key = `fwd|${log}|${kept}|${wg}|${dtype}`;
  const hit = cache.get(key);
  if (hit) return hit;
  const addr = rowAddressing(["x", "y"], kept);
  const write = log ? "v - row_max - log_sum" : "exp(v - row_max) * inv_sum";
  // One workgroup per row. Each thread folds its strided slice of the row into an online
  // (max, Σ exp(x − max)) pair; a shared-memory tree merges the pairs, rescaling the smaller max;
  // then each thread writes its slice. Two reads and one write per element.
  const k = defineKernel({
    name: log ? "log_softmax" : "softmax",
    bindings: [
      { name: "x", type: dtype as "f32", access: "read" },
      { name: "y", type: "f32", access: "read_write" },
    ],
    params: [["rows", "u32"], ["n", "u32"], ...addr.params],
    source: `
var<workgroup> sm: array<f32, ${wg}>;
var<workgroup> ss: array<f32, ${wg}>;
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= params.rows) { return; }
${addr.code}
  var m: f32 = ${NEG_F32_MAX};
  var s: f32 = 0.0;
  for (var j = l; j < params.n; j += ${wg}u) {
    let v = f32(x[x_base + j * params.x_step]);
    if (v > m) { s = s * exp(m - v); m = v; }
    s += exp(v - m);
  }
  sm[l] = m;
  ss[l] = s;
  workgroupBarrier();
  for (var h = ${wg / 2}u; h > 0u; h = h >> 1u) {
    if (l < h) {
      let m2 = max(sm[l], sm[l + h]);
      ss[l] = ss[l] * exp(sm[l] - m2) + ss[l + h] * exp(sm[l + h] - m2);
      sm[l] = m2;
    }
    workgroupBarrier();
  }
  let row_max = sm[0];
  let inv_sum = 1.0 / ss[0];
  let log_sum = log(ss[0]);
  for (var j = l; j < params.n; j += ${wg}u) {
    let v = f32(x[x_base + j * params.x_step]);
    y[y_base + j * params.y_step] = ${write};
  }
}`,
  });
  cache.set(key, k);
  return k;
}

/** The backward kernel: softmax gx = y·(g − Σ g·y); log-softmax gx = g − exp(y)·Σ g. */
function backwardKernel(log: boolean, kept: number, wg: number): Kernel {
  const key = `bwd|${log}|${kept}|${wg}`;
  const hit = cache.get(key);
  if (hit) return hit;
  const addr = rowAddressing(["g", "y"], kept);
  const term = log ? "gv" : "gv * yv";
  const write = log ? "gv - exp(yv) * total" : "yv * (gv - total)";
  // One workgroup per row: a strided pass reduces the row's Σ term into shared memory by a tree,
  // a second pass writes the gradient. gx shares y's (contiguous) layout.
  const k = defineKernel({
    name: log ? "log_softmax_backward" : "softmax_backward",
    bindings: [
      { name: "g", type: "f32", access: "read" },
      { name: "y", type: "f32", access: "read" },
      { name: "gx", type: "f32", access: "read_write" },
    ],
    params: [["rows", "u32"], ["n", "u32"], ...addr.params],
    source: `
var<workgroup> acc: array<f32, ${wg}>;
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= params.rows) { return; }
${addr.code}
  var part: f32 = 0.0;
  for (var j = l; j < params.n; j += ${wg}u) {
    let gv = g[g_base + j * params.g_step];
    let yv = y[y_base + j * params.y_step];
    part += ${term};
  }
  acc[l] = part;
  workgroupBarrier();
  for (var h = ${wg / 2}u; h > 0u; h = h >> 1u) {
    if (l < h) { acc[l] = acc[l] + acc[l + h]; }
    workgroupBarrier();
  }
  let total = acc[0];
  for (var j = l; j < params.n; j += ${wg}u) {
    let gv = g[g_base + j * params.g_step];
    let yv = y[y_base + j * params.y_step];
    gx[y_base + j * params.y_step] = ${write};
  }
}`,
  });
  cache.set(key, k);
  return k;
}

function resolveAxis(x: Tensor, axis: number, op: string): number {
  const a = axis < 0 ? axis + x.rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= x.rank) {
    throw new Error(`${op}: axis ${axis} out of range for ${x} (rank ${x.rank})`);
  }
  return a;
}

function runBackward(log: boolean, g: Tensor, y: Tensor, axis: number): Tensor {
  if (g.dtype !== "f32") throw new Error(`softmax backward: gradient ${g} must be f32`);
  const gx = empty(y.shape);
  const plan = planRows(y.shape, axis, [g, y]);
  if (plan.rows === 0 || plan.n === 0) return gx;
  const wg = rowThreads(plan.n);
  const k = backwardKernel(log, plan.keptDims.length, wg);
  rt().dispatch(k, [g, y, gx], planParams(plan, ["g", "y"]), grid1d(plan.rows));
  return gx;
}

function softmaxOp(x: Tensor, axis: number, log: boolean): Tensor {
  const name = log ? "logSoftmax" : "softmax";
  if (x.dtype !== "f32" && x.dtype !== "f16") {
    throw new Error(`${name}: input ${x} must be f32 or f16`);
  }
  if (x.rank === 0) throw new Error(`${name}: input ${x} must have at least one dimension`);
  const a = resolveAxis(x, axis, name);
  const y = empty(x.shape);
  const outLayout = { strides: contiguousStrides(x.shape), offset: 0 };
  const plan = planRows(x.shape, a, [x, outLayout]);
  if (plan.rows > 0 && plan.n > 0) {
    const wg = rowThreads(plan.n);
    const k = forwardKernel(log, plan.keptDims.length, wg, x.dtype);
    rt().dispatch(k, [x, y], planParams(plan, ["x", "y"]), grid1d(plan.rows));
  }
  return record(name, y, [x], (g) => [runBackward(log, g, y, a)]);
}

/**
 * Softmax along `axis` (default the last), computed as exp(x − max) / Σ exp(x − max) in f32.
 * Differentiable; the output is contiguous and f32 (f16 inputs are widened).
 *
 * @example
 * ```ts
 * import { init, softmax, tensor } from "./mod.ts";
 * await init();
 * const p = softmax(tensor([[1, 2, 3], [0, 0, 1000]]));
 * console.log(await p.toArray()); // rows sum to 1; the second is [0, 0, 1]
 * ```
 */
export function softmax(x: Tensor, axis = -1): Tensor {
  return softmaxOp(x, axis, false);
}

/**
 * log(softmax(x)) along `axis` (default the last), computed as x − max − log Σ exp(x − max) so it
 * stays finite for any finite logits. Differentiable; f32 output.
 *
 * @example
 * ```ts
 * import { init, logSoftmax, tensor } from "./mod.ts";
 * await init();
 * const lp = logSoftmax(tensor([-1000, 1000]));
 * console.log(await lp.toArray()); // [-2000, 0]
 * ```
 */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  return softmaxOp(x, axis, true);
}
