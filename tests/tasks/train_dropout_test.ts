/**
 * Dropout in `train()` end to end: a tiny RoBERTa on real SST-2 sentences, where only config.json's
 * dropout fields change between runs. The loss curve moves when hidden_dropout_prob alone or
 * attention_probs_dropout_prob alone is turned on, and is identical for the same seed; the
 * evaluation at the end does not depend on dropout randomness.
 */
import { equal, notDeepStrictEqual, ok } from "node:assert/strict";
import { join } from "node:path";
import { setup, useTestTokenCache } from "../helpers.ts";
import { makeRobertaFixture } from "../fixtures/make_fixtures.ts";
import { parseRunConfig } from "../../tasks/lib/train/config.ts";
import { train } from "../../tasks/lib/train/trainer.ts";

await setup();

const SST2 = new URL("../../../shared/data/glue/tsv/SST-2/", import.meta.url).pathname;
const present = await Deno.stat(`${SST2}train.tsv`).then(() => true, () => false);

Deno.test({
  name:
    "the loss curve changes with hidden_dropout_prob alone and with attention_probs_dropout_prob alone; same seed, same curve",
  ignore: !present,
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "train-dropout-test-" });
    useTestTokenCache();
    try {
      const lines = (await Deno.readTextFile(`${SST2}train.tsv`)).split("\n");
      const data = join(work, "sst2");
      await Deno.mkdir(join(data, "SST-2"), { recursive: true });
      const text = [lines[0], ...lines.slice(1, 25)].join("\n") + "\n";
      await Deno.writeTextFile(join(data, "SST-2", "train.tsv"), text);
      await Deno.writeTextFile(join(data, "SST-2", "dev.tsv"), text);

      /** The same tiny model with config.json's dropout fields set to `p`. */
      const modelWith = async (name: string, hidden: number, attention: number) => {
        const dir = join(work, `model-${name}`);
        await makeRobertaFixture(dir, { seed: 1, initializerRange: 0.1 });
        const path = join(dir, "config.json");
        const config = JSON.parse(await Deno.readTextFile(path));
        config.hidden_dropout_prob = hidden;
        config.attention_probs_dropout_prob = attention;
        await Deno.writeTextFile(path, JSON.stringify(config, null, 2));
        return dir;
      };
      const run = async (model: string, out: string) => {
        const summary = await train(
          parseRunConfig({
            model,
            task: "sst2",
            data,
            method: "full",
            lr: 2e-3,
            batchSize: 8,
            maxLength: 24,
            warmupRatio: 0,
            weightDecay: 0,
            steps: 5,
            logInterval: 1,
            seed: 4,
            output: join(work, out),
            offline: true,
          }),
          { progress: false, log: () => {} },
        );
        const metrics = (await Deno.readTextFile(join(work, out, "metrics.jsonl"))).trim()
          .split("\n").map((l) => JSON.parse(l));
        const losses: number[] = metrics.filter((l) => "loss" in l).map((l) => l.loss);
        equal(losses.length, 5);
        return { losses, accuracy: summary.final.accuracy };
      };
      const off = await run(await modelWith("off", 0, 0), "off");
      const hidden = await run(await modelWith("hidden", 0.1, 0), "hidden");
      const attention = await run(await modelWith("attention", 0, 0.1), "attention");
      const hiddenAgain = await run(join(work, "model-hidden"), "hidden-again");

      // Step 0's weights are the same in every run, so its loss differs only through dropout.
      ok(hidden.losses[0] !== off.losses[0], "hidden dropout changes the first loss");
      ok(attention.losses[0] !== off.losses[0], "attention dropout changes the first loss");
      notDeepStrictEqual(hidden.losses, off.losses);
      notDeepStrictEqual(attention.losses, off.losses);
      notDeepStrictEqual(attention.losses, hidden.losses);
      equal(JSON.stringify(hiddenAgain.losses), JSON.stringify(hidden.losses), "same seed");
      equal(hiddenAgain.accuracy, hidden.accuracy);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
