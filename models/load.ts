/**
 * Load a Hugging Face model folder (config.json + model.safetensors or a sharded index) into the
 * engine: RoBERTa/BERT for sequence classification, LLaMA-family decoders for causal LM (and
 * optionally sequence classification).
 *
 * Tensors are read one at a time from the file and uploaded, so a checkpoint never sits in host
 * memory whole. Frozen matrices may be kept as f16 on the GPU (`frozenDtype: "f16"`); norms,
 * biases and the task head (`classifier.*`, `score.*`, which every method trains) stay f32. Checkpoint keys are matched with and without the architecture prefix
 * (`roberta.`) and with the old `gamma`/`beta` LayerNorm names.
 *
 * @module
 */
import { join } from "node:path";
import { f16ToF32, mul, randNormal, type Tensor, tensor } from "../ops/mod.ts";
import { isEncoderConfig, loadConfig, type ModelConfig } from "./config.ts";
import { type EncoderDims, EncoderForSequenceClassification } from "./encoder.ts";
import { type LlamaDims, LlamaForCausalLM } from "./llama.ts";
import { EncoderForMaskedLM } from "./masked_lm.ts";
import { openCheckpoint } from "./safetensors.ts";
import type { InitKind, WeightSource } from "./weights.ts";
import { assertFiniteWeights } from "./validate.ts";

/** Options of {@link loadModel}. */
export interface LoadOptions {
  /** Labels of a classification head (encoders always have one; decoders get `score`). */
  numLabels?: number;
  /** Decoders: add a sequence-classification head (`score`). */
  classificationHead?: boolean;
  /** Storage of frozen matrices on the GPU. */
  frozenDtype?: "f32" | "f16";
  /** Seed of newly initialised head weights. */
  seed?: number;
  /** Standard deviation of newly initialised weights (default: config.json's initializer_range). */
  initStd?: number;
  /**
   * Initialise every tensor as Hugging Face's `from_config` does instead of reading a checkpoint
   * (pretraining from scratch: `dir` needs only config.json).
   */
  fromScratch?: boolean;
}

/** A loaded model and what was learned while loading it. */
export type LoadedModel =
  & { config: ModelConfig; dir: string; newlyInitialized: string[]; unused: string[] }
  & (
    | { kind: "encoder"; model: EncoderForSequenceClassification }
    | { kind: "decoder"; model: LlamaForCausalLM }
  );

/** The decoder dimensions of a LLaMA/Mistral config. */
export function llamaDimsFromConfig(c: ModelConfig, numLabels = 0): LlamaDims {
  if (isEncoderConfig(c)) throw new Error(`config: ${c.model_type} is not a decoder`);
  if (c.rope_scaling) {
    throw new Error(
      `config.json: rope_scaling of type "${c.rope_scaling.rope_type}" is not supported yet; ` +
        "supported: none",
    );
  }
  return {
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    numLayers: c.num_hidden_layers,
    numHeads: c.num_attention_heads,
    numKvHeads: c.num_key_value_heads,
    headDim: c.head_dim,
    rmsNormEps: c.rms_norm_eps,
    ropeTheta: c.rope_theta,
    tieWordEmbeddings: c.tie_word_embeddings,
    maxPositions: c.max_position_embeddings,
    numLabels,
    attentionDropout: c.attention_dropout,
  };
}

/** The encoder dimensions of a RoBERTa/BERT config. */
export function encoderDimsFromConfig(c: ModelConfig, numLabels: number): EncoderDims {
  if (!isEncoderConfig(c)) throw new Error(`config: ${c.model_type} is not an encoder`);
  return {
    kind: c.model_type,
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    numLayers: c.num_hidden_layers,
    numHeads: c.num_attention_heads,
    maxPositions: c.max_position_embeddings,
    typeVocabSize: c.type_vocab_size,
    layerNormEps: c.layer_norm_eps,
    hiddenDropout: c.hidden_dropout_prob,
    attentionDropout: c.attention_probs_dropout_prob,
    classifierDropout: c.classifier_dropout,
    padTokenId: c.pad_token_id ?? 1,
    numLabels,
  };
}

/** Checkpoint keys of a sequence-classification head (RoBERTa/BERT `classifier`, LLaMA `score`). */
const HEAD = /^(classifier|score)\./;

/** Checkpoint keys a model name may be stored under. */
function candidates(name: string, prefix: string | null): string[] {
  const out = [name];
  if (prefix && name.startsWith(`${prefix}.`)) out.push(name.slice(prefix.length + 1));
  for (const n of [...out]) {
    if (n.endsWith("LayerNorm.weight")) out.push(n.replace(/weight$/, "gamma"));
    if (n.endsWith("LayerNorm.bias")) out.push(n.replace(/bias$/, "beta"));
  }
  return out;
}

/** The checkpoint of a folder uploaded and served by name to a model constructor. */
interface OpenedWeights {
  config: ModelConfig;
  source: WeightSource;
  newlyInitialized: string[];
  /** Names of uploaded tensors no constructor asked for (disposed by this call). */
  unused: () => string[];
  /** Dispose every uploaded tensor (after a failed construction). */
  disposeAll: () => void;
  /** Every checkpoint tensor the model used is finite (an error names tensor and file). */
  checkUsed: () => Promise<void>;
}

/**
 * HF `_init_weights` for a tensor a from-scratch model needs: norms' weights 1, biases 0, every
 * matrix and embedding N(0, initializer_range²).
 */
function scratchKind(name: string): InitKind {
  if (/(norm|LayerNorm)\.(weight|gamma)$/.test(name)) return "ones";
  if (/\.(bias|beta)$/.test(name) || name === "lm_head.bias") return "zeros";
  return "normal";
}

async function openWeights(dir: string, options: LoadOptions): Promise<OpenedWeights> {
  const config = await loadConfig(dir);
  const { frozenDtype = "f32", seed = 0 } = options;
  const initStd = options.initStd ?? config.initializer_range;
  const prefix = isEncoderConfig(config) ? config.model_type : null;
  const uploaded = new Map<string, Tensor>();
  let origin = join(dir, "config.json");
  if (!options.fromScratch) {
    const reader = await openCheckpoint(dir);
    origin = reader.path;
    try {
      // Upload every floating tensor once, then hand them to the constructor by name.
      for (const name of reader.names) {
        const info = reader.info(name);
        if (!["F32", "F16", "BF16", "F64"].includes(info.dtype)) continue;
        // The task head trains in f32 under every method, even when the checkpoint already has it.
        const asF16 = frozenDtype === "f16" && info.shape.length === 2 && !HEAD.test(name);
        let t: Tensor;
        if (asF16 && info.dtype === "F16") {
          const bytes = await reader.readRaw(name);
          const bits = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
          // Upload through f32 values: tensor() re-encodes exactly (f16 → f32 → f16 is lossless).
          t = tensor(f16ToF32(bits), info.shape, { dtype: "f16", category: "weights" });
        } else {
          const values = await reader.readF32(name);
          t = tensor(values, info.shape, { dtype: asF16 ? "f16" : "f32", category: "weights" });
        }
        uploaded.set(name, t.keep());
      }
    } finally {
      reader.close();
    }
  }
  const used = new Set<string>();
  const newlyInitialized: string[] = [];
  let stream = 0;
  const init = (name: string, shape: readonly number[], kind: InitKind): Tensor => {
    newlyInitialized.push(name);
    if (kind === "normal") {
      const t = randNormal(shape, 0, initStd, {
        seed,
        stream: 1000 + stream++,
        category: "weights",
      });
      // HF zeroes the padding row of RoBERTa's/BERT's embeddings (nn.Embedding padding_idx).
      const padRow = isEncoderConfig(config) && options.fromScratch &&
          /word_embeddings\.weight$/.test(name)
        ? (config.pad_token_id ?? null)
        : null;
      if (padRow === null || padRow < 0 || padRow >= shape[0]) return t.keep();
      const mask = new Float32Array(shape[0] * shape[1]).fill(1);
      mask.fill(0, padRow * shape[1], (padRow + 1) * shape[1]);
      const keep = tensor(mask, shape, { category: "scratch" });
      const masked = mul(t, keep);
      t.dispose();
      keep.dispose();
      return masked.keep();
    }
    return tensor(
      new Float32Array(shape.reduce((p, d) => p * d, 1)).fill(kind === "ones" ? 1 : 0),
      shape,
      { category: "weights" },
    ).keep();
  };
  const source: WeightSource = {
    origin,
    get(name, shape) {
      for (const key of candidates(name, prefix)) {
        const t = uploaded.get(key);
        if (!t) continue;
        if (t.shape.join() !== shape.join()) {
          throw new Error(
            `${origin}: tensor ${key} has shape [${t.shape.join(", ")}], the config implies [${
              shape.join(", ")
            }]`,
          );
        }
        used.add(key);
        return t;
      }
      // From scratch (AutoModel.from_config): every tensor is new.
      return options.fromScratch ? init(name, shape, scratchKind(name)) : null;
    },
    init,
  };
  return {
    config,
    source,
    newlyInitialized,
    unused: () => {
      const names = [...uploaded.keys()].filter((n) => !used.has(n));
      for (const n of names) uploaded.get(n)!.dispose();
      return names;
    },
    disposeAll: () => {
      for (const t of uploaded.values()) t.dispose();
    },
    // New tensors are drawn here (finite); the checkpoint's are checked on the GPU.
    checkUsed: () => assertFiniteWeights([...uploaded].filter(([n]) => used.has(n)), origin),
  };
}

/**
 * Load the model in `dir`.
 *
 * @example
 * ```ts ignore
 * const { model } = await loadModel("stories260K-hf");
 * ```
 */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<LoadedModel> {
  const { config, source, newlyInitialized, unused, disposeAll, checkUsed } = await openWeights(
    dir,
    options,
  );
  try {
    if (isEncoderConfig(config)) {
      const numLabels = options.numLabels ?? config.num_labels;
      const model = new EncoderForSequenceClassification(
        encoderDimsFromConfig(config, numLabels),
        source,
      );
      const skipped = unused();
      await checkUsed().catch((e) => {
        model.dispose();
        throw e;
      });
      return { kind: "encoder", model, config, dir, newlyInitialized, unused: skipped };
    }
    const numLabels = options.classificationHead ? options.numLabels ?? config.num_labels : 0;
    const model = new LlamaForCausalLM(llamaDimsFromConfig(config, numLabels), source);
    const skipped = unused();
    await checkUsed().catch((e) => {
      model.dispose();
      throw e;
    });
    return { kind: "decoder", model, config, dir, newlyInitialized, unused: skipped };
  } catch (e) {
    disposeAll();
    throw e;
  }
}

/** What {@link loadMaskedLM} returns. */
export interface LoadedMaskedLM {
  kind: "masked-lm";
  model: EncoderForMaskedLM;
  config: ModelConfig;
  dir: string;
  newlyInitialized: string[];
  unused: string[];
}

/**
 * Load the encoder in `dir` with its masked-LM head (RobertaForMaskedLM / BertForMaskedLM); a
 * head the checkpoint lacks is initialised, and `fromScratch` initialises everything from
 * config.json alone (no weights file needed).
 *
 * @example
 * ```ts ignore
 * const { model } = await loadMaskedLM("recipes/encoder-small", { fromScratch: true, seed: 1 });
 * ```
 */
export async function loadMaskedLM(
  dir: string,
  options: LoadOptions = {},
): Promise<LoadedMaskedLM> {
  const { config, source, newlyInitialized, unused, disposeAll, checkUsed } = await openWeights(
    dir,
    options,
  );
  try {
    if (!isEncoderConfig(config)) {
      throw new Error(
        `${dir}/config.json: model_type "${config.model_type}" has no masked-LM head; ` +
          "--objective mlm needs a RoBERTa or BERT encoder (decoders use --objective clm)",
      );
    }
    const model = new EncoderForMaskedLM(encoderDimsFromConfig(config, 0), source);
    const skipped = unused();
    await checkUsed().catch((e) => {
      model.dispose();
      throw e;
    });
    return { kind: "masked-lm", model, config, dir, newlyInitialized, unused: skipped };
  } catch (e) {
    disposeAll();
    throw e;
  }
}
