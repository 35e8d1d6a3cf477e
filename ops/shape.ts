/**
 * Shape ops: reshape, transpose/permute, expand, slice, squeeze/unsqueeze (views where the layout
 * allows, copies otherwise) and concat. All differentiable.
 *
 * @module
 */
import { record } from "./autograd.ts";
import { assign, contiguous, map, zeros } from "./elementwise.ts";
import { sumTo } from "./reduce.ts";
import { empty, numel, type Tensor } from "./tensor.ts";

function resolveShape(size: number, shape: readonly number[]): number[] {
  const out = [...shape];
  const infer = out.indexOf(-1);
  if (infer !== out.lastIndexOf(-1)) throw new Error("reshape: at most one dimension may be -1");
  if (infer >= 0) {
    const known = out.reduce((p, d, i) => (i === infer ? p : p * d), 1);
    out[infer] = known === 0 ? 0 : size / known;
  }
  if (!out.every((d) => Number.isInteger(d) && d >= 0) || numel(out) !== size) {
    throw new Error(`reshape: cannot view ${size} elements as [${shape.join(", ")}]`);
  }
  return out;
}

/** A tensor of the same elements in a new shape (one dimension may be -1). */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const target = resolveShape(x.size, shape);
  let y: Tensor;
  if (x.isContiguous) {
    y = x.view(target, contiguousOf(target));
  } else {
    // Integers are copied as integers: through f32 they would lose bits above 2^24.
    const compute = x.dtype === "i32" || x.dtype === "u32" ? x.dtype : "f32";
    const c = map([x], "a", { dtype: x.dtype, compute });
    y = c.view(target, contiguousOf(target));
    c.dispose();
  }
  return record("reshape", y, [x], (g) => [reshape(g, x.shape)], []);
}

function contiguousOf(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

function axis(rank: number, a: number): number {
  const n = a < 0 ? a + rank : a;
  if (n < 0 || n >= rank) throw new Error(`axis ${a} out of range for rank ${rank}`);
  return n;
}

/** Reorder dimensions (a view). */
export function permute(x: Tensor, dims: readonly number[]): Tensor {
  const d = dims.map((a) => axis(x.rank, a));
  if (d.length !== x.rank || new Set(d).size !== x.rank) {
    throw new Error(`permute: [${dims}] is not a permutation of ${x.rank} dimensions`);
  }
  const y = x.view(d.map((i) => x.shape[i]), d.map((i) => x.strides[i]));
  const inverse = new Array<number>(d.length);
  d.forEach((src, dst) => (inverse[src] = dst));
  return record("permute", y, [x], (g) => [permute(g, inverse)], []);
}

/** Swap two dimensions (a view). */
export function transpose(x: Tensor, a = -2, b = -1): Tensor {
  const dims = [...Array(x.rank).keys()];
  const i = axis(x.rank, a), j = axis(x.rank, b);
  [dims[i], dims[j]] = [dims[j], dims[i]];
  return permute(x, dims);
}

/** Broadcast to `shape` (a view with zero strides); the gradient is summed back. */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  const lead = shape.length - x.rank;
  if (lead < 0) throw new Error(`expand: cannot expand [${x.shape}] to fewer dimensions`);
  const strides = shape.map((d, i) => {
    if (i < lead) return 0;
    const s = x.shape[i - lead];
    if (s === d) return x.strides[i - lead];
    if (s === 1) return 0;
    throw new Error(`expand: dimension ${i} of [${x.shape}] cannot become ${d}`);
  });
  const y = x.view(shape, strides);
  return record("expand", y, [x], (g) => [sumTo(g, x.shape)], []);
}

/** Elements start ≤ i < end (step ≥ 1) along `dim` (a view). Negative indices count from the end. */
export function slice(x: Tensor, dim: number, start: number, end?: number, step = 1): Tensor {
  const d = axis(x.rank, dim);
  const n = x.shape[d];
  const clamp = (v: number) => Math.min(n, Math.max(0, v < 0 ? v + n : v));
  const s = clamp(start), e = clamp(end ?? n);
  if (step < 1 || !Number.isInteger(step)) throw new Error("slice: step must be an integer ≥ 1");
  const len = Math.max(0, Math.ceil((e - s) / step));
  const shape = [...x.shape];
  shape[d] = len;
  const strides = [...x.strides];
  strides[d] *= step;
  const y = x.view(shape, strides, x.offset + s * x.strides[d]);
  return record("slice", y, [x], (g) => {
    const gx = zeros(x.shape);
    const target = gx.view(
      shape,
      gx.strides.map((st, i) => (i === d ? st * step : st)),
      s * gx.strides[d],
    );
    assign(target, g);
    target.dispose();
    return [gx];
  }, []);
}

/** Insert a dimension of size 1 at `dim`. */
export function unsqueeze(x: Tensor, dim: number): Tensor {
  const d = dim < 0 ? dim + x.rank + 1 : dim;
  const shape = [...x.shape];
  shape.splice(d, 0, 1);
  return reshapeView(x, shape);
}

/** Remove dimensions of size 1 (all, or the one at `dim`). */
export function squeeze(x: Tensor, dim?: number): Tensor {
  const shape = dim === undefined
    ? x.shape.filter((s) => s !== 1)
    : x.shape.filter((s, i) => !(i === axis(x.rank, dim) && s === 1));
  return reshapeView(x, shape);
}

/** Reshape that only inserts/removes unit dimensions: always a view, even of strided tensors. */
function reshapeView(x: Tensor, shape: number[]): Tensor {
  const strides: number[] = [];
  let j = 0;
  for (const s of shape) {
    while (j < x.rank && x.shape[j] === 1 && s !== 1) j++;
    if (s === 1) {
      strides.push(j < x.rank && x.shape[j] === 1 ? x.strides[j++] : 1);
    } else {
      strides.push(x.strides[j++]);
    }
  }
  const y = x.view(shape, strides);
  return record("reshape", y, [x], (g) => [reshape(g, x.shape)], []);
}

/** Join tensors along `dim` (all other dimensions must match). */
export function concat(tensors: readonly Tensor[], dim = 0): Tensor {
  if (tensors.length === 0) throw new Error("concat: no tensors");
  const first = tensors[0];
  const d = axis(first.rank, dim);
  for (const t of tensors) {
    if (t.rank !== first.rank || t.shape.some((s, i) => i !== d && s !== first.shape[i])) {
      throw new Error(
        `concat: shapes [${first.shape}] and [${t.shape}] differ outside dimension ${d}`,
      );
    }
  }
  const shape = [...first.shape];
  shape[d] = tensors.reduce((p, t) => p + t.shape[d], 0);
  const out = empty(shape, { dtype: first.dtype });
  let at = 0;
  const starts: number[] = [];
  for (const t of tensors) {
    starts.push(at);
    const part = out.view(t.shape, out.strides, at * out.strides[d]);
    assign(part, t);
    part.dispose();
    at += t.shape[d];
  }
  return record("concat", out, tensors, (g) =>
    tensors.map((t, i) => {
      if (!t.requiresGrad) return null;
      const v = g.view(t.shape, g.strides, g.offset + starts[i] * g.strides[d]);
      const c = contiguous(v);
      v.dispose();
      return c;
    }), []);
}
