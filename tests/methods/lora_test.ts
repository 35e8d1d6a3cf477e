/**
 * LoRA, rsLoRA and full fine-tuning on a tiny random RoBERTa: initialisation, the forward formula,
 * which tensors train, parameter counts, learning-rate groups, PEFT files, save/load, merge.
 */
import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { assertClose, randomArray, setup } from "../helpers.ts";
import { backward, noGrad, scopeAsync, sum, tensor } from "../../ops/mod.ts";
import { type Adapter, applyMethod, LoraLinear, readAdapter } from "../../methods/mod.ts";
import { openSafetensors } from "../../models/safetensors.ts";
import {
  contextBuilder,
  evalLogits,
  fixedBatch,
  layersOf,
  randomizeLoraB,
  tinyRoberta,
  writeRandom,
} from "./support.ts";
import type { Module } from "../../models/module.ts";

await setup();

const { weights: W, model } = tinyRoberta();
const ctx = contextBuilder();
const loraLayers = (m: Module) => layersOf(m, LoraLinear);

Deno.test("LoRA starts equal to the base model (B = 0) and A ~ U(±1/√dIn)", async () => {
  const base = await evalLogits(model());
  const m = model();
  applyMethod("lora", m, { r: 4, alpha: 8 }, ctx());
  deepStrictEqual(await evalLogits(m), base);
  const layers = loraLayers(m);
  deepStrictEqual(layers.map(([n]) => n), [
    "roberta.encoder.layer.0.attention.self.query",
    "roberta.encoder.layer.0.attention.self.value",
    "roberta.encoder.layer.1.attention.self.query",
    "roberta.encoder.layer.1.attention.self.value",
  ]);
  const a = await layers[0][1].loraA.read();
  const bound = 1 / Math.sqrt(16);
  ok(a.every((v) => Math.abs(v) <= bound), "A within the kaiming-uniform bound");
  ok(Math.max(...a) > 0.7 * bound && Math.min(...a) < -0.7 * bound, "A spreads over its range");
  ok((await layers[0][1].loraB.read()).every((v) => v === 0));
});

Deno.test("LoRA forward equals x·Wᵀ + b + (α/r)·x·Aᵀ·Bᵀ; rsLoRA uses α/√r", async () => {
  for (const [method, scale] of [["lora", 8 / 4], ["rslora", 8 / Math.sqrt(4)]] as const) {
    const m = model();
    applyMethod(method, m, { r: 4, alpha: 8 }, ctx());
    randomizeLoraB(m);
    const [name, layer] = loraLayers(m)[0];
    equal(layer.scaling, scale);
    const x = Float32Array.from(randomArray(3 * 16, 9));
    const got = await scopeAsync(() => noGrad(() => layer.forward(tensor(x, [3, 16]))).read());
    const w = W.get(`${name}.weight`)!, b = W.get(`${name}.bias`)!;
    const a = await layer.loraA.read(), bb = await layer.loraB.read();
    const want = new Float64Array(3 * 16);
    for (let row = 0; row < 3; row++) {
      const xa = new Float64Array(4);
      for (let k = 0; k < 4; k++) {
        for (let i = 0; i < 16; i++) xa[k] += x[row * 16 + i] * a[k * 16 + i];
      }
      for (let o = 0; o < 16; o++) {
        let y = b[o];
        for (let i = 0; i < 16; i++) y += x[row * 16 + i] * w[o * 16 + i];
        for (let k = 0; k < 4; k++) y += scale * xa[k] * bb[o * 4 + k];
        want[row * 16 + o] = y;
      }
    }
    assertClose(got, want, { atol: 1e-5, rtol: 1e-4 }, `${method} forward`);
  }
});

Deno.test("only A, B and the head receive gradients; trainable count is Σ r·(dIn + dOut) + head", async () => {
  const m = model();
  const adapter = applyMethod("lora", m, { r: 4 }, ctx());
  randomizeLoraB(m);
  await scopeAsync(async () => {
    const loss = sum(m.forward(fixedBatch()));
    backward(loss);
    await Promise.resolve();
  });
  const trainable = adapter.groups().flatMap((g) =>
    g.names.map((n, i) => [n, g.params[i]] as const)
  );
  const withGrad = m.namedParameters().filter(([, t]) => t.grad).map(([n]) => n).sort();
  deepStrictEqual(withGrad, trainable.map(([n]) => n).sort());
  const count = trainable.reduce((s, [, t]) => s + t.size, 0);
  const head = 16 * 16 + 16 + 2 * 16 + 2;
  equal(count, 4 * 4 * (16 + 16) + head);
  for (const [n, t] of m.namedParameters()) {
    const isTrainable = trainable.some(([tn]) => tn === n);
    equal(t.category, isTrainable ? "trainable" : "weights", n);
  }
});

Deno.test("learning-rate multipliers group W_v's adapter apart; a multiplier matching nothing is an error", () => {
  const m = model();
  const groups = applyMethod("lora", m, {}, ctx({ lrMultipliers: { value: 4 } })).groups();
  const v = groups.find((g) => g.lrMultiplier === 4)!;
  ok(v.names.length === 4 && v.names.every((n) => n.includes(".value.lora_")));
  ok(
    groups.filter((g) => g.lrMultiplier === 1).some((g) =>
      g.names.some((n) => n.includes(".query.lora_"))
    ),
  );
  ok(groups.some((g) => g.names.includes("classifier.dense.bias") && g.weightDecay === 0));
  throws(
    () => applyMethod("lora", model(), {}, ctx({ lrMultipliers: { valeu: 4 } })).groups(),
    /valeu.*matches no trainable/,
  );
  throws(() => applyMethod("lora", model(), { rank: 4 }, ctx()), /method lora: invalid options/);
  throws(
    () => applyMethod("lora", model(), {}, ctx({ targets: ["nope"] })),
    /no Linear module matches/,
  );
  throws(
    () => applyMethod("dora2", model(), {}, ctx()),
    /unknown method "dora2"; available: full, lora/,
  );
});

Deno.test("LoRA save writes PEFT names and shapes; load restores identical outputs; merge keeps them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const adapter: Adapter = applyMethod("lora", m, { r: 4, alpha: 16, dropout: 0.1 }, ctx());
    randomizeLoraB(m);
    const before = await evalLogits(m);
    await adapter.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    equal(config.peft_type, "LORA");
    equal(config.r, 4);
    equal(config.lora_alpha, 16);
    deepStrictEqual(config.target_modules, ["query", "value"]);
    deepStrictEqual(config.modules_to_save, ["classifier"]);
    const reader = await openSafetensors(`${dir}/adapter_model.safetensors`);
    const shapes = Object.fromEntries(reader.names.map((n) => [n, reader.info(n).shape.join("x")]));
    reader.close();
    equal(
      shapes["base_model.model.roberta.encoder.layer.0.attention.self.query.lora_A.weight"],
      "4x16",
    );
    equal(
      shapes["base_model.model.roberta.encoder.layer.1.attention.self.value.lora_B.weight"],
      "16x4",
    );
    equal(shapes["base_model.model.classifier.out_proj.weight"], "2x16");
    equal(Object.keys(shapes).length, 8 + 4);
    const fresh = model();
    const again = applyMethod("lora", fresh, { r: 4, alpha: 16 }, ctx({ seed: 99 }));
    await again.load(dir);
    deepStrictEqual(await evalLogits(fresh), before);
    const files = await readAdapter(dir);
    ok(files.tensors.has("classifier.dense.weight"));
    again.merge();
    equal(loraLayers(fresh).length, 0);
    assertClose(await evalLogits(fresh), before, { atol: 1e-5, rtol: 1e-4 }, "merged logits");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("full fine-tuning trains every weight; save/load round-trips", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const adapter = applyMethod("full", m, {}, ctx());
    const total = m.namedParameters().reduce((s, [, t]) => s + t.size, 0);
    equal(
      adapter.groups().reduce((s, g) => s + g.params.reduce((a, t) => a + t.size, 0), 0),
      total,
    );
    ok(m.namedParameters().every(([, t]) => t.requiresGrad && t.category === "trainable"));
    const w = m.namedParameters()[5][1];
    writeRandom(w, 77, -1, 1);
    const before = await evalLogits(m);
    await adapter.save(dir);
    const fresh = model();
    await applyMethod("full", fresh, {}, ctx()).load(dir);
    deepStrictEqual(await evalLogits(fresh), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
