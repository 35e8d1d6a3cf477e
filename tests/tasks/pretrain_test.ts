/**
 * `deno task train --objective mlm|clm` end to end on tiny models and real text (SST-2 sentences
 * from ../shared/data): the loss falls, the run writes a Hugging Face model folder that our own
 * `train` fine-tunes (MLM head dropped, classifier added), a resumed run reproduces an
 * uninterrupted one, and wrong combinations are refused with one clear line.
 */
import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import { setup, useTestTokenCache } from "../helpers.ts";
import { makeLlamaFixture, makeRobertaFixture } from "../fixtures/make_fixtures.ts";
import { parseRunConfig } from "../../tasks/lib/train/config.ts";
import { train } from "../../tasks/lib/train/trainer.ts";
import { configFromArgs } from "../../tasks/train.ts";
import { openSafetensors } from "../../models/safetensors.ts";
import { stridedHoldout } from "../../tasks/lib/pretrain/objective.ts";

await setup();

const SST2 = new URL("../../../shared/data/glue/tsv/SST-2/train.tsv", import.meta.url).pathname;
const present = await Deno.stat(SST2).then(() => true, () => false);
const work = await Deno.makeTempDir({ prefix: "pretrain-test-" });
useTestTokenCache();

const text = join(work, "corpus.txt");
const encoder = join(work, "roberta-base-like");
const decoder = join(work, "llama-tiny");
if (present) {
  const lines = (await Deno.readTextFile(SST2)).split("\n").slice(1, 801).map((l) =>
    l.split("\t")[0]
  );
  // One document per line (blank lines are skipped); 20 sentences each.
  const docs: string[] = [];
  for (let i = 0; i < lines.length; i += 20) docs.push(lines.slice(i, i + 20).join(" "));
  await Deno.writeTextFile(text, docs.join("\n\n") + "\n");
  await makeRobertaFixture(encoder, { seed: 2, withHead: false, initializerRange: 0.05 });
  await makeLlamaFixture(decoder, { seed: 2 });
}

function mlmConfig(output: string, extra: Record<string, unknown> = {}) {
  return parseRunConfig({
    model: encoder,
    objective: "mlm",
    trainFile: text,
    method: "full",
    lr: 3e-3,
    steps: 24,
    batchSize: 8,
    maxLength: 32,
    warmupSteps: 0,
    logInterval: 4,
    evalBatchSize: 16,
    evalLimit: 16,
    output,
    offline: true,
    ...extra,
  });
}

async function lossCurve(dir: string): Promise<number[]> {
  const rows = (await Deno.readTextFile(join(dir, "metrics.jsonl"))).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  return rows.filter((r) => typeof r.loss === "number").map((r) => r.loss);
}

Deno.test({
  name:
    "mlm: the loss falls, eval reports loss/perplexity/accuracy, model/ is a RobertaForMaskedLM folder",
  ignore: !present,
  fn: async () => {
    const out = join(work, "mlm");
    const s = await train(mlmConfig(out), { progress: false, log: () => {} });
    equal(s.task, "mlm");
    const curve = await lossCurve(out);
    ok(curve.length >= 5);
    ok(curve.at(-1)! < curve[0] - 0.5, `loss ${curve[0]} → ${curve.at(-1)}`);
    ok(
      s.final.loss > 0 &&
        Math.abs(s.final.perplexity - Math.exp(s.final.loss)) < 1e-6 * s.final.perplexity,
    );
    ok(s.final.accuracy >= 0 && s.final.accuracy <= 1);
    const cfg = JSON.parse(await Deno.readTextFile(join(out, "model", "config.json")));
    deepEqual(cfg.architectures, ["RobertaForMaskedLM"]);
    equal(cfg.model_type, "roberta");
    for (const f of ["vocab.json", "merges.txt", "model.safetensors"]) {
      ok(await Deno.stat(join(out, "model", f)).then(() => true, () => false), `model/${f}`);
    }
    const r = await openSafetensors(join(out, "model", "model.safetensors"));
    try {
      ok(
        r.has("lm_head.dense.weight") && r.has("lm_head.layer_norm.bias") && r.has("lm_head.bias"),
      );
      ok(r.has("roberta.embeddings.word_embeddings.weight"));
      ok(!r.has("lm_head.decoder.weight"), "the tied decoder is not written twice");
      ok(!r.names.some((n) => n.startsWith("classifier.")));
    } finally {
      r.close();
    }
    // Fine-tune what pretraining made: the MLM head is dropped and a classifier initialised.
    const sstDir = join(work, "sst2");
    await Deno.mkdir(join(sstDir, "SST-2"), { recursive: true });
    const tsv = (await Deno.readTextFile(SST2)).split("\n").slice(0, 41).join("\n") + "\n";
    await Deno.writeTextFile(join(sstDir, "SST-2", "train.tsv"), tsv);
    await Deno.writeTextFile(join(sstDir, "SST-2", "dev.tsv"), tsv);
    const ft = await train(
      parseRunConfig({
        model: join(out, "model"),
        task: "sst2",
        data: sstDir,
        method: "lora",
        steps: 3,
        batchSize: 8,
        maxLength: 32,
        output: join(work, "ft"),
        offline: true,
      }),
      { progress: false, log: () => {} },
    );
    ok(ft.newlyInitialized.includes("classifier.out_proj.weight"));
    ok(Number.isFinite(ft.final.accuracy));
  },
});

Deno.test({
  name: "mlm: a run stopped after a checkpoint and resumed ends exactly as an uninterrupted one",
  ignore: !present,
  fn: async () => {
    const whole = await train(mlmConfig(join(work, "whole"), { steps: 8, saveInterval: 4 }), {
      progress: false,
      log: () => {},
    });
    const cut = join(work, "cut");
    await rejects(() =>
      train(mlmConfig(cut, { steps: 8, saveInterval: 4 }), {
        progress: false,
        log: () => {},
        onStep: (s) => {
          if (s === 6) throw new Error("stopped at step 6");
        },
      }), /stopped at step 6/);
    const resumed = await train(mlmConfig(cut, { steps: 8, saveInterval: 4 }), {
      resume: true,
      progress: false,
      log: () => {},
    });
    equal(resumed.resumedFrom, 4);
    equal(resumed.finalLoss, whole.finalLoss);
    deepEqual(resumed.final, whole.final);
    deepEqual(
      await Deno.readFile(join(cut, "model", "model.safetensors")),
      await Deno.readFile(join(work, "whole", "model", "model.safetensors")),
    );
  },
});

Deno.test({
  name: "clm: a decoder pretrains on raw text and writes a LlamaForCausalLM folder",
  ignore: !present,
  fn: async () => {
    const out = join(work, "clm");
    const s = await train(
      parseRunConfig({
        model: decoder,
        objective: "clm",
        trainFile: [text],
        method: "full",
        lr: 3e-3,
        steps: 12,
        batchSize: 4,
        maxLength: 48,
        warmupSteps: 0,
        logInterval: 4,
        evalLimit: 4,
        output: out,
        offline: true,
      }),
      { progress: false, log: () => {} },
    );
    const curve = await lossCurve(out);
    ok(curve.at(-1)! < curve[0], `loss ${curve[0]} → ${curve.at(-1)}`);
    ok(s.final.accuracy > 0);
    const cfg = JSON.parse(await Deno.readTextFile(join(out, "model", "config.json")));
    deepEqual(cfg.architectures, ["LlamaForCausalLM"]);
  },
});

Deno.test({
  name: "pretraining refuses wrong combinations with one line naming the flag",
  ignore: !present,
  fn: async () => {
    await rejects(
      () => train(mlmConfig(join(work, "e1"), { trainFile: undefined }), { progress: false }),
      /--objective mlm needs --train-file/,
    );
    await rejects(
      () => train(mlmConfig(join(work, "e2"), { model: decoder }), { progress: false }),
      /no masked-LM head; --objective mlm needs a RoBERTa or BERT encoder/,
    );
    await rejects(
      () => train(mlmConfig(join(work, "e3"), { objective: "clm" }), { progress: false }),
      /--objective clm trains a causal LM.*encoders use --objective mlm/,
    );
    await rejects(
      () => train(mlmConfig(join(work, "e4"), { maxLength: 4096 }), { progress: false }),
      /--max-length 4096: .*config.json allows sequences of at most 512 tokens/,
    );
    const { config } = await configFromArgs([
      "--objective",
      "mlm",
      "--train-file",
      "a.txt,b.jsonl",
      "--from-scratch",
      "--mlm-probability",
      "0.2",
    ]);
    deepEqual(config.trainFile, ["a.txt", "b.jsonl"]);
    equal(config.fromScratch, true);
    equal(config.mlmProbability, 0.2);
    match(
      (() => {
        try {
          parseRunConfig({ objective: "mlm", mlmProbability: 1.5 });
          return "";
        } catch (e) {
          return (e as Error).message;
        }
      })(),
      /mlmProbability/,
    );
  },
});

Deno.test("pretraining: the held-out split takes every 20th block, disjoint from training", () => {
  for (const count of [1, 7, 19, 20, 21, 45, 400]) {
    const { held, trainBlock, heldBlock } = stridedHoldout(count);
    const train = Array.from({ length: count - held }, (_, i) => trainBlock(i));
    const eval_ = Array.from({ length: held }, (_, j) => heldBlock(j));
    const all = [...train, ...eval_].sort((a, b) => a - b);
    deepEqual(all, Array.from({ length: count }, (_, i) => i), `count ${count}`);
    equal(held, count < 20 ? 1 : Math.floor(count / 20), `count ${count}: held`);
    if (count >= 20) ok(eval_.every((b) => b % 20 === 19), `count ${count}: stride`);
  }
});
