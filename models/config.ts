/**
 * Hugging Face `config.json` schemas for the architectures this toolkit runs: the RoBERTa and BERT
 * encoders and the LLaMA family (LLaMA 2/3, TinyLlama — `model_type` "llama" — and Mistral).
 *
 * A config is validated strictly at the boundary: every field the models read is checked for type
 * and range, Hugging Face's per-architecture defaults are filled in, and features the models do not
 * implement (another activation, an unknown RoPE scaling, a Mistral sliding window shorter than the
 * context) are rejected with an error naming the file and the field, instead of silently computing
 * something else. Field names stay Hugging Face's, so code reads `config.num_key_value_heads`
 * exactly as it appears in the JSON.
 *
 * @example
 * ```ts
 * import { parseConfig } from "./config.ts";
 * const config = parseConfig({
 *   model_type: "llama", vocab_size: 32000, hidden_size: 2048, intermediate_size: 5632,
 *   num_hidden_layers: 22, num_attention_heads: 32, num_key_value_heads: 4,
 * }, "config.json");
 * if (config.model_type === "llama") console.log(config.head_dim, config.rope_theta); // 64 10000
 * ```
 *
 * @module
 */
import { basename, dirname, join } from "node:path";
import { z } from "zod";

/** The `model_type`s {@link parseConfig} accepts. */
export const SUPPORTED_MODEL_TYPES = ["roberta", "bert", "llama", "mistral"] as const;

/** A supported `model_type`. */
export type ModelType = typeof SUPPORTED_MODEL_TYPES[number];

/** How a sequence-classification head computes its loss (Hugging Face's `problem_type`). */
export type ProblemType =
  | "regression"
  | "single_label_classification"
  | "multi_label_classification";

/** Fields every supported config has, with Hugging Face's names and defaults resolved. */
export interface BaseModelConfig {
  /** The architecture. */
  model_type: ModelType;
  /** Hugging Face class names the checkpoint was saved from (may be empty). */
  architectures: string[];
  /** Vocabulary size (rows of the token embedding). */
  vocab_size: number;
  /** Model width. */
  hidden_size: number;
  /** Number of transformer blocks. */
  num_hidden_layers: number;
  /** Number of query heads. */
  num_attention_heads: number;
  /** Width of one attention head (`hidden_size / num_attention_heads` unless the config says). */
  head_dim: number;
  /** Width of the feed-forward hidden layer. */
  intermediate_size: number;
  /** Longest sequence the position embeddings (or RoPE tables) cover. */
  max_position_embeddings: number;
  /** Whether the LM head shares the token embedding matrix. */
  tie_word_embeddings: boolean;
  /** Padding token id, or null when the model has none. */
  pad_token_id: number | null;
  /** Beginning-of-sequence token id, or null. */
  bos_token_id: number | null;
  /** End-of-sequence token id(s), or null (LLaMA 3 instruct lists several). */
  eos_token_id: number | number[] | null;
  /** Number of classification labels (`id2label`'s size when given, otherwise 2). */
  num_labels: number;
  /** Label names by class index. */
  id2label: Record<number, string>;
  /** Class index by label name. */
  label2id: Record<string, number>;
  /** Loss of a classification head, or null to infer it from the labels. */
  problem_type: ProblemType | null;
  /** The dtype the checkpoint was saved in (`torch_dtype`/`dtype`), when recorded. */
  torch_dtype: string | null;
  /** Standard deviation of normal-initialised weights (new heads), Hugging Face default 0.02. */
  initializer_range: number;
}

/** RoBERTa/BERT encoder fields. */
export interface EncoderConfig extends BaseModelConfig {
  /** Encoder architecture. */
  model_type: "roberta" | "bert";
  /** Hugging Face's "gelu" is the exact erf GELU. */
  hidden_act: "gelu";
  /** LayerNorm epsilon. */
  layer_norm_eps: number;
  /** Rows of the token-type (segment) embedding. */
  type_vocab_size: number;
  /** Dropout on embeddings and block outputs. */
  hidden_dropout_prob: number;
  /** Dropout on attention probabilities. */
  attention_probs_dropout_prob: number;
  /** Dropout before the classifier, or null to use `hidden_dropout_prob`. */
  classifier_dropout: number | null;
  /** Only learned absolute position embeddings are supported. */
  position_embedding_type: "absolute";
}

/** A RoBERTa config (`model_type` "roberta"). */
export interface RobertaConfig extends EncoderConfig {
  /** Discriminant. */
  model_type: "roberta";
}

/** A BERT config (`model_type` "bert"). */
export interface BertConfig extends EncoderConfig {
  /** Discriminant. */
  model_type: "bert";
}

/** RoPE position interpolation: positions divided by `factor`. */
export interface LinearRopeScaling {
  /** Discriminant. */
  rope_type: "linear";
  /** Position divisor (> 0). */
  factor: number;
}

/** LLaMA 3.1's frequency-dependent RoPE scaling. */
export interface Llama3RopeScaling {
  /** Discriminant. */
  rope_type: "llama3";
  /** Divisor applied to low frequencies. */
  factor: number;
  /** Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are scaled. */
  low_freq_factor: number;
  /** Wavelengths shorter than `original_max_position_embeddings / high_freq_factor` are kept. */
  high_freq_factor: number;
  /** Context length the model was pretrained with. */
  original_max_position_embeddings: number;
}

/** A supported `rope_scaling` (absent, null or "default" scaling is represented by null). */
export type RopeScaling = LinearRopeScaling | Llama3RopeScaling;

/** LLaMA-family decoder fields. */
export interface DecoderConfig extends BaseModelConfig {
  /** Decoder architecture. */
  model_type: "llama" | "mistral";
  /** The gated FFN's activation. */
  hidden_act: "silu";
  /** Key/value heads (grouped-query attention); defaults to `num_attention_heads`. */
  num_key_value_heads: number;
  /** RMSNorm epsilon. */
  rms_norm_eps: number;
  /** RoPE base. */
  rope_theta: number;
  /** RoPE scaling, or null for none. */
  rope_scaling: RopeScaling | null;
  /** Whether q/k/v/o projections carry biases. */
  attention_bias: boolean;
  /** Whether the FFN projections carry biases. */
  mlp_bias: boolean;
  /** Dropout on attention probabilities. */
  attention_dropout: number;
  /** Mistral's attention window when it covers the whole context, else null (LLaMA: null). */
  sliding_window: number | null;
}

/** A LLaMA / LLaMA 2 / LLaMA 3 / TinyLlama config (`model_type` "llama"). */
export interface LlamaConfig extends DecoderConfig {
  /** Discriminant. */
  model_type: "llama";
}

/** A Mistral config (`model_type` "mistral"). */
export interface MistralConfig extends DecoderConfig {
  /** Discriminant. */
  model_type: "mistral";
}

/** Any supported config, discriminated by `model_type`. */
export type ModelConfig = RobertaConfig | BertConfig | LlamaConfig | MistralConfig;

/** Whether a config is an encoder (RoBERTa/BERT). */
export function isEncoderConfig(config: ModelConfig): config is RobertaConfig | BertConfig {
  return config.model_type === "roberta" || config.model_type === "bert";
}

/** Whether a config is a LLaMA-family decoder. */
export function isDecoderConfig(config: ModelConfig): config is LlamaConfig | MistralConfig {
  return config.model_type === "llama" || config.model_type === "mistral";
}

/** One problem in a config: the field (dotted path) and what was expected. */
export interface ConfigIssue {
  /** Dotted path of the field, e.g. `rope_scaling.factor` or `eos_token_id[1]`. */
  field: string;
  /** What was found and what was expected. */
  detail: string;
}

/** An invalid or unsupported config; the message names the file, the field(s) and the fix. */
export class ConfigError extends Error {
  /** The config file at fault. */
  readonly file: string;
  /** Every problem found, each with its field. */
  readonly issues: ConfigIssue[];

  /**
   * An error whose message lists each field at fault.
   *
   * @param file the config file at fault
   * @param issues every problem found, each with its field
   */
  constructor(file: string, issues: ConfigIssue[]) {
    super(`${file}: ${issues.map((i) => `field "${i.field}": ${i.detail}`).join("; ")}`);
    this.name = "ConfigError";
    this.file = file;
    this.issues = issues;
  }
}

// ---- schemas -------------------------------------------------------------------------------------

/** Hugging Face's defaults for fields a config.json may omit, per architecture. */
interface Defaults {
  max_position_embeddings: number;
  tie_word_embeddings: boolean;
  pad_token_id: number | null;
  bos_token_id: number | null;
  eos_token_id: number | null;
}

const ENCODER_DEFAULTS: Record<"roberta" | "bert", Defaults> = {
  roberta: {
    max_position_embeddings: 512,
    tie_word_embeddings: true,
    pad_token_id: 1,
    bos_token_id: 0,
    eos_token_id: 2,
  },
  bert: {
    max_position_embeddings: 512,
    tie_word_embeddings: true,
    pad_token_id: 0,
    bos_token_id: null,
    eos_token_id: null,
  },
};

const DECODER_DEFAULTS: Record<"llama" | "mistral", Defaults> = {
  llama: {
    max_position_embeddings: 2048,
    tie_word_embeddings: false,
    pad_token_id: null,
    bos_token_id: 1,
    eos_token_id: 2,
  },
  mistral: {
    max_position_embeddings: 4096 * 32,
    tie_word_embeddings: false,
    pad_token_id: null,
    bos_token_id: 1,
    eos_token_id: 2,
  },
};

const positiveInt = (): z.ZodInt => z.int().positive();
const tokenId = z.int().nonnegative().nullable();
const probability = z.number().min(0).max(1);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The fields every architecture shares; `d` supplies the architecture's defaults. */
function baseShape(d: Defaults) {
  return {
    architectures: z.array(z.string()).nullable().optional(),
    vocab_size: positiveInt(),
    hidden_size: positiveInt(),
    num_hidden_layers: positiveInt(),
    num_attention_heads: positiveInt(),
    intermediate_size: positiveInt(),
    max_position_embeddings: positiveInt().default(d.max_position_embeddings),
    tie_word_embeddings: z.boolean().default(d.tie_word_embeddings),
    pad_token_id: tokenId.default(d.pad_token_id),
    bos_token_id: tokenId.default(d.bos_token_id),
    eos_token_id: z.union([z.int().nonnegative(), z.array(z.int().nonnegative()).min(1)])
      .nullable().default(d.eos_token_id),
    num_labels: positiveInt().optional(),
    id2label: z.record(z.string(), z.string()).optional(),
    label2id: z.record(z.string(), z.int().nonnegative()).optional(),
    problem_type: z.enum([
      "regression",
      "single_label_classification",
      "multi_label_classification",
    ])
      .nullable().default(null),
    torch_dtype: z.string().nullable().optional(),
    dtype: z.string().nullable().optional(),
    initializer_range: z.number().positive().default(0.02),
  };
}

type BaseInput = z.output<z.ZodObject<ReturnType<typeof baseShape>>>;
type Refinement = z.core.$RefinementCtx;

/**
 * Resolve the label maps the way Hugging Face does (id2label wins; otherwise `num_labels` generic
 * LABEL_i names) but reject the contradictions it only warns about.
 */
function resolveLabels(
  c: BaseInput,
  ctx: Refinement,
): Pick<BaseModelConfig, "num_labels" | "id2label" | "label2id"> {
  const id2label: Record<number, string> = {};
  if (c.id2label) {
    const n = Object.keys(c.id2label).length;
    for (const [key, label] of Object.entries(c.id2label)) {
      const id = Number(key);
      if (!/^\d+$/.test(key) || id >= n) {
        ctx.addIssue({
          code: "custom",
          path: ["id2label", key],
          message: `class ids must be the integers 0..${n - 1}, got "${key}"`,
          input: key,
        });
      }
      id2label[id] = label;
    }
    if (c.num_labels !== undefined && c.num_labels !== n) {
      ctx.addIssue({
        code: "custom",
        path: ["num_labels"],
        message: `is ${c.num_labels}, but id2label has ${n} labels`,
        input: c.num_labels,
      });
    }
  } else {
    for (let i = 0; i < (c.num_labels ?? 2); i++) id2label[i] = `LABEL_${i}`;
  }
  const label2id: Record<string, number> = {};
  for (const [id, label] of Object.entries(id2label)) label2id[label] = Number(id);
  if (c.label2id) {
    for (const [label, id] of Object.entries(c.label2id)) {
      if (id2label[id] !== label) {
        ctx.addIssue({
          code: "custom",
          path: ["label2id", label],
          message: `maps to ${id}, but id2label[${id}] is ${JSON.stringify(id2label[id] ?? null)}`,
          input: id,
        });
      }
    }
  }
  return { num_labels: Object.keys(id2label).length, id2label, label2id };
}

function resolveBase(
  modelType: ModelType,
  c: BaseInput,
  headDim: number,
  ctx: Refinement,
): BaseModelConfig {
  return {
    model_type: modelType,
    architectures: c.architectures ?? [],
    vocab_size: c.vocab_size,
    hidden_size: c.hidden_size,
    num_hidden_layers: c.num_hidden_layers,
    num_attention_heads: c.num_attention_heads,
    head_dim: headDim,
    intermediate_size: c.intermediate_size,
    max_position_embeddings: c.max_position_embeddings,
    tie_word_embeddings: c.tie_word_embeddings,
    pad_token_id: c.pad_token_id,
    bos_token_id: c.bos_token_id,
    eos_token_id: c.eos_token_id,
    ...resolveLabels(c, ctx),
    problem_type: c.problem_type,
    torch_dtype: c.torch_dtype ?? c.dtype ?? null,
    initializer_range: c.initializer_range,
  };
}

/** The schema of an encoder config.json (RoBERTa or BERT), producing an {@link EncoderConfig}. */
function encoderSchema<T extends "roberta" | "bert">(modelType: T) {
  return z.object({
    ...baseShape(ENCODER_DEFAULTS[modelType]),
    hidden_act: z.literal("gelu").default("gelu"),
    layer_norm_eps: z.number().positive().default(1e-12),
    type_vocab_size: z.int().nonnegative().default(2),
    hidden_dropout_prob: probability.default(0.1),
    attention_probs_dropout_prob: probability.default(0.1),
    classifier_dropout: probability.nullable().default(null),
    position_embedding_type: z.literal("absolute").default("absolute"),
  }).transform((c, ctx): EncoderConfig & { model_type: T } => {
    if (c.hidden_size % c.num_attention_heads !== 0) {
      ctx.addIssue({
        code: "custom",
        path: ["num_attention_heads"],
        message: `${c.num_attention_heads} does not divide hidden_size ${c.hidden_size}`,
        input: c.num_attention_heads,
      });
    }
    return {
      ...resolveBase(modelType, c, Math.floor(c.hidden_size / c.num_attention_heads), ctx),
      model_type: modelType,
      hidden_act: c.hidden_act,
      layer_norm_eps: c.layer_norm_eps,
      type_vocab_size: c.type_vocab_size,
      hidden_dropout_prob: c.hidden_dropout_prob,
      attention_probs_dropout_prob: c.attention_probs_dropout_prob,
      classifier_dropout: c.classifier_dropout,
      position_embedding_type: c.position_embedding_type,
    };
  });
}

/**
 * `rope_scaling`: older configs name the kind `type`, newer ones `rope_type`; "default" means none.
 * Kinds other than linear and llama3 (dynamic, yarn, longrope, …) change the RoPE tables in ways the
 * decoder does not implement, so they are rejected rather than ignored.
 */
const ropeScalingSchema = z.preprocess(
  (v) =>
    isObject(v) && v.rope_type === undefined && v.type !== undefined
      ? { ...v, rope_type: v.type }
      : v,
  z.discriminatedUnion("rope_type", [
    z.object({ rope_type: z.literal("default") }),
    z.object({ rope_type: z.literal("linear"), factor: z.number().positive() }),
    z.object({
      rope_type: z.literal("llama3"),
      factor: z.number().positive(),
      low_freq_factor: z.number().positive(),
      high_freq_factor: z.number().positive(),
      original_max_position_embeddings: positiveInt(),
    }).refine((r) => r.high_freq_factor > r.low_freq_factor, {
      path: ["high_freq_factor"],
      message: "must be greater than low_freq_factor",
    }),
  ]),
).nullable().default(null);

/**
 * transformers v5 saves RoPE settings as one `rope_parameters` object (`rope_theta` inside, plus
 * the scaling fields); fold it back into `rope_theta` + `rope_scaling` so one schema reads both.
 */
function foldRopeParameters(v: unknown): unknown {
  if (!isObject(v) || !isObject(v.rope_parameters)) return v;
  const { rope_theta, ...scaling } = v.rope_parameters;
  return {
    ...v,
    rope_theta: v.rope_theta ?? rope_theta,
    rope_scaling: v.rope_scaling ?? (Object.keys(scaling).length > 0 ? scaling : null),
  };
}

/** The schema of a LLaMA-family config.json, producing a {@link DecoderConfig}. */
function decoderSchema<T extends "llama" | "mistral">(modelType: T) {
  const object = z.object({
    ...baseShape(DECODER_DEFAULTS[modelType]),
    hidden_act: z.literal("silu").default("silu"),
    num_key_value_heads: positiveInt().nullable().optional(),
    head_dim: positiveInt().nullable().optional(),
    rms_norm_eps: z.number().positive().default(1e-6),
    rope_theta: z.number().positive().default(10000),
    rope_scaling: ropeScalingSchema,
    attention_bias: z.boolean().default(false),
    mlp_bias: z.boolean().default(false),
    attention_dropout: probability.default(0),
    // Mistral's Hugging Face default is a 4096-token window; LLaMA configs have no such field.
    ...(modelType === "mistral" ? { sliding_window: positiveInt().nullable().default(4096) } : {}),
  }).transform((c, ctx): DecoderConfig & { model_type: T } => {
    const kvHeads = c.num_key_value_heads ?? c.num_attention_heads;
    if (c.num_attention_heads % kvHeads !== 0) {
      ctx.addIssue({
        code: "custom",
        path: ["num_key_value_heads"],
        message: `${kvHeads} does not divide num_attention_heads ${c.num_attention_heads}`,
        input: kvHeads,
      });
    }
    if (c.head_dim == null && c.hidden_size % c.num_attention_heads !== 0) {
      ctx.addIssue({
        code: "custom",
        path: ["num_attention_heads"],
        message: `${c.num_attention_heads} does not divide hidden_size ${c.hidden_size} ` +
          `(give head_dim explicitly)`,
        input: c.num_attention_heads,
      });
    }
    const window = (c as { sliding_window?: number | null }).sliding_window ?? null;
    if (window !== null && window < c.max_position_embeddings) {
      ctx.addIssue({
        code: "custom",
        path: ["sliding_window"],
        message: `unsupported: a ${window}-token sliding window is shorter than ` +
          `max_position_embeddings ${c.max_position_embeddings}; only full attention ` +
          `(sliding_window null or ≥ max_position_embeddings) is implemented`,
        input: window,
      });
    }
    const headDim = c.head_dim ?? Math.floor(c.hidden_size / c.num_attention_heads);
    const scaling = c.rope_scaling;
    return {
      ...resolveBase(modelType, c, headDim, ctx),
      model_type: modelType,
      hidden_act: c.hidden_act,
      num_key_value_heads: kvHeads,
      rms_norm_eps: c.rms_norm_eps,
      rope_theta: c.rope_theta,
      rope_scaling: scaling === null || scaling.rope_type === "default" ? null : scaling,
      attention_bias: c.attention_bias,
      mlp_bias: c.mlp_bias,
      attention_dropout: c.attention_dropout,
      sliding_window: window,
    };
  });
  return z.preprocess(foldRopeParameters, object);
}

/**
 * The zod schema of each supported `model_type`'s config.json (without `model_type` itself, which
 * {@link parseConfig} resolves first). Each parses raw JSON into its normalized config.
 */
const CONFIG_SCHEMAS = {
  roberta: encoderSchema("roberta"),
  bert: encoderSchema("bert"),
  llama: decoderSchema("llama"),
  mistral: decoderSchema("mistral"),
} as const;

// ---- error formatting ----------------------------------------------------------------------------

function fieldPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const key of path) {
    if (typeof key === "number") out += `[${key}]`;
    else out += out === "" ? String(key) : `.${String(key)}`;
  }
  return out || "(root)";
}

function describeValue(v: unknown): string {
  if (v === undefined) return "nothing";
  if (Array.isArray(v)) return `an array ${JSON.stringify(v).slice(0, 60)}`;
  if (isObject(v)) return "an object";
  return JSON.stringify(v) ?? String(v);
}

const EXPECTED_NAMES: Record<string, string> = {
  int: "an integer",
  number: "a number",
  boolean: "a boolean",
  string: "a string",
  array: "an array",
  object: "an object",
  record: "an object",
  null: "null",
};

function expectedName(expected: string): string {
  return EXPECTED_NAMES[expected] ?? expected;
}

/** Flatten one zod issue into {field, detail}, with wording that says what was expected. */
function toConfigIssue(issue: z.core.$ZodIssue, prefix: readonly PropertyKey[] = []): ConfigIssue {
  const path = [...prefix, ...issue.path];
  const field = fieldPath(path);
  const got = describeValue(issue.input);
  switch (issue.code) {
    case "invalid_type":
      return {
        field,
        detail: issue.input === undefined
          ? `required, expected ${expectedName(issue.expected)}`
          : `expected ${expectedName(issue.expected)}, got ${got}`,
      };
    case "invalid_value":
      return {
        field,
        detail: `expected ${issue.values.map((v) => JSON.stringify(v)).join(" or ")}, got ${got}` +
          (field === "hidden_act" ? " (no other activation is implemented for this model)" : ""),
      };
    case "too_small":
    case "too_big": {
      const bound = issue.code === "too_small" ? issue.minimum : issue.maximum;
      const op = issue.code === "too_small"
        ? (issue.inclusive ? "≥" : ">")
        : (issue.inclusive ? "≤" : "<");
      return issue.origin === "array"
        ? { field, detail: `expected ${op} ${bound} items, got ${got}` }
        : { field, detail: `expected a value ${op} ${bound}, got ${got}` };
    }
    case "invalid_union": {
      if (issue.discriminator !== undefined) {
        const value = isObject(issue.input) ? issue.input[issue.discriminator] : issue.input;
        const options = ("options" in issue ? issue.options ?? [] : [])
          .map((o) => JSON.stringify(o)).join(", ");
        return {
          field,
          detail: `${describeValue(value)} is not supported; expected one of ${options}`,
        };
      }
      // A branch that failed below the top level matched the shape best: report its issue.
      const deeper = issue.errors.flat().find((e) => e.path.length > 0);
      if (deeper) return toConfigIssue(deeper, path);
      const expected = issue.errors.flat().map((e) =>
        e.code === "invalid_type" ? expectedName(e.expected) : e.message
      );
      return { field, detail: `expected ${[...new Set(expected)].join(" or ")}, got ${got}` };
    }
    default:
      return { field, detail: issue.message };
  }
}

// ---- entry points --------------------------------------------------------------------------------

/**
 * Infer a missing `model_type` as transformers' AutoConfig does: from `architectures` (e.g.
 * "RobertaForMaskedLM"), else from the path (e.g. `roberta-base/config.json`, or the
 * `models--FacebookAI--roberta-base` folder of a cache snapshot). Path components are tried from
 * the innermost out, longest type first, so "roberta" is not mistaken for "bert".
 */
function inferModelType(json: Record<string, unknown>, fileName: string): ModelType | undefined {
  const byLength = [...SUPPORTED_MODEL_TYPES].sort((a, b) => b.length - a.length);
  const architectures = Array.isArray(json.architectures) ? json.architectures : [];
  for (const arch of architectures) {
    if (typeof arch !== "string") continue;
    const found = byLength.find((t) => arch.toLowerCase().startsWith(t));
    if (found) return found;
  }
  for (let p = dirname(fileName); p !== dirname(p) && p !== "."; p = dirname(p)) {
    const name = basename(p).toLowerCase();
    const found = byLength.find((t) => name.includes(t));
    if (found) return found;
  }
  return undefined;
}

/**
 * Validate a parsed config.json and resolve Hugging Face's defaults.
 *
 * @param json the parsed JSON
 * @param fileName the file it came from, for error messages (and to infer a missing
 *   `model_type` from its folder name, as transformers does)
 * @returns the config, discriminated by `model_type`
 * @throws {ConfigError} naming the file, each invalid field and what was expected; an
 *   unsupported `model_type` error lists the supported ones
 *
 * @example
 * ```ts
 * import { parseConfig } from "./config.ts";
 * const c = parseConfig({ model_type: "bert", vocab_size: 30522, hidden_size: 768,
 *   num_hidden_layers: 12, num_attention_heads: 12, intermediate_size: 3072 }, "config.json");
 * console.log(c.model_type, c.head_dim); // bert 64
 * ```
 */
export function parseConfig(json: unknown, fileName: string): ModelConfig {
  if (!isObject(json)) {
    throw new ConfigError(fileName, [
      { field: "(root)", detail: `expected a JSON object, got ${describeValue(json)}` },
    ]);
  }
  const supported = SUPPORTED_MODEL_TYPES.join(", ");
  let modelType: ModelType;
  if (json.model_type === undefined) {
    const inferred = inferModelType(json, fileName);
    if (!inferred) {
      throw new ConfigError(fileName, [{
        field: "model_type",
        detail: `missing, and neither "architectures" nor the path names a supported model; ` +
          `expected one of ${supported}`,
      }]);
    }
    modelType = inferred;
  } else if (
    typeof json.model_type === "string" &&
    (SUPPORTED_MODEL_TYPES as readonly string[]).includes(json.model_type)
  ) {
    modelType = json.model_type as ModelType;
  } else {
    throw new ConfigError(fileName, [{
      field: "model_type",
      detail: `${
        describeValue(json.model_type)
      } is not supported; supported model types: ${supported}`,
    }]);
  }
  const result = CONFIG_SCHEMAS[modelType].safeParse(json, { reportInput: true });
  if (!result.success) {
    throw new ConfigError(fileName, result.error.issues.map((i) => toConfigIssue(i)));
  }
  return result.data;
}

/**
 * Read and validate `config.json` from a model directory (or a path to the file itself).
 *
 * @param dir the model directory, e.g. a Hugging Face cache snapshot
 * @returns the config, discriminated by `model_type`
 * @throws {ConfigError} when the file is missing, is not JSON, or is invalid
 *
 * @example
 * ```ts
 * import { loadConfig } from "./config.ts";
 * const config = await loadConfig("../shared/data/tokenizers/roberta-base");
 * console.log(config.model_type); // roberta
 * ```
 */
export async function loadConfig(dir: string): Promise<ModelConfig> {
  const file = dir.endsWith(".json") ? dir : join(dir, "config.json");
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    throw new ConfigError(file, [{ field: "(file)", detail: "not found; expected a config.json" }]);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(file, [
      { field: "(root)", detail: `not valid JSON (${(e as Error).message})` },
    ]);
  }
  return parseConfig(json, file);
}
