/**
 * The real pretrained stories260K (llama2.c format, ../shared/data/models/stories260K): convert it
 * to a Hugging Face folder, generate greedily from BOS, and compare with llama2.c's own output.
 *
 * The reference is a plain-TS port of llama2.c's forward pass working directly on the original
 * checkpoint (interleaved-pair RoPE, unpermuted wq/wk), so it checks the conversion's permutation,
 * the tokenizer and the whole engine at once.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  convertLlama2c,
  type Llama2cCheckpoint,
  readLlama2cCheckpoint,
} from "../../models/llama2c.ts";
import { generateText } from "../../tasks/lib/eval/generate.ts";

const DIR = new URL("../../../shared/data/models/stories260K/", import.meta.url).pathname;
const present = await Deno.stat(`${DIR}stories260K.bin`).then(() => true, () => false);

/** llama2.c's greedy generation (run.c semantics) from BOS; stops at BOS like `run`. */
function llama2cGreedy({ config: c, weights: w }: Llama2cCheckpoint, steps: number): number[] {
  const dim = c.dim, hd = dim / c.nHeads, kvDim = hd * c.nKvHeads, kvMul = c.nHeads / c.nKvHeads;
  const matvec = (
    out: Float64Array,
    x: Float64Array,
    m: Float32Array,
    off: number,
    n: number,
    d: number,
  ) => {
    for (let i = 0; i < d; i++) {
      let s = 0;
      for (let j = 0; j < n; j++) s += m[off + i * n + j] * x[j];
      out[i] = s;
    }
  };
  const rmsnorm = (out: Float64Array, x: Float64Array, g: Float32Array, off: number) => {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[i] * x[i];
    const r = 1 / Math.sqrt(ss / dim + 1e-5);
    for (let i = 0; i < dim; i++) out[i] = x[i] * r * g[off + i];
  };
  const keys = Array.from({ length: c.nLayers }, () => new Float64Array(c.seqLen * kvDim));
  const vals = Array.from({ length: c.nLayers }, () => new Float64Array(c.seqLen * kvDim));
  const x = new Float64Array(dim), xb = new Float64Array(dim), q = new Float64Array(dim);
  const k = new Float64Array(kvDim), v = new Float64Array(kvDim), att = new Float64Array(dim);
  const h1 = new Float64Array(c.hiddenDim),
    h3 = new Float64Array(c.hiddenDim),
    o = new Float64Array(dim);
  const logits = new Float64Array(c.vocabSize);
  const out: number[] = [];
  let token = 1;
  for (let pos = 0; pos < steps; pos++) {
    for (let i = 0; i < dim; i++) x[i] = w.tokenEmbedding[token * dim + i];
    for (let l = 0; l < c.nLayers; l++) {
      rmsnorm(xb, x, w.rmsAtt, l * dim);
      matvec(q, xb, w.wq, l * dim * dim, dim, dim);
      matvec(k, xb, w.wk, l * kvDim * dim, dim, kvDim);
      matvec(v, xb, w.wv, l * kvDim * dim, dim, kvDim);
      for (let i = 0; i < dim; i += 2) {
        const freq = 1 / 10000 ** ((i % hd) / hd);
        const cr = Math.cos(pos * freq), ci = Math.sin(pos * freq);
        for (const vec of i < kvDim ? [q, k] : [q]) {
          const a = vec[i], b = vec[i + 1];
          vec[i] = a * cr - b * ci;
          vec[i + 1] = a * ci + b * cr;
        }
      }
      keys[l].set(k, pos * kvDim);
      vals[l].set(v, pos * kvDim);
      for (let h = 0; h < c.nHeads; h++) {
        const kvh = Math.floor(h / kvMul);
        const scores = new Float64Array(pos + 1);
        for (let t = 0; t <= pos; t++) {
          let s = 0;
          for (let e = 0; e < hd; e++) s += q[h * hd + e] * keys[l][t * kvDim + kvh * hd + e];
          scores[t] = s / Math.sqrt(hd);
        }
        const m = Math.max(...scores);
        let z = 0;
        for (let t = 0; t <= pos; t++) z += scores[t] = Math.exp(scores[t] - m);
        for (let e = 0; e < hd; e++) {
          let s = 0;
          for (let t = 0; t <= pos; t++) s += (scores[t] / z) * vals[l][t * kvDim + kvh * hd + e];
          att[h * hd + e] = s;
        }
      }
      matvec(o, att, w.wo, l * dim * dim, dim, dim);
      for (let i = 0; i < dim; i++) x[i] += o[i];
      rmsnorm(xb, x, w.rmsFfn, l * dim);
      matvec(h1, xb, w.w1, l * c.hiddenDim * dim, dim, c.hiddenDim);
      matvec(h3, xb, w.w3, l * c.hiddenDim * dim, dim, c.hiddenDim);
      for (let i = 0; i < c.hiddenDim; i++) h1[i] = (h1[i] / (1 + Math.exp(-h1[i]))) * h3[i];
      matvec(o, h1, w.w2, l * dim * c.hiddenDim, c.hiddenDim, dim);
      for (let i = 0; i < dim; i++) x[i] += o[i];
    }
    rmsnorm(xb, x, w.rmsFinal, 0);
    matvec(logits, xb, w.wcls ?? w.tokenEmbedding, 0, dim, c.vocabSize);
    let next = 0;
    for (let i = 1; i < c.vocabSize; i++) if (logits[i] > logits[next]) next = i;
    if (next === 1) break;
    out.push(next);
    token = next;
  }
  return out;
}

Deno.test({
  name: present
    ? "stories260K: greedy generation from BOS reproduces llama2.c (200 tokens)"
    : "stories260K: SKIPPED — ../shared/data/models/stories260K is absent",
  ignore: !present,
  fn: async () => {
    const out = await Deno.makeTempDir({ prefix: "stories260K-hf-" });
    try {
      await convertLlama2c({
        checkpoint: `${DIR}stories260K.bin`,
        tokenizer: `${DIR}tok512.bin`,
        output: out,
      });
      const result = await generateText({
        model: out,
        prompt: "",
        maxNewTokens: 200,
        temperature: 0,
      });
      assert(
        result.text.startsWith(
          "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
        ),
        `unexpected beginning: ${JSON.stringify(result.text.slice(0, 120))}`,
      );
      const reference = llama2cGreedy(await readLlama2cCheckpoint(`${DIR}stories260K.bin`), 201);
      assertEquals(result.tokens, reference.slice(0, result.tokens.length));
      assertEquals(result.tokens.length, Math.min(200, reference.length));
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});
