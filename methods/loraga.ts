/**
 * LoRA-GA (Wang et al., 2024): LoRA started so that its first step approximates full
 * fine-tuning's, from an SVD of the gradient of each targeted weight.
 *
 * Before training (Adapter.beforeTraining), the loss of the first `batches` training batches is
 * backpropagated with the targeted base weights temporarily requiring grad; G = the mean gradient
 * [dOut, dIn] per weight. With G ≈ U·S·Vᵀ (top 2r triplets), the official implementation's
 * default ("ArB2r", Outsider565/LoRA-GA, also PEFT's default direction) takes
 *   A₀ = c·V[:, :r]ᵀ [r, dIn],   B₀ = c·U[:, r:2r] [dOut, r],   W_res = W − s·B₀·A₀,
 * with the "stable" scale c = dOut^¼/√γ (γ = stable_gamma = 16). Other choices, all from the
 * official code: direction "A2rBr" (B₀ from U[:, :r], A₀ from V[:, r:2r]ᵀ) and "ArBr" (B₀ from
 * the even, A₀ from the odd of the first 2r directions); scale "gd_scale" (c = 1/s), "unit"
 * (c = 1) and "weight_svd" (c = the mean of √(S_W/s) over W's top r singular values). The scale
 * names are PEFT's; "random" is left out (its draw is not reproducible across implementations).
 * Where the official code and PEFT's LoRA-GA differ, we follow the official code (the paper's
 * reference): no singular values folded into B₀, and G averaged over the batches (PEFT sums).
 *
 * The SVD is the randomized one with 4 power iterations and 2r extra directions (the official
 * torch.svd_lowrank(G, q = 4r, niter = 4)), or the exact Jacobi SVD when 4r ≥ min(dOut, dIn).
 * A₀ and B₀ come from different singular triplets, so the start (and the whole run) depends on
 * the signs the SVD gives each triplet, which torch leaves to LAPACK/cuSOLVER; here every triplet
 * is sign-normalised first (the largest-magnitude entry of its right vector positive, see
 * ./signs.ts), so the start is a function of G alone.
 * Gradient memory: one f32 [dOut, dIn] per targeted weight while estimating (category "grads"),
 * released before training. Parameter count: r·(dIn + dOut) per module, as LoRA.
 *
 * Saved like PiSSA (methods/residual_lora.ts): adapter_config.json with init_lora_weights
 * "lora_ga" and lora_ga_config as PEFT writes them. The start depends on data, so loading needs
 * the saved `initial/` adapter (A₀, B₀); the rank-2r conversion in `lora/` applies to the
 * original model anywhere.
 *
 * @module
 */
import { z } from "zod";
import {
  backward,
  contiguous,
  mean,
  mul,
  randomizedSvd,
  scope,
  slice,
  sqrt,
  svd,
  type Tensor,
  transpose,
} from "../ops/mod.ts";
import type { LoraConfig } from "./lora.ts";
import { loraOptions } from "./lora_options.ts";
import { signOfLargest } from "./signs.ts";
import { type LowRankStart, ResidualLora } from "./residual_lora.ts";
import type { ConfigSchema, DataPass, Method } from "./types.ts";

/** LoRA-GA's options: LoRA's, the gradient estimate's batches, and the official init choices. */
export const LoraGaConfigSchema: ConfigSchema<LoraGaConfig> = loraOptions.extend({
  /** Training batches whose mean gradient starts the adapter. */
  batches: z.number().int().positive().default(8),
  /** Which singular directions go to A₀ and B₀. */
  direction: z.enum(["ArB2r", "A2rBr", "ArBr"]).default("ArB2r"),
  /** How A₀ and B₀ are scaled. */
  scale: z.enum(["stable", "gd_scale", "unit", "weight_svd"]).default("stable"),
  /** γ of the "stable" scale dOut^¼/√γ. */
  stableGamma: z.number().positive().default(16),
}).strict();

/** Parsed LoRA-GA options. */
export interface LoraGaConfig extends LoraConfig {
  /** Training batches whose mean gradient starts the adapter; default 8. */
  batches: number;
  /** Which singular directions go to A₀ and B₀ (see the module notes); default "ArB2r". */
  direction: "ArB2r" | "A2rBr" | "ArBr";
  /** How A₀ and B₀ are scaled (see the module notes); default "stable". */
  scale: "stable" | "gd_scale" | "unit" | "weight_svd";
  /** γ of the "stable" scale dOut^¼/√γ; default 16. */
  stableGamma: number;
}

/** Indices of the singular directions A₀ (rows of Vᵀ) and B₀ (columns of U) take. */
export function loraGaDirections(
  direction: LoraGaConfig["direction"],
  r: number,
): { a: number[]; b: number[] } {
  const range = (from: number, step = 1) => Array.from({ length: r }, (_, k) => from + k * step);
  if (direction === "ArB2r") return { a: range(0), b: range(r) };
  if (direction === "A2rBr") return { a: range(r), b: range(0) };
  return { a: range(1, 2), b: range(0, 2) };
}

/** The top `k` singular triplets of `m` [rows, cols]: randomized as the official code, or exact. */
function topSingular(m: Tensor, k: number, seed: number): { u: Tensor; s: Tensor; v: Tensor } {
  const small = Math.min(...m.shape);
  if (2 * k >= small) return svd(m);
  return randomizedSvd(m, k, { oversample: k, powerIterations: 4, seed });
}

/** Columns `idx` of `m` [n, k] as a new [n, idx.length] tensor (contiguous runs are views). */
function columns(m: Tensor, idx: readonly number[]): Tensor {
  const step = idx.length > 1 ? idx[1] - idx[0] : 1;
  return contiguous(slice(m, 1, idx[0], idx[idx.length - 1] + 1, step));
}

/**
 * LoRA-GA's A₀, B₀ from the mean gradient `grad` [dOut, dIn] of a weight `weight` (both f32).
 * `scaling` is the LoRA scaling s.
 */
export function loraGaStart(
  grad: Tensor,
  weight: Tensor,
  config: Pick<LoraGaConfig, "r" | "direction" | "scale" | "stableGamma">,
  scaling: number,
  seed = 0,
): LowRankStart {
  const { r } = config;
  const dOut = grad.shape[0];
  const svd = topSingular(grad, 2 * r, seed);
  const sign = signOfLargest(svd.v);
  const u = mul(svd.u, sign), v = mul(svd.v, sign);
  const pick = loraGaDirections(config.direction, r);
  const a = transpose(columns(v, pick.a)); // [r, dIn]
  const b = columns(u, pick.b); // [dOut, r]
  let c: number | Tensor = 1;
  if (config.scale === "stable") c = dOut ** 0.25 / Math.sqrt(config.stableGamma);
  else if (config.scale === "gd_scale") c = 1 / scaling;
  else if (config.scale === "weight_svd") {
    const { s } = topSingular(weight, r, seed + 1);
    c = mean(sqrt(mul(slice(s, 0, 0, r), 1 / scaling)));
  }
  return { a: contiguous(mul(a, c)), b: mul(b, c) };
}

/** LoRA-GA as a registry entry. */
export const loraGa: Method<LoraGaConfig> = {
  name: "loraga",
  config: LoraGaConfigSchema,
  apply(model, config, ctx) {
    const { batches, direction, scale, stableGamma, ...lora } = config;
    const residual = new ResidualLora(model, lora, ctx, {
      method: "loraga",
      peftInit: "lora_ga",
      peftExtra: { lora_ga_config: { direction, scale, stable_gamma: stableGamma } },
      directionsPerRank: 2,
    });
    const beforeTraining = (data: DataPass): Promise<void> => {
      const losses = data.losses(batches);
      if (losses.length === 0) throw new Error("loraga: the data pass gave no training batch");
      const weights = residual.layers.map((_, i) => residual.base(i).weight);
      // Only the targeted base weights take gradients: the head and the (zero) adapters would
      // otherwise collect gradients the first optimizer step would then apply.
      const params = model.namedParameters().map(([, t]) => t);
      const saved = params.map((t) => t.requiresGrad);
      try {
        for (const t of params) t.requiresGrad = false;
        for (const w of weights) w.requiresGrad = true;
        for (const loss of losses) scope(() => backward(loss()));
        residual.start((name, w, i) => {
          const g = weights[i].grad;
          if (!g) throw new Error(`loraga: ${name} got no gradient from the training loss`);
          const mean = mul(g, 1 / losses.length);
          g.dispose(); // release each gradient as soon as its start exists
          weights[i].grad = null;
          return loraGaStart(mean, w, config, residual.scaling, ctx.seed * 7919 + i);
        });
      } finally {
        params.forEach((t, k) => (t.requiresGrad = saved[k]));
        for (const w of weights) {
          w.grad?.dispose();
          w.grad = null;
        }
      }
      return Promise.resolve();
    };
    return residual.adapter({ beforeTraining, reproducible: false });
  },
};
