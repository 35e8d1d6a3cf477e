/**
 * LoRA+ (Hayou, Ghosh and Yu, 2024): LoRA whose B matrices learn λ times faster than A.
 *
 * The model, initialisation and forward are exactly LoRA's (see ./lora.ts, reused as is); only the
 * optimizer's parameter groups differ, as Hugging Face PEFT's `create_loraplus_optimizer` groups
 * them (the reference implementation's rule):
 * - λη: every `lora_B` and every trainable 1-D tensor (the task head's biases; any bias or norm
 *   weight a run trains). The 1-D tensors are exempt from weight decay, B is not;
 * - η: everything else (every `lora_A`, the head's 2-D weights).
 * λ multiplies a group's own multiplier, so it composes with the run's per-module multipliers
 * (W_v's B at 4·λ when `value: 4`). Weight decay is the run's (PEFT's `loraplus_weight_decay`).
 *
 * Choices where references differ:
 * - λ defaults to 16, the ratio the paper recommends when nothing is tuned (PEFT's
 *   `create_loraplus_optimizer` has no default and requires `loraplus_lr_ratio`).
 * - `vectorsAtRatio: false` puts only `lora_B` at λη, the paper's rule read literally (it speaks of
 *   B alone); the head's biases then train at η with the rest.
 * - Saved as a plain PEFT LoRA adapter (peft_type "LORA"): λ shapes training only, and PEFT's
 *   LoraConfig has no field for it, so the adapter loads anywhere a LoRA adapter does.
 *
 * @module
 */
import { z } from "zod";
import { applyLora, type LoraConfig } from "./lora.ts";
import { loraOptions } from "./lora_options.ts";
import type { ConfigSchema, Method, ParamGroupSpec } from "./types.ts";

/** LoRA+'s options: LoRA's plus the B/A learning-rate ratio λ. */
export const LoraPlusConfigSchema: ConfigSchema<LoraPlusConfig> = loraOptions.extend({
  /** λ: B's learning rate over A's (PEFT's loraplus_lr_ratio). */
  lrRatio: z.number().positive().default(16),
  /** Every trainable 1-D tensor at λ too, as PEFT's create_loraplus_optimizer (false: B alone). */
  vectorsAtRatio: z.boolean().default(true),
}).strict();

/** Parsed LoRA+ options. */
export interface LoraPlusConfig extends LoraConfig {
  /** λ: B's learning rate over A's (PEFT's loraplus_lr_ratio); default 16. */
  lrRatio: number;
  /**
   * Every trainable 1-D tensor (head biases) at λ too, without weight decay, as PEFT's
   * create_loraplus_optimizer; false: only `lora_B` at λ (the paper's rule). Default true.
   */
  vectorsAtRatio: boolean;
}

const IS_LORA_B = /(^|\.)lora_B\.weight$/;

/**
 * Split each group into its η part and its λη part: `lora_B` tensors, and with `vectors` every
 * 1-D tensor, at λ× the group's multiplier. 1-D tensors lose their weight decay (buildGroups
 * already exempts biases and norm weights, so this only matters for other vectors). Groups
 * without such tensors pass through unchanged.
 */
export function scaleLoraBGroups(
  groups: readonly ParamGroupSpec[],
  lrRatio: number,
  vectors = true,
): ParamGroupSpec[] {
  const out: ParamGroupSpec[] = [];
  for (const g of groups) {
    const fast = (i: number) => IS_LORA_B.test(g.names[i]) || (vectors && g.params[i].rank === 1);
    const pick = (wantB: boolean) => {
      const idx = g.names.flatMap((_, i) => (fast(i) === wantB ? [i] : []));
      return { names: idx.map((i) => g.names[i]), params: idx.map((i) => g.params[i]) };
    };
    const rest = pick(false), b = pick(true);
    if (rest.names.length) out.push({ ...g, ...rest });
    // B keeps the group's decay; vectors never decay (PEFT's groupB / groupB_no_decay).
    for (const decays of [true, false]) {
      const idx = b.names.flatMap((n, i) => IS_LORA_B.test(n) === decays ? [i] : []);
      if (!idx.length) continue;
      out.push({
        ...g,
        names: idx.map((i) => b.names[i]),
        params: idx.map((i) => b.params[i]),
        label: `${g.label} ${decays ? "B" : "vectors"} (λ ${lrRatio})`,
        lrMultiplier: g.lrMultiplier * lrRatio,
        weightDecay: decays ? g.weightDecay : 0,
      });
    }
  }
  return out;
}

/** LoRA+ as a registry entry. */
export const loraPlus: Method<LoraPlusConfig> = {
  name: "loraplus",
  config: LoraPlusConfigSchema,
  apply(model, config, ctx) {
    const { lrRatio, vectorsAtRatio, ...loraConfig } = config;
    const adapter = applyLora(model, loraConfig, ctx, "loraplus");
    return {
      ...adapter,
      groups: () => scaleLoraBGroups(adapter.groups(), lrRatio, vectorsAtRatio),
    };
  },
};
