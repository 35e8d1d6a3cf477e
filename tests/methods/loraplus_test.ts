/**
 * LoRA+ on a tiny random RoBERTa: it is LoRA (same start, same forward), its B matrices and every
 * trainable 1-D tensor sit in groups at λ× their module's learning-rate multiplier (the vectors
 * without weight decay), as PEFT's create_loraplus_optimizer groups them; an AdamW step moves B
 * λ× as far as A, the memory categories match the trainable count, and it saves as a plain PEFT
 * LoRA adapter.
 */
import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { assertClose, setup } from "../helpers.ts";
import { AdamW, backward, rt, scope, sum } from "../../ops/mod.ts";
import {
  type Adapter,
  applyMethod,
  loadAdapter,
  LoraLinear,
  LoraPlusConfigSchema,
} from "../../methods/mod.ts";
import {
  contextBuilder,
  evalLogits,
  fixedBatch,
  layersOf,
  randomizeLoraB,
  ROBERTA_HEAD,
  tinyRoberta,
} from "./support.ts";
import type { Module } from "../../models/module.ts";

await setup();

const { model } = tinyRoberta();
const ctx = contextBuilder();
const loraLayers = (m: Module) => layersOf(m, LoraLinear);

Deno.test("LoRA+ defaults to λ = 16 over LoRA's defaults and rejects unknown or invalid options", () => {
  deepStrictEqual(LoraPlusConfigSchema.parse({}), {
    r: 8,
    alpha: 8,
    dropout: 0,
    rslora: false,
    rankPattern: {},
    alphaPattern: {},
    loraBias: false,
    lrRatio: 16,
    vectorsAtRatio: true,
  });
  throws(
    () => applyMethod("loraplus", model(), { lrRatio: 0 }, ctx()),
    /method loraplus: invalid options — lrRatio/,
  );
  throws(
    () => applyMethod("loraplus", model(), { ratio: 4 }, ctx()),
    /method loraplus: invalid options/,
  );
});

Deno.test("LoRA+ starts as LoRA does (same A, B = 0, base outputs) and computes LoRA's forward", async () => {
  const base = await evalLogits(model());
  const plus = model(), plain = model();
  applyMethod("loraplus", plus, { r: 4, alpha: 8 }, ctx());
  applyMethod("lora", plain, { r: 4, alpha: 8 }, ctx());
  deepStrictEqual(await evalLogits(plus), base);
  const [pl, ll] = [loraLayers(plus), loraLayers(plain)];
  equal(pl.length, 4);
  for (let i = 0; i < pl.length; i++) {
    deepStrictEqual(await pl[i][1].loraA.read(), await ll[i][1].loraA.read());
  }
  randomizeLoraB(plus);
  randomizeLoraB(plain);
  deepStrictEqual(await evalLogits(plus), await evalLogits(plain));
});

Deno.test("LoRA+ groups as PEFT: B and every 1-D tensor at λ × the module multiplier (value ×4 → B ×4λ), vectors without decay; A and 2-D head weights at the base rate", () => {
  for (const vectorsAtRatio of [true, false]) {
    const groups = applyMethod(
      "loraplus",
      model(),
      { r: 4, lrRatio: 8, vectorsAtRatio },
      ctx({ lrMultipliers: { value: 4 }, weightDecay: 0.1 }),
    ).groups();
    const rate = new Map(groups.flatMap((g) => g.names.map((n) => [n, g.lrMultiplier] as const)));
    const decay = new Map(groups.flatMap((g) => g.names.map((n) => [n, g.weightDecay] as const)));
    const p = "roberta.encoder.layer.1.attention.self";
    equal(rate.get(`${p}.query.lora_A.weight`), 1);
    equal(rate.get(`${p}.query.lora_B.weight`), 8);
    equal(rate.get(`${p}.value.lora_A.weight`), 4);
    equal(rate.get(`${p}.value.lora_B.weight`), 32);
    equal(decay.get(`${p}.value.lora_B.weight`), 0.1, "B keeps its weight decay");
    equal(rate.get("classifier.out_proj.weight"), 1);
    equal(rate.get("classifier.out_proj.bias"), vectorsAtRatio ? 8 : 1);
    equal(rate.get("classifier.dense.bias"), vectorsAtRatio ? 8 : 1);
    equal(decay.get("classifier.dense.bias"), 0, "vectors never decay");
    equal(rate.size, 8 + 4, "every LoRA tensor and head parameter in exactly one group");
    ok(groups.every((g) => g.names.length === g.params.length && g.names.length > 0));
  }
});

Deno.test("an AdamW step moves B λ× as far as A; trainable = Σ r·(dIn + dOut) + head; memory categories agree", async () => {
  const m = model();
  const before = rt().pool.stats().live;
  const adapter: Adapter = applyMethod(
    "loraplus",
    m,
    { r: 4, lrRatio: 16 },
    ctx({ weightDecay: 0 }),
  );
  const applied = rt().pool.stats().live;
  const groups = adapter.groups();
  const count = groups.reduce((s, g) => s + g.params.reduce((a, t) => a + t.size, 0), 0);
  equal(count, 4 * 4 * (16 + 16) + ROBERTA_HEAD);
  equal(applied.trainable - before.trainable, 4 * count, "trainable bytes = 4 · trainable params");
  equal(
    applied.weights - before.weights,
    -4 * ROBERTA_HEAD,
    "the head moved from weights to trainable",
  );
  randomizeLoraB(m);
  const [, layer] = loraLayers(m)[1];
  const a0 = await layer.loraA.read(), b0 = await layer.loraB.read();
  const lr = 1e-3;
  const opt = new AdamW(
    groups.map((g) => ({ params: g.params, lr: lr * g.lrMultiplier, weightDecay: g.weightDecay })),
  );
  scope(() => backward(sum(m.forward(fixedBatch()))));
  equal(
    rt().pool.stats().live.grads - applied.grads,
    4 * count,
    "one f32 gradient per trainable param",
  );
  opt.step();
  equal(
    rt().pool.stats().live.optimizer - applied.optimizer,
    2 * 4 * count,
    "AdamW: two f32 moments per param",
  );
  const maxStep = (now: ArrayLike<number>, was: ArrayLike<number>) =>
    Math.max(...Array.from(now, (v, i) => Math.abs(v - was[i])));
  // Adam's first step is lr·g/(|g| + eps) ≈ lr per element, so the ratio is λ.
  const stepA = maxStep(await layer.loraA.read(), a0),
    stepB = maxStep(await layer.loraB.read(), b0);
  assertClose(
    [stepA, stepB],
    [lr, 16 * lr],
    { rtol: 1e-3, atol: 0 },
    "first-step sizes of A and B",
  );
  opt.dispose();
  m.dispose();
});

Deno.test("LoRA+ saves a plain PEFT LoRA adapter; loadAdapter restores identical outputs; merge keeps them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const adapter = applyMethod("loraplus", m, { r: 4, alpha: 16, lrRatio: 4 }, ctx());
    equal(adapter.method, "loraplus");
    randomizeLoraB(m);
    const before = await evalLogits(m);
    await adapter.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    equal(config.peft_type, "LORA");
    equal(config.use_dora, false);
    equal(config.lora_alpha, 16);
    const fresh = model();
    const loaded = await loadAdapter(fresh, dir, {
      lrMultipliers: {},
      weightDecay: 0,
      taskType: "SEQ_CLS",
      baseModel: "tiny-roberta",
      seed: 1,
    });
    equal(loaded.method, "lora");
    deepStrictEqual(await evalLogits(fresh), before);
    loaded.merge();
    equal(loraLayers(fresh).length, 0);
    assertClose(await evalLogits(fresh), before, { atol: 1e-5, rtol: 1e-4 }, "merged logits");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
