/**
 * LoRA (Hu et al., 2021) and rsLoRA (Kalajdzievski, 2023), as Hugging Face PEFT implements them.
 *
 * For a targeted Linear y = x·Wᵀ + b with W [dOut, dIn]:
 *   y = x·Wᵀ + b + s · dropout(x)·Aᵀ·Bᵀ,   A [r, dIn], B [dOut, r],
 *   s = α / r (LoRA) or α / √r (rsLoRA).
 * Initialisation as PEFT's default: A ~ kaiming_uniform(a = √5), i.e. U(−1/√dIn, 1/√dIn); B = 0,
 * so the adapted model starts equal to the base model. Only A and B (and the task head) train.
 * Saved as PEFT does: `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`.
 *
 * @module
 */
import { z } from "zod";
import {
  add,
  cast,
  linear,
  lowRankLinear,
  matmul,
  mul,
  noGrad,
  randUniform,
  type Tensor,
  zeros,
} from "../ops/mod.ts";
import { ForwardContext } from "../models/context.ts";
import {
  allLinears,
  findLinears,
  Linear,
  type LinearLike,
  Module,
  ParamModule,
} from "../models/module.ts";
import { buildGroups } from "./groups.ts";
import { headParameters, loadInto, readAdapter, writeAdapter } from "./peft.ts";
import type { Adapter, ConfigSchema, Method, MethodContext } from "./types.ts";

// Not annotated as ConfigSchema<LoraConfig>: PiSSA, LoRA-GA, LoRA+ and rsLoRA extend its shape.
/** LoRA's options, with PEFT's defaults. */
export const LoraConfigSchema = z.object({
  /** Rank r of the update. */
  r: z.number().int().positive().default(8),
  /** α: the update is scaled by α/r (or α/√r with rsLoRA). */
  alpha: z.number().positive().default(8),
  /** Dropout on the adapter's input. */
  dropout: z.number().min(0).lt(1).default(0),
  /** rsLoRA: scale by α/√r, which keeps the update's magnitude stable as r grows. */
  rslora: z.boolean().default(false),
}).strict() satisfies ConfigSchema<LoraConfig>;

/** Parsed LoRA options. */
export interface LoraConfig {
  /** Rank r of the update; default 8. */
  r: number;
  /** α: the update is scaled by α/r (or α/√r with rsLoRA); default 8. */
  alpha: number;
  /** Dropout probability on the adapter's input, in [0, 1); default 0. */
  dropout: number;
  /** rsLoRA: scale by α/√r instead of α/r; default false. */
  rslora: boolean;
}

/** The scaling s of the low-rank update. */
export function loraScaling(c: Pick<LoraConfig, "r" | "alpha" | "rslora">): number {
  return c.rslora ? c.alpha / Math.sqrt(c.r) : c.alpha / c.r;
}

/** A Linear with a low-rank update; `base_layer` keeps the frozen original. */
export class LoraLinear extends Module implements LinearLike {
  /** dIn of the base layer. */
  readonly inFeatures: number;
  /** dOut of the base layer. */
  readonly outFeatures: number;

  /** Wrap `base` with A [r, dIn] and B [dOut, r], update scale s and input dropout probability. */
  constructor(
    readonly base: LinearLike,
    loraA: Tensor,
    loraB: Tensor,
    readonly scaling: number,
    readonly dropout: number,
  ) {
    super();
    this.inFeatures = base.inFeatures;
    this.outFeatures = base.outFeatures;
    this.addModule("base_layer", base);
    this.addModule("lora_A", new ParamModule({ weight: loraA }));
    this.addModule("lora_B", new ParamModule({ weight: loraB }));
  }

  /** A [r, dIn]. */
  get loraA(): Tensor {
    return (this.getModule("lora_A") as ParamModule).get("weight");
  }

  /** B [dOut, r]. */
  get loraB(): Tensor {
    return (this.getModule("lora_B") as ParamModule).get("weight");
  }

  /** base(x) + s·dropout(x)·Aᵀ·Bᵀ. */
  forward(x: Tensor): Tensor {
    const base = this.base;
    if (base instanceof Linear) {
      // One fused op: the update is added in the product's epilogue and only xd and xd·Aᵀ are
      // kept for backward (the same dropout stream is drawn as below).
      const xd = ForwardContext.current().dropout(x, this.dropout);
      return lowRankLinear(
        x,
        base.weight,
        base.bias ?? undefined,
        xd,
        this.loraA,
        this.loraB,
        this.scaling,
      );
    }
    const y = base.forward(x);
    const xd = ForwardContext.current().dropout(x, this.dropout);
    const update = linear(linear(xd, this.loraA), this.loraB);
    return add(y, mul(update, this.scaling));
  }

  /** ΔW = s·B·A [dOut, dIn]. */
  deltaWeight(): Tensor {
    return noGrad(() => mul(matmul(this.loraB, this.loraA), this.scaling));
  }
}

/**
 * Which of the architectures we load `model` is, from its module names: a LLaMA-family decoder, a
 * RoBERTa or a BERT encoder (null otherwise). Methods pick their reference's default targets by it.
 */
export function architectureOf(model: Module): "llama" | "roberta" | "bert" | null {
  const names = allLinears(model).map(([n]) => n);
  if (names.some((n) => n.endsWith("mlp.down_proj"))) return "llama";
  if (names.some((n) => n.startsWith("roberta."))) return "roberta";
  if (names.some((n) => n.startsWith("bert."))) return "bert";
  return null;
}

/** The targeted Linear layers, excluding the task head (trained whole, never adapted). */
export function adaptableLinears(model: Module, ctx: MethodContext): [string, LinearLike][] {
  const inHead = (n: string) => ctx.headModules.some((h) => n === h || n.startsWith(`${h}.`));
  return findLinears(model, ctx.targets).filter(([n]) => !inHead(n));
}

/** Make the head modules trainable (f32, category "trainable"); returns their parameters. */
export function trainHead(model: Module, ctx: MethodContext): [string, Tensor][] {
  const params = headParameters(model, ctx.headModules);
  for (const [, t] of params) {
    t.requiresGrad = true;
    t.setCategory("trainable");
  }
  return params;
}

/** Fold every LoraLinear's update into its base weight and put the base Linear back. */
export function mergeLowRank(
  model: Module,
  layers: readonly [string, Pick<LoraLinear, "base" | "deltaWeight">][],
): void {
  noGrad(() => {
    for (const [name, layer] of layers) {
      if (!(layer.base instanceof Linear)) {
        throw new Error(`${name}: cannot merge into a non-Linear base`);
      }
      const delta = layer.deltaWeight();
      const w = layer.base.weight;
      const sum = add(w, delta); // f16 weights are widened by the kernel; the sum is f32
      const updated = w.dtype === "f16" ? cast(sum, "f16") : sum;
      for (const t of [delta, sum]) if (t !== updated) t.dispose();
      updated.setCategory(w.category);
      layer.base.setParameter("weight", updated);
      model.setModule(name, layer.base);
    }
  });
}

/**
 * LoRA's adapter_config.json as PEFT writes it. `init` is PEFT's init_lora_weights: true for
 * LoRA's own start, or the name of a decomposition start ("pissa", "olora", "lora_ga").
 */
export function loraPeftConfig(
  config: LoraConfig,
  ctx: MethodContext,
  init: boolean | string = true,
): Record<string, unknown> {
  return {
    peft_type: "LORA",
    task_type: ctx.taskType,
    base_model_name_or_path: ctx.baseModel,
    r: config.r,
    lora_alpha: config.alpha,
    lora_dropout: config.dropout,
    use_rslora: config.rslora,
    use_dora: false,
    target_modules: ctx.targets,
    modules_to_save: ctx.headModules.length ? ctx.headModules : null,
    bias: "none",
    fan_in_fan_out: false,
    init_lora_weights: init,
    inference_mode: true,
    rank_pattern: {},
    alpha_pattern: {},
    layers_to_transform: null,
    layers_pattern: null,
    revision: null,
  };
}

/** Apply LoRA to the targeted Linear layers of `model`. */
export function applyLora(
  model: Module,
  config: LoraConfig,
  ctx: MethodContext,
  method = "lora",
): Adapter {
  const targets = adaptableLinears(model, ctx);
  if (targets.length === 0) {
    throw new Error(
      `LoRA: no Linear module matches targets [${ctx.targets.join(", ")}]; Linear modules here ` +
        `end in ${[...new Set(allLinears(model).map(([n]) => n.split(".").pop()))].join(", ")}`,
    );
  }
  model.setRequiresGrad(false);
  const scaling = loraScaling(config);
  const layers: [string, LoraLinear][] = targets.map(([name, base], i) => {
    const bound = 1 / Math.sqrt(base.inFeatures);
    const a = randUniform([config.r, base.inFeatures], -bound, bound, {
      seed: ctx.seed,
      stream: 7919 + i,
      category: "trainable",
    });
    const b = zeros([base.outFeatures, config.r], { category: "trainable" });
    a.requiresGrad = b.requiresGrad = true;
    const layer = new LoraLinear(base, a, b, scaling, config.dropout);
    model.setModule(name, layer);
    return [name, layer];
  });
  const head = trainHead(model, ctx);
  const loraParams = (): [string, Tensor][] =>
    layers.flatMap(([n, l]) => [[`${n}.lora_A.weight`, l.loraA], [`${n}.lora_B.weight`, l.loraB]]);
  return {
    method,
    groups: () => [
      ...buildGroups(method, loraParams(), ctx.lrMultipliers, ctx.weightDecay),
      ...buildGroups("head", head, {}, ctx.weightDecay),
    ],
    merge: () => mergeLowRank(model, layers),
    save: (dir) => writeAdapter(dir, loraPeftConfig(config, ctx), [...loraParams(), ...head]),
    load: async (dir) => {
      const files = await readAdapter(dir);
      for (const [name, t] of [...loraParams(), ...head]) loadInto(files, name, t);
    },
  };
}

/** LoRA as a registry entry. */
export const lora: Method<LoraConfig> = {
  name: "lora",
  config: LoraConfigSchema,
  apply: (model, config, ctx) => applyLora(model, config, ctx),
};
