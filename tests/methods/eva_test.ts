/**
 * EVA: the data pass (principal directions of the captured non-padding inputs against a float64
 * host PCA, shared inputs, convergence), rank redistribution by explained variance within ρ·r,
 * the start equal to the base model, what trains, PEFT files (rank_pattern, alpha_pattern,
 * eva_config), save/load, merge, rank-0 layers.
 */
import { deepStrictEqual, equal, ok, rejects } from "node:assert/strict";
import { assertClose, randomArray, rng, setup } from "../helpers.ts";
import { add, backward, noGrad, scopeAsync, sum, type Tensor, tensor } from "../../ops/mod.ts";
import { Container, Linear } from "../../models/module.ts";
import {
  applyMethod,
  type DataPass,
  distributeRanks,
  type EvaAdapter,
  loadAdapter,
  LoraLinear,
  type TokenMask,
} from "../../methods/mod.ts";
import { openSafetensors } from "../../models/safetensors.ts";
import { contextBuilder, ROBERTA_HEAD, tinyRoberta, writeRandom } from "./support.ts";

await setup();

const D = 16;

const ctx = contextBuilder({
  targets: ["a", "b", "c"],
  weightDecay: 0,
  headModules: [],
  baseModel: "tiny",
  seed: 1,
});

/** Three Linear layers: `a` and `b` read the same input x, `c` reads y. */
class Tiny extends Container {
  constructor(seed = 2) {
    super();
    ["a", "b", "c"].forEach((n, i) =>
      this.add(
        n,
        new Linear(
          tensor(Float32Array.from(randomArray(D * D, seed + i, -0.5, 0.5)), [D, D]),
          null,
        ),
      )
    );
  }

  run(x: Tensor, y: Tensor): Tensor {
    const f = (n: string, v: Tensor) => this.child<Linear>(n).forward(v);
    return add(add(f("a", x), f("b", x)), f("c", y));
  }
}

/** A random orthonormal basis of R^D (Gram–Schmidt of Gaussian vectors), as rows. */
function basis(seed: number): Float64Array[] {
  const r = rng(seed);
  const normal = () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  const rows: Float64Array[] = [];
  while (rows.length < D) {
    const v = Float64Array.from({ length: D }, normal);
    for (const u of rows) {
      const dot = v.reduce((s, x, i) => s + x * u[i], 0);
      for (let i = 0; i < D; i++) v[i] -= dot * u[i];
    }
    const n = Math.hypot(...v);
    rows.push(v.map((x) => x / n));
  }
  return rows;
}

const [B, T] = [4, 6];
/** Batch k's token mask: row j has 6 − (j + k) % 3 real tokens, the rest padding. */
function tokenMask(k: number): TokenMask {
  const mask = new Float32Array(B * T);
  for (let j = 0; j < B; j++) for (let t = 0; t < T - ((j + k) % 3); t++) mask[j * T + t] = 1;
  return { b: B, t: T, mask };
}

/**
 * Inputs with a known covariance: x = μ + Σᵢ σᵢ·zᵢ·uᵢ (+ 0.02 noise in every direction), z ~ N(0, 1);
 * padding rows are huge and point along one fixed direction, so counting them would show.
 */
function batches(sigma: number[], seed: number, n: number, cycled = false): Float32Array[] {
  const u = basis(seed);
  const r = rng(seed + 1);
  const normal = () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  let q = 0;
  return Array.from({ length: n }, (_, k) => {
    const m = tokenMask(k);
    const out = new Float32Array(B * T * D);
    for (let row = 0; row < B * T; row++) {
      for (let i = 0; i < D; i++) out[row * D + i] = 0.5 + 0.02 * normal();
      if (m.mask[row] === 0) {
        for (let i = 0; i < D; i++) out[row * D + i] += 40 * u[D - 1][i];
        continue;
      }
      if (cycled) {
        // Row q steps along ±u_{q mod count}: equal variance in every direction, by design.
        const c = q % sigma.length, z = (Math.floor(q++ / sigma.length) % 2 ? -1 : 1) * sigma[c];
        for (let i = 0; i < D; i++) out[row * D + i] += z * u[c][i];
        continue;
      }
      sigma.forEach((s, c) => {
        const z = s * normal();
        for (let i = 0; i < D; i++) out[row * D + i] += z * u[c][i];
      });
    }
    return out;
  });
}

function dataPass(m: Tiny, xs: Float32Array[], ys: Float32Array[]): DataPass {
  return {
    losses: (n) =>
      xs.slice(0, n).map((x, k) => () => m.run(tensor(x, [B, T, D]), tensor(ys[k], [B, T, D]))),
    tokenMasks: (n) => xs.slice(0, n).map((_, k) => tokenMask(k)),
  };
}

/** Eigenvalues (descending) and eigenvectors (rows) of a symmetric matrix by cyclic Jacobi. */
function eigh(m: Float64Array[]): { values: number[]; vectors: Float64Array[] } {
  const n = m.length;
  const a = m.map((r) => Float64Array.from(r));
  const v = Array.from(
    { length: n },
    (_, i) => Float64Array.from({ length: n }, (_, j) => (i === j ? 1 : 0)),
  );
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p][q] ** 2;
    if (off < 1e-22) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        if (Math.abs(a[p][q]) < 1e-300) continue;
        const theta = (a[q][q] - a[p][p]) / (2 * a[p][q]);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (let k = 0; k < n; k++) {
          const [akp, akq] = [a[k][p], a[k][q]];
          a[k][p] = c * akp - s * akq;
          a[k][q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const [apk, aqk] = [a[p][k], a[q][k]];
          a[p][k] = c * apk - s * aqk;
          a[q][k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const [vpk, vqk] = [v[p][k], v[q][k]];
          v[p][k] = c * vpk - s * vqk;
          v[q][k] = s * vpk + c * vqk;
        }
      }
    }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => a[j][j] - a[i][i]);
  return { values: order.map((i) => a[i][i]), vectors: order.map((i) => v[i]) };
}

/** PCA of the non-padding rows of the given batches: directions and explained-variance ratios. */
function hostPca(
  data: Float32Array[],
  used: number[],
): { vectors: Float64Array[]; ratio: number[] } {
  const rows: Float64Array[] = [];
  for (const k of used) {
    const m = tokenMask(k);
    for (let row = 0; row < B * T; row++) {
      if (m.mask[row]) rows.push(Float64Array.from(data[k].subarray(row * D, (row + 1) * D)));
    }
  }
  const mu = new Float64Array(D);
  for (const r of rows) for (let i = 0; i < D; i++) mu[i] += r[i] / rows.length;
  const scatter = Array.from({ length: D }, () => new Float64Array(D));
  for (const r of rows) {
    for (let i = 0; i < D; i++) {
      for (let j = 0; j < D; j++) scatter[i][j] += (r[i] - mu[i]) * (r[j] - mu[j]);
    }
  }
  const { values, vectors } = eigh(scatter);
  const trace = values.reduce((s, v) => s + v, 0);
  return { vectors, ratio: values.map((v) => v / trace) };
}

const SIGMA_X = [6, 5, 4, 3, 2, 1.5, 1, 0.8];
const SIGMA_Y = [5, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.05];

async function rowsOf(t: Tensor, cols: number): Promise<Float64Array[]> {
  const v = await t.read();
  return Array.from(
    { length: t.shape[0] },
    (_, i) => Float64Array.from(v.subarray(i * cols, (i + 1) * cols)),
  );
}

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  Array.from(a).reduce((s, x, i) => s + x * b[i], 0);

Deno.test("EVA's A rows are the top principal directions of the non-padding inputs; ranks follow explained variance", async () => {
  const m = new Tiny();
  const xs = batches(SIGMA_X, 10, 30), ys = batches(SIGMA_Y, 20, 30);
  const a = applyMethod("eva", m, { r: 4, rho: 2, maxBatches: 30 }, ctx()) as EvaAdapter;
  await a.beforeTraining!(dataPass(m, xs, ys));
  const stats = a.stats!;
  deepStrictEqual(stats.sharedInputs, { b: "a" });
  ok(stats.converged && stats.batches < 30, `converged after ${stats.batches} batches`);
  // The budget r·L = 12 goes to the largest explained-variance ratios, at most ρ·r = 8 per layer.
  const ranks = stats.ranks;
  equal(ranks.a + ranks.b + ranks.c, 12);
  ok(Object.values(ranks).every((r) => r <= 8));
  const host = { a: hostPca(xs, stats.batchesUsed.a), c: hostPca(ys, stats.batchesUsed.c) };
  deepStrictEqual(
    ranks,
    distributeRanks([["a", host.a.ratio.slice(0, 8)], ["b", host.a.ratio.slice(0, 8)], [
      "c",
      host.c.ratio.slice(0, 8),
    ]], 12),
  );
  deepStrictEqual(ranks, { a: 6, b: 5, c: 1 });
  assertClose(
    stats.explainedVarianceRatio.a.slice(0, 6),
    host.a.ratio.slice(0, 6),
    { rtol: 2e-3 },
    "explained variance ratio",
  );
  const layers = Object.fromEntries(a.loraLayers());
  for (const [name, leader] of [["a", "a"], ["b", "a"], ["c", "c"]] as const) {
    const rows = await rowsOf(layers[name].loraA, D);
    equal(rows.length, ranks[name]);
    rows.forEach((row, i) => {
      const cos = Math.abs(dot(row, host[leader].vectors[i]));
      ok(cos > 0.999, `${name}: A row ${i} · principal direction ${i} = ${cos}`);
      ok(Math.abs(Math.hypot(...row) - 1) < 1e-4, "unit rows without whitening");
    });
  }
  // Counting padding rows would have made their direction (40× larger) the first component.
  ok(Math.abs(dot((await rowsOf(layers.a.loraA, D))[0], basis(10)[D - 1])) < 0.05);
});

Deno.test("EVA starts equal to the base model; α_l = α·r_l/r keeps the scaling; whitening divides A by √σ", async () => {
  const xs = batches(SIGMA_X, 10, 30), ys = batches(SIGMA_Y, 20, 30);
  const probe = () => [tensor(xs[3], [B, T, D]), tensor(ys[3], [B, T, D])] as const;
  const base = new Tiny();
  const want = await scopeAsync(() => noGrad(() => base.run(...probe())).read());
  for (const whiten of [false, true]) {
    const m = new Tiny();
    const a = applyMethod(
      "eva",
      m,
      { r: 4, alpha: 12, whiten, maxBatches: 30 },
      ctx(),
    ) as EvaAdapter;
    await a.beforeTraining!(dataPass(m, xs, ys));
    deepStrictEqual(await scopeAsync(() => noGrad(() => m.run(...probe())).read()), want);
    for (const [name, layer] of a.loraLayers()) {
      equal(layer.scaling, 12 / 4, `${name}: scaling`);
      ok((await layer.loraB.read()).every((v) => v === 0));
      if (!whiten) continue;
      const leader = name === "c" ? "c" : "a";
      const rows = await rowsOf(layer.loraA, D);
      rows.forEach((row, i) => {
        const want = 1 / Math.sqrt(a.stats!.singularValues[leader][i]);
        ok(Math.abs(Math.hypot(...row) - want) < 1e-4 * want, `${name} row ${i} norm`);
      });
    }
  }
});

Deno.test("a layer with no rank loses its adapter; saved target_modules list the adapted layers; load restores them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // Flat spectra: x has 8 equal directions (ratio 1/8 each), y 16 (1/16 each): c ranks last.
    const xs = batches(new Array(8).fill(3), 30, 30, true),
      ys = batches(new Array(D).fill(3), 40, 30, true);
    const m = new Tiny();
    const a = applyMethod("eva", m, { r: 4, tau: 0.9, maxBatches: 6 }, ctx()) as EvaAdapter;
    await a.beforeTraining!(dataPass(m, xs, ys));
    deepStrictEqual(a.stats!.ranks, { a: 6, b: 6, c: 0 });
    ok(m.getModule("c") instanceof Linear);
    for (const [, l] of a.loraLayers()) {
      writeRandom(l.loraB, 5, -0.5, 0.5);
    }
    const probe = () => [tensor(xs[1], [B, T, D]), tensor(ys[1], [B, T, D])] as const;
    const before = await scopeAsync(() => noGrad(() => m.run(...probe())).read());
    await a.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    deepStrictEqual(config.target_modules, ["a", "b"]);
    deepStrictEqual(config.rank_pattern, { a: 6, b: 6 });
    deepStrictEqual(config.alpha_pattern, { a: 12, b: 12 });
    const fresh = new Tiny();
    const again = applyMethod("eva", fresh, { r: 4 }, ctx({ seed: 9 })) as EvaAdapter;
    await again.load(dir);
    ok(fresh.getModule("c") instanceof Linear);
    deepStrictEqual(await scopeAsync(() => noGrad(() => fresh.run(...probe())).read()), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const { model: roberta } = tinyRoberta();

/** Right-padded token batches for the encoder, with their masks. */
function encoderBatches(n: number): { ids: Int32Array; mask: Float32Array }[] {
  const r = rng(77);
  return Array.from({ length: n }, (_, k) => {
    const ids = new Int32Array(3 * 7).fill(1), mask = new Float32Array(3 * 7);
    for (let j = 0; j < 3; j++) {
      const len = 7 - ((j + k) % 3);
      for (let t = 0; t < len; t++) {
        ids[j * 7 + t] = t === 0 ? 0 : t === len - 1 ? 2 : 3 + Math.floor(r() * 10);
        mask[j * 7 + t] = 1;
      }
    }
    return { ids, mask };
  });
}

Deno.test("EVA on a tiny RoBERTa: q/v share a PCA; A, B and the head train (Σ r_l·(dIn + dOut) + head); PEFT files; load; merge", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const data = encoderBatches(6);
    const inputs = (k: number) => ({
      ids: tensor(data[k].ids, [3, 7]),
      attentionMask: tensor(data[k].mask, [3, 7]),
    });
    const c = ctx({
      targets: ["query", "value"],
      headModules: ["classifier"],
      baseModel: "tiny-roberta",
      lrMultipliers: { value: 4 },
    });
    const base = await scopeAsync(() => noGrad(() => roberta().forward(inputs(0))).read());
    const m = roberta();
    const a = applyMethod("eva", m, { r: 4, alpha: 8, maxBatches: 8 }, c) as EvaAdapter;
    await a.beforeTraining!({
      losses: (n) => data.slice(0, n).map((_, k) => () => sum(m.forward(inputs(k)))),
      tokenMasks: (n) => data.slice(0, n).map((d) => ({ b: 3, t: 7, mask: d.mask })),
    });
    const stats = a.stats!;
    deepStrictEqual(stats.sharedInputs, {
      "roberta.encoder.layer.0.attention.self.value":
        "roberta.encoder.layer.0.attention.self.query",
      "roberta.encoder.layer.1.attention.self.value":
        "roberta.encoder.layer.1.attention.self.query",
    });
    ok(stats.batches <= 8);
    equal(Object.values(stats.ranks).reduce((s, r) => s + r, 0), 16);
    deepStrictEqual(await scopeAsync(() => noGrad(() => m.forward(inputs(0))).read()), base);
    const groups = a.groups();
    const fast = groups.find((g) => g.lrMultiplier === 4)!;
    ok(
      fast.names.length > 0 && fast.names.every((n) => /\.value\.lora_[AB]\.weight$/.test(n)),
      "W_v at 4× the rate",
    );
    const trainable = groups.flatMap((g) => g.names.map((n, i) => [n, g.params[i]] as const));
    equal(trainable.reduce((s, [, t]) => s + t.size, 0), 16 * (D + D) + ROBERTA_HEAD);
    for (const [, l] of a.loraLayers()) {
      writeRandom(l.loraB, 8, -0.4, 0.4);
    }
    await scopeAsync(async () => {
      backward(sum(m.forward(inputs(1))));
      await Promise.resolve();
    });
    const withGrad = m.namedParameters().filter(([, t]) => t.grad).map(([n]) => n).sort();
    deepStrictEqual(withGrad, trainable.map(([n]) => n).sort());
    for (const [n, t] of m.namedParameters()) {
      equal(
        t.category,
        trainable.some(([tn]) => tn === n) ? "trainable" : "weights",
        n,
      );
    }
    const before = await scopeAsync(() => noGrad(() => m.forward(inputs(2))).read());
    await a.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    equal(config.peft_type, "LORA");
    equal(config.init_lora_weights, "eva");
    deepStrictEqual(config.eva_config, {
      rho: 2,
      tau: 0.99,
      use_label_mask: true,
      label_mask_value: -100,
      whiten: false,
      adjust_scaling_factors: true,
    });
    const expectRanks = Object.fromEntries(Object.entries(stats.ranks).filter(([, r]) => r !== 4));
    deepStrictEqual(config.rank_pattern, expectRanks);
    deepStrictEqual(
      config.alpha_pattern,
      Object.fromEntries(Object.entries(expectRanks).map(([n, r]) => [n, 8 * r / 4])),
    );
    const reader = await openSafetensors(`${dir}/adapter_model.safetensors`);
    const shapes = Object.fromEntries(reader.names.map((n) => [n, reader.info(n).shape.join("x")]));
    reader.close();
    for (const [name, r] of Object.entries(stats.ranks)) {
      if (r === 0) continue;
      equal(shapes[`base_model.model.${name}.lora_A.weight`], `${r}x${D}`);
      equal(shapes[`base_model.model.${name}.lora_B.weight`], `${D}x${r}`);
    }
    equal(shapes["base_model.model.classifier.out_proj.weight"], `2x${D}`);
    const fresh = roberta();
    const loaded = await loadAdapter(fresh, dir, { ...c, headModules: undefined });
    equal(loaded.method, "eva");
    deepStrictEqual(await scopeAsync(() => noGrad(() => fresh.forward(inputs(2))).read()), before);
    loaded.merge();
    equal(fresh.namedModules().filter(([, x]) => x instanceof LoraLinear).length, 0);
    assertClose(await scopeAsync(() => noGrad(() => fresh.forward(inputs(2))).read()), before, {
      atol: 1e-5,
      rtol: 1e-4,
    }, "merged logits");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("EVA's data pass checks its inputs: mask shape, enough positions, no batches", async () => {
  const xs = batches(SIGMA_X, 10, 2), ys = batches(SIGMA_Y, 20, 2);
  const m = new Tiny();
  const a = applyMethod("eva", m, { r: 4 }, ctx()) as EvaAdapter;
  await rejects(
    () =>
      a.beforeTraining!({
        ...dataPass(m, xs, ys),
        tokenMasks: (n) =>
          xs.slice(0, n).map(() => ({ b: 2, t: 3, mask: new Float32Array(6).fill(1) })),
      }),
    /EVA: a received input \[4, 6, 16\], which does not match the batch's \[2, 3\] token mask/,
  );
  ok(m.getModule("a") instanceof LoraLinear, "the capturing wrappers are removed after an error");
  const few = (n: number) =>
    xs.slice(0, n).map(() => ({
      b: B,
      t: T,
      mask: Float32Array.from({ length: B * T }, (_, i) => (i < 5 ? 1 : 0)),
    }));
  await rejects(
    () => a.beforeTraining!({ ...dataPass(m, xs, ys), tokenMasks: few }),
    /no batch gave a, c enough positions for its 8 components/,
  );
  await rejects(() => a.beforeTraining!({ losses: () => [] }), /no training batches/);
});
