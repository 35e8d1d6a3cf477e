/**
 * `deno task train [--config run.yaml] [flags]` — fine-tune a model on a task with a method.
 *
 * With no flags it runs the quick-start default: roberta-base + LoRA on SST-2, downloaded into
 * the Hugging Face cache on first use. Flags override the YAML file; both are validated.
 *
 * @module
 */
import {
  type FlagSpec,
  type NumberRule,
  parseFlags,
  parseNumberFlag,
  runCli,
  UsageError,
} from "./lib/cli/runner.ts";
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
  --output DIR  --offline  --resume
  --objective mlm|clm     pretrain on raw text instead of a task (masked LM for encoders,
                          causal LM for decoders); with --train-file a.txt,b.jsonl [--eval-file F]
                          [--text-column text] [--mlm-probability 0.15] [--from-scratch]
                          [--tokenizer REPO|DIR] (when the model folder has only config.json)`;

const POSITIVE: NumberRule = { min: 0, minExclusive: true };
const POSITIVE_INT: NumberRule = { integer: true, min: 1 };
const COUNT: NumberRule = { integer: true, min: 0 };

// Flag → RunConfig key and the range the flag accepts (the schema checks YAML values again).
const NUMBER_FLAGS: Record<string, [keyof RunConfig, NumberRule]> = {
  lr: ["lr", POSITIVE],
  "wv-lr-ratio": ["wvLrRatio", POSITIVE],
  epochs: ["epochs", POSITIVE],
  steps: ["steps", POSITIVE_INT],
  "batch-size": ["batchSize", POSITIVE_INT],
  "grad-accum": ["gradAccum", POSITIVE_INT],
  "max-length": ["maxLength", { integer: true, min: 8 }],
  "warmup-ratio": ["warmupRatio", { min: 0, max: 1 }],
  "warmup-steps": ["warmupSteps", COUNT],
  "weight-decay": ["weightDecay", { min: 0 }],
  "max-grad-norm": ["maxGradNorm", POSITIVE],
  seed: ["seed", { integer: true }],
  "eval-interval": ["evalInterval", COUNT],
  "log-interval": ["logInterval", POSITIVE_INT],
  "save-interval": ["saveInterval", COUNT],
  "train-limit": ["trainLimit", POSITIVE_INT],
  "eval-limit": ["evalLimit", POSITIVE_INT],
  "eval-batch-size": ["evalBatchSize", POSITIVE_INT],
  "max-new-tokens": ["maxNewTokens", POSITIVE_INT],
  "mlm-probability": ["mlmProbability", { min: 0, minExclusive: true, max: 0.99 }],
  "early-stopping-patience": ["earlyStoppingPatience", POSITIVE_INT],
  "early-stopping-threshold": ["earlyStoppingThreshold", { min: 0 }],
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
  "text-pair-column": "textPairColumn",
  "label-column": "labelColumn",
  format: "format",
};

const FLAGS: FlagSpec = {
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
  help: { type: "boolean", short: "h" },
  ...Object.fromEntries(
    [...Object.keys(NUMBER_FLAGS), ...Object.keys(STRING_FLAGS)].map((f) => [f, {
      type: "string" as const,
    }]),
  ),
};

/** What `deno task train` was asked to do. */
export interface TrainArgs {
  /** The validated run configuration. */
  config: RunConfig;
  /** `--resume`: continue the run folder's checkpoint. */
  resume: boolean;
  /** `--help`: print the usage and do nothing else. */
  help?: boolean;
}

/**
 * Build a RunConfig from command-line arguments (and the YAML file they name). Bad flags throw
 * {@link UsageError} naming the flag; bad settings throw an Error naming the field and file.
 */
export async function configFromArgs(args: string[]): Promise<TrainArgs> {
  const { values } = parseFlags(args, FLAGS, { command: "train" });
  if (values.help) return { config: parseRunConfig({}), resume: false, help: true };
  const str = (flag: string) => values[flag] as string | undefined;
  // YAML keys in our spelling first (HF / LLaMA-Factory names mapped), so flags override them.
  const raw: Record<string, unknown> = values.config
    ? canonicalKeys(await readRunYaml(str("config")!), str("config")!)
    : {};
  const source = values.config ? `${values.config} + flags` : "flags";
  for (const [flag, [key, rule]] of Object.entries(NUMBER_FLAGS)) {
    const v = str(flag);
    if (v !== undefined) raw[key] = parseNumberFlag(flag, v, rule);
  }
  for (const [flag, key] of Object.entries(STRING_FLAGS)) {
    const v = str(flag);
    if (v === undefined) continue;
    if (v.trim() === "") throw new UsageError(`--${flag}: expected a value, got ""`);
    raw[key] = v;
  }
  if (values.targets !== undefined) {
    const list = parseList(str("targets")!);
    if (!list.length) throw new UsageError(`--targets: expected module names like "query,value"`);
    raw.targets = list;
  }
  if (values["lr-multipliers"] !== undefined) {
    try {
      raw.lrMultipliers = parseMultipliers(str("lr-multipliers")!);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  }
  if (values.offline) raw.offline = true;
  if (values["from-scratch"]) raw.fromScratch = true;
  for (const [flag, key] of [["train-file", "trainFile"], ["eval-file", "evalFile"]] as const) {
    if (values[flag] === undefined) continue;
    const files = parseList(str(flag)!);
    if (!files.length) throw new UsageError(`--${flag}: expected one or more files, got ""`);
    raw[key] = files.length === 1 ? files[0] : files;
  }
  const methodOptions: Record<string, unknown> = {
    ...(raw.methodOptions as Record<string, unknown> ?? {}),
  };
  if (values["method-options"] !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(str("method-options")!);
    } catch {
      parsed = undefined;
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new UsageError(
        `--method-options: expected a JSON object like '{"r":8}', got ${str("method-options")}`,
      );
    }
    Object.assign(methodOptions, parsed);
  }
  const option = (flag: string, key: string, rule: NumberRule) => {
    const v = str(flag);
    if (v !== undefined) methodOptions[key] = parseNumberFlag(flag, v, rule);
  };
  option("rank", "r", POSITIVE_INT);
  option("alpha", "alpha", POSITIVE);
  option("lora-dropout", "dropout", { min: 0, max: 0.99 });
  if (values.rslora) methodOptions.rslora = true;
  raw.methodOptions = methodOptions;
  let config: RunConfig;
  try {
    config = parseRunConfig(raw, source);
  } catch (e) {
    // Without a YAML file every value came from a flag: bad usage, not a bad file.
    throw values.config ? e : new UsageError((e as Error).message);
  }
  return { config, resume: Boolean(values.resume) };
}

if (import.meta.main) {
  await runCli(async () => {
    const { config, resume, help } = await configFromArgs(Deno.args);
    if (help) {
      console.log(USAGE);
      return 0;
    }
    // The first Ctrl-C / SIGTERM stops after the current step with a checkpoint; a second one
    // exits at once (the last checkpoint on disk stays usable).
    const stop = new AbortController();
    const onSignal = () => {
      if (stop.signal.aborted) Deno.exit(130);
      console.error(
        "stopping after this step (a checkpoint is saved); press Ctrl-C again to quit now",
      );
      stop.abort();
    };
    const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
    for (const s of signals) Deno.addSignalListener(s, onSignal);
    let summary;
    try {
      summary = await train(config, { resume, signal: stop.signal });
    } finally {
      for (const s of signals) Deno.removeSignalListener(s, onSignal);
    }
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
  });
}
