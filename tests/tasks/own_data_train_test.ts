/**
 * Own data end to end: a tiny CSV trains the tiny RoBERTa fixture (string labels, label maps in
 * config.json and summary.json) and `evaluate --eval-file` reproduces the run's final scores; a
 * float-label file trains a regression; a tiny Alpaca JSONL trains the real stories260K with
 * reply-only loss and evaluates; early stopping stops at the right step, records it and resumes.
 */
import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import { setup, useTestTokenCache } from "../helpers.ts";
import { makeRobertaFixture } from "../fixtures/make_fixtures.ts";
import { convertLlama2c } from "../../models/llama2c.ts";
import { parseRunConfig } from "../../tasks/lib/train/config.ts";
import { type Summary, train } from "../../tasks/lib/train/trainer.ts";
import { runEvaluation } from "../../tasks/lib/eval/run_eval.ts";

await setup();

const SHARED = new URL("../../../shared/data/", import.meta.url).pathname;
const hasRoberta = await Deno.stat(`${SHARED}tokenizers/roberta-base/vocab.json`).then(
  () => true,
  () => false,
);
const hasStories = await Deno.stat(`${SHARED}models/stories260K/stories260K.bin`).then(
  () => true,
  () => false,
);
const work = await Deno.makeTempDir({ prefix: "own-train-test-" });
useTestTokenCache();
const roberta = join(work, "roberta-tiny");
if (hasRoberta) await makeRobertaFixture(roberta, { seed: 1, initializerRange: 0.1 });
const quiet = { progress: false, log: () => {} };

const REVIEWS = [
  "review,sentiment",
  '"a great, moving film",positive',
  "terrible acting,negative",
  "loved every minute,positive",
  '"boring, slow and ""long""",negative',
  "wonderful cast,positive",
  "awful script,negative",
  "a joy to watch,positive",
  "i want my money back,negative",
].join("\n") + "\n";

Deno.test({
  name: "a tiny own CSV trains the tiny encoder and evaluate --eval-file gives the same scores",
  ignore: !hasRoberta,
  fn: async () => {
    const csv = join(work, "reviews.csv");
    await Deno.writeTextFile(csv, REVIEWS);
    const out = join(work, "run-csv");
    const config = parseRunConfig({
      model: roberta,
      trainFile: csv,
      evalFile: csv,
      textColumn: "review",
      labelColumn: "sentiment",
      method: "lora",
      steps: 4,
      batchSize: 4,
      lr: 5e-3,
      warmupRatio: 0,
      maxLength: 16,
      output: out,
      offline: true,
    });
    equal(config.task, "reviews");
    const summary = await train(config, quiet);
    equal(summary.steps, 4);
    deepEqual(summary.labels, {
      id2label: { "0": "negative", "1": "positive" },
      label2id: { negative: 0, positive: 1 },
      problem_type: "single_label_classification",
    });
    deepEqual(Object.keys(summary.final).sort(), ["accuracy", "f1"]);
    ok(summary.trainSeconds > 0);
    const saved = JSON.parse(await Deno.readTextFile(join(out, "config.json")));
    deepEqual(saved.id2label, { "0": "negative", "1": "positive" });
    // A file whose rows are reordered: the same label ids come from the run's config.json.
    const shuffled = join(work, "reviews-reordered.csv");
    const lines = REVIEWS.trim().split("\n");
    await Deno.writeTextFile(shuffled, [lines[0], ...lines.slice(1).reverse()].join("\n") + "\n");
    const report = await runEvaluation({
      model: roberta,
      adapter: join(out, "adapter"),
      evalFile: shuffled,
      offline: true,
    });
    equal(report.examples, 8);
    equal(report.task, "reviews");
    equal(report.metrics.accuracy, summary.final.accuracy);
    equal(report.metrics.f1, summary.final.f1);
  },
});

Deno.test({
  name: "three classes on a checkpoint with a two-class head: one line saying what to do",
  ignore: !hasRoberta,
  fn: async () => {
    const csv = join(work, "three.csv");
    await Deno.writeTextFile(csv, "text,label\na,x\nb,y\nc,z\n");
    await rejects(
      train(
        parseRunConfig({ model: roberta, trainFile: csv, steps: 1, output: join(work, "r3") }),
        quiet,
      ),
      (e: Error) => {
        equal(e.message.includes("\n"), false, e.message);
        ok(
          /classifier\.out_proj\.weight has shape \[2, 32\].*three has 3 classes, so start from a base checkpoint/
            .test(e.message),
          e.message,
        );
        return true;
      },
    );
  },
});

Deno.test({
  name: "float labels train a regression head (MSE loss, mse / pearson / spearmanr scores)",
  ignore: !hasRoberta,
  fn: async () => {
    const file = join(work, "scores.jsonl");
    const rows = ["good", "bad", "fine", "great", "poor", "okay"].map((t, i) =>
      JSON.stringify({ sentence1: t, sentence2: "film", score: [4.5, 0.5, 3, 5, 1, 2.5][i] })
    );
    await Deno.writeTextFile(file, rows.join("\n") + "\n");
    // A base checkpoint without a classifier (as roberta-base ships): the 1-output head is new.
    const headless = join(work, "roberta-tiny-base");
    await makeRobertaFixture(headless, { seed: 1, withHead: false });
    const summary = await train(
      parseRunConfig({
        model: headless,
        trainFile: file,
        labelColumn: "score",
        method: "lora",
        steps: 3,
        batchSize: 3,
        maxLength: 16,
        output: join(work, "run-reg"),
        offline: true,
      }),
      quiet,
    );
    deepEqual(Object.keys(summary.final).sort(), ["mse", "pearson", "spearmanr"]);
    equal(summary.mainMetric, "pearson");
    equal(summary.labels?.problem_type, "regression");
    ok(Number.isFinite(summary.final.mse));
    // Whole-number scores in a CSV stay a regression: the run's config.json says problem_type.
    const csv = join(work, "scores.csv");
    await Deno.writeTextFile(
      csv,
      "sentence1,sentence2,score\ngood,film,4\nbad,film,1\nfine,film,3\n",
    );
    const report = await runEvaluation({
      model: headless,
      adapter: join(work, "run-reg", "adapter"),
      evalFile: csv,
      offline: true,
    });
    deepEqual(Object.keys(report.metrics).sort(), ["mse", "pearson", "spearmanr"]);
  },
});

Deno.test({
  name: "early stopping stops after `patience` evaluations without improvement, and resumes",
  ignore: !hasRoberta,
  fn: async () => {
    const csv = join(work, "reviews.csv");
    await Deno.writeTextFile(csv, REVIEWS);
    // lr 1e-12: the predictions never change, so no evaluation improves on the first.
    const base = {
      model: roberta,
      trainFile: csv,
      textColumn: "review",
      labelColumn: "sentiment",
      method: "lora",
      steps: 10,
      batchSize: 4,
      lr: 1e-12,
      warmupRatio: 0,
      maxLength: 16,
      evalInterval: 1,
      earlyStoppingPatience: 2,
      offline: true,
    };
    const out = join(work, "run-es");
    const s = await train(parseRunConfig({ ...base, output: out }), quiet);
    equal(s.steps, 3, "evaluations at 1 (best), 2 and 3 (no improvement) → stop at 3");
    deepEqual(s.earlyStopping, { patience: 2, threshold: 0, stoppedAt: 3 });
    const evals = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((r) => r.eval);
    deepEqual(evals.map((r) => r.step), [1, 2, 3]);
    // Killed after step 2's evaluation and checkpoint, the resumed run still stops at 3.
    const out2 = join(work, "run-es-resume");
    const config2 = parseRunConfig({ ...base, output: out2 });
    await train(config2, {
      ...quiet,
      onStep: (step) => {
        if (step === 2) throw new Error("killed");
      },
    }).then(() => {
      throw new Error("expected the kill");
    }, (e: Error) => equal(e.message, "killed"));
    const resumed: Summary = await train(config2, { ...quiet, resume: true });
    equal(resumed.resumedFrom, 2);
    equal(resumed.steps, 3);
    equal(resumed.earlyStopping?.stoppedAt, 3);
    // Killed right after the stopping evaluation's checkpoint: the resume writes the run's
    // files from it, without evaluating (or logging an evaluation) again.
    const out3 = join(work, "run-es-killed-at-stop");
    const config3 = parseRunConfig({ ...base, output: out3 });
    await train(config3, {
      ...quiet,
      onStep: (step) => {
        if (step === 3) throw new Error("killed");
      },
    }).catch((e: Error) => equal(e.message, "killed"));
    const again = await train(config3, { ...quiet, resume: true });
    equal(again.steps, 3);
    deepEqual(again.final, s.final);
    const rows = (await Deno.readTextFile(join(out3, "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((r) => r.eval);
    deepEqual(rows.map((r) => r.step), [1, 2, 3]);
    // No stop without patience running out: patience 5 over 4 steps trains to the end.
    const full = await train(
      parseRunConfig({
        ...base,
        steps: 4,
        earlyStoppingPatience: 5,
        output: join(work, "run-es-full"),
      }),
      quiet,
    );
    equal(full.steps, 4);
    equal(full.earlyStopping?.stoppedAt, null);
  },
});

Deno.test({
  name: "a tiny Alpaca JSONL trains stories260K with reply-only loss; evaluate gives its loss",
  ignore: !hasStories,
  fn: async () => {
    const model = join(work, "stories");
    await convertLlama2c({
      checkpoint: `${SHARED}models/stories260K/stories260K.bin`,
      tokenizer: `${SHARED}models/stories260K/tok512.bin`,
      output: model,
    });
    const file = join(work, "tiny-alpaca.jsonl");
    const records = [
      { instruction: "Who found the ball?", input: "", output: "Lily found the ball." },
      { instruction: "What did Tom eat?", input: "", output: "Tom ate a red apple." },
      { instruction: "Say the colour.", input: "The sky", output: "The sky is blue." },
      { instruction: "Who was sad?", input: "", output: "The little dog was sad." },
    ];
    await Deno.writeTextFile(file, records.map((r) => JSON.stringify(r)).join("\n") + "\n");
    const out = join(work, "run-alpaca");
    const summary = await train(
      parseRunConfig({
        model,
        trainFile: file,
        evalFile: file,
        method: "lora",
        steps: 4,
        batchSize: 2,
        lr: 1e-2,
        warmupRatio: 0,
        maxLength: 256,
        output: out,
        offline: true,
      }),
      quiet,
    );
    equal(summary.task, "tiny-alpaca");
    equal(summary.mainMetric, "loss");
    ok(summary.final.loss > 0 && Number.isFinite(summary.final.loss));
    ok(Math.abs(summary.final.perplexity - Math.exp(summary.final.loss)) < 1e-9);
    const report = await runEvaluation({
      model,
      adapter: join(out, "adapter"),
      evalFile: file,
      offline: true,
    });
    equal(report.examples, 4);
    ok(
      Math.abs(report.metrics.loss - summary.final.loss) < 1e-5,
      `evaluate ${report.metrics.loss} vs train ${summary.final.loss}`,
    );
    // The base model (no adapter) scores the replies worse than the trained adapter.
    const base = await runEvaluation({ model, evalFile: file, offline: true });
    ok(base.metrics.loss > report.metrics.loss, `${base.metrics.loss} > ${report.metrics.loss}`);
  },
});
