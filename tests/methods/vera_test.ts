/**
 * VeRA on a tiny random RoBERTa (layers of different shapes share one A and B) and on a standalone
 * layer: PEFT's defaults and initialisation, the forward against the host formula in float64 with
 * sliced projections, gradients of x, λ_b and λ_d against finite differences, which tensors train,
 * counts and memory categories, PEFT keys (`base_model.vera_A`, `vera_lambda_b`), save_projection
 * on and off, loadAdapter and merge.
 */
import { deepStrictEqual, equal, notDeepStrictEqual, ok } from "node:assert/strict";
import { assertClose, checkGradients, randomArray, setup } from "../helpers.ts";
import { noGrad, rt, scopeAsync, type Tensor, tensor } from "../../ops/mod.ts";
import { Linear, type Module } from "../../models/module.ts";
import { applyMethod, loadAdapter, VeraConfigSchema, VeraLinear } from "../../methods/mod.ts";
import { openSafetensors } from "../../models/safetensors.ts";
import {
  checkOneStepMemory,
  contextBuilder,
  evalLogits,
  layersOf,
  ROBERTA_HEAD,
  tinyRoberta,
  writeRandom,
} from "./support.ts";

await setup();

const { weights: W, model } = tinyRoberta();
const TARGETS = ["query", "intermediate.dense", "output.dense"];
const R = 8;
const ctx = contextBuilder({ targets: TARGETS });
const veraLayers = (m: Module) => layersOf(m, VeraLinear);

function perturb(m: Module): void {
  veraLayers(m).forEach(([, l], i) => {
    writeRandom(l.lambdaB, 100 + i, -1, 1);
    writeRandom(l.lambdaD, 200 + i, -1, 1);
  });
}

interface HostVera {
  x: ArrayLike<number>;
  w: ArrayLike<number>;
  bias: ArrayLike<number>;
  /** The full shared A [r, maxDin] and B [maxDout, r]. */
  a: ArrayLike<number>;
  b: ArrayLike<number>;
  lambdaB: ArrayLike<number>;
  lambdaD: ArrayLike<number>;
  rows: number;
  dIn: number;
  dOut: number;
  r: number;
  maxDin: number;
}

/** xWᵀ + b + λ_b ⊙ (B[:dOut]·(λ_d ⊙ A[:, :dIn]·x)) in float64. */
function hostVera(h: HostVera): Float64Array {
  const y = new Float64Array(h.rows * h.dOut);
  for (let row = 0; row < h.rows; row++) {
    const down = new Float64Array(h.r);
    for (let k = 0; k < h.r; k++) {
      for (let i = 0; i < h.dIn; i++) down[k] += h.x[row * h.dIn + i] * h.a[k * h.maxDin + i];
      down[k] *= h.lambdaD[k];
    }
    for (let o = 0; o < h.dOut; o++) {
      let v = h.bias[o], up = 0;
      for (let i = 0; i < h.dIn; i++) v += h.x[row * h.dIn + i] * h.w[o * h.dIn + i];
      for (let k = 0; k < h.r; k++) up += h.b[o * h.r + k] * down[k];
      y[row * h.dOut + o] = v + h.lambdaB[o] * up;
    }
  }
  return y;
}

Deno.test("VeRA defaults are PEFT's; one shared kaiming-uniform A, B; λ_d = 0.1, λ_b = 0; base outputs", async () => {
  deepStrictEqual(VeraConfigSchema.parse({}), {
    r: 256,
    dropout: 0,
    dInitial: 0.1,
    projectionPrngKey: 0,
    saveProjection: true,
  });
  const base = await evalLogits(model());
  const m = model();
  applyMethod("vera", m, { r: R }, ctx());
  deepStrictEqual(await evalLogits(m), base);
  const layers = veraLayers(m);
  equal(layers.length, 2 * 4);
  deepStrictEqual(layers.slice(0, 4).map(([n]) => n.replace("roberta.encoder.layer.0.", "")), [
    "attention.self.query",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
  ]);
  const [, first] = layers[0];
  ok(
    layers.every(([, l]) => l.veraA === first.veraA && l.veraB === first.veraB),
    "A and B are shared",
  );
  deepStrictEqual([first.veraA.shape, first.veraB.shape], [[R, 32], [32, R]]);
  equal(first.veraA.category, "weights");
  ok(!first.veraA.requiresGrad && !first.veraB.requiresGrad);
  for (
    const [t, bound] of [[first.veraA, Math.sqrt(6 / 32)], [first.veraB, Math.sqrt(6 / R)]] as const
  ) {
    const v = await t.read();
    ok(v.every((e) => Math.abs(e) <= bound), "within the kaiming-uniform bound");
    ok(Math.max(...v) > 0.8 * bound && Math.min(...v) < -0.8 * bound, "spread over the range");
  }
  for (const [, l] of layers) {
    ok((await l.lambdaD.read()).every((v) => Math.abs(v - 0.1) < 1e-7));
    ok((await l.lambdaB.read()).every((v) => v === 0));
  }
});

Deno.test("VeRA forward equals xWᵀ + b + λ_b ⊙ B_s(λ_d ⊙ A_s x) with A, B sliced per layer", async () => {
  const m = model();
  applyMethod("vera", m, { r: R }, ctx());
  perturb(m);
  const a = await veraLayers(m)[0][1].veraA.read(), b = await veraLayers(m)[0][1].veraB.read();
  // query: A sliced to 16 of 32 columns, B to 16 of 32 rows; output.dense: dIn 32 (all of A).
  for (const [name, layer] of [veraLayers(m)[0], veraLayers(m)[3]]) {
    const rows = 7, dIn = layer.inFeatures, dOut = layer.outFeatures;
    const x = Float32Array.from(randomArray(rows * dIn, 9));
    const got = await scopeAsync(() => noGrad(() => layer.forward(tensor(x, [rows, dIn]))).read());
    const want = hostVera({
      x,
      w: W.get(`${name}.weight`)!,
      bias: W.get(`${name}.bias`)!,
      a,
      b,
      lambdaB: await layer.lambdaB.read(),
      lambdaD: await layer.lambdaD.read(),
      rows,
      dIn,
      dOut,
      r: R,
      maxDin: 32,
    });
    assertClose(got, want, { atol: 1e-5, rtol: 1e-4 }, `${name} forward`);
  }
});

Deno.test("VeRA gradients of x, λ_b and λ_d match finite differences (A, B frozen and sliced)", async () => {
  const [rows, dIn, dOut, r, maxDin, maxDout] = [7, 5, 9, 3, 8, 11];
  const w = randomArray(dOut * dIn, 1), bias = randomArray(dOut, 2, -0.2, 0.2);
  const a = randomArray(r * maxDin, 3), bFull = randomArray(maxDout * r, 4);
  const base = new Linear(
    tensor(Float32Array.from(w), [dOut, dIn]),
    tensor(Float32Array.from(bias), [dOut]),
  );
  const veraA = tensor(Float32Array.from(a), [r, maxDin]),
    veraB = tensor(Float32Array.from(bFull), [maxDout, r]);
  await checkGradients(
    ([x, lb, ld]: Tensor[]) => new VeraLinear(base, veraA, veraB, lb, ld, 0).forward(x),
    ([x, lambdaB, lambdaD]) =>
      hostVera({ x, w, bias, a, b: bFull, lambdaB, lambdaD, rows, dIn, dOut, r, maxDin }),
    [
      { shape: [rows, dIn], values: randomArray(rows * dIn, 5) },
      { shape: [dOut], values: randomArray(dOut, 6) },
      { shape: [r], values: randomArray(r, 7) },
    ],
  );
  for (const t of [veraA, veraB]) t.dispose();
  base.dispose();
});

Deno.test("VeRA trains only λ_b, λ_d and the head: count Σ (r + dOut); A, B frozen weights; memory agrees", async () => {
  const m = model();
  const before = rt().pool.stats().live;
  const adapter = applyMethod(
    "vera",
    m,
    { r: R },
    ctx({ lrMultipliers: { "intermediate.dense": 3 } }),
  );
  const applied = rt().pool.stats().live;
  const groups = adapter.groups();
  const trainable = groups.flatMap((g) => g.names.map((n, i) => [n, g.params[i]] as const));
  const count = trainable.reduce((s, [, t]) => s + t.size, 0);
  equal(count, 2 * ((R + 16) + (R + 16) + (R + 32) + (R + 16)) + ROBERTA_HEAD);
  equal(applied.trainable - before.trainable, 4 * count);
  equal(
    applied.weights - before.weights,
    4 * (R * 32 + 32 * R) - 4 * ROBERTA_HEAD,
    "shared A, B are frozen weights",
  );
  ok(
    groups.some((g) =>
      g.lrMultiplier === 3 && g.names.every((n) => n.includes("intermediate.dense.vera_lambda_"))
    ),
  );
  perturb(m);
  await checkOneStepMemory(m, groups, applied);
  ok(!veraLayers(m)[0][1].veraA.grad && !veraLayers(m)[0][1].veraB.grad);
  m.dispose();
});

Deno.test("VeRA saves PEFT keys with the shared projections; loads them back; merge keeps outputs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const adapter = applyMethod("vera", m, { r: R, projectionPrngKey: 4 }, ctx());
    perturb(m);
    const before = await evalLogits(m);
    await adapter.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    equal(config.peft_type, "VERA");
    equal(config.r, R);
    equal(config.projection_prng_key, 4);
    equal(config.save_projection, true);
    equal(config.d_initial, 0.1);
    deepStrictEqual(config.target_modules, TARGETS);
    const reader = await openSafetensors(`${dir}/adapter_model.safetensors`);
    const shapes = Object.fromEntries(reader.names.map((n) => [n, reader.info(n).shape.join("x")]));
    reader.close();
    equal(shapes["base_model.vera_A"], `${R}x32`);
    equal(shapes["base_model.vera_B"], `32x${R}`);
    const p = "base_model.model.roberta.encoder.layer.1.intermediate.dense";
    equal(shapes[`${p}.vera_lambda_b`], "32");
    equal(shapes[`${p}.vera_lambda_d`], `${R}`);
    equal(Object.keys(shapes).length, 2 + 8 * 2 + 4);
    // Another key proves A and B come from the file.
    const fresh = model();
    const again = applyMethod("vera", fresh, { r: R, projectionPrngKey: 99 }, ctx());
    await again.load(dir);
    deepStrictEqual(await evalLogits(fresh), before);
    const viaRegistry = model();
    const loaded = await loadAdapter(viaRegistry, dir, {
      lrMultipliers: {},
      weightDecay: 0,
      taskType: "SEQ_CLS",
      baseModel: "tiny-roberta",
      seed: 0,
    });
    equal(loaded.method, "vera");
    deepStrictEqual(await evalLogits(viaRegistry), before);
    again.merge();
    equal(veraLayers(fresh).length, 0);
    assertClose(await evalLogits(fresh), before, { atol: 1e-5, rtol: 1e-4 }, "merged logits");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("VeRA without save_projection regenerates A, B from projection_prng_key", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const adapter = applyMethod(
      "vera",
      m,
      { r: R, projectionPrngKey: 4, saveProjection: false },
      ctx(),
    );
    perturb(m);
    const before = await evalLogits(m);
    await adapter.save(dir);
    const reader = await openSafetensors(`${dir}/adapter_model.safetensors`);
    ok(!reader.names.some((n) => n.includes("vera_A") || n.includes("vera_B")));
    reader.close();
    const same = model();
    await loadAdapter(same, dir, {
      lrMultipliers: {},
      weightDecay: 0,
      taskType: "SEQ_CLS",
      baseModel: "tiny-roberta",
      seed: 0,
    });
    deepStrictEqual(await evalLogits(same), before);
    const other = model();
    await applyMethod("vera", other, { r: R, projectionPrngKey: 5, saveProjection: false }, ctx())
      .load(dir);
    notDeepStrictEqual(await evalLogits(other), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
