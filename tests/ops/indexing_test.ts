/**
 * Indexing against plain-TS references: embedding (f32 and f16 weights, ids of any shape, V = 1, 7,
 * 130 with repeated ids), indexSelect and scatterAdd along every dimension (strided inputs
 * included), their backward rules by finite differences, the bit-for-bit determinism of the
 * scatter-add, and the errors for bad ids; embeddingSum against the separate lookups added.
 */
import assert from "node:assert/strict";
import {
  addN,
  arange,
  backward,
  embedding,
  embeddingSum,
  f16ToF32,
  f32ToF16,
  groupPositions,
  indexSelect,
  loadHostIndices,
  mul,
  scatterAdd,
  scope,
  scopeAsync,
  sum,
  tensor,
  transpose,
} from "../../ops/mod.ts";
import { assertClose, checkGradients, randomArray, rng, setup } from "../helpers.ts";

await setup();

/** `n` ids in [0, v) where roughly every other id repeats an earlier one. */
function randomIds(n: number, v: number, seed: number): Int32Array {
  const r = rng(seed);
  const ids = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    ids[i] = i > 0 && r() < 0.5 ? ids[Math.floor(r() * i)] : Math.floor(r() * v);
  }
  return ids;
}

function numelOf(shape: readonly number[]): number {
  return shape.reduce((p, d) => p * d, 1);
}

/** out[o, j, k] = x[o, index[j], k] around `dim`. */
function gatherRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  dim: number,
  index: ArrayLike<number>,
): Float64Array {
  const outer = numelOf(shape.slice(0, dim));
  const size = shape[dim];
  const inner = numelOf(shape.slice(dim + 1));
  const out = new Float64Array(outer * index.length * inner);
  for (let o = 0; o < outer; o++) {
    for (let j = 0; j < index.length; j++) {
      for (let k = 0; k < inner; k++) {
        out[(o * index.length + j) * inner + k] = x[(o * size + index[j]) * inner + k];
      }
    }
  }
  return out;
}

/** out = zeros(shape); out[o, index[j], k] += src[o, j, k], summed in ascending j. */
function scatterRef(
  src: ArrayLike<number>,
  shape: readonly number[],
  dim: number,
  index: ArrayLike<number>,
  round: (v: number) => number = (v) => v,
): Float64Array {
  const outer = numelOf(shape.slice(0, dim));
  const size = shape[dim];
  const inner = numelOf(shape.slice(dim + 1));
  const out = new Float64Array(numelOf(shape));
  for (let o = 0; o < outer; o++) {
    for (let j = 0; j < index.length; j++) {
      for (let k = 0; k < inner; k++) {
        const at = (o * size + index[j]) * inner + k;
        out[at] = round(out[at] + src[(o * index.length + j) * inner + k]);
      }
    }
  }
  return out;
}

Deno.test("groupPositions is a stable CSR of positions by value", () => {
  const g = groupPositions(new Int32Array([2, 0, 2, 3, 0, 2]), 5);
  assert.deepEqual([...g.offsets], [0, 2, 2, 5, 6, 6]);
  assert.deepEqual([...g.positions], [1, 4, 0, 2, 5, 3]);
});

Deno.test("embedding gathers rows for V = 1, 7, 130 and ids of any shape", async () => {
  const cases: { v: number; d: number; idsShape: number[] }[] = [
    { v: 1, d: 7, idsShape: [5] },
    { v: 7, d: 1, idsShape: [3, 11] },
    { v: 7, d: 33, idsShape: [2, 3, 4] },
    { v: 130, d: 33, idsShape: [130] },
    { v: 130, d: 7, idsShape: [1] },
  ];
  for (const [c, { v, d, idsShape }] of cases.entries()) {
    await scopeAsync(async () => {
      const w = randomArray(v * d, 10 + c);
      const ids = randomIds(numelOf(idsShape), v, 20 + c);
      const y = embedding(tensor(Float32Array.from(w), [v, d]), tensor(ids, idsShape));
      assert.deepEqual(y.shape, [...idsShape, d]);
      assertClose(await y.read(), gatherRef(Float32Array.from(w), [v, d], 0, ids), {
        atol: 0,
        rtol: 0,
      }, `embedding V=${v} D=${d}`);
    });
  }
});

Deno.test("embedding widens f16 weights", async () => {
  await scopeAsync(async () => {
    const [v, d] = [7, 33];
    const w = randomArray(v * d, 3, -4, 4);
    const rounded = f16ToF32(f32ToF16(w));
    const ids = randomIds(40, v, 4);
    const y = embedding(tensor(w, [v, d], { dtype: "f16" }), tensor(ids, [40]));
    assert.equal(y.dtype, "f32");
    assertClose(await y.read(), gatherRef(rounded, [v, d], 0, ids), { atol: 0, rtol: 0 });
  });
});

Deno.test("embedding rejects ids outside the vocabulary, naming id, position and V", () => {
  scope(() => {
    const w = tensor(new Float32Array(7 * 3), [7, 3]);
    const ids = tensor(new Int32Array([0, 1, 2, 3, 4, 9]), [2, 3]);
    assert.throws(() => embedding(w, ids), /id 9 at position \[1, 2\].*V = 7/);
    const negative = tensor(new Int32Array([0, -1]), [2]);
    assert.throws(() => embedding(w, negative), /id -1 at position \[1\].*V = 7/);
    assert.throws(() => embedding(w, tensor([1, 2])), /ids .* must have dtype i32/);
  });
});

Deno.test("ids computed on the GPU need loadHostIndices first", async () => {
  await scopeAsync(async () => {
    const w = tensor(Float32Array.from(randomArray(5 * 2, 5)), [5, 2]);
    const ids = arange(4, 1, 1, { dtype: "i32" }); // [1, 2, 3, 4], no host copy
    assert.throws(() => embedding(w, ids), /no host copy.*loadHostIndices/);
    assert.deepEqual([...await loadHostIndices(ids)], [1, 2, 3, 4]);
    const y = embedding(w, ids);
    assertClose(await y.read(), (await w.read()).slice(2), { atol: 0, rtol: 0 });
  });
});

Deno.test("embedding backward matches finite differences (repeated ids)", async () => {
  for (const [v, d, n] of [[1, 7, 5], [7, 33, 40], [130, 7, 33]]) {
    const ids = randomIds(n, v, v + d);
    await checkGradients(
      ([w]) => embedding(w, tensor(ids, [n])),
      ([w]) => gatherRef(w, [v, d], 0, ids),
      [{ shape: [v, d], values: randomArray(v * d, v * d) }],
    );
  }
});

Deno.test("embedding backward is bit-for-bit deterministic and sums in position order", async () => {
  // 3000 rows land on 7 ids, so each sum has ~430 terms of mixed magnitude: any change in
  // summation order would change low bits.
  const [v, d, n] = [7, 33, 3000];
  const ids = randomIds(n, v, 99);
  const upstream = Float32Array.from(randomArray(n * d, 98, -100, 100));
  const run = () =>
    scopeAsync(async () => {
      const w = tensor(new Float32Array(v * d), [v, d], { requiresGrad: true });
      const y = embedding(w, tensor(ids, [n]));
      backward(sum(mul(y, tensor(upstream, [n, d]))));
      const g = (await w.grad!.read()) as Float32Array;
      w.dispose();
      return g;
    });
  const first = await run();
  const second = await run();
  assert.deepEqual(new Uint32Array(first.buffer), new Uint32Array(second.buffer));
  // The kernel adds in ascending position order in f32, as this host loop does.
  assertClose(first, scatterRef(upstream, [v, d], 0, ids, Math.fround), { atol: 0, rtol: 0 });
});

Deno.test("embeddingSum equals the lookups added in order, forward and backward, bit for bit", async () => {
  // Tables of V = 130, 1 and 7 (the middle one f16, the last a transposed view), D = 33, ids of
  // shape [3, 7]; the last table already holds a gradient (it is added into).
  const [d, idsShape] = [33, [3, 7]];
  const n = numelOf(idsShape);
  const vocab = [130, 1, 7];
  const upstream = tensor(Float32Array.from(randomArray(n * d, 201, -3, 3)), [...idsShape, d]);
  const ids = vocab.map((v, t) => tensor(randomIds(n, v, 210 + t), idsShape));
  const run = (fused: boolean) =>
    scopeAsync(async () => {
      const w0 = tensor(Float32Array.from(randomArray(130 * d, 220)), [130, d], {
        requiresGrad: true,
      });
      const w1 = tensor(f32ToF16(Float32Array.from(randomArray(d, 221))), [1, d], {
        dtype: "f16",
      });
      const w2Store = tensor(Float32Array.from(randomArray(d * 7, 222)), [d, 7]);
      const w2 = transpose(w2Store, 0, 1);
      w2.requiresGrad = true;
      w2.grad = tensor(Float32Array.from(randomArray(7 * d, 223)), [7, d]).keep();
      const weights = [w0, w1, w2];
      const y = fused
        ? embeddingSum(weights.map((weight, t) => ({ weight, ids: ids[t] })))
        : addN(weights.map((w, t) => embedding(w, ids[t])));
      assert.deepEqual(y.shape, [...idsShape, d]);
      backward(sum(mul(y, upstream)));
      const out = [await y.read(), await w0.grad!.read(), await w2.grad!.read()];
      for (const w of [w0, w2]) w.dispose();
      return out.map((a) => Array.from(new Uint32Array((a as Float32Array).buffer)));
    });
  const fused = await run(true), composed = await run(false);
  ["y", "dw0", "dw2"].forEach((what, i) => assert.deepEqual(fused[i], composed[i], what));
  scope(() => {
    const w = tensor(new Float32Array(7 * 4), [7, 4]);
    assert.throws(() => embeddingSum([]), /at least one table/);
    assert.throws(
      () => embeddingSum([{ weight: w, ids: tensor(new Int32Array([7]), [1]) }]),
      /embeddingSum: id 7 at position \[0\].*V = 7/,
    );
    assert.throws(
      () =>
        embeddingSum([{ weight: w, ids: ids[2] }, {
          weight: tensor(new Float32Array(7 * 5), [7, 5]),
          ids: ids[2],
        }]),
      /must have width D = 4/,
    );
    assert.throws(
      () =>
        embeddingSum([{ weight: w, ids: ids[2] }, {
          weight: w,
          ids: tensor(new Int32Array(n), [n]),
        }]),
      /must have the shape of/,
    );
  });
});

Deno.test("indexSelect along every dimension, repeated indices, strided x", async () => {
  const shape = [7, 5, 33];
  const x = randomArray(numelOf(shape), 31);
  for (let dim = 0; dim < 3; dim++) {
    for (const n of [1, 9]) {
      await scopeAsync(async () => {
        const index = randomIds(n, shape[dim], dim * 10 + n);
        const y = indexSelect(tensor(Float32Array.from(x), shape), dim, tensor(index));
        const expected = [...shape];
        expected[dim] = n;
        assert.deepEqual(y.shape, expected);
        assertClose(await y.read(), gatherRef(Float32Array.from(x), shape, dim, index), {
          atol: 0,
          rtol: 0,
        }, `indexSelect dim ${dim} n ${n}`);
      });
    }
  }
  await scopeAsync(async () => {
    // x [33, 5, 7] seen as its transpose [7, 5, 33]: the gather reads a strided view.
    const base = randomArray(33 * 5 * 7, 32);
    const xt = transpose(tensor(Float32Array.from(base), [33, 5, 7]), 0, 2);
    const dense = new Float64Array(7 * 5 * 33);
    for (let a = 0; a < 7; a++) {
      for (let b = 0; b < 5; b++) {
        for (let c = 0; c < 33; c++) {
          dense[(a * 5 + b) * 33 + c] = Math.fround(base[(c * 5 + b) * 7 + a]);
        }
      }
    }
    const index = new Int32Array([4, 0, 4, 2]);
    const y = indexSelect(xt, 1, tensor(index));
    assertClose(await y.read(), gatherRef(dense, [7, 5, 33], 1, index), { atol: 0, rtol: 0 });
  });
});

Deno.test("scatterAdd along every dimension with repeated indices", async () => {
  const shape = [7, 4, 33];
  for (let dim = 0; dim < 3; dim++) {
    for (const n of [1, 13]) {
      await scopeAsync(async () => {
        const index = randomIds(n, shape[dim], 40 + dim * 10 + n);
        const srcShape = [...shape];
        srcShape[dim] = n;
        const src = Float32Array.from(randomArray(numelOf(srcShape), 50 + dim));
        const y = scatterAdd(shape, dim, tensor(index), tensor(src, srcShape));
        assert.deepEqual(y.shape, shape);
        assertClose(await y.read(), scatterRef(src, shape, dim, index), {
          atol: 1e-6,
          rtol: 1e-6,
        }, `scatterAdd dim ${dim} n ${n}`);
      });
    }
  }
});

Deno.test("indexSelect and scatterAdd validate their arguments", () => {
  scope(() => {
    const x = tensor(new Float32Array(12), [3, 4]);
    assert.throws(
      () => indexSelect(x, 1, tensor(new Int32Array([1, 4]))),
      /index\[1\] = 4 is outside \[0, 4\) \(dimension 1/,
    );
    assert.throws(() => indexSelect(x, 2, tensor(new Int32Array([0]))), /dim 2 is out of range/);
    assert.throws(
      () => indexSelect(x, 0, tensor(new Int32Array([0, 1]), [1, 2])),
      /index .* must be 1-D/,
    );
    assert.throws(
      () => scatterAdd([3, 4], 0, tensor(new Int32Array([0, 1])), x),
      /src .* must have shape \[2, 4\]/,
    );
    assert.throws(
      () => scatterAdd([3, 4], 0, tensor(new Int32Array([0, 3, 1])), x),
      /index\[1\] = 3 is outside \[0, 3\)/,
    );
  });
});

Deno.test("indexSelect backward matches finite differences", async () => {
  const shape = [3, 7, 5];
  for (let dim = 0; dim < 3; dim++) {
    const index = randomIds(9, shape[dim], 60 + dim);
    await checkGradients(
      ([x]) => indexSelect(x, dim, tensor(index)),
      ([x]) => gatherRef(x, shape, dim, index),
      [{ shape, values: randomArray(numelOf(shape), 70 + dim) }],
    );
  }
});

Deno.test("scatterAdd backward matches finite differences", async () => {
  const shape = [3, 7, 5];
  for (let dim = 0; dim < 3; dim++) {
    const index = randomIds(9, shape[dim], 80 + dim);
    const srcShape = [...shape];
    srcShape[dim] = 9;
    await checkGradients(
      ([src]) => scatterAdd(shape, dim, tensor(index), src),
      ([src]) => scatterRef(src, shape, dim, index),
      [{ shape: srcShape, values: randomArray(numelOf(srcShape), 90 + dim) }],
    );
  }
});
