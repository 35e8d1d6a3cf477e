/**
 * Shared by the PiSSA, OLoRA and LoRA-GA tests: a tiny random RoBERTa, float64 host linear algebra
 * (matrix products, one-sided Jacobi SVD, Gram–Schmidt), and the checks every residual-base LoRA
 * must pass (start equals base, W_res + s·B·A = W, trainable set and counts, memory categories,
 * save/load, PEFT files, the rank-2r conversion on the original model, merge).
 */
import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { assertClose, randomArray } from "../helpers.ts";
import {
  AdamW,
  backward,
  crossEntropy,
  rt,
  scope,
  scopeAsync,
  type Tensor,
  tensor,
} from "../../ops/mod.ts";
import type { EncoderForSequenceClassification } from "../../models/encoder.ts";
import type { Linear } from "../../models/module.ts";
import {
  type Adapter,
  applyMethod,
  type DataPass,
  loadAdapter,
  LoraLinear,
  type MethodContext,
} from "../../methods/mod.ts";
import { contextBuilder, evalLogits, layersOf, TINY_ROBERTA, tinyRoberta } from "./support.ts";
import { openSafetensors } from "../../models/safetensors.ts";

/** The tiny RoBERTa's dims (square, tall and wide targets). */
export const DIMS = TINY_ROBERTA;
const tiny = tinyRoberta();
/** Host weights of the tiny model (float64). */
export const W = tiny.weights;
/** A fresh tiny RoBERTa classifier with the weights {@link W}. */
export const model = tiny.model;
/** A run context (targets query and value unless overridden). */
export const ctx = contextBuilder();

/** Two fixed batches (ids, mask, labels), right-padded with the pad id 1. */
export const BATCHES = [
  { ids: [[0, 5, 9, 4, 2], [0, 7, 2, 1, 1]], labels: [1, 0] },
  { ids: [[0, 3, 8, 6, 2], [0, 11, 4, 10, 2]], labels: [0, 1] },
].map((b) => ({ ...b, keep: b.ids.map((r) => r.map((x, j) => !(j >= 3 && x === 1))) }));

/** GPU inputs of batch `k`. */
export function inputs(k = 0): { ids: Tensor; attentionMask: Tensor } {
  const b = BATCHES[k];
  return {
    ids: tensor(Int32Array.from(b.ids.flat()), [2, 5]),
    attentionMask: tensor(Float32Array.from(b.keep.flat().map(Number)), [2, 5]),
  };
}

/** Mean cross-entropy of batch `k`. */
export function loss(m: EncoderForSequenceClassification, k = 0): Tensor {
  return crossEntropy(m.forward(inputs(k)), tensor(Int32Array.from(BATCHES[k].labels), [2]));
}

/** A DataPass over {@link BATCHES} (as the trainer builds one). */
export function dataPass(m: EncoderForSequenceClassification): DataPass {
  return { losses: (n) => BATCHES.slice(0, n).map((_, k) => () => loss(m, k)) };
}

/** Logits of batch 0 (evaluation mode). */
export function logits(m: EncoderForSequenceClassification, k = 0): Promise<Float32Array> {
  return evalLogits(m, () => inputs(k));
}

/** The adapted layers of a model. */
export function loraLayers(m: EncoderForSequenceClassification): [string, LoraLinear][] {
  return layersOf(m, LoraLinear);
}

/** Host copies of a LoRA layer: A [r, dIn], B [dOut, r], the residual base W_res [dOut, dIn]. */
export async function readLayer(
  l: LoraLinear,
): Promise<{ a: Float64Array; b: Float64Array; wRes: Float64Array }> {
  const f = async (t: Tensor) => Float64Array.from(await t.read());
  return { a: await f(l.loraA), b: await f(l.loraB), wRes: await f((l.base as Linear).weight) };
}

// ---- float64 host linear algebra ---------------------------------------------------------------

/** C [m, n] = A [m, k]·B [k, n] (row-major). */
export function hostMatmul(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  m: number,
  k: number,
  n: number,
): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) {
      const x = a[i * k + p];
      for (let j = 0; j < n; j++) c[i * n + j] += x * b[p * n + j];
    }
  }
  return c;
}

/** Aᵀ of A [m, n]. */
export function hostTranspose(a: ArrayLike<number>, m: number, n: number): Float64Array {
  const t = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) t[j * m + i] = a[i * n + j];
  return t;
}

/**
 * SVD of A [m, n] in float64 by one-sided Jacobi on the tall problem: u [m, k], s [k] descending,
 * v [n, k] (row-major), k = min(m, n).
 */
export function hostSvd(
  a: ArrayLike<number>,
  m: number,
  n: number,
): { u: Float64Array; s: Float64Array; v: Float64Array } {
  if (m < n) {
    const t = hostSvd(hostTranspose(a, m, n), n, m);
    return { u: t.v, s: t.s, v: t.u };
  }
  // Columns of G = A·V are rotated to orthogonality; V accumulates the rotations.
  const g = Array.from(
    { length: n },
    (_, j) => Float64Array.from({ length: m }, (_, i) => a[i * n + j]),
  );
  const v = Array.from(
    { length: n },
    (_, j) => Float64Array.from({ length: n }, (_, i) => (i === j ? 1 : 0)),
  );
  const dot = (x: Float64Array, y: Float64Array) => x.reduce((s, xi, i) => s + xi * y[i], 0);
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const alpha = dot(g[p], g[p]), beta = dot(g[q], g[q]), gamma = dot(g[p], g[q]);
        if (Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t), s = c * t;
        for (const mat of [g, v]) {
          const x = mat[p], y = mat[q];
          for (let i = 0; i < x.length; i++) {
            const xi = x[i], yi = y[i];
            x[i] = c * xi - s * yi;
            y[i] = s * xi + c * yi;
          }
        }
      }
    }
    if (!rotated) break;
  }
  const norms = g.map((col) => Math.sqrt(dot(col, col)));
  const order = norms.map((_, j) => j).sort((x, y) => norms[y] - norms[x]);
  const u = new Float64Array(m * n), vv = new Float64Array(n * n), s = new Float64Array(n);
  order.forEach((j, k) => {
    s[k] = norms[j];
    for (let i = 0; i < m; i++) u[i * n + k] = g[j][i] / norms[j];
    for (let i = 0; i < n; i++) vv[i * n + k] = v[j][i];
  });
  return { u, s, v: vv };
}

/** Columns `from…to−1` of M [rows, cols] as [rows, to − from]. */
export function hostColumns(
  mat: ArrayLike<number>,
  rows: number,
  cols: number,
  from: number,
  to: number,
): Float64Array {
  const out = new Float64Array(rows * (to - from));
  for (let i = 0; i < rows; i++) {
    for (let j = from; j < to; j++) out[i * (to - from) + j - from] = mat[i * cols + j];
  }
  return out;
}

/** The orthogonal projector Q·Qᵀ [n, n] onto the span of the columns of C [n, k]. */
export function hostProjector(c: ArrayLike<number>, n: number, k: number): Float64Array {
  // Modified Gram–Schmidt, then Q·Qᵀ.
  const q = Array.from(
    { length: k },
    (_, j) => Float64Array.from({ length: n }, (_, i) => c[i * k + j]),
  );
  for (let j = 0; j < k; j++) {
    for (let p = 0; p < j; p++) {
      const d = q[j].reduce((s, x, i) => s + x * q[p][i], 0);
      for (let i = 0; i < n; i++) q[j][i] -= d * q[p][i];
    }
    const norm = Math.sqrt(q[j].reduce((s, x) => s + x * x, 0));
    for (let i = 0; i < n; i++) q[j][i] /= norm;
  }
  const p = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let l = 0; l < n; l++) for (let j = 0; j < k; j++) p[i * n + l] += q[j][i] * q[j][l];
  }
  return p;
}

// ---- shared checks --------------------------------------------------------------------------------

/** How a test applies one residual-base method. */
export interface ResidualCase {
  method: string;
  options: Record<string, unknown>;
  targets: string[];
  /** Runs the data pass when the method has one. */
  start?: (adapter: Adapter, m: EncoderForSequenceClassification) => Promise<void>;
}

/** Apply the case to a fresh model (and start it). */
export async function applyCase(
  c: ResidualCase,
  over: Partial<MethodContext> = {},
): Promise<{ m: EncoderForSequenceClassification; adapter: Adapter }> {
  const m = model();
  const adapter = applyMethod(c.method, m, c.options, ctx({ targets: c.targets, ...over }));
  await c.start?.(adapter, m);
  return { m, adapter };
}

/** Every layer: W_res + s·B·A equals the original W (float64 on the host), within f32 rounding. */
export async function checkResidual(
  m: EncoderForSequenceClassification,
  scaling: number,
): Promise<void> {
  const layers = loraLayers(m);
  ok(layers.length > 0, "no adapted layer");
  for (const [name, l] of layers) {
    const { a, b, wRes } = await readLayer(l);
    const [dOut, dIn] = (l.base as Linear).weight.shape;
    const ba = hostMatmul(b, a, dOut, l.loraA.shape[0], dIn);
    const w = W.get(`${name}.weight`)!;
    assertClose(
      wRes.map((x, i) => x + scaling * ba[i]),
      w,
      { atol: 2e-6, rtol: 1e-5 },
      `${name}: W_res + s·B·A vs W`,
    );
    ok(ba.some((x) => Math.abs(x) > 1e-3), `${name}: the start is not zero`);
  }
}

/**
 * Register the checks every residual-base method shares: outputs at the start, trainable tensors,
 * counts and memory, learning-rate groups, save/load with PEFT names, the rank-2r conversion on the
 * original model, loading through the registry, and merge.
 */
export function sharedResidualTests(c: ResidualCase, r: number, alpha: number): void {
  const label = `${c.method} ${JSON.stringify(c.options)}`;

  Deno.test(`${label}: starts equal to the base model; W_res + s·B·A = W`, async () => {
    const base = await logits(model());
    const { m } = await applyCase(c);
    assertClose(await logits(m), base, { atol: 2e-5, rtol: 1e-4 }, "logits at the start");
    await checkResidual(m, loraLayers(m)[0][1].scaling);
  });

  Deno.test(`${label}: only A, B and the head train; count Σ r·(dIn + dOut) + head; memory by category`, async () => {
    const before = rt().pool.stats().live;
    const { m, adapter } = await applyCase(c);
    const layers = loraLayers(m);
    await scopeAsync(async () => {
      backward(loss(m));
      await Promise.resolve();
    });
    const trainable = adapter.groups().flatMap((g) =>
      g.names.map((n, i) => [n, g.params[i]] as const)
    );
    const withGrad = m.namedParameters().filter(([, t]) => t.grad).map(([n]) => n).sort();
    deepStrictEqual(withGrad, trainable.map(([n]) => n).sort());
    const loraCount = layers.reduce((s, [, l]) => s + r * (l.inFeatures + l.outFeatures), 0);
    const head = 16 * 16 + 16 + 2 * 16 + 2;
    const count = trainable.reduce((s, [, t]) => s + t.size, 0);
    equal(count, loraCount + head);
    for (const [n, t] of m.namedParameters()) {
      equal(t.category, trainable.some(([tn]) => tn === n) ? "trainable" : "weights", n);
    }
    const after = rt().pool.stats().live;
    equal(after.trainable - before.trainable, 4 * count, "trainable bytes = 4·trainable params");
    const baseParams = m.namedParameters().reduce((s, [, t]) => s + t.size, 0) - count;
    // Frozen: the model's weights (W_res in place of W) and the kept A₀, B₀ (as many as A, B).
    equal(after.weights - before.weights, 4 * (baseParams + loraCount), "weights bytes");
    equal(after.grads - before.grads, 4 * count, "gradient bytes = 4·trainable params");
    const opt = new AdamW(
      adapter.groups().map((g) => ({ params: g.params, lr: 1e-3, weightDecay: g.weightDecay })),
    );
    opt.step();
    equal(
      rt().pool.stats().live.optimizer - before.optimizer,
      2 * 4 * count,
      "AdamW state = 2·4·trainable",
    );
    opt.dispose();
    m.dispose();
  });

  Deno.test(`${label}: learning-rate multipliers group W_v's adapter apart`, async () => {
    const { adapter } = await applyCase(c, { lrMultipliers: { value: 4 } });
    const groups = adapter.groups();
    const v = groups.find((g) => g.lrMultiplier === 4)!;
    ok(
      v.names.length === 4 && v.names.every((n) => /\.value\.lora_[AB]\.weight$/.test(n)),
      v.names.join(),
    );
    ok(
      groups.filter((g) => g.lrMultiplier === 1).some((g) =>
        g.names.some((n) => n.includes(".query.lora_"))
      ),
    );
    ok(groups.some((g) => g.names.includes("classifier.dense.bias") && g.weightDecay === 0));
  });

  Deno.test(`${label}: save/load, PEFT files, rank-2r conversion on the original model, merge`, async () => {
    const dir = await Deno.makeTempDir();
    try {
      const { m, adapter } = await applyCase(c);
      const start = await logits(m);
      // A few steps so that A, B and the head move away from their start.
      const opt = new AdamW(
        adapter.groups().map((g) => ({ params: g.params, lr: 0.05, weightDecay: g.weightDecay })),
      );
      for (let step = 0; step < 3; step++) {
        scope(() => backward(loss(m, step % 2)));
        opt.step();
        opt.zeroGrad();
      }
      opt.dispose();
      const tuned = await logits(m);
      ok(tuned.some((x, i) => Math.abs(x - start[i]) > 1e-3), "training changed the outputs");
      await adapter.save(dir);

      const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
      equal(config.peft_type, "LORA");
      equal(config.r, r);
      equal(config.lora_alpha, alpha);
      deepStrictEqual(config.target_modules, c.targets);
      deepStrictEqual(config.modules_to_save, ["classifier"]);
      const shapes = async (file: string) => {
        const reader = await openSafetensors(file);
        const out = Object.fromEntries(
          reader.names.map((n) => [n, reader.info(n).shape.join("x")]),
        );
        reader.close();
        return out;
      };
      const p = "base_model.model.roberta.encoder.layer";
      const main = await shapes(`${dir}/adapter_model.safetensors`);
      equal(main[`${p}.0.attention.self.query.lora_A.weight`], `${r}x16`);
      equal(main[`${p}.1.attention.self.value.lora_B.weight`], `16x${r}`);
      equal(main["base_model.model.classifier.out_proj.weight"], "2x16");
      equal(Object.keys(main).length, 8 + 4);
      const initialConfig = JSON.parse(
        await Deno.readTextFile(`${dir}/initial/adapter_config.json`),
      );
      equal(initialConfig.init_lora_weights, true);
      equal(initialConfig.r, r);
      equal(initialConfig.modules_to_save, null);
      equal(Object.keys(await shapes(`${dir}/initial/adapter_model.safetensors`)).length, 8);
      const convertedConfig = JSON.parse(
        await Deno.readTextFile(`${dir}/lora/adapter_config.json`),
      );
      equal(convertedConfig.init_lora_weights, true);
      equal(convertedConfig.r, 2 * r);
      equal(convertedConfig.lora_alpha, 2 * alpha);
      const converted = await shapes(`${dir}/lora/adapter_model.safetensors`);
      equal(converted[`${p}.0.attention.self.query.lora_A.weight`], `${2 * r}x16`);
      equal(converted[`${p}.0.attention.self.query.lora_B.weight`], `16x${2 * r}`);
      equal(converted["base_model.model.classifier.out_proj.weight"], "2x16");

      // The residual-base adapter on a fresh model (another seed) gives the same outputs.
      const fresh = model();
      const again = applyMethod(c.method, fresh, c.options, ctx({ targets: c.targets, seed: 99 }));
      await c.start?.(again, fresh);
      await again.load(dir);
      assertClose(
        await logits(fresh),
        tuned,
        { atol: 2e-5, rtol: 1e-4 },
        "loaded residual adapter",
      );
      // Through the registry (adapter_config.json decides the method), onto the original model.
      const viaRegistry = model();
      const { targets: _t, headModules: _h, ...rest } = ctx();
      const loaded = await loadAdapter(viaRegistry, dir, rest);
      equal(loaded.method, c.method);
      assertClose(await logits(viaRegistry), tuned, { atol: 2e-5, rtol: 1e-4 }, "loadAdapter(dir)");
      // The rank-2r plain LoRA on the ORIGINAL weights reproduces the fine-tuned model.
      const original = model();
      const plain = await loadAdapter(original, `${dir}/lora`, rest);
      equal(plain.method, "lora");
      assertClose(
        await logits(original),
        tuned,
        { atol: 2e-5, rtol: 1e-4 },
        "rank-2r LoRA on the original weights",
      );

      adapter.merge();
      equal(loraLayers(m).length, 0);
      assertClose(await logits(m), tuned, { atol: 2e-5, rtol: 1e-4 }, "merged logits");
      for (const x of [m, fresh, viaRegistry, original]) x.dispose();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

/** Random values for a tensor's host twin (tests that overwrite parameters). */
export function randomValues(n: number, seed: number): Float32Array {
  return Float32Array.from(randomArray(n, seed, -0.3, 0.3));
}
