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
 * PEFT's per-module options: `rankPattern` / `alphaPattern` (rank_pattern / alpha_pattern) give a
 * module its own r and α by PEFT's pattern rule (methods/peft_config.ts), and `loraBias`
 * (lora_bias) adds a trainable bias b [dOut] on B, inside the scaling:
 *   update = s · (dropout(x)·Aᵀ·Bᵀ + b),   saved as `<module>.lora_B.bias`; merging adds s·b to
 * the base bias (PEFT cannot merge it into a layer without one, and neither do we).
 *
 * @module
 */
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
import { loraOptions } from "./lora_options.ts";
import { type ModulePattern, patternValue } from "./peft_config.ts";
import { headParameters, loadInto, readAdapter, writeAdapter } from "./peft.ts";
import type { Adapter, ConfigSchema, Method, MethodContext } from "./types.ts";

/** LoRA's options, with PEFT's defaults. */
export const LoraConfigSchema: ConfigSchema<LoraConfig> = loraOptions;

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
  /** Per-module rank overriding r, by PEFT's pattern rule; default {}. */
  rankPattern?: ModulePattern;
  /** Per-module α overriding alpha, by PEFT's pattern rule; default {}. */
  alphaPattern?: ModulePattern;
  /** A trainable bias on lora_B, scaled with the update (PEFT's lora_bias); default false. */
  loraBias?: boolean;
}

/** The rank and α of module `name` under `config`'s patterns (PEFT's rank_pattern/alpha_pattern). */
export function moduleRankAlpha(
  config: Pick<LoraConfig, "r" | "alpha" | "rankPattern" | "alphaPattern">,
  name: string,
): { r: number; alpha: number } {
  return {
    r: patternValue(config.rankPattern ?? {}, name) ?? config.r,
    alpha: patternValue(config.alphaPattern ?? {}, name) ?? config.alpha,
  };
}

/** Patterns or a lora_B bias in `config`, which methods other than LoRA/DoRA refuse. */
export function usesModuleOptions(config: LoraConfig): string | null {
  if (Object.keys(config.rankPattern ?? {}).length) return "rankPattern (rank_pattern)";
  if (Object.keys(config.alphaPattern ?? {}).length) return "alphaPattern (alpha_pattern)";
  if (config.loraBias) return "loraBias (lora_bias)";
  return null;
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

  /**
   * Wrap `base` with A [r, dIn] and B [dOut, r], update scale s, input dropout probability, and
   * optionally a bias [dOut] on B (PEFT's lora_bias).
   */
  constructor(
    readonly base: LinearLike,
    loraA: Tensor,
    loraB: Tensor,
    readonly scaling: number,
    readonly dropout: number,
    loraBias: Tensor | null = null,
  ) {
    super();
    this.inFeatures = base.inFeatures;
    this.outFeatures = base.outFeatures;
    if (loraBias && (loraBias.rank !== 1 || loraBias.shape[0] !== base.outFeatures)) {
      throw new Error(`lora_B bias must be [${base.outFeatures}], got [${loraBias.shape}]`);
    }
    this.addModule("base_layer", base);
    this.addModule("lora_A", new ParamModule({ weight: loraA }));
    this.addModule("lora_B", new ParamModule({ weight: loraB, bias: loraBias }));
  }

  /** The bias on B [dOut] (PEFT's lora_bias), or null. */
  get loraBias(): Tensor | null {
    return (this.getModule("lora_B") as ParamModule).maybe("bias");
  }

  /** A [r, dIn]. */
  get loraA(): Tensor {
    return (this.getModule("lora_A") as ParamModule).get("weight");
  }

  /** B [dOut, r]. */
  get loraB(): Tensor {
    return (this.getModule("lora_B") as ParamModule).get("weight");
  }

  /** base(x) + s·(dropout(x)·Aᵀ·Bᵀ + b). */
  forward(x: Tensor): Tensor {
    const base = this.base;
    if (base instanceof Linear && this.loraBias === null) {
      // One fused op: the update is added in the product's epilogue, the dropout is applied
      // inside it (the same stream is drawn as below) and only x·Aᵀ's input mask (recomputed)
      // and h are kept for backward. PEFT's lora_bias takes the composed path.
      return lowRankLinear(
        x,
        base.weight,
        base.bias ?? undefined,
        x,
        this.loraA,
        this.loraB,
        this.scaling,
        ForwardContext.current().fusedDropout(this.dropout),
      );
    }
    const y = base.forward(x);
    const xd = ForwardContext.current().dropout(x, this.dropout);
    const update = linear(linear(xd, this.loraA), this.loraB, this.loraBias ?? undefined);
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

/**
 * {@link adaptableLinears}, refusing an empty match: the error names the method (`who`), the
 * targets asked for and the suffixes the model's Linear modules do have.
 */
export function targetedLinears(
  model: Module,
  ctx: MethodContext,
  who: string,
): [string, LinearLike][] {
  const targets = adaptableLinears(model, ctx);
  if (targets.length === 0) {
    throw new Error(
      `${who}: no Linear module matches targets [${ctx.targets.join(", ")}]; Linear modules here ` +
        `end in ${[...new Set(allLinears(model).map(([n]) => n.split(".").pop()))].join(", ")}`,
    );
  }
  return targets;
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

/**
 * Fold every LoraLinear's update into its base weight (and a lora_B bias, times s, into the base
 * bias) and put the base Linear back.
 */
export function mergeLowRank(
  model: Module,
  layers: readonly [
    string,
    Pick<LoraLinear, "base" | "deltaWeight"> & { loraBias?: Tensor | null; scaling?: number },
  ][],
): void {
  for (const [name, layer] of layers) {
    if (layer.loraBias && layer.base instanceof Linear && !layer.base.bias) {
      throw new Error(
        `${name}: cannot merge lora_bias into a layer without a bias (PEFT cannot either); ` +
          "use the adapter unmerged",
      );
    }
  }
  noGrad(() => {
    for (const [name, layer] of layers) {
      if (!(layer.base instanceof Linear)) {
        throw new Error(`${name}: cannot merge into a non-Linear base`);
      }
      const bias = layer.base.bias;
      if (layer.loraBias && bias) {
        const scaled = mul(layer.loraBias, layer.scaling ?? 1);
        const merged = add(bias, scaled);
        scaled.dispose();
        merged.setCategory(bias.category);
        layer.base.setParameter("bias", merged);
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
    // Targets are the resolved module names or suffixes, so exclusion and layer selection are
    // already applied: the fields that would narrow them further stay at PEFT's defaults.
    target_modules: ctx.targets,
    exclude_modules: null,
    layers_to_transform: null,
    layers_pattern: null,
    modules_to_save: ctx.headModules.length ? ctx.headModules : null,
    bias: "none",
    lora_bias: config.loraBias ?? false,
    fan_in_fan_out: false,
    init_lora_weights: init,
    inference_mode: true,
    rank_pattern: { ...config.rankPattern },
    alpha_pattern: { ...config.alphaPattern },
    revision: null,
    layer_replication: null,
    megatron_config: null,
    megatron_core: "megatron.core",
    loftq_config: {},
    eva_config: null,
    corda_config: null,
    lora_ga_config: null,
    use_qalora: false,
    qalora_group_size: 16,
    trainable_token_indices: null,
    target_parameters: null,
    alora_invocation_tokens: null,
    arrow_config: null,
    use_bdlora: null,
    ensure_weight_tying: false,
    auto_mapping: null,
  };
}

/** Apply LoRA to the targeted Linear layers of `model`. */
export function applyLora(
  model: Module,
  config: LoraConfig,
  ctx: MethodContext,
  method = "lora",
): Adapter {
  const targets = targetedLinears(model, ctx, "LoRA");
  model.setRequiresGrad(false);
  const layers: [string, LoraLinear][] = targets.map(([name, base], i) => {
    const { r, alpha } = moduleRankAlpha(config, name);
    const bound = 1 / Math.sqrt(base.inFeatures);
    const a = randUniform([r, base.inFeatures], -bound, bound, {
      seed: ctx.seed,
      stream: 7919 + i,
      category: "trainable",
    });
    const b = zeros([base.outFeatures, r], { category: "trainable" });
    // PEFT's lora_B is an nn.Linear with bias=lora_bias, whose bias starts at zero under B = 0.
    const bias = config.loraBias ? zeros([base.outFeatures], { category: "trainable" }) : null;
    a.requiresGrad = b.requiresGrad = true;
    if (bias) bias.requiresGrad = true;
    const scaling = loraScaling({ r, alpha, rslora: config.rslora });
    const layer = new LoraLinear(base, a, b, scaling, config.dropout, bias);
    model.setModule(name, layer);
    return [name, layer];
  });
  const head = trainHead(model, ctx);
  const loraParams = (): [string, Tensor][] =>
    layers.flatMap(([n, l]): [string, Tensor][] => [
      [`${n}.lora_A.weight`, l.loraA],
      [`${n}.lora_B.weight`, l.loraB],
      ...(l.loraBias ? [[`${n}.lora_B.bias`, l.loraBias] as [string, Tensor]] : []),
    ]);
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
