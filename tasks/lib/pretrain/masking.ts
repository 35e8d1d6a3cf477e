/**
 * Masked-language-model inputs, as Hugging Face's DataCollatorForLanguageModeling builds them
 * (`torch_mask_tokens`): every non-special token is selected with probability p (0.15); a selected
 * token becomes the mask token with probability 0.8, a uniformly random token of the vocabulary
 * with probability 0.1 (half of the rest), and stays unchanged otherwise; labels are the original
 * ids at selected positions and −100 everywhere else.
 *
 * Hugging Face draws from torch's global generator, so its masks differ from run to run unless
 * seeded; here each draw is a pure function of (seed, stream, position) from ops/random.ts: the
 * masks of a step depend only on the run's seed and the step, so a resumed run sees the same
 * masks as an uninterrupted one. Masking is dynamic: a block seen in a later epoch gets new masks.
 *
 * @module
 */
import { rngU32, rngUniform } from "../../../ops/mod.ts";

/** Settings of {@link maskTokens}. */
export interface MaskingOptions {
  /** Id of the mask token (`<mask>`, `[MASK]`). */
  maskId: number;
  /** Random replacements are drawn from 0 .. vocabSize − 1 (Hugging Face: len(tokenizer)). */
  vocabSize: number;
  /** Ids never selected (the tokenizer's special tokens: bos, eos, pad, unk, mask, …). */
  specialIds: ReadonlySet<number>;
  /** Selection probability (`mlm_probability`, default 0.15). */
  probability?: number;
  /** Share of selected tokens replaced by the mask token (default 0.8). */
  maskShare?: number;
  /** Share of selected tokens replaced by a random token (default 0.1). */
  randomShare?: number;
  /** The run's seed. */
  seed: number;
  /** The draw's stream (e.g. the micro-batch's index in the run). */
  stream: number;
}

/** What {@link maskTokens} returns. */
export interface MaskedBatch {
  /** The model's input ids, with the selected positions replaced. */
  inputs: Int32Array;
  /** Original ids at selected positions, −100 elsewhere. */
  labels: Int32Array;
  /** Number of selected positions (labels ≠ −100). */
  selected: number;
}

/** Mask `ids` (any shape, flattened) for MLM training. */
export function maskTokens(ids: Int32Array, options: MaskingOptions): MaskedBatch {
  const p = options.probability ?? 0.15;
  const maskShare = options.maskShare ?? 0.8;
  const randomShare = options.randomShare ?? 0.1;
  if (!(p > 0 && p < 1)) throw new Error(`mlm probability ${p}: expected a number in (0, 1)`);
  if (maskShare < 0 || randomShare < 0 || maskShare + randomShare > 1) {
    throw new Error(`mask shares ${maskShare} + ${randomShare}: expected non-negative, at most 1`);
  }
  // Hugging Face draws "random" among the non-mask remainder with probability 0.5 = 0.1 / 0.2.
  const randomGivenNotMask = maskShare < 1 ? randomShare / (1 - maskShare) : 0;
  const inputs = Int32Array.from(ids);
  const labels = new Int32Array(ids.length).fill(-100);
  let selected = 0;
  const { seed, stream } = options;
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (options.specialIds.has(id)) continue;
    if (rngUniform(seed, stream, 4 * i) >= p) continue;
    labels[i] = id;
    selected++;
    if (rngUniform(seed, stream, 4 * i + 1) < maskShare) {
      inputs[i] = options.maskId;
    } else if (rngUniform(seed, stream, 4 * i + 2) < randomGivenNotMask) {
      inputs[i] = rngU32(seed, stream, 4 * i + 3) % options.vocabSize;
    }
  }
  return { inputs, labels, selected };
}
