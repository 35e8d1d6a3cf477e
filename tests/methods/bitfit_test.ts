/**
 * BitFit on a tiny random RoBERTa: every bias by default (Linear and LayerNorm), targets choose
 * modules, only biases and the head train (count Σ bias sizes), learning-rate multipliers and no
 * decay on biases, memory categories, a LLaMA without biases is an error, the documented file
 * format round-trips (also through loadAdapter), and merge freezes the biases in place.
 */
import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { randomArray, setup } from "../helpers.ts";
import { AdamW, backward, noGrad, rt, scope, scopeAsync, sum, tensor } from "../../ops/mod.ts";
import { EncoderForSequenceClassification } from "../../models/encoder.ts";
import { LlamaForCausalLM } from "../../models/llama.ts";
import {
  applyMethod,
  bitFit,
  loadAdapter,
  type MethodContext,
  writeInto,
} from "../../methods/mod.ts";
import { openSafetensors } from "../../models/safetensors.ts";
import {
  encoderDims,
  encoderWeights,
  hostSource,
  llamaDims,
  llamaWeights,
} from "../models/fixtures.ts";
import type { RefEncoderDims, RefLlamaDims } from "../models/reference.ts";

await setup();

const DIMS: RefEncoderDims = {
  kind: "roberta",
  vocab: 13,
  hidden: 16,
  inter: 32,
  layers: 2,
  heads: 4,
  eps: 1e-5,
  pad: 1,
  labels: 2,
};
const W = encoderWeights(DIMS, 12, 5);
const HEAD = 16 * 16 + 16 + 2 * 16 + 2;
/** Every bias outside the head, from the checkpoint's own names. */
const BIAS_COUNT = [...W].filter(([n]) => n.endsWith(".bias") && !n.startsWith("classifier."))
  .reduce((s, [, v]) => s + v.length, 0);

const model = () => new EncoderForSequenceClassification(encoderDims(DIMS, 12), hostSource(W));
const probe = model();
/** What the trainer passes when the run names no targets. */
const DEFAULT_TARGETS = bitFit.defaultTargets!(probe);
probe.dispose();

function ctx(over: Partial<MethodContext> = {}): MethodContext {
  return {
    targets: DEFAULT_TARGETS,
    lrMultipliers: {},
    weightDecay: 0.01,
    headModules: ["classifier"],
    taskType: "SEQ_CLS",
    baseModel: "tiny-roberta",
    seed: 3,
    ...over,
  };
}

const inputs = () => ({
  ids: tensor(Int32Array.from([0, 5, 9, 4, 2, 0, 7, 2, 1, 1]), [2, 5]),
  attentionMask: tensor(Float32Array.from([1, 1, 1, 1, 1, 1, 1, 1, 0, 0]), [2, 5]),
});

const logits = (m: EncoderForSequenceClassification) =>
  scopeAsync(() => noGrad(() => m.forward(inputs())).read());

const trainableOf = (groups: ReturnType<ReturnType<typeof applyMethod>["groups"]>) =>
  groups.flatMap((g) => g.names.map((n, i) => [n, g.params[i]] as const));

Deno.test("BitFit defaults to every bias (Linear and LayerNorm): count Σ bias sizes + head", () => {
  equal(BIAS_COUNT, 2 * (4 * 16 + 16 + 32 + 16 + 16) + 16);
  ok(
    DEFAULT_TARGETS.includes("roberta.embeddings.LayerNorm") &&
      DEFAULT_TARGETS.includes("roberta.encoder.layer.1.output.dense"),
  );
  const trainable = trainableOf(applyMethod("bitfit", model(), {}, ctx()).groups());
  equal(trainable.reduce((s, [, t]) => s + t.size, 0), BIAS_COUNT + HEAD);
  ok(trainable.every(([n]) => n.endsWith(".bias") || n.startsWith("classifier.")));
});

Deno.test("BitFit targets choose modules; value ×4 groups their biases; biases get no weight decay", () => {
  const groups = applyMethod(
    "bitfit",
    model(),
    {},
    ctx({ targets: ["query", "value"], lrMultipliers: { value: 4 } }),
  ).groups();
  const names = trainableOf(groups).map(([n]) => n).filter((n) => !n.startsWith("classifier."));
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
  const ld: RefLlamaDims = {
    vocab: 11,
    hidden: 8,
    inter: 12,
    layers: 1,
    heads: 2,
    kvHeads: 1,
    eps: 1e-5,
    theta: 10000,
    tied: true,
  };
  const llama = new LlamaForCausalLM(llamaDims(ld, 2), hostSource(llamaWeights(ld, 4)));
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
  const trainable = trainableOf(adapter.groups());
  const count = trainable.reduce((s, [, t]) => s + t.size, 0);
  equal(applied.trainable - before.trainable, 4 * count);
  equal(
    applied.weights - before.weights,
    -4 * count,
    "biases and head are the model's own tensors, retagged",
  );
  const opt = new AdamW(
    adapter.groups().map((g) => ({ params: g.params, lr: 1e-3, weightDecay: g.weightDecay })),
  );
  scope(() => backward(sum(m.forward(inputs()))));
  deepStrictEqual(
    m.namedParameters().filter(([, t]) => t.grad).map(([n]) => n).sort(),
    trainable.map(([n]) => n).sort(),
  );
  for (const [n, t] of m.namedParameters()) {
    equal(
      t.category,
      trainable.some(([tn]) => tn === n) ? "trainable" : "weights",
      n,
    );
  }
  equal(rt().pool.stats().live.grads - applied.grads, 4 * count);
  opt.step();
  await rt().sync(); // surfaces any WebGPU error of the step
  equal(rt().pool.stats().live.optimizer - applied.optimizer, 8 * count);
  opt.dispose();
  m.dispose();
});

Deno.test("BitFit's own format: biases + head under PEFT-style keys, peft_type BITFIT; load and merge keep outputs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const adapter = applyMethod("bitfit", m, {}, ctx({ targets: ["dense", "LayerNorm"] }));
    trainableOf(adapter.groups()).forEach(([, t], i) =>
      writeInto(t, Float32Array.from(randomArray(t.size, 300 + i, -0.5, 0.5)))
    );
    const before = await logits(m);
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
    deepStrictEqual(await logits(fresh), before);
    loaded.merge();
    const body = fresh.namedParameters().filter(([n]) => !n.startsWith("classifier."));
    ok(
      body.every(([, t]) => !t.requiresGrad && t.category === "weights"),
      "biases are frozen weights again",
    );
    deepStrictEqual(await logits(fresh), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
