/**
 * BitFit on a tiny random RoBERTa: every bias by default (Linear and LayerNorm), targets choose
 * modules, only biases and the head train (count Σ bias sizes), learning-rate multipliers and no
 * decay on biases, memory categories, a LLaMA without biases is an error, the documented file
 * format round-trips (also through loadAdapter), and merge freezes the biases in place.
 */
import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { setup } from "../helpers.ts";
import { rt } from "../../ops/mod.ts";
import { applyMethod, bitFit, loadAdapter, namedTrainable } from "../../methods/mod.ts";
import { openSafetensors } from "../../models/safetensors.ts";
import {
  checkOneStepMemory,
  contextBuilder,
  evalLogits,
  ROBERTA_HEAD,
  tinyLlama,
  tinyRoberta,
  writeRandom,
} from "./support.ts";

await setup();

const { weights: W, model } = tinyRoberta();
const BIAS_COUNT = [...W].filter(([n]) => n.endsWith(".bias") && !n.startsWith("classifier."))
  .reduce((s, [, v]) => s + v.length, 0);

const probe = model();
const DEFAULT_TARGETS = bitFit.defaultTargets!(probe);
probe.dispose();
const ctx = contextBuilder({ targets: DEFAULT_TARGETS });

Deno.test("BitFit defaults to every bias (Linear and LayerNorm): count Σ bias sizes + head", () => {
  equal(BIAS_COUNT, 2 * (4 * 16 + 16 + 32 + 16 + 16) + 16);
  ok(
    DEFAULT_TARGETS.includes("roberta.embeddings.LayerNorm") &&
      DEFAULT_TARGETS.includes("roberta.encoder.layer.1.output.dense"),
  );
  const trainable = namedTrainable(applyMethod("bitfit", model(), {}, ctx()).groups());
  equal(trainable.reduce((s, [, t]) => s + t.size, 0), BIAS_COUNT + ROBERTA_HEAD);
  ok(trainable.every(([n]) => n.endsWith(".bias") || n.startsWith("classifier.")));
});

Deno.test("BitFit targets choose modules; value ×4 groups their biases; biases get no weight decay", () => {
  const groups = applyMethod(
    "bitfit",
    model(),
    {},
    ctx({ targets: ["query", "value"], lrMultipliers: { value: 4 } }),
  ).groups();
  const names = namedTrainable(groups).map(([n]) => n).filter((n) => !n.startsWith("classifier."));
  deepStrictEqual(
    names.sort(),
    [0, 1].flatMap((l) =>
      ["query", "value"].map((t) => `roberta.encoder.layer.${l}.attention.self.${t}.bias`)
    ).sort(),
  );
  const v = groups.find((g) => g.lrMultiplier === 4)!;
  ok(
    v.names.length === 2 && v.names.every((n) => n.endsWith(".value.bias")) && v.weightDecay === 0,
  );
  throws(
    () => applyMethod("bitfit", model(), {}, ctx({ targets: ["nope"] })),
    /BitFit: no module with a bias matches targets \[nope\]/,
  );
  throws(() => applyMethod("bitfit", model(), { r: 4 }, ctx()), /method bitfit: invalid options/);
});

Deno.test("BitFit on a model without biases (LLaMA) is a clear error", () => {
  const llama = tinyLlama({ layers: 1, seed: 4 }).model();
  throws(
    () =>
      applyMethod("bitfit", llama, {}, {
        ...ctx(),
        targets: bitFit.defaultTargets!(llama),
        headModules: ["score"],
      }),
    /BitFit trains bias terms, but this model has none outside its task head/,
  );
  llama.dispose();
});

Deno.test("only biases and the head get gradients; biases move from weights to trainable; AdamW memory agrees", async () => {
  const m = model();
  const before = rt().pool.stats().live;
  const adapter = applyMethod("bitfit", m, {}, ctx());
  const applied = rt().pool.stats().live;
  const trainable = namedTrainable(adapter.groups());
  const count = trainable.reduce((s, [, t]) => s + t.size, 0);
  equal(applied.trainable - before.trainable, 4 * count);
  equal(
    applied.weights - before.weights,
    -4 * count,
    "biases and head are the model's own tensors, retagged",
  );
  await checkOneStepMemory(m, adapter.groups(), applied);
  m.dispose();
});

Deno.test("BitFit's own format: biases + head under PEFT-style keys, peft_type BITFIT; load and merge keep outputs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const adapter = applyMethod("bitfit", m, {}, ctx({ targets: ["dense", "LayerNorm"] }));
    namedTrainable(adapter.groups()).forEach(([, t], i) => writeRandom(t, 300 + i, -0.5, 0.5));
    const before = await evalLogits(m);
    await adapter.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    equal(config.peft_type, "BITFIT");
    deepStrictEqual(config.target_modules, ["dense", "LayerNorm"]);
    deepStrictEqual(config.modules_to_save, ["classifier"]);
    const reader = await openSafetensors(`${dir}/adapter_model.safetensors`);
    const shapes = Object.fromEntries(reader.names.map((n) => [n, reader.info(n).shape.join("x")]));
    reader.close();
    equal(shapes["base_model.model.roberta.encoder.layer.0.intermediate.dense.bias"], "32");
    equal(shapes["base_model.model.roberta.embeddings.LayerNorm.bias"], "16");
    equal(shapes["base_model.model.classifier.out_proj.weight"], "2x16");
    ok(
      !Object.keys(shapes).some((n) => n.includes(".query.")),
      "query has no dense/LayerNorm suffix",
    );
    const fresh = model();
    const loaded = await loadAdapter(fresh, dir, {
      lrMultipliers: {},
      weightDecay: 0,
      taskType: "SEQ_CLS",
      baseModel: "tiny-roberta",
      seed: 0,
    });
    equal(loaded.method, "bitfit");
    deepStrictEqual(await evalLogits(fresh), before);
    loaded.merge();
    const body = fresh.namedParameters().filter(([n]) => !n.startsWith("classifier."));
    ok(
      body.every(([, t]) => !t.requiresGrad && t.category === "weights"),
      "biases are frozen weights again",
    );
    deepStrictEqual(await evalLogits(fresh), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
