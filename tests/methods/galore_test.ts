/**
 * GaLore: the projected AdamW step against a float64 host implementation (projector = the host's
 * top-r singular vectors of G), projector refresh every T updates, optimizer-state bytes, exact
 * saveState/loadState resume, and the method on a tiny random RoBERTa (trainable tensors, groups,
 * f16 weights, rank clamping, save/load).
 */
import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { assertClose, randomArray, setup } from "../helpers.ts";
import { backward, cast, noGrad, rt, scope, type Tensor, tensor } from "../../ops/mod.ts";
import type { EncoderForSequenceClassification } from "../../models/encoder.ts";
import type { Linear } from "../../models/module.ts";
import {
  applyMethod,
  galore,
  GaLoreAdamW,
  type GaloreAdapter,
  namedTrainable,
  projectorSide,
  writeInto,
} from "../../methods/mod.ts";
import { contextBuilder, evalLogits, fixedBatchLoss, tinyLlama, tinyRoberta } from "./support.ts";

await setup();

const BETAS: [number, number] = [0.9, 0.999];
const EPS = 1e-8;

/** Eigenvectors of a symmetric n×n matrix (columns, by descending eigenvalue), cyclic Jacobi. */
function symmetricEigen(a: Float64Array, n: number): { values: number[]; vectors: Float64Array } {
  const A = Float64Array.from(a), V = new Float64Array(n * n);
  for (let i = 0; i < n; i++) V[i * n + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += A[p * n + q] ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = A[p * n + q];
        if (Math.abs(apq) < 1e-300) continue;
        const theta = (A[q * n + q] - A[p * n + p]) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = A[k * n + p], akq = A[k * n + q];
          A[k * n + p] = c * akp - s * akq;
          A[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = A[p * n + k], aqk = A[q * n + k];
          A[p * n + k] = c * apk - s * aqk;
          A[q * n + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = V[k * n + p], vkq = V[k * n + q];
          V[k * n + p] = c * vkp - s * vkq;
          V[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = [...Array(n).keys()].sort((i, j) => A[j * n + j] - A[i * n + i]);
  const vectors = new Float64Array(n * n);
  order.forEach((col, k) => {
    for (let i = 0; i < n; i++) vectors[i * n + k] = V[i * n + col];
  });
  return { values: order.map((i) => A[i * n + i]), vectors };
}

/** Host product of row-major matrices a [p, q] · b [q, r] (optionally transposing either). */
function mm(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  p: number,
  q: number,
  r: number,
  ta = false,
  tb = false,
): Float64Array {
  const out = new Float64Array(p * r);
  for (let i = 0; i < p; i++) {
    for (let k = 0; k < q; k++) {
      const av = ta ? a[k * p + i] : a[i * q + k];
      for (let j = 0; j < r; j++) out[i * r + j] += av * (tb ? b[j * q + k] : b[k * r + j]);
    }
  }
  return out;
}

/** Check P [d, r] has orthonormal columns spanning the top-r singular vectors of G on its side. */
function checkProjector(
  P: Float32Array,
  g: Float64Array,
  m: number,
  n: number,
  r: number,
  side: "left" | "right",
): void {
  const d = side === "right" ? n : m;
  const gram = side === "right" ? mm(g, g, n, m, n, true) : mm(g, g, m, n, m, false, true);
  const { values, vectors } = symmetricEigen(gram, d);
  ok(
    r === d || values[r - 1] - values[r] > 1e-6 * values[0],
    "distinct singular values at the cut",
  );
  const ptp = mm(P, P, r, d, r, true);
  assertClose(ptp, Array.from({ length: r * r }, (_, i) => (i % (r + 1) === 0 ? 1 : 0)), {
    atol: 1e-5,
  }, "PᵀP");
  for (let k = 0; k < r; k++) {
    let dot = 0;
    for (let i = 0; i < d; i++) dot += P[i * r + k] * vectors[i * d + k];
    assertClose(
      [Math.abs(dot)],
      [1],
      { atol: 1e-4 },
      `projector column ${k} vs host singular vector`,
    );
  }
}

/** Host model of GaloreAdamW for one matrix, with the projectors taken as given. */
class HostGalore {
  m: Float64Array;
  v: Float64Array;
  step = 0;
  constructor(
    readonly rows: number,
    readonly cols: number,
    readonly r: number,
    readonly side: "left" | "right",
  ) {
    const size = side === "right" ? rows * r : r * cols;
    this.m = new Float64Array(size);
    this.v = new Float64Array(size);
  }

  update(
    w: Float64Array,
    g: Float64Array,
    P: ArrayLike<number>,
    lr: number,
    wd: number,
    scale: number,
  ): void {
    const { rows: m, cols: n, r } = this;
    const R = this.side === "right" ? mm(g, P, m, n, r) : mm(P, g, r, m, n, true);
    this.step++;
    const N = new Float64Array(R.length);
    for (let i = 0; i < R.length; i++) {
      this.m[i] = BETAS[0] * this.m[i] + (1 - BETAS[0]) * R[i];
      this.v[i] = BETAS[1] * this.v[i] + (1 - BETAS[1]) * R[i] * R[i];
      N[i] = this.m[i] / (Math.sqrt(this.v[i]) + EPS);
    }
    const back = this.side === "right" ? mm(N, P, m, r, n, false, true) : mm(P, N, m, r, n);
    const bc1 = 1 - BETAS[0] ** this.step, bc2 = 1 - BETAS[1] ** this.step;
    const step = (lr * Math.sqrt(bc2)) / bc1 * scale;
    for (let i = 0; i < w.length; i++) w[i] = (w[i] - step * back[i]) * (1 - lr * wd);
  }
}

function matrix(m: number, n: number, seed: number): Tensor {
  const w = tensor(Float32Array.from(randomArray(m * n, seed)), [m, n], { category: "trainable" })
    .keep();
  w.requiresGrad = true;
  return w;
}

function setGrad(w: Tensor, g: Float64Array): void {
  w.grad?.dispose();
  w.grad = tensor(Float32Array.from(g), [...w.shape], { category: "grads" }).keep();
}

function optimizerFor(w: Tensor, r: number, gap: number, lr = 0.01, wd = 0.1): GaLoreAdamW {
  return new GaLoreAdamW(
    [{ params: [w], lr, weightDecay: wd, betas: BETAS, eps: EPS }],
    {},
    new Map([[w, r]]),
    {
      updateProjGap: gap,
      scale: 0.25,
      projType: "std",
      svd: "exact",
      seed: 0,
    },
  );
}

Deno.test("GaLore's first step equals P·adam(PᵀG)·α on the host, P the top-r singular vectors (both sides)", async () => {
  for (const [m, n, r] of [[7, 33, 3], [33, 7, 3], [130, 7, 2], [1, 7, 1]]) {
    const w = matrix(m, n, m + n);
    const w0 = Float64Array.from(await w.read());
    const g = randomArray(m * n, 100 + m);
    setGrad(w, g);
    const opt = optimizerFor(w, r, 200);
    opt.step();
    const side = projectorSide(m, n, "std");
    equal(side, m >= n ? "right" : "left");
    const P = (await opt.projector(w)!.read()) as Float32Array;
    deepStrictEqual(opt.projector(w)!.shape, side === "right" ? [n, r] : [m, r]);
    checkProjector(P, g, m, n, r, side);
    const host = new HostGalore(m, n, r, side);
    host.update(w0, g, P, 0.01, 0.1, 0.25);
    assertClose(await w.read(), w0, { atol: 2e-6, rtol: 1e-5 }, `W after one step [${m}, ${n}]`);
    opt.dispose();
    w.dispose();
  }
});

Deno.test("GaLore refreshes the projector every T updates and keeps the moments across refreshes", async () => {
  const [m, n, r, T] = [9, 20, 3, 2];
  const w = matrix(m, n, 1);
  const host = Float64Array.from(await w.read());
  const opt = optimizerFor(w, r, T);
  const model = new HostGalore(m, n, r, "left");
  let previous: Float32Array | null = null;
  for (let s = 0; s < 5; s++) {
    const g = randomArray(m * n, 50 + s);
    setGrad(w, g);
    opt.step();
    const P = (await opt.projector(w)!.read()) as Float32Array;
    if (s % T === 0) {
      checkProjector(P, g, m, n, r, "left");
      if (previous) ok(P.some((v, i) => v !== previous![i]), `projector refreshed at step ${s}`);
    } else {
      deepStrictEqual(P, previous, `projector kept at step ${s}`);
    }
    model.update(host, g, P, 0.01, 0.1, 0.25);
    previous = P;
  }
  assertClose(await w.read(), host, { atol: 1e-5, rtol: 1e-4 }, "W after 5 steps");
  opt.dispose();
  w.dispose();
});

const { model } = tinyRoberta();
const ctx = contextBuilder({ targets: ["query", "value", "dense"] });

function optimizer(adapter: GaloreAdapter, maxGradNorm?: number) {
  const groups = adapter.groups().map((g) => ({
    params: g.params,
    lr: 0.01 * g.lrMultiplier,
    weightDecay: g.weightDecay,
  }));
  return adapter.createOptimizer!(groups, { maxGradNorm });
}

function trainStep(
  m: EncoderForSequenceClassification,
  opt: { step(): void; zeroGrad(): void },
): void {
  scope(() => backward(fixedBatchLoss(m)));
  opt.step();
  opt.zeroGrad();
}

Deno.test("GaLore on a model trains every parameter (targets projected); counts and optimizer bytes = Σ 4·(2·r·max + r·min) + 8 per other entry", () => {
  for (const trainAll of [true, false]) {
    const m = model();
    const adapter = applyMethod("galore", m, { rank: 4, trainAll }, ctx()) as GaloreAdapter;
    const named = namedTrainable(adapter.groups());
    const matrices = named.filter(([n]) => adapter.ranks.has(n));
    // 2 layers × (query, value, attention.output.dense, intermediate.dense, output.dense)
    equal(matrices.length, 10);
    deepStrictEqual([...adapter.ranks.values()], new Array(10).fill(4));
    const others = named.filter(([n]) => !adapter.ranks.has(n));
    const head = 16 * 16 + 16 + 2 * 16 + 2;
    if (trainAll) {
      // Full-parameter training: the model's every tensor is trained, once.
      deepStrictEqual(named.map(([n]) => n).sort(), m.namedParameters().map(([n]) => n).sort());
    } else {
      equal(others.reduce((s, [, t]) => s + t.size, 0), 2 * (16 * 4 + 32) + head);
    }
    for (const [n, t] of m.namedParameters()) {
      equal(t.category, named.some(([tn]) => tn === n) ? "trainable" : "weights", n);
    }
    const base = rt().pool.stats().live.optimizer;
    const opt = optimizer(adapter, 1);
    scope(() => backward(fixedBatchLoss(m)));
    deepStrictEqual(
      m.namedParameters().filter(([, t]) => t.grad).map(([n]) => n).sort(),
      named.map(([n]) => n).sort(),
    );
    opt.step();
    opt.zeroGrad();
    const r = 4;
    const projected = matrices.reduce(
      (s, [, t]) => s + 2 * r * Math.max(...t.shape) + r * Math.min(...t.shape),
      0,
    );
    const expected = 4 * projected + 8 * others.reduce((s, [, t]) => s + t.size, 0);
    equal(opt.stateBytes, expected);
    // + 8 bytes: the clipper's norm and coefficient live in the optimizer category too.
    equal(rt().pool.stats().live.optimizer - base, expected + 8);
    opt.dispose();
    equal(rt().pool.stats().live.optimizer, base);
    m.dispose();
  }
  throws(
    () => applyMethod("galore", model(), { scope: "all" }, ctx()),
    /method galore: invalid options/,
  );
});

Deno.test("unprojected parameters follow GaLoreAdamW's plain branch (ε added to √v, decay after the step); projector columns sign-normalised", async () => {
  const w = matrix(5, 9, 3);
  const b = tensor(Float32Array.from(randomArray(6, 4)), [6], { category: "trainable" }).keep();
  b.requiresGrad = true;
  const opt = new GaLoreAdamW(
    [{ params: [w, b], lr: 0.02, weightDecay: 0.3, betas: BETAS, eps: 1e-3 }],
    {},
    new Map([[w, 2]]),
    { updateProjGap: 10, scale: 0.25, projType: "std", svd: "exact", seed: 0 },
  );
  const host = Float64Array.from(await b.read());
  const mom = new Float64Array(6), vel = new Float64Array(6);
  for (let step = 1; step <= 3; step++) {
    const g = randomArray(6, 20 + step);
    setGrad(b, g);
    setGrad(w, randomArray(45, 30 + step));
    opt.step();
    const bc1 = 1 - BETAS[0] ** step, bc2 = 1 - BETAS[1] ** step;
    for (let i = 0; i < 6; i++) {
      mom[i] = BETAS[0] * mom[i] + (1 - BETAS[0]) * g[i];
      vel[i] = BETAS[1] * vel[i] + (1 - BETAS[1]) * g[i] * g[i];
      const n = mom[i] / (Math.sqrt(vel[i]) + 1e-3);
      host[i] = (host[i] - 0.02 * Math.sqrt(bc2) / bc1 * n) * (1 - 0.02 * 0.3);
    }
  }
  assertClose(await b.read(), host, { atol: 1e-6, rtol: 1e-5 }, "unprojected parameter");
  const P = await opt.projector(w)!.read();
  for (let k = 0; k < 2; k++) {
    const column = Array.from({ length: 5 }, (_, i) => P[i * 2 + k]);
    const largest = column.reduce((a, v) => (Math.abs(v) > Math.abs(a) ? v : a), 0);
    ok(largest > 0, `projector column ${k}'s largest entry is positive`);
  }
  opt.dispose();
  w.dispose();
  b.dispose();
});

Deno.test("GaLore saveState → loadState resumes exactly (projectors, moments, steps)", async () => {
  const a = model();
  const adapterA = applyMethod("galore", a, { rank: 3, updateProjGap: 2 }, ctx()) as GaloreAdapter;
  const optA = optimizer(adapterA, 1);
  for (let s = 0; s < 3; s++) trainStep(a, optA);
  const state = await optA.saveState();
  const b = model();
  const adapterB = applyMethod("galore", b, { rank: 3, updateProjGap: 2 }, ctx()) as GaloreAdapter;
  const optB = optimizer(adapterB, 1);
  const namedA = namedTrainable(adapterA.groups()), namedB = namedTrainable(adapterB.groups());
  for (const [i, [n, t]] of namedB.entries()) {
    equal(n, namedA[i][0]);
    writeInto(t, (await namedA[i][1].read()) as Float32Array);
  }
  optB.loadState(state);
  equal(optB.stepCount, 3);
  equal(optB.stateBytes, optA.stateBytes);
  // Step 3 uses the projectors of step 2; step 4 refreshes them — both must agree bit for bit.
  for (let s = 3; s < 5; s++) {
    trainStep(a, optA);
    trainStep(b, optB);
    deepStrictEqual(await evalLogits(b), await evalLogits(a), `logits after step ${s}`);
  }
  const untrained = await evalLogits(model());
  ok((await evalLogits(a)).some((v, i) => v !== untrained[i]), "training changed the outputs");
  throws(
    () => optB.loadState({ meta: { type: "adamw" }, arrays: {} }),
    /not this version's GaLore state/,
  );
  for (const o of [optA, optB]) o.dispose();
  for (const mm of [a, b]) mm.dispose();
});

Deno.test("GaLore: rank clamped with a warning, f16 weights train in f32, lr multipliers, save/load, merge no-op", async () => {
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (msg: string) => warnings.push(msg);
  const m = model();
  const q = m.getModule("roberta.encoder.layer.0.attention.self.query") as Linear;
  q.setParameter("weight", noGrad(() => cast(q.weight, "f16")));
  let adapter: GaloreAdapter;
  try {
    adapter = applyMethod("galore", m, {}, ctx({ lrMultipliers: { value: 4 } })) as GaloreAdapter;
  } finally {
    console.warn = warn;
  }
  equal(warnings.length, 1);
  ok(/rank 128 exceeds min\(dOut, dIn\) of 10 matrices/.test(warnings[0]), warnings[0]);
  deepStrictEqual([...adapter.ranks.values()], new Array(10).fill(16));
  const qw = (m.getModule("roberta.encoder.layer.0.attention.self.query") as Linear).weight;
  equal(qw.dtype, "f32");
  ok(qw.requiresGrad && qw.category === "trainable");
  const v = adapter.groups().find((g) => g.lrMultiplier === 4)!;
  deepStrictEqual(
    v.names.sort(),
    [0, 1].flatMap((l) => [`roberta.encoder.layer.${l}.attention.self.value.weight`]),
  );
  const opt = optimizer(adapter);
  for (let s = 0; s < 2; s++) trainStep(m, opt);
  opt.dispose();
  const before = await evalLogits(m);
  const dir = await Deno.makeTempDir();
  try {
    await adapter.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/galore_config.json`));
    equal(config.method, "galore");
    equal(config.update_proj_gap, 200);
    equal(config.scale, 0.25);
    ok(config.tensors.includes("classifier.out_proj.weight"));
    const fresh = model();
    const again = applyMethod("galore", fresh, { rank: 2 }, ctx());
    ok((await evalLogits(fresh)).some((x, i) => x !== before[i]));
    await again.load(dir);
    deepStrictEqual(await evalLogits(fresh), before);
    again.merge();
    deepStrictEqual(await evalLogits(fresh), before);
    fresh.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  throws(
    () => applyMethod("galore", model(), {}, ctx({ targets: ["nope"] })),
    /GaLore: no Linear module matches/,
  );
  throws(
    () => applyMethod("galore", model(), { rank: 0 }, ctx()),
    /method galore: invalid options/,
  );
  // An f16 weight outside the targets cannot train in place: trainAll says so; without it, fine.
  const half = () => {
    const h = model();
    const k = h.getModule("roberta.encoder.layer.1.attention.self.key") as Linear;
    k.setParameter("weight", noGrad(() => cast(k.weight, "f16")));
    return h;
  };
  throws(
    () => applyMethod("galore", half(), { rank: 2 }, ctx()),
    /frozenDtype f32, or set trainAll/,
  );
  applyMethod("galore", half(), { rank: 2, trainAll: false }, ctx());
  m.dispose();
});

Deno.test("GaLore's default targets are the reference recipes': every attention and feed-forward matrix", () => {
  deepStrictEqual(galore.defaultTargets!(model()), [
    "query",
    "key",
    "value",
    "intermediate.dense",
    "output.dense",
  ]);
  equal(galore.defaultTargets!(tinyLlama({ layers: 1, seed: 2 }).model()).length, 7);
});
