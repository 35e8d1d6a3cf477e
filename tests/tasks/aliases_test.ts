/**
 * Hugging Face Trainer / PEFT / LLaMA-Factory setting names map onto ours in YAML files, flags'
 * configs and plain objects; unknown keys answer with the closest known name.
 */
import { deepEqual, equal, throws } from "node:assert/strict";
import { join } from "node:path";
import {
  ALIASES,
  canonicalKeys,
  editDistance,
  RUN_KEYS,
  suggestKey,
} from "../../tasks/lib/train/aliases.ts";
import { parseRunConfig, RunConfigSchema } from "../../tasks/lib/train/config.ts";
import { configFromArgs } from "../../tasks/train.ts";
import { expandSweep, parseSweep } from "../../tasks/lib/sweep/sweep.ts";

Deno.test("the alias table's targets and RUN_KEYS are the schema's fields", () => {
  deepEqual([...RUN_KEYS].sort(), Object.keys(RunConfigSchema.shape).sort());
  for (const [alias, target] of Object.entries(ALIASES)) {
    const head = target.split(".")[0];
    equal(RUN_KEYS.includes(head), true, `${alias} → ${target}`);
  }
});

Deno.test("Trainer and LLaMA-Factory names give the same config as ours", () => {
  const hf = parseRunConfig({
    model_name_or_path: "m",
    learning_rate: 2e-4,
    num_train_epochs: 2,
    per_device_train_batch_size: 4,
    per_device_eval_batch_size: 8,
    gradient_accumulation_steps: 2,
    warmup_ratio: 0.1,
    weight_decay: 0.05,
    max_grad_norm: 0.5,
    lr_scheduler_type: "cosine",
    seed: 7,
    eval_steps: 50,
    logging_steps: 5,
    output_dir: "out",
    lora_rank: 16,
    lora_alpha: 32,
    lora_dropout: 0.05,
    lora_target: "q_proj, v_proj",
    cutoff_len: 256,
    max_steps: -1,
    warmup_steps: 0,
    early_stopping_patience: 3,
  });
  const ours = parseRunConfig({
    model: "m",
    lr: 2e-4,
    epochs: 2,
    batchSize: 4,
    evalBatchSize: 8,
    gradAccum: 2,
    warmupRatio: 0.1,
    weightDecay: 0.05,
    maxGradNorm: 0.5,
    schedule: "cosine",
    seed: 7,
    evalInterval: 50,
    logInterval: 5,
    output: "out",
    methodOptions: { r: 16, alpha: 32, dropout: 0.05 },
    targets: ["q_proj", "v_proj"],
    maxLength: 256,
    earlyStoppingPatience: 3,
  });
  deepEqual(hf, ours);
  // snake_case and kebab-case spellings of our own keys work as well.
  deepEqual(canonicalKeys({ batch_size: 4, "grad-accum": 2, eval_limit: 9 }), {
    batchSize: 4,
    gradAccum: 2,
    evalLimit: 9,
  });
  equal(parseRunConfig({ max_steps: 30 }).steps, 30);
  equal(parseRunConfig({ lr_scheduler_type: "constant_with_warmup" }).schedule, "constant");
});

Deno.test("unknown keys answer with did-you-mean; conflicting spellings are one error", () => {
  equal(editDistance("kitten", "sitting"), 3);
  equal(suggestKey("learning_rat"), "learning_rate");
  equal(suggestKey("lora_alfa"), "lora_alpha");
  equal(suggestKey("batchsize"), "batchSize");
  equal(suggestKey("completely_unrelated_thing"), null);
  throws(
    () => parseRunConfig({ learnig_rate: 1e-3 }, "run.yaml"),
    /^Error: run\.yaml: unknown key "learnig_rate"; did you mean "learning_rate"\?$/,
  );
  throws(() => parseRunConfig({ epoch: 3 }, "run.yaml"), /did you mean "epochs"\?/);
  throws(
    () => parseRunConfig({ do_train: true }, "run.yaml"),
    /run\.yaml: unknown key "do_train"; expected one of model, task/,
  );
  throws(
    () => parseRunConfig({ lr: 1e-3, learning_rate: 2e-3 }, "run.yaml"),
    /run\.yaml: "learning_rate" and "lr" both set lr; keep one/,
  );
  throws(
    () => parseRunConfig({ lora_rank: 8, methodOptions: { r: 4 } }, "run.yaml"),
    /both set methodOptions\.r/,
  );
  throws(
    () => parseRunConfig({ lr_scheduler_type: "polynomial" }, "run.yaml"),
    /run\.yaml: "lr_scheduler_type": "polynomial" is not supported; expected one of linear/,
  );
  // LLaMA-Factory's "all" and PEFT's "all-linear" select every Linear but the heads.
  deepEqual(parseRunConfig({ lora_target: "all" }, "run.yaml").targets, ["all-linear"]);
  deepEqual(parseRunConfig({ target_modules: "all-linear" }, "run.yaml").targets, ["all-linear"]);
  throws(
    () => parseRunConfig({ earlyStoppingPatience: 2 }, "run.yaml"),
    /run\.yaml: field "earlyStoppingPatience": needs evaluations during training/,
  );
});

Deno.test("a YAML file with Trainer names, overridden by flags", async () => {
  const dir = await Deno.makeTempDir({ prefix: "aliases-test-" });
  const file = join(dir, "run.yaml");
  await Deno.writeTextFile(
    file,
    "learning_rate: 1.0e-4\nper_device_train_batch_size: 8\nlora_r: 4\ntrain_file: data.csv\n" +
      "text_column: review\n",
  );
  const { config } = await configFromArgs(["--config", file, "--batch-size", "2", "--rank", "16"]);
  equal(config.lr, 1e-4);
  equal(config.batchSize, 2);
  equal(config.methodOptions.r, 16);
  equal(config.trainFile, "data.csv");
  equal(config.textColumn, "review");
  equal(config.task, "data", "own data without a task is named after its file");
  await Deno.writeTextFile(file, "num_train_epoch: 2\n");
  await configFromArgs(["--config", file]).then(
    () => {
      throw new Error("expected an error");
    },
    (e: Error) =>
      equal(e.message, `${file}: unknown key "num_train_epoch"; did you mean "num_train_epochs"?`),
  );
});

Deno.test("sweeps take the same names, and own data needs no built-in task", () => {
  const plan = expandSweep(parseSweep(
    [
      "name: own",
      "output: runs/own",
      "base:",
      "  model: m",
      "  train_file: data/reviews.csv",
      "  text_column: review",
      "  max_steps: 3",
      "grid:",
      "  learning_rate: [1.0e-3, 2.0e-3]",
      "  lora_rank: [4, 8]",
    ].join("\n"),
    "own.yaml",
  ));
  equal(plan.cells.length, 4);
  const c = plan.cells[3].config;
  equal(c.task, "reviews");
  equal(c.trainFile, "data/reviews.csv");
  equal(c.textColumn, "review");
  equal(c.steps, 3);
  equal(c.lr, 2e-3);
  equal(c.methodOptions.r, 8);
  throws(
    () => parseSweep("name: x\noutput: o\nbase:\n  learnin_rate: 1\n", "x.yaml"),
    /x\.yaml:4: field "base\.learnin_rate": unknown run setting "learnin_rate"; did you mean "learning_rate"\?/,
  );
});
