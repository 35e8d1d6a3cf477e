/**
 * Checks of a run's settings that need the model or the step count, made before training
 * starts: values the schema alone cannot reject but that would train something other than what
 * the user asked for, silently.
 *
 * @module
 */
import { findLinears, type Module } from "../../../models/module.ts";
import { getMethod } from "../../../methods/registry.ts";
import type { RunConfig } from "./config.ts";

/**
 * Rank options of the low-rank methods. VeRA is absent on purpose: its rank sizes shared random
 * projections, and the reference's default (256) exceeds small layers by design.
 */
const RANK_OPTIONS: Record<string, { key: string; flag: string }> = {
  lora: { key: "r", flag: "--rank" },
  rslora: { key: "r", flag: "--rank" },
  dora: { key: "r", flag: "--rank" },
  pissa: { key: "r", flag: "--rank" },
  olora: { key: "r", flag: "--rank" },
  loraga: { key: "r", flag: "--rank" },
  eva: { key: "r", flag: "--rank" },
  loraplus: { key: "r", flag: "--rank" },
  adalora: { key: "initR", flag: "methodOptions.initR" },
};

/**
 * Throw an error naming the setting when the run cannot do what it says: a rank above what a
 * targeted layer can hold (rank ≤ min(dIn, dOut)), or a warm-up longer than the run.
 */
export function checkRunPlan(
  config: RunConfig,
  model: Module,
  targets: readonly string[],
  totalSteps: number,
  modelConfig?: { model_type: string; max_position_embeddings?: number },
): void {
  // Learned position tables are a hard limit (RoBERTa's ids start after padding_idx = 1);
  // RoPE decoders extrapolate, so their max_position_embeddings is not enforced here.
  const mpe = modelConfig?.max_position_embeddings;
  const offset = modelConfig?.model_type === "roberta"
    ? 2
    : modelConfig?.model_type === "bert"
    ? 0
    : null;
  if (mpe !== undefined && offset !== null && config.maxLength > mpe - offset) {
    throw new Error(
      `maxLength (--max-length) is ${config.maxLength}, more than ${config.model} can hold: ` +
        `${mpe - offset} positions (max_position_embeddings ${mpe} in its config.json)`,
    );
  }
  if (config.warmupSteps !== undefined && config.warmupSteps > totalSteps) {
    throw new Error(
      `warmupSteps (--warmup-steps) is ${config.warmupSteps}, longer than the run's ${totalSteps} ` +
        `steps: the learning rate would never reach --lr; lower it or train for more steps`,
    );
  }
  const rank = RANK_OPTIONS[config.method];
  if (!rank) return;
  const parsed = getMethod(config.method).config.safeParse(config.methodOptions);
  // Invalid options are reported by the method's own schema when it is applied.
  if (!parsed.success) return;
  const r = (parsed.data as Record<string, unknown>)[rank.key];
  if (typeof r !== "number") return;
  for (const [name, layer] of findLinears(model, targets)) {
    const limit = Math.min(layer.inFeatures, layer.outFeatures);
    if (r > limit) {
      throw new Error(
        `${rank.flag} (methodOptions.${rank.key}) is ${r}, larger than layer ${name} ` +
          `[${layer.outFeatures}, ${layer.inFeatures}] allows (at most ${limit}); lower the rank`,
      );
    }
  }
}
