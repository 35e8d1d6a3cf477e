/**
 * LLaMA-family decoders (LLaMA 2/3, TinyLlama, Mistral-style grouped-query attention) with
 * Hugging Face module names: RMSNorm, RoPE with rope_theta, SwiGLU MLP, tied or untied LM head,
 * a causal-LM loss, a sequence-classification head on the last non-padding token, and a KV cache
 * for generation.
 *
 * Shapes: hidden states are [B, T, H]; attention works on [B, heads, T, headDim].
 *
 * @module
 */
import {
  add as addResidual,
  crossEntropy,
  embedding,
  empty,
  indexSelect,
  linear,
  mul,
  reshape,
  rmsNorm,
  rope,
  scaledDotProductAttention,
  silu,
  slice,
  type Tensor,
  tensor,
  transpose,
} from "../ops/mod.ts";
import { assign } from "../ops/elementwise.ts";
import { ForwardContext } from "./context.ts";
import { Container, Linear, type LinearLike, ParamModule } from "./module.ts";
import { orInit, required, type WeightSource } from "./weights.ts";

/** The dimensions a LLaMA decoder is built from (read from config.json by the loader). */
export interface LlamaDims {
  /** V: rows of the token embedding and of the LM head. */
  vocabSize: number;
  /** H: width of the hidden states. */
  hiddenSize: number;
  /** Width of the MLP (gate_proj and up_proj are [intermediateSize, H]). */
  intermediateSize: number;
  /** Number of decoder layers. */
  numLayers: number;
  /** Query heads per layer. */
  numHeads: number;
  /** Key/value heads per layer (grouped-query attention: numHeads is a multiple of it). */
  numKvHeads: number;
  /** Size of one head (q_proj is [numHeads · headDim, H]). */
  headDim: number;
  /** ε of every RMSNorm. */
  rmsNormEps: number;
  /** Base θ of the rotary position embedding. */
  ropeTheta: number;
  /** The LM head reuses the token embedding (no `lm_head` weight). */
  tieWordEmbeddings: boolean;
  /** Longest sequence (prompt + generated tokens) the model supports. */
  maxPositions: number;
  /** Labels of the sequence-classification head (0: no head). */
  numLabels: number;
  /** Dropout probability on the attention probabilities (training only; default 0). */
  attentionDropout?: number;
}

/** Per-layer key/value cache for incremental decoding: [B, Hkv, capacity, headDim] each. */
export class KvCache {
  /** Keys of each layer, [B, Hkv, capacity, headDim] (filled up to `length`). */
  readonly keys: Tensor[] = [];
  /** Values of each layer, [B, Hkv, capacity, headDim] (filled up to `length`). */
  readonly values: Tensor[] = [];
  /** Positions already filled. */
  length = 0;

  /** Allocate (kept, uninitialised) buffers for `batch` rows of up to `capacity` positions. */
  constructor(dims: LlamaDims, readonly batch: number, readonly capacity: number) {
    for (let i = 0; i < dims.numLayers; i++) {
      const shape = [batch, dims.numKvHeads, capacity, dims.headDim];
      this.keys.push(empty(shape, { category: "activations" }).keep());
      this.values.push(empty(shape, { category: "activations" }).keep());
    }
  }

  /** Write `k`/`v` [B, Hkv, T, D] of layer `layer` at the current length; return the filled views. */
  append(layer: number, k: Tensor, v: Tensor): [Tensor, Tensor] {
    const t = k.shape[2];
    const end = this.length + t;
    if (end > this.capacity) {
      throw new Error(`KV cache full: ${end} positions needed, capacity ${this.capacity}`);
    }
    const window = (c: Tensor, a: number, b: number) => slice(c, 2, a, b);
    const kSlot = window(this.keys[layer], this.length, end);
    const vSlot = window(this.values[layer], this.length, end);
    assign(kSlot, k);
    assign(vSlot, v);
    kSlot.dispose();
    vSlot.dispose();
    return [window(this.keys[layer], 0, end), window(this.values[layer], 0, end)];
  }

  /** Free the cache. */
  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t.dispose();
  }
}

/** Inputs of a decoder forward pass. */
export interface DecoderInputs {
  /** Token ids [B, T] (i32). */
  ids: Tensor;
  /** Rotary positions [B, T] (i32); default 0..T−1 offset by the cache length. */
  positions?: Tensor;
  /** Key padding mask over all keys (cache + new) [B, S]: 1 keep, 0 pad. */
  keyMask?: Tensor;
  /** Incremental decoding: new keys/values are appended to it and attention sees all of it. */
  cache?: KvCache;
}

/** `self_attn`: q/k/v/o projections with RoPE and grouped-query attention. */
export class LlamaAttention extends Container {
  /** q [numHeads·headDim, H], k and v [numKvHeads·headDim, H], o [H, numHeads·headDim]. */
  constructor(readonly dims: LlamaDims, q: Linear, k: Linear, v: Linear, o: Linear) {
    super();
    this.add("q_proj", q);
    this.add("k_proj", k);
    this.add("v_proj", v);
    this.add("o_proj", o);
  }

  /** x [B, T, H] → [B, T, H]. */
  forward(
    x: Tensor,
    positions: Tensor,
    keyMask: Tensor | undefined,
    layer: number,
    cache?: KvCache,
  ): Tensor {
    const { numHeads, numKvHeads, headDim, ropeTheta } = this.dims;
    const [b, t] = x.shape;
    const heads = (name: string, n: number) => {
      const y = this.child<LinearLike>(name).forward(x);
      return transpose(reshape(y, [b, t, n, headDim]), 1, 2); // [B, n, T, D]
    };
    const q = rope(heads("q_proj", numHeads), positions, { theta: ropeTheta });
    let k = rope(heads("k_proj", numKvHeads), positions, { theta: ropeTheta });
    let v = heads("v_proj", numKvHeads);
    if (cache) [k, v] = cache.append(layer, k, v);
    // HF's LlamaAttention drops attention weights with config.attention_dropout in training.
    const attn = scaledDotProductAttention(q, k, v, {
      causal: true,
      keyPaddingMask: keyMask,
      dropout: ForwardContext.current().attentionDropout(this.dims.attentionDropout ?? 0),
    });
    const merged = reshape(transpose(attn, 1, 2), [b, t, numHeads * headDim]);
    return this.child<LinearLike>("o_proj").forward(merged);
  }
}

/** `mlp`: down(silu(gate(x)) · up(x)). */
export class LlamaMlp extends Container {
  /** gate, up: [intermediateSize, H]; down: [H, intermediateSize]. */
  constructor(gate: Linear, up: Linear, down: Linear) {
    super();
    this.add("gate_proj", gate);
    this.add("up_proj", up);
    this.add("down_proj", down);
  }

  /** x [B, T, H] → [B, T, H]. */
  forward(x: Tensor): Tensor {
    const g = silu(this.child<LinearLike>("gate_proj").forward(x));
    const u = this.child<LinearLike>("up_proj").forward(x);
    return this.child<LinearLike>("down_proj").forward(mul(g, u));
  }
}

/** One pre-norm decoder layer. */
export class LlamaDecoderLayer extends Container {
  /** `inNorm`, `postNorm`: the RMSNorm weights [H] before attention and before the MLP. */
  constructor(
    readonly dims: LlamaDims,
    attn: LlamaAttention,
    mlp: LlamaMlp,
    inNorm: Tensor,
    postNorm: Tensor,
  ) {
    super();
    this.add("self_attn", attn);
    this.add("mlp", mlp);
    this.add("input_layernorm", new ParamModule({ weight: inNorm }));
    this.add("post_attention_layernorm", new ParamModule({ weight: postNorm }));
  }

  /** x [B, T, H] → [B, T, H]. */
  forward(
    x: Tensor,
    positions: Tensor,
    keyMask: Tensor | undefined,
    layer: number,
    cache?: KvCache,
  ): Tensor {
    const eps = this.dims.rmsNormEps;
    const n1 = rmsNorm(x, this.child<ParamModule>("input_layernorm").get("weight"), eps);
    const h = addResidual(
      x,
      this.child<LlamaAttention>("self_attn").forward(n1, positions, keyMask, layer, cache),
    );
    const n2 = rmsNorm(h, this.child<ParamModule>("post_attention_layernorm").get("weight"), eps);
    return addResidual(h, this.child<LlamaMlp>("mlp").forward(n2));
  }
}

/** A LLaMA decoder with an LM head and an optional sequence-classification head (`score`). */
export class LlamaForCausalLM extends Container {
  /** Build from `weights`: biases are optional; a `score` head absent from them is initialised. */
  constructor(readonly dims: LlamaDims, weights: WeightSource) {
    super();
    const d = dims;
    const need = (name: string, shape: number[]) => required(weights, name, shape);
    const lin = (name: string, dOut: number, dIn: number) =>
      new Linear(need(`${name}.weight`, [dOut, dIn]), weights.get(`${name}.bias`, [dOut]));
    const model = this.add("model", new Container());
    model.add(
      "embed_tokens",
      new ParamModule({ weight: need("model.embed_tokens.weight", [d.vocabSize, d.hiddenSize]) }),
    );
    const layers = model.add("layers", new Container());
    for (let i = 0; i < d.numLayers; i++) {
      const p = `model.layers.${i}`;
      const attn = new LlamaAttention(
        d,
        lin(`${p}.self_attn.q_proj`, d.numHeads * d.headDim, d.hiddenSize),
        lin(`${p}.self_attn.k_proj`, d.numKvHeads * d.headDim, d.hiddenSize),
        lin(`${p}.self_attn.v_proj`, d.numKvHeads * d.headDim, d.hiddenSize),
        lin(`${p}.self_attn.o_proj`, d.hiddenSize, d.numHeads * d.headDim),
      );
      const mlp = new LlamaMlp(
        lin(`${p}.mlp.gate_proj`, d.intermediateSize, d.hiddenSize),
        lin(`${p}.mlp.up_proj`, d.intermediateSize, d.hiddenSize),
        lin(`${p}.mlp.down_proj`, d.hiddenSize, d.intermediateSize),
      );
      layers.add(
        String(i),
        new LlamaDecoderLayer(
          d,
          attn,
          mlp,
          need(`${p}.input_layernorm.weight`, [d.hiddenSize]),
          need(`${p}.post_attention_layernorm.weight`, [d.hiddenSize]),
        ),
      );
    }
    model.add("norm", new ParamModule({ weight: need("model.norm.weight", [d.hiddenSize]) }));
    if (!d.tieWordEmbeddings) this.add("lm_head", lin("lm_head", d.vocabSize, d.hiddenSize));
    if (d.numLabels > 0) {
      const score = orInit(weights, "score.weight", [d.numLabels, d.hiddenSize], "normal");
      this.add("score", new Linear(score, null));
    }
  }

  /** The token embedding [V, H]. */
  get embedTokens(): Tensor {
    return this.child<Container>("model").child<ParamModule>("embed_tokens").get("weight");
  }

  /** Final hidden states [B, T, H]. */
  hidden(inputs: DecoderInputs, ctx: ForwardContext = ForwardContext.current()): Tensor {
    // Adapter layers (LoRA's dropout) read the running context: make it `ctx`.
    if (ForwardContext.current() !== ctx) return ctx.run(() => this.hidden(inputs, ctx));
    const { ids, cache } = inputs;
    const [b, t] = ids.shape;
    const start = cache?.length ?? 0;
    const positions = inputs.positions ?? defaultPositions(b, t, start);
    let h = embedding(this.embedTokens, ids);
    const layers = this.child<Container>("model").child<Container>("layers");
    for (let i = 0; i < this.dims.numLayers; i++) {
      h = layers.child<LlamaDecoderLayer>(String(i)).forward(
        h,
        positions,
        inputs.keyMask,
        i,
        cache,
      );
    }
    if (cache) cache.length += t;
    const norm = this.child<Container>("model").child<ParamModule>("norm").get("weight");
    return rmsNorm(h, norm, this.dims.rmsNormEps);
  }

  /** LM logits [B, T, V] from hidden states. */
  logits(hidden: Tensor): Tensor {
    if (this.dims.tieWordEmbeddings) return linear(hidden, this.embedTokens);
    return this.child<LinearLike>("lm_head").forward(hidden);
  }

  /**
   * Causal-LM loss: token t predicts token t+1; labels −100 are ignored (prompt masking,
   * padding). Mean over the counted tokens, as Hugging Face's LlamaForCausalLM.
   */
  causalLmLoss(inputs: DecoderInputs, labels: Tensor, ctx?: ForwardContext): Tensor {
    const [b, t] = inputs.ids.shape;
    return this.lmLoss(this.hidden(inputs, ctx), reshape(slice(labels, 1, 1, t), [b * (t - 1)]));
  }

  /**
   * Next-token loss from hidden states [B, T, H] and targets already shifted, [B·(T−1)] (i32,
   * −100 ignored): position t's logits against targets[t].
   */
  lmLoss(hidden: Tensor, shiftedTargets: Tensor): Tensor {
    const [b, t] = hidden.shape;
    const logits = this.logits(slice(hidden, 1, 0, t - 1));
    return crossEntropy(reshape(logits, [b * (t - 1), this.dims.vocabSize]), shiftedTargets, {
      ignoreIndex: -100,
    });
  }

  /**
   * Sequence-classification logits [B, numLabels] from the last non-padding token of each row
   * (`lastIndex[b]`, computed from the attention mask by the caller).
   */
  classify(inputs: DecoderInputs, lastIndex: readonly number[], ctx?: ForwardContext): Tensor {
    if (this.dims.numLabels === 0) throw new Error("this model has no classification head");
    const h = this.hidden(inputs, ctx);
    const [b, t, hs] = h.shape;
    const flat = reshape(h, [b * t, hs]);
    const rows = tensor(Int32Array.from(lastIndex.map((j, i) => i * t + j)), [b]);
    const picked = indexSelect(flat, 0, rows);
    return this.child<LinearLike>("score").forward(picked);
  }
}

/** Positions start..start+T−1 for every row. */
function defaultPositions(b: number, t: number, start: number): Tensor {
  const p = new Int32Array(b * t);
  for (let i = 0; i < b; i++) for (let j = 0; j < t; j++) p[i * t + j] = start + j;
  return tensor(p, [b, t]);
}
