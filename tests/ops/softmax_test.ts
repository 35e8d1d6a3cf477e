import assert from "node:assert/strict";
import {
  cast,
  logSoftmax,
  permute,
  setRowThreads,
  softmax,
  tensor,
  transpose,
} from "../../ops/mod.ts";
import {
  assertClose,
  AWKWARD_SIZES,
  checkGradients,
  randomArray,
  ROW_THREADS,
  ROW_WIDTHS,
  setup,
  withRowThreads,
} from "../helpers.ts";

await setup();

/** Softmax (or log-softmax) of a row-major array along `axis`, in float64. */
function softmaxRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  axis: number,
  log: boolean,
): Float64Array {
  const a = axis < 0 ? axis + shape.length : axis;
  const n = shape[a];
  const inner = shape.slice(a + 1).reduce((p, d) => p * d, 1);
  const outer = shape.slice(0, a).reduce((p, d) => p * d, 1);
  const y = new Float64Array(x.length);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const at = (j: number) => (o * n + j) * inner + i;
      let m = -Infinity;
      for (let j = 0; j < n; j++) m = Math.max(m, x[at(j)]);
      let s = 0;
      for (let j = 0; j < n; j++) s += Math.exp(x[at(j)] - m);
      for (let j = 0; j < n; j++) {
        y[at(j)] = log ? x[at(j)] - m - Math.log(s) : Math.exp(x[at(j)] - m) / s;
      }
    }
  }
  return y;
}

/** Row-major transpose of a [r, c] array. */
function transposeRef(x: ArrayLike<number>, r: number, c: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) y[j * r + i] = x[i * c + j];
  return y;
}

Deno.test("softmax and logSoftmax match the reference on awkward rows × widths", async () => {
  let seed = 1;
  for (const threads of ROW_THREADS) {
    await withRowThreads(threads, async () => {
      for (const rows of AWKWARD_SIZES) {
        for (const width of ROW_WIDTHS) {
          const values = randomArray(rows * width, seed++, -4, 4);
          const x = tensor(Float32Array.from(values), [rows, width]);
          const p = softmax(x);
          const lp = logSoftmax(x);
          const what = `[${rows}, ${width}] threads ${threads}`;
          assert.deepEqual(p.shape, [rows, width]);
          assertClose(await p.read(), softmaxRef(values, [rows, width], -1, false), {
            atol: 1e-6,
            rtol: 1e-5,
          }, `softmax ${what}`);
          assertClose(await lp.read(), softmaxRef(values, [rows, width], -1, true), {
            atol: 2e-5,
            rtol: 1e-5,
          }, `logSoftmax ${what}`);
          for (const t of [x, p, lp]) t.dispose();
        }
      }
    });
  }
});

Deno.test("softmax stays finite and exact for logits of magnitude 1000", async () => {
  for (const [width, threads] of [[2, null], [33, 32], [1000, null], [1000, 256]] as const) {
    // The reference reads the same f32-rounded logits the GPU sees (rounding at 1000 is 3e-5).
    const values = Float32Array.from(randomArray(7 * width, 40 + width, -1000, 1000));
    // Force ties at the maximum and a row whose spread is huge.
    values[0] = 1000;
    values[1] = 1000;
    values[width] = -1000;
    const x = tensor(values, [7, width]);
    setRowThreads(threads); // kernels are chosen when recorded, so reset before any assertion
    const [pt, lpt] = [softmax(x), logSoftmax(x)];
    setRowThreads(null);
    const p = await pt.read();
    const lp = await lpt.read();
    assert.ok(p.every(Number.isFinite), `softmax of ±1000 logits (width ${width}) is finite`);
    assert.ok(lp.every(Number.isFinite), `logSoftmax of ±1000 logits (width ${width}) is finite`);
    assertClose(p, softmaxRef(values, [7, width], -1, false), { atol: 1e-6, rtol: 1e-5 });
    // log-probabilities reach −2000, where one f32 ulp is 1.2e-4.
    assertClose(lp, softmaxRef(values, [7, width], -1, true), { atol: 1e-3, rtol: 1e-6 });
    x.dispose();
  }
});

Deno.test("softmax gives −∞ (masked) logits zero probability", async () => {
  const values = Float32Array.from([0, -Infinity, 1, -Infinity, -Infinity, 2, 3, 4]);
  const x = tensor(values, [2, 4]);
  const p = await softmax(x).read();
  const e = softmaxRef(values, [2, 4], -1, false);
  assertClose(p, e, { atol: 1e-7, rtol: 1e-6 });
  assert.equal(p[1], 0);
  assert.equal(p[4], 0);
});

Deno.test("softmax along a non-last axis and of strided views", async () => {
  const shape = [5, 33, 7];
  const values = randomArray(5 * 33 * 7, 9, -3, 3);
  const x = tensor(Float32Array.from(values), shape);
  for (const axis of [0, 1, 2, -2]) {
    for (const log of [false, true]) {
      const y = log ? logSoftmax(x, axis) : softmax(x, axis);
      assert.deepEqual(y.shape, shape);
      assertClose(await y.read(), softmaxRef(values, shape, axis, log), {
        atol: 1e-5,
        rtol: 1e-5,
      }, `${log ? "logSoftmax" : "softmax"} axis ${axis}`);
    }
  }
  // A transposed view [7, 130] of a [130, 7] tensor, along its last (strided) axis.
  const base = randomArray(130 * 7, 10, -3, 3);
  const xt = transpose(tensor(Float32Array.from(base), [130, 7]));
  assert.equal(xt.isContiguous, false);
  const y = softmax(xt);
  assertClose(await y.read(), softmaxRef(transposeRef(base, 130, 7), [7, 130], -1, false), {
    atol: 1e-6,
    rtol: 1e-5,
  }, "softmax of a transposed view");
  // A permuted 3-D view whose kept dims cannot be coalesced.
  const xp = permute(x, [2, 0, 1]);
  const yp = await logSoftmax(xp, 1).read();
  const permuted = new Float64Array(values.length);
  for (let i = 0; i < 5; i++) {
    for (let j = 0; j < 33; j++) {
      for (let k = 0; k < 7; k++) permuted[(k * 5 + i) * 33 + j] = values[(i * 33 + j) * 7 + k];
    }
  }
  assertClose(yp, softmaxRef(permuted, [7, 5, 33], 1, true), { atol: 1e-5, rtol: 1e-5 });
});

Deno.test("softmax widens f16 inputs", async () => {
  const values = randomArray(33 * 130, 11, -8, 8);
  const xh = cast(tensor(Float32Array.from(values), [33, 130]), "f16");
  const rounded = await xh.read(); // the f16 values, widened
  assertClose(await softmax(xh).read(), softmaxRef(rounded, [33, 130], -1, false), {
    atol: 1e-6,
    rtol: 1e-5,
  });
});

Deno.test("softmax rejects a bad axis and an integer input", () => {
  const x = tensor([1, 2, 3]);
  assert.throws(() => softmax(x, 1), /axis 1 out of range/);
  assert.throws(() => softmax(tensor([1, 2], { dtype: "i32" })), /must be f32 or f16/);
  assert.throws(() => setRowThreads(48), /not a power of two/);
});

Deno.test("softmax backward matches finite differences", async () => {
  for (const log of [false, true]) {
    for (const threads of [32, 256]) {
      await withRowThreads(threads, () =>
        checkGradients(
          ([x]) => (log ? logSoftmax : softmax)(x),
          ([x]) => softmaxRef(x, [7, 130], -1, log),
          [{ shape: [7, 130], values: randomArray(7 * 130, 20, -3, 3) }],
        ));
    }
    const op = log ? logSoftmax : softmax;
    const ref = (x: Float64Array, shape: number[], axis: number) => softmaxRef(x, shape, axis, log);
    await checkGradients(
      ([x]) => op(x),
      ([x]) => ref(x, [7, 33], -1),
      [{ shape: [7, 33], values: randomArray(7 * 33, 21, -3, 3) }],
    );
    await checkGradients(
      ([x]) => op(x, 1),
      ([x]) => ref(x, [4, 5, 3], 1),
      [{ shape: [4, 5, 3], values: randomArray(60, 22, -3, 3) }],
    );
    // The output gradient arrives as a transposed (strided) view.
    await checkGradients(
      ([x]) => transpose(op(x, 0)),
      ([x]) => transposeRef(ref(x, [6, 130], 0), 6, 130),
      [{ shape: [6, 130], values: randomArray(6 * 130, 23, -3, 3) }],
    );
    // Widths of 1 (gradient exactly 0 for softmax) and 1000.
    await checkGradients(
      ([x]) => op(x),
      ([x]) => ref(x, [3, 1], -1),
      [{ shape: [3, 1], values: randomArray(3, 24, -3, 3) }],
    );
    await checkGradients(
      ([x]) => op(x),
      ([x]) => ref(x, [1, 1000], -1),
      [{ shape: [1, 1000], values: randomArray(1000, 25, -3, 3) }],
    );
  }
});
