/**
 * OLoRA (Büyükakyüz, 2024): LoRA started on an orthonormal basis of W's leading columns.
 *
 * With the reduced QR decomposition W = Q·R [dOut, dIn] (Householder):
 *   B₀ = Q[:, :r] [dOut, r] (orthonormal columns),   A₀ = R[:r, :] [r, dIn] (upper trapezoidal),
 *   W_res = W − s·B₀·A₀,
 * as Hugging Face PEFT's olora_init does: QR of W itself (not of Wᵀ), A₀ and B₀ unscaled, and the
 * residual subtracts s·B₀·A₀, so with s ≠ 1 the residual keeps (1 − s)·Q_r·R_r. For a wide W
 * (dOut < dIn) the reduced QR is that of the first dOut columns, W[:, :dOut] = Q·R₁, completed by
 * R = [R₁ | Qᵀ·W[:, dOut:]] — what LAPACK's geqrf, behind torch.linalg.qr, computes.
 * Q·R is unique up to the signs of Q's columns (R's rows flip with them), so B₀·A₀ and W_res do
 * not depend on the QR's sign convention, and a PEFT folder loads onto the same residual.
 * Files and the rank-2r conversion for the original weights: see methods/residual_lora.ts.
 *
 * @module
 */
import { concat, contiguous, matmul, qr, slice, type Tensor, transpose } from "../ops/mod.ts";
import { type LoraConfig, LoraConfigSchema } from "./lora.ts";
import { type LowRankStart, ResidualLora } from "./residual_lora.ts";
import type { ConfigSchema, Method } from "./types.ts";

/** OLoRA's options are LoRA's. */
export const OloraConfigSchema: ConfigSchema<OloraConfig> = LoraConfigSchema;

/** Parsed OLoRA options. */
export type OloraConfig = LoraConfig;

/** OLoRA's A₀ = R[:r] [r, dIn] and B₀ = Q[:, :r] [dOut, r] of one weight [dOut, dIn] (f32). */
export function oloraStart(weight: Tensor, r: number): LowRankStart {
  const [dOut, dIn] = weight.shape;
  const wide = dOut < dIn;
  const { q, r: rr } = qr(wide ? contiguous(slice(weight, 1, 0, dOut)) : weight);
  const b = slice(q, 1, 0, r);
  const head = slice(rr, 0, 0, r); // [r, min(dOut, dIn)]
  const a = wide
    ? concat([head, matmul(transpose(b), slice(weight, 1, dOut, dIn))], 1)
    : contiguous(head);
  return { a, b: contiguous(b) };
}

/** OLoRA as a registry entry. */
export const olora: Method<OloraConfig> = {
  name: "olora",
  config: OloraConfigSchema,
  apply(model, config, ctx) {
    const residual = new ResidualLora(model, config, ctx, { method: "olora", peftInit: "olora" });
    residual.start((_, w) => oloraStart(w, config.r));
    return residual.adapter({ reproducible: true });
  },
};
