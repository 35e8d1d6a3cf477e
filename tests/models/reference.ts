/**
 * Plain-TS float64 references of the RoBERTa/BERT encoder and the LLaMA decoder, written from the
 * Hugging Face modelling code's equations, for tests on tiny shapes. Weights are a map from
 * Hugging Face names to flat arrays (row-major).
 */

/** Weights by Hugging Face name. */
export type HostWeights = Map<string, Float64Array>;

/** y[r, o] = Σ_i x[r, i]·W[o, i] + b[o] for rows r. */
export function linearRef(
  x: Float64Array,
  rows: number,
  w: Float64Array,
  dOut: number,
  dIn: number,
  b?: Float64Array,
): Float64Array {
  const y = new Float64Array(rows * dOut);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < dOut; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < dIn; i++) s += x[r * dIn + i] * w[o * dIn + i];
      y[r * dOut + o] = s;
    }
  }
  return y;
}

/** LayerNorm over rows of width h. */
export function layerNormRef(
  x: Float64Array,
  h: number,
  w: Float64Array,
  b: Float64Array,
  eps: number,
): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / h; r++) {
    let m = 0;
    for (let i = 0; i < h; i++) m += x[r * h + i];
    m /= h;
    let v = 0;
    for (let i = 0; i < h; i++) v += (x[r * h + i] - m) ** 2;
    v /= h;
    const rs = 1 / Math.sqrt(v + eps);
    for (let i = 0; i < h; i++) y[r * h + i] = (x[r * h + i] - m) * rs * w[i] + b[i];
  }
  return y;
}

/** RMSNorm over rows of width h. */
export function rmsNormRef(x: Float64Array, h: number, w: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / h; r++) {
    let ms = 0;
    for (let i = 0; i < h; i++) ms += x[r * h + i] ** 2;
    const rs = 1 / Math.sqrt(ms / h + eps);
    for (let i = 0; i < h; i++) y[r * h + i] = x[r * h + i] * rs * w[i];
  }
  return y;
}

/** erf with |error| < 1.2e-7 (the Chebyshev fit of erfc in Numerical Recipes). */
function erf(x: number): number {
  const t = 1 / (1 + 0.5 * Math.abs(x));
  const y = 1 - t * Math.exp(
        -x * x - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
                      t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
                                      t * (-0.82215223 + t * 0.17087277)))))))),
      );
  return x >= 0 ? y : -y;
}

/** GELU, erf form. */
export const geluRef = (x: number): number => 0.5 * x * (1 + erf(x / Math.SQRT2));
/** SiLU. */
export const siluRef = (x: number): number => x / (1 + Math.exp(-x));

/**
 * Multi-head attention on [B, T, heads·D] projections (row-major per token), grouped-query when
 * kvHeads < heads. keep[b][j] = false masks key j; causal masks j > i. `dropMul(b·heads + h, i, j)`
 * multiplies each probability (attention dropout with an explicit mask).
 */
export function attentionRef(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  b: number,
  t: number,
  heads: number,
  kvHeads: number,
  d: number,
  keep: boolean[][],
  causal: boolean,
  dropMul?: (batchHead: number, i: number, j: number) => number,
): Float64Array {
  const out = new Float64Array(b * t * heads * d);
  const scale = 1 / Math.sqrt(d);
  for (let bi = 0; bi < b; bi++) {
    for (let h = 0; h < heads; h++) {
      const kh = Math.floor((h * kvHeads) / heads);
      for (let i = 0; i < t; i++) {
        const scores: number[] = [];
        for (let j = 0; j < t; j++) {
          if (!keep[bi][j] || (causal && j > i)) {
            scores.push(-Infinity);
            continue;
          }
          let s = 0;
          for (let e = 0; e < d; e++) {
            s += q[((bi * t + i) * heads + h) * d + e] * k[((bi * t + j) * kvHeads + kh) * d + e];
          }
          scores.push(s * scale);
        }
        const m = Math.max(...scores);
        if (m === -Infinity) continue;
        const p = scores.map((s) => Math.exp(s - m));
        const z = p.reduce((a, c) => a + c, 0);
        for (let e = 0; e < d; e++) {
          let acc = 0;
          for (let j = 0; j < t; j++) {
            const dm = dropMul ? dropMul(bi * heads + h, i, j) : 1;
            acc += (p[j] / z) * dm * v[((bi * t + j) * kvHeads + kh) * d + e];
          }
          out[((bi * t + i) * heads + h) * d + e] = acc;
        }
      }
    }
  }
  return out;
}

/** Rotate-half RoPE on [B, T, heads·D] at the given positions (HF LLaMA convention). */
export function ropeRef(
  x: Float64Array,
  b: number,
  t: number,
  heads: number,
  d: number,
  positions: ArrayLike<number>,
  theta: number,
): Float64Array {
  const y = new Float64Array(x.length);
  const half = d / 2;
  for (let bi = 0; bi < b; bi++) {
    for (let i = 0; i < t; i++) {
      const pos = positions[bi * t + i];
      for (let h = 0; h < heads; h++) {
        const base = ((bi * t + i) * heads + h) * d;
        for (let e = 0; e < half; e++) {
          // HF computes inv_freq in f32; mirror that so the angles agree.
          const invFreq = Math.fround(1 / Math.fround(theta ** ((2 * e) / d)));
          const ang = Math.fround(pos * invFreq);
          const c = Math.cos(ang), s = Math.sin(ang);
          const x1 = x[base + e], x2 = x[base + e + half];
          y[base + e] = x1 * c - x2 * s;
          y[base + e + half] = x2 * c + x1 * s;
        }
      }
    }
  }
  return y;
}

function get(w: HostWeights, name: string): Float64Array {
  const t = w.get(name);
  if (!t) throw new Error(`reference: missing weight ${name}`);
  return t;
}

/** Dimensions of the reference LLaMA. */
export interface RefLlamaDims {
  vocab: number;
  hidden: number;
  inter: number;
  layers: number;
  heads: number;
  kvHeads: number;
  eps: number;
  theta: number;
  tied: boolean;
}

/**
 * LLaMA logits [B, T, V] for ids [B, T] with a key mask (left padding allowed); `drop`: training
 * mode, where Hugging Face's LlamaAttention drops attention weights (attention_dropout).
 */
export function llamaRef(
  w: HostWeights,
  dims: RefLlamaDims,
  ids: number[][],
  keep: boolean[][],
  positions: number[][],
  drop?: RefDropout,
): Float64Array {
  const b = ids.length, t = ids[0].length, h = dims.hidden, d = h / dims.heads;
  const emb = get(w, "model.embed_tokens.weight");
  let x: Float64Array = new Float64Array(b * t * h);
  ids.flat().forEach((id, r) => x.set(emb.subarray(id * h, (id + 1) * h), r * h));
  const rows = b * t;
  const pos = positions.flat();
  for (let l = 0; l < dims.layers; l++) {
    const p = `model.layers.${l}`;
    const n1 = rmsNormRef(x, h, get(w, `${p}.input_layernorm.weight`), dims.eps);
    const proj = (n: string, out: number) =>
      linearRef(n1, rows, get(w, `${p}.self_attn.${n}.weight`), out, h);
    const q = ropeRef(proj("q_proj", h), b, t, dims.heads, d, pos, dims.theta);
    const k = ropeRef(proj("k_proj", dims.kvHeads * d), b, t, dims.kvHeads, d, pos, dims.theta);
    const v = proj("v_proj", dims.kvHeads * d);
    const probs = drop && drop.attention > 0 ? drop.probs(drop.attention) : undefined;
    const a = attentionRef(q, k, v, b, t, dims.heads, dims.kvHeads, d, keep, true, probs);
    const o = linearRef(a, rows, get(w, `${p}.self_attn.o_proj.weight`), h, h);
    const h1 = x.map((xv, i) => xv + o[i]);
    const n2 = rmsNormRef(h1, h, get(w, `${p}.post_attention_layernorm.weight`), dims.eps);
    const g = linearRef(n2, rows, get(w, `${p}.mlp.gate_proj.weight`), dims.inter, h);
    const u = linearRef(n2, rows, get(w, `${p}.mlp.up_proj.weight`), dims.inter, h);
    const gu = g.map((gv, i) => siluRef(gv) * u[i]);
    const down = linearRef(gu, rows, get(w, `${p}.mlp.down_proj.weight`), h, dims.inter);
    x = h1.map((hv, i) => hv + down[i]);
  }
  const n = rmsNormRef(x, h, get(w, "model.norm.weight"), dims.eps);
  const head = dims.tied ? emb : get(w, "lm_head.weight");
  return linearRef(n, rows, head, dims.vocab, h);
}

/** Dimensions of the reference encoder. */
export interface RefEncoderDims {
  kind: "roberta" | "bert";
  vocab: number;
  hidden: number;
  inter: number;
  layers: number;
  heads: number;
  eps: number;
  pad: number;
  labels: number;
}

/**
 * Training-mode dropout of a reference forward pass, with explicit masks. Each call with p > 0
 * takes the next mask (the engine's ForwardContext numbers its dropout calls the same way).
 */
export interface RefDropout {
  /** Hugging Face's hidden_dropout_prob. */
  hidden: number;
  /** attention_probs_dropout_prob. */
  attention: number;
  /** The head's dropout (classifier_dropout, else hidden_dropout_prob). */
  classifier: number;
  /** The next call's multiplier of element `index` (row-major) of the dropped tensor. */
  mask(p: number): (index: number) => number;
  /** The next call's multiplier of attention probability (b·heads + h, i, j). */
  probs(p: number): (batchHead: number, i: number, j: number) => number;
}

/**
 * Encoder classification logits [B, labels]: evaluation mode, or training mode with `drop`'s
 * masks at Hugging Face's sites (RobertaEmbeddings/BertEmbeddings output, attention
 * probabilities, RobertaSelfOutput/RobertaOutput before the residual, RobertaClassificationHead
 * before dense and out_proj, BertForSequenceClassification before the classifier).
 */
export function encoderRef(
  w: HostWeights,
  dims: RefEncoderDims,
  ids: number[][],
  keep: boolean[][],
  positions: number[][],
  types: number[][],
  drop?: RefDropout,
): Float64Array {
  const dropout = (x: Float64Array, p: number): Float64Array => {
    if (!drop || p === 0) return x;
    const m = drop.mask(p);
    return x.map((v, i) => v * m(i));
  };
  const b = ids.length, t = ids[0].length, h = dims.hidden, base = dims.kind;
  const rows = b * t;
  const table = (n: string) => get(w, `${base}.embeddings.${n}.weight`);
  const we = table("word_embeddings"),
    pe = table("position_embeddings"),
    te = table("token_type_embeddings");
  let x: Float64Array = new Float64Array(rows * h);
  for (let r = 0; r < rows; r++) {
    const bi = Math.floor(r / t), j = r % t;
    for (let i = 0; i < h; i++) {
      x[r * h + i] = we[ids[bi][j] * h + i] + pe[positions[bi][j] * h + i] +
        te[types[bi][j] * h + i];
    }
  }
  x = layerNormRef(x, h, table("LayerNorm"), get(w, `${base}.embeddings.LayerNorm.bias`), dims.eps);
  x = dropout(x, drop?.hidden ?? 0);
  const lin = (input: Float64Array, n: string, out: number, inp: number, r = rows) =>
    linearRef(input, r, get(w, `${n}.weight`), out, inp, get(w, `${n}.bias`));
  const ln = (input: Float64Array, n: string) =>
    layerNormRef(input, h, get(w, `${n}.weight`), get(w, `${n}.bias`), dims.eps);
  for (let l = 0; l < dims.layers; l++) {
    const p = `${base}.encoder.layer.${l}`;
    const q = lin(x, `${p}.attention.self.query`, h, h);
    const k = lin(x, `${p}.attention.self.key`, h, h);
    const v = lin(x, `${p}.attention.self.value`, h, h);
    const probs = drop && drop.attention > 0 ? drop.probs(drop.attention) : undefined;
    const a = attentionRef(
      q,
      k,
      v,
      b,
      t,
      dims.heads,
      dims.heads,
      h / dims.heads,
      keep,
      false,
      probs,
    );
    const ao = dropout(lin(a, `${p}.attention.output.dense`, h, h), drop?.hidden ?? 0);
    const h1 = ln(ao.map((val, i) => val + x[i]), `${p}.attention.output.LayerNorm`);
    const inter = lin(h1, `${p}.intermediate.dense`, dims.inter, h).map(geluRef);
    const o = dropout(lin(inter, `${p}.output.dense`, h, dims.inter), drop?.hidden ?? 0);
    x = ln(o.map((val, i) => val + h1[i]), `${p}.output.LayerNorm`);
  }
  const first = new Float64Array(b * h);
  for (let bi = 0; bi < b; bi++) first.set(x.subarray(bi * t * h, bi * t * h + h), bi * h);
  const pc = drop?.classifier ?? 0;
  if (dims.kind === "roberta") {
    const z = lin(dropout(first, pc), "classifier.dense", h, h, b).map(Math.tanh);
    return lin(dropout(z, pc), "classifier.out_proj", dims.labels, h, b);
  }
  const pooled = lin(first, "bert.pooler.dense", h, h, b).map(Math.tanh);
  return lin(dropout(pooled, pc), "classifier", dims.labels, h, b);
}
