/**
 * Shape ops: which results are views (sharing storage) and which are copies, their values against
 * host index arithmetic, chains of views, and every backward rule by finite differences.
 */
import assert from "node:assert/strict";
import {
  concat,
  contiguous,
  expand,
  mul,
  permute,
  reshape,
  slice,
  squeeze,
  type Tensor,
  tensor,
  transpose,
  unsqueeze,
} from "../../ops/mod.ts";
import { checkGradients, expectTensor, randomArray, setup } from "../helpers.ts";

await setup();

function contiguousStrides(shape: readonly number[]): number[] {
  const s: number[] = [];
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

function numel(shape: readonly number[]): number {
  return shape.reduce((p, d) => p * d, 1);
}

/** Host permute of contiguous `data` of `shape`: out[i_{dims[0]}, …] = data[i_0, …]. */
function permuteRef(data: ArrayLike<number>, shape: readonly number[], dims: readonly number[]) {
  const outShape = dims.map((d) => shape[d]);
  const inStrides = contiguousStrides(shape);
  const outStrides = contiguousStrides(outShape);
  const out = new Float64Array(data.length);
  for (let o = 0; o < out.length; o++) {
    let src = 0;
    for (let k = 0; k < dims.length; k++) {
      src += (Math.floor(o / outStrides[k]) % outShape[k]) * inStrides[dims[k]];
    }
    out[o] = data[src];
  }
  return out;
}

/** Host slice along `dim` with a step (start/end already non-negative and clamped). */
function sliceRef(
  data: ArrayLike<number>,
  shape: readonly number[],
  dim: number,
  start: number,
  end: number,
  step: number,
): Float64Array {
  const cs = contiguousStrides(shape);
  const out: number[] = [];
  for (let i = 0; i < data.length; i++) {
    const c = Math.floor(i / cs[dim]) % shape[dim];
    if (c >= start && c < end && (c - start) % step === 0) out.push(data[i]);
  }
  return Float64Array.from(out);
}

/** Host concat along `dim`. */
function concatRef(
  parts: { data: ArrayLike<number>; shape: readonly number[] }[],
  dim: number,
): Float64Array {
  const outer = numel(parts[0].shape.slice(0, dim));
  const out: number[] = [];
  for (let o = 0; o < outer; o++) {
    for (const p of parts) {
      const inner = numel(p.shape.slice(dim));
      for (let i = 0; i < inner; i++) out.push(p.data[o * inner + i]);
    }
  }
  return Float64Array.from(out);
}

const values = (n: number, seed: number) => randomArray(n, seed, -1, 1).map(Math.fround);

Deno.test("reshape of a contiguous tensor is a view; of a strided one a copy", async () => {
  const data = values(7 * 33, 1);
  const x = tensor(Float32Array.from(data), [7, 33]);
  const v = reshape(x, [33, -1]);
  assert.deepEqual(v.shape, [33, 7]);
  assert.ok(v.sharesStorage(x), "reshape of a contiguous tensor must share storage");
  await expectTensor(v, data, { atol: 0 });
  const r3 = reshape(x, [1, 7, 11, 3]);
  assert.ok(r3.sharesStorage(x));
  await expectTensor(r3, data, { atol: 0 }, [1, 7, 11, 3]);

  const xt = transpose(x); // [33, 7], strided
  assert.ok(xt.sharesStorage(x) && !xt.isContiguous);
  const c = reshape(xt, [231]);
  assert.ok(!c.sharesStorage(x), "reshape of a strided view must copy");
  assert.ok(c.isContiguous);
  await expectTensor(c, permuteRef(data, [7, 33], [1, 0]), { atol: 0 }, [231]);

  // A sliced row block is contiguous (with an offset): still a view.
  const rows = slice(x, 0, 2, 5);
  assert.ok(rows.isContiguous && rows.offset === 66);
  const rv = reshape(rows, [-1]);
  assert.ok(rv.sharesStorage(x));
  await expectTensor(rv, data.slice(66, 165), { atol: 0 }, [99]);

  assert.throws(() => reshape(x, [5, -1]), /reshape: cannot view 231 elements as \[5, -1\]/);
  assert.throws(() => reshape(x, [-1, -1]), /at most one dimension may be -1/);
});

Deno.test("permute and transpose are views with the right values", async () => {
  const shape = [3, 7, 5, 2];
  const data = values(numel(shape), 2);
  const x = tensor(Float32Array.from(data), shape);
  for (const dims of [[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2], [2, 0, 3, 1]]) {
    const y = permute(x, dims);
    assert.ok(y.sharesStorage(x));
    await expectTensor(y, permuteRef(data, shape, dims), { atol: 0 }, dims.map((d) => shape[d]));
  }
  await expectTensor(transpose(x, 0, 2), permuteRef(data, shape, [2, 1, 0, 3]), { atol: 0 });
  await expectTensor(transpose(x), permuteRef(data, shape, [0, 1, 3, 2]), { atol: 0 });
  assert.throws(() => permute(x, [0, 1, 1, 2]), /not a permutation of 4 dimensions/);
  assert.throws(() => transpose(x, 0, 4), /axis 4 out of range for rank 4/);
});

Deno.test("slice with steps, negative indices and clamping", async () => {
  const shape = [7, 33];
  const data = values(numel(shape), 3);
  const x = tensor(Float32Array.from(data), shape);
  const cases: [number, number, number | undefined, number, number, number, number][] = [
    // dim, start, end, step → expected normalized start, end, length
    [1, 3, 30, 4, 3, 30, 7],
    [0, -3, undefined, 1, 4, 7, 3],
    [1, 0, 100, 5, 0, 33, 7],
    [0, 1, -1, 2, 1, 6, 3],
    [1, 10, 5, 1, 10, 10, 0],
  ];
  for (const [dim, start, end, step, s, e, len] of cases) {
    const y = slice(x, dim, start, end, step);
    assert.ok(y.sharesStorage(x));
    assert.equal(y.shape[dim], len, `slice(${dim}, ${start}, ${end}, ${step}) length`);
    await expectTensor(y, sliceRef(data, shape, dim, s, e, step), { atol: 0 });
  }
  assert.throws(() => slice(x, 0, 0, 3, 0), /step must be an integer ≥ 1/);
});

Deno.test("expand, squeeze and unsqueeze are views; expand rejects bad shapes", async () => {
  const data = values(7, 4);
  const x = tensor(Float32Array.from(data), [7, 1]);
  const e = expand(x, [3, 7, 5]);
  assert.ok(e.sharesStorage(x));
  assert.deepEqual(e.strides, [0, 1, 0]);
  await expectTensor(
    e,
    Array.from({ length: 105 }, (_, i) => data[Math.floor(i / 5) % 7]),
    { atol: 0 },
  );
  assert.throws(() => expand(x, [7, 2, 5]), /dimension 1 of \[7,1\] cannot become 2/);
  assert.throws(() => expand(x, [7]), /cannot expand \[7,1\] to fewer dimensions/);

  const u = unsqueeze(x, 0);
  assert.deepEqual(u.shape, [1, 7, 1]);
  assert.deepEqual(squeeze(u).shape, [7]);
  assert.deepEqual(squeeze(u, 0).shape, [7, 1]);
  assert.deepEqual(squeeze(u, 1).shape, [1, 7, 1], "squeezing a non-unit dimension is a no-op");
  assert.deepEqual(unsqueeze(x, -1).shape, [7, 1, 1]);

  // Unit dimensions inserted into a strided view keep it a view with the right values.
  const base = values(5 * 7, 5);
  const t = transpose(tensor(Float32Array.from(base), [5, 7])); // [7, 5]
  const tu = unsqueeze(t, 1); // [7, 1, 5]
  assert.ok(tu.sharesStorage(t));
  await expectTensor(tu, permuteRef(base, [5, 7], [1, 0]), { atol: 0 }, [7, 1, 5]);
  await expectTensor(squeeze(tu), permuteRef(base, [5, 7], [1, 0]), { atol: 0 }, [7, 5]);
});

Deno.test("concat along every dimension, from strided parts", async () => {
  const a = values(3 * 7 * 2, 6), b = values(3 * 7 * 5, 7), c = values(3 * 1 * 5, 8);
  const ta = tensor(Float32Array.from(a), [3, 7, 2]);
  const tb = tensor(Float32Array.from(b), [3, 7, 5]);
  await expectTensor(
    concat([ta, tb], 2),
    concatRef([{ data: a, shape: [3, 7, 2] }, { data: b, shape: [3, 7, 5] }], 2),
    { atol: 0 },
    [3, 7, 7],
  );
  const tc = tensor(Float32Array.from(c), [3, 1, 5]);
  await expectTensor(
    concat([tb, tc, tb], 1),
    concatRef([
      { data: b, shape: [3, 7, 5] },
      { data: c, shape: [3, 1, 5] },
      { data: b, shape: [3, 7, 5] },
    ], 1),
    { atol: 0 },
    [3, 15, 5],
  );
  await expectTensor(concat([tb, tb], -3), [...b, ...b], { atol: 0 }, [6, 7, 5]);
  // A transposed part is read through its strides.
  const d = values(5 * 7, 9);
  const td = transpose(tensor(Float32Array.from(d), [5, 7])); // [7, 5]
  await expectTensor(
    concat([td, slice(tb, 0, 0, 1).view([7, 5], [5, 1])], 0),
    [...permuteRef(d, [5, 7], [1, 0]), ...b.slice(0, 35)],
    { atol: 0 },
    [14, 5],
  );
  assert.throws(() => concat([ta, tc], 2), /concat: shapes \[3,7,2\] and \[3,1,5\] differ/);
  assert.throws(() => concat([]), /no tensors/);
});

Deno.test("shape-op gradients match finite differences", async (t) => {
  const shape = [3, 7, 5];
  const x = randomArray(numel(shape), 10, -1, 1);
  // Each shape op is followed by a multiplication with a fixed ramp so the upstream gradient
  // differs per element and position errors cannot cancel.
  const ramp = (s: readonly number[]) =>
    tensor(Float32Array.from({ length: numel(s) }, (_, i) => 1 + (i % 13) / 7), s);
  const rampRef = (v: Float64Array) => v.map((u, i) => u * (1 + (i % 13) / 7));
  const withRamp = (y: Tensor): Tensor => mul(y, ramp(y.shape));
  const cases: [string, (t: Tensor) => Tensor, (v: Float64Array) => Float64Array][] = [
    ["reshape", (t) => reshape(t, [21, 5]), (v) => v],
    [
      "reshape of transpose",
      (t) => reshape(transpose(t, 0, 2), [-1]),
      (v) => permuteRef(v, shape, [2, 1, 0]),
    ],
    ["permute", (t) => permute(t, [2, 0, 1]), (v) => permuteRef(v, shape, [2, 0, 1])],
    ["transpose", (t) => transpose(t), (v) => permuteRef(v, shape, [0, 2, 1])],
    ["slice", (t) => slice(t, 1, 1, 7, 2), (v) => sliceRef(v, shape, 1, 1, 7, 2)],
    [
      "slice of slice",
      (t) => slice(slice(t, 2, 1), 0, -2),
      (v) => sliceRef(sliceRef(v, shape, 2, 1, 5, 1), [3, 7, 4], 0, 1, 3, 1),
    ],
    [
      "expand",
      (t) => expand(reshape(t, [3, 7, 5, 1]), [2, 3, 7, 5, 3]),
      (v) => Float64Array.from({ length: 2 * 105 * 3 }, (_, i) => v[Math.floor(i / 3) % 105]),
    ],
    ["unsqueeze + squeeze", (t) => squeeze(unsqueeze(t, 1)), (v) => v],
    [
      "contiguous of transpose",
      (t) => contiguous(transpose(t, 0, 1)),
      (v) => permuteRef(v, shape, [1, 0, 2]),
    ],
  ];
  for (const [what, op, ref] of cases) {
    await t.step(what, async () => {
      await checkGradients(
        ([a]) => withRamp(op(a)),
        ([a]) => rampRef(ref(a)),
        [{ shape, values: x }],
      );
    });
  }
  await t.step("concat", async () => {
    const y = randomArray(3 * 2 * 5, 11, -1, 1);
    await checkGradients(
      ([a, b]) => withRamp(concat([a, b, a], 1)),
      ([a, b]) =>
        rampRef(concatRef([
          { data: a, shape },
          { data: b, shape: [3, 2, 5] },
          { data: a, shape },
        ], 1)),
      [{ shape, values: x }, { shape: [3, 2, 5], values: y }],
    );
  });
});

Deno.test("copies of strided integer and f16 views are exact", async () => {
  // Integers above 2^24 would lose their low bits if a copy went through f32.
  const ints = [16777217, -16777219, 2147483647, -2147483648, 5, 7];
  const x = tensor(Int32Array.from(ints), [2, 3]);
  const r = reshape(transpose(x), [6]);
  assert.equal(r.dtype, "i32");
  assert.deepEqual(Array.from(await r.read()), [
    16777217,
    -2147483648,
    -16777219,
    5,
    2147483647,
    7,
  ]);
  const u = tensor(Uint32Array.from([4294967295, 16777217, 3, 4]), [2, 2]);
  assert.deepEqual(Array.from(await reshape(transpose(u), [-1]).read()), [
    4294967295,
    3,
    16777217,
    4,
  ]);
  // An f16 view starting at an odd element is not 4-byte aligned for a buffer copy.
  const h = tensor([1, 2, 3, 4, 5, 6, 7], [7], { dtype: "f16" });
  await expectTensor(slice(h, 0, 1, 4), [2, 3, 4], { atol: 0 });
  await expectTensor(slice(h, 0, 3), [4, 5, 6, 7], { atol: 0 });
  await expectTensor(slice(h, 0, 1, 6, 2), [2, 4, 6], { atol: 0 });
  const h2 = reshape(transpose(tensor([1, 2, 3, 4, 5, 6], [2, 3], { dtype: "f16" })), [6]);
  assert.equal(h2.dtype, "f16");
  await expectTensor(h2, [1, 4, 2, 5, 3, 6], { atol: 0 });
});
