/**
 * AdamW against a plain-TS transcription of torch.optim.AdamW (single-tensor path, every
 * operation rounded to f32 as PyTorch does on f32 tensors), gradient clipping against
 * torch.nn.utils.clip_grad_norm_'s formula, the schedules against their closed forms, and
 * checkpoint state round trips.
 */
import assert from "node:assert/strict";
import {
  AdamW,
  clipGradNorm,
  constantSchedule,
  cosineSchedule,
  GradClipper,
  linearSchedule,
  rt,
  type Schedule,
  type Tensor,
  tensor,
  zeroGrad,
} from "../../ops/mod.ts";
import { assertClose, AWKWARD_SIZES, randomArray, setup } from "../helpers.ts";

await setup();

const f = Math.fround;

/** One parameter's state in the reference. */
interface RefParam {
  p: Float32Array;
  m: Float32Array;
  v: Float32Array;
  step: number;
}

interface RefHyper {
  lr: number;
  weightDecay: number;
  betas?: [number, number];
  eps?: number;
}

function refParam(values: ArrayLike<number>): RefParam {
  return {
    p: Float32Array.from(values),
    m: new Float32Array(values.length),
    v: new Float32Array(values.length),
    step: 0,
  };
}

/** torch.optim.AdamW._single_tensor_adamw for one parameter, op by op in f32. */
function refAdamWStep(s: RefParam, grad: ArrayLike<number>, h: RefHyper): void {
  const [beta1, beta2] = h.betas ?? [0.9, 0.999];
  const eps = h.eps ?? 1e-8;
  s.step++;
  const decay = f(1 - h.lr * h.weightDecay);
  const bc1 = 1 - beta1 ** s.step;
  const bc2Sqrt = f(Math.sqrt(1 - beta2 ** s.step));
  const stepSize = f(h.lr / bc1);
  for (let i = 0; i < s.p.length; i++) {
    const g = f(grad[i]);
    s.p[i] = f(s.p[i] * decay);
    s.m[i] = f(s.m[i] + f(f(1 - beta1) * f(g - s.m[i])));
    s.v[i] = f(f(s.v[i] * beta2) + f(f(1 - beta2) * f(g * g)));
    const denom = f(f(f(Math.sqrt(s.v[i])) / bc2Sqrt) + f(eps));
    s.p[i] = f(s.p[i] + f(-stepSize * f(s.m[i] / denom)));
  }
}

/** clip_grad_norm_'s norm and coefficient in float64. */
function refClip(grads: ArrayLike<number>[], maxNorm: number): { norm: number; coef: number } {
  let sq = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
  const norm = Math.sqrt(sq);
  return { norm, coef: Math.min(1, maxNorm / (norm + 1e-6)) };
}

function param(values: ArrayLike<number>, shape: number[], name?: string): Tensor {
  return tensor(Float32Array.from(values), shape, {
    requiresGrad: true,
    category: "trainable",
    name,
  }).keep();
}

function setGrad(p: Tensor, values: ArrayLike<number>): void {
  p.grad?.dispose();
  p.grad = tensor(Float32Array.from(values), [...p.shape], { category: "grads" }).keep();
}

const SHAPES: number[][] = [...AWKWARD_SIZES.map((n) => [n]), [7, 33]];
const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
/** A few f32 ulps at |p| ≤ 2: rounding differences compound over steps, but a formula slip (bias
 * correction, decay order, eps inside the root with the group test's eps 1e-3) moves them more. */
const TIGHT = { atol: 2e-7, rtol: 2e-6 };

Deno.test("AdamW: 5 steps on awkward shapes match torch.optim.AdamW (params and moments)", async () => {
  const h: RefHyper = { lr: 1e-2, weightDecay: 0.05 };
  const params = SHAPES.map((s, k) => param(randomArray(size(s), 10 + k), s, `w${k}`));
  const refs = params.map((_, k) => refParam(randomArray(size(SHAPES[k]), 10 + k)));
  const opt = new AdamW([{ params, ...h }]);
  for (let step = 0; step < 5; step++) {
    params.forEach((p, k) => {
      const g = randomArray(p.size, 100 * step + k, -2, 2);
      setGrad(p, g);
      refAdamWStep(refs[k], g, h);
    });
    opt.step();
    if (step === 0 || step === 4) {
      for (const [k, p] of params.entries()) {
        assertClose(await p.read(), refs[k].p, TIGHT, `step ${step + 1} ${p.name}`);
      }
    }
  }
  const state = await opt.exportState();
  state.params.forEach((s, k) => {
    assert.ok(s, `state of w${k}`);
    assert.equal(s.step, 5);
    assertClose(s.expAvg, refs[k].m, { atol: 1e-7, rtol: 1e-6 }, `exp_avg of w${k}`);
    assertClose(s.expAvgSq, refs[k].v, { atol: 1e-9, rtol: 1e-6 }, `exp_avg_sq of w${k}`);
  });
  assert.equal(opt.stepCount, 5);
  opt.dispose();
  for (const p of params) p.dispose();
});

Deno.test("AdamW: weight decay is decoupled (zero gradient → p·(1 − lr·wd), moments stay 0)", async () => {
  const values = randomArray(33, 3, -3, 3);
  const p = param(values, [33]);
  const opt = new AdamW([{ params: [p], lr: 0.1, weightDecay: 0.5 }]);
  for (let step = 0; step < 3; step++) {
    setGrad(p, new Float32Array(33));
    opt.step();
  }
  // Adam with L2 decay would instead take sign-like steps of size ≈ lr, whatever |p| is.
  const expected = Array.from(values, (x) => f(f(f(f(x) * f(0.95)) * f(0.95)) * f(0.95)));
  assertClose(await p.read(), expected, { atol: 0, rtol: 1e-7 }, "decayed parameter");
  const state = await opt.exportState();
  assert.deepEqual(Array.from(state.params[0]!.expAvg), new Array(33).fill(0));
  opt.dispose();
  p.dispose();
});

Deno.test("AdamW: groups use their own lr, weight decay, betas and eps under a schedule", async () => {
  const groupsH: RefHyper[] = [
    { lr: 1e-2, weightDecay: 0 },
    { lr: 3e-3, weightDecay: 0.1, betas: [0.8, 0.99], eps: 1e-3 },
  ];
  const shapes = [[[7], [130]], [[33], [1]]];
  const params = shapes.map((g, gi) =>
    g.map((s, k) => param(randomArray(size(s), gi * 10 + k), s))
  );
  const refs = params.map((g) =>
    g.map((p, k) => refParam(randomArray(p.size, params.indexOf(g) * 10 + k)))
  );
  const schedule = linearSchedule({ warmupSteps: 2, totalSteps: 6 });
  const opt = new AdamW(groupsH.map((h, gi) => ({ params: params[gi], ...h })), { schedule });
  for (let step = 0; step < 4; step++) {
    assert.equal(opt.lr(1), groupsH[1].lr * schedule(step), `lr of group 1 at step ${step}`);
    params.forEach((g, gi) =>
      g.forEach((p, k) => {
        const grad = randomArray(p.size, 1000 + 100 * step + 10 * gi + k);
        setGrad(p, grad);
        refAdamWStep(refs[gi][k], grad, { ...groupsH[gi], lr: groupsH[gi].lr * schedule(step) });
      })
    );
    opt.step();
  }
  for (const [gi, g] of params.entries()) {
    for (const [k, p] of g.entries()) {
      assertClose(await p.read(), refs[gi][k].p, TIGHT, `group ${gi} param ${k}`);
    }
  }
  opt.dispose();
  for (const p of params.flat()) p.dispose();
});

Deno.test("AdamW: per-parameter step counts, skipped parameters and releaseState", async () => {
  const a = param(randomArray(7, 1), [7]);
  const b = param(randomArray(130, 2), [130]);
  const ra = refParam(randomArray(7, 1));
  let rb = refParam(randomArray(130, 2));
  const h: RefHyper = { lr: 5e-3, weightDecay: 0.01 };
  const opt = new AdamW([{ params: [a, b], ...h }]);
  const live = () => rt().pool.stats().live.optimizer;
  const before = live();
  // Step 1: only a has a gradient, so b gets no state and no update.
  const g1 = randomArray(7, 21);
  setGrad(a, g1);
  refAdamWStep(ra, g1, h);
  opt.step();
  assert.equal(opt.hasState(b), false);
  assert.equal(live() - before, 2 * 7 * 4, "moments of a only");
  // Step 2: both; b's bias correction is that of its own first step.
  const g2a = randomArray(7, 22), g2b = randomArray(130, 23);
  setGrad(a, g2a);
  setGrad(b, g2b);
  refAdamWStep(ra, g2a, h);
  refAdamWStep(rb, g2b, h);
  opt.step();
  assertClose(await a.read(), ra.p, TIGHT, "a after 2 steps");
  assertClose(await b.read(), rb.p, TIGHT, "b after its first step");
  // Releasing b frees its moments; its next update starts afresh (step 1 again).
  opt.releaseState(b);
  assert.equal(opt.hasState(b), false);
  assert.equal(live() - before, 2 * 7 * 4, "b's moments freed");
  rb = { ...refParam(rb.p), p: rb.p };
  const g3 = randomArray(130, 24);
  zeroGrad([a]);
  setGrad(b, g3);
  refAdamWStep(rb, g3, h);
  opt.step();
  assertClose(await b.read(), rb.p, TIGHT, "b after release and one fresh step");
  assertClose(await a.read(), ra.p, TIGHT, "a unchanged without a gradient");
  opt.dispose();
  assert.equal(live(), before, "dispose frees every moment");
  a.dispose();
  b.dispose();
});

Deno.test("AdamW: step() submits nothing and reads nothing back", () => {
  const p = param(randomArray(33, 5), [33]);
  setGrad(p, randomArray(33, 6));
  const opt = new AdamW([{ params: [p], lr: 1e-3, weightDecay: 0 }], { maxGradNorm: 1 });
  rt().flush();
  const submits = rt().submitCount;
  for (let i = 0; i < 3; i++) opt.step();
  assert.equal(rt().submitCount, submits, "no submit (hence no read-back) during steps");
  opt.dispose();
  p.dispose();
});

for (const [what, maxNorm] of [["above", 0.5], ["below", 1e3]] as const) {
  Deno.test(`clipGradNorm: norm ${what} the threshold matches clip_grad_norm_`, async () => {
    const params = SHAPES.map((s) => param(new Float32Array(size(s)), s));
    const grads = params.map((p, k) => randomArray(p.size, 50 + k));
    params.forEach((p, k) => setGrad(p, grads[k]));
    const { norm, coef } = refClip(grads, maxNorm);
    assert.equal(coef < 1, what === "above");
    const total = clipGradNorm(params, maxNorm);
    assertClose([await total.item()], [norm], { atol: 0, rtol: 1e-5 }, "total norm");
    for (const [k, p] of params.entries()) {
      const expected = Array.from(grads[k], (g) => g * coef);
      assertClose(await p.grad!.read(), expected, { atol: 1e-7, rtol: 1e-5 }, `clipped grad ${k}`);
    }
    total.dispose();
    for (const p of params) p.dispose();
  });
}

Deno.test("GradClipper: parameters without gradients count as zero; no gradients → norm 0", async () => {
  const a = param(new Float32Array(7), [7]);
  const b = param(new Float32Array(7), [7]);
  setGrad(a, [3, 4, 0, 0, 0, 0, 0]);
  const clipper = new GradClipper(2);
  clipper.measure([a, b]);
  assertClose(await clipper.totalNorm.read(), [5], { atol: 0, rtol: 1e-6 }, "norm");
  assertClose(await clipper.coefficient.read(), [2 / (5 + 1e-6)], { atol: 0, rtol: 1e-6 }, "coef");
  clipper.measure([b]);
  assert.equal(await clipper.totalNorm.item(), 0);
  assert.equal(await clipper.coefficient.item(), 1);
  clipper.dispose();
  a.dispose();
  b.dispose();
});

Deno.test("AdamW maxGradNorm: the update uses clipped gradients; gradNorm is the raw norm", async () => {
  const h: RefHyper = { lr: 2e-2, weightDecay: 0.01 };
  const maxNorm = 1;
  const params = SHAPES.map((s, k) => param(randomArray(size(s), 70 + k), s));
  const refs = params.map((p, k) => refParam(randomArray(p.size, 70 + k)));
  const opt = new AdamW([{ params, ...h }], { maxGradNorm: maxNorm });
  let lastNorm = 0;
  for (let step = 0; step < 3; step++) {
    // Large gradients at step 0 (clipped), small ones later (untouched).
    const scale = step === 0 ? 5 : 0.01;
    const grads = params.map((p, k) => randomArray(p.size, 300 + 10 * step + k, -scale, scale));
    params.forEach((p, k) => setGrad(p, grads[k]));
    const { norm, coef } = refClip(grads, maxNorm);
    assert.equal(coef < 1, step === 0);
    refs.forEach((r, k) => refAdamWStep(r, Array.from(grads[k], (g) => f(g) * f(coef)), h));
    opt.step();
    lastNorm = norm;
  }
  assertClose([await opt.gradNorm!.item()], [lastNorm], { atol: 0, rtol: 1e-5 }, "gradNorm");
  for (const [k, p] of params.entries()) {
    assertClose(await p.read(), refs[k].p, { atol: 1e-6, rtol: 1e-5 }, `param ${k}`);
  }
  opt.dispose();
  for (const p of params) p.dispose();
});

Deno.test("schedules: constant, linear and cosine with warm-up match their closed forms", () => {
  const w = 10, total = 110;
  const steps = [0, 1, 5, 9, 10, 11, 35, 60, 100, 109, 110, 150];
  const warm = (s: number) => s / w;
  const cases: [string, Schedule, (s: number) => number][] = [
    ["constant", constantSchedule(), () => 1],
    ["constant+warmup", constantSchedule({ warmupSteps: w }), (s) => (s < w ? warm(s) : 1)],
    [
      "linear",
      linearSchedule({ warmupSteps: w, totalSteps: total }),
      (s) => (s < w ? warm(s) : Math.max(0, 1 - (s - w) / (total - w))),
    ],
    [
      "cosine",
      cosineSchedule({ warmupSteps: w, totalSteps: total }),
      // As in Hugging Face, past totalSteps the half cosine is not clamped and rises again.
      (s) => (s < w ? warm(s) : (1 + Math.cos((Math.PI * (s - w)) / (total - w))) / 2),
    ],
  ];
  for (const [name, schedule, closed] of cases) {
    for (const s of steps) {
      assertClose([schedule(s)], [closed(s)], { atol: 1e-12, rtol: 1e-12 }, `${name} at ${s}`);
    }
  }
  // Spot values one can check by hand.
  assert.equal(linearSchedule({ warmupSteps: 10, totalSteps: 110 })(60), 0.5);
  assertClose([cosineSchedule({ totalSteps: 100 })(50)], [0.5], { atol: 1e-15 }, "cosine mid");
  assert.equal(linearSchedule({ totalSteps: 4 })(0), 1);
  assert.throws(() => linearSchedule({ warmupSteps: 2, totalSteps: 0 }), /totalSteps/);
  assert.throws(() => constantSchedule({ warmupSteps: -1 }), /warmupSteps/);
});

Deno.test("AdamW state: export → import into a fresh optimizer gives a bit-identical next step", async () => {
  const schedule = cosineSchedule({ warmupSteps: 1, totalSteps: 10 });
  const make = (values: Float32Array[]) => {
    const ps = values.map((v, k) => param(v, k === 2 ? [7, 33] : [v.length], `layer.${k}`));
    return {
      ps,
      opt: new AdamW([{ params: ps.slice(0, 2), lr: 1e-2, weightDecay: 0.1 }, {
        params: ps.slice(2),
        lr: 1e-3,
        weightDecay: 0,
      }], { schedule, maxGradNorm: 0.7 }),
    };
  };
  const init = [randomArray(33, 1), randomArray(1, 2), randomArray(231, 3)].map((v) =>
    Float32Array.from(v)
  );
  const a = make(init);
  for (let step = 0; step < 3; step++) {
    a.ps.forEach((p, k) => {
      // The second parameter never gets a gradient, so it has no state to carry.
      if (k !== 1) setGrad(p, randomArray(p.size, 40 + step * 3 + k));
    });
    a.opt.step();
  }
  const state = await a.opt.exportState();
  assert.equal(state.step, 3);
  assert.equal(state.params[1], null);
  const b = make(await Promise.all(a.ps.map(async (p) => (await p.read()) as Float32Array)));
  b.opt.importState(state);
  assert.equal(b.opt.stepCount, 3);
  for (const run of [a, b]) {
    run.ps.forEach((p, k) => setGrad(p, randomArray(p.size, 90 + k)));
    run.opt.step();
  }
  for (let k = 0; k < 3; k++) {
    assert.deepEqual(await b.ps[k].read(), await a.ps[k].read(), `parameter ${k} after resume`);
  }
  const after = [await a.opt.exportState(), await b.opt.exportState()];
  assert.deepEqual(after[1], after[0], "states after the resumed step");
  // Mismatched checkpoints are rejected with the parameter named.
  const bad = {
    ...state,
    params: [state.params[0], null, { ...state.params[2]!, expAvg: new Float32Array(3) }],
  };
  assert.throws(() => b.opt.importState(bad), /parameter 2 \(layer\.2\).*3 values, expected 231/);
  for (const run of [a, b]) {
    run.opt.dispose();
    for (const p of run.ps) p.dispose();
  }
});

Deno.test("zeroGrad: drops gradients (freeing them) or fills them with zeros", async () => {
  const p = param(new Float32Array(130), [130]);
  setGrad(p, randomArray(130, 8));
  zeroGrad([p], { setToNone: false });
  assert.deepEqual(Array.from(await p.grad!.read()), new Array(130).fill(0));
  const grads = rt().pool.stats().live.grads;
  zeroGrad([p]);
  assert.equal(p.grad, null);
  assert.equal(rt().pool.stats().live.grads, grads - 130 * 4);
  p.dispose();
});

Deno.test("AdamW: invalid configurations are rejected with the field named", () => {
  const p = param([1, 2], [2], "w");
  const q = tensor([1, 2], { dtype: "f16" }).keep();
  assert.throws(() => new AdamW([]), /at least one parameter group/);
  assert.throws(() => new AdamW([{ params: [p], lr: -1, weightDecay: 0 }]), /group 0: lr/);
  assert.throws(
    () => new AdamW([{ params: [p], lr: 1, weightDecay: 0, betas: [0.9, 1] }]),
    /betas\[1\]/,
  );
  assert.throws(
    () =>
      new AdamW([{ params: [p], lr: 1, weightDecay: 0 }, { params: [p], lr: 1, weightDecay: 0 }]),
    /group 1: params\[0\] \(w\) appears in more than one place/,
  );
  assert.throws(
    () => new AdamW([{ params: [q], lr: 1, weightDecay: 0 }]),
    /expected dtype f32, got f16/,
  );
  assert.throws(
    () => new AdamW([{ params: [p], lr: 1, weightDecay: 0 }], { maxGradNorm: 0 }),
    /maxGradNorm/,
  );
  const opt = new AdamW([{ params: [p], lr: 1, weightDecay: 0 }]);
  p.grad = tensor([1, 2, 3]).keep();
  assert.throws(() => opt.step(), /gradient of params\[0\] \(w\) has shape \[3\], expected \[2\]/);
  opt.dispose();
  p.dispose();
  q.dispose();
});

Deno.test("AdamW: the multi-tensor dispatch matches one dispatch per tensor bit for bit", async () => {
  const sizes = [1, 7, 300, 1025, 3, 64, 5, 9, 17, 2]; // more than one chunk of eight
  const make = () =>
    sizes.map((n, i) => {
      const p = tensor(Float32Array.from(randomArray(n, 200 + i)), {
        requiresGrad: true,
        category: "trainable",
      }).keep();
      p.grad = tensor(Float32Array.from(randomArray(n, 300 + i))).keep();
      return p;
    });
  const groupOf = (params: Tensor[], first: boolean) =>
    first
      ? { params, lr: 0.01, weightDecay: 0.1 }
      : { params, lr: 0.003, weightDecay: 0, betas: [0.8, 0.99] as [number, number] };
  const together = make(), apart = make();
  const multi = new AdamW([groupOf(together.slice(0, 6), true), groupOf(together.slice(6), false)]);
  multi.step(); // the first step also creates the moments (one fill each)
  const d0 = rt().dispatchCount;
  multi.step();
  const multiDispatches = rt().dispatchCount - d0;
  // The reference: each tensor in an optimizer of its own, so each update is a lone dispatch.
  const singles = apart.map((p, i) => new AdamW([groupOf([p], i < 6)]));
  for (let step = 0; step < 2; step++) for (const o of singles) o.step();
  for (let i = 0; i < sizes.length; i++) {
    assert.deepEqual(await together[i].read(), await apart[i].read(), `tensor ${i}`);
  }
  assert.ok(multiDispatches <= 3, `10 tensors took ${multiDispatches} dispatches`);
  for (const o of [multi, ...singles]) o.dispose();
  for (const t of [...together, ...apart]) t.dispose();
});
