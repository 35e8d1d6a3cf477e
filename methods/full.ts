/**
 * Full fine-tuning: every parameter trains (f32), the baseline of every PEFT comparison. With
 * `targetsOnly` only the targeted Linear layers (weights and biases) and the task head train:
 * the seed paper's (Yao et al., 2410.02247) "Full FT QV / QKV" rows, dense updates of just the
 * attention projections at the same placements LoRA adapts.
 * Saved as `model.safetensors` with the model's own (Hugging Face) names plus `full_config.json`
 * (method, base model, head modules), so `loadAdapter` restores it like the other own formats; a
 * training run also writes the complete model folder `model/`.
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import { openSafetensors, writeSafetensors } from "../models/safetensors.ts";
import { Linear, type Module } from "../models/module.ts";
import type { Tensor } from "../ops/mod.ts";
import { buildGroups } from "./groups.ts";
import { targetedLinears, trainHead } from "./lora.ts";
import { toEntries, writeInto, writeTextAtomic } from "./peft.ts";
import type { ConfigSchema, Method, MethodContext } from "./types.ts";

/** Full fine-tuning's one option: train only the targeted layers (and the head). */
export const FullConfigSchema: ConfigSchema<FullConfig> = z.object({
  targetsOnly: z.boolean().default(false),
}).strict();

/** Parsed options. */
export interface FullConfig {
  /** Train only the targeted Linear layers' weights and biases and the task head. */
  targetsOnly: boolean;
}

/** The parameters full fine-tuning trains: all of them, or the targets' and the head's. */
function trainedParameters(
  model: Module,
  config: FullConfig,
  ctx: MethodContext,
): [string, Tensor][] {
  if (!config.targetsOnly) return model.namedParameters();
  const targets = targetedLinears(model, ctx, "full fine-tuning (targetsOnly)");
  model.setRequiresGrad(false);
  const out: [string, Tensor][] = [];
  for (const [name, layer] of targets) {
    if (!(layer instanceof Linear)) {
      throw new Error(`full fine-tuning: ${name} is already adapted; it trains a plain Linear`);
    }
    out.push([`${name}.weight`, layer.weight]);
    if (layer.bias) out.push([`${name}.bias`, layer.bias]);
  }
  // The head's parameters come last, as in the other methods' groups.
  return [...out, ...trainHead(model, ctx)];
}

/** Full fine-tuning as a registry entry. */
export const fullFineTuning: Method<FullConfig> = {
  name: "full",
  changesBaseWeights: true,
  config: FullConfigSchema,
  apply(model, config, ctx) {
    const params = trainedParameters(model, config, ctx);
    for (const [name, t] of params) {
      if (t.dtype !== "f32") {
        throw new Error(
          `full fine-tuning trains its weights in f32, but ${name} is stored as ${t.dtype}: ` +
            "load the model with frozenDtype f32",
        );
      }
      t.requiresGrad = true;
      t.setCategory("trainable");
    }
    return {
      method: "full",
      groups: () => buildGroups("full", params, ctx.lrMultipliers, ctx.weightDecay),
      merge: () => {},
      save: async (dir) => {
        await Deno.mkdir(dir, { recursive: true });
        await writeSafetensors(join(dir, "model.safetensors"), await toEntries(params), {
          format: "pt",
        });
        const saved = {
          method: "full",
          base_model: ctx.baseModel,
          modules_to_save: ctx.headModules,
          ...(config.targetsOnly ? { targets_only: true, target_modules: ctx.targets } : {}),
        };
        await writeTextAtomic(
          join(dir, "full_config.json"),
          JSON.stringify(saved, null, 2) + "\n",
        );
      },
      load: async (dir) => {
        const reader = await openSafetensors(join(dir, "model.safetensors"));
        try {
          for (const [name, t] of params) {
            if (!reader.has(name)) {
              throw new Error(`${dir}/model.safetensors has no tensor ${name}`);
            }
            const info = reader.info(name);
            if (info.shape.join() !== t.shape.join()) {
              throw new Error(
                `${dir}/model.safetensors: ${name} has shape [${info.shape}], expected [${t.shape}]`,
              );
            }
            writeInto(t, await reader.readF32(name));
          }
        } finally {
          reader.close();
        }
      },
    };
  },
};
