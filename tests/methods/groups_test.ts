/**
 * Parameter groups shared by every method: the seed paper's W_v rule (`wvLrRatio`: λ for value /
 * v_proj parameters and every trainable 1-D tensor, as the official EfficientFT / LightweightAtt
 * `create_my_optimizer` groups them), its composition with lrMultipliers and LoRA+, and its flag.
 */
import { deepStrictEqual, equal, throws } from "node:assert/strict";
import { setup } from "../helpers.ts";
import { applyMethod, applyValueLrRatio, takesValueRate } from "../../methods/mod.ts";
import { zeros } from "../../ops/mod.ts";
import { configFromArgs } from "../../tasks/train.ts";
import { contextBuilder, tinyLlama, tinyRoberta } from "./support.ts";

await setup();

const { model } = tinyRoberta();
const ctx = contextBuilder();

/** Each trainable parameter's learning-rate multiplier and weight decay. */
function rates(groups: ReturnType<typeof applyValueLrRatio>): Map<string, [number, number]> {
  return new Map(
    groups.flatMap((g) => g.names.map((n) => [n, [g.lrMultiplier, g.weightDecay]] as const)),
  );
}

Deno.test("the W_v rule: value parameters (A and B) and every 1-D tensor at λ, the rest at the base rate", () => {
  const groups = applyMethod("lora", model(), { r: 2 }, ctx()).groups();
  const got = rates(applyValueLrRatio(groups, 4));
  const p = "roberta.encoder.layer.0.attention.self";
  deepStrictEqual(got.get(`${p}.value.lora_A.weight`), [4, 0.01]);
  deepStrictEqual(got.get(`${p}.value.lora_B.weight`), [4, 0.01]);
  deepStrictEqual(got.get(`${p}.query.lora_A.weight`), [1, 0.01]);
  deepStrictEqual(got.get("classifier.dense.weight"), [1, 0.01]);
  deepStrictEqual(got.get("classifier.dense.bias"), [4, 0], "1-D: λ, and still no decay");
  deepStrictEqual(got.get("classifier.out_proj.bias"), [4, 0]);
  equal(got.size, 8 + 4, "every tensor in one group");
  deepStrictEqual(applyValueLrRatio(groups, 1), groups, "λ = 1 changes nothing");
  throws(() => applyValueLrRatio(groups, 0), /wvLrRatio: expected a positive number/);
});

Deno.test("the W_v rule composes with lrMultipliers and LoRA+'s λ, and covers full FT, DoRA and LLaMA's v_proj", () => {
  const plus = applyMethod(
    "loraplus",
    model(),
    { r: 2, lrRatio: 8 },
    ctx({ targets: ["query", "key", "value"], lrMultipliers: { key: 2 } }),
  ).groups();
  const got = rates(applyValueLrRatio(plus, 3));
  const p = "roberta.encoder.layer.1.attention.self";
  equal(got.get(`${p}.value.lora_B.weight`)![0], 24, "λ_v · λ_LoRA+");
  equal(got.get(`${p}.value.lora_A.weight`)![0], 3);
  equal(got.get(`${p}.key.lora_A.weight`)![0], 2, "lrMultipliers still apply");
  equal(got.get("classifier.out_proj.bias")![0], 24, "LoRA+'s vectors at λ too, then ×λ_v");
  const full = rates(applyValueLrRatio(applyMethod("full", model(), {}, ctx()).groups(), 2));
  equal(full.get(`${p}.value.weight`)![0], 2);
  equal(full.get(`${p}.query.weight`)![0], 1);
  equal(full.get(`${p}.query.bias`)![0], 2, "every 1-D tensor, query's bias included");
  equal(full.get("roberta.embeddings.LayerNorm.weight")![0], 2);
  const dora = rates(applyValueLrRatio(applyMethod("dora", model(), { r: 2 }, ctx()).groups(), 2));
  equal(dora.get(`${p}.query.lora_magnitude_vector`)![0], 2, "DoRA's magnitude is a vector");
  const llama = tinyLlama({ layers: 1, seed: 2 }).model();
  const l = rates(applyValueLrRatio(
    applyMethod("lora", llama, { r: 2 }, ctx({ targets: ["q_proj", "v_proj"], headModules: [] }))
      .groups(),
    5,
  ));
  equal(l.get("model.layers.0.self_attn.v_proj.lora_A.weight")![0], 5);
  equal(l.get("model.layers.0.self_attn.q_proj.lora_A.weight")![0], 1);
});

Deno.test("takesValueRate: by module name or rank; SIFT's sparse values follow their module only", () => {
  const vector = zeros([4]), matrix = zeros([2, 2]);
  equal(takesValueRate("a.value.weight", matrix), true);
  equal(takesValueRate("a.values.weight", matrix), false, "whole module names only");
  equal(takesValueRate("a.query.bias", vector), true);
  equal(takesValueRate("a.query.sift.values", vector), false);
  equal(takesValueRate("a.value.sift.values", vector), true);
});

Deno.test("--wv-lr-ratio sets wvLrRatio (YAML key wvLrRatio); it must be positive", async () => {
  const { config } = await configFromArgs(["--wv-lr-ratio", "4", "--lr-multipliers", "key=2"]);
  equal(config.wvLrRatio, 4);
  deepStrictEqual(config.lrMultipliers, { key: 2 });
  equal((await configFromArgs([])).config.wvLrRatio, undefined);
  await configFromArgs(["--wv-lr-ratio", "0"]).then(
    () => {
      throw new Error("accepted 0");
    },
    (e: Error) =>
      equal(/--wv-lr-ratio: expected a positive number/.test(e.message), true, e.message),
  );
});
