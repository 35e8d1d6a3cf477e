/**
 * LoRA+ (Hayou, Ghosh and Yu, 2024): LoRA whose B matrices learn λ times faster than A.
 *
 * The model, initialisation and forward are exactly LoRA's (see ./lora.ts, reused as is); only the
 * optimizer's parameter groups differ: every `lora_B` gets its group's learning-rate multiplier
 * times λ (`lrRatio`), so λ composes with the run's per-module multipliers (W_v's B at 4·λ when
 * `value: 4`).
 *
 * Choices where references differ:
 * - λ defaults to 16, the ratio the paper recommends when nothing is tuned (PEFT's
 *   `create_loraplus_optimizer` has no default and requires `loraplus_lr_ratio`).
 * - Only `lora_B` gets λ. PEFT's helper also puts every 1-D trainable tensor (the task head's
 *   biases) into the λ group; the paper's rule concerns B alone, so the head trains at the base rate.
 * - Saved as a plain PEFT LoRA adapter (peft_type "LORA"): λ shapes training only, and PEFT's
 *   LoraConfig has no field for it, so the adapter loads anywhere a LoRA adapter does.
 *
 * @module
 */
import { z } from "zod";
import { applyLora, type LoraConfig, LoraConfigSchema } from "./lora.ts";
import type { ConfigSchema, Method, ParamGroupSpec } from "./types.ts";

/** LoRA+'s options: LoRA's plus the B/A learning-rate ratio λ. */
export const LoraPlusConfigSchema: ConfigSchema<LoraPlusConfig> = LoraConfigSchema.extend({
  /** λ: B's learning rate over A's (PEFT's loraplus_lr_ratio). */
  lrRatio: z.number().positive().default(16),
}).strict();

/** Parsed LoRA+ options. */
export interface LoraPlusConfig extends LoraConfig {
  /** λ: B's learning rate over A's (PEFT's loraplus_lr_ratio); default 16. */
  lrRatio: number;
}

const IS_LORA_B = /(^|\.)lora_B\.weight$/;

/**
 * Split each group into its non-B part and its B part, the latter at λ× the group's multiplier.
 * Groups without B tensors (the head) pass through unchanged.
 */
export function scaleLoraBGroups(
  groups: readonly ParamGroupSpec[],
  lrRatio: number,
): ParamGroupSpec[] {
  const out: ParamGroupSpec[] = [];
  for (const g of groups) {
    const pick = (wantB: boolean) => {
      const idx = g.names.flatMap((n, i) => (IS_LORA_B.test(n) === wantB ? [i] : []));
      return { names: idx.map((i) => g.names[i]), params: idx.map((i) => g.params[i]) };
    };
    const rest = pick(false), b = pick(true);
    if (rest.names.length) out.push({ ...g, ...rest });
    if (b.names.length) {
      out.push({
        ...g,
        ...b,
        label: `${g.label} B (λ ${lrRatio})`,
        lrMultiplier: g.lrMultiplier * lrRatio,
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
    const { lrRatio, ...loraConfig } = config;
    const adapter = applyLora(model, loraConfig, ctx, "loraplus");
    return { ...adapter, groups: () => scaleLoraBGroups(adapter.groups(), lrRatio) };
  },
};
