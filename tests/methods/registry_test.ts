/**
 * Every registered method through the registry: `parse({})` gives defaults, and an adapter saved by
 * a method loads back through `loadAdapter` (the path `deno task evaluate` and `merge` take) with
 * identical outputs — PEFT formats and our own (GaLore, LISA, SIFT, BitFit).
 */
import { deepStrictEqual, ok, rejects } from "node:assert/strict";
import { setup } from "../helpers.ts";
import { sum } from "../../ops/mod.ts";
import {
  type Adapter,
  applyMethod,
  loadAdapter,
  type MethodContext,
  METHODS,
} from "../../methods/mod.ts";
import type { EncoderForSequenceClassification } from "../../models/encoder.ts";
import { contextBuilder, evalLogits, fixedBatch, tinyRoberta, writeRandom } from "./support.ts";

await setup();

const { model } = tinyRoberta(9);
const context = contextBuilder({ weightDecay: 0, seed: 4 });
const ctx = (targets: string[]): MethodContext => context({ targets });

/**
 * Save `adapter` (applied to `m`) into `dir`, load it into a fresh model through `loadAdapter`,
 * and expect the fresh model's logits to equal `m`'s exactly.
 */
async function expectSameAfterReload(
  m: EncoderForSequenceClassification,
  adapter: Adapter,
  dir: string,
): Promise<void> {
  const before = await evalLogits(m);
  await adapter.save(dir);
  const fresh = model();
  await loadAdapter(fresh, dir, {
    lrMultipliers: {},
    weightDecay: 0,
    taskType: "SEQ_CLS",
    baseModel: "x",
    seed: 0,
  });
  deepStrictEqual(await evalLogits(fresh), before);
}

Deno.test("every registered method parses {} into its defaults", () => {
  for (const [name, method] of Object.entries(METHODS)) {
    const r = method.config.safeParse({});
    ok(r.success, `${name}: ${r.success ? "" : r.error.message}`);
  }
});

// Methods whose state after `apply` can be changed by writing random values into every trainable
// tensor, saved, and loaded into a fresh model.
const ROUND_TRIP: [string, string[], Record<string, unknown>][] = [
  ["lora", ["query", "value"], { r: 4 }],
  ["dora", ["query", "value"], { r: 4 }],
  ["ia3", ["key", "value", "output.dense"], {}],
  ["vera", ["query", "value"], { r: 8 }],
  ["bitfit", ["query", "value"], {}],
  ["galore", ["query", "value"], { rank: 4 }],
  ["lisa", ["query", "value"], { layers: 1 }],
];

for (const [name, targets, options] of ROUND_TRIP) {
  Deno.test(`${name}: save → loadAdapter into a fresh model gives identical outputs`, async () => {
    const dir = await Deno.makeTempDir();
    try {
      const m = model();
      const adapter = applyMethod(name, m, options, ctx(targets));
      let seed = 100;
      for (const g of adapter.groups()) {
        g.params.forEach((p, i) => {
          // LISA saves the blocks it trained (none before a step) plus what it always trains.
          if (name === "lisa" && /\.layer\.\d+\./.test(g.names[i])) return;
          writeRandom(p, seed++, -0.2, 0.2);
        });
      }
      await expectSameAfterReload(m, adapter, dir);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("sift: the selected entries and their trained values load back through loadAdapter", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const adapter = applyMethod("sift", m, { density: 0.05 }, ctx(["query", "value"]));
    await adapter.beforeTraining!({
      losses: () => [() => sum(m.forward(fixedBatch()))],
    });
    let seed = 300;
    for (const g of adapter.groups()) {
      for (const p of g.params) {
        writeRandom(p, seed++, -0.2, 0.2);
      }
    }
    await expectSameAfterReload(m, adapter, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadAdapter on a folder without any adapter config names what it looked for", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await rejects(
      loadAdapter(model(), dir, {
        lrMultipliers: {},
        weightDecay: 0,
        taskType: "SEQ_CLS",
        baseModel: "x",
        seed: 0,
      }),
      /no adapter config found \(adapter_config\.json, or full_config\.json, galore_config\.json, lisa_config\.json, sift_config\.json\)/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
