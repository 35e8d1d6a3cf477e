/**
 * Full fine-tuning: every parameter trains (f32), the baseline of every PEFT comparison.
 * Saved as `model.safetensors` with the model's own (Hugging Face) names plus `full_config.json`
 * (method, base model, head modules), so `loadAdapter` restores it like the other own formats; a
 * training run also writes the complete model folder `model/`.
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import { openSafetensors, writeSafetensors } from "../models/safetensors.ts";
import { buildGroups } from "./groups.ts";
import { toEntries, writeInto, writeTextAtomic } from "./peft.ts";
import type { ConfigSchema, Method } from "./types.ts";

/** Full fine-tuning has no options of its own. */
export const FullConfigSchema: ConfigSchema<FullConfig> = z.object({}).strict();

/** Parsed (empty) options. */
export type FullConfig = Record<string, never>;

/** Full fine-tuning as a registry entry. */
export const fullFineTuning: Method<FullConfig> = {
  name: "full",
  changesBaseWeights: true,
  config: FullConfigSchema,
  apply(model, _config, ctx) {
    const params = model.namedParameters();
    for (const [name, t] of params) {
      if (t.dtype !== "f32") {
        throw new Error(
          `full fine-tuning trains every weight in f32, but ${name} is stored as ${t.dtype}: ` +
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
        const config = {
          method: "full",
          base_model: ctx.baseModel,
          modules_to_save: ctx.headModules,
        };
        await writeTextAtomic(
          join(dir, "full_config.json"),
          JSON.stringify(config, null, 2) + "\n",
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
