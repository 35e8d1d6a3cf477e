/**
 * PiSSA on a tiny random RoBERTa: A₀, B₀ are W's top-r singular triplets scaled by √(S/s) (checked
 * against a float64 host SVD, square, tall and wide weights), the residual keeps the model equal to
 * the base, the randomized variant, the forward formula, and the shared residual-LoRA checks.
 */
import { equal, ok, throws } from "node:assert/strict";
import { assertClose, setup } from "../helpers.ts";
import { noGrad, scopeAsync, tensor } from "../../ops/mod.ts";
import { applyMethod } from "../../methods/mod.ts";
import type { Linear } from "../../models/module.ts";
import { randomArray } from "../helpers.ts";
import {
  checkResidual,
  ctx,
  hostMatmul,
  hostSvd,
  loraLayers,
  model,
  readLayer,
  sharedResidualTests,
  W,
} from "./residual_support.ts";

await setup();

/** value [16, 16], intermediate.dense [32, 16] (tall), output.dense and attention.output.dense. */
const TARGETS = ["value", "intermediate.dense", "output.dense"];

/** Check every layer's start against the host SVD; `tol` bounds the rank-r product's error. */
async function checkTriplets(init: string, tol: number): Promise<void> {
  const r = 4, alpha = 8, s = alpha / r;
  const m = model();
  applyMethod("pissa", m, { r, alpha, init }, ctx({ targets: TARGETS }));
  const layers = loraLayers(m);
  equal(layers.length, 8);
  ok(
    layers.some(([, l]) => l.inFeatures > l.outFeatures) &&
      layers.some(([, l]) => l.inFeatures < l.outFeatures),
  );
  for (const [name, l] of layers) {
    const [dOut, dIn] = (l.base as Linear).weight.shape;
    const { a, b } = await readLayer(l);
    const svd = hostSvd(W.get(`${name}.weight`)!, dOut, dIn);
    const k = Math.min(dOut, dIn);
    // s·B·A = U_r·S_r·V_rᵀ.
    const want = new Float64Array(dOut * dIn);
    for (let i = 0; i < dOut; i++) {
      for (let j = 0; j < dIn; j++) {
        for (let c = 0; c < r; c++) {
          want[i * dIn + j] += svd.u[i * k + c] * svd.s[c] * svd.v[j * k + c];
        }
      }
    }
    const ba = hostMatmul(b, a, dOut, r, dIn).map((x) => s * x);
    assertClose(ba, want, { atol: tol, rtol: tol }, `${name}: s·B·A vs U_r·S_r·V_rᵀ`);
    for (let c = 0; c < r; c++) {
      // Column c of B is √(S_c/s)·u_c and row c of A is √(S_c/s)·v_c, with one common sign.
      const root = Math.sqrt(svd.s[c] / s);
      let bu = 0, av = 0, bb = 0, aa = 0;
      for (let i = 0; i < dOut; i++) {
        bu += b[i * r + c] * svd.u[i * k + c];
        bb += b[i * r + c] ** 2;
      }
      for (let j = 0; j < dIn; j++) {
        av += a[c * dIn + j] * svd.v[j * k + c];
        aa += a[c * dIn + j] ** 2;
      }
      assertClose(
        [Math.abs(bu), Math.abs(av), Math.sqrt(bb), Math.sqrt(aa)],
        [root, root, root, root],
        { atol: tol, rtol: tol },
        `${name}: triplet ${c}`,
      );
      ok(Math.sign(bu) === Math.sign(av), `${name}: triplet ${c} has one sign`);
    }
  }
  await checkResidual(m, s);
}

Deno.test("PiSSA: A = √(S_r/s)·V_rᵀ and B = U_r·√(S_r/s) from the exact SVD (square, tall and wide W)", async () => {
  await checkTriplets("pissa", 2e-5);
});

Deno.test("PiSSA pissa_niter_4: the randomized SVD finds the same top-r triplets; the residual is exact", async () => {
  await checkTriplets("pissa_niter_4", 5e-4);
});

Deno.test("PiSSA forward = x·W_resᵀ + b + s·x·Aᵀ·Bᵀ = x·Wᵀ + b at the start (float64 host)", async () => {
  const m = model();
  applyMethod("pissa", m, { r: 4, alpha: 16, rslora: true }, ctx());
  const [name, layer] = loraLayers(m)[0];
  const scale = 16 / Math.sqrt(4);
  equal(layer.scaling, scale);
  const x = Float32Array.from(randomArray(3 * 16, 9));
  const got = await scopeAsync(() => noGrad(() => layer.forward(tensor(x, [3, 16]))).read());
  const { a, b, wRes } = await readLayer(layer);
  const w = W.get(`${name}.weight`)!, bias = W.get(`${name}.bias`)!;
  const xa = hostMatmul(
    x,
    Array.from({ length: 16 * 4 }, (_, k) => a[(k % 4) * 16 + Math.floor(k / 4)]),
    3,
    16,
    4,
  );
  const formula = new Float64Array(3 * 16), plain = new Float64Array(3 * 16);
  for (let row = 0; row < 3; row++) {
    for (let o = 0; o < 16; o++) {
      let y = bias[o], y0 = bias[o];
      for (let i = 0; i < 16; i++) {
        y += x[row * 16 + i] * wRes[o * 16 + i];
        y0 += x[row * 16 + i] * w[o * 16 + i];
      }
      for (let k = 0; k < 4; k++) y += scale * xa[row * 4 + k] * b[o * 4 + k];
      formula[row * 16 + o] = y;
      plain[row * 16 + o] = y0;
    }
  }
  assertClose(got, formula, { atol: 1e-5, rtol: 1e-4 }, "forward formula");
  assertClose(got, plain, { atol: 2e-5, rtol: 1e-4 }, "forward equals the base Linear");
});

Deno.test("PiSSA options: init names, rank bound, saved init_lora_weights", async () => {
  throws(
    () => applyMethod("pissa", model(), { init: "pissa_fast" }, ctx()),
    /method pissa: invalid options — init: expected "pissa"/,
  );
  throws(
    () => applyMethod("pissa", model(), { r: 20 }, ctx()),
    /pissa: rank r = 20 needs 20 directions of .*query \[16, 16\], which has only 16/,
  );
  const dir = await Deno.makeTempDir();
  try {
    const adapter = applyMethod("pissa", model(), { r: 2, init: "pissa_niter_3" }, ctx());
    await adapter.save(dir);
    equal(
      JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`)).init_lora_weights,
      "pissa_niter_3",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

sharedResidualTests(
  { method: "pissa", options: { r: 4, alpha: 8 }, targets: ["query", "value"] },
  4,
  8,
);
