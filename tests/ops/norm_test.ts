import assert from "node:assert/strict";
import {
  backward,
  cast,
  clearPackCache,
  dropout,
  gpu,
  layerNorm,
  linear,
  MATMUL,
  mul,
  reshape,
  rmsNorm,
  rt,
  scopeAsync,
  slice,
  sum,
  tensor,
  transpose,
  withVariant,
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

/** LayerNorm (centered) or RMSNorm over the last dim of a row-major [rows, d] array, float64. */
function normRef(
  x: ArrayLike<number>,
  d: number,
  w: ArrayLike<number>,
  b: ArrayLike<number> | null,
  eps: number,
  centered: boolean,
): Float64Array {
  const rows = x.length / d;
  const y = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let mean = 0;
    if (centered) {
      for (let j = 0; j < d; j++) mean += x[r * d + j];
      mean /= d;
    }
    let v = 0;
    for (let j = 0; j < d; j++) v += (x[r * d + j] - mean) ** 2;
    const rstd = 1 / Math.sqrt(v / d + eps);
    for (let j = 0; j < d; j++) {
      y[r * d + j] = (x[r * d + j] - mean) * rstd * w[j] + (b ? b[j] : 0);
    }
  }
  return y;
}

/** f32-rounded random values, so references see exactly what the GPU sees. */
function f32Array(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  return Float32Array.from(randomArray(n, seed, lo, hi));
}

Deno.test("layerNorm and rmsNorm match the reference on awkward rows × widths", async () => {
  for (const threads of ROW_THREADS) {
    let seed = 100;
    await withRowThreads(threads, async () => {
      for (const rows of AWKWARD_SIZES) {
        for (const d of ROW_WIDTHS) {
          const xs = f32Array(rows * d, seed++, -3, 5);
          const ws = f32Array(d, seed++, -2, 2);
          const bs = f32Array(d, seed++, -1, 1);
          const x = tensor(xs, [rows, d]);
          const w = tensor(ws);
          const b = tensor(bs);
          const ln = layerNorm(x, w, b);
          const rms = rmsNorm(x, w);
          const what = `[${rows}, ${d}] threads ${threads}`;
          assertClose(await ln.read(), normRef(xs, d, ws, bs, 1e-5, true), {
            atol: 2e-5,
            rtol: 1e-4,
          }, `layerNorm ${what}`);
          assertClose(await rms.read(), normRef(xs, d, ws, null, 1e-6, false), {
            atol: 2e-5,
            rtol: 1e-4,
          }, `rmsNorm ${what}`);
          for (const t of [x, w, b, ln, rms]) t.dispose();
        }
      }
    });
  }
});

Deno.test("layerNorm is accurate when |mean| ≫ σ (BERT eps 1e-12)", async () => {
  // Rows around 1000 with σ ≈ 0.006: E[x²] − E[x]² in f32 would lose every digit of the variance.
  const d = 768;
  const xs = Float32Array.from(randomArray(7 * d, 5, -0.01, 0.01), (v) => 1000 + v);
  const ws = f32Array(d, 6, 0.5, 1.5);
  const bs = f32Array(d, 7);
  for (const threads of ROW_THREADS) {
    await withRowThreads(threads, async () => {
      const y = await layerNorm(tensor(xs, [7, d]), tensor(ws), tensor(bs), 1e-12).read();
      // A mean held in f32 near 1000 is off by up to half an ulp (3e-5, 0.5% of σ); the kernel
      // centres on the row's first element, so it stays at ordinary f32 accuracy.
      assertClose(y, normRef(xs, d, ws, bs, 1e-12, true), { atol: 1e-4, rtol: 1e-4 });
    });
  }
});

Deno.test("layerNorm over [B, T, D] with frozen f16 weights, no bias, and strided input", async () => {
  const xs = f32Array(2 * 7 * 33, 8, -2, 2);
  const ws = f32Array(33, 9, -2, 2);
  const bs = f32Array(33, 10);
  const wh = cast(tensor(ws), "f16");
  const bh = cast(tensor(bs), "f16");
  const wRounded = await wh.read();
  const bRounded = await bh.read();
  const y = layerNorm(tensor(xs, [2, 7, 33]), wh, bh);
  assert.deepEqual(y.shape, [2, 7, 33]);
  assertClose(await y.read(), normRef(xs, 33, wRounded, bRounded, 1e-5, true), {
    atol: 2e-5,
    rtol: 1e-4,
  }, "f16 weight and bias");
  const noBias = layerNorm(tensor(xs, [14, 33]), tensor(ws), null);
  assertClose(await noBias.read(), normRef(xs, 33, ws, null, 1e-5, true), {
    atol: 2e-5,
    rtol: 1e-4,
  }, "no bias");
  // A transposed view: rows of the normalised tensor are columns of the stored one.
  const base = f32Array(33 * 7, 11, -2, 2);
  const xt = transpose(tensor(base, [33, 7]));
  const rows = new Float32Array(7 * 33);
  for (let i = 0; i < 33; i++) for (let j = 0; j < 7; j++) rows[j * 33 + i] = base[i * 7 + j];
  assertClose(await rmsNorm(xt, tensor(ws)).read(), normRef(rows, 33, ws, null, 1e-6, false), {
    atol: 2e-5,
    rtol: 1e-4,
  }, "rmsNorm of a transposed view");
});

Deno.test("layerNorm and rmsNorm reject mismatched parameters", () => {
  const x = tensor(new Float32Array(12), [3, 4]);
  assert.throws(() => layerNorm(x, tensor(new Float32Array(3)), null), /weight .* shape \[4\]/);
  assert.throws(
    () => layerNorm(x, tensor(new Float32Array(4)), tensor(new Float32Array(5))),
    /bias .* shape \[4\]/,
  );
  assert.throws(() => rmsNorm(tensor([1, 2], { dtype: "i32" }), tensor([1, 1])), /f32 or f16/);
});

Deno.test("layerNorm backward matches finite differences for x, weight and bias", async () => {
  const cases = [[7, 33, null], [130, 7, null], [3, 130, null], [5, 1, null], [3, 130, 256]];
  for (const [rows, d, threads] of cases as [number, number, number | null][]) {
    const eps = 1e-5;
    await withRowThreads(threads, () =>
      checkGradients(
        ([x, w, b]) => layerNorm(x, w, b, eps),
        ([x, w, b]) => normRef(x, d, w, b, eps, true),
        [
          { shape: [rows, d], values: randomArray(rows * d, rows + d, -2, 2) },
          { shape: [d], values: randomArray(d, 2 * d + 1, 0.5, 1.5) },
          { shape: [d], values: randomArray(d, 3 * d + 2) },
        ],
      ));
  }
});

Deno.test("rmsNorm backward matches finite differences for x and weight", async () => {
  const cases = [[7, 33, null], [130, 7, null], [3, 130, null], [3, 130, 256]];
  for (const [rows, d, threads] of cases as [number, number, number | null][]) {
    await withRowThreads(threads, () =>
      checkGradients(
        ([x, w]) => rmsNorm(x, w),
        ([x, w]) => normRef(x, d, w, null, 1e-6, false),
        [
          { shape: [rows, d], values: randomArray(rows * d, 5 * rows + d, -2, 2) },
          { shape: [d], values: randomArray(d, 7 * d, 0.5, 1.5) },
        ],
      ));
  }
});

Deno.test("norm backward with frozen parameters gives gradients only where asked", async () => {
  const [rows, d] = [33, 7];
  const xs = randomArray(rows * d, 60, -2, 2);
  const ws = randomArray(d, 61, 0.5, 1.5);
  const bs = randomArray(d, 62);
  // Frozen weight and bias: only x.
  await checkGradients(
    ([x, w, b]) => layerNorm(x, w, b),
    ([x, w, b]) => normRef(x, d, w, b, 1e-5, true),
    [
      { shape: [rows, d], values: xs },
      { shape: [d], values: ws, grad: false },
      { shape: [d], values: bs, grad: false },
    ],
  );
  // Frozen input and weight: only the bias.
  await checkGradients(
    ([x, w, b]) => layerNorm(x, w, b),
    ([x, w, b]) => normRef(x, d, w, b, 1e-5, true),
    [
      { shape: [rows, d], values: xs, grad: false },
      { shape: [d], values: ws, grad: false },
      { shape: [d], values: bs },
    ],
  );
  // Frozen input and bias: only the weight.
  await checkGradients(
    ([x, w, b]) => layerNorm(x, w, b),
    ([x, w, b]) => normRef(x, d, w, b, 1e-5, true),
    [
      { shape: [rows, d], values: xs, grad: false },
      { shape: [d], values: ws },
      { shape: [d], values: bs, grad: false },
    ],
  );
  await scopeAsync(async () => {
    const x = tensor(Float32Array.from(xs), [rows, d], { requiresGrad: true });
    const w = tensor(Float32Array.from(ws));
    const b = tensor(Float32Array.from(bs));
    backward(sum(layerNorm(x, w, b)));
    assert.ok(x.grad, "x gets a gradient");
    assert.ok((await x.grad.read()).every(Number.isFinite));
    assert.equal(w.grad, null, "a frozen weight gets no gradient buffer");
    assert.equal(b.grad, null, "a frozen bias gets no gradient buffer");
  });
});

Deno.test("weight and bias gradients are deterministic across runs", async () => {
  const [rows, d] = [130, 33];
  const xs = f32Array(rows * d, 70, -3, 3);
  const gs = f32Array(rows * d, 71, -1, 1);
  const run = () =>
    scopeAsync(async () => {
      const x = tensor(xs, [rows, d], { requiresGrad: true });
      const w = tensor(f32Array(d, 72), [d], { requiresGrad: true });
      const b = tensor(f32Array(d, 73), [d], { requiresGrad: true });
      backward(sum(mul(layerNorm(x, w, b), tensor(gs, [rows, d]))));
      const out = [await w.grad!.read(), await b.grad!.read(), await x.grad!.read()];
      for (const t of [x, w, b]) t.dispose();
      return out;
    });
  const first = await run();
  const second = await run();
  first.forEach((a, i) => assert.deepEqual(a, second[i], `gradient ${i} differs between runs`));
});

Deno.test("weight and bias gradients summed over many chunks match the host, both layouts", async () => {
  // rows > 4096 (software: one row per thread, 4096-row chunks) and rows > 64 with 32 threads per
  // row (tree layout, 64-row chunks): both take the two-stage column sums.
  for (const [rows, d, threads] of [[4100, 5, null], [300, 37, 32]] as const) {
    await withRowThreads(threads, async () => {
      const xs = f32Array(rows * d, rows, -3, 3);
      const gs = f32Array(rows * d, rows + 1, -1, 1);
      const ws = f32Array(d, 5, 0.5, 1.5);
      await scopeAsync(async () => {
        const x = tensor(xs, [rows, d]);
        const w = tensor(ws, [d], { requiresGrad: true });
        const b = tensor(f32Array(d, 6), [d], { requiresGrad: true });
        backward(sum(mul(layerNorm(x, w, b), tensor(gs, [rows, d]))));
        const dw = new Float64Array(d), db = new Float64Array(d);
        for (let r = 0; r < rows; r++) {
          let mean = 0, v = 0;
          for (let j = 0; j < d; j++) mean += xs[r * d + j] / d;
          for (let j = 0; j < d; j++) v += (xs[r * d + j] - mean) ** 2 / d;
          const rstd = 1 / Math.sqrt(v + 1e-5);
          for (let j = 0; j < d; j++) {
            dw[j] += gs[r * d + j] * (xs[r * d + j] - mean) * rstd;
            db[j] += gs[r * d + j];
          }
        }
        assertClose(await w.grad!.read(), dw, { atol: 2e-3, rtol: 1e-4 });
        assertClose(await b.grad!.read(), db, { atol: 2e-3, rtol: 1e-4 });
        for (const t of [w, b]) t.dispose();
      });
    });
  }
});

Deno.test("packOut: the norm writes its output's pack for the next product, bits unchanged", async () => {
  // Widths 10 and 33 leave a ragged last texel (zero-filled); 37 rows are no tile multiple. Each
  // variant of the product and each row layout of the norm (the pack is written by the
  // row-per-thread kernel only) must give the unhinted bits, forward and backward.
  for (const [rows, d, dOut] of [[37, 10, 7], [24, 33, 20], [5, 128, 64]]) {
    for (const variant of MATMUL.variantNames()) {
      for (const threads of [null, 32]) {
        await withRowThreads(threads, () =>
          withVariant("matmul", variant, async () => {
            const run = (packOut: boolean, centered: boolean) =>
              scopeAsync(async () => {
                clearPackCache();
                let seed = rows + d;
                const mk = (shape: number[]) =>
                  tensor(
                    Float32Array.from(randomArray(shape.reduce((p, n) => p * n), seed++)),
                    shape,
                    {
                      requiresGrad: true,
                    },
                  );
                const [x, w, b, lw] = [mk([rows, d]), mk([d]), mk([d]), mk([dOut, d])];
                const y = centered
                  ? layerNorm(x, w, b, 1e-5, { packOut })
                  : rmsNorm(x, w, 1e-6, { packOut });
                const d0 = rt().dispatchCount;
                const z = linear(y, lw);
                const productDispatches = rt().dispatchCount - d0;
                backward(
                  sum(mul(z, tensor(Float32Array.from(randomArray(rows * dOut, 7)), [rows, dOut]))),
                );
                const out = [await y.read(), await z.read()];
                for (const t of [x, w, b, lw]) if (t.grad) out.push(await t.grad.read());
                return {
                  bits: out.map((a) => Array.from(new Uint32Array((a as Float32Array).buffer))),
                  productDispatches,
                };
              });
            for (const centered of [true, false]) {
              const plain = await run(false, centered), hinted = await run(true, centered);
              const what = `${variant} rows ${threads} ${rows}×${d} ${
                centered ? "layerNorm" : "rmsNorm"
              }`;
              plain.bits.forEach((b, i) =>
                assert.deepEqual(hinted.bits[i], b, `${what}: output ${i}`)
              );
              // On the texture variant with one row per thread, the product finds y's pack.
              const fused = variant === "texture" && threads === null && gpu().adapter.isFallback;
              assert.equal(
                hinted.productDispatches,
                plain.productDispatches - (fused ? 1 : 0),
                what,
              );
            }
          }));
      }
    }
  }
});

Deno.test("norm dropout: dropout inside the kernel equals the norm then dropout, bit for bit", async () => {
  for (const [rows, d] of [[37, 10], [6, 33], [130, 7]]) {
    for (const threads of [null, 32]) {
      await withRowThreads(threads, async () => {
        for (const centered of [true, false]) {
          for (const p of [0.3, 0, 1]) {
            const run = (fused: boolean) =>
              scopeAsync(async () => {
                let seed = 3 * rows + d;
                const mk = (shape: number[]) =>
                  tensor(
                    Float32Array.from(randomArray(shape.reduce((a, n) => a * n), seed++)),
                    shape,
                    { requiresGrad: true },
                  );
                const [x, w, b] = [mk([rows, d]), mk([d]), mk([d])];
                const drop = { p, seed: 17, stream: 5 };
                const norm = (options = {}) =>
                  centered ? layerNorm(x, w, b, 1e-5, options) : rmsNorm(x, w, 1e-6, options);
                const d0 = rt().dispatchCount;
                const y = fused ? norm({ dropout: drop, packOut: true }) : dropout(norm(), p, drop);
                const forwardDispatches = rt().dispatchCount - d0;
                const upstream = Float32Array.from(randomArray(rows * d, 11));
                backward(sum(mul(y, tensor(upstream, [rows, d]))));
                const out = [await y.read()];
                for (const t of [x, w, b]) if (t.grad) out.push(await t.grad.read());
                const bits = out.map((a) =>
                  Array.from(new Uint32Array((a as Float32Array).buffer))
                );
                return { bits, forwardDispatches };
              });
            const fused = await run(true), composed = await run(false);
            const what = `${rows}×${d} rows ${threads} ${
              centered ? "layerNorm" : "rmsNorm"
            } p ${p}`;
            assert.equal(fused.bits.length, composed.bits.length, what);
            composed.bits.forEach((c, i) => assert.deepEqual(fused.bits[i], c, `${what}: ${i}`));
            // 0 < p < 1: the mask is applied in the norm's own dispatch.
            const saved = p > 0 && p < 1 ? 1 : 0;
            assert.equal(fused.forwardDispatches, composed.forwardDispatches - saved, what);
          }
        }
      });
    }
  }
  await scopeAsync(() => {
    const x = tensor([[1, 2, 3]]), w = tensor([1, 1, 1]);
    assert.throws(
      () => layerNorm(x, w, null, 1e-5, { dropout: { p: 1.5, seed: 0, stream: 0 } }),
      /layerNorm: dropout p must be in \[0, 1\], got 1.5/,
    );
    return Promise.resolve();
  });
});

Deno.test("norm: rows read as vec4s (d and offset in fours) give the scalar kernels' bits, forward and dx", async () => {
  for (const d of [4, 32, 128]) {
    await scopeAsync(async () => {
      const rows = 37;
      const values = Float32Array.from(randomArray(rows * d, 171 + d, -3, 5));
      const w = tensor(Float32Array.from(randomArray(d, 172)), [d]);
      const b = tensor(Float32Array.from(randomArray(d, 173)), [d]);
      const weights = tensor(Float32Array.from(randomArray(rows * d, 174)), [rows, d]);
      const drop = { p: 0.25, seed: 5, stream: 2 };
      const bitsOf = async (t: { read(): Promise<ArrayLike<number>> }) =>
        Array.from(new Uint32Array(((await t.read()) as Float32Array).buffer));
      type Norm = (x: ReturnType<typeof tensor>) => ReturnType<typeof tensor>;
      const cases: [string, Norm][] = [
        ["layerNorm", (x) => layerNorm(x, w, b, 1e-5)],
        ["layerNorm + dropout", (x) => layerNorm(x, w, b, 1e-5, { dropout: drop })],
        ["layerNorm packOut", (x) => layerNorm(x, w, b, 1e-5, { packOut: true })],
        ["rmsNorm", (x) => rmsNorm(x, w, 1e-6)],
      ];
      for (const [name, f] of cases) {
        // The same values at offset 1 of a leaf (read element by element) and at offset 0 (as
        // vec4s); dx of the former is the leaf's gradient past its first element.
        const padded = new Float32Array(rows * d + 1);
        padded.set(values, 1);
        const leaf = tensor(padded, [rows * d + 1], { requiresGrad: true });
        const even = tensor(values, [rows, d], { requiresGrad: true });
        // Each graph right before its backward (backward consumes the whole tape).
        const yEven = f(even);
        const bitsEven = await bitsOf(yEven);
        backward(sum(mul(yEven, weights)));
        const odd = reshape(slice(leaf, 0, 1, rows * d + 1), [rows, d]);
        const yOdd = f(odd);
        assert.deepEqual(bitsEven, await bitsOf(yOdd), `${name}, d ${d}: y`);
        backward(sum(mul(yOdd, weights)));
        const dOdd = (await bitsOf(leaf.grad!)).slice(1);
        assert.deepEqual(await bitsOf(even.grad!), dOdd, `${name}, d ${d}: dx`);
      }
    });
  }
});
