/**
 * `deno task train [--config run.yaml] [flags]` — fine-tune a model on a task with a method.
 *
 * With no flags it runs the quick-start default: roberta-base + LoRA on SST-2, downloaded into
 * the Hugging Face cache on first use. Flags override the YAML file; both are validated.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  parseList,
  parseMultipliers,
  parseRunConfig,
  readRunYaml,
  type RunConfig,
} from "./lib/train/config.ts";
import { train } from "./lib/train/trainer.ts";

const USAGE = `usage: deno task train [--config FILE.yaml] [options]

  --model REPO|DIR        Hugging Face repo id or local folder (default FacebookAI/roberta-base)
  --task NAME             sst2, cola, mrpc, qqp, stsb, mnli, qnli, rte, wnli, boolq, piqa, …
  --data DIR              local data folder (GLUE parquet/TSV root, or commonsense root)
  --method NAME           full, lora, rslora, …  (default lora)
  --targets a,b           modules to adapt (default query,value or q_proj,v_proj)
  --rank R --alpha A --lora-dropout P --rslora       LoRA options
  --method-options JSON   any method options as JSON
  --lr X  --lr-multipliers value=4,key=2
  --wv-lr-ratio L         the seed paper's W_v rule: L·lr for value/v_proj and every 1-D tensor
  --epochs N | --steps N  --batch-size N  --grad-accum N  --max-length N
  --warmup-ratio X | --warmup-steps N  --schedule linear|cosine|constant
  --weight-decay X  --max-grad-norm X  --seed N
  --eval-interval N  --log-interval N  --save-interval N  --eval-batch-size N
  --train-limit N  --eval-limit N  --frozen-dtype f32|f16
  --eval-mode generate|loglik  --max-new-tokens N
  --output DIR  --offline  --resume
  --objective mlm|clm     pretrain on raw text instead of a task (masked LM for encoders,
                          causal LM for decoders); with --train-file a.txt,b.jsonl [--eval-file F]
                          [--text-column text] [--mlm-probability 0.15] [--from-scratch]
                          [--tokenizer REPO|DIR] (when the model folder has only config.json)`;

const NUMBER_FLAGS: Record<string, keyof RunConfig> = {
  lr: "lr",
  "wv-lr-ratio": "wvLrRatio",
  epochs: "epochs",
  steps: "steps",
  "batch-size": "batchSize",
  "grad-accum": "gradAccum",
  "max-length": "maxLength",
  "warmup-ratio": "warmupRatio",
  "warmup-steps": "warmupSteps",
  "weight-decay": "weightDecay",
  "max-grad-norm": "maxGradNorm",
  seed: "seed",
  "eval-interval": "evalInterval",
  "log-interval": "logInterval",
  "save-interval": "saveInterval",
  "train-limit": "trainLimit",
  "eval-limit": "evalLimit",
  "eval-batch-size": "evalBatchSize",
  "max-new-tokens": "maxNewTokens",
  "mlm-probability": "mlmProbability",
};

const STRING_FLAGS: Record<string, keyof RunConfig> = {
  model: "model",
  task: "task",
  data: "data",
  method: "method",
  schedule: "schedule",
  "frozen-dtype": "frozenDtype",
  "eval-mode": "evalMode",
  output: "output",
  objective: "objective",
  "text-column": "textColumn",
  tokenizer: "tokenizer",
};

/** Build a RunConfig from command-line arguments (and the YAML file they name). */
export async function configFromArgs(
  args: string[],
): Promise<{ config: RunConfig; resume: boolean }> {
  const options: Record<string, { type: "string" | "boolean" }> = {
    config: { type: "string" },
    targets: { type: "string" },
    "lr-multipliers": { type: "string" },
    "method-options": { type: "string" },
    rank: { type: "string" },
    alpha: { type: "string" },
    "lora-dropout": { type: "string" },
    rslora: { type: "boolean" },
    "train-file": { type: "string" },
    "eval-file": { type: "string" },
    "from-scratch": { type: "boolean" },
    offline: { type: "boolean" },
    resume: { type: "boolean" },
    help: { type: "boolean" },
  };
  for (const f of [...Object.keys(NUMBER_FLAGS), ...Object.keys(STRING_FLAGS)]) {
    options[f] = { type: "string" };
  }
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args, options, strict: true }).values;
  } catch (e) {
    throw new Error(`${e instanceof Error ? e.message : e}\n${USAGE}`);
  }
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const raw: Record<string, unknown> = values.config
    ? await readRunYaml(String(values.config))
    : {};
  const source = values.config ? `${values.config} + flags` : "flags";
  for (const [flag, key] of Object.entries(NUMBER_FLAGS)) {
    const v = values[flag];
    if (v === undefined) continue;
    const n = Number(v);
    if (v === "" || !Number.isFinite(n)) {
      throw new Error(`--${flag}: expected a number, got "${v}"`);
    }
    raw[key] = n;
  }
  for (const [flag, key] of Object.entries(STRING_FLAGS)) {
    if (values[flag] !== undefined) raw[key] = values[flag];
  }
  if (values.targets) raw.targets = parseList(String(values.targets));
  if (values["lr-multipliers"]) {
    raw.lrMultipliers = parseMultipliers(String(values["lr-multipliers"]));
  }
  if (values.offline) raw.offline = true;
  if (values["from-scratch"]) raw.fromScratch = true;
  for (const [flag, key] of [["train-file", "trainFile"], ["eval-file", "evalFile"]] as const) {
    if (values[flag] === undefined) continue;
    const files = parseList(String(values[flag]));
    raw[key] = files.length === 1 ? files[0] : files;
  }
  const methodOptions: Record<string, unknown> = {
    ...(raw.methodOptions as Record<string, unknown> ?? {}),
  };
  if (values["method-options"]) {
    try {
      Object.assign(methodOptions, JSON.parse(String(values["method-options"])));
    } catch {
      throw new Error(`--method-options: expected a JSON object, got ${values["method-options"]}`);
    }
  }
  const num = (flag: string) => {
    const n = Number(values[flag]);
    if (!Number.isFinite(n)) throw new Error(`--${flag}: expected a number, got "${values[flag]}"`);
    return n;
  };
  if (values.rank !== undefined) methodOptions.r = num("rank");
  if (values.alpha !== undefined) methodOptions.alpha = num("alpha");
  if (values["lora-dropout"] !== undefined) methodOptions.dropout = num("lora-dropout");
  if (values.rslora) methodOptions.rslora = true;
  raw.methodOptions = methodOptions;
  return { config: parseRunConfig(raw, source), resume: values.resume === true };
}

if (import.meta.main) {
  try {
    const { config, resume } = await configFromArgs(Deno.args);
    const summary = await train(config, { resume });
    const fmt = (s: Record<string, number>) =>
      Object.entries(s).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(", ");
    console.log(
      `\n${summary.method} · ${summary.task} · ${summary.model}\n` +
        `  final: ${fmt(summary.final)}\n  best (step ${summary.bestStep}): ${
          fmt(summary.best)
        }\n` +
        `  final loss ${
          summary.finalLoss.toFixed(4)
        } · ${summary.trainableParams.toLocaleString()} trainable ` +
        `params · ${Math.round(summary.tokensPerSecond)} tokens/s · peak memory ` +
        `${(summary.memory.peakTotal / 2 ** 20).toFixed(1)} MiB\n  run files: ${config.output}`,
    );
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
