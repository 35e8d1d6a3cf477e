/**
 * Full fine-tuning on a tiny random RoBERTa: every parameter trains by default; `targetsOnly`
 * (the seed paper's "Full FT QV / QKV") trains exactly the targeted Linear layers' weights and
 * biases and the head — only they receive gradients and change in a step, the W_v rule gives the
 * value layers λ·lr — and the saved folder restores through loadAdapter with the same selection.
 */
import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { setup } from "../helpers.ts";
import { AdamW, backward, scope } from "../../ops/mod.ts";
import { applyMethod, loadAdapter, namedTrainable } from "../../methods/mod.ts";
import { applyValueLrRatio } from "../../methods/groups.ts";
import { openSafetensors } from "../../models/safetensors.ts";
import {
  contextBuilder,
  evalLogits,
  fixedBatchLoss,
  ROBERTA_HEAD,
  TINY_ROBERTA,
  tinyRoberta,
} from "./support.ts";

await setup();

const { weights: W, model } = tinyRoberta();
const ctx = contextBuilder();
const H = TINY_ROBERTA.hidden;

/** The names targetsOnly should train for `targets` (2 layers) plus the head's. */
function expectedNames(targets: string[]): string[] {
  const layers = [0, 1].flatMap((l) =>
    targets.flatMap((t) =>
      ["weight", "bias"].map((k) => `roberta.encoder.layer.${l}.attention.self.${t}.${k}`)
    )
  );
  const head = [...W.keys()].filter((n) => n.startsWith("classifier."));
  return [...layers, ...head].sort();
}

Deno.test("full fine-tuning trains every parameter by default", () => {
  const m = model();
  const named = namedTrainable(applyMethod("full", m, {}, ctx()).groups());
  deepStrictEqual(named.map(([n]) => n).sort(), m.namedParameters().map(([n]) => n).sort());
  ok(m.namedParameters().every(([, t]) => t.requiresGrad && t.category === "trainable"));
  m.dispose();
});

Deno.test("full targetsOnly trains the targets' weights and biases and the head, nothing else", async () => {
  for (const targets of [["query", "value"], ["query", "key", "value"]]) {
    const m = model();
    const adapter = applyMethod("full", m, { targetsOnly: true }, ctx({ targets }));
    const named = namedTrainable(adapter.groups());
    deepStrictEqual(named.map(([n]) => n).sort(), expectedNames(targets), `${targets}`);
    equal(
      named.reduce((s, [, t]) => s + t.size, 0),
      2 * targets.length * (H * H + H) + ROBERTA_HEAD,
    );
    for (const [n, t] of m.namedParameters()) {
      const trained = named.some(([tn]) => tn === n);
      equal(t.category, trained ? "trainable" : "weights", n);
      equal(t.requiresGrad, trained, n);
    }
    // One step: only the trained tensors get gradients and change.
    const before = new Map(
      await Promise.all(m.namedParameters().map(async ([n, t]) => [n, await t.read()] as const)),
    );
    const opt = new AdamW(
      applyValueLrRatio(adapter.groups(), 4).map((g) => ({
        params: g.params,
        lr: 1e-2 * g.lrMultiplier,
        weightDecay: g.weightDecay,
      })),
    );
    scope(() => backward(fixedBatchLoss(m)));
    deepStrictEqual(
      m.namedParameters().filter(([, t]) => t.grad).map(([n]) => n).sort(),
      expectedNames(targets),
    );
    opt.step();
    opt.zeroGrad();
    for (const [n, t] of m.namedParameters()) {
      const after = await t.read();
      const changed = after.some((v, i) => v !== before.get(n)![i]);
      equal(changed, named.some(([tn]) => tn === n), `${n} changed`);
    }
    opt.dispose();
    m.dispose();
  }
});

Deno.test("full targetsOnly: the W_v rule gives value weights and every trained 1-D tensor λ·lr", () => {
  const m = model();
  const groups = applyValueLrRatio(
    applyMethod("full", m, { targetsOnly: true }, ctx()).groups(),
    4,
  );
  const fast = groups.filter((g) => g.lrMultiplier === 4).flatMap((g) => g.names);
  ok(fast.includes("roberta.encoder.layer.0.attention.self.value.weight"));
  ok(fast.includes("roberta.encoder.layer.1.attention.self.query.bias"));
  ok(!fast.includes("roberta.encoder.layer.0.attention.self.query.weight"));
  ok(!fast.includes("classifier.dense.weight"));
  m.dispose();
});

Deno.test("full targetsOnly saves the trained tensors and loadAdapter restores the same selection", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const adapter = applyMethod("full", m, { targetsOnly: true }, ctx());
    const opt = new AdamW(
      adapter.groups().map((g) => ({ params: g.params, lr: 1e-2, weightDecay: 0 })),
    );
    scope(() => backward(fixedBatchLoss(m)));
    opt.step();
    opt.dispose();
    await adapter.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/full_config.json`));
    equal(config.targets_only, true);
    deepStrictEqual(config.target_modules, ["query", "value"]);
    const reader = await openSafetensors(`${dir}/model.safetensors`);
    deepStrictEqual([...reader.names].sort(), expectedNames(["query", "value"]));
    reader.close();
    const want = await evalLogits(m);
    const fresh = model();
    const loaded = await loadAdapter(fresh, dir, { ...ctx(), headModules: ["classifier"] });
    deepStrictEqual(
      namedTrainable(loaded.groups()).map(([n]) => n).sort(),
      expectedNames(["query", "value"]),
    );
    deepStrictEqual(await evalLogits(fresh), want);
    m.dispose();
    fresh.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("full targetsOnly refuses targets that match no Linear, naming what exists", () => {
  throws(
    () => applyMethod("full", model(), { targetsOnly: true }, ctx({ targets: ["nope"] })),
    /full fine-tuning \(targetsOnly\): no Linear module matches targets \[nope\]; .*query/,
  );
  throws(() => applyMethod("full", model(), { r: 8 }, ctx()), /method full: invalid options/);
});
