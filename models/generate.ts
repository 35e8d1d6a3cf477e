/**
 * Text generation for LLaMA decoders: greedy or sampled (temperature, top-p), a KV cache, stop at
 * EOS or after max tokens, batched prompts with left padding.
 *
 * Each step reads back only the last position's logits ([B, V]); token choice happens on the host
 * with a seeded generator, so sampling is reproducible.
 *
 * @module
 */
import { noGrad, reshape, scopeAsync, seededRandom, slice, tensor } from "../ops/mod.ts";
import { KvCache, type LlamaForCausalLM } from "./llama.ts";

/** Options of {@link generate}. */
export interface GenerateOptions {
  /** Most tokens generated per row (fewer when every row hits a stop token). */
  maxNewTokens: number;
  /** 0 (default) is greedy decoding. */
  temperature?: number;
  /** Nucleus sampling: keep the smallest set of tokens whose probability reaches topP. */
  topP?: number;
  /** Seed of the sampling generator. */
  seed?: number;
  /** Token ids that end a sequence (emitted, then the row stops). */
  stopTokens?: readonly number[];
  /** Id used for left padding (never attended to). */
  padTokenId?: number;
}

/** Pick the next token from one row of logits. */
export function chooseToken(
  logits: ArrayLike<number>,
  temperature: number,
  topP: number,
  random: () => number,
): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  if (temperature <= 0) return best;
  const probs = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < logits.length; i++) {
    probs[i] = Math.exp((logits[i] - logits[best]) / temperature);
    total += probs[i];
  }
  const order = [...probs.keys()].sort((a, b) => probs[b] - probs[a] || a - b);
  let kept = 0, mass = 0;
  for (const i of order) {
    mass += probs[i] / total;
    kept++;
    if (mass >= topP) break;
  }
  const nucleus = order.slice(0, kept);
  const nucleusMass = nucleus.reduce((s, i) => s + probs[i], 0);
  let r = random() * nucleusMass;
  for (const i of nucleus) {
    r -= probs[i];
    if (r <= 0) return i;
  }
  return nucleus[nucleus.length - 1];
}

/**
 * Continue each prompt (token ids, e.g. starting with BOS) and return the new tokens per prompt
 * (including a final stop token when one was produced).
 *
 * @example
 * ```ts ignore
 * const [tokens] = await generate(model, [[1]], { maxNewTokens: 200 });
 * ```
 */
export async function generate(
  model: LlamaForCausalLM,
  prompts: readonly (readonly number[])[],
  options: GenerateOptions,
): Promise<number[][]> {
  const { maxNewTokens, temperature = 0, topP = 1, seed = 0, stopTokens = [], padTokenId = 0 } =
    options;
  if (prompts.length === 0) return [];
  if (prompts.some((p) => p.length === 0)) {
    throw new Error("generate: every prompt needs ≥ 1 token");
  }
  const b = prompts.length;
  const promptLen = Math.max(...prompts.map((p) => p.length));
  const capacity = promptLen + maxNewTokens;
  if (capacity > model.dims.maxPositions) {
    throw new Error(
      `generate: ${promptLen} prompt + ${maxNewTokens} new tokens exceed the model's ` +
        `${model.dims.maxPositions} positions`,
    );
  }
  const random = seededRandom(seed);
  const cache = new KvCache(model.dims, b, capacity);
  const mask: number[][] = prompts.map((p) => [
    ...new Array(promptLen - p.length).fill(0),
    ...p.map(() => 1),
  ]);
  const nextPos = prompts.map((p) => p.length);
  const out: number[][] = prompts.map(() => []);
  const done = prompts.map(() => false);
  let ids = prompts.flatMap((p) => [...new Array(promptLen - p.length).fill(padTokenId), ...p]);
  let positions = prompts.flatMap((p) => [
    ...new Array(promptLen - p.length).fill(0),
    ...p.map((_, j) => j),
  ]);
  try {
    for (let step = 0; step < maxNewTokens && done.some((d) => !d); step++) {
      const t = ids.length / b;
      const logits = await scopeAsync(() =>
        noGrad(() => {
          const h = model.hidden({
            ids: tensor(Int32Array.from(ids), [b, t]),
            positions: tensor(Int32Array.from(positions), [b, t]),
            keyMask: tensor(Float32Array.from(mask.flat()), [b, cache.length + t]),
            cache,
          });
          const last = slice(h, 1, t - 1, t);
          return reshape(model.logits(last), [b, model.dims.vocabSize]);
        }).read().then((v) => v as Float32Array)
      );
      const v = model.dims.vocabSize;
      const chosen: number[] = [];
      for (let i = 0; i < b; i++) {
        const token = done[i]
          ? padTokenId
          : chooseToken(logits.subarray(i * v, (i + 1) * v), temperature, topP, random);
        if (!done[i]) {
          out[i].push(token);
          if (stopTokens.includes(token)) done[i] = true;
        }
        chosen.push(token);
        mask[i].push(1);
      }
      ids = chosen;
      positions = nextPos.map((p, i) => (nextPos[i] = p + 1) - 1);
    }
  } finally {
    cache.dispose();
  }
  return out;
}
