/**
 * Indexing: `embedding` (and `embeddingSum`, several lookups added in one kernel), `indexSelect`
 * and `scatterAdd`, with deterministic backward rules.
 *
 * A gather is a plain kernel; its adjoint (a scatter-add) is where care is needed. WGSL has no f32
 * atomics, and compare-and-swap loops add in whatever order threads arrive, so the sums (and hence
 * resumed training losses) would not reproduce bit for bit. Instead the host groups the positions
 * by index value (a CSR: `offsets` per value, `positions` sorted by value then position) and one GPU
 * thread per output element sums its group's rows in ascending position order. The host needs the
 * index values, which every index tensor built from host data carries (`hostData`); for indices
 * produced on the GPU, {@link loadHostIndices} reads them back once.
 *
 * @module
 */
import { record } from "./autograd.ts";
import { map } from "./elementwise.ts";
import { defineKernel, grid1d, type Kernel, linearIndex, rt } from "./runtime.ts";
import { type DType, empty, numel, type Tensor, tensor } from "./tensor.ts";

const WG = 256;

/** Positions grouped by index value (compressed sparse rows). */
export interface IndexGroups {
  /** Positions of value v are `positions[offsets[v] .. offsets[v + 1])`; length `limit + 1`. */
  offsets: Int32Array;
  /** Every position, sorted by its index value, then by position. */
  positions: Int32Array;
}

/**
 * Group the positions of `indices` by value with a stable counting sort, so each group lists its
 * positions in ascending order. Values must lie in [0, limit) (callers validate first).
 *
 * @example
 * ```ts
 * import { groupPositions } from "./indexing.ts";
 * const g = groupPositions(new Int32Array([2, 0, 2]), 3);
 * // g.offsets = [0, 1, 1, 3], g.positions = [1, 0, 2]
 * ```
 */
export function groupPositions(indices: ArrayLike<number>, limit: number): IndexGroups {
  const offsets = new Int32Array(limit + 1);
  for (let p = 0; p < indices.length; p++) offsets[indices[p] + 1]++;
  for (let v = 0; v < limit; v++) offsets[v + 1] += offsets[v];
  const next = offsets.slice(0, limit);
  const positions = new Int32Array(indices.length);
  for (let p = 0; p < indices.length; p++) positions[next[indices[p]]++] = p;
  return { offsets, positions };
}

/**
 * Read an index tensor back to the host and remember the values in `t.hostData`, so that the
 * synchronous ops here (which validate and group indices on the host) can use it. Tensors built
 * with `tensor(Int32Array …)` already carry their host copy and need no call.
 *
 * @example
 * ```ts
 * import { init, loadHostIndices, tensor } from "./mod.ts";
 * await init();
 * const ids = tensor(new Int32Array([3, 1]));
 * console.log(await loadHostIndices(ids)); // Int32Array [3, 1]
 * ```
 */
export async function loadHostIndices(t: Tensor): Promise<Int32Array> {
  if (t.dtype !== "i32") throw new Error(`loadHostIndices: ${t} must have dtype i32`);
  if (t.hostData instanceof Int32Array && t.hostData.length === t.size) return t.hostData;
  const values = (await t.read()) as Int32Array;
  t.hostData = values;
  return values;
}

/** The host values of an index tensor, or an error that says how to provide them. */
function hostIndices(t: Tensor, op: string, what: string): Int32Array {
  if (t.dtype !== "i32") throw new Error(`${op}: ${what} ${t} must have dtype i32`);
  const h = t.hostData;
  if (h instanceof Int32Array && h.length === t.size) return h;
  throw new Error(
    `${op}: ${what} ${t} has no host copy of its values (needed to validate them and to build ` +
      "a deterministic backward); create it with tensor(Int32Array …) or call " +
      "`await loadHostIndices(t)` first",
  );
}

/** Row-major multi-index of flat position `p` in `shape`, for error messages. */
function multiIndex(p: number, shape: readonly number[]): number[] {
  const out = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    out[d] = p % shape[d];
    p = Math.floor(p / shape[d]);
  }
  return out;
}

/** Throw naming the first value outside [0, limit), its position and the limit. */
function checkRange(
  values: Int32Array,
  shape: readonly number[],
  limit: number,
  describe: (value: number, at: string) => string,
): void {
  for (let p = 0; p < values.length; p++) {
    const v = values[p];
    if (v < 0 || v >= limit) throw new Error(describe(v, `[${multiIndex(p, shape).join(", ")}]`));
  }
}

function normalizeDim(dim: number, rank: number, op: string, what: string): number {
  const d = dim < 0 ? dim + rank : dim;
  if (!Number.isInteger(d) || d < 0 || d >= rank) {
    throw new Error(`${op}: dim ${dim} is out of range for ${what} of rank ${rank}`);
  }
  return d;
}

/** [outer, size, inner] around axis `dim` of `shape`. */
function aroundAxis(shape: readonly number[], dim: number): [number, number, number] {
  return [numel(shape.slice(0, dim)), shape[dim], numel(shape.slice(dim + 1))];
}

/** `t` itself when its elements are row-major (any offset), else a contiguous copy. */
function rowMajor(t: Tensor): Tensor {
  if (t.isContiguous) return t;
  const compute = t.dtype === "i32" || t.dtype === "u32" ? t.dtype : "f32";
  return map([t], "a", { dtype: t.dtype === "f16" ? "f32" : t.dtype, compute });
}

/** f16 storage is widened on read; integer tensors are gathered as they are. */
function gatheredType(d: DType): DType {
  return d === "f16" ? "f32" : d;
}

const gatherCache = new Map<string, Kernel>();

function gatherKernel(xType: DType): Kernel {
  let k = gatherCache.get(xType);
  if (k) return k;
  const outType = gatheredType(xType);
  k = defineKernel({
    name: `gather(${xType})`,
    bindings: [
      { name: "x", type: xType, access: "read" },
      { name: "index", type: "i32", access: "read" },
      { name: "out", type: outType, access: "read_write" },
    ],
    params: [
      ["total", "u32"],
      ["n", "u32"],
      ["inner", "u32"],
      ["dim_size", "u32"],
      ["x_off", "u32"],
      ["index_off", "u32"],
    ],
    source: /* wgsl */ `
// Gather along one axis: x is read as [outer, dim_size, inner] from x_off, out is written as
// [outer, n, inner]. One thread per output element; neighbouring threads walk \`inner\`, so the
// reads of one selected row coalesce. Indices were range-checked on the host.
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(WG)};
  if (i >= params.total) { return; }
  let k = i % params.inner;
  let r = i / params.inner;
  let j = r % params.n;
  let o = r / params.n;
  let row = u32(index[params.index_off + j]);
  out[i] = ${outType}(x[params.x_off + (o * params.dim_size + row) * params.inner + k]);
}`,
  });
  gatherCache.set(xType, k);
  return k;
}

/**
 * out[o, j, k] = x[o, index[j], k] with x split around `dim`; `index` holds `n` row-major values.
 * Not recorded.
 */
function gatherRaw(x: Tensor, dim: number, index: Tensor, outShape: readonly number[]): Tensor {
  const out = empty(outShape, { dtype: gatheredType(x.dtype) });
  const total = out.size;
  if (total === 0) return out;
  const [, dimSize, inner] = aroundAxis(x.shape, dim);
  const xs = rowMajor(x);
  const is = rowMajor(index);
  rt().dispatch(gatherKernel(x.dtype), [xs, is, out], {
    total,
    n: index.size,
    inner,
    dim_size: dimSize,
    x_off: xs.offset,
    index_off: is.offset,
  }, grid1d(Math.ceil(total / WG)));
  if (xs !== x) xs.dispose();
  if (is !== index) is.dispose();
  return out;
}

const segmentCache = new Map<string, Kernel>();

function segmentSumKernel(srcType: DType, accumulate: boolean): Kernel {
  const id = `${srcType}|${accumulate}`;
  let k = segmentCache.get(id);
  if (k) return k;
  k = defineKernel({
    name: `segmentSum(${srcType})`,
    bindings: [
      { name: "src", type: srcType, access: "read" },
      { name: "positions", type: "i32", access: "read" },
      { name: "rows", type: "i32", access: "read" },
      { name: "offsets", type: "i32", access: "read" },
      { name: "out", type: "f32", access: "read_write" },
    ],
    params: [
      ["total", "u32"],
      ["n", "u32"],
      ["inner", "u32"],
      ["dim_size", "u32"],
      ["groups", "u32"],
      ["src_off", "u32"],
      ["out_off", "u32"],
    ],
    source: /* wgsl */ `
// Deterministic scatter-add over the values that occur: out is [outer, dim_size, inner] (zeroed
// before, or an existing sum the rows are added to), src is [outer, n, inner]. One thread per (o, group u, k) sums the src rows of value
// rows[u], walking positions[offsets[u] .. offsets[u + 1]) in ascending position order: no
// atomics, the same summation order (so the same bits) on every run, and rows that no index
// names are never touched (an embedding's backward costs the batch, not the vocabulary).
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(WG)};
  if (i >= params.total) { return; }
  let k = i % params.inner;
  let r = i / params.inner;
  let u = r % params.groups;
  let o = r / params.groups;
  let base = params.src_off + o * params.n * params.inner + k;
  var acc = 0.0;
  for (var q = u32(offsets[u]); q < u32(offsets[u + 1u]); q++) {
    acc += f32(src[base + u32(positions[q]) * params.inner]);
  }
  let at = params.out_off + (o * params.dim_size + u32(rows[u])) * params.inner + k;
  out[at] = ${accumulate ? "out[at] + acc" : "acc"};
}`,
  });
  segmentCache.set(id, k);
  return k;
}

/**
 * out = zeros(outShape); out[o, v, k] += src[o, p, k] for every position p whose index is v, with
 * `groups` the CSR of the indices along `dim`. Not recorded. The output is cleared by the driver
 * and only the values that occur are summed. With `into` (contiguous f32 of `outShape`) the sums
 * are added to its rows instead, and `into` is returned.
 */
function segmentSumRaw(
  src: Tensor,
  groups: IndexGroups,
  outShape: readonly number[],
  dim: number,
  into?: Tensor,
): Tensor {
  const out = into ?? empty(outShape, { dtype: "f32" });
  if (out.size === 0) return out;
  if (!into) rt().clear(out.buffer, 0, out.bytes);
  const [outer, dimSize, inner] = aroundAxis(outShape, dim);
  // The occurring values and their compacted CSR offsets.
  const rows: number[] = [], offsets: number[] = [0];
  for (let v = 0; v < dimSize; v++) {
    if (groups.offsets[v + 1] > groups.offsets[v]) {
      rows.push(v);
      offsets.push(groups.offsets[v + 1]);
    }
  }
  const total = outer * rows.length * inner;
  if (total === 0) return out;
  const ss = rowMajor(src);
  const positions = tensor(groups.positions, { category: "scratch" });
  const rowsT = tensor(Int32Array.from(rows), { category: "scratch" });
  const offsetsT = tensor(Int32Array.from(offsets), { category: "scratch" });
  rt().dispatch(segmentSumKernel(ss.dtype, into !== undefined), [
    ss,
    positions,
    rowsT,
    offsetsT,
    out,
  ], {
    total,
    n: groups.positions.length,
    inner,
    dim_size: dimSize,
    groups: rows.length,
    src_off: ss.offset,
    out_off: out.offset,
  }, grid1d(Math.ceil(total / WG)));
  if (ss !== src) ss.dispose();
  for (const t of [positions, rowsT, offsetsT]) t.dispose();
  return out;
}

function checkFloat(t: Tensor, op: string, what: string): void {
  if (t.dtype !== "f32" && t.dtype !== "f16") {
    throw new Error(`${op}: ${what} ${t} must be f32 or f16`);
  }
}

/**
 * Look up rows of `weight` [V, D] for `ids` (i32, any shape): the result is [...ids.shape, D] in
 * f32 (f16 weights are widened). The gradient of `weight` is a deterministic scatter-add of the
 * output gradient's rows (see the module notes). Ids outside [0, V) are an error naming the id,
 * its position and V.
 *
 * @example
 * ```ts
 * import { embedding, init, tensor } from "./mod.ts";
 * await init();
 * const weight = tensor([[0, 0], [1, 1], [2, 2]]);
 * const y = embedding(weight, tensor(new Int32Array([2, 0, 2]))); // [[2, 2], [0, 0], [2, 2]]
 * ```
 */
export function embedding(weight: Tensor, ids: Tensor): Tensor {
  const values = checkedIds(weight, ids, "embedding");
  const y = gatherRaw(weight, 0, ids, [...ids.shape, weight.shape[1]]);
  return record("embedding", y, [weight, ids], (g) => [embeddingGrad(weight, values, g), null]);
}

/** Validate an embedding's weight [V, D] and ids; returns the ids' host values. */
function checkedIds(weight: Tensor, ids: Tensor, op: string): Int32Array {
  if (weight.rank !== 2) throw new Error(`${op}: weight ${weight} must be [V, D]`);
  checkFloat(weight, op, "weight");
  const vocab = weight.shape[0];
  const values = hostIndices(ids, op, "ids");
  checkRange(
    values,
    ids.shape,
    vocab,
    (id, at) => `${op}: id ${id} at position ${at} of ids ${ids} is outside [0, V = ${vocab})`,
  );
  return values;
}

/**
 * The gradient of an embedding table from its output's gradient g [..., D]: the scatter-add of
 * g's rows by id (null when the table needs none). A table that already holds a `.grad` (a tied
 * decoder's, or an earlier micro-batch's) gets the occurring rows added into it rather than a
 * [V, D] sum for autograd to add, which would write and read the whole table twice. Same sums,
 * same order of addition.
 */
function embeddingGrad(weight: Tensor, values: Int32Array, g: Tensor): Tensor | null {
  if (!weight.requiresGrad) return null;
  const groups = groupPositions(values, weight.shape[0]);
  const acc = weight.grad;
  if (
    acc && !acc.disposed && acc.dtype === "f32" && acc.isContiguous &&
    acc.shape.join() === weight.shape.join()
  ) {
    segmentSumRaw(g, groups, weight.shape, 0, acc);
    return null;
  }
  return segmentSumRaw(g, groups, weight.shape, 0);
}

const embeddingSumCache = new Map<string, Kernel>();

function embeddingSumKernel(types: readonly DType[]): Kernel {
  const id = types.join();
  let k = embeddingSumCache.get(id);
  if (k) return k;
  const n = types.length;
  const terms = types.map((_, t) =>
    `f32(w${t}[params.w${t}_off + u32(ids${t}[params.ids${t}_off + r]) * params.width + c])`
  );
  k = defineKernel({
    name: `embedding_sum(${n})`,
    bindings: [
      ...types.map((type, t) => ({ name: `w${t}`, type, access: "read" as const })),
      ...types.map((_, t) => ({ name: `ids${t}`, type: "i32" as const, access: "read" as const })),
      { name: "out", type: "f32", access: "read_write" },
    ],
    params: [
      ["total", "u32"],
      ["width", "u32"],
      ...types.flatMap((_, t) =>
        [[`w${t}_off`, "u32"], [`ids${t}_off`, "u32"]] as [string, "u32"][]
      ),
    ],
    source: /* wgsl */ `
// Sum of ${n} embedding lookups: out[r, c] = Σ_t w_t[ids_t[r], c], added left to right (the bits
// of gathering each table and adding the rows in order). One thread per output element;
// neighbouring threads walk c, so each table row's reads coalesce. Ids were range-checked.
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(WG)};
  if (i >= params.total) { return; }
  let c = i % params.width;
  let r = i / params.width;
  out[i] = ${terms.join(" + ")};
}`,
  });
  embeddingSumCache.set(id, k);
  return k;
}

/**
 * Σ_t embedding(tables[t].weight, tables[t].ids) in one kernel — a transformer's word, position
 * and token-type embeddings — with the bits of the separate lookups added in order. Every
 * weight is [V_t, D] (f32 or f16, widened) with the same D, every ids tensor i32 of one shape;
 * the result is [...ids.shape, D]. Each table's gradient is the scatter-add of the output
 * gradient by its own ids, as {@link embedding}'s.
 *
 * @example
 * ```ts
 * import { embeddingSum, init, tensor } from "./mod.ts";
 * await init();
 * const word = tensor([[0, 0], [1, 1], [2, 2]]), position = tensor([[10, 10], [20, 20]]);
 * const y = embeddingSum([
 *   { weight: word, ids: tensor(new Int32Array([2, 0])) },
 *   { weight: position, ids: tensor(new Int32Array([0, 1])) },
 * ]); // [[12, 12], [20, 20]]
 * ```
 */
export function embeddingSum(tables: readonly { weight: Tensor; ids: Tensor }[]): Tensor {
  if (tables.length === 0) throw new Error("embeddingSum: at least one table is needed");
  if (tables.length > 8) throw new Error(`embeddingSum: at most 8 tables, got ${tables.length}`);
  const values = tables.map(({ weight, ids }) => checkedIds(weight, ids, "embeddingSum"));
  const { weight: w0, ids: ids0 } = tables[0];
  for (const { weight, ids } of tables) {
    if (weight.shape[1] !== w0.shape[1]) {
      throw new Error(`embeddingSum: weight ${weight} must have width D = ${w0.shape[1]} (${w0})`);
    }
    if (ids.shape.join() !== ids0.shape.join()) {
      throw new Error(`embeddingSum: ids ${ids} must have the shape of ${ids0}`);
    }
  }
  const width = w0.shape[1];
  const y = empty([...ids0.shape, width]);
  if (y.size > 0) {
    const ws = tables.map((t) => rowMajor(t.weight));
    const is = tables.map((t) => rowMajor(t.ids));
    const p: Record<string, number> = { total: y.size, width };
    ws.forEach((w, t) => (p[`w${t}_off`] = w.offset));
    is.forEach((x, t) => (p[`ids${t}_off`] = x.offset));
    rt().dispatch(
      embeddingSumKernel(ws.map((w) => w.dtype)),
      [...ws, ...is, y],
      p,
      grid1d(Math.ceil(y.size / WG)),
    );
    ws.forEach((w, t) => w !== tables[t].weight && w.dispose());
    is.forEach((x, t) => x !== tables[t].ids && x.dispose());
  }
  const inputs = tables.flatMap((t) => [t.weight, t.ids]);
  return record(
    "embeddingSum",
    y,
    inputs,
    (g) => tables.flatMap((t, i) => [embeddingGrad(t.weight, values[i], g), null]),
    [],
  );
}

/**
 * Select the slices `index[j]` of `x` along `dim`: out has x's shape with `dim` replaced by
 * `index.size`, and out[…, j, …] = x[…, index[j], …]. Repeated indices are allowed; the gradient
 * of `x` is {@link scatterAdd} of the output gradient (deterministic).
 *
 * @example
 * ```ts
 * import { indexSelect, init, tensor } from "./mod.ts";
 * await init();
 * const x = tensor([[1, 2, 3], [4, 5, 6]]);
 * const y = indexSelect(x, 1, tensor(new Int32Array([2, 2, 0]))); // [[3, 3, 1], [6, 6, 4]]
 * ```
 */
export function indexSelect(x: Tensor, dim: number, index: Tensor): Tensor {
  const d = normalizeDim(dim, x.rank, "indexSelect", `x ${x}`);
  if (index.rank !== 1) throw new Error(`indexSelect: index ${index} must be 1-D`);
  const values = hostIndices(index, "indexSelect", "index");
  const size = x.shape[d];
  checkRange(
    values,
    index.shape,
    size,
    (v, at) => `indexSelect: index${at} = ${v} is outside [0, ${size}) (dimension ${d} of x ${x})`,
  );
  const outShape = [...x.shape];
  outShape[d] = index.size;
  const y = gatherRaw(x, d, index, outShape);
  return record("indexSelect", y, [x, index], (g) => {
    if (!x.requiresGrad) return [null, null];
    return [segmentSumRaw(g, groupPositions(values, size), x.shape, d), null];
  });
}

/**
 * out = zeros(shape); out[…, index[j], …] += src[…, j, …] along `dim` (the adjoint of
 * {@link indexSelect}). `src` has `shape` with `dim` replaced by `index.size`. Repeated indices
 * are summed in ascending j, so the result is bit-for-bit reproducible. Output is f32.
 *
 * @example
 * ```ts
 * import { init, scatterAdd, tensor } from "./mod.ts";
 * await init();
 * const y = scatterAdd([3], 0, tensor(new Int32Array([2, 0, 2])), tensor([1, 2, 3])); // [2, 0, 4]
 * ```
 */
export function scatterAdd(
  shape: readonly number[],
  dim: number,
  index: Tensor,
  src: Tensor,
): Tensor {
  const d = normalizeDim(dim, shape.length, "scatterAdd", `shape [${shape.join(", ")}]`);
  if (index.rank !== 1) throw new Error(`scatterAdd: index ${index} must be 1-D`);
  checkFloat(src, "scatterAdd", "src");
  const expected = [...shape];
  expected[d] = index.size;
  if (src.shape.join() !== expected.join()) {
    throw new Error(
      `scatterAdd: src ${src} must have shape [${expected.join(", ")}] (shape [${
        shape.join(", ")
      }] with dimension ${d} replaced by the ${index.size} indices)`,
    );
  }
  const values = hostIndices(index, "scatterAdd", "index");
  const size = shape[d];
  checkRange(
    values,
    index.shape,
    size,
    (v, at) => `scatterAdd: index${at} = ${v} is outside [0, ${size}) (dimension ${d})`,
  );
  const y = segmentSumRaw(src, groupPositions(values, size), shape, d);
  return record("scatterAdd", y, [index, src], (g) => {
    if (!src.requiresGrad) return [null, null];
    return [null, gatherRaw(g, d, index, src.shape)];
  });
}
