/**
 * PiSSA (Meng et al., 2024): LoRA started on the principal singular directions of W.
 *
 * With W = U·S·Vᵀ [dOut, dIn] and the top r triplets (U_r, S_r, V_r):
 *   A₀ = diag(√(S_r/s))·V_rᵀ [r, dIn],   B₀ = U_r·diag(√(S_r/s)) [dOut, r],   W_res = W − s·B₀·A₀,
 * so s·B₀·A₀ = U_r·S_r·V_rᵀ exactly and the adapted model starts equal to the base model. The
 * division by the LoRA scaling s (α/r, or α/√r with rsLoRA) follows Hugging Face PEFT's pissa_init;
 * the paper assumes s = 1.
 *
 * `init` is PEFT's init_lora_weights: "pissa" takes the exact SVD (one-sided Jacobi), and
 * "pissa_niter_K" the randomized SVD with K power iterations. PEFT's torch.svd_lowrank samples
 * exactly r directions; we oversample by up to 10 (ops/linalg randomizedSvd's default), which only
 * makes the top-r estimate closer to the exact one. The residual is exact either way.
 *
 * Loading: our saves carry A₀, B₀ in `initial/` and rebuild W_res from them. A PEFT folder has no
 * A₀, B₀; like PEFT, we then rely on the decomposition of W being the same (exact for "pissa",
 * since s·B₀·A₀ does not depend on singular-vector signs; approximate for "pissa_niter_K").
 * Files and the rank-2r conversion for the original weights: see methods/residual_lora.ts.
 *
 * @module
 */
import { z } from "zod";
import {
  mul,
  randomizedSvd,
  slice,
  sqrt,
  svd,
  type Tensor,
  transpose,
  unsqueeze,
} from "../ops/mod.ts";
import type { LoraConfig } from "./lora.ts";
import { loraOptions } from "./lora_options.ts";
import { type LowRankStart, ResidualLora } from "./residual_lora.ts";
import type { ConfigSchema, Method } from "./types.ts";

/** PiSSA's options: LoRA's, and which SVD starts it. */
export const PissaConfigSchema: ConfigSchema<PissaConfig> = loraOptions.extend({
  /** "pissa" (exact SVD) or "pissa_niter_K" (randomized SVD, K power iterations), as in PEFT. */
  init: z.string().regex(/^pissa(_niter_\d+)?$/, {
    message: 'expected "pissa" (exact SVD) or "pissa_niter_K" (randomized, K power iterations)',
  }).default("pissa"),
}).strict();

/** Parsed PiSSA options. */
export interface PissaConfig extends LoraConfig {
  /** "pissa" (exact SVD) or "pissa_niter_K" (randomized, K power iterations); default "pissa". */
  init: string;
}

/** Power iterations of a "pissa_niter_K" init, or null for the exact SVD. */
export function pissaPowerIterations(init: string): number | null {
  const m = /^pissa_niter_(\d+)$/.exec(init);
  return m ? Number(m[1]) : null;
}

/**
 * PiSSA's A₀, B₀ of one weight [dOut, dIn] (f32): the top-r singular triplets, each side scaled by
 * √(S/s). `powerIterations` null: exact SVD; otherwise the randomized SVD.
 */
export function pissaStart(
  weight: Tensor,
  r: number,
  scaling: number,
  powerIterations: number | null,
  seed = 0,
): LowRankStart {
  const { u, s, v } = powerIterations === null
    ? svd(weight)
    : randomizedSvd(weight, r, { powerIterations, seed });
  const root = sqrt(mul(slice(s, 0, 0, r), 1 / scaling)); // √(S_r/s) [r]
  return {
    a: mul(transpose(slice(v, 1, 0, r)), unsqueeze(root, 1)),
    b: mul(slice(u, 1, 0, r), root),
  };
}

/** PiSSA as a registry entry. */
export const pissa: Method<PissaConfig> = {
  name: "pissa",
  config: PissaConfigSchema,
  apply(model, config, ctx) {
    const { init, ...lora } = config;
    const residual = new ResidualLora(model, lora, ctx, { method: "pissa", peftInit: init });
    const niter = pissaPowerIterations(init);
    residual.start((_, w, i) =>
      pissaStart(w, config.r, residual.scaling, niter, ctx.seed * 7919 + i)
    );
    return residual.adapter({ reproducible: true });
  },
};
