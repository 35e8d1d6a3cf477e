/**
 * RoBERTa and BERT encoders with Hugging Face module names and their sequence-classification
 * heads: post-LN blocks with GELU (erf), RoBERTa's position ids offset past the padding index,
 * BERT's token types and pooler, and a one-label regression head (STS-B).
 *
 * Dropout in training follows Hugging Face's RobertaModel/BertModel: hidden_dropout_prob on the
 * embeddings' output and on the attention and FFN outputs before each residual,
 * attention_probs_dropout_prob on the attention probabilities (inside the fused kernel), and the
 * head's dropout (classifier_dropout, or hidden_dropout_prob when it is null) before
 * RobertaClassificationHead's dense and out_proj, or before BERT's classifier. Evaluation applies
 * none.
 *
 * Memory: while the tape records, every intermediate is released as soon as the forward pass has
 * used it (see `Tensor.release`), so what stays is what backward reads, held by the rules that
 * read it and freed right after they run.
 *
 * @module
 */
import {
  add,
  embeddingSum,
  gelu,
  isGradEnabled,
  layerNorm,
  linear,
  linearResidual,
  reshape,
  scaledDotProductAttention,
  slice,
  squeeze,
  tanh,
  type Tensor,
  tensor,
  transpose,
} from "../ops/mod.ts";
import { ForwardContext } from "./context.ts";
import { Container, Linear, type LinearLike, ParamModule } from "./module.ts";
import { orInit, required, type WeightSource } from "./weights.ts";

/** The dimensions an encoder is built from (read from config.json by the loader). */
export interface EncoderDims {
  /** Architecture (config model_type): decides position ids, the head and the parameter prefix. */
  kind: "roberta" | "bert";
  /** V: rows of the word embedding. */
  vocabSize: number;
  /** H: width of the hidden states. */
  hiddenSize: number;
  /** Width of the feed-forward layer (`intermediate.dense` is [intermediateSize, H]). */
  intermediateSize: number;
  /** Number of encoder layers. */
  numLayers: number;
  /** Attention heads per layer (head size H / numHeads). */
  numHeads: number;
  /** Rows of the position embedding; RoBERTa's include padTokenId + 1 reserved positions. */
  maxPositions: number;
  /** Rows of the token-type (segment) embedding (1 for RoBERTa, 2 for BERT). */
  typeVocabSize: number;
  /** ε of every LayerNorm. */
  layerNormEps: number;
  /** Dropout probability on embeddings and sub-layer outputs (training only). */
  hiddenDropout: number;
  /** Dropout probability on the attention probabilities (training only; default 0). */
  attentionDropout?: number;
  /** Dropout probability of the classification head; null or absent: `hiddenDropout`. */
  classifierDropout?: number | null;
  /** Id of the padding token (RoBERTa's position ids start after it). */
  padTokenId: number;
  /** Labels of the classification head (1: regression). */
  numLabels: number;
}

/** Inputs of an encoder forward pass. */
export interface EncoderInputs {
  /** Token ids [B, T] (i32, with hostData: position ids are derived on the host). */
  ids: Tensor;
  /** 1 for real tokens, 0 for padding [B, T]. */
  attentionMask: Tensor;
  /** Segment ids [B, T] (BERT); zeros when absent. */
  tokenTypeIds?: Tensor;
}

/**
 * RoBERTa's position ids: padding keeps `padIdx`, real tokens count up from padIdx + 1
 * (Hugging Face's create_position_ids_from_input_ids).
 */
export function robertaPositionIds(
  ids: ArrayLike<number>,
  b: number,
  t: number,
  padIdx: number,
): Int32Array {
  const out = new Int32Array(b * t);
  for (let i = 0; i < b; i++) {
    let count = 0;
    for (let j = 0; j < t; j++) {
      const real = ids[i * t + j] !== padIdx;
      if (real) count++;
      out[i * t + j] = real ? count + padIdx : padIdx;
    }
  }
  return out;
}

/**
 * Release `t` (unless it is one of `still`, e.g. what a dropout in evaluation handed back as
 * is) when the tape records: backward holds what it reads. Without grad nothing is released,
 * because hooks that capture layer inputs (EVA's data pass, under noGrad) read them after the
 * forward.
 */
function done(t: Tensor, ...still: Tensor[]): void {
  if (isGradEnabled() && !still.includes(t)) t.release();
}

function layerNormModule(w: WeightSource, name: string, h: number): ParamModule {
  return new ParamModule({
    weight: required(w, `${name}.weight`, [h]),
    bias: required(w, `${name}.bias`, [h]),
  });
}

function linearFrom(
  w: WeightSource,
  name: string,
  dOut: number,
  dIn: number,
  init = false,
): Linear {
  if (init) {
    return new Linear(
      orInit(w, `${name}.weight`, [dOut, dIn], "normal"),
      orInit(w, `${name}.bias`, [dOut], "zeros"),
    );
  }
  return new Linear(
    required(w, `${name}.weight`, [dOut, dIn]),
    required(w, `${name}.bias`, [dOut]),
  );
}

/** `attention.self` + `attention.output`, `intermediate`, `output` of one encoder layer. */
export class EncoderLayer extends Container {
  /** Build layer `prefix` (e.g. `roberta.encoder.layer.3`) from its weights in `w`. */
  constructor(readonly dims: EncoderDims, w: WeightSource, prefix: string) {
    super();
    const h = dims.hiddenSize;
    const attention = this.add("attention", new Container());
    const self = attention.add("self", new Container());
    for (const n of ["query", "key", "value"]) {
      self.add(n, linearFrom(w, `${prefix}.attention.self.${n}`, h, h));
    }
    const attnOut = attention.add("output", new Container());
    attnOut.add("dense", linearFrom(w, `${prefix}.attention.output.dense`, h, h));
    attnOut.add("LayerNorm", layerNormModule(w, `${prefix}.attention.output.LayerNorm`, h));
    const inter = this.add("intermediate", new Container());
    inter.add("dense", linearFrom(w, `${prefix}.intermediate.dense`, dims.intermediateSize, h));
    const out = this.add("output", new Container());
    out.add("dense", linearFrom(w, `${prefix}.output.dense`, h, dims.intermediateSize));
    out.add("LayerNorm", layerNormModule(w, `${prefix}.output.LayerNorm`, h));
  }

  /** LayerNorm `path`; its output is read next by products (its pack is written with it). */
  #norm(path: string, x: Tensor): Tensor {
    const p = this.getModule(path) as ParamModule;
    return layerNorm(x, p.get("weight"), p.get("bias"), this.dims.layerNormEps, { packOut: true });
  }

  #lin(path: string, x: Tensor): Tensor {
    return (this.getModule(path) as LinearLike).forward(x);
  }

  /**
   * intermediate.dense. Before a frozen plain output.dense (which reads gelu of this output
   * through a pack), a plain one writes that pack in its own product (packGelu).
   */
  #intermediate(x: Tensor): Tensor {
    const m = this.getModule("intermediate.dense");
    const out = this.getModule("output.dense");
    const frozen = out instanceof Linear && !out.weight.requiresGrad &&
      !(out.bias?.requiresGrad ?? false);
    if (m instanceof Linear && frozen) {
      return linear(x, m.weight, m.bias ?? undefined, { packGelu: true });
    }
    return this.#lin("intermediate.dense", x);
  }

  /**
   * dropout(Linear `path`(x)) + residual. A plain Linear runs it as one fused op (dropout and the
   * add in the product's epilogue: neither the Linear's output nor its dropped copy is kept); an
   * adapted layer composes the same steps. Both draw the same dropout stream.
   */
  #residual(
    path: string,
    x: Tensor,
    residual: Tensor,
    ctx: ForwardContext,
    inputGelu = false,
  ): Tensor {
    const m = this.getModule(path);
    const p = this.dims.hiddenDropout;
    if (m instanceof Linear) {
      const b = m.bias ?? undefined;
      return linearResidual(x, m.weight, b, residual, ctx.fusedDropout(p), { inputGelu });
    }
    if (inputGelu) {
      // An adapted output.dense reads gelu(x) as a tensor.
      const a = gelu(x);
      const out = this.#residual(path, a, residual, ctx);
      done(a);
      return out;
    }
    const y = (m as LinearLike).forward(x);
    const dropped = ctx.dropout(y, p);
    done(y, dropped);
    const out = add(dropped, residual);
    done(dropped);
    return out;
  }

  /**
   * x [B, T, H] → [B, T, H]; keyMask [B, T] (1 keep, 0 pad). With `firstOnly` (the last layer
   * under a [CLS]-pooling head) everything after the attention runs on the first token's rows
   * alone and the output is [B, 1, H]: those rows' values and gradients are the full layer's
   * (each op is row-wise, and dropout draws each row's mask of the whole tensor), for 1/T of the
   * feed-forward work.
   */
  forward(x: Tensor, keyMask: Tensor, ctx: ForwardContext, firstOnly = false): Tensor {
    const [b, t, h] = x.shape;
    const nh = this.dims.numHeads;
    // Every view made on the way is released too: a view keeps its storage alive.
    const split = (y: Tensor) => {
      const heads = reshape(y, [b, t, nh, h / nh]);
      const out = transpose(heads, 1, 2);
      done(y);
      done(heads);
      return out;
    };
    const q = split(this.#lin("attention.self.query", x));
    const k = split(this.#lin("attention.self.key", x));
    const v = split(this.#lin("attention.self.value", x));
    const attn = scaledDotProductAttention(q, k, v, {
      keyPaddingMask: keyMask,
      dropout: ctx.attentionDropout(this.dims.attentionDropout ?? 0),
      packOut: !firstOnly, // read next by attention.output.dense (all its rows)
      packGrads: true, // read next by the q, k, v projections' backward
    });
    for (const p of [q, k, v]) done(p);
    const byToken = transpose(attn, 1, 2);
    const all = reshape(byToken, [b, t, h]);
    done(attn);
    done(byToken, all);
    if (firstOnly) {
      // Row b of the [B, H] rows is row b·T of the [B·T, H] the layer would have.
      return ctx.withRowStep(t, () => {
        const first = (y: Tensor) => {
          const row = slice(y, 1, 0, 1);
          const out = reshape(row, [b, h]);
          done(row, out);
          return out;
        };
        const merged = first(all), residual = first(x);
        done(all);
        const out = this.#block(merged, residual, ctx);
        done(merged);
        done(residual);
        const shaped = reshape(out, [b, 1, h]);
        done(out, shaped);
        return shaped;
      });
    }
    const out = this.#block(all, x, ctx);
    done(all);
    return out;
  }

  /** attention.output (dense, dropout, residual x, LayerNorm) and the feed-forward block. */
  #block(merged: Tensor, x: Tensor, ctx: ForwardContext): Tensor {
    const a1 = this.#residual("attention.output.dense", merged, x, ctx);
    const h1 = this.#norm("attention.output.LayerNorm", a1);
    done(a1);
    const i1 = this.#intermediate(h1);
    // output.dense reads gelu(i1): a frozen one applies GELU while packing i1 (and its backward
    // in dx's epilogue), so gelu(i1) is never stored.
    const o = this.#residual("output.dense", i1, h1, ctx, true);
    done(i1);
    done(h1);
    const out = this.#norm("output.LayerNorm", o);
    done(o);
    return out;
  }
}

/**
 * The RoBERTa/BERT backbone under `roberta` or `bert` (embeddings and layers, no pooler) and its
 * forward pass to the final hidden states; the task models below add their heads.
 */
export class EncoderModel extends Container {
  /** Build the backbone from `w` (every tensor required). */
  constructor(readonly dims: EncoderDims, w: WeightSource) {
    super();
    const d = dims;
    const base = d.kind;
    const backbone = this.add(base, new Container());
    const emb = backbone.add("embeddings", new Container());
    emb.add(
      "word_embeddings",
      new ParamModule({
        weight: required(w, `${base}.embeddings.word_embeddings.weight`, [
          d.vocabSize,
          d.hiddenSize,
        ]),
      }),
    );
    emb.add(
      "position_embeddings",
      new ParamModule({
        weight: required(w, `${base}.embeddings.position_embeddings.weight`, [
          d.maxPositions,
          d.hiddenSize,
        ]),
      }),
    );
    emb.add(
      "token_type_embeddings",
      new ParamModule({
        weight: required(w, `${base}.embeddings.token_type_embeddings.weight`, [
          d.typeVocabSize,
          d.hiddenSize,
        ]),
      }),
    );
    emb.add("LayerNorm", layerNormModule(w, `${base}.embeddings.LayerNorm`, d.hiddenSize));
    const layers = backbone.add("encoder", new Container()).add("layer", new Container());
    for (let i = 0; i < d.numLayers; i++) {
      layers.add(String(i), new EncoderLayer(d, w, `${base}.encoder.layer.${i}`));
    }
  }

  /**
   * Final hidden states [B, T, H] (dropout as `ctx` says; default: the running context). With
   * `firstOnly` and gradients recorded, the last layer computes only the first token's rows and
   * the result is [B, 1, H] (see {@link EncoderLayer.forward}): for heads that read nothing else.
   * Without gradients every row is computed (EVA's data pass captures whole layer inputs).
   */
  hidden(
    inputs: EncoderInputs,
    ctx: ForwardContext = ForwardContext.current(),
    firstOnly = false,
  ): Tensor {
    // Adapter layers (LoRA's dropout) read the running context: make it `ctx`.
    if (ForwardContext.current() !== ctx) {
      return ctx.run(() => this.hidden(inputs, ctx, firstOnly));
    }
    const d = this.dims;
    const [b, t] = inputs.ids.shape;
    const host = inputs.ids.hostData;
    if (!host) {
      throw new Error("encoder inputs: ids must be built from host data (tensor(Int32Array))");
    }
    const positions = d.kind === "roberta"
      ? robertaPositionIds(host, b, t, d.padTokenId)
      : Int32Array.from({ length: b * t }, (_, i) => i % t);
    if (d.kind === "roberta" && t + d.padTokenId + 1 > d.maxPositions) {
      throw new Error(
        `sequence length ${t} exceeds RoBERTa's ${d.maxPositions - d.padTokenId - 1} positions`,
      );
    }
    if (d.kind === "bert" && t > d.maxPositions) {
      throw new Error(`sequence length ${t} exceeds BERT's ${d.maxPositions} positions`);
    }
    const emb = this.getModule(`${d.kind}.embeddings`);
    const table = (n: string) => (emb.getModule(n) as ParamModule).get("weight");
    const types = inputs.tokenTypeIds ?? tensor(new Int32Array(b * t), [b, t]);
    const positionIds = tensor(positions, [b, t]);
    // word + position + token type, looked up and added in one kernel.
    const summed = embeddingSum([
      { weight: table("word_embeddings"), ids: inputs.ids },
      { weight: table("position_embeddings"), ids: positionIds },
      { weight: table("token_type_embeddings"), ids: types },
    ]);
    done(positionIds);
    if (types !== inputs.tokenTypeIds) done(types);
    const ln = emb.getModule("LayerNorm") as ParamModule;
    // The embeddings' dropout runs in the LayerNorm's kernel, which also packs the result for
    // the first layer's projections.
    let x = layerNorm(summed, ln.get("weight"), ln.get("bias"), d.layerNormEps, {
      dropout: ctx.fusedDropout(d.hiddenDropout),
      packOut: true,
    });
    done(summed);
    const layers = this.getModule(`${d.kind}.encoder.layer`);
    for (let i = 0; i < d.numLayers; i++) {
      const next = (layers.getModule(String(i)) as EncoderLayer).forward(
        x,
        inputs.attentionMask,
        ctx,
        firstOnly && isGradEnabled() && i === d.numLayers - 1,
      );
      done(x);
      x = next;
    }
    return x;
  }
}

/**
 * RobertaForSequenceClassification / BertForSequenceClassification: the backbone under `roberta`
 * or `bert`, and the head (`classifier.dense` + `classifier.out_proj` for RoBERTa; `bert.pooler`
 * + `classifier` for BERT). Missing head weights are initialised as Hugging Face does.
 */
export class EncoderForSequenceClassification extends EncoderModel {
  /** Build the model from `w`; head weights absent from `w` are initialised, the rest required. */
  constructor(dims: EncoderDims, w: WeightSource) {
    super(dims, w);
    const d = dims;
    if (d.kind === "roberta") {
      const head = this.add("classifier", new Container());
      head.add("dense", linearFrom(w, "classifier.dense", d.hiddenSize, d.hiddenSize, true));
      head.add("out_proj", linearFrom(w, "classifier.out_proj", d.numLabels, d.hiddenSize, true));
    } else {
      (this.getModule("bert") as Container).add("pooler", new Container()).add(
        "dense",
        linearFrom(w, "bert.pooler.dense", d.hiddenSize, d.hiddenSize, true),
      );
      this.add("classifier", linearFrom(w, "classifier", d.numLabels, d.hiddenSize, true));
    }
  }

  /**
   * Whether a training forward computes only the [CLS] rows after the last layer's attention
   * (the head reads nothing else; see {@link EncoderLayer.forward}). The values are the same
   * either way; false computes every row, as Hugging Face does.
   */
  firstTokenOnly = true;

  /** Names of the head's modules (trainable in every method, saved as modules_to_save). */
  get headModules(): string[] {
    return this.dims.kind === "roberta" ? ["classifier"] : ["classifier", "bert.pooler"];
  }

  /**
   * Classification logits [B, numLabels] (regression: [B, 1]). Without `ctx`, the context of the
   * running forward pass ({@link ForwardContext.current}): evaluation outside training.
   */
  forward(inputs: EncoderInputs, ctx: ForwardContext = ForwardContext.current()): Tensor {
    if (ForwardContext.current() !== ctx) return ctx.run(() => this.forward(inputs, ctx));
    // Only the first token's rows are read: the last layer computes no others when training.
    const h = this.hidden(inputs, ctx, this.firstTokenOnly);
    const firstRow = slice(h, 1, 0, 1);
    const first = squeeze(firstRow, 1); // the <s> / [CLS] token, [B, H]
    done(h);
    done(firstRow);
    const p = this.dims.classifierDropout ?? this.dims.hiddenDropout;
    const lin = (path: string, x: Tensor) => (this.getModule(path) as LinearLike).forward(x);
    // Once dropped (or read by the first dense), the [CLS] view and the hidden states it keeps
    // alive are released.
    if (this.dims.kind === "roberta") {
      const xd = ctx.dropout(first, p);
      done(first, xd);
      const pre = lin("classifier.dense", xd);
      done(xd);
      const z = tanh(pre);
      done(pre);
      return lin("classifier.out_proj", ctx.dropout(z, p));
    }
    const pre = lin("bert.pooler.dense", first);
    done(first);
    const pooled = tanh(pre);
    done(pre);
    return lin("classifier", ctx.dropout(pooled, p));
  }
}
