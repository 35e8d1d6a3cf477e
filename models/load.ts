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
import { f16ToF32, randNormal, type Tensor, tensor } from "../ops/mod.ts";
import { isEncoderConfig, loadConfig, type ModelConfig } from "./config.ts";
import { type EncoderDims, EncoderForSequenceClassification } from "./encoder.ts";
import { type LlamaDims, LlamaForCausalLM } from "./llama.ts";
import { openCheckpoint } from "./safetensors.ts";
import type { InitKind, WeightSource } from "./weights.ts";

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

/**
 * Load the model in `dir`.
 *
 * @example
 * ```ts ignore
 * const { model } = await loadModel("stories260K-hf");
 * ```
 */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<LoadedModel> {
  const config = await loadConfig(dir);
  const reader = await openCheckpoint(dir);
  const { frozenDtype = "f32", seed = 0 } = options;
  const initStd = options.initStd ?? config.initializer_range;
  const prefix = isEncoderConfig(config) ? config.model_type : null;
  const uploaded = new Map<string, Tensor>();
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
  const used = new Set<string>();
  const newlyInitialized: string[] = [];
  let stream = 0;
  const source: WeightSource = {
    origin: dir,
    get(name, shape) {
      for (const key of candidates(name, prefix)) {
        const t = uploaded.get(key);
        if (!t) continue;
        if (t.shape.join() !== shape.join()) {
          throw new Error(
            `${dir}: tensor ${key} has shape [${t.shape.join(", ")}], the config implies [${
              shape.join(", ")
            }]`,
          );
        }
        used.add(key);
        return t;
      }
      return null;
    },
    init(name, shape, kind: InitKind) {
      newlyInitialized.push(name);
      if (kind === "normal") {
        return randNormal(shape, 0, initStd, { seed, stream: 1000 + stream++, category: "weights" })
          .keep();
      }
      return tensor(
        new Float32Array(shape.reduce((p, d) => p * d, 1)).fill(kind === "ones" ? 1 : 0),
        shape,
        {
          category: "weights",
        },
      ).keep();
    },
  };
  try {
    const unused = () => {
      const names = [...uploaded.keys()].filter((n) => !used.has(n));
      for (const n of names) uploaded.get(n)!.dispose();
      return names;
    };
    if (isEncoderConfig(config)) {
      const numLabels = options.numLabels ?? config.num_labels;
      const model = new EncoderForSequenceClassification(
        encoderDimsFromConfig(config, numLabels),
        source,
      );
      return { kind: "encoder", model, config, dir, newlyInitialized, unused: unused() };
    }
    const numLabels = options.classificationHead ? options.numLabels ?? config.num_labels : 0;
    const model = new LlamaForCausalLM(llamaDimsFromConfig(config, numLabels), source);
    return { kind: "decoder", model, config, dir, newlyInitialized, unused: unused() };
  } catch (e) {
    for (const t of uploaded.values()) t.dispose();
    throw e;
  }
}
