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
import { canonicalKeys } from "./lib/train/aliases.ts";
import { formatSeconds } from "./lib/cli/progress.ts";

const USAGE = `usage: deno task train [--config FILE.yaml] [options]

  --model REPO|DIR        Hugging Face repo id or local folder (default FacebookAI/roberta-base)
  --task NAME             sst2, cola, mrpc, qqp, stsb, mnli, qnli, rte, wnli, boolq, piqa, …
  --data DIR              local data folder (GLUE parquet/TSV root, commonsense root, or a
                          Hugging Face datasets folder of your own data)
  --train-file F [--eval-file F]   your own data: .jsonl .json .csv .tsv .parquet
  --text-column C  --text-pair-column C  --label-column C   classification columns
  --format alpaca|sharegpt|messages|text   instruction data for decoders (default: detected)
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
  --early-stopping-patience N [--early-stopping-threshold X]   stop when the eval metric stalls
  --train-limit N  --eval-limit N  --frozen-dtype f32|f16
  --eval-mode generate|loglik  --max-new-tokens N
  --output DIR  --offline  --resume`;

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
  "early-stopping-patience": "earlyStoppingPatience",
  "early-stopping-threshold": "earlyStoppingThreshold",
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
  "train-file": "trainFile",
  "eval-file": "evalFile",
  "text-column": "textColumn",
  "text-pair-column": "textPairColumn",
  "label-column": "labelColumn",
  format: "format",
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
  // YAML keys in our spelling first (HF / LLaMA-Factory names mapped), so flags override them.
  const raw: Record<string, unknown> = values.config
    ? canonicalKeys(await readRunYaml(String(values.config)), String(values.config))
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
        `${(summary.memory.peakTotal / 2 ** 20).toFixed(1)} MiB\n` +
        `  train time ${formatSeconds(summary.trainSeconds)} (${summary.steps} steps` +
        `${summary.earlyStopping?.stoppedAt ? ", stopped early" : ""}) · wall time ` +
        `${formatSeconds(summary.wallSeconds)}\n  run files: ${config.output}`,
    );
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
