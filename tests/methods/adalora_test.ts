/**
 * AdaLoRA on a tiny random RoBERTa: initialisation, the SVD-form forward and its gradients, the
 * budget schedule, importance EMAs, masking to the budget, the orthogonality regulariser, what
 * trains and what memory it takes, PEFT files with rank_pattern, save/load, merge.
 */
import { deepStrictEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { assertClose, checkGradients, randomArray, setup } from "../helpers.ts";
import {
  backward,
  mul,
  noGrad,
  rt,
  scopeAsync,
  sum,
  type Tensor,
  tensor,
  zeroGrad,
} from "../../ops/mod.ts";
import type { EncoderForSequenceClassification } from "../../models/encoder.ts";
import { Linear } from "../../models/module.ts";
import {
  adalora as adaloraMethod,
  type AdaLoraAdapter,
  adaloraBudget,
  applyMethod,
  type BudgetSchedule,
  loadAdapter,
  orthRegularizer,
  SvdLinear,
} from "../../methods/mod.ts";
import { openSafetensors } from "../../models/safetensors.ts";
import { linearRef } from "../models/reference.ts";
import {
  contextBuilder,
  evalLogits,
  ROBERTA_HEAD,
  TINY_ROBERTA,
  tinyLlama,
  tinyRoberta,
  writeRandom,
} from "./support.ts";

await setup();

const { weights: W, model } = tinyRoberta();
const H = TINY_ROBERTA.hidden;
const ctx = contextBuilder({ totalSteps: 40 });

function adalora(
  m: EncoderForSequenceClassification,
  options: Record<string, unknown> = {},
  c = ctx(),
): AdaLoraAdapter {
  return applyMethod("adalora", m, { initR: 6, targetR: 2, ...options }, c) as AdaLoraAdapter;
}

const inputs = (variant = 0) => ({
  ids: tensor(
    Int32Array.from(
      [0, 5, 9, 4, 2, 0, 7, 2, 1, 1].map((
        v,
        i,
      ) => (i % 5 === 0 || v <= 2 ? v : (v + variant) % 10 + 3)),
    ),
    [2, 5],
  ),
  attentionMask: tensor(Float32Array.from([1, 1, 1, 1, 1, 1, 1, 1, 0, 0]), [2, 5]),
});

const logits = (m: EncoderForSequenceClassification) => evalLogits(m, inputs);

/** A scalar loss with fixed random weights on the logits (so gradients are not symmetric). */
function loss(m: EncoderForSequenceClassification, variant = 0): Tensor {
  return sum(
    mul(
      m.forward(inputs(variant)),
      tensor(Float32Array.from(randomArray(4, 11 + variant)), [2, 2]),
    ),
  );
}

/** Random P, Λ (nonzero), Q so that the update and every gradient are nonzero. */
function randomize(a: AdaLoraAdapter, seed = 100): void {
  a.layers.forEach(([, l], i) => {
    writeRandom(l.loraA, seed + 3 * i, -0.4, 0.4);
    writeRandom(l.loraE, seed + 3 * i + 1, 0.2, 1);
    writeRandom(l.loraB, seed + 3 * i + 2, -0.4, 0.4);
  });
}

async function backwardOn(m: EncoderForSequenceClassification, variant = 0): Promise<void> {
  await scopeAsync(async () => {
    backward(loss(m, variant));
    await Promise.resolve();
  });
}

Deno.test("AdaLoRA starts equal to the base model (Λ = 0), P and Q ~ N(0, 0.02²), layers named lora_A/E/B", async () => {
  const base = await logits(model());
  const m = model();
  const a = adalora(m);
  deepStrictEqual(await logits(m), base);
  deepStrictEqual(a.layers.map(([n]) => n), [
    "roberta.encoder.layer.0.attention.self.query",
    "roberta.encoder.layer.0.attention.self.value",
    "roberta.encoder.layer.1.attention.self.query",
    "roberta.encoder.layer.1.attention.self.value",
  ]);
  const [, l] = a.layers[0];
  deepStrictEqual([l.loraA.shape, l.loraE.shape, l.loraB.shape], [[6, H], [6, 1], [H, 6]]);
  ok((await l.loraE.read()).every((v) => v === 0));
  const q = Array.from(await l.loraA.read()).concat(Array.from(await l.loraB.read()));
  const std = Math.sqrt(q.reduce((s, v) => s + v * v, 0) / q.length);
  ok(std > 0.016 && std < 0.024, `std of P, Q is ${std}, expected ≈ 0.02`);
  ok(Math.abs(l.scaling - 8 / (6 + 1e-5)) < 1e-12, "s = α / (init_r + 1e-5)");
  ok(
    m.namedParameters().some(([n]) => n === "roberta.encoder.layer.0.attention.self.value.lora_E"),
  );
});

Deno.test("AdaLoRA forward equals x·Wᵀ + b + s·x·(Q ⊙ Λ)ᵀ·Pᵀ", async () => {
  const m = model();
  const a = adalora(m, { alpha: 12 });
  randomize(a);
  const [name, layer] = a.layers[1];
  const rows = 7;
  const x = randomArray(rows * H, 9);
  const got = await scopeAsync(() =>
    noGrad(() => layer.forward(tensor(Float32Array.from(x), [rows, H]))).read()
  );
  const [q, e, p] = await Promise.all([layer.loraA.read(), layer.loraE.read(), layer.loraB.read()]);
  const s = 12 / (6 + 1e-5);
  // ΔW = s·P·diag(Λ)·Q in float64.
  const w = Float64Array.from(W.get(`${name}.weight`)!);
  for (let o = 0; o < H; o++) {
    for (let i = 0; i < H; i++) {
      for (let k = 0; k < 6; k++) w[o * H + i] += s * p[o * 6 + k] * e[k] * q[k * H + i];
    }
  }
  const want = linearRef(x, rows, w, H, H, W.get(`${name}.bias`)!);
  assertClose(got, want, { atol: 1e-5, rtol: 1e-4 }, "AdaLoRA forward");
});

Deno.test("AdaLoRA gradients of x, Q, Λ, P and of the orthogonality regulariser match finite differences", async () => {
  const [r, dIn, dOut, rows, s] = [3, 5, 4, 7, 1.7];
  const w = randomArray(dOut * dIn, 1), b = randomArray(dOut, 2);
  const base = new Linear(
    tensor(Float32Array.from(w), [dOut, dIn]),
    tensor(Float32Array.from(b), [dOut]),
  );
  const forwardRef = ([x, q, e, p]: Float64Array[]) => {
    const y = linearRef(x, rows, w, dOut, dIn, b);
    for (let n = 0; n < rows; n++) {
      for (let k = 0; k < r; k++) {
        let xq = 0;
        for (let i = 0; i < dIn; i++) xq += x[n * dIn + i] * q[k * dIn + i];
        for (let o = 0; o < dOut; o++) y[n * dOut + o] += s * xq * e[k] * p[o * r + k];
      }
    }
    return y;
  };
  await checkGradients(
    ([x, q, e, p]) => new SvdLinear(base, q, e, p, s, 0).forward(x),
    forwardRef,
    [
      { shape: [rows, dIn], values: randomArray(rows * dIn, 3) },
      { shape: [r, dIn], values: randomArray(r * dIn, 4) },
      { shape: [r, 1], values: randomArray(r, 5) },
      { shape: [dOut, r], values: randomArray(dOut * r, 6) },
    ],
  );
  for (const norm of ["frobenius", "squared"] as const) {
    const penaltyRef = ([q, p]: Float64Array[]) => {
      const [qTerm, pTerm] = hostPenalty(q, p, r, dIn, dOut);
      return [norm === "squared" ? (qTerm + pTerm) / 2 : (Math.sqrt(qTerm) + Math.sqrt(pTerm)) / 2];
    };
    await checkGradients(
      ([q, p]) => orthRegularizer([{ loraA: q, loraB: p }], norm),
      penaltyRef,
      [
        { shape: [r, dIn], values: randomArray(r * dIn, 7, -0.8, 0.8) },
        { shape: [dOut, r], values: randomArray(dOut * r, 8, -0.8, 0.8) },
      ],
    );
  }
});

/** ‖QQᵀ − I‖²_F and ‖PᵀP − I‖²_F of Q [r, dIn] and P [dOut, r] (host, float64). */
function hostPenalty(
  q: ArrayLike<number>,
  p: ArrayLike<number>,
  r: number,
  dIn: number,
  dOut: number,
): [number, number] {
  let qTerm = 0, pTerm = 0;
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      let qq = 0, pp = 0;
      for (let c = 0; c < dIn; c++) qq += q[i * dIn + c] * q[j * dIn + c];
      for (let o = 0; o < dOut; o++) pp += p[o * r + i] * p[o * r + j];
      const id = i === j ? 1 : 0;
      qTerm += (qq - id) ** 2;
      pTerm += (pp - id) ** 2;
    }
  }
  return [qTerm, pTerm];
}

Deno.test("the budget follows the cubic schedule: init until tinit, target from T − tfinal, masks every deltaT", () => {
  const s: BudgetSchedule = {
    initBudget: 48,
    targetBudget: 32,
    tinit: 10,
    tfinal: 20,
    totalSteps: 110,
    deltaT: 5,
  };
  const closed = (t: number) => Math.floor(16 * (1 - (t - 10) / 80) ** 3 + 32);
  deepStrictEqual(adaloraBudget(0, s), { budget: 48, mask: false });
  deepStrictEqual(adaloraBudget(10, s), { budget: 48, mask: false });
  deepStrictEqual(adaloraBudget(11, s), { budget: closed(11), mask: false });
  equal(closed(11), 47);
  deepStrictEqual(adaloraBudget(15, s), { budget: closed(15), mask: true });
  deepStrictEqual(adaloraBudget(50, s), { budget: 34, mask: true });
  equal(closed(50), 34);
  deepStrictEqual(adaloraBudget(73, s), { budget: closed(73), mask: false });
  deepStrictEqual(adaloraBudget(90, s), { budget: 32, mask: true });
  deepStrictEqual(adaloraBudget(91, s), { budget: 32, mask: true });
  deepStrictEqual(adaloraBudget(110, s), { budget: 32, mask: true });
  for (let t = 11; t < 90; t++) {
    ok(adaloraBudget(t, s).budget >= adaloraBudget(t + 1, s).budget, `monotone at ${t}`);
  }
});

/** Host importance: Ī, Ū per parameter after the given (p, g) observations. */
function hostImportance(steps: { p: Float32Array; g: Float32Array }[], b1: number, b2: number) {
  const n = steps[0].p.length;
  const ipt = new Float64Array(n), unc = new Float64Array(n);
  for (const { p, g } of steps) {
    for (let i = 0; i < n; i++) {
      const cur = Math.abs(p[i] * g[i]);
      ipt[i] = b1 * ipt[i] + (1 - b1) * cur;
      unc[i] = b2 * unc[i] + (1 - b2) * Math.abs(cur - ipt[i]);
    }
  }
  return { ipt, unc };
}

Deno.test("importance EMAs Ī, Ū match a host computation over two steps", async () => {
  const m = model();
  const a = adalora(m, { beta1: 0.7, beta2: 0.6 });
  randomize(a);
  const params = a.layers.flatMap(([, l]) => [l.loraA, l.loraE, l.loraB]);
  const seen: { p: Float32Array; g: Float32Array }[][] = params.map(() => []);
  for (const step of [0, 1]) {
    await backwardOn(m, step);
    for (const [i, p] of params.entries()) {
      seen[i].push({
        p: (await p.read()) as Float32Array,
        g: (await p.grad!.read()) as Float32Array,
      });
    }
    a.allocate(step, "after-step");
    zeroGrad(params);
  }
  for (const [i, p] of params.entries()) {
    const want = hostImportance(seen[i], 0.7, 0.6);
    const got = a.allocator.importance(p)!;
    assertClose(await got.ipt.read(), want.ipt, { atol: 1e-9, rtol: 1e-5 }, `Ī of parameter ${i}`);
    assertClose(await got.unc.read(), want.unc, { atol: 1e-9, rtol: 1e-5 }, `Ū of parameter ${i}`);
  }
  ok(seen.every((s) => s[1].g.some((v) => v !== 0)), "gradients are nonzero");
});

Deno.test("the optimizer runs PEFT's loop: t from 0, importance of the clipped gradient after the update (before it with importance: before-step)", async () => {
  for (const importance of ["after-step", "before-step"] as const) {
    const m = model();
    const a = adalora(m, { beta1: 0.7, beta2: 0.6, importance }, ctx({ totalSteps: 10 }));
    randomize(a);
    const groups = a.groups();
    const maxGradNorm = 0.05;
    const opt = a.createOptimizer!(
      groups.map((g) => ({ params: g.params, lr: 1e-2, weightDecay: 0 })),
      { maxGradNorm },
    );
    await backwardOn(m);
    const all = groups.flatMap((g) => g.params);
    let squares = 0;
    for (const t of all) for (const v of await t.grad!.read()) squares += v * v;
    const coef = Math.min(1, maxGradNorm / (Math.sqrt(squares) + 1e-6));
    ok(coef < 0.5, `the gradients are clipped (coefficient ${coef})`);
    const p = a.layers[1][1].loraB;
    const [before, grad] = [await p.read(), await p.grad!.read()];
    opt.step();
    const after = await p.read();
    const used = importance === "after-step" ? after : before;
    const want = Float64Array.from(used, (v, i) => 0.3 * Math.abs(v * grad[i] * coef));
    assertClose(
      await a.allocator.importance(p)!.ipt.read(),
      want,
      { atol: 1e-10, rtol: 1e-4 },
      importance,
    );
    equal(a.allocator.keep, null, "t = 0 ≤ tinit: no mask yet");
    opt.zeroGrad();
    opt.step(); // t = 1 > tinit with deltaT 1: the first mask
    ok(a.allocator.keep, "t = 1 masks");
    opt.dispose();
  }
});

Deno.test("AdaLoRA's default targets are PEFT's: every attention and FFN matrix on RoBERTa, q and v on LLaMA", () => {
  deepStrictEqual(adaloraMethod.defaultTargets!(model()), ["query", "key", "value", "dense"]);
  deepStrictEqual(
    adaloraMethod.defaultTargets!(tinyLlama({ layers: 1, seed: 3 }).model()),
    ["q_proj", "v_proj"],
  );
  const a = adalora(model(), {}, ctx({ targets: ["query", "key", "value", "dense"] }));
  deepStrictEqual(
    a.layers.map(([n]) => n.split(".").slice(3).join(".")).slice(0, 6),
    [
      "0.attention.self.query",
      "0.attention.self.key",
      "0.attention.self.value",
      "0.attention.output.dense",
      "0.intermediate.dense",
      "0.output.dense",
    ],
  );
  equal(a.layers.length, 12, "the classifier's dense (the head) is not adapted");
});

Deno.test("masking keeps exactly the budget's count of Λ, the highest-scoring triplets; the final mask is frozen", async () => {
  const m = model();
  const a = adalora(m, { deltaT: 1 }, ctx({ totalSteps: 20 }));
  randomize(a);
  const params = a.layers.flatMap(([, l]) => [l.loraA, l.loraE, l.loraB]);
  for (const step of [0, 1, 2]) {
    await backwardOn(m, step);
    a.allocate(step, "after-step");
    zeroGrad(params);
  }
  // Host scores from the GPU's EMAs: S(Λ_i) + mean_j S(Q_ij) + mean_j S(P_ji).
  const host: number[] = [];
  for (const [, l] of a.layers) {
    const S = async (p: Tensor) => {
      const st = a.allocator.importance(p)!;
      const [i, u] = [await st.ipt.read(), await st.unc.read()];
      return Float64Array.from(i, (v, k) => v * u[k]);
    };
    const [sq, se, sp] = [await S(l.loraA), await S(l.loraE), await S(l.loraB)];
    for (let k = 0; k < 6; k++) {
      let qm = 0, pm = 0;
      for (let c = 0; c < H; c++) qm += sq[k * H + c] / H;
      for (let o = 0; o < H; o++) pm += sp[o * 6 + k] / H;
      host.push(se[k] + qm + pm);
    }
  }
  const scores = await scopeAsync(() => a.allocator.scores().read());
  assertClose(scores, host, { atol: 1e-12, rtol: 1e-4 }, "triplet scores");
  const step = 9;
  const { budget } = adaloraBudget(step, a.schedule!);
  equal(budget, Math.floor((24 - 8) * (1 - 9 / 20) ** 3 + 8));
  a.allocate(step, "after-step");
  const e = (await Promise.all(a.layers.map(([, l]) => l.loraE.read()))).flatMap((v) =>
    Array.from(v)
  );
  equal(e.filter((v) => v !== 0).length, budget);
  const top = host.map((v, i) => [v, i]).sort((x, y) => y[0] - x[0]).slice(0, budget).map(([, i]) =>
    i
  ).sort((x, y) => x - y);
  deepStrictEqual(e.flatMap((v, i) => (v !== 0 ? [i] : [])), top);
  // The final allocation (t = T − tfinal = 20) keeps target_r·L and frees the EMAs.
  const before = rt().pool.stats().live.optimizer;
  a.allocate(20, "after-step");
  ok(a.allocator.frozen);
  ok(rt().pool.stats().live.optimizer < before, "EMAs released");
  const pattern = (await a.allocator.rankPattern())!;
  equal(Object.values(pattern).flat().filter(Boolean).length, 8);
  // Later steps re-apply the frozen mask even if Λ regrew.
  randomize(a, 300);
  a.allocate(21, "after-step");
  const e2 = (await Promise.all(a.layers.map(([, l]) => l.loraE.read()))).flatMap((v) =>
    Array.from(v)
  );
  deepStrictEqual(e2.map((v) => v !== 0), Object.values(pattern).flat());
});

Deno.test("the orthogonality regulariser is PEFT's mean of unsquared Frobenius norms (squared: the paper's); extraLoss = γ·R", async () => {
  for (const orthNorm of ["frobenius", "squared"] as const) {
    const m = model();
    const a = adalora(m, { orthRegWeight: 0.3, orthNorm });
    randomize(a);
    let want = 0;
    for (const [, l] of a.layers) {
      const terms = hostPenalty(await l.loraA.read(), await l.loraB.read(), 6, H, H);
      for (const t of terms) want += orthNorm === "squared" ? t : Math.sqrt(t);
    }
    want /= 2 * a.layers.length;
    const [r, extra] = await scopeAsync(
      async () => [await a.regularizer().item(), await a.extraLoss!(0)!.item()],
    );
    assertClose([r, extra], [want, 0.3 * want], { rtol: 1e-5 }, `regulariser (${orthNorm})`);
  }
  equal(adalora(model(), { orthRegWeight: 0 }).extraLoss!(0), null);
});

Deno.test("only P, Λ, Q and the head train: count Σ init_r·(dIn + dOut + 1) + head; AdamW state 2·4 bytes each plus 2·4 for Ī, Ū; checkpoints carry them", async () => {
  const m = model();
  const live0 = rt().pool.stats().live;
  const a = adalora(m, {}, ctx({ lrMultipliers: { value: 3 } }));
  randomize(a);
  const groups = a.groups();
  const trainable = groups.flatMap((g) => g.names.map((n, i) => [n, g.params[i]] as const));
  const adapterCount = 4 * 6 * (H + H + 1);
  equal(trainable.reduce((s, [, t]) => s + t.size, 0), adapterCount + ROBERTA_HEAD);
  equal(rt().pool.stats().live.trainable - live0.trainable, 4 * (adapterCount + ROBERTA_HEAD));
  ok(groups.find((g) => g.lrMultiplier === 3)!.names.every((n) => /\.value\.lora_[AEB]$/.test(n)));
  await backwardOn(m);
  const withGrad = m.namedParameters().filter(([, t]) => t.grad).map(([n]) => n).sort();
  deepStrictEqual(withGrad, trainable.map(([n]) => n).sort());
  const opt = a.createOptimizer!(
    groups.map((g) => ({
      params: g.params,
      lr: 1e-3 * g.lrMultiplier,
      weightDecay: g.weightDecay,
    })),
    {},
  );
  const optimizerBefore = rt().pool.stats().live.optimizer;
  // Step t = 0 updates and scores (no mask yet: t ≤ tinit); t = 1 (no gradients) masks.
  opt.step();
  opt.zeroGrad();
  equal(a.allocator.keep, null);
  opt.step();
  equal(
    rt().pool.stats().live.optimizer - optimizerBefore,
    8 * (adapterCount + ROBERTA_HEAD) + 8 * adapterCount + 4 * 24,
  );
  equal(opt.stateBytes, 8 * (adapterCount + ROBERTA_HEAD) + 8 * adapterCount + 4 * 24);
  // The optimizer state (AdamW moments, Ī, Ū, mask) round-trips through a checkpoint.
  const state = await opt.saveState();
  const m2 = model();
  const b = adalora(m2, {}, ctx({ lrMultipliers: { value: 3 } }));
  const opt2 = b.createOptimizer!(
    b.groups().map((g) => ({
      params: g.params,
      lr: 1e-3 * g.lrMultiplier,
      weightDecay: g.weightDecay,
    })),
    {},
  );
  opt2.loadState(state);
  const p = a.layers[2][1].loraA, p2 = b.layers[2][1].loraA;
  deepStrictEqual(
    await b.allocator.importance(p2)!.unc.read(),
    await a.allocator.importance(p)!.unc.read(),
  );
  deepStrictEqual(await b.allocator.keep!.read(), await a.allocator.keep!.read());
  equal(opt2.stateBytes, opt.stateBytes);
  opt.dispose();
  opt2.dispose();
});

Deno.test("AdaLoRA save writes PEFT names, truncated shapes and rank_pattern; load restores outputs; merge keeps them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = model();
    const a = adalora(m, { alpha: 16 });
    randomize(a);
    // A mask with a different kept count per layer: layer 0 keeps 4, the others fewer.
    const keep = [1, 1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0];
    a.allocator.setMask(Float32Array.from(keep));
    a.allocator.applyMask();
    const before = await logits(m);
    await a.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    equal(config.peft_type, "ADALORA");
    deepStrictEqual(
      [
        config.init_r,
        config.target_r,
        config.lora_alpha,
        config.total_step,
        config.deltaT,
        config.beta1,
        config.orth_reg_weight,
      ],
      [6, 2, 16, 40, 1, 0.85, 0.5],
    );
    deepStrictEqual(config.rank_pattern["roberta.encoder.layer.0.attention.self.query.lora_E"], [
      true,
      true,
      false,
      true,
      true,
      false,
    ]);
    deepStrictEqual(config.modules_to_save, ["classifier"]);
    const reader = await openSafetensors(`${dir}/adapter_model.safetensors`);
    const shapes = Object.fromEntries(reader.names.map((n) => [n, reader.info(n).shape.join("x")]));
    reader.close();
    const key = (l: number, p: string) =>
      `base_model.model.roberta.encoder.layer.${l}.attention.self.${p}`;
    equal(shapes[key(0, "query.lora_A")], "4x16");
    equal(shapes[key(0, "query.lora_E")], "4x1");
    equal(shapes[key(0, "query.lora_B")], "16x4");
    equal(shapes[key(0, "value.lora_A")], "2x16");
    equal(shapes[key(1, "value.lora_B")], "16x3");
    equal(shapes["base_model.model.classifier.out_proj.weight"], "2x16");
    equal(Object.keys(shapes).length, 12 + 4);
    const fresh = model();
    // Through the registry, as `deno task evaluate` loads adapters: options come from the config.
    const again = await loadAdapter(fresh, dir, {
      ...ctx({ seed: 99, totalSteps: undefined }),
      headModules: undefined,
    }) as AdaLoraAdapter;
    equal(again.method, "adalora");
    deepStrictEqual(again.schedule, {
      initBudget: 24,
      targetBudget: 8,
      tinit: 0,
      tfinal: 0,
      totalSteps: 40,
      deltaT: 1,
    });
    deepStrictEqual(await logits(fresh), before);
    deepStrictEqual(Array.from(await again.allocator.keep!.read()), keep);
    again.merge();
    equal(fresh.namedModules().filter(([, x]) => x instanceof SvdLinear).length, 0);
    assertClose(await logits(fresh), before, { atol: 1e-5, rtol: 1e-4 }, "merged logits");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("AdaLoRA validates its options and needs the step count only to train", async () => {
  throws(() => adalora(model(), { targetR: 7 }), /targetR \(7\) must not exceed initR \(6\)/);
  throws(
    () => adalora(model(), { tinit: 30, tfinal: 10 }),
    /tinit \(30\) must be below totalSteps − tfinal/,
  );
  const a = adalora(model(), {}, ctx({ totalSteps: undefined }));
  throws(() => a.allocate(0, "after-step"), /needs the total number of training steps/);
  equal(a.schedule, null);
  const b = adalora(model(), { totalSteps: 12 }, ctx({ totalSteps: undefined }));
  equal(b.schedule!.totalSteps, 12);
  await rejects(() => a.load("/nonexistent-adalora"), /cannot read the adapter config/);
});
