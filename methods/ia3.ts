/**
 * (IA)³ (Liu et al., 2022): learned rescaling vectors, as Hugging Face PEFT implements them.
 *
 * Each targeted Linear y = x·Wᵀ + b gets one trainable vector l, initialised to ones (the adapted
 * model starts equal to the base):
 * - attention-style modules scale their output:   y = l ⊙ (x·Wᵀ + b),   l stored [dOut, 1];
 * - feed-forward modules scale their input:       y = (l ⊙ x)·Wᵀ + b,   l stored [1, dIn].
 * The stored shapes are PEFT's, so `ia3_l` tensors move between the two toolkits unchanged.
 *
 * Targets default per architecture to PEFT's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
 * (RoBERTa/BERT: key, value, output.dense; LLaMA: k_proj, v_proj, down_proj) through
 * {@link Method.defaultTargets}; targets given for the run are used as given. Which targets scale
 * their input is the `feedforward` option (PEFT's feedforward_modules), by default PEFT's
 * feed-forward mapping (output.dense; down_proj). As in PEFT, a target or feed-forward name matches
 * every module ending in it, so "output.dense" also takes RoBERTa's attention.output.dense (whose
 * input is then scaled, [1, hidden]); PEFT's rule that feed-forward names must be targets is kept
 * as: every `feedforward` entry given must match a targeted module.
 *
 * Saved in PEFT's format: `base_model.model.<module>.ia3_l`, peft_type "IA3", target_modules and
 * feedforward_modules. merge() folds l into W (rows or columns) and, for output scaling, into b.
 *
 * @module
 */
import { z } from "zod";
import { cast, mul, noGrad, ones, reshape, scope, type Tensor } from "../ops/mod.ts";
import { allLinears, Linear, type LinearLike, matchesTarget, Module } from "../models/module.ts";
import { buildGroups } from "./groups.ts";
import { targetedLinears, trainHead } from "./lora.ts";
import { loadInto, readAdapter, writeAdapter } from "./peft.ts";
import type { ConfigSchema, Method } from "./types.ts";

/** (IA)³'s options. */
export const Ia3ConfigSchema: ConfigSchema<Ia3Config> = z.object({
  /**
   * Targets whose input (not output) is scaled (PEFT's feedforward_modules). Default: PEFT's
   * feed-forward modules of the architecture (output.dense for RoBERTa/BERT, down_proj for LLaMA).
   */
  feedforward: z.array(z.string().min(1)).optional(),
}).strict();

/** Parsed (IA)³ options. */
export interface Ia3Config {
  /**
   * Targets whose input (not output) is scaled (PEFT's feedforward_modules). Absent: PEFT's
   * feed-forward modules of the architecture (output.dense for RoBERTa/BERT, down_proj for LLaMA).
   */
  feedforward?: string[];
}

/** PEFT's per-architecture targets and feed-forward modules for the architectures we load. */
export const IA3_DEFAULTS: Readonly<
  Record<"encoder" | "llama", { targets: string[]; feedforward: string[] }>
> = {
  encoder: { targets: ["key", "value", "output.dense"], feedforward: ["output.dense"] },
  llama: { targets: ["k_proj", "v_proj", "down_proj"], feedforward: ["down_proj"] },
};

/** Which of our architectures `model` is, from its Linear names. */
function architecture(model: Module): "encoder" | "llama" {
  const names = allLinears(model).map(([n]) => n);
  if (names.some((n) => matchesTarget(n, "mlp.down_proj"))) return "llama";
  if (names.some((n) => matchesTarget(n, "intermediate.dense"))) return "encoder";
  throw new Error(
    "IA3: no default targets for this model (neither a RoBERTa/BERT encoder nor a LLaMA decoder); " +
      "name the target modules explicitly",
  );
}

/** A Linear whose output (or, feed-forward, input) is scaled by a learned vector. */
export class Ia3Linear extends Module implements LinearLike {
  /** dIn of the base layer. */
  readonly inFeatures: number;
  /** dOut of the base layer. */
  readonly outFeatures: number;

  /** Wrap `base` with the vector `scale` ([dOut, 1], or [1, dIn] when feed-forward). */
  constructor(readonly base: LinearLike, scale: Tensor, readonly isFeedforward: boolean) {
    super();
    this.inFeatures = base.inFeatures;
    this.outFeatures = base.outFeatures;
    const want = isFeedforward ? [1, this.inFeatures] : [this.outFeatures, 1];
    if (scale.shape.join() !== want.join()) {
      throw new Error(`IA3 vector must be [${want}], got [${scale.shape}]`);
    }
    this.addModule("base_layer", base);
    this.addParameter("ia3_l", scale);
  }

  /** l: [dOut, 1] (output scaling) or [1, dIn] (feed-forward). */
  get scale(): Tensor {
    return this.param("ia3_l");
  }

  /** l ⊙ base(x), or base(l ⊙ x) for feed-forward modules. */
  forward(x: Tensor): Tensor {
    if (this.isFeedforward) {
      return this.base.forward(mul(x, reshape(this.scale, [this.inFeatures])));
    }
    return mul(this.base.forward(x), reshape(this.scale, [this.outFeatures]));
  }
}

/** Fold l into the base Linear (W's rows and b, or W's columns) and put it back in the tree. */
function mergeScaling(model: Module, name: string, layer: Ia3Linear): void {
  const base = layer.base;
  if (!(base instanceof Linear)) throw new Error(`${name}: cannot merge into a non-Linear base`);
  noGrad(() => {
    const w = base.weight, b = base.bias;
    const [weight, bias] = scope(() => {
      const scaledW = mul(w, layer.scale); // [dOut, dIn] ⊙ [dOut, 1] or [1, dIn]; f32
      const scaledB = b && !layer.isFeedforward
        ? mul(b, reshape(layer.scale, [layer.outFeatures]))
        : null;
      return [w.dtype === "f16" ? cast(scaledW, "f16") : scaledW, scaledB];
    });
    base.setParameter("weight", weight.setCategory(w.category));
    if (bias && b) base.setParameter("bias", bias.setCategory(b.category));
  });
  model.setModule(name, base);
}

/** (IA)³ as a registry entry. */
export const ia3: Method<Ia3Config> = {
  name: "ia3",
  config: Ia3ConfigSchema,
  defaultTargets: (model) => IA3_DEFAULTS[architecture(model)].targets,
  apply(model, config, ctx) {
    const targets = targetedLinears(model, ctx, "IA3");
    const feedforward = config.feedforward ?? IA3_DEFAULTS[architecture(model)].feedforward;
    const isFeedforward = (n: string) => feedforward.some((f) => matchesTarget(n, f));
    if (config.feedforward) {
      const stray = config.feedforward.filter((f) => !targets.some(([n]) => matchesTarget(n, f)));
      if (stray.length) {
        throw new Error(
          `IA3: feedforward module(s) ${stray.join(", ")} match no targeted module ` +
            `(targets: ${ctx.targets.join(", ")}); feed-forward modules must be among the targets`,
        );
      }
    }
    model.setRequiresGrad(false);
    const layers: [string, Ia3Linear][] = targets.map(([name, base]) => {
      const ff = isFeedforward(name);
      const scale = ones(ff ? [1, base.inFeatures] : [base.outFeatures, 1], {
        category: "trainable",
      });
      scale.requiresGrad = true;
      const layer = new Ia3Linear(base, scale, ff);
      model.setModule(name, layer);
      return [name, layer];
    });
    const head = trainHead(model, ctx);
    const vectors = (): [string, Tensor][] => layers.map(([n, l]) => [`${n}.ia3_l`, l.scale]);
    return {
      method: "ia3",
      groups: () => [
        ...buildGroups("ia3", vectors(), ctx.lrMultipliers, ctx.weightDecay),
        ...buildGroups("head", head, {}, ctx.weightDecay),
      ],
      merge: () => {
        for (const [name, layer] of layers) mergeScaling(model, name, layer);
      },
      save: (dir) =>
        writeAdapter(dir, {
          peft_type: "IA3",
          task_type: ctx.taskType,
          base_model_name_or_path: ctx.baseModel,
          target_modules: ctx.targets,
          exclude_modules: null,
          feedforward_modules: feedforward.filter((f) => layers.some(([n]) => matchesTarget(n, f))),
          modules_to_save: ctx.headModules.length ? ctx.headModules : null,
          fan_in_fan_out: false,
          init_ia3_weights: true,
          inference_mode: true,
          revision: null,
        }, [...vectors(), ...head]),
      load: async (dir) => {
        const files = await readAdapter(dir);
        for (const [name, t] of [...vectors(), ...head]) loadInto(files, name, t);
      },
    };
  },
};
