/**
 * Tiny randomly initialised models for tests: host weight maps in Hugging Face names, and a
 * WeightSource that uploads them.
 */
import { randNormal, type Tensor, tensor } from "../../ops/mod.ts";
import type { EncoderDims } from "../../models/encoder.ts";
import type { LlamaDims } from "../../models/llama.ts";
import type { WeightSource } from "../../models/weights.ts";
import { randomArray } from "../helpers.ts";
import type { HostWeights, RefEncoderDims, RefLlamaDims } from "./reference.ts";

/** A WeightSource over host arrays (checks shapes like the checkpoint loader does). */
export function hostSource(w: HostWeights, seed = 0): WeightSource {
  let stream = 0;
  return {
    get(name: string, shape: readonly number[]): Tensor | null {
      const a = w.get(name);
      if (!a) return null;
      const n = shape.reduce((p, d) => p * d, 1);
      if (a.length !== n) throw new Error(`${name}: ${a.length} values for shape [${shape}]`);
      return tensor(Float32Array.from(a), shape, { category: "weights" });
    },
    init(_name: string, shape: readonly number[], kind): Tensor {
      if (kind === "normal") return randNormal(shape, 0, 0.02, { seed, stream: stream++ });
      return tensor(
        new Float32Array(shape.reduce((p, d) => p * d, 1)).fill(kind === "ones" ? 1 : 0),
        shape,
      );
    },
  };
}

/** Random LLaMA weights (norm weights near 1 so activations stay well scaled). */
export function llamaWeights(d: RefLlamaDims, seed: number): HostWeights {
  const w: HostWeights = new Map();
  let s = seed;
  const put = (name: string, n: number, lo = -0.5, hi = 0.5) =>
    w.set(name, randomArray(n, s++, lo, hi));
  const hd = d.hidden / d.heads;
  put("model.embed_tokens.weight", d.vocab * d.hidden, -1, 1);
  for (let l = 0; l < d.layers; l++) {
    const p = `model.layers.${l}`;
    put(`${p}.self_attn.q_proj.weight`, d.hidden * d.hidden);
    put(`${p}.self_attn.k_proj.weight`, d.kvHeads * hd * d.hidden);
    put(`${p}.self_attn.v_proj.weight`, d.kvHeads * hd * d.hidden);
    put(`${p}.self_attn.o_proj.weight`, d.hidden * d.hidden);
    put(`${p}.mlp.gate_proj.weight`, d.inter * d.hidden);
    put(`${p}.mlp.up_proj.weight`, d.inter * d.hidden);
    put(`${p}.mlp.down_proj.weight`, d.hidden * d.inter);
    put(`${p}.input_layernorm.weight`, d.hidden, 0.8, 1.2);
    put(`${p}.post_attention_layernorm.weight`, d.hidden, 0.8, 1.2);
  }
  put("model.norm.weight", d.hidden, 0.8, 1.2);
  if (!d.tied) put("lm_head.weight", d.vocab * d.hidden);
  return w;
}

/** The engine's dims for a reference LLaMA. */
export function llamaDims(d: RefLlamaDims, numLabels = 0): LlamaDims {
  return {
    vocabSize: d.vocab,
    hiddenSize: d.hidden,
    intermediateSize: d.inter,
    numLayers: d.layers,
    numHeads: d.heads,
    numKvHeads: d.kvHeads,
    headDim: d.hidden / d.heads,
    rmsNormEps: d.eps,
    ropeTheta: d.theta,
    tieWordEmbeddings: d.tied,
    maxPositions: 64,
    numLabels,
  };
}

/** A two-layer RoBERTa small enough for whole training steps in tests (two labels). */
export const SMALL_ROBERTA: RefEncoderDims = {
  kind: "roberta",
  vocab: 40,
  hidden: 16,
  inter: 64,
  layers: 2,
  heads: 2,
  eps: 1e-5,
  pad: 1,
  labels: 2,
};

/** Random encoder weights including the classification head. */
export function encoderWeights(d: RefEncoderDims, maxPositions: number, seed: number): HostWeights {
  const w: HostWeights = new Map();
  let s = seed;
  const put = (name: string, n: number, lo = -0.5, hi = 0.5) =>
    w.set(name, randomArray(n, s++, lo, hi));
  const b = d.kind, h = d.hidden;
  put(`${b}.embeddings.word_embeddings.weight`, d.vocab * h, -1, 1);
  put(`${b}.embeddings.position_embeddings.weight`, maxPositions * h, -1, 1);
  put(`${b}.embeddings.token_type_embeddings.weight`, 2 * h, -1, 1);
  const ln = (p: string) => {
    put(`${p}.weight`, h, 0.8, 1.2);
    put(`${p}.bias`, h, -0.1, 0.1);
  };
  const lin = (p: string, o: number, i: number) => {
    put(`${p}.weight`, o * i);
    put(`${p}.bias`, o, -0.1, 0.1);
  };
  ln(`${b}.embeddings.LayerNorm`);
  for (let l = 0; l < d.layers; l++) {
    const p = `${b}.encoder.layer.${l}`;
    for (const n of ["query", "key", "value"]) lin(`${p}.attention.self.${n}`, h, h);
    lin(`${p}.attention.output.dense`, h, h);
    ln(`${p}.attention.output.LayerNorm`);
    lin(`${p}.intermediate.dense`, d.inter, h);
    lin(`${p}.output.dense`, h, d.inter);
    ln(`${p}.output.LayerNorm`);
  }
  if (b === "roberta") {
    lin("classifier.dense", h, h);
    lin("classifier.out_proj", d.labels, h);
  } else {
    lin("bert.pooler.dense", h, h);
    lin("classifier", d.labels, h);
  }
  return w;
}

/** The engine's dims for a reference encoder. */
export function encoderDims(d: RefEncoderDims, maxPositions: number): EncoderDims {
  return {
    kind: d.kind,
    vocabSize: d.vocab,
    hiddenSize: d.hidden,
    intermediateSize: d.inter,
    numLayers: d.layers,
    numHeads: d.heads,
    maxPositions,
    typeVocabSize: 2,
    layerNormEps: d.eps,
    hiddenDropout: 0.1,
    padTokenId: d.pad,
    numLabels: d.labels,
  };
}
