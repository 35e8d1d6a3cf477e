/**
 * Run-setting names users bring from the Hugging Face Trainer (`TrainingArguments`), PEFT and
 * LLaMA-Factory YAML files, mapped onto ours; snake_case and kebab-case spellings of our own keys
 * work too. An unknown key is one error that proposes the closest known name.
 *
 * @example
 * ```ts
 * import { canonicalKeys } from "./aliases.ts";
 * console.log(canonicalKeys({ learning_rate: 2e-4, lora_rank: 8, num_train_epochs: 1 }, "run.yaml"));
 * // { lr: 0.0002, methodOptions: { r: 8 }, epochs: 1 }
 * ```
 *
 * @module
 */

/** Our run-setting keys (RunConfigSchema's; kept here so this table has no import cycle). */
export const RUN_KEYS: readonly string[] = [
  "model",
  "task",
  "data",
  "trainFile",
  "evalFile",
  "textColumn",
  "textPairColumn",
  "labelColumn",
  "format",
  "method",
  "methodOptions",
  "targets",
  "lrMultipliers",
  "wvLrRatio",
  "lr",
  "epochs",
  "steps",
  "batchSize",
  "gradAccum",
  "maxLength",
  "warmupRatio",
  "warmupSteps",
  "schedule",
  "weightDecay",
  "maxGradNorm",
  "seed",
  "evalInterval",
  "earlyStoppingPatience",
  "earlyStoppingThreshold",
  "logInterval",
  "saveInterval",
  "trainLimit",
  "evalLimit",
  "evalBatchSize",
  "frozenDtype",
  "evalMode",
  "maxNewTokens",
  "output",
  "offline",
  "objective",
  "mlmProbability",
  "fromScratch",
  "tokenizer",
];

/**
 * Foreign names → ours: a run key, or a method option (`methodOptions.<name>`). Values pass through unchanged unless {@link VALUE_RULES} says otherwise.
 * Sources: transformers `TrainingArguments`, `run_glue.py` / `run_clm.py` data arguments, PEFT
 * `LoraConfig`, LLaMA-Factory's finetuning/data arguments.
 */
export const ALIASES: Readonly<Record<string, string>> = {
  // transformers TrainingArguments
  learning_rate: "lr",
  num_train_epochs: "epochs",
  max_steps: "steps",
  per_device_train_batch_size: "batchSize",
  train_batch_size: "batchSize",
  per_device_eval_batch_size: "evalBatchSize",
  gradient_accumulation_steps: "gradAccum",
  warmup_ratio: "warmupRatio",
  warmup_steps: "warmupSteps",
  weight_decay: "weightDecay",
  max_grad_norm: "maxGradNorm",
  lr_scheduler_type: "schedule",
  eval_steps: "evalInterval",
  logging_steps: "logInterval",
  save_steps: "saveInterval",
  output_dir: "output",
  early_stopping_patience: "earlyStoppingPatience",
  early_stopping_threshold: "earlyStoppingThreshold",
  // run_glue.py / run_clm.py / LLaMA-Factory model and data arguments
  model_name_or_path: "model",
  train_file: "trainFile",
  validation_file: "evalFile",
  eval_file: "evalFile",
  text_column: "textColumn",
  label_column: "labelColumn",
  max_seq_length: "maxLength",
  max_length: "maxLength",
  cutoff_len: "maxLength",
  max_train_samples: "trainLimit",
  max_samples: "trainLimit",
  max_eval_samples: "evalLimit",
  max_new_tokens: "maxNewTokens",
  mlm_probability: "mlmProbability",
  tokenizer_name: "tokenizer",
  // LLaMA-Factory's dataset_info.json field (alpaca | sharegpt); its `template` names a chat
  // template instead, which here comes from the model's tokenizer_config.json.
  formatting: "format",
  finetuning_type: "method",
  // PEFT LoraConfig / LLaMA-Factory LoRA arguments
  lora_rank: "methodOptions.r",
  lora_r: "methodOptions.r",
  r: "methodOptions.r",
  lora_alpha: "methodOptions.alpha",
  lora_dropout: "methodOptions.dropout",
  use_rslora: "methodOptions.rslora",
  lora_target: "targets",
  target_modules: "targets",
};

/** Value conversions of aliases whose meaning differs from ours; null drops the key. */
const VALUE_RULES: Readonly<Record<string, (v: unknown, key: string) => unknown>> = {
  // HF: max_steps -1 and warmup_steps 0 mean "not set" (epochs / the ratio then decide).
  max_steps: (v) => (v === -1 ? null : v),
  warmup_steps: (v) => (v === 0 ? null : v),
  lr_scheduler_type: (v, key) => {
    const map: Record<string, string> = {
      linear: "linear",
      cosine: "cosine",
      constant: "constant",
      constant_with_warmup: "constant",
    };
    if (typeof v !== "string" || !(v in map)) {
      throw new Error(
        `${key}: ${JSON.stringify(v)} is not supported; expected one of ${
          Object.keys(map).join(", ")
        }`,
      );
    }
    return map[v];
  },
  // LLaMA-Factory writes targets as one comma-separated string.
  lora_target: (v) => splitList(allLinear(v)),
  target_modules: (v) => splitList(allLinear(v)),
  finetuning_type: (v, key) => {
    if (v === "lora" || v === "full") return v;
    throw new Error(`${key}: ${JSON.stringify(v)} is not supported; expected lora or full`);
  },
};

/** LLaMA-Factory's "all" and PEFT's "all-linear": every Linear but the output and task heads. */
function allLinear(v: unknown): unknown {
  if (typeof v === "string" && ["all", "all-linear"].includes(v.trim().toLowerCase())) {
    return ["all-linear"];
  }
  return v;
}

function splitList(v: unknown): unknown {
  return typeof v === "string" ? v.split(",").map((s) => s.trim()).filter(Boolean) : v;
}

/** "batch_size" / "batch-size" → "batchSize". */
function camel(key: string): string {
  return key.replace(/[-_]+([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/**
 * Levenshtein distance (insertions, deletions, substitutions), case-insensitive.
 *
 * @example
 * ```ts
 * import { editDistance } from "./aliases.ts";
 * console.log(editDistance("learning_rat", "learning_rate")); // 1
 * ```
 */
export function editDistance(a: string, b: string): number {
  a = a.toLowerCase();
  b = b.toLowerCase();
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

/**
 * The known key closest to `key` (ours or an alias), or null when none is close: at most a third
 * of the key's length in edits (at least 2), or the same name ignoring case and separators.
 *
 * @example
 * ```ts
 * import { suggestKey } from "./aliases.ts";
 * console.log(suggestKey("lerning_rate")); // "learning_rate"
 * console.log(suggestKey("batchsize")); // "batchSize"
 * ```
 */
export function suggestKey(key: string): string | null {
  const norm = (s: string) => s.toLowerCase().replace(/[-_]/g, "");
  let best: string | null = null, bestD = Infinity;
  for (const k of [...RUN_KEYS, ...Object.keys(ALIASES)]) {
    const d = norm(k) === norm(key) ? 0 : editDistance(key, k);
    if (d < bestD) {
      best = k;
      bestD = d;
    }
  }
  return bestD <= Math.max(2, Math.floor(key.length / 3)) ? best : null;
}

/**
 * Our spelling of one key (`methodOptions.r` for LoRA's rank aliases), or null when it is
 * neither ours nor a known alias.
 *
 * @example
 * ```ts
 * import { canonicalKey } from "./aliases.ts";
 * console.log(canonicalKey("lora_rank"), canonicalKey("batch_size"), canonicalKey("nope"));
 * // methodOptions.r batchSize null
 * ```
 */
export function canonicalKey(key: string): string | null {
  if (RUN_KEYS.includes(key)) return key;
  if (key in ALIASES) return ALIASES[key];
  const c = camel(key);
  return RUN_KEYS.includes(c) ? c : null;
}

/**
 * A value given under alias `key` in our terms (HF's `max_steps: -1` → null, meaning unset;
 * `lr_scheduler_type` names → ours); other keys' values unchanged. Throws for values we lack.
 */
export function aliasValue(key: string, value: unknown, source = "config"): unknown {
  const rule = VALUE_RULES[key];
  return rule ? rule(value, `${source}: "${key}"`) : value;
}

/**
 * `raw` with every key in our spelling: aliases mapped (LoRA options into `methodOptions`), snake
 * and kebab case camelised. Throws one message naming `source` and the key for an unknown key
 * (with the closest known name) or for two spellings of one setting with different values.
 */
export function canonicalKeys(
  raw: Record<string, unknown>,
  source = "config",
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const origin: Record<string, string> = {};
  const put = (target: string, value: unknown, from: string) => {
    const [head, sub] = target.split(".");
    if (sub !== undefined) {
      const opts = out[head] ??= {};
      if (opts === null || typeof opts !== "object" || Array.isArray(opts)) {
        throw new Error(`${source}: field "${head}": expected a mapping`);
      }
      const o = opts as Record<string, unknown>;
      const was = origin[target];
      if (was !== undefined && JSON.stringify(o[sub]) !== JSON.stringify(value)) {
        throw new Error(`${source}: "${from}" and "${was}" both set ${target}; keep one`);
      }
      o[sub] = value;
      origin[target] = from;
      return;
    }
    if (target === "methodOptions" && value !== null && typeof value === "object") {
      // Entry by entry, so `lora_rank` and `methodOptions: { r }` meet (and must agree).
      for (const [k, v] of Object.entries(value)) put(`methodOptions.${k}`, v, `${from}.${k}`);
      if (!("methodOptions" in out)) out.methodOptions = {};
      return;
    }
    const was = origin[target];
    if (was !== undefined) {
      if (JSON.stringify(out[target]) !== JSON.stringify(value)) {
        throw new Error(`${source}: "${from}" and "${was}" both set ${target}; keep one`);
      }
    }
    out[target] = value;
    origin[target] = from;
  };
  for (const [key, value] of Object.entries(raw)) {
    if (RUN_KEYS.includes(key)) {
      put(key, value, key);
      continue;
    }
    if (key in ALIASES) {
      const rule = VALUE_RULES[key];
      const v = rule ? rule(value, `${source}: "${key}"`) : value;
      if (v !== null) put(ALIASES[key], v, key);
      continue;
    }
    const c = camel(key);
    if (RUN_KEYS.includes(c)) {
      put(c, value, key);
      continue;
    }
    const hint = suggestKey(key);
    throw new Error(
      `${source}: unknown key "${key}"` +
        (hint ? `; did you mean "${hint}"?` : `; expected one of ${RUN_KEYS.join(", ")}`),
    );
  }
  return out;
}
