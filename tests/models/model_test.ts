/**
 * Encoder and decoder forward passes against the float64 reference on tiny random models, the KV
 * cache against full recomputation, and a whole-model gradient against finite differences.
 */
import { assertClose, setup } from "../helpers.ts";
import { backward, scopeAsync, tensor } from "../../ops/mod.ts";
import { EncoderForSequenceClassification, robertaPositionIds } from "../../models/encoder.ts";
import { KvCache, LlamaForCausalLM } from "../../models/llama.ts";
import { encoderDims, encoderWeights, hostSource, llamaDims, llamaWeights } from "./fixtures.ts";
import { encoderRef, llamaRef, type RefEncoderDims, type RefLlamaDims } from "./reference.ts";

await setup();

const LLAMA: RefLlamaDims = {
  vocab: 11,
  hidden: 16,
  inter: 24,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  eps: 1e-5,
  theta: 10000,
  tied: false,
};

/** Left-padded batch: row 0 has 5 tokens, row 1 has 3 (two pads in front). */
const IDS = [[1, 4, 7, 2, 9], [0, 0, 3, 5, 8]];
const KEEP = [[true, true, true, true, true], [false, false, true, true, true]];
const POS = [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]];

function llamaInputs(t = 5) {
  return {
    ids: tensor(Int32Array.from(IDS.map((r) => r.slice(0, t)).flat()), [2, t]),
    positions: tensor(Int32Array.from(POS.map((r) => r.slice(0, t)).flat()), [2, t]),
    keyMask: tensor(Float32Array.from(KEEP.map((r) => r.slice(0, t)).flat().map(Number)), [2, t]),
  };
}

for (const tied of [false, true]) {
  Deno.test(`LLaMA logits match the float64 reference (GQA, left padding, ${tied ? "tied" : "untied"} head)`, async () => {
    const dims = { ...LLAMA, tied };
    const w = llamaWeights(dims, 11);
    const model = new LlamaForCausalLM(llamaDims(dims), hostSource(w));
    const got = await scopeAsync(() => model.logits(model.hidden(llamaInputs())).read());
    const want = llamaRef(w, dims, IDS, KEEP, POS);
    // Padded query rows attend to nothing causal-valid in row 1 positions 0–1: compare real rows.
    const v = dims.vocab;
    for (let r = 0; r < 10; r++) {
      if (!KEEP[Math.floor(r / 5)][r % 5]) continue;
      assertClose(got.subarray(r * v, (r + 1) * v), want.subarray(r * v, (r + 1) * v), {
        atol: 2e-4,
        rtol: 1e-3,
      }, `logits row ${r}`);
    }
    model.dispose();
  });
}

Deno.test("LLaMA KV-cache decoding equals recomputing the whole sequence", async () => {
  const w = llamaWeights(LLAMA, 5);
  const model = new LlamaForCausalLM(llamaDims(LLAMA), hostSource(w));
  const full = await scopeAsync(() => model.logits(model.hidden(llamaInputs())).read());
  const cache = new KvCache(model.dims, 2, 8);
  const v = LLAMA.vocab;
  for (let step = 0; step < 5; step++) {
    const [a, b] = [step, step + 1];
    const logits = await scopeAsync(() => {
      const col = (rows: (number | boolean)[][]) =>
        rows.map((r) => r.slice(a, b)).flat().map(Number);
      const keyMask = KEEP.map((r) => r.slice(0, b)).flat().map(Number);
      const h = model.hidden({
        ids: tensor(Int32Array.from(col(IDS)), [2, 1]),
        positions: tensor(Int32Array.from(col(POS)), [2, 1]),
        keyMask: tensor(Float32Array.from(keyMask), [2, b]),
        cache,
      });
      return model.logits(h).read();
    });
    for (let row = 0; row < 2; row++) {
      if (!KEEP[row][step]) continue;
      const at = (row * 5 + step) * v;
      assertClose(logits.subarray(row * v, (row + 1) * v), full.subarray(at, at + v), {
        atol: 1e-4,
        rtol: 1e-4,
      }, `step ${step} row ${row}`);
    }
  }
  cache.dispose();
  model.dispose();
});

Deno.test("gradient of the causal-LM loss w.r.t. a deep Linear weight matches finite differences", async () => {
  const dims = { ...LLAMA, layers: 2 };
  const w = llamaWeights(dims, 3);
  const model = new LlamaForCausalLM(llamaDims(dims), hostSource(w));
  const name = "model.layers.0.mlp.down_proj.weight";
  const param = model.namedParameters().find(([n]) => n === name)![1];
  param.requiresGrad = true;
  const labels = [[-100, 4, 7, 2, 9], [-100, -100, -100, 5, 8]];
  const grad = await scopeAsync(async () => {
    const loss = model.causalLmLoss(llamaInputs(), tensor(Int32Array.from(labels.flat()), [2, 5]));
    backward(loss);
    return await param.grad!.read();
  });
  const refLoss = () => {
    const logits = llamaRef(w, dims, IDS, KEEP, POS);
    let total = 0, count = 0;
    for (let b = 0; b < 2; b++) {
      for (let t = 0; t < 4; t++) {
        const target = labels[b][t + 1];
        if (target === -100) continue;
        const row = logits.subarray((b * 5 + t) * dims.vocab, (b * 5 + t + 1) * dims.vocab);
        const m = Math.max(...row);
        const lse = m + Math.log(row.reduce((s, x) => s + Math.exp(x - m), 0));
        total += lse - row[target];
        count++;
      }
    }
    return total / count;
  };
  const weights = w.get(name)!;
  const eps = 1e-6;
  // Every 7th element keeps the check quick while covering rows and columns.
  const picked: number[] = [], numeric: number[] = [];
  for (let i = 0; i < weights.length; i += 7) {
    const saved = weights[i];
    weights[i] = saved + eps;
    const up = refLoss();
    weights[i] = saved - eps;
    const down = refLoss();
    weights[i] = saved;
    picked.push(grad[i]);
    numeric.push((up - down) / (2 * eps));
  }
  assertClose(picked, numeric, { atol: 5e-5, rtol: 5e-3 }, `d loss / d ${name}`);
  model.dispose();
});

for (const kind of ["roberta", "bert"] as const) {
  Deno.test(`${kind} sequence-classification logits match the float64 reference`, async () => {
    const ref: RefEncoderDims = {
      kind,
      vocab: 13,
      hidden: 16,
      inter: 32,
      layers: 2,
      heads: 4,
      eps: 1e-5,
      pad: 1,
      labels: 3,
    };
    const maxPos = 12;
    const w = encoderWeights(ref, maxPos, 21);
    const model = new EncoderForSequenceClassification(encoderDims(ref, maxPos), hostSource(w));
    // Right padding with the pad id 1 in row 1.
    const ids = [[0, 5, 9, 4, 2], [0, 7, 2, 1, 1]];
    const keep = ids.map((r) => r.map((x, j) => !(j >= 3 && x === 1)));
    const types = kind === "bert"
      ? [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]]
      : ids.map((r) => r.map(() => 0));
    const positions = kind === "roberta"
      ? ids.map((r) => Array.from(robertaPositionIds(r, 1, r.length, 1)))
      : ids.map((r) => r.map((_, j) => j));
    const got = await scopeAsync(() =>
      model.forward({
        ids: tensor(Int32Array.from(ids.flat()), [2, 5]),
        attentionMask: tensor(Float32Array.from(keep.flat().map(Number)), [2, 5]),
        tokenTypeIds: tensor(Int32Array.from(types.flat()), [2, 5]),
      }).read()
    );
    assertClose(
      got,
      encoderRef(w, ref, ids, keep, positions, types),
      { atol: 2e-4, rtol: 1e-3 },
      `${kind} logits`,
    );
    model.dispose();
  });
}

Deno.test("RoBERTa position ids skip padding and start after the padding index", () => {
  const p = robertaPositionIds([0, 5, 1, 7, 1], 1, 5, 1);
  assertClose(p, [2, 3, 1, 4, 1]);
});
