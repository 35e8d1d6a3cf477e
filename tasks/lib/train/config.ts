/**
 * The run configuration of `deno task train`: from command-line flags and/or a YAML file,
 * validated with zod. Every error names the field (and the file) and what was expected.
 *
 * @module
 */
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import type { ConfigSchema, SchemaError } from "../../../methods/types.ts";
import { INSTRUCTION_FORMATS, type InstructionFormat } from "../data/own/instruction.ts";
import { canonicalKeys } from "./aliases.ts";
import { ownTaskDefault } from "../data/own/own_task.ts";

/** Defaults of the quick start: roberta-base + LoRA on SST-2. */
export const DEFAULT_MODEL = "FacebookAI/roberta-base";

const positiveInt = z.number().int().positive();

// Not annotated as ConfigSchema<RunConfig>: the sweep reads its `.shape` (field names and kinds).
/** The run configuration schema (YAML keys are these names; flags are their kebab-case). */
export const RunConfigSchema = z.object({
  /** A Hugging Face repo id (downloaded into the HF cache) or a local model folder. */
  model: z.string().min(1).default(DEFAULT_MODEL),
  /** A GLUE task (sst2, cola, …) or a commonsense data set (boolq, piqa, …). */
  task: z.string().min(1).default("sst2"),
  /** Local data folder (GLUE parquet/TSV root, commonsense root, or a HF datasets folder). */
  data: z.string().min(1).optional(),
  /** Own classification data: the second text of a pair (default sentence2 after sentence1). */
  textPairColumn: z.string().min(1).optional(),
  /** Own classification data: the label column (default label). */
  labelColumn: z.string().min(1).optional(),
  /** Own instruction data for decoders: alpaca, sharegpt, messages or text (default: detected). */
  format: z.enum(INSTRUCTION_FORMATS).optional(),
  /** Fine-tuning method (see methods/registry.ts). */
  method: z.string().min(1).default("lora"),
  /** Method-specific options (e.g. { r: 8, alpha: 16 }), validated by the method's schema. */
  methodOptions: z.record(z.string(), z.unknown()).default({}),
  /** Modules to adapt: names or suffixes. Default: query,value (encoders), q_proj,v_proj (LLaMA). */
  targets: z.array(z.string().min(1)).min(1).optional(),
  /** Learning-rate multipliers by module, e.g. { value: 4 }. */
  lrMultipliers: z.record(z.string(), z.number().positive()).default({}),
  /** The seed paper's W_v rule: λ·lr for value / v_proj parameters and every trainable vector. */
  wvLrRatio: z.number().positive().optional(),
  lr: z.number().positive().default(5e-4),
  /** Train for this many epochs … */
  epochs: z.number().positive().default(3),
  /** … or exactly this many optimizer steps (overrides epochs). */
  steps: positiveInt.optional(),
  batchSize: positiveInt.default(16),
  gradAccum: positiveInt.default(1),
  // Room for the special tokens (up to 4 for a sentence pair) and some text.
  maxLength: z.number().int().min(8).default(128),
  /** Warm-up as a fraction of the training steps (0..1) … */
  warmupRatio: z.number().min(0).max(1).default(0.06),
  /** … or as a number of steps (overrides the ratio). */
  warmupSteps: z.number().int().min(0).optional(),
  schedule: z.enum(["linear", "cosine", "constant"]).default("linear"),
  weightDecay: z.number().min(0).default(0.01),
  maxGradNorm: z.number().positive().nullable().default(1),
  seed: z.number().int().default(0),
  /** Evaluate every N optimizer steps (0: only at the end). */
  evalInterval: z.number().int().min(0).default(0),
  /** Stop after this many evaluations without improvement of the main metric (needs evalInterval). */
  earlyStoppingPatience: positiveInt.optional(),
  /** The improvement of the main metric that counts as one (default 0: any). */
  earlyStoppingThreshold: z.number().min(0).optional(),
  /** Read back and log the loss every N steps. */
  logInterval: positiveInt.default(10),
  /** Save a resumable checkpoint every N steps (0: at evaluations and the end only). */
  saveInterval: z.number().int().min(0).default(0),
  /** Use at most this many training / evaluation examples (quick runs, tests). */
  trainLimit: positiveInt.optional(),
  evalLimit: positiveInt.optional(),
  evalBatchSize: positiveInt.default(32),
  /** Frozen matrices on the GPU as f16 (halves weight memory; not with full fine-tuning). */
  frozenDtype: z.enum(["f32", "f16"]).default("f32"),
  /** Commonsense: evaluate by generation + answer extraction, or by candidate log-likelihood. */
  evalMode: z.enum(["generate", "loglik"]).default("generate"),
  maxNewTokens: positiveInt.default(32),
  /** Where run files go. */
  output: z.string().min(1).default("runs/latest"),
  /** Never touch the network; resolve models and data from the cache or local folders. */
  offline: z.boolean().default(false),
  /** Pretrain on raw text instead of a task: masked LM (encoders) or causal LM (decoders). */
  objective: z.enum(["mlm", "clm"]).optional(),
  /**
   * Training data files, one or several (shards): own data (.jsonl, .json, .csv, .tsv, .parquet)
   * or, with `objective`, pretraining text (.txt: a document per paragraph, or .jsonl).
   */
  trainFile: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
  /** Evaluation files (own data; pretraining default: the last 5 % of the training blocks). */
  evalFile: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
  /**
   * The column / JSONL field of the text: own classification data (default text, else sentence,
   * else sentence1), `format: text`, and pretraining (default text).
   */
  textColumn: z.string().min(1).optional(),
  /** MLM: share of tokens selected for prediction. */
  mlmProbability: z.number().gt(0).lt(1).default(0.15),
  /** Initialise the model from its config.json (pretraining from scratch). */
  fromScratch: z.boolean().default(false),
  /** The tokenizer's repo id or folder, when it is not the model's (HF's --tokenizer_name). */
  tokenizer: z.string().min(1).optional(),
}).strict() satisfies ConfigSchema<RunConfig>;

/** A validated run configuration (defaults filled in). */
export interface RunConfig {
  /** A Hugging Face repo id or a local model folder; default {@link DEFAULT_MODEL}. */
  model: string;
  /** A GLUE task (sst2, cola, …) or a commonsense data set (boolq, piqa, …); default "sst2". */
  task: string;
  /**
   * Local data folder: a GLUE parquet/TSV root, a commonsense root, or (own data) a Hugging Face
   * datasets folder with a file or folder per split; absent: download.
   */
  data?: string;
  /** Own classification data: the second text column; default sentence2 after sentence1. */
  textPairColumn?: string;
  /** Own classification data: the label column; default label, else labels. */
  labelColumn?: string;
  /** Own instruction data (decoders): the record format; absent: detected from the columns. */
  format?: InstructionFormat;
  /** Fine-tuning method (see methods/registry.ts); default "lora". */
  method: string;
  /** Method-specific options (e.g. { r: 8, alpha: 16 }), validated by the method's schema. */
  methodOptions: Record<string, unknown>;
  /** Modules to adapt: names or suffixes. Absent: query,value (encoders), q_proj,v_proj (LLaMA). */
  targets?: string[];
  /** Learning-rate multipliers by module, e.g. { value: 4 }; default none. */
  lrMultipliers: Record<string, number>;
  /**
   * The seed paper's W_v rule (Yao et al. 2410.02247, as its official code groups parameters):
   * λ × lr for every parameter of a value projection (`value`, `v_proj`) and every trainable 1-D
   * tensor (biases, norm weights, magnitudes); composes with `lrMultipliers`. Absent: no rule.
   */
  wvLrRatio?: number;
  /** Peak learning rate (after warm-up); default 5e-4. */
  lr: number;
  /** Train for this many epochs (may be fractional); default 3. */
  epochs: number;
  /** Train for exactly this many optimizer steps instead (overrides epochs). */
  steps?: number;
  /** Examples per micro-batch; default 16. */
  batchSize: number;
  /** Micro-batches per optimizer step (their losses are averaged); default 1. */
  gradAccum: number;
  /** Tokens per example after truncation; default 128. */
  maxLength: number;
  /** Warm-up as a fraction of the training steps, in [0, 1]; default 0.06. */
  warmupRatio: number;
  /** Warm-up as a number of steps (overrides the ratio). */
  warmupSteps?: number;
  /** Learning-rate schedule after warm-up; default "linear" (decay to 0). */
  schedule: "linear" | "cosine" | "constant";
  /** AdamW's decoupled weight decay (biases and norm weights are exempt); default 0.01. */
  weightDecay: number;
  /** Clip the global gradient norm to this (null: no clipping); default 1. */
  maxGradNorm: number | null;
  /** Seed of initialisation, data order and dropout; default 0. */
  seed: number;
  /** Evaluate every N optimizer steps (0: only at the end); default 0. */
  evalInterval: number;
  /**
   * Early stopping as Hugging Face's EarlyStoppingCallback: stop once this many evaluations in a
   * row did not improve the best main metric by more than the threshold. Needs evalInterval.
   */
  earlyStoppingPatience?: number;
  /** The least improvement of the main metric that resets the patience; default 0. */
  earlyStoppingThreshold?: number;
  /** Read back and log the loss every N steps; default 10. */
  logInterval: number;
  /** Save a resumable checkpoint every N steps (0: at evaluations and the end only); default 0. */
  saveInterval: number;
  /** Use at most this many training examples (quick runs, tests). */
  trainLimit?: number;
  /** Use at most this many evaluation examples. */
  evalLimit?: number;
  /** Examples per evaluation batch; default 32. */
  evalBatchSize: number;
  /** Storage of frozen matrices: "f16" halves it (not with full fine-tuning); default "f32". */
  frozenDtype: "f32" | "f16";
  /** Commonsense: evaluate by generation + answer extraction (default) or candidate likelihood. */
  evalMode: "generate" | "loglik";
  /** Commonsense generation: most tokens generated per answer; default 32. */
  maxNewTokens: number;
  /** Where run files go; default "runs/latest". */
  output: string;
  /** Never touch the network: models and data from the cache or local folders; default false. */
  offline: boolean;
  /**
   * Pretrain on raw text (`trainFile`) instead of fine-tuning on `task`: "mlm" for RoBERTa/BERT
   * (RobertaForMaskedLM's head, 15 % masking, 80/10/10), "clm" for LLaMA-family decoders.
   */
  objective?: "mlm" | "clm";
  /**
   * Training files: own data (.jsonl, .json, .csv, .tsv, .parquet, by extension; several are
   * shards of one table) or, with `objective`, pretraining text (.txt, .jsonl, optionally .gz).
   */
  trainFile?: string | string[];
  /** Evaluation files (own data: absent → the folder's validation split; pretraining: the last
   * 5 % of the training blocks). */
  evalFile?: string | string[];
  /**
   * The text column / JSONL field: own classification data (absent: text, else sentence, else
   * sentence1), `format: text`, pretraining (absent: "text").
   */
  textColumn?: string;
  /** MLM selection probability; default 0.15 (Hugging Face's mlm_probability). */
  mlmProbability: number;
  /** Initialise every weight from config.json instead of loading them; default false. */
  fromScratch: boolean;
  /**
   * A repo id or folder holding the tokenizer, when the model folder has none (a from-scratch
   * config, as run_mlm.py's --tokenizer_name); absent: the model's own.
   */
  tokenizer?: string;
}

/** Turn schema issues into one message naming each field and what was expected. */
export function formatIssues(error: SchemaError, source: string): string {
  return error.issues.map((i) => {
    const field = i.path.length ? i.path.join(".") : "(top level)";
    return `${source}: field "${field}": ${i.message}`;
  }).join("\n");
}

/** Validate a plain object as a RunConfig (source names where it came from, for errors). */
export function parseRunConfig(raw: unknown, source = "config"): RunConfig {
  // Hugging Face Trainer / LLaMA-Factory names become ours; an unknown key gets "did you mean".
  const keyed = isPlainObject(raw) ? ownTaskDefault(canonicalKeys(raw, source)) : raw;
  const r = RunConfigSchema.safeParse(keyed);
  if (!r.success) throw new Error(formatIssues(r.error, source));
  if (r.data.earlyStoppingPatience !== undefined && r.data.evalInterval === 0) {
    throw new Error(
      `${source}: field "earlyStoppingPatience": needs evaluations during training; ` +
        "set evalInterval (--eval-interval N) as well",
    );
  }
  return r.data;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** Read a YAML run file (keys as in {@link RunConfigSchema}). */
export async function readRunYaml(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read (${e instanceof Error ? e.message : e})`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new Error(`${path}: invalid YAML (${e instanceof Error ? e.message : e})`);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== "object" || Array.isArray(doc)) {
    throw new Error(`${path}: expected a mapping of run settings at the top level`);
  }
  return doc as Record<string, unknown>;
}

/** "query,value" → ["query", "value"]. */
export function parseList(text: string): string[] {
  return text.split(",").map((s) => s.trim()).filter(Boolean);
}

/** "value=4,key=2" → { value: 4, key: 2 }, with an error naming the flag. */
export function parseMultipliers(text: string, flag = "--lr-multipliers"): Record<string, number> {
  const out: Record<string, number> = {};
  for (const part of parseList(text)) {
    const [k, v] = part.split("=");
    const n = Number(v);
    if (!k || v === undefined || !Number.isFinite(n) || n <= 0) {
      throw new Error(`${flag}: expected module=multiplier pairs like "value=4", got "${part}"`);
    }
    out[k.trim()] = n;
  }
  return out;
}

/** Default targets for a model type. */
export function defaultTargets(modelType: string): string[] {
  return modelType === "roberta" || modelType === "bert"
    ? ["query", "value"]
    : ["q_proj", "v_proj"];
}
