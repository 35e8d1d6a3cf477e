import assert from "node:assert/strict";
import {
  backward,
  cast,
  crossEntropy,
  type CrossEntropyOptions,
  mseLoss,
  type Reduction,
  scopeAsync,
  setRowThreads,
  tensor,
  transpose,
} from "../../ops/mod.ts";
import {
  assertClose,
  AWKWARD_SIZES,
  checkGradients,
  randomArray,
  rng,
  ROW_THREADS,
  ROW_WIDTHS,
  setup,
  withRowThreads,
} from "../helpers.ts";

await setup();

/** PyTorch's cross_entropy over row-major [rows, c] logits, in float64. */
function crossEntropyRef(
  x: ArrayLike<number>,
  targets: ArrayLike<number>,
  c: number,
  { ignoreIndex = -100, reduction = "mean", labelSmoothing = 0 }: CrossEntropyOptions = {},
): Float64Array {
  const rows = targets.length;
  const losses = new Float64Array(rows);
  let total = 0, count = 0;
  for (let r = 0; r < rows; r++) {
    const t = targets[r];
    if (t === ignoreIndex) continue;
    let m = -Infinity;
    for (let j = 0; j < c; j++) m = Math.max(m, x[r * c + j]);
    let s = 0, sx = 0;
    for (let j = 0; j < c; j++) {
      s += Math.exp(x[r * c + j] - m);
      sx += x[r * c + j];
    }
    const lse = m + Math.log(s);
    losses[r] = (1 - labelSmoothing) * (lse - x[r * c + t]) + labelSmoothing * (lse - sx / c);
    total += losses[r];
    count++;
  }
  if (reduction === "none") return losses;
  if (reduction === "sum") return Float64Array.of(total);
  return Float64Array.of(count ? total / count : 0);
}

/** Random targets in [0, c), with about a quarter of the rows set to `ignore`. */
function randomTargets(rows: number, c: number, seed: number, ignore = -100): Int32Array {
  const r = rng(seed);
  return Int32Array.from({ length: rows }, () => r() < 0.25 ? ignore : Math.floor(r() * c));
}

Deno.test("crossEntropy matches the reference on awkward rows × classes", async () => {
  for (const threads of ROW_THREADS) {
    let seed = 300;
    await withRowThreads(threads, async () => {
      for (const rows of AWKWARD_SIZES) {
        for (const c of ROW_WIDTHS) {
          const xs = Float32Array.from(randomArray(rows * c, seed++, -5, 5));
          const ts = randomTargets(rows, c, seed++);
          const x = tensor(xs, [rows, c]);
          const t = tensor(ts);
          for (const reduction of ["mean", "sum", "none"] as const) {
            for (const labelSmoothing of [0, 0.1]) {
              const options = { reduction, labelSmoothing };
              const loss = crossEntropy(x, t, options);
              assert.deepEqual(loss.shape, reduction === "none" ? [rows] : []);
              assertClose(
                await loss.read(),
                crossEntropyRef(xs, ts, c, options),
                {
                  atol: 2e-5,
                  rtol: 2e-5,
                },
                `crossEntropy [${rows}, ${c}] ${reduction} ε=${labelSmoothing} threads ${threads}`,
              );
              loss.dispose();
            }
          }
          x.dispose();
          t.dispose();
        }
      }
    });
  }
});

Deno.test("crossEntropy stays finite for logits of magnitude 1000", async () => {
  const [rows, c] = [33, 130];
  const xs = Float32Array.from(randomArray(rows * c, 41, -1000, 1000));
  const ts = Int32Array.from({ length: rows }, (_, i) => (i * 37) % c);
  // Row 0's target holds the largest logit, row 1's the smallest: losses 0 and ~2000.
  xs[ts[0]] = 1000;
  xs[c + ts[1]] = -1000;
  for (const threads of ROW_THREADS) {
    for (const labelSmoothing of [0, 0.1]) {
      const options = { reduction: "none" as const, labelSmoothing };
      setRowThreads(threads);
      const loss = await crossEntropy(tensor(xs, [rows, c]), tensor(ts), options).read();
      setRowThreads(null);
      assert.ok(loss.every(Number.isFinite), "losses are finite");
      assertClose(loss, crossEntropyRef(xs, ts, c, options), { atol: 1e-3, rtol: 1e-5 });
    }
  }
});

Deno.test("crossEntropy takes [B, T, C] logits with [B, T] targets", async () => {
  const [b, t, c] = [2, 7, 33];
  const xs = Float32Array.from(randomArray(b * t * c, 42, -3, 3));
  const ts = randomTargets(b * t, c, 43);
  const logits = tensor(xs, [b, t, c]);
  const targets = tensor(ts, [b, t]);
  const none = crossEntropy(logits, targets, { reduction: "none" });
  assert.deepEqual(none.shape, [b, t]);
  assertClose(await none.read(), crossEntropyRef(xs, ts, c, { reduction: "none" }));
  const mean = await crossEntropy(logits, targets).item();
  assertClose([mean], crossEntropyRef(xs, ts, c));
  // Strided logits ([C, N] stored, read as [N, C]) go through a copy.
  const stored = new Float32Array(xs.length);
  for (let i = 0; i < b * t; i++) for (let j = 0; j < c; j++) stored[j * b * t + i] = xs[i * c + j];
  const strided = transpose(tensor(stored, [c, b * t]));
  const viaView = await crossEntropy(strided, tensor(ts), { reduction: "sum" }).item();
  assertClose([viaView], crossEntropyRef(xs, ts, c, { reduction: "sum" }), { rtol: 2e-5 });
});

Deno.test("crossEntropy: ignoreIndex, an all-ignored batch, and custom ignore values", async () => {
  const c = 7;
  const xs = Float32Array.from(randomArray(5 * c, 44, -3, 3));
  // A custom ignoreIndex that is a valid class: rows with target 2 are skipped.
  const ts = Int32Array.of(2, 0, 2, 6, 1);
  const opts = { ignoreIndex: 2 };
  const custom = await crossEntropy(tensor(xs, [5, c]), tensor(ts), opts).item();
  assertClose([custom], crossEntropyRef(xs, ts, c, opts));
  // Every row ignored: mean is 0 by our documented choice (PyTorch gives NaN), and so is the
  // gradient.
  await scopeAsync(async () => {
    const x = tensor(xs, [5, c], { requiresGrad: true });
    const loss = crossEntropy(x, tensor(new Int32Array(5).fill(-100)), { labelSmoothing: 0.1 });
    assert.equal(await loss.item(), 0);
    backward(loss);
    assert.ok((await x.grad!.read()).every((v) => v === 0), "gradient is zero");
    x.dispose();
  });
});

Deno.test("crossEntropy rejects bad targets and options", async () => {
  const x = tensor(new Float32Array(3 * 4), [3, 4]);
  assert.throws(
    () => crossEntropy(x, tensor(Int32Array.of(0, 4, 1))),
    /target 4 at row 1 is outside \[0, 4\)/,
  );
  assert.throws(() => crossEntropy(x, tensor(Int32Array.of(0, -1, 1))), /target -1 at row 1/);
  assert.throws(() => crossEntropy(x, tensor([0, 1, 2])), /targets .* must be i32/);
  assert.throws(() => crossEntropy(x, tensor(Int32Array.of(0, 1))), /do not match/);
  assert.throws(
    () => crossEntropy(x, tensor(Int32Array.of(0, 1, 2)), { labelSmoothing: 1.5 }),
    /labelSmoothing must be in \[0, 1\]/,
  );
  assert.throws(
    () => crossEntropy(x, tensor(Int32Array.of(0, 1, 2)), { reduction: "avg" as Reduction }),
    /reduction must be/,
  );
  // Targets computed on the GPU carry no host copy: an out-of-range one shows up as NaN.
  const gpuTargets = cast(tensor([0, 9, 1]), "i32");
  assert.equal(gpuTargets.hostData, undefined);
  const rows = await crossEntropy(x, gpuTargets, { reduction: "none" }).read();
  assert.ok(Number.isNaN(rows[1]) && Number.isFinite(rows[0]) && Number.isFinite(rows[2]));
  assert.ok(Number.isNaN(await crossEntropy(x, gpuTargets).item()));
});

Deno.test("crossEntropy backward matches finite differences", async () => {
  const cases: [number, number][] = [[7, 33], [33, 7], [1, 1000], [5, 1]];
  let seed = 500;
  for (const [rows, c] of cases) {
    for (const reduction of ["mean", "sum", "none"] as const) {
      for (const labelSmoothing of [0, 0.2]) {
        const ts = randomTargets(rows, c, seed++);
        if (rows > 1) ts[0] = -100; // at least one ignored row
        const options = { reduction, labelSmoothing };
        await checkGradients(
          ([x]) => crossEntropy(x, tensor(ts), options),
          ([x]) => crossEntropyRef(x, ts, c, options),
          [{ shape: [rows, c], values: randomArray(rows * c, seed++, -3, 3) }],
        );
      }
    }
  }
  // [B, T, C] with a [B, T] gradient that arrives strided.
  const ts = randomTargets(6, 5, 77);
  await checkGradients(
    ([x]) => transpose(crossEntropy(x, tensor(ts, [2, 3]), { reduction: "none" })),
    ([x]) => {
      const l = crossEntropyRef(x, ts, 5, { reduction: "none" });
      return Float64Array.from([0, 3, 1, 4, 2, 5], (i) => l[i]);
    },
    [{ shape: [2, 3, 5], values: randomArray(30, 78, -3, 3) }],
  );
});

/** (p − t)² reduced, in float64. */
function mseRef(p: ArrayLike<number>, t: ArrayLike<number>, reduction: Reduction): Float64Array {
  const sq = Float64Array.from(p, (v, i) => (v - t[i]) ** 2);
  if (reduction === "none") return sq;
  const total = sq.reduce((a, v) => a + v, 0);
  return Float64Array.of(reduction === "sum" ? total : total / sq.length);
}

Deno.test("mseLoss matches the reference and its gradients in both inputs", async () => {
  for (const n of AWKWARD_SIZES) {
    const ps = Float32Array.from(randomArray(n * 3, n, -2, 2));
    const ts = Float32Array.from(randomArray(n * 3, n + 1, -2, 2));
    for (const reduction of ["mean", "sum", "none"] as const) {
      const loss = mseLoss(tensor(ps, [n, 3]), tensor(ts, [n, 3]), reduction);
      assert.deepEqual(loss.shape, reduction === "none" ? [n, 3] : []);
      assertClose(await loss.read(), mseRef(ps, ts, reduction), { atol: 1e-6, rtol: 1e-5 });
      await checkGradients(
        ([p, t]) => mseLoss(p, t, reduction),
        ([p, t]) => mseRef(p, t, reduction),
        [
          { shape: [n, 3], values: randomArray(n * 3, 2 * n, -2, 2) },
          { shape: [n, 3], values: randomArray(n * 3, 2 * n + 1, -2, 2) },
        ],
      );
    }
  }
  assert.throws(() => mseLoss(tensor([1, 2]), tensor([1, 2, 3])), /same shape/);
});
