/**
 * Reductions against plain-TS float64 references: every axis, all axes, several axes, keepDims,
 * strided inputs, argmax/argmin tie-breaking, variance with Bessel's correction, sumTo, and the
 * backward rules by finite differences (plus the tie rule of max/min, which has no derivative), and
 * the NaN/±Inf count against a host count (f32 and f16, offsets, many workgroups).
 */
import assert from "node:assert/strict";
import {
  allFinite,
  argmax,
  argmin,
  countNonFinite,
  f16ToF32,
  f32ToF16,
  max,
  mean,
  min,
  reduceRaw,
  sum,
  sumTo,
  type Tensor,
  tensor,
  transpose,
  variance,
} from "../../ops/mod.ts";
import { backward } from "../../ops/mod.ts";
import { assertClose, checkGradients, expectTensor, randomArray, setup } from "../helpers.ts";

await setup();

type HostOp = "sum" | "mean" | "max" | "min" | "argmax" | "argmin" | "var0" | "var1";

function contiguousStrides(shape: readonly number[]): number[] {
  const s: number[] = [];
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/**
 * Host reduction of contiguous `data` of `shape` over `axes`: groups elements by their kept
 * coordinates, then folds each group in index order (so arg-ops see the first extremum first).
 */
function reduceRef(
  data: ArrayLike<number>,
  shape: readonly number[],
  axes: readonly number[],
  op: HostOp,
): { values: Float64Array; shape: number[] } {
  const kept = shape.map((_, i) => i).filter((i) => !axes.includes(i));
  const outShape = kept.map((i) => shape[i]);
  const outStrides = contiguousStrides(outShape);
  const groups: number[][] = Array.from(
    { length: outShape.reduce((p, d) => p * d, 1) },
    () => [],
  );
  const cs = contiguousStrides(shape);
  for (let i = 0; i < data.length; i++) {
    let o = 0;
    kept.forEach((axis, k) => (o += (Math.floor(i / cs[axis]) % shape[axis]) * outStrides[k]));
    groups[o].push(data[i]);
  }
  const values = Float64Array.from(groups, (g) => {
    const total = g.reduce((p, v) => p + v, 0);
    const avg = total / g.length;
    const ss = g.reduce((p, v) => p + (v - avg) ** 2, 0);
    switch (op) {
      case "sum":
        return total;
      case "mean":
        return avg;
      case "max":
        return Math.max(...g);
      case "min":
        return Math.min(...g);
      case "argmax":
        return g.indexOf(Math.max(...g));
      case "argmin":
        return g.indexOf(Math.min(...g));
      case "var0":
        return ss / g.length;
      case "var1":
        return ss / (g.length - 1);
    }
  });
  return { values, shape: outShape };
}

function keepDimsShape(shape: readonly number[], axes: readonly number[]): number[] {
  return shape.map((d, i) => (axes.includes(i) ? 1 : d));
}

const SHAPE = [7, 33, 5];
const AXES: number[][] = [[0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2]];
const TOL = { atol: 1e-5, rtol: 1e-5 };

const gpuReduce: Record<"sum" | "mean" | "max" | "min", typeof sum> = { sum, mean, max, min };

Deno.test("sum, mean, max, min over every axis set, with and without keepDims", async (t) => {
  const data = randomArray(7 * 33 * 5, 1, -2, 2).map(Math.fround);
  const x = tensor(Float32Array.from(data), SHAPE);
  for (const op of ["sum", "mean", "max", "min"] as const) {
    await t.step(op, async () => {
      for (const axes of AXES) {
        const ref = reduceRef(data, SHAPE, axes, op);
        const y = gpuReduce[op](x, axes);
        await expectTensor(y, ref.values, TOL, ref.shape);
        const yk = gpuReduce[op](x, axes, true);
        await expectTensor(yk, ref.values, TOL, keepDimsShape(SHAPE, axes));
        y.dispose();
        yk.dispose();
      }
      // No axes given means all of them; negative axes count from the end.
      const all = gpuReduce[op](x);
      assert.deepEqual(all.shape, []);
      await expectTensor(all, reduceRef(data, SHAPE, [0, 1, 2], op).values, TOL);
      const neg = gpuReduce[op](x, [-1, -3]);
      await expectTensor(neg, reduceRef(data, SHAPE, [0, 2], op).values, TOL, [33]);
      all.dispose();
      neg.dispose();
    });
  }
  x.dispose();
});

Deno.test("reductions read a transposed view in place", async () => {
  const data = randomArray(33 * 7, 2, -2, 2).map(Math.fround);
  const base = tensor(Float32Array.from(data), [33, 7]);
  const xt = transpose(base); // [7, 33]
  const host = Float64Array.from(
    { length: 7 * 33 },
    (_, i) => data[(i % 33) * 7 + Math.floor(i / 33)],
  );
  for (const axes of [[0], [1], [0, 1]]) {
    for (const op of ["sum", "max"] as const) {
      const ref = reduceRef(host, [7, 33], axes, op);
      await expectTensor(gpuReduce[op](xt, axes), ref.values, TOL, ref.shape);
    }
    const ref = reduceRef(host, [7, 33], axes, "argmin");
    if (axes.length === 1) {
      const am = argmin(xt, axes[0]);
      assert.deepEqual(Array.from(await am.read()), Array.from(ref.values));
    }
  }
});

Deno.test("long reductions (more elements than the 64 threads) on awkward sizes", async () => {
  for (const n of [1, 7, 33, 64, 65, 130, 1000, 4099]) {
    const data = randomArray(n, n, -1, 1).map(Math.fround);
    const x = tensor(Float32Array.from(data), [n]);
    await expectTensor(sum(x), [data.reduce((p, v) => p + v, 0)], { atol: 1e-4, rtol: 1e-5 });
    await expectTensor(max(x), [Math.max(...data)], { atol: 0 });
    const am = argmax(x, 0);
    assert.equal(await am.item(), data.indexOf(Math.max(...data)), `argmax of ${n}`);
    x.dispose();
  }
});

Deno.test("argmax and argmin pick the first index on ties", async () => {
  // Every row holds its extreme value several times, at positions the 64-thread tree visits in
  // different partial sums (index 1, 64 and 129 live in different threads' strides).
  const rows = 5, n = 130;
  const data = new Float32Array(rows * n);
  const firsts = [1, 0, 64, 129, 3];
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < n; i++) data[r * n + i] = ((i * 7 + r) % 11) / 11 - 0.5;
    for (const at of [firsts[r], 64, 65, 129]) if (at >= firsts[r]) data[r * n + at] = 2;
  }
  const x = tensor(data, [rows, n]);
  assert.deepEqual(Array.from(await argmax(x, 1).read()), firsts);
  const neg = tensor(data.map((v) => -v), [rows, n]);
  assert.deepEqual(Array.from(await argmin(neg, -1).read()), firsts);
  // An all-equal row ties everywhere: index 0.
  const flat = tensor(new Float32Array(3 * 70).fill(1.5), [3, 70]);
  assert.deepEqual(Array.from(await argmax(flat, 1).read()), [0, 0, 0]);
  assert.deepEqual(Array.from(await argmin(flat, 0).read()), new Array(70).fill(0));
  const k = argmax(x, 1, true);
  assert.equal(k.dtype, "i32");
  assert.deepEqual(k.shape, [rows, 1]);
  // Against the host reference on random data along the first axis.
  const data2 = randomArray(33 * 7, 9, -1, 1).map(Math.fround);
  const y = tensor(Float32Array.from(data2), [33, 7]);
  assert.deepEqual(
    Array.from(await argmax(y, 0).read()),
    Array.from(reduceRef(data2, [33, 7], [0], "argmax").values),
  );
  assert.deepEqual(
    Array.from(await argmin(y, 0).read()),
    Array.from(reduceRef(data2, [33, 7], [0], "argmin").values),
  );
});

Deno.test("variance with correction 0 and 1", async () => {
  const data = randomArray(7 * 33 * 5, 3, -2, 2).map(Math.fround);
  const x = tensor(Float32Array.from(data), SHAPE);
  for (const axes of AXES) {
    for (const correction of [0, 1]) {
      const ref = reduceRef(data, SHAPE, axes, correction ? "var1" : "var0");
      const y = variance(x, axes, false, correction);
      await expectTensor(y, ref.values, TOL, ref.shape);
      const yk = variance(x, axes, true, correction);
      assert.deepEqual(yk.shape, keepDimsShape(SHAPE, axes));
      y.dispose();
      yk.dispose();
    }
  }
});

Deno.test("sumTo reverses broadcasting", async () => {
  const data = randomArray(3 * 7 * 5, 4, -1, 1).map(Math.fround);
  const x = tensor(Float32Array.from(data), [3, 7, 5]);
  const cases: [number[], number[]][] = [
    [[5], [0, 1]],
    [[7, 1], [0, 2]],
    [[1, 7, 5], [0]],
    [[3, 1, 5], [1]],
    [[3, 7, 5], []],
    [[], [0, 1, 2]],
  ];
  for (const [shape, axes] of cases) {
    const y = sumTo(x, shape);
    await expectTensor(y, reduceRef(data, [3, 7, 5], axes, "sum").values, TOL, shape);
  }
});

Deno.test("reduction gradients match finite differences", async (t) => {
  const values = randomArray(7 * 5 * 3, 5, -2, 2); // distinct values: max/min have no ties
  const shape = [7, 5, 3];
  for (const op of ["sum", "mean", "max", "min", "var0", "var1"] as const) {
    await t.step(op, async () => {
      for (const axes of [[0], [1], [0, 2], [0, 1, 2]]) {
        for (const keepDims of [false, true]) {
          const gpu = (xs: Tensor[]): Tensor =>
            op === "var0" || op === "var1"
              ? variance(xs[0], axes, keepDims, op === "var1" ? 1 : 0)
              : gpuReduce[op](xs[0], axes, keepDims);
          await checkGradients(
            gpu,
            ([x]) => reduceRef(x, shape, axes, op).values,
            [{ shape, values }],
          );
        }
      }
    });
  }
});

Deno.test("max/min share the gradient equally between tied elements", async () => {
  const x = tensor([[1, 3, 3, 0], [2, -1, 2, 2]], { requiresGrad: true });
  backward(sum(max(x, 1)));
  await expectTensor(x.grad!, [0, 0.5, 0.5, 0, 1 / 3, 0, 1 / 3, 1 / 3], { atol: 1e-6 });
  const y = tensor([[1, -1, -1, 0]], { requiresGrad: true });
  backward(sum(min(y)));
  await expectTensor(y.grad!, [0, 0.5, 0.5, 0], { atol: 1e-6 });
  x.dispose();
  y.dispose();
});

Deno.test("reductions over no axes copy, and bad axes are rejected", async () => {
  const data = [1, -2, 3.5, 4];
  const x = tensor(data, [2, 2]);
  await expectTensor(reduceRaw(x, "sum", [], false), data, { atol: 0 }, [2, 2]);
  assert.throws(() => sum(x, 2), /axis 2 out of range for rank 2/);
  assert.throws(() => argmax(x, -3), /axis -3 out of range/);
  const m = mean(tensor(new Float32Array(0), [0, 3]), 1);
  assert.deepEqual(m.shape, [0]);
  assertClose(await sum(tensor(new Float32Array(0), [0])).read(), [0], { atol: 0 }, "empty sum");
});

/** Host reference of countNonFinite: the values as the tensor stores them (f16 rounds first). */
function nonFiniteRef(values: Float32Array, dtype: "f32" | "f16"): number {
  const stored = dtype === "f16" ? f16ToF32(f32ToF16(values)) : values;
  return stored.reduce((c, v) => c + (Number.isFinite(v) ? 0 : 1), 0);
}

/** n values in [-2, 2) with NaN, ±Inf and f16-overflowing values sprinkled at seeded positions. */
function withSpecials(n: number, seed: number, specials: number): Float32Array {
  const v = Float32Array.from(randomArray(n, seed, -2, 2));
  const at = randomArray(specials, seed + 1, 0, n);
  const kinds = [NaN, Infinity, -Infinity, 7e4, -1e30, 3.4e38];
  at.forEach((p, i) => (v[Math.floor(p)] = kinds[i % kinds.length]));
  return v;
}

Deno.test("countNonFinite counts NaN and ±Inf exactly, as a host count does (f32 and f16)", async () => {
  // Sizes around the 256-thread workgroup and past the 1024-workgroup cap (grid-stride loop).
  for (const n of [1, 255, 256, 257, 5000, 300_001]) {
    for (const dtype of ["f32", "f16"] as const) {
      const values = withSpecials(n, n, Math.min(n, 37));
      const t = tensor(values, [n], { dtype });
      const [count] = await countNonFinite([t]);
      assert.equal(count, nonFiniteRef(values, dtype), `${dtype} n=${n}`);
      t.dispose();
    }
  }
});

Deno.test("countNonFinite: one slot per tensor, views at odd offsets, subnormals and -0 are finite", async () => {
  const clean = Float32Array.from([0, -0, 1e-45, 6e-8, -65504, 65504, 3.4e38]);
  const bad = Float32Array.from([1, NaN, 2, Infinity, -Infinity, 4, 5]);
  const a = tensor(clean, [7]);
  const b = tensor(bad, [7]);
  const h = tensor(bad, [7], { dtype: "f16" });
  // f16 views starting at odd and even element offsets (different halves of a 32-bit word).
  const odd = h.view([2], [1], 1); // [NaN, 2]
  const even = h.view([3], [1], 4); // [-Inf, 4, 5]
  const tail = h.view([1], [1], 6); // [5]
  const f32View = b.view([3], [1], 2); // [2, Inf, -Inf]
  assert.deepEqual(await countNonFinite([a, b, h, odd, even, tail, f32View]), [
    0,
    3,
    3,
    1,
    1,
    0,
    2,
  ]);
  assert.equal(await allFinite([a, tail]), true);
  assert.equal(await allFinite([a, odd]), false);
  // 3.4e38 is finite in f32 but overflows f16.
  const big = tensor(clean, [7], { dtype: "f16" });
  assert.deepEqual(await countNonFinite([big]), [1]);
  assert.deepEqual(await countNonFinite([]), []);
  assert.deepEqual(await countNonFinite([tensor(new Float32Array(0), [0])]), [0]);
  await assert.rejects(countNonFinite([tensor([1, 2], { dtype: "i32" })]), /not a float tensor/);
  await assert.rejects(
    countNonFinite([b.view([2, 2], [1, 2], 0)]),
    /not contiguous/,
  );
  for (const t of [a, b, h, big]) t.dispose();
});
