/**
 * Outputs that open anywhere: a full fine-tuning run writes `model/`, a complete Hugging Face
 * model folder (config.json with the task's labels and the transformers class, model.safetensors
 * with transformers' names, the tokenizer files) that the loader, `evaluate` and `merge` open
 * with the same logits; `merge` folds every registered method's output into the base weights
 * with the logits of the adapted model; `generate --adapter` equals generating with the merged
 * model; saved configs name a local base model by its absolute path.
 *
 * Models: the tiny random RoBERTa (real roberta-base tokenizer) and the tiny LLaMA (the real
 * stories260K tokenizer) of tests/fixtures; data: real SST-2 sentences from ../shared/data.
 */
import { deepStrictEqual, equal, notDeepStrictEqual, ok, rejects } from "node:assert/strict";
import { isAbsolute, join, relative } from "node:path";
import { setup, useTestTokenCache } from "../helpers.ts";
import { makeLlamaFixture, makeRobertaFixture } from "../fixtures/make_fixtures.ts";
import { parseRunConfig } from "../../tasks/lib/train/config.ts";
import { train } from "../../tasks/lib/train/trainer.ts";
import { mergeAdapter } from "../../tasks/lib/output/merge.ts";
import { labelFields } from "../../tasks/lib/output/model_folder.ts";
import { runEvaluation } from "../../tasks/lib/eval/run_eval.ts";
import { generateText } from "../../tasks/lib/eval/generate.ts";
import { loadModel } from "../../models/load.ts";
import { openSafetensors, writeSafetensors } from "../../models/safetensors.ts";
import type { EncoderForSequenceClassification } from "../../models/encoder.ts";
import { loadTokenizer, type Tokenizer } from "../../models/tokenizer.ts";
import { applyMethod, loadAdapter, METHODS } from "../../methods/registry.ts";
import { writeInto } from "../../methods/peft.ts";
import { noGrad, tensor } from "../../ops/mod.ts";

await setup();

const SHARED = new URL("../../../shared/data/", import.meta.url).pathname;
const SST2 = `${SHARED}glue/tsv/SST-2/`;
const present = await Deno.stat(`${SST2}train.tsv`).then(() => true, () => false) &&
  await Deno.stat(`${SHARED}models/stories260K/tok512.bin`).then(() => true, () => false);
const work = await Deno.makeTempDir({ prefix: "output-test-" });
useTestTokenCache();

const base = join(work, "roberta-tiny");
const data = join(work, "sst2");
const SENTENCES = ["a gripping , funny film", "dull and lifeless", "it works", "not bad at all"];

if (present) {
  await makeRobertaFixture(base, { seed: 2, initializerRange: 0.1 });
  const lines = (await Deno.readTextFile(`${SST2}train.tsv`)).split("\n");
  const rows = lines.slice(1).filter((l) => l.split("\t")[0].split(" ").length <= 10).slice(0, 16);
  await Deno.mkdir(join(data, "SST-2"), { recursive: true });
  const text = [lines[0], ...rows].join("\n") + "\n";
  await Deno.writeTextFile(join(data, "SST-2", "train.tsv"), text);
  await Deno.writeTextFile(join(data, "SST-2", "dev.tsv"), text);
}

/** Settings shared by the runs: tiny, fast, and with a learning rate that moves the weights. */
function runConfig(output: string, extra: Record<string, unknown> = {}) {
  return parseRunConfig({
    model: base,
    task: "sst2",
    data,
    method: "full",
    lr: 5e-3,
    steps: 3,
    batchSize: 8,
    maxLength: 16,
    warmupRatio: 0,
    logInterval: 1,
    evalBatchSize: 16,
    output,
    offline: true,
    ...extra,
  });
}

const quiet = { progress: false, log: () => {} };

/** SENTENCES as one padded batch: ids and mask row-major [b, t]. */
function encodeSentences(tok: Tokenizer) {
  const rows = SENTENCES.map((s) => tok.encode(s).ids);
  const t = Math.max(...rows.map((r) => r.length));
  const pad = tok.padId ?? 1;
  const ids = Int32Array.from(rows.flatMap((r) => [...r, ...Array(t - r.length).fill(pad)]));
  const mask = Float32Array.from(
    rows.flatMap((r) => [...r.map(() => 1), ...Array(t - r.length).fill(0)]),
  );
  return { ids, mask, b: rows.length, t };
}

/** Logits [B, labels] of an encoder on fixed sentences (padded to one length). */
async function encoderLogits(dir: string, adapter?: string): Promise<number[]> {
  const tok = await loadTokenizer(dir);
  const loaded = await loadModel(dir, { numLabels: 2, classificationHead: true });
  try {
    if (adapter) {
      await loadAdapter(loaded.model, adapter, {
        lrMultipliers: {},
        weightDecay: 0,
        taskType: "SEQ_CLS",
        baseModel: dir,
        seed: 0,
      });
    }
    const { ids, mask, b, t } = encodeSentences(tok);
    const model = loaded.model as EncoderForSequenceClassification;
    const out = noGrad(() =>
      model.forward({
        ids: tensor(ids, [b, t]),
        attentionMask: tensor(mask, [b, t]),
      }).keep()
    );
    const values = [...(await out.read())];
    out.dispose();
    return values;
  } finally {
    loaded.model.dispose();
  }
}

function assertClose(a: number[], b: number[], tol: number, what: string): void {
  equal(a.length, b.length, `${what}: lengths`);
  const worst = Math.max(...a.map((v, i) => Math.abs(v - b[i])));
  ok(worst <= tol, `${what}: max |Δ| ${worst.toExponential(2)} > ${tol}`);
}

async function tensorNames(file: string): Promise<string[]> {
  const r = await openSafetensors(file);
  try {
    return [...r.names].sort();
  } finally {
    r.close();
  }
}

Deno.test({
  name: "full FT writes model/: HF config + names + tokenizer; load, evaluate and merge agree",
  ignore: !present,
  fn: async () => {
    const run = join(work, "full");
    const summary = await train(runConfig(run), quiet);
    const model = join(run, "model");
    const config = JSON.parse(await Deno.readTextFile(join(model, "config.json")));
    deepStrictEqual(config.architectures, ["RobertaForSequenceClassification"]);
    deepStrictEqual(config.id2label, { "0": "negative", "1": "positive" });
    deepStrictEqual(config.label2id, { negative: 0, positive: 1 });
    equal(
      config.num_labels,
      undefined,
      "num_labels is derived from id2label, as transformers does",
    );
    equal(config.model_type, "roberta");
    equal(config._name_or_path, base, "the base model's absolute folder");
    for (const f of ["vocab.json", "merges.txt", "model.safetensors"]) {
      ok(await Deno.stat(join(model, f)).then(() => true, () => false), `model/${f}`);
    }
    ok(!(await Deno.stat(join(run, "adapter")).then(() => true, () => false)), "no adapter/");
    // transformers' names: exactly the tensors of the base checkpoint (HF layout), all of them.
    deepStrictEqual(
      await tensorNames(join(model, "model.safetensors")),
      await tensorNames(join(base, "model.safetensors")),
    );
    const trained = await encoderLogits(model);
    const before = await encoderLogits(base);
    notDeepStrictEqual(trained, before, "training changed the model");
    // evaluate opens model/ as a model and scores it as the run's final evaluation did.
    const report = await runEvaluation({
      model,
      task: "sst2",
      data,
      offline: true,
      batchSize: 16,
      maxLength: 16,
    });
    equal(report.main, summary.final.accuracy);
    // merge from the run folder (its model/) and from best/ (the own format) give the same model.
    const fromRun = join(work, "merged-full-run");
    equal((await mergeAdapter(base, run, fromRun, true)).kind, "model");
    deepStrictEqual(await encoderLogits(fromRun), trained);
    const fromBest = join(work, "merged-full-best");
    equal((await mergeAdapter(base, join(run, "best"), fromBest, true)).kind, "adapter");
    deepStrictEqual(await encoderLogits(fromBest), trained);
    const merged = JSON.parse(await Deno.readTextFile(join(fromBest, "config.json")));
    deepStrictEqual(merged.id2label, config.id2label, "merge keeps the run's labels");
    // evaluate --adapter on a model folder says what to do instead.
    await rejects(
      runEvaluation({ model: base, adapter: model, task: "sst2", data, offline: true }),
      /complete model folder.*--model/,
    );
  },
});

const hasTorch = await new Deno.Command("/usr/bin/python3", {
  args: ["-c", "import torch"],
  stdout: "null",
  stderr: "null",
}).output().then((r) => r.success, () => false);

Deno.test({
  name: "model/ passes check_hf_model.py (transformers' names and config; logits in float64 torch)",
  ignore: !present || !hasTorch,
  fn: async () => {
    const run = join(work, "full-py");
    await train(runConfig(run), quiet);
    const model = join(run, "model");
    const { ids, mask, b, t } = encodeSentences(await loadTokenizer(model));
    const rows = <T>(a: ArrayLike<T>) =>
      Array.from({ length: b }, (_, i) => Array.from(a).slice(i * t, (i + 1) * t));
    const expected = join(work, "expected.json");
    await Deno.writeTextFile(
      expected,
      JSON.stringify({
        sentences: SENTENCES,
        ids: rows(ids),
        mask: rows(mask),
        logits: await encoderLogits(model),
      }),
    );
    const script = new URL("./check_hf_model.py", import.meta.url).pathname;
    const check = (dir: string) =>
      new Deno.Command("/usr/bin/python3", { args: [script, dir, expected] }).output();
    const good = await check(model);
    const text = new TextDecoder().decode(good.stdout) + new TextDecoder().decode(good.stderr);
    ok(good.success, text);
    // The check can fail: a folder whose tensors lost the architecture prefix is rejected.
    const bad = join(work, "bad-names");
    await Deno.mkdir(bad);
    await Deno.copyFile(join(model, "config.json"), join(bad, "config.json"));
    const r = await openSafetensors(join(model, "model.safetensors"));
    const entries = [];
    for (const n of r.names) {
      entries.push({
        name: n.replace(/^roberta\./, ""),
        dtype: "F32" as const,
        shape: [...r.info(n).shape],
        data: await r.readF32(n),
      });
    }
    r.close();
    await writeSafetensors(join(bad, "model.safetensors"), entries, { format: "pt" });
    const rejected = await check(bad);
    ok(
      !rejected.success &&
        new TextDecoder().decode(rejected.stderr).includes("tensor names differ"),
    );
  },
});

/** Options that make each method train in 3 steps on the 2-layer fixture. */
const OPTIONS: Record<string, Record<string, unknown>> = {
  lora: { r: 4, alpha: 8 },
  rslora: { r: 4, alpha: 8 },
  dora: { r: 4, alpha: 8 },
  pissa: { r: 4, alpha: 8 },
  olora: { r: 4, alpha: 8 },
  loraplus: { r: 4, alpha: 8 },
  loraga: { r: 4, alpha: 8, batches: 1 },
  eva: { r: 4, alpha: 8, maxBatches: 2 },
  adalora: { initR: 6, targetR: 4, alpha: 8, tinit: 1, tfinal: 1, deltaT: 1 },
  vera: { r: 8 },
  galore: { rank: 4, updateProjGap: 2 },
  lisa: { layers: 1, interval: 2 },
  sift: { density: 0.05 },
};

for (const method of Object.keys(METHODS)) {
  Deno.test({
    name: `merge folds ${method}'s output into the base weights with the adapted model's logits`,
    ignore: !present,
    fn: async () => {
      const run = join(work, `m-${method}`);
      await train(
        runConfig(run, { method, methodOptions: OPTIONS[method] ?? {}, evalLimit: 4 }),
        quiet,
      );
      const merged = join(work, `merged-${method}`);
      const r = await mergeAdapter(base, run, merged, true);
      const changes = METHODS[method].changesBaseWeights === true;
      equal(r.kind, changes ? "model" : "adapter", "model/ is used when the run wrote one");
      const config = JSON.parse(await Deno.readTextFile(join(merged, "config.json")));
      deepStrictEqual(config.architectures, ["RobertaForSequenceClassification"]);
      deepStrictEqual(config.id2label, { "0": "negative", "1": "positive" });
      const after = await encoderLogits(merged);
      notDeepStrictEqual(after, await encoderLogits(base), `${method} changed the model`);
      if (method !== "full") {
        // The adapter applied unmerged (its own layers) is the reference for the merged weights.
        assertClose(after, await encoderLogits(base, join(run, "adapter")), 1e-4, method);
      }
      if (changes) {
        deepStrictEqual(after, await encoderLogits(join(run, "model")), "model/ is the merge");
      }
      if (!changes) {
        const saved = JSON.parse(
          await Deno.readTextFile(join(run, "adapter", "adapter_config.json")),
        );
        ok(isAbsolute(saved.base_model_name_or_path), saved.base_model_name_or_path);
      }
    },
  });
}

Deno.test({
  name: "a relative --model is saved as its absolute path (adapter_config.json)",
  ignore: !present,
  fn: async () => {
    const run = join(work, "relative");
    await train(
      runConfig(run, { model: relative(Deno.cwd(), base), method: "lora", steps: 1 }),
      quiet,
    );
    const saved = JSON.parse(await Deno.readTextFile(join(run, "adapter", "adapter_config.json")));
    equal(saved.base_model_name_or_path, base);
  },
});

Deno.test({
  name: "generate --adapter equals generating with the merged model, and differs from the base",
  ignore: !present,
  fn: async () => {
    const llama = join(work, "llama-tiny");
    await makeLlamaFixture(llama, { seed: 4 });
    const loaded = await loadModel(llama);
    const adapterDir = join(work, "llama-lora");
    try {
      const a = applyMethod("lora", loaded.model, { r: 4, alpha: 16 }, {
        targets: ["q_proj", "v_proj"],
        lrMultipliers: {},
        weightDecay: 0,
        headModules: [],
        taskType: "CAUSAL_LM",
        baseModel: llama,
        seed: 1,
      });
      // A trained-looking update: B away from its zero start.
      let k = 0;
      for (const g of a.groups()) {
        for (const t of g.params) {
          writeInto(t, Float32Array.from({ length: t.size }, () => Math.sin(++k) * 0.5));
        }
      }
      await a.save(adapterDir);
    } finally {
      loaded.model.dispose();
    }
    const options = { prompt: "Once upon a time", maxNewTokens: 12, temperature: 0 };
    const adapted = await generateText({ ...options, model: llama, adapter: adapterDir });
    const merged = join(work, "llama-merged");
    equal((await mergeAdapter(llama, adapterDir, merged, true)).kind, "adapter");
    const config = JSON.parse(await Deno.readTextFile(join(merged, "config.json")));
    deepStrictEqual(config.architectures, ["LlamaForCausalLM"]);
    equal(config.id2label, undefined, "a causal LM has no labels");
    const viaMerge = await generateText({ ...options, model: merged });
    deepStrictEqual(adapted.tokens, viaMerge.tokens);
    const plain = await generateText({ ...options, model: llama });
    notDeepStrictEqual(adapted.tokens, plain.tokens, "the adapter changes the continuation");
  },
});

Deno.test({
  name: "own data: full FT's model/ carries the file's label set (id2label as the run found it)",
  ignore: !present,
  fn: async () => {
    const csv = join(work, "own.csv");
    await Deno.writeTextFile(
      csv,
      "text,mood\nwhat a delight,happy\nso dull,bored\nutterly tedious,bored\npure joy,happy\n",
    );
    const run = join(work, "own-full");
    const summary = await train(
      parseRunConfig({
        model: base,
        trainFile: csv,
        textColumn: "text",
        labelColumn: "mood",
        method: "full",
        steps: 2,
        batchSize: 4,
        maxLength: 16,
        output: run,
        offline: true,
      }),
      quiet,
    );
    const config = JSON.parse(await Deno.readTextFile(join(run, "model", "config.json")));
    deepStrictEqual(config.id2label, summary.labels?.id2label, "the run's own label map");
    deepStrictEqual(Object.values(config.id2label).sort(), ["bored", "happy"]);
    deepStrictEqual(config.architectures, ["RobertaForSequenceClassification"]);
  },
});

Deno.test("labelFields: transformers' id2label/label2id, regression as one generic label", () => {
  deepStrictEqual(labelFields({ labels: ["unacceptable", "acceptable"] }), {
    id2label: { "0": "unacceptable", "1": "acceptable" },
    label2id: { unacceptable: 0, acceptable: 1 },
    problem_type: "single_label_classification",
  });
  deepStrictEqual(labelFields({ labels: [], regression: true }), {
    id2label: { "0": "LABEL_0" },
    label2id: { LABEL_0: 0 },
    problem_type: "regression",
  });
});

Deno.test({
  name: "a LLaMA's model/: LlamaForSequenceClassification on SST-2, LlamaForCausalLM on BoolQ",
  ignore: !present,
  fn: async () => {
    const llama = join(work, "llama-cls");
    await makeLlamaFixture(llama, { seed: 5 });
    const cls = join(work, "llama-sst2");
    const summary = await train(runConfig(cls, { model: llama, steps: 2 }), quiet);
    const config = JSON.parse(await Deno.readTextFile(join(cls, "model", "config.json")));
    deepStrictEqual(config.architectures, ["LlamaForSequenceClassification"]);
    deepStrictEqual(config.id2label, { "0": "negative", "1": "positive" });
    ok((await tensorNames(join(cls, "model", "model.safetensors"))).includes("score.weight"));
    const report = await runEvaluation({
      model: join(cls, "model"),
      task: "sst2",
      data,
      offline: true,
      batchSize: 16,
      maxLength: 16,
    });
    equal(report.main, summary.final.accuracy, "evaluate scores model/ as the run did");
    const lm = join(work, "llama-boolq");
    await train(
      runConfig(lm, {
        model: llama,
        task: "boolq",
        data: `${SHARED}commonsense`,
        steps: 2,
        maxLength: 64,
        trainLimit: 8,
        evalLimit: 2,
        maxNewTokens: 4,
      }),
      quiet,
    );
    const lmConfig = JSON.parse(await Deno.readTextFile(join(lm, "model", "config.json")));
    deepStrictEqual(lmConfig.architectures, ["LlamaForCausalLM"]);
    equal(lmConfig.id2label, undefined);
    const fromModel = await generateText({
      model: join(lm, "model"),
      prompt: "Once upon a time",
      maxNewTokens: 6,
    });
    equal(fromModel.tokens.length > 0, true, "generate opens model/");
  },
});

globalThis.addEventListener("unload", () => {
  Deno.removeSync(work, { recursive: true });
});
