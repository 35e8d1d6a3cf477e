/**
 * SIFT on a tiny random RoBERTa: the selection is the host top-k of the first batch's gradient,
 * the forward is W + scattered deltas (checked in float64 and by finite differences), only the
 * selected entries change, optimizer state is 2·k floats per matrix, the reference schedule (no
 * update of the increments at the selection step, no weight decay on them unless asked),
 * save/load/merge.
 */
import { deepStrictEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { assertClose, AWKWARD_SIZES, checkGradients, randomArray, rng, setup } from "../helpers.ts";
import { AdamW, backward, linear, noGrad, rt, scope, scopeAsync, tensor } from "../../ops/mod.ts";
import type { EncoderForSequenceClassification } from "../../models/encoder.ts";
import { openSafetensors } from "../../models/safetensors.ts";
import type { Linear } from "../../models/module.ts";
import {
  applyMethod,
  type DataPass,
  sift,
  type SiftAdapter,
  siftCount,
  sparseDelta,
} from "../../methods/mod.ts";
import {
  contextBuilder,
  evalLogits,
  fixedBatchLoss,
  tinyLlama,
  tinyRoberta,
  writeRandom,
} from "./support.ts";

await setup();

const { weights: W, model } = tinyRoberta();
const TARGETS = [
  "roberta.encoder.layer.0.attention.self.query",
  "roberta.encoder.layer.0.attention.self.value",
  "roberta.encoder.layer.1.attention.self.query",
  "roberta.encoder.layer.1.attention.self.value",
];

const ctx = contextBuilder();
const pass = (m: EncoderForSequenceClassification): DataPass => ({
  losses: (n) => Array.from({ length: n }, () => () => fixedBatchLoss(m)),
});

/** Dense gradients of the targeted weights for the test batch, computed independently. */
async function referenceGradients(): Promise<Float32Array[]> {
  const m = model();
  const weights = TARGETS.map((n) => (m.getModule(n) as Linear).weight);
  for (const w of weights) w.requiresGrad = true;
  scope(() => backward(fixedBatchLoss(m)));
  const grads = await Promise.all(weights.map(async (w) => (await w.grad!.read()) as Float32Array));
  m.dispose();
  return grads;
}

/** Host top-k by sorting every index by (|g| desc, index asc). */
function hostTopK(g: ArrayLike<number>, k: number): number[] {
  const idx = Array.from({ length: g.length }, (_, i) => i);
  idx.sort((a, b) => Math.abs(g[b]) - Math.abs(g[a]) || a - b);
  return idx.slice(0, k).sort((a, b) => a - b);
}

async function applied(
  options: Record<string, unknown> = { density: 0.05 },
): Promise<[EncoderForSequenceClassification, SiftAdapter]> {
  const m = model();
  const adapter = applyMethod("sift", m, options, ctx()) as SiftAdapter;
  await adapter.beforeTraining!(pass(m));
  return [m, adapter];
}

function randomizeValues(a: SiftAdapter): void {
  a.layers().forEach(([, l], i) => writeRandom(l.values, 40 + i, -0.5, 0.5));
}

Deno.test("SIFT selects the host top-k |gradient| of the first batch; starts equal to the base model", async () => {
  const base = await evalLogits(model());
  const m = model();
  const adapter = applyMethod("sift", m, { density: 0.05 }, ctx()) as SiftAdapter;
  throws(() => adapter.groups(), /run beforeTraining/);
  await adapter.beforeTraining!(pass(m));
  const grads = await referenceGradients();
  const k = siftCount(256, 0.05);
  equal(k, 13);
  deepStrictEqual(adapter.layers().map(([n]) => n), TARGETS);
  for (const [i, [name, layer]] of adapter.layers().entries()) {
    deepStrictEqual(Array.from(await layer.indices.read()), hostTopK(grads[i], k), name);
    ok((await layer.values.read()).every((v) => v === 0));
  }
  deepStrictEqual(await evalLogits(m), base);
  ok(
    m.namedParameters().every(([, t]) => t.grad === null),
    "the selection pass leaves no gradients behind",
  );
});

Deno.test("SIFT global selection takes the top-K over all targeted matrices together", async () => {
  const [, adapter] = await applied({ density: 0.05, global: true });
  const grads = await referenceGradients();
  const flat = grads.flatMap((g, i) => Array.from(g, (v, j) => ({ v: Math.abs(v), i, j })));
  flat.sort((a, b) => b.v - a.v || a.i - b.i || a.j - b.j);
  const chosen = flat.slice(0, 4 * 13);
  const got = await Promise.all(
    adapter.layers().map(async ([n, l]) => [n, Array.from(await l.indices.read())] as const),
  );
  const want = TARGETS.map((n, i) =>
    [n, chosen.filter((c) => c.i === i).map((c) => c.j).sort((a, b) => a - b)] as const
  )
    .filter(([, idx]) => idx.length > 0);
  deepStrictEqual(got, want);
  equal(got.reduce((s, [, idx]) => s + idx.length, 0), 52);
});

Deno.test("SIFT forward equals x·(W + scatter(indices, values))ᵀ + b in float64", async () => {
  const [, adapter] = await applied();
  randomizeValues(adapter);
  const [name, layer] = adapter.layers()[2];
  const x = Float32Array.from(randomArray(3 * 16, 9));
  const got = await scopeAsync(() => noGrad(() => layer.forward(tensor(x, [3, 16]))).read());
  const w = Float64Array.from(W.get(`${name}.weight`)!), b = W.get(`${name}.bias`)!;
  const idx = await layer.indices.read(), vals = await layer.values.read();
  idx.forEach((p, j) => (w[p] += vals[j]));
  const want = new Float64Array(3 * 16);
  for (let r = 0; r < 3; r++) {
    for (let o = 0; o < 16; o++) {
      let y = b[o];
      for (let i = 0; i < 16; i++) y += x[r * 16 + i] * w[o * 16 + i];
      want[r * 16 + o] = y;
    }
  }
  assertClose(got, want, { atol: 1e-5, rtol: 1e-4 }, "SIFT forward");
});

/** k distinct random flat indices of n, ascending. */
function distinct(n: number, k: number, seed: number): Int32Array {
  const r = rng(seed), all = Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < k; i++) {
    const j = i + Math.floor(r() * (n - i));
    [all[i], all[j]] = [all[j], all[i]];
  }
  return Int32Array.from(all.slice(0, k).sort((a, b) => a - b));
}

Deno.test("sparseDelta: W + scatter on awkward shapes; value gradients match finite differences", async () => {
  for (const [rows, cols] of [[1, 1], [7, 33], [33, 130], [130, 7]]) {
    const n = rows * cols, k = Math.max(1, Math.floor(n / 5));
    const idx = distinct(n, k, rows + cols);
    const w = randomArray(n, 1), v = randomArray(k, 2);
    const got = await scopeAsync(() =>
      noGrad(() =>
        sparseDelta(
          tensor(Float32Array.from(w), [rows, cols]),
          tensor(idx, [k]),
          tensor(Float32Array.from(v), [k]),
        )
      ).read()
    );
    const want = Float64Array.from(w);
    idx.forEach((p, j) => (want[p] += v[j]));
    assertClose(got, want, { atol: 1e-6, rtol: 1e-6 }, `sparseDelta [${rows}, ${cols}]`);
  }
  for (const cols of AWKWARD_SIZES.slice(1, 3)) {
    const rows = 7, n = rows * cols, k = 9;
    const idx = distinct(n, k, cols);
    const w = randomArray(n, 5);
    await checkGradients(
      ([x, values]) =>
        linear(
          x,
          sparseDelta(tensor(Float32Array.from(w), [rows, cols]), tensor(idx, [k]), values),
        ),
      ([x, values]) => {
        const we = Float64Array.from(w);
        idx.forEach((p, j) => (we[p] += values[j]));
        const y = new Float64Array(3 * rows);
        for (let r = 0; r < 3; r++) {
          for (let o = 0; o < rows; o++) {
            for (let i = 0; i < cols; i++) y[r * rows + o] += x[r * cols + i] * we[o * cols + i];
          }
        }
        return y;
      },
      [{ shape: [3, cols], values: randomArray(3 * cols, 6) }, {
        shape: [k],
        values: randomArray(k, 7),
      }],
    );
  }
});

Deno.test("SIFT trains only the values and the head: counts, optimizer bytes 2·4·k, only selected entries change", async () => {
  const [m, adapter] = await applied();
  const groups = adapter.groups();
  const named = groups.flatMap((g) => g.names.map((n, i) => [n, g.params[i]] as const));
  const head = 16 * 16 + 16 + 2 * 16 + 2;
  equal(named.reduce((s, [, t]) => s + t.size, 0), 4 * 13 + head);
  deepStrictEqual(
    named.filter(([n]) => n.endsWith(".sift.values")).map(([n]) => n),
    TARGETS.map((t) => `${t}.sift.values`),
  );
  scope(() => backward(fixedBatchLoss(m)));
  deepStrictEqual(
    m.namedParameters().filter(([, t]) => t.grad).map(([n]) => n).sort(),
    named.map(([n]) => n).sort(),
  );
  for (const [n, t] of m.namedParameters()) {
    equal(
      t.category,
      named.some(([tn]) => tn === n) ? "trainable" : "weights",
      n,
    );
  }
  const before = rt().pool.stats().live.optimizer;
  const opt = new AdamW(
    groups.map((g) => ({ params: g.params, lr: 0.05, weightDecay: g.weightDecay })),
  );
  for (let s = 0; s < 3; s++) {
    if (s > 0) scope(() => backward(fixedBatchLoss(m)));
    opt.step();
    opt.zeroGrad();
  }
  equal(opt.stateBytes, 2 * 4 * (4 * 13 + head));
  equal(rt().pool.stats().live.optimizer - before, 2 * 4 * (4 * 13 + head));
  const layers = adapter.layers();
  const indices = await Promise.all(layers.map(async ([, l]) => new Set(await l.indices.read())));
  adapter.merge();
  equal(adapter.layers().length, 0);
  for (const [i, name] of TARGETS.entries()) {
    const lin = m.getModule(name) as Linear;
    ok(lin.constructor.name === "Linear", `${name} is a plain Linear again`);
    const merged = await lin.weight.read(), orig = W.get(`${name}.weight`)!;
    const changed = [...merged.keys()].filter((p) => merged[p] !== Math.fround(orig[p]));
    ok(changed.length > 0, `${name} changed`);
    ok(changed.every((p) => indices[i].has(p)), `${name}: only selected entries changed`);
    deepStrictEqual(
      Array.from(await lin.bias!.read()),
      Array.from(W.get(`${name}.bias`)!, Math.fround),
      `${name} bias frozen`,
    );
  }
  opt.dispose();
  m.dispose();
});

Deno.test("step 0 (the selection's batch) leaves the increments alone while the head trains; increments take no weight decay unless incrementDecay", async () => {
  for (const incrementDecay of [false, true]) {
    const m = model();
    const adapter = applyMethod(
      "sift",
      m,
      { density: 0.05, incrementDecay },
      ctx({ weightDecay: 0.1 }),
    ) as SiftAdapter;
    await adapter.beforeTraining!(pass(m));
    const groups = adapter.groups();
    for (const g of groups) {
      const sparse = g.names.every((n) => n.endsWith(".sift.values"));
      if (sparse) equal(g.weightDecay, incrementDecay ? 0.1 : 0, g.label);
    }
    const opt = new AdamW(
      groups.map((g) => ({ params: g.params, lr: 0.05, weightDecay: g.weightDecay })),
    );
    const [, layer] = adapter.layers()[0];
    const head = m.namedParameters().find(([n]) => n === "classifier.out_proj.bias")![1];
    const head0 = await head.read();
    for (const step of [0, 1]) {
      scope(() => backward(fixedBatchLoss(m)));
      adapter.beforeStep!(step);
      equal(layer.values.grad === null, step === 0, `increment gradient at step ${step}`);
      opt.step();
      opt.zeroGrad();
      const values = await layer.values.read();
      equal(values.some((v) => v !== 0), step === 1, `increments after step ${step}`);
      if (step === 0) ok((await head.read()).some((v, i) => v !== head0[i]), "the head trained");
    }
    opt.dispose();
    m.dispose();
  }
});

Deno.test("SIFT save → load gives identical outputs; files hold I32 indices and F32 values; merge keeps outputs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const [m, adapter] = await applied({ density: 0.1, selectionBatches: 2 });
    randomizeValues(adapter);
    const before = await evalLogits(m);
    await adapter.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/sift_config.json`));
    equal(config.method, "sift");
    equal(config.selection_batches, 2);
    deepStrictEqual(config.layers[TARGETS[0]], { k: siftCount(256, 0.1), shape: [16, 16] });
    const reader = await openSafetensors(`${dir}/sift_model.safetensors`);
    const info = (n: string) => `${reader.info(n).dtype} [${reader.info(n).shape}]`;
    equal(info(`${TARGETS[1]}.sift.indices`), "I32 [26]");
    equal(info(`${TARGETS[1]}.sift.values`), "F32 [26]");
    equal(info("classifier.out_proj.weight"), "F32 [2,16]");
    equal(reader.names.length, 4 * 2 + 4);
    reader.close();
    const fresh = model();
    const again = applyMethod("sift", fresh, { density: 0.1 }, ctx());
    await again.load(dir);
    deepStrictEqual(await evalLogits(fresh), before);
    again.merge();
    assertClose(await evalLogits(fresh), before, { atol: 1e-6, rtol: 1e-5 }, "merged logits");
    await rejects(
      applyMethod("sift", model(), {}, ctx({ targets: ["key"] })).load(dir),
      /query\.sift\.indices belongs to no targeted Linear/,
    );
    throws(
      () => applyMethod("sift", model(), {}, ctx({ targets: ["nope"] })),
      /SIFT: no Linear module matches/,
    );
    throws(
      () => applyMethod("sift", model(), { density: 0 }, ctx()),
      /method sift: invalid options/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SIFT learning-rate multipliers group W_v's deltas apart", async () => {
  const m = model();
  const adapter = applyMethod("sift", m, {}, ctx({ lrMultipliers: { value: 4 } }));
  await adapter.beforeTraining!(pass(m));
  const v = adapter.groups().find((g) => g.lrMultiplier === 4)!;
  deepStrictEqual(v.names, [TARGETS[1], TARGETS[3]].map((t) => `${t}.sift.values`));
});

Deno.test("SIFT's default targets are the reference scripts' (GLUE: q, k, v, attention output; Alpaca: every LLaMA Linear)", () => {
  deepStrictEqual(sift.defaultTargets!(model()), [
    "query",
    "key",
    "value",
    "attention.output.dense",
  ]);
  deepStrictEqual(sift.defaultTargets!(tinyLlama({ layers: 1, seed: 2 }).model()), [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
  ]);
});
