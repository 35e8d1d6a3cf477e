/**
 * BitFit (Ben Zaken, Ravfogel and Goldberg, 2022): train only the bias terms (and the task head).
 *
 * Targets name modules (full names or suffixes, as everywhere); the `bias` of every matching module
 * trains. The default ({@link Method.defaultTargets}) is every module that has a bias — Linear
 * layers and LayerNorms alike, as the paper's "all bias terms" setting. A model without biases
 * (LLaMA: its Linear layers and RMSNorms have none) is an error: BitFit has nothing to train there.
 * Biases are the model's own parameters, trained in place; no layer is replaced.
 *
 * File format (Hugging Face PEFT has no BitFit, so this is our own, laid out like a PEFT adapter so
 * the same reader serves it):
 * - `adapter_config.json`: `{ "peft_type": "BITFIT", "task_type", "base_model_name_or_path",
 *   "target_modules": [...], "modules_to_save": [...] | null }` — peft_type "BITFIT" is ours, and
 *   PyTorch PEFT will not load it;
 * - `adapter_model.safetensors`: F32 tensors `base_model.model.<module>.bias` for every trained
 *   bias, plus the head modules' parameters under their own names (modules_to_save).
 * Loading writes the biases back into the model; merge() only freezes them again (they already are
 * the model's parameters).
 *
 * @module
 */
import { z } from "zod";
import type { Tensor } from "../ops/mod.ts";
import { matchesTarget, type Module } from "../models/module.ts";
import { buildGroups } from "./groups.ts";
import { trainHead } from "./lora.ts";
import { loadInto, readAdapter, writeAdapter } from "./peft.ts";
import type { ConfigSchema, Method } from "./types.ts";

/** BitFit has no options of its own. */
export const BitFitConfigSchema: ConfigSchema<BitFitConfig> = z.object({}).strict();

/** Parsed (empty) options. */
export type BitFitConfig = Record<string, never>;

/** Every bias parameter of `model` as [module name, bias]. */
function biases(model: Module): [string, Tensor][] {
  return model.namedParameters().filter(([n]) => n === "bias" || n.endsWith(".bias")).map((
    [n, t],
  ) => [n.slice(0, Math.max(0, n.length - ".bias".length)), t]);
}

/** BitFit as a registry entry. */
export const bitFit: Method<BitFitConfig> = {
  name: "bitfit",
  changesBaseWeights: true,
  config: BitFitConfigSchema,
  defaultTargets: (model) => biases(model).map(([m]) => m),
  apply(model, _config, ctx) {
    const inHead = (n: string) => ctx.headModules.some((h) => n === h || n.startsWith(`${h}.`));
    const all = biases(model).filter(([m]) => !inHead(m));
    if (all.length === 0) {
      throw new Error(
        "BitFit trains bias terms, but this model has none outside its task head (LLaMA-style " +
          "Linear layers and RMSNorm carry no bias); choose another method",
      );
    }
    const chosen = all.filter(([m]) => ctx.targets.some((t) => matchesTarget(m, t)));
    if (chosen.length === 0) {
      throw new Error(
        `BitFit: no module with a bias matches targets [${ctx.targets.join(", ")}]; modules with ` +
          `biases end in ${[...new Set(all.map(([m]) => m.split(".").pop()))].join(", ")}`,
      );
    }
    model.setRequiresGrad(false);
    const trained: [string, Tensor][] = chosen.map(([m, t]) => {
      if (t.dtype !== "f32") {
        throw new Error(`BitFit trains biases in f32, but ${m}.bias is ${t.dtype}`);
      }
      t.requiresGrad = true;
      t.setCategory("trainable");
      return [`${m}.bias`, t];
    });
    const head = trainHead(model, ctx);
    return {
      method: "bitfit",
      groups: () => [
        ...buildGroups("bitfit", trained, ctx.lrMultipliers, ctx.weightDecay),
        ...buildGroups("head", head, {}, ctx.weightDecay),
      ],
      merge: () => {
        for (const [, t] of trained) {
          t.requiresGrad = false;
          t.grad?.dispose();
          t.grad = null;
          t.setCategory("weights");
        }
      },
      save: (dir) =>
        writeAdapter(dir, {
          peft_type: "BITFIT",
          task_type: ctx.taskType,
          base_model_name_or_path: ctx.baseModel,
          target_modules: ctx.targets,
          modules_to_save: ctx.headModules.length ? ctx.headModules : null,
        }, [...trained, ...head]),
      load: async (dir) => {
        const files = await readAdapter(dir);
        for (const [name, t] of [...trained, ...head]) loadInto(files, name, t);
      },
    };
  },
};
