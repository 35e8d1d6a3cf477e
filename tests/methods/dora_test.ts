/**
 * DoRA on a tiny random RoBERTa and on a standalone layer: m starts at ‖W‖ (so outputs start at the
 * base model's), the forward equals m ⊙ (W + sBA)/‖W + sBA‖ computed on the host in float64 (and
 * PEFT's dropout arrangement), gradients match finite differences with the norm held constant,
 * trainable tensors, counts and memory categories, PEFT files (`lora_magnitude_vector`,
 * use_dora), loadAdapter and merge.
 */
import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { assertClose, checkGradients, randomArray, setup } from "../helpers.ts";
import { noGrad, rt, scopeAsync, type Tensor, tensor } from "../../ops/mod.ts";
import { ForwardContext } from "../../models/context.ts";
import { Linear, type Module } from "../../models/module.ts";
import { applyMethod, DoraLinear, loadAdapter, LoraLinear } from "../../methods/mod.ts";
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
const ctx = contextBuilder();
const doraLayers = (m: Module) => layersOf(m, DoraLinear);

/** Random B and a magnitude off ‖W‖, so every part of the formula matters. */
function perturb(m: Module): void {
  doraLayers(m).forEach(([, l], i) => {
    writeRandom(l.loraB, 100 + i, -0.3, 0.3);
    writeRandom(l.magnitude, 200 + i, 0.5, 2);
  });
}

/** Row norms of W + s·B·A in float64, W [dOut, dIn], A [r, dIn], B [dOut, r]. */
function hostNorm(
  w: ArrayLike<number>,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  s: number,
  dOut: number,
  dIn: number,
  r: number,
): Float64Array {
  const n = new Float64Array(dOut);
  for (let o = 0; o < dOut; o++) {
    for (let i = 0; i < dIn; i++) {
      let v = w[o * dIn + i];
      for (let k = 0; k < r; k++) v += s * b[o * r + k] * a[k * dIn + i];
      n[o] += v * v;
    }
    n[o] = Math.sqrt(n[o]);
  }
  return n;
}

interface HostDora {
  x: ArrayLike<number>;
  /** The dropped-out input (x itself without dropout). */
  xd: ArrayLike<number>;
  w: ArrayLike<number>;
  bias: ArrayLike<number> | null;
  a: ArrayLike<number>;
  b: ArrayLike<number>;
  m: ArrayLike<number>;
  /** ‖W + sBA‖ per row, held fixed (DoRA's detached norm). */
  norm: ArrayLike<number>;
  s: number;
  rows: number;
  dIn: number;
  dOut: number;
  r: number;
}

/** PEFT's DoRA forward in float64: xWᵀ + b + (m/n − 1)⊙(x̃Wᵀ) + (m/n)⊙s·x̃AᵀBᵀ. */
function hostDora(h: HostDora): Float64Array {
  const y = new Float64Array(h.rows * h.dOut);
  for (let row = 0; row < h.rows; row++) {
    const xa = new Float64Array(h.r);
    for (let k = 0; k < h.r; k++) {
      for (let i = 0; i < h.dIn; i++) xa[k] += h.xd[row * h.dIn + i] * h.a[k * h.dIn + i];
    }
    for (let o = 0; o < h.dOut; o++) {
      let base = h.bias ? h.bias[o] : 0, baseD = 0, lora = 0;
      for (let i = 0; i < h.dIn; i++) {
        base += h.x[row * h.dIn + i] * h.w[o * h.dIn + i];
        baseD += h.xd[row * h.dIn + i] * h.w[o * h.dIn + i];
      }
      for (let k = 0; k < h.r; k++) lora += xa[k] * h.b[o * h.r + k];
      const scale = h.m[o] / h.norm[o];
      y[row * h.dOut + o] = base + (scale - 1) * baseD + scale * h.s * lora;
    }
  }
  return y;
}

Deno.test("DoRA starts with m = ‖W‖ per output row, B = 0, and the base model's outputs", async () => {
  const base = await evalLogits(model());
  const m = model();
  applyMethod("dora", m, { r: 4, alpha: 8 }, ctx());
  assertClose(await evalLogits(m), base, { atol: 1e-6, rtol: 1e-6 }, "initial logits");
  const layers = doraLayers(m);
  equal(layers.length, 4);
  for (const [name, layer] of layers) {
    const w = W.get(`${name}.weight`)!;
    const want = hostNorm(w, new Float64Array(4 * 16), new Float64Array(16 * 4), 0, 16, 16, 4);
    assertClose(
      await layer.magnitude.read(),
      want,
      { atol: 1e-6, rtol: 1e-5 },
      `${name} magnitude`,
    );
    ok((await layer.loraB.read()).every((v) => v === 0));
  }
});

Deno.test("DoRA forward equals m ⊙ (W + sBA)/‖W + sBA‖ in float64, with PEFT's arrangement under dropout", async () => {
  const m = model();
  applyMethod("dora", m, { r: 4, alpha: 8, dropout: 0.3 }, ctx());
  perturb(m);
  const [name, layer] = doraLayers(m)[3];
  const rows = 7;
  const x = Float32Array.from(randomArray(rows * 16, 9));
  const h: HostDora = {
    x,
    xd: x,
    w: W.get(`${name}.weight`)!,
    bias: W.get(`${name}.bias`)!,
    a: await layer.loraA.read(),
    b: await layer.loraB.read(),
    m: await layer.magnitude.read(),
    norm: new Float64Array(0),
    s: 2,
    rows,
    dIn: 16,
    dOut: 16,
    r: 4,
  };
  h.norm = hostNorm(h.w, h.a, h.b, h.s, 16, 16, 4);
  const evalOut = await scopeAsync(() => noGrad(() => layer.forward(tensor(x, [rows, 16]))).read());
  assertClose(evalOut, hostDora(h), { atol: 1e-5, rtol: 1e-4 }, "DoRA forward (eval)");
  // Training with dropout: the layer's first dropout call of a context draws the same mask as
  // the first dropout call of a twin context.
  const xd = await scopeAsync(() =>
    new ForwardContext(true, 11, 2).run(() =>
      ForwardContext.current().dropout(tensor(x, [rows, 16]), 0.3)
    ).read()
  );
  ok(xd.some((v) => v === 0) && xd.some((v, i) => v !== 0 && v !== x[i]), "dropout is active");
  const trainOut = await scopeAsync(() =>
    new ForwardContext(true, 11, 2).run(() => noGrad(() => layer.forward(tensor(x, [rows, 16]))))
      .read()
  );
  assertClose(
    trainOut,
    hostDora({ ...h, xd }),
    { atol: 1e-5, rtol: 1e-4 },
    "DoRA forward (dropout)",
  );
});

Deno.test("DoRA gradients of x, A, B and m match finite differences with the norm held constant", async () => {
  const [rows, dIn, dOut, r, s] = [7, 5, 9, 3, 1.5];
  const w = randomArray(dOut * dIn, 1), bias = randomArray(dOut, 2, -0.2, 0.2);
  const x0 = randomArray(rows * dIn, 3), a0 = randomArray(r * dIn, 4, -0.5, 0.5);
  const b0 = randomArray(dOut * r, 5, -0.5, 0.5), m0 = randomArray(dOut, 6, 0.5, 2);
  const norm = hostNorm(w, a0, b0, s, dOut, dIn, r); // detached: fixed at the evaluation point
  const weight = tensor(Float32Array.from(w), [dOut, dIn]),
    biasT = tensor(Float32Array.from(bias), [dOut]);
  const base = new Linear(weight, biasT);
  await checkGradients(
    ([x, a, b, mag]: Tensor[]) => new DoraLinear(base, a, b, s, 0, mag).forward(x),
    ([x, a, b, mag]) => hostDora({ x, xd: x, w, bias, a, b, m: mag, norm, s, rows, dIn, dOut, r }),
    [
      { shape: [rows, dIn], values: x0 },
      { shape: [r, dIn], values: a0 },
      { shape: [dOut, r], values: b0 },
      { shape: [dOut], values: m0 },
    ],
  );
  base.dispose();
});

Deno.test("DoRA trains A, B, m and the head: count Σ r·(dIn + dOut) + dOut; memory categories agree", async () => {
  const m = model();
  const before = rt().pool.stats().live;
  const adapter = applyMethod("dora", m, { r: 4 }, ctx({ lrMultipliers: { value: 2 } }));
  const applied = rt().pool.stats().live;
  const groups = adapter.groups();
  const trainable = groups.flatMap((g) => g.names.map((n, i) => [n, g.params[i]] as const));
  const count = trainable.reduce((s, [, t]) => s + t.size, 0);
  equal(count, 4 * (4 * (16 + 16) + 16) + ROBERTA_HEAD);
  equal(applied.trainable - before.trainable, 4 * count);
  ok(
    groups.some((g) =>
      g.lrMultiplier === 2 && g.names.some((n) => n.endsWith(".value.lora_magnitude_vector"))
    ),
  );
  perturb(m);
  await checkOneStepMemory(m, groups, applied);
  m.dispose();
});

Deno.test("DoRA saves PEFT's lora_magnitude_vector and use_dora; loadAdapter restores outputs; merge keeps them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const adapter = applyMethod("dora", m, { r: 4, alpha: 16 }, ctx());
    perturb(m);
    const before = await evalLogits(m);
    await adapter.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    equal(config.peft_type, "LORA");
    equal(config.use_dora, true);
    const reader = await openSafetensors(`${dir}/adapter_model.safetensors`);
    const shapes = Object.fromEntries(reader.names.map((n) => [n, reader.info(n).shape.join("x")]));
    reader.close();
    const p = "base_model.model.roberta.encoder.layer.1.attention.self.value";
    equal(shapes[`${p}.lora_magnitude_vector`], "16");
    equal(shapes[`${p}.lora_A.weight`], "4x16");
    equal(shapes[`${p}.lora_B.weight`], "16x4");
    equal(Object.keys(shapes).length, 4 * 3 + 4);
    const fresh = model();
    const loaded = await loadAdapter(fresh, dir, {
      lrMultipliers: {},
      weightDecay: 0,
      taskType: "SEQ_CLS",
      baseModel: "tiny-roberta",
      seed: 9,
    });
    equal(loaded.method, "dora");
    deepStrictEqual(await evalLogits(fresh), before);
    loaded.merge();
    ok(
      fresh.namedModules().every(([, mod]) => !(mod instanceof LoraLinear)),
      "plain Linear layers are back",
    );
    assertClose(await evalLogits(fresh), before, { atol: 1e-5, rtol: 1e-4 }, "merged logits");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
