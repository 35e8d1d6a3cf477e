/**
 * LoRA-GA on a tiny random RoBERTa: the start is the SVD of the batches' mean gradient, which the
 * test computes independently on the host (central differences of the float64 reference model's
 * cross-entropy, then a float64 Jacobi SVD); directions and scales as the official code; the data
 * pass leaves no gradient or requiresGrad behind; and the shared residual-LoRA checks.
 */
import { deepStrictEqual, equal, ok, rejects } from "node:assert/strict";
import { assertClose, setup } from "../helpers.ts";
import { rt } from "../../ops/mod.ts";
import { applyMethod, type LoraGaConfig } from "../../methods/mod.ts";
import { robertaPositionIds } from "../../models/encoder.ts";
import type { Linear } from "../../models/module.ts";
import { encoderRef, type HostWeights } from "../models/reference.ts";
import {
  BATCHES,
  checkResidual,
  ctx,
  dataPass,
  DIMS,
  hostColumns,
  hostMatmul,
  hostProjector,
  hostSvd,
  hostTranspose,
  logits,
  loraLayers,
  model,
  readLayer,
  sharedResidualTests,
  W,
} from "./residual_support.ts";

await setup();

/** Mean cross-entropy of batch `k` under host weights `w` (float64 reference model). */
function hostLoss(w: HostWeights, k: number): number {
  const { ids, keep, labels } = BATCHES[k];
  const positions = ids.map((r) => Array.from(robertaPositionIds(r, DIMS.pad, r.length, 1)));
  const z = encoderRef(w, DIMS, ids, keep, positions, ids.map((r) => r.map(() => 0)));
  let total = 0;
  labels.forEach((label, b) => {
    const row = [z[b * DIMS.labels], z[b * DIMS.labels + 1]];
    const top = Math.max(...row);
    total += top + Math.log(row.reduce((s, x) => s + Math.exp(x - top), 0)) - row[label];
  });
  return total / labels.length;
}

/** The mean over the first `batches` batches of ∂loss/∂W for weight `name`, by central differences. */
function hostGradient(name: string, batches: number): Float64Array {
  const w = new Map(W);
  const values = Float64Array.from(W.get(name)!);
  w.set(name, values);
  const g = new Float64Array(values.length);
  const eps = 1e-5;
  for (let i = 0; i < values.length; i++) {
    const saved = values[i];
    for (let k = 0; k < batches; k++) {
      values[i] = saved + eps;
      const up = hostLoss(w, k);
      values[i] = saved - eps;
      g[i] += (up - hostLoss(w, k)) / (2 * eps * batches);
    }
    values[i] = saved;
  }
  return g;
}

/**
 * Layers whose gradient has full rank: the classifier reads the first token only, so in the last
 * layer the query's gradient has rank ≤ the number of examples and its trailing directions are
 * arbitrary; layer 0's query and every value see all tokens.
 */
const WELL_POSED = ["layer.0.attention.self.query", "value"];

/**
 * Compare every layer's A, B with the host SVD of its mean gradient: A's rows span the chosen right
 * directions and B's columns the chosen left ones (projectors, free of signs and of rotations
 * inside a direction group), each scaled by `c` (AAᵀ = BᵀB = c²·I).
 */
async function checkStart(
  options: Partial<LoraGaConfig> & { r: number; alpha: number },
  pick: { a: [number, number]; b: [number, number] },
  c: (dOut: number) => number,
  tol: number,
): Promise<void> {
  const m = model();
  const adapter = applyMethod("loraga", m, options, ctx({ targets: WELL_POSED }));
  await adapter.beforeTraining!(dataPass(m));
  const { r } = options;
  equal(loraLayers(m).length, 3);
  for (const [name, l] of loraLayers(m)) {
    const [dOut, dIn] = (l.base as Linear).weight.shape;
    const { a, b } = await readLayer(l);
    const scale = c(dOut);
    const identity = Array.from(
      { length: r * r },
      (_, k) => (k % (r + 1) === 0 ? scale * scale : 0),
    );
    assertClose(hostMatmul(a, hostTranspose(a, r, dIn), r, dIn, r), identity, {
      atol: 1e-5,
      rtol: 1e-5,
    }, `${name}: A·Aᵀ`);
    assertClose(hostMatmul(hostTranspose(b, dOut, r), b, r, dOut, r), identity, {
      atol: 1e-5,
      rtol: 1e-5,
    }, `${name}: Bᵀ·B`);
    const svd = hostSvd(hostGradient(`${name}.weight`, options.batches ?? 8), dOut, dIn);
    const k = Math.min(dOut, dIn);
    // The chosen directions must be well defined: gaps in the spectrum where the groups end.
    for (const edge of new Set([...pick.a, ...pick.b])) {
      if (edge > 0 && edge < k) {
        ok(svd.s[edge - 1] - svd.s[edge] > 1e-3 * svd.s[0], `${name}: gap at ${edge}`);
      }
    }
    const rightWanted = hostProjector(hostColumns(svd.v, dIn, k, ...pick.a), dIn, r);
    const leftWanted = hostProjector(hostColumns(svd.u, dOut, k, ...pick.b), dOut, r);
    const rightGot = hostMatmul(hostTranspose(a, r, dIn), a, dIn, r, dIn).map((x) =>
      x / scale ** 2
    );
    const leftGot = hostMatmul(b, hostTranspose(b, dOut, r), dOut, r, dOut).map((x) =>
      x / scale ** 2
    );
    assertClose(rightGot, rightWanted, { atol: tol }, `${name}: span of A's rows`);
    assertClose(leftGot, leftWanted, { atol: tol }, `${name}: span of B's columns`);
  }
  await checkResidual(m, loraLayers(m)[0][1].scaling);
}

Deno.test("LoRA-GA ArB2r/stable: A = c·V[:, :r]ᵀ, B = c·U[:, r:2r] of the host mean gradient, c = dOut^¼/√γ", async () => {
  // r = 4: 4r = 16 ≥ min(dOut, dIn), the exact SVD.
  await checkStart(
    { r: 4, alpha: 8, batches: 2 },
    { a: [0, 4], b: [4, 8] },
    (dOut) => dOut ** 0.25 / 4,
    2e-4,
  );
});

Deno.test("LoRA-GA A2rBr/gd_scale over one batch: A = V[:, r:2r]ᵀ/s, B = U[:, :r]/s (randomized SVD)", async () => {
  // r = 2: 4r = 8 < 16, the randomized SVD with 4 power iterations.
  await checkStart(
    { r: 2, alpha: 8, batches: 1, direction: "A2rBr", scale: "gd_scale" },
    { a: [2, 4], b: [0, 2] },
    () => 1 / 4,
    2e-3,
  );
});

Deno.test("LoRA-GA data pass: outputs stay the base model's; no gradient or requiresGrad left behind", async () => {
  const base = await logits(model());
  const m = model();
  const adapter = applyMethod(
    "loraga",
    m,
    { r: 2, direction: "ArBr", scale: "unit", batches: 2 },
    ctx(),
  );
  const requires = () => m.namedParameters().filter(([, t]) => t.requiresGrad).map(([n]) => n);
  const before = requires();
  const grads = rt().pool.stats().live.grads;
  await adapter.beforeTraining!(dataPass(m));
  deepStrictEqual(requires(), before);
  ok(before.every((n) => /lora_[AB]|classifier/.test(n)));
  equal(m.namedParameters().filter(([, t]) => t.grad).length, 0);
  equal(rt().pool.stats().live.grads, grads, "gradient memory released");
  assertClose(await logits(m), base, { atol: 2e-5, rtol: 1e-4 }, "logits after the start");
  const [, l] = loraLayers(m)[0];
  const { a } = await readLayer(l);
  // "unit": A's rows are unit singular vectors.
  assertClose(
    hostMatmul(a, hostTranspose(a, 2, 16), 2, 16, 2),
    [1, 0, 0, 1],
    { atol: 1e-5 },
    "A·Aᵀ",
  );
});

Deno.test("LoRA-GA config: PEFT fields; loading a folder without initial/ is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const adapter = applyMethod("loraga", m, { r: 2, stableGamma: 8 }, ctx());
    await rejects(adapter.save(dir), /loraga: nothing to save before the decomposition start/);
    await adapter.beforeTraining!(dataPass(m));
    await adapter.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    equal(config.init_lora_weights, "lora_ga");
    deepStrictEqual(config.lora_ga_config, {
      direction: "ArB2r",
      scale: "stable",
      stable_gamma: 8,
    });
    await Deno.remove(`${dir}/initial`, { recursive: true });
    const fresh = applyMethod("loraga", model(), { r: 2, stableGamma: 8 }, ctx());
    await rejects(
      fresh.load(dir),
      /needs initial\/ \(A₀, B₀\) to rebuild its residual base weights/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

sharedResidualTests(
  {
    method: "loraga",
    options: { r: 4, alpha: 8, batches: 2 },
    targets: ["query", "value"],
    start: (adapter, m) => adapter.beforeTraining!(dataPass(m)),
  },
  4,
  8,
);
