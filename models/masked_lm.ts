/**
 * RobertaForMaskedLM / BertForMaskedLM: the encoder backbone and Hugging Face's language-model
 * head, whose decoder is tied to the word embeddings.
 *
 * RoBERTa's head is `lm_head.dense` → GELU → `lm_head.layer_norm` → word_embeddingsᵀ +
 * `lm_head.bias`; BERT's is `cls.predictions.transform.dense` → GELU →
 * `cls.predictions.transform.LayerNorm` → word_embeddingsᵀ + `cls.predictions.bias`. The decoder
 * weight is the embedding tensor itself (not a parameter of its own), so a full fine-tune updates
 * it once with the sum of both gradients, as a tied `nn.Parameter` does in PyTorch.
 *
 * The loss only computes logits at the selected (masked) positions: rows with label −100 would be
 * ignored by the cross-entropy anyway, and the [B·T, V] logits are the largest tensor of a step.
 *
 * @module
 */
import {
  gelu,
  indexSelect,
  layerNorm,
  linear,
  linearCrossEntropy,
  reshape,
  type Tensor,
  tensor,
} from "../ops/mod.ts";
import { ForwardContext } from "./context.ts";
import { type EncoderDims, type EncoderInputs, EncoderModel } from "./encoder.ts";
import { Container, Linear, type LinearLike, ParamModule } from "./module.ts";
import { orInit, type WeightSource } from "./weights.ts";

/** Hugging Face names of an MLM head's modules for each encoder kind. */
export function maskedLmHeadNames(kind: EncoderDims["kind"]): {
  root: string;
  dense: string;
  norm: string;
} {
  return kind === "roberta"
    ? { root: "lm_head", dense: "lm_head.dense", norm: "lm_head.layer_norm" }
    : {
      root: "cls.predictions",
      dense: "cls.predictions.transform.dense",
      norm: "cls.predictions.transform.LayerNorm",
    };
}

/** An encoder with its masked-language-model head. Missing head weights are initialised. */
export class EncoderForMaskedLM extends EncoderModel {
  /** Build the backbone (required) and the head (initialised when `w` lacks it) from `w`. */
  constructor(dims: EncoderDims, w: WeightSource) {
    super(dims, w);
    const h = dims.hiddenSize;
    const names = maskedLmHeadNames(dims.kind);
    // The head's own bias lives on its root module (`lm_head.bias`, `cls.predictions.bias`).
    const root = new HeadRoot(orInit(w, `${names.root}.bias`, [dims.vocabSize], "zeros"));
    const [first, second] = names.root.split(".");
    if (second) this.add(first, new Container()).add(second, root);
    else this.add(first, root);
    const transform = dims.kind === "roberta" ? root : root.add("transform", new Container());
    transform.add(
      "dense",
      new Linear(
        orInit(w, `${names.dense}.weight`, [h, h], "normal"),
        orInit(w, `${names.dense}.bias`, [h], "zeros"),
      ),
    );
    transform.add(
      dims.kind === "roberta" ? "layer_norm" : "LayerNorm",
      new ParamModule({
        weight: orInit(w, `${names.norm}.weight`, [h], "ones"),
        bias: orInit(w, `${names.norm}.bias`, [h], "zeros"),
      }),
    );
  }

  /** Names of the head's modules. */
  get headModules(): string[] {
    return [maskedLmHeadNames(this.dims.kind).root];
  }

  /** The tied decoder weight: the word embeddings [V, H]. */
  get decoderWeight(): Tensor {
    const emb = this.getModule(`${this.dims.kind}.embeddings.word_embeddings`) as ParamModule;
    return emb.get("weight");
  }

  /** The head's transform of hidden states [N, H]: dense → GELU → LayerNorm, [N, H]. */
  headTransform(hidden: Tensor): Tensor {
    const names = maskedLmHeadNames(this.dims.kind);
    const dense = this.getModule(names.dense) as LinearLike;
    const norm = this.getModule(names.norm) as ParamModule;
    return layerNorm(
      gelu(dense.forward(hidden)),
      norm.get("weight"),
      norm.get("bias"),
      this.dims.layerNormEps,
    );
  }

  /** The decoder's bias [V] (`lm_head.bias` / `cls.predictions.bias`). */
  get decoderBias(): Tensor {
    return (this.getModule(maskedLmHeadNames(this.dims.kind).root) as HeadRoot).get("bias");
  }

  /** Vocabulary logits [N, V] of hidden states [N, H]. */
  headLogits(hidden: Tensor): Tensor {
    return linear(this.headTransform(hidden), this.decoderWeight, this.decoderBias);
  }

  /** Vocabulary logits [B, T, V] at every position (inference; training uses {@link mlmLoss}). */
  forward(inputs: EncoderInputs, ctx: ForwardContext = ForwardContext.current()): Tensor {
    const h = this.hidden(inputs, ctx);
    const [b, t, hs] = h.shape;
    return reshape(this.headLogits(reshape(h, [b * t, hs])), [b, t, this.dims.vocabSize]);
  }

  /**
   * Vocabulary logits [M, V] at the M positions whose label is not −100 (labels [B·T] on the
   * host, as {@link maskTokens} returns them) and those labels; throws when none is selected.
   */
  maskedLogits(
    inputs: EncoderInputs,
    labels: Int32Array,
    ctx: ForwardContext = ForwardContext.current(),
  ): { logits: Tensor; targets: Int32Array } {
    const { picked, targets } = this.#maskedHidden(inputs, labels, ctx);
    return { logits: this.headLogits(picked), targets };
  }

  /** Hidden states [M, H] at the positions whose label is not −100, and those labels. */
  #maskedHidden(
    inputs: EncoderInputs,
    labels: Int32Array,
    ctx: ForwardContext,
  ): { picked: Tensor; targets: Int32Array } {
    const h = this.hidden(inputs, ctx);
    const [b, t, hs] = h.shape;
    if (labels.length !== b * t) {
      throw new Error(`mlmLoss: ${labels.length} labels for ${b}×${t} positions`);
    }
    const rows: number[] = [];
    const targets: number[] = [];
    for (let i = 0; i < labels.length; i++) {
      if (labels[i] !== -100) {
        rows.push(i);
        targets.push(labels[i]);
      }
    }
    if (!rows.length) throw new Error("mlmLoss: no masked position in the batch");
    const picked = indexSelect(
      reshape(h, [b * t, hs]),
      0,
      tensor(Int32Array.from(rows), [rows.length]),
    );
    return { picked, targets: Int32Array.from(targets) };
  }

  /**
   * Mean cross-entropy over the positions whose label is not −100: the values of
   * crossEntropy({@link maskedLogits}), computed by {@link linearCrossEntropy}, which never
   * holds a separate [M, V] gradient next to the logits.
   */
  mlmLoss(
    inputs: EncoderInputs,
    labels: Int32Array,
    ctx: ForwardContext = ForwardContext.current(),
  ): Tensor {
    const { picked, targets } = this.#maskedHidden(inputs, labels, ctx);
    return linearCrossEntropy(
      this.headTransform(picked),
      this.decoderWeight,
      this.decoderBias,
      tensor(targets, [targets.length]),
    );
  }
}

/** The head's root module: holds the decoder's bias and the transform's children. */
class HeadRoot extends Container {
  constructor(bias: Tensor) {
    super();
    this.addParameter("bias", bias);
  }

  /** A parameter of this module by name. */
  get(name: string): Tensor {
    return this.param(name);
  }
}
