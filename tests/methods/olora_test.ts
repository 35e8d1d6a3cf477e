/**
 * OLoRA on a tiny random RoBERTa: B₀ = Q[:, :r] has orthonormal columns, A₀ = R[:r] is upper
 * trapezoidal, B₀·A₀ is the projection of W on the span of its first r columns (float64 host
 * Gram–Schmidt; square, tall and wide weights), the residual keeps the model equal to the base,
 * and the shared residual-LoRA checks.
 */
import { equal, ok } from "node:assert/strict";
import { assertClose, setup } from "../helpers.ts";
import { applyMethod } from "../../methods/mod.ts";
import type { Linear } from "../../models/module.ts";
import {
  checkResidual,
  ctx,
  hostColumns,
  hostMatmul,
  hostProjector,
  hostTranspose,
  loraLayers,
  model,
  readLayer,
  sharedResidualTests,
  W,
} from "./residual_support.ts";

await setup();

Deno.test("OLoRA: B = Q_r orthonormal, A = R_r upper trapezoidal, B·A = Q_r·Q_rᵀ·W (square, tall, wide)", async () => {
  const r = 3, alpha = 6;
  const m = model();
  applyMethod(
    "olora",
    m,
    { r, alpha },
    ctx({ targets: ["query", "intermediate.dense", "output.dense"] }),
  );
  const layers = loraLayers(m);
  equal(layers.length, 8);
  ok(
    layers.some(([, l]) => l.inFeatures > l.outFeatures) &&
      layers.some(([, l]) => l.inFeatures < l.outFeatures),
  );
  for (const [name, l] of layers) {
    const [dOut, dIn] = (l.base as Linear).weight.shape;
    const { a, b } = await readLayer(l);
    // QᵀQ = I_r.
    const btb = hostMatmul(hostTranspose(b, dOut, r), b, r, dOut, r);
    assertClose(btb, Array.from({ length: r * r }, (_, k) => (k % (r + 1) === 0 ? 1 : 0)), {
      atol: 2e-6,
    }, `${name}: BᵀB`);
    // R below its diagonal is zero (Householder writes exact zeros there).
    for (let i = 0; i < r; i++) {
      for (let j = 0; j < i; j++) equal(a[i * dIn + j], 0, `${name}: A[${i}, ${j}]`);
    }
    // Q_r spans W's first r columns, so B·A = Q_r·R_r = P_r·W with P_r that span's projector.
    const w = W.get(`${name}.weight`)!;
    const projector = hostProjector(hostColumns(w, dOut, dIn, 0, r), dOut, r);
    assertClose(hostMatmul(b, a, dOut, r, dIn), hostMatmul(projector, w, dOut, dOut, dIn), {
      atol: 2e-6,
      rtol: 1e-5,
    }, `${name}: B·A`);
  }
  // s = 2: the residual subtracts twice Q_r·R_r, as PEFT's olora_init does.
  await checkResidual(m, alpha / r);
});

sharedResidualTests(
  { method: "olora", options: { r: 4, alpha: 8 }, targets: ["query", "value"] },
  4,
  8,
);
