/**
 * (IA)³ on a tiny random RoBERTa and LLaMA and on standalone layers: PEFT's per-architecture
 * default targets and feed-forward modules, ones at the start (base outputs), output and input
 * scaling against host formulas in float64, gradients against finite differences, honoured
 * targets and the `feedforward` option, counts and memory categories, PEFT files (`ia3_l` shapes,
 * feedforward_modules), loadAdapter and merge.
 */
import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { assertClose, checkGradients, randomArray, setup } from "../helpers.ts";
import { noGrad, rt, scopeAsync, type Tensor, tensor } from "../../ops/mod.ts";
import { Linear, type Module } from "../../models/module.ts";
import { applyMethod, getMethod, ia3, Ia3Linear, loadAdapter } from "../../methods/mod.ts";
import { openSafetensors } from "../../models/safetensors.ts";
import {
  checkOneStepMemory,
  contextBuilder,
  evalLogits,
  layersOf,
  ROBERTA_HEAD,
  tinyLlama,
  tinyRoberta,
  writeRandom,
} from "./support.ts";

await setup();

const { weights: W, model } = tinyRoberta();
const probe = model();
const DEFAULT_TARGETS = ia3.defaultTargets!(probe);
probe.dispose();
const ctx = contextBuilder({ targets: DEFAULT_TARGETS });
const ia3Layers = (m: Module) => layersOf(m, Ia3Linear);

function perturb(m: Module): void {
  ia3Layers(m).forEach(([, l], i) => writeRandom(l.scale, 100 + i, 0.5, 1.5));
}

/** l ⊙ (xWᵀ + b), or (l ⊙ x)Wᵀ + b for feed-forward layers, in float64. */
function hostIa3(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  b: ArrayLike<number>,
  l: ArrayLike<number>,
  ff: boolean,
  rows: number,
  dIn: number,
  dOut: number,
): Float64Array {
  const y = new Float64Array(rows * dOut);
  for (let row = 0; row < rows; row++) {
    for (let o = 0; o < dOut; o++) {
      let v = b[o];
      for (let i = 0; i < dIn; i++) v += x[row * dIn + i] * (ff ? l[i] : 1) * w[o * dIn + i];
      y[row * dOut + o] = ff ? v : l[o] * v;
    }
  }
  return y;
}

Deno.test("IA3 defaults to PEFT's targets per architecture; output.dense modules scale their input", async () => {
  deepStrictEqual(ia3.config.parse({}), {});
  deepStrictEqual(getMethod("ia3").defaultTargets!(model()), ["key", "value", "output.dense"]);
  const base = await evalLogits(model());
  const m = model();
  applyMethod("ia3", m, {}, ctx());
  deepStrictEqual(await evalLogits(m), base);
  const layers = ia3Layers(m);
  deepStrictEqual(
    layers.slice(0, 4).map((
      [n, l],
    ) => [n.replace("roberta.encoder.layer.0.", ""), l.isFeedforward, l.scale.shape.join("x")]),
    [
      ["attention.self.key", false, "16x1"],
      ["attention.self.value", false, "16x1"],
      ["attention.output.dense", true, "1x16"],
      ["output.dense", true, "1x32"],
    ],
  );
  equal(layers.length, 8);
  for (const [, l] of layers) ok((await l.scale.read()).every((v) => v === 1));

  const llama = tinyLlama({ layers: 1, seed: 4 }).model();
  const targets = ia3.defaultTargets!(llama);
  deepStrictEqual(targets, ["k_proj", "v_proj", "down_proj"]);
  applyMethod("ia3", llama, {}, { ...ctx(), targets, headModules: ["score"] });
  deepStrictEqual(ia3Layers(llama).map(([n, l]) => [n, l.scale.shape.join("x")]), [
    ["model.layers.0.self_attn.k_proj", "4x1"],
    ["model.layers.0.self_attn.v_proj", "4x1"],
    ["model.layers.0.mlp.down_proj", "1x12"],
  ]);
  llama.dispose();
});

Deno.test("IA3 forward: l ⊙ (xWᵀ + b) on attention targets, (l ⊙ x)Wᵀ + b on feed-forward ones", async () => {
  const m = model();
  applyMethod("ia3", m, {}, ctx());
  perturb(m);
  for (const [name, layer] of [ia3Layers(m)[1], ia3Layers(m)[3]]) {
    const rows = 7, dIn = layer.inFeatures, dOut = layer.outFeatures;
    const x = Float32Array.from(randomArray(rows * dIn, 9));
    const got = await scopeAsync(() => noGrad(() => layer.forward(tensor(x, [rows, dIn]))).read());
    const want = hostIa3(
      x,
      W.get(`${name}.weight`)!,
      W.get(`${name}.bias`)!,
      await layer.scale.read(),
      layer.isFeedforward,
      rows,
      dIn,
      dOut,
    );
    assertClose(got, want, { atol: 1e-5, rtol: 1e-4 }, `${name} forward`);
  }
});

Deno.test("IA3 gradients of x and l match finite differences, for output and input scaling", async () => {
  const [rows, dIn, dOut] = [7, 5, 9];
  const w = randomArray(dOut * dIn, 1), b = randomArray(dOut, 2, -0.2, 0.2);
  const base = new Linear(
    tensor(Float32Array.from(w), [dOut, dIn]),
    tensor(Float32Array.from(b), [dOut]),
  );
  for (const ff of [false, true]) {
    const lShape = ff ? [1, dIn] : [dOut, 1];
    await checkGradients(
      ([x, l]: Tensor[]) => new Ia3Linear(base, l, ff).forward(x),
      ([x, l]) => hostIa3(x, w, b, l, ff, rows, dIn, dOut),
      [{ shape: [rows, dIn], values: randomArray(rows * dIn, 3) }, {
        shape: lShape,
        values: randomArray(lShape[0] * lShape[1], 4, 0.5, 1.5),
      }],
    );
  }
  base.dispose();
});

Deno.test("IA3 honours given targets and the feedforward option; a feed-forward name outside the targets is an error", () => {
  const m = model();
  applyMethod("ia3", m, {}, ctx({ targets: ["query", "value"] }));
  deepStrictEqual(ia3Layers(m).map(([n, l]) => [n.split(".").pop(), l.isFeedforward]), [
    ["query", false],
    ["value", false],
    ["query", false],
    ["value", false],
  ]);
  const m2 = model();
  applyMethod(
    "ia3",
    m2,
    { feedforward: ["intermediate.dense"] },
    ctx({ targets: ["intermediate.dense", "value"] }),
  );
  deepStrictEqual(
    ia3Layers(m2).slice(0, 2).map((
      [n, l],
    ) => [n.split(".").slice(-2).join("."), l.scale.shape.join("x")]),
    [
      ["self.value", "16x1"],
      ["intermediate.dense", "1x16"],
    ],
  );
  throws(
    () => applyMethod("ia3", model(), { feedforward: ["down_proj"] }, ctx()),
    /feedforward module\(s\) down_proj match no targeted module/,
  );
  throws(
    () => applyMethod("ia3", model(), {}, ctx({ targets: ["nope"] })),
    /IA3: no Linear module matches targets \[nope\]/,
  );
});

Deno.test("IA3 trains only l and the head: count Σ dOut (attention) + Σ dIn (feed-forward); memory agrees", async () => {
  const m = model();
  const before = rt().pool.stats().live;
  const adapter = applyMethod("ia3", m, {}, ctx({ lrMultipliers: { value: 4 } }));
  const applied = rt().pool.stats().live;
  const groups = adapter.groups();
  const trainable = groups.flatMap((g) => g.names.map((n, i) => [n, g.params[i]] as const));
  const count = trainable.reduce((s, [, t]) => s + t.size, 0);
  equal(count, 2 * (16 + 16 + 16 + 32) + ROBERTA_HEAD);
  equal(applied.trainable - before.trainable, 4 * count);
  equal(applied.weights - before.weights, -4 * ROBERTA_HEAD);
  ok(groups.some((g) => g.lrMultiplier === 4 && g.names.every((n) => n.endsWith(".value.ia3_l"))));
  perturb(m);
  await checkOneStepMemory(m, groups, applied);
  m.dispose();
});

Deno.test("IA3 saves PEFT's ia3_l and feedforward_modules; loadAdapter restores outputs; merge keeps them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const adapter = applyMethod("ia3", m, {}, ctx());
    perturb(m);
    const before = await evalLogits(m);
    await adapter.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    equal(config.peft_type, "IA3");
    deepStrictEqual(config.target_modules, ["key", "value", "output.dense"]);
    deepStrictEqual(config.feedforward_modules, ["output.dense"]);
    deepStrictEqual(config.modules_to_save, ["classifier"]);
    const reader = await openSafetensors(`${dir}/adapter_model.safetensors`);
    const shapes = Object.fromEntries(reader.names.map((n) => [n, reader.info(n).shape.join("x")]));
    reader.close();
    const p = "base_model.model.roberta.encoder.layer.1";
    equal(shapes[`${p}.attention.self.key.ia3_l`], "16x1");
    equal(shapes[`${p}.output.dense.ia3_l`], "1x32");
    equal(Object.keys(shapes).length, 8 + 4);
    const fresh = model();
    const loaded = await loadAdapter(fresh, dir, {
      lrMultipliers: {},
      weightDecay: 0,
      taskType: "SEQ_CLS",
      baseModel: "tiny-roberta",
      seed: 0,
    });
    equal(loaded.method, "ia3");
    deepStrictEqual(await evalLogits(fresh), before);
    loaded.merge();
    equal(ia3Layers(fresh).length, 0);
    ok(fresh.getModule("roberta.encoder.layer.0.output.dense") instanceof Linear);
    assertClose(await evalLogits(fresh), before, { atol: 1e-5, rtol: 1e-4 }, "merged logits");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
