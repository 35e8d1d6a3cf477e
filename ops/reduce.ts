/**
 * Reductions over any set of axes: sum, mean, max, min, argmax, argmin, variance; `sumTo`,
 * which reduces a broadcast gradient back to its operand's shape; and `countNonFinite` /
 * `allFinite`, which check weights for NaN and ±Inf before they are used.
 *
 * Kernel layout: one workgroup of 64 threads per output element. Thread t visits reduced elements
 * t, t+64, … (the reduced coordinates decomposed against the reduced dims' strides, so any strided
 * view is read in place), then the workgroup combines its 64 partials in shared memory by a tree.
 * Accumulation is f32 in a fixed order, so results are deterministic.
 *
 * @module
 */
import { record } from "./autograd.ts";
import { defineKernel, grid1d, type Kernel, rt } from "./runtime.ts";
import { empty, numel, type Tensor, tensor } from "./tensor.ts";

const WG = 64;

/** Reduction operators. */
export type ReduceOp = "sum" | "max" | "min" | "argmax" | "argmin";

const IDENTITY: Record<ReduceOp, string> = {
  sum: "0.0",
  max: "-3.4028234663852886e38",
  min: "3.4028234663852886e38",
  argmax: "-3.4028234663852886e38",
  argmin: "3.4028234663852886e38",
};

/** Normalise axes (negative allowed); `undefined` means all axes. */
export function normalizeAxes(rank: number, axes?: number | readonly number[]): number[] {
  if (axes === undefined) return [...Array(rank).keys()];
  const list = typeof axes === "number" ? [axes] : [...axes];
  const out = list.map((a) => {
    const n = a < 0 ? a + rank : a;
    if (n < 0 || n >= rank) throw new Error(`axis ${a} out of range for rank ${rank}`);
    return n;
  });
  return [...new Set(out)].sort((x, y) => x - y);
}

const cache = new Map<string, Kernel>();

function reduceKernel(op: ReduceOp, kept: number, red: number, dtype: string): Kernel {
  const key = `${op}|${kept}|${red}|${dtype}`;
  let k = cache.get(key);
  if (k) return k;
  const isArg = op === "argmax" || op === "argmin";
  const params: [string, "u32"][] = [["n_out", "u32"], ["n_red", "u32"], ["in_off", "u32"]];
  for (let d = 0; d < kept; d++) params.push([`kd${d}`, "u32"], [`ks${d}`, "u32"]);
  for (let d = 0; d < red; d++) params.push([`rd${d}`, "u32"], [`rs${d}`, "u32"]);
  const keptLines: string[] = ["  var rest = o;", "  var base = params.in_off;"];
  for (let d = kept - 1; d >= 0; d--) {
    keptLines.push(
      `  base += (rest % params.kd${d}) * params.ks${d}; rest = rest / params.kd${d};`,
    );
  }
  const redLines: string[] = ["    var rr = r;", "    var off = base;"];
  if (red === 1) redLines.splice(0, 2, "    let off = base + r * params.rs0;");
  else {
    for (let d = red - 1; d >= 0; d--) {
      redLines.push(`    off += (rr % params.rd${d}) * params.rs${d}; rr = rr / params.rd${d};`);
    }
  }
  const better = op === "argmax" || op === "max" ? ">" : "<";
  const combine = op === "sum"
    ? "acc = acc + v;"
    : isArg
    ? `if (v ${better} acc || (v == acc && r < best)) { acc = v; best = r; }`
    : `acc = ${op}(acc, v);`;
  const merge = op === "sum"
    ? "sv[l] = sv[l] + sv[l + s];"
    : isArg
    ? `if (sv[l + s] ${better} sv[l] || (sv[l + s] == sv[l] && si[l + s] < si[l])) { sv[l] = sv[l + s]; si[l] = si[l + s]; }`
    : `sv[l] = ${op}(sv[l], sv[l + s]);`;
  k = defineKernel({
    name: `reduce_${op}`,
    bindings: [
      { name: "x", type: dtype as "f32", access: "read" },
      { name: "out", type: isArg ? "i32" : "f32", access: "read_write" },
    ],
    params,
    source: `
var<workgroup> sv: array<f32, ${WG}>;
var<workgroup> si: array<u32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u) {
  let o = wid.x + wid.y * nwg.x;
  if (o >= params.n_out) { return; }
${keptLines.join("\n")}
  var acc: f32 = ${IDENTITY[op]};
  var best: u32 = 0xffffffffu;
  for (var r = l; r < params.n_red; r += ${WG}u) {
${redLines.join("\n")}
    let v = f32(x[off]);
    ${combine}
  }
  sv[l] = acc;
  si[l] = best;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (l < s) { ${merge} }
    workgroupBarrier();
  }
  if (l == 0u) { out[o] = ${isArg ? "i32(si[0])" : "sv[0]"}; }
}`,
  });
  cache.set(key, k);
  return k;
}

/** Reduce `x` over `axes` with `op` (no autograd; see the differentiable wrappers). */
export function reduceRaw(
  x: Tensor,
  op: ReduceOp,
  axes?: number | readonly number[],
  keepDims = false,
): Tensor {
  const ax = normalizeAxes(x.rank, axes);
  const keptAxes = [...Array(x.rank).keys()].filter((a) => !ax.includes(a));
  const outShape = keepDims
    ? x.shape.map((d, i) => (ax.includes(i) ? 1 : d))
    : keptAxes.map((a) => x.shape[a]);
  const isArg = op === "argmax" || op === "argmin";
  const out = empty(outShape, { dtype: isArg ? "i32" : "f32" });
  const nOut = numel(outShape);
  const nRed = ax.reduce((p, a) => p * x.shape[a], 1);
  if (nOut === 0) return out;
  if (nRed === 0 && isArg) throw new Error(`${op} over an empty axis`);
  const k = reduceKernel(op, keptAxes.length, Math.max(1, ax.length), x.dtype);
  const p: Record<string, number> = { n_out: nOut, n_red: nRed, in_off: x.offset };
  keptAxes.forEach((a, d) => {
    p[`kd${d}`] = x.shape[a];
    p[`ks${d}`] = x.strides[a];
  });
  if (ax.length === 0) {
    p.rd0 = 1;
    p.rs0 = 0;
  }
  ax.forEach((a, d) => {
    p[`rd${d}`] = x.shape[a];
    p[`rs${d}`] = x.strides[a];
  });
  rt().dispatch(k, [x, out], p, grid1d(nOut));
  return out;
}

const FINITE_WG = 256;
/** At most this many workgroups per tensor; each thread then strides over the rest. */
const FINITE_MAX_GROUPS = 1024;

/**
 * Count NaN/±Inf elements of one f32 or f16 buffer range into `counts[slot]`.
 *
 * Layout: the tensor's storage is bound as raw u32 words and classified by its bits (exponent all
 * ones), because WGSL lets a compiler assume floats are finite, so `x != x` may fold to false.
 * f16 element e is half (e & 1) of word e >> 1 (little-endian). Grid-stride loop; a thread that
 * found any adds its count with one atomicAdd. Non-finite values are rare, so this skips the
 * workgroup tree (and its barriers, which software adapters pay dearly for); the count is exact
 * in any order.
 */
function nonFiniteKernel(dtype: "f32" | "f16"): Kernel {
  const key = `nonfinite|${dtype}`;
  let k = cache.get(key);
  if (k) return k;
  const test = dtype === "f32"
    ? "let bits = x[params.off + i]; if ((bits & 0x7f800000u) == 0x7f800000u) { c += 1u; }"
    : `let e = params.off + i;
    let h = (x[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu;
    if ((h & 0x7c00u) == 0x7c00u) { c += 1u; }`;
  k = defineKernel({
    name: `count_nonfinite_${dtype}`,
    bindings: [
      { name: "x", type: "u32", access: "read" },
      { name: "counts", type: "atomic<u32>", access: "read_write" },
    ],
    params: [["n", "u32"], ["off", "u32"], ["slot", "u32"]],
    source: `
@compute @workgroup_size(${FINITE_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u) {
  let group = wid.x + wid.y * nwg.x;
  let stride = nwg.x * nwg.y * ${FINITE_WG}u;
  var c = 0u;
  for (var i = group * ${FINITE_WG}u + l; i < params.n; i += stride) {
    ${test}
  }
  if (c > 0u) { atomicAdd(&counts[params.slot], c); }
}`,
  });
  cache.set(key, k);
  return k;
}

/**
 * Record the NaN/±Inf count of each tensor (f32 or f16, contiguous) into a new u32 tensor
 * [tensors.length], one dispatch per tensor, without reading it back.
 */
export function recordNonFiniteCounts(tensors: readonly Tensor[]): Tensor {
  const counts = tensor(new Uint32Array(tensors.length), [tensors.length], {
    dtype: "u32",
    category: "scratch",
  });
  try {
    tensors.forEach((t, slot) => {
      if (t.dtype !== "f32" && t.dtype !== "f16") {
        throw new Error(`countNonFinite: ${t} is not a float tensor`);
      }
      if (!t.isContiguous) throw new Error(`countNonFinite: ${t} is not contiguous`);
      if (t.size === 0) return;
      const groups = Math.min(FINITE_MAX_GROUPS, Math.ceil(t.size / FINITE_WG));
      rt().dispatch(
        nonFiniteKernel(t.dtype),
        [t, counts],
        { n: t.size, off: t.offset, slot },
        grid1d(groups),
      );
    });
  } catch (e) {
    counts.dispose();
    throw e;
  }
  return counts;
}

/**
 * The number of NaN and ±Inf elements of each tensor (f32 or f16, contiguous), in order: one
 * dispatch per tensor and a single read-back for all of them, so checking a whole model's weights
 * costs one pass over its bytes and one round trip.
 *
 * @example
 * ```ts ignore
 * const [bad] = await countNonFinite([tensor([1, NaN, Infinity])]); // 2
 * ```
 */
export async function countNonFinite(tensors: readonly Tensor[]): Promise<number[]> {
  if (tensors.length === 0) return [];
  const counts = recordNonFiniteCounts(tensors);
  try {
    return Array.from(await counts.read());
  } finally {
    counts.dispose();
  }
}

/** Whether every element of every tensor is finite (no NaN, no ±Inf); see {@link countNonFinite}. */
export async function allFinite(tensors: readonly Tensor[]): Promise<boolean> {
  return (await countNonFinite(tensors)).every((c) => c === 0);
}

/** Broadcast-view `g` (reduced over `axes`) back to `shape`. */
function expandBack(g: Tensor, shape: readonly number[], axes: number[]): Tensor {
  const strides: number[] = [];
  let j = 0;
  const gStrides = g.rank === shape.length ? g.strides : null;
  for (let i = 0; i < shape.length; i++) {
    if (axes.includes(i)) {
      strides.push(0);
      if (gStrides) j++;
    } else {
      strides.push(gStrides ? gStrides[i] : g.strides[j++]);
    }
  }
  return g.view(shape, strides);
}

/** Sum over `axes` (all when omitted); differentiable. */
export function sum(x: Tensor, axes?: number | readonly number[], keepDims = false): Tensor {
  const ax = normalizeAxes(x.rank, axes);
  const y = reduceRaw(x, "sum", ax, keepDims);
  return record("sum", y, [x], (g) => [materialize(expandBack(g, x.shape, ax))], []);
}

/** Mean over `axes`; differentiable. */
export function mean(x: Tensor, axes?: number | readonly number[], keepDims = false): Tensor {
  const ax = normalizeAxes(x.rank, axes);
  const count = ax.reduce((p, a) => p * x.shape[a], 1);
  const s = reduceRaw(x, "sum", ax, keepDims);
  const y = scaleRaw(s, 1 / count);
  s.dispose();
  return record("mean", y, [x], (g) => {
    const v = expandBack(g, x.shape, ax);
    const r = scaleRaw(v, 1 / count);
    v.dispose();
    return [r];
  }, []);
}

/** Max over `axes`; the gradient goes to every maximal element (as torch.amax). */
export function max(x: Tensor, axes?: number | readonly number[], keepDims = false): Tensor {
  return extremum(x, "max", axes, keepDims);
}

/** Min over `axes`; the gradient goes to every minimal element (as torch.amin). */
export function min(x: Tensor, axes?: number | readonly number[], keepDims = false): Tensor {
  return extremum(x, "min", axes, keepDims);
}

function extremum(
  x: Tensor,
  op: "max" | "min",
  axes: number | readonly number[] | undefined,
  keepDims: boolean,
): Tensor {
  const ax = normalizeAxes(x.rank, axes);
  const y = reduceRaw(x, op, ax, keepDims);
  return record(op, y, [x], (g) => {
    const yb = expandBack(y, x.shape, ax);
    const gb = expandBack(g, x.shape, ax);
    // Ties share the gradient equally, like torch.amax.
    const mask = hooks.map([x, yb], "select(0.0, 1.0, a == b)");
    const count = reduceRaw(mask, "sum", ax, true);
    const cb = expandBack(count, x.shape, ax);
    const r = hooks.map([mask, gb, cb], "a * b / c");
    for (const t of [yb, gb, mask, count, cb]) t.dispose();
    return [r];
  }, [x, y]);
}

/** Index of the maximum along `axis` (i32; the first on ties). */
export function argmax(x: Tensor, axis: number, keepDims = false): Tensor {
  return reduceRaw(x, "argmax", axis, keepDims);
}

/** Index of the minimum along `axis` (i32; the first on ties). */
export function argmin(x: Tensor, axis: number, keepDims = false): Tensor {
  return reduceRaw(x, "argmin", axis, keepDims);
}

/** Variance over `axes` with Bessel's `correction` (0: population, 1: sample); differentiable. */
export function variance(
  x: Tensor,
  axes?: number | readonly number[],
  keepDims = false,
  correction = 0,
): Tensor {
  const ax = normalizeAxes(x.rank, axes);
  const count = ax.reduce((p, a) => p * x.shape[a], 1);
  const m = mean(x, ax, true);
  const d = hooks.sub(x, m);
  const sq = hooks.mul(d, d);
  const s = sum(sq, ax, keepDims);
  const y = hooks.mulScalar(s, 1 / Math.max(1, count - correction));
  for (const t of [m, d, sq, s]) if (!t.requiresGrad) t.dispose();
  return y;
}

/**
 * Sum a broadcast tensor back to `shape` (the reverse of NumPy broadcasting); used by the
 * backward rules of broadcasting ops. Not recorded.
 */
export function sumTo(x: Tensor, shape: readonly number[]): Tensor {
  const lead = x.rank - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < x.rank; i++) {
    if (i < lead || (shape[i - lead] === 1 && x.shape[i] !== 1)) axes.push(i);
  }
  const r = reduceRaw(x, "sum", axes, true);
  if (lead === 0) return r;
  const v = r.view(shape, r.strides.slice(lead));
  r.dispose();
  return v;
}

function materialize(v: Tensor): Tensor {
  const c = hooks.map([v], "a");
  v.dispose();
  return c;
}

function scaleRaw(x: Tensor, s: number): Tensor {
  return hooks.map([x], "a * s_k", { scalars: { k: s } });
}

/** Elementwise functions the reductions use, registered by ops/mod.ts to avoid an import cycle. */
export interface ReduceHooks {
  /** The generic elementwise kernel (`map` of ops/elementwise.ts). */
  map(
    inputs: readonly Tensor[],
    expr: string,
    options?: { scalars?: Record<string, number> },
  ): Tensor;
  /** a − b, broadcasting. */
  sub(a: Tensor, b: Tensor): Tensor;
  /** a · b, broadcasting. */
  mul(a: Tensor, b: Tensor): Tensor;
  /** a · s for a host scalar s. */
  mulScalar(a: Tensor, s: number): Tensor;
}

let hooks: ReduceHooks;

/** Called once by ops/mod.ts. */
export function registerReduceHooks(h: ReduceHooks): void {
  hooks = h;
}
