/**
 * Generation: batched prompts with left padding give the same greedy tokens as one prompt at a
 * time; sampling is reproducible by seed and follows temperature/top-p; stop tokens end a row.
 */
import { deepStrictEqual, equal, notDeepStrictEqual, ok } from "node:assert/strict";
import { setup } from "../helpers.ts";
import { chooseToken, generate } from "../../models/generate.ts";
import { seededRandom } from "../../ops/mod.ts";
import { LlamaForCausalLM } from "../../models/llama.ts";
import { hostSource, llamaDims, llamaWeights } from "./fixtures.ts";
import type { RefLlamaDims } from "./reference.ts";

await setup();

const DIMS: RefLlamaDims = {
  vocab: 23,
  hidden: 16,
  inter: 24,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  eps: 1e-5,
  theta: 10000,
  tied: false,
};
const model = new LlamaForCausalLM(llamaDims(DIMS), hostSource(llamaWeights(DIMS, 17)));

Deno.test("batched greedy generation with left padding equals generating each prompt alone", async () => {
  const prompts = [[1, 5, 9, 3, 7], [1, 4], [1, 8, 2]];
  const batched = await generate(model, prompts, { maxNewTokens: 12 });
  for (let i = 0; i < prompts.length; i++) {
    const [alone] = await generate(model, [prompts[i]], { maxNewTokens: 12 });
    deepStrictEqual(batched[i], alone, `prompt ${i}`);
  }
});

Deno.test("a stop token ends its row (emitted, then nothing more) while other rows go on", async () => {
  const [free] = await generate(model, [[1, 5, 9]], { maxNewTokens: 10 });
  const stop = free[3];
  const [stopped, other] = await generate(model, [[1, 5, 9], [1, 4]], {
    maxNewTokens: 10,
    stopTokens: [stop],
  });
  deepStrictEqual(stopped, free.slice(0, free.indexOf(stop) + 1));
  ok(other.length === 10 || other.at(-1) === stop);
});

Deno.test("sampling is reproducible by seed and differs across seeds", async () => {
  const opts = { maxNewTokens: 16, temperature: 1.5, topP: 0.95 };
  const a = await generate(model, [[1, 3]], { ...opts, seed: 1 });
  const b = await generate(model, [[1, 3]], { ...opts, seed: 1 });
  const c = await generate(model, [[1, 3]], { ...opts, seed: 2 });
  deepStrictEqual(a, b);
  notDeepStrictEqual(a, c);
});

Deno.test("chooseToken: temperature 0 is argmax; top-p keeps the smallest nucleus; frequencies follow softmax(l/T)", () => {
  const logits = [0, Math.log(3), Math.log(6), -50];
  equal(chooseToken(logits, 0, 1, seededRandom(0)), 2);
  const random = seededRandom(42);
  const counts = [0, 0, 0, 0];
  for (let i = 0; i < 20000; i++) counts[chooseToken(logits, 1, 1, random)]++;
  const p = [1 / 10, 3 / 10, 6 / 10];
  p.forEach((pi, k) =>
    ok(Math.abs(counts[k] / 20000 - pi) < 0.015, `token ${k}: ${counts[k] / 20000} vs ${pi}`)
  );
  equal(counts[3], 0);
  // top-p 0.6: {2} alone reaches 0.6, so only token 2 is ever drawn.
  const r2 = seededRandom(7);
  for (let i = 0; i < 200; i++) equal(chooseToken(logits, 1, 0.6, r2), 2);
  // top-p 0.85: {2, 1} (0.9) — token 0 never drawn.
  const r3 = seededRandom(8);
  const seen = new Set<number>();
  for (let i = 0; i < 500; i++) seen.add(chooseToken(logits, 1, 0.85, r3));
  deepStrictEqual([...seen].sort(), [1, 2]);
});
