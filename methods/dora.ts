/**
 * DoRA (Liu et al., 2024): weight-decomposed low-rank adaptation, as Hugging Face PEFT implements
 * it (`use_dora=True` on a LoRA config).
 *
 * For a targeted Linear with W [dOut, dIn], LoRA's A [r, dIn], B [dOut, r] and scaling s:
 *   W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖,   ‖·‖ the L2 norm of each output row (dim 1 of [dOut, dIn]),
 * with the magnitude m [dOut] initialised to ‖W‖ so the adapted model starts equal to the base
 * (B = 0 as in LoRA). As the paper's §4.3 recommends and PEFT does, the norm is a constant for
 * autograd: gradients reach m and the numerator's A and B only.
 *
 * The forward is PEFT's arrangement, which never forms W' and keeps the base output:
 *   y = base(x) + (m/‖W + sBA‖ − 1) ⊙ base₀(x̃) + (m/‖W + sBA‖) ⊙ s·x̃·Aᵀ·Bᵀ,
 * where x̃ = dropout(x) and base₀ is the base layer without its bias. Without active dropout
 * base₀(x̃) = base(x) − b is reused; with dropout it is x̃·Wᵀ (one more product), as PEFT computes it.
 *
 * Saved as PEFT saves DoRA: a LoRA adapter (`lora_A.weight`, `lora_B.weight`) plus
 * `base_model.model.<module>.lora_magnitude_vector` [dOut], and `use_dora: true` in
 * adapter_config.json. merge() folds W' into the base weight and puts plain Linear layers back.
 *
 * @module
 */
import {
  add,
  div,
  linear,
  matmul,
  mul,
  noGrad,
  reshape,
  scope,
  sqrt,
  sub,
  sum,
  type Tensor,
} from "../ops/mod.ts";
import { ForwardContext } from "../models/context.ts";
import { Linear, type Module } from "../models/module.ts";
import { buildGroups } from "./groups.ts";
import {
  adaptableLinears,
  applyLora,
  type LoraConfig,
  LoraConfigSchema,
  LoraLinear,
  loraPeftConfig,
  mergeLowRank,
  trainHead,
} from "./lora.ts";
import { loadInto, readAdapter, writeAdapter } from "./peft.ts";
import type { ConfigSchema, Method } from "./types.ts";

/** DoRA takes LoRA's options (PEFT: a LoraConfig with use_dora). */
export const DoraConfigSchema: ConfigSchema<DoraConfig> = LoraConfigSchema;

/** Parsed DoRA options. */
export type DoraConfig = LoraConfig;

/** PEFT's parameter name of the magnitude (no `.weight`: PEFT strips it when saving). */
const MAGNITUDE = "lora_magnitude_vector";

/**
 * ‖W + s·B·A‖ per output row [dOut], outside autograd (DoRA's detached norm). W may be f16; the
 * sum is formed in f32.
 */
export function doraWeightNorm(
  weight: Tensor,
  loraA: Tensor,
  loraB: Tensor,
  scaling: number,
): Tensor {
  return noGrad(() =>
    scope(() => {
      const combined = add(weight, mul(matmul(loraB, loraA), scaling));
      return sqrt(sum(mul(combined, combined), 1));
    })
  );
}

/** A LoRA layer whose adapted weight is renormalised per output row to a learned magnitude. */
export class DoraLinear extends LoraLinear {
  /** LoRA's layer over a Linear `base`, plus the magnitude m [dOut] (trainable). */
  constructor(
    override readonly base: Linear,
    loraA: Tensor,
    loraB: Tensor,
    scaling: number,
    dropout: number,
    magnitude: Tensor,
  ) {
    super(base, loraA, loraB, scaling, dropout);
    if (magnitude.rank !== 1 || magnitude.shape[0] !== base.outFeatures) {
      throw new Error(`DoRA magnitude must be [${base.outFeatures}], got [${magnitude.shape}]`);
    }
    this.addParameter(MAGNITUDE, magnitude);
  }

  /** m [dOut]. */
  get magnitude(): Tensor {
    return this.param(MAGNITUDE);
  }

  /** The detached ‖W + s·B·A‖ [dOut] of the current A, B. */
  weightNorm(): Tensor {
    return doraWeightNorm(this.base.weight, this.loraA, this.loraB, this.scaling);
  }

  /** base(x) + (m/‖·‖ − 1)·base₀(x̃) + (m/‖·‖)·s·x̃·Aᵀ·Bᵀ (see the module comment). */
  override forward(x: Tensor): Tensor {
    const y = this.base.forward(x);
    const xd = ForwardContext.current().dropout(x, this.dropout);
    const bias = this.base.bias;
    const baseResult = xd === x ? (bias ? sub(y, bias) : y) : linear(xd, this.base.weight);
    const update = linear(linear(xd, this.loraA), this.loraB);
    const magNormScale = div(this.magnitude, this.weightNorm()); // [dOut], gradient to m only
    const rescaled = mul(sub(magNormScale, 1), baseResult);
    return add(y, add(rescaled, mul(update, mul(magNormScale, this.scaling))));
  }

  /** W' − W [dOut, dIn], so that adding it to W gives the merged weight W'. */
  override deltaWeight(): Tensor {
    return noGrad(() =>
      scope(() => {
        const w = this.base.weight;
        const combined = add(w, mul(matmul(this.loraB, this.loraA), this.scaling));
        const factor = reshape(div(this.magnitude, this.weightNorm()), [this.outFeatures, 1]);
        return sub(mul(combined, factor), w);
      })
    );
  }
}

/** DoRA as a registry entry. */
export const dora: Method<DoraConfig> = {
  name: "dora",
  config: DoraConfigSchema,
  apply(model: Module, config, ctx) {
    if (config.loraBias) {
      throw new Error(
        "DoRA: loraBias (lora_bias) is not supported with DoRA (PEFT refuses it too)",
      );
    }
    const lora = applyLora(model, config, ctx, "dora");
    const layers: [string, DoraLinear][] = adaptableLinears(model, ctx).map(([name, l]) => {
      if (!(l instanceof LoraLinear) || !(l.base instanceof Linear)) {
        throw new Error(`DoRA: ${name} is not a Linear layer; DoRA needs the base weight W`);
      }
      const magnitude = doraWeightNorm(l.base.weight, l.loraA, l.loraB, l.scaling)
        .setCategory("trainable");
      magnitude.requiresGrad = true;
      const layer = new DoraLinear(l.base, l.loraA, l.loraB, l.scaling, l.dropout, magnitude);
      model.setModule(name, layer);
      return [name, layer];
    });
    const head = trainHead(model, ctx);
    const params = (): [string, Tensor][] =>
      layers.flatMap(([n, l]) => [
        [`${n}.lora_A.weight`, l.loraA],
        [`${n}.lora_B.weight`, l.loraB],
        [`${n}.${MAGNITUDE}`, l.magnitude],
      ]);
    return {
      method: lora.method,
      groups: () => [
        ...buildGroups("dora", params(), ctx.lrMultipliers, ctx.weightDecay),
        ...buildGroups("head", head, {}, ctx.weightDecay),
      ],
      merge: () => mergeLowRank(model, layers),
      save: (dir) =>
        writeAdapter(dir, { ...loraPeftConfig(config, ctx), use_dora: true }, [
          ...params(),
          ...head,
        ]),
      load: async (dir) => {
        const files = await readAdapter(dir);
        for (const [name, t] of [...params(), ...head]) loadInto(files, name, t);
      },
    };
  },
};
