/**
 * LISA on a tiny random LLaMA with a classification head: which blocks train in each interval,
 * exactly γ blocks get gradients, released optimizer state, deterministic runs and resume,
 * learning-rate groups, targeting errors, save/load.
 */
import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { setup } from "../helpers.ts";
import {
  backward,
  cast,
  crossEntropy,
  noGrad,
  type Optimizer,
  rngU32,
  rt,
  scope,
  scopeAsync,
  tensor,
} from "../../ops/mod.ts";
import type { Linear } from "../../models/module.ts";
import type { LlamaForCausalLM } from "../../models/llama.ts";
import {
  applyLisa,
  applyMethod,
  type LisaAdapter,
  type LisaConfig,
  lisaSample,
  writeInto,
} from "../../methods/mod.ts";
import { openSafetensors } from "../../models/safetensors.ts";
import { contextBuilder, tinyLlama } from "./support.ts";

await setup();

const { model } = tinyLlama({ layers: 4, seed: 21, initSeed: 4 });
const ctx = contextBuilder({
  targets: ["q_proj", "v_proj"],
  headModules: ["score"],
  baseModel: "tiny-llama",
  seed: 5,
});

const IDS = Int32Array.from([1, 4, 7, 2, 9, 3, 5, 8, 6, 10]);
const LAST = [4, 4];

const loss = (m: LlamaForCausalLM) =>
  crossEntropy(
    m.classify({ ids: tensor(IDS, [2, 5]) }, LAST),
    tensor(Int32Array.from([0, 1]), [2]),
  );

const logits = (m: LlamaForCausalLM) =>
  scopeAsync(() => noGrad(() => m.classify({ ids: tensor(IDS, [2, 5]) }, LAST)).read());

const blockOf = (name: string) => Number(/^model\.layers\.(\d+)\./.exec(name)?.[1] ?? -1);

interface Run {
  m: LlamaForCausalLM;
  adapter: LisaAdapter;
  opt: Optimizer;
}

function start(
  config: LisaConfig = { layers: 2, interval: 2, keepMoments: false },
  seed = 5,
): Run {
  const m = model();
  const adapter = applyLisa(m, config, ctx({ seed }));
  const groups = adapter.groups().map((g) => ({
    params: g.params,
    lr: 0.05,
    weightDecay: g.weightDecay,
  }));
  const opt = adapter.createOptimizer!(groups, {});
  return { m, adapter, opt };
}

/** One training step as the trainer takes it; returns the block indices that got gradients. */
function step(r: Run, s: number): number[] {
  scope(() => backward(loss(r.m)));
  const withGrad = new Set(
    r.m.namedParameters().filter(([, t]) => t.grad).map(([n]) => blockOf(n)).filter((b) => b >= 0),
  );
  r.adapter.beforeStep?.(s);
  r.opt.step();
  r.opt.zeroGrad();
  r.adapter.afterStep?.(s + 1, r.opt);
  return [...withGrad].sort((a, b) => a - b);
}

/** The sample from (seed, interval) by an independent partial Fisher–Yates over the same RNG. */
function expectedSample(seed: number, interval: number, n: number, k: number): number[] {
  const a = [...Array(n).keys()];
  for (let i = 0; i < k; i++) {
    const j = i + (rngU32((seed ^ 0x4c495341) >>> 0, interval, i) % (n - i));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a.slice(0, k).sort((x, y) => x - y);
}

Deno.test("LISA trains the sampled γ blocks in each interval of K steps (steps 0..3K), plus embedding and head", () => {
  const r = start();
  const seen: number[][] = [];
  for (let s = 0; s < 6; s++) {
    const expected = expectedSample(5, Math.floor(s / 2), 4, 2);
    deepStrictEqual(r.adapter.activeBlocks, expected, `active blocks at step ${s}`);
    const trained = step(r, s);
    deepStrictEqual(trained, expected, `blocks with gradients at step ${s}`);
    equal(trained.length, 2);
    seen.push(trained);
  }
  ok(new Set(seen.map((s) => s.join())).size > 1, "the sample changes between intervals");
  deepStrictEqual(lisaSample(5, 7, 4, 2), expectedSample(5, 7, 4, 2));
  // Every parameter outside the blocks trains.
  scope(() => backward(loss(r.m)));
  const outside = r.m.namedParameters().filter(([n]) => blockOf(n) < 0);
  deepStrictEqual(outside.map(([n]) => n).sort(), [
    "model.embed_tokens.weight",
    "model.norm.weight",
    "score.weight",
  ]);
  ok(outside.every(([, t]) => t.grad !== null));
  r.opt.zeroGrad();
  r.opt.dispose();
  r.m.dispose();
});

Deno.test("LISA releases the state of frozen blocks: optimizer bytes = 8 · (always-trained + γ active blocks)", () => {
  const base = rt().pool.stats().live.optimizer;
  const r = start({ layers: 1, interval: 1, keepMoments: false }, 5);
  const sizeOf = (pred: (n: string) => boolean) =>
    r.m.namedParameters().filter(([n]) => pred(n)).reduce((s, [, t]) => s + t.size, 0);
  const always = sizeOf((n) => blockOf(n) < 0);
  const blockSize = sizeOf((n) => blockOf(n) === 0);
  let changes = 0;
  let prev = "";
  const trainableBytes = rt().pool.stats().live.trainable;
  rt().pool.resetPeak();
  for (let s = 0; s < 5; s++) {
    const active = r.adapter.activeBlocks;
    step(r, s);
    // After the step the blocks that trained hold moments; afterStep has already released those
    // not sampled for the next interval.
    const keptActive = active.filter((b) => r.adapter.activeBlocks.includes(b)).length;
    equal(
      rt().pool.stats().live.optimizer - base,
      8 * (always + keptActive * blockSize),
      `step ${s}`,
    );
    equal(r.opt.stateBytes, 8 * (always + keptActive * blockSize));
    if (active.join() !== prev) changes++;
    prev = active.join();
    for (const [n, t] of r.m.namedParameters()) {
      const b = blockOf(n);
      const on = b < 0 || r.adapter.activeBlocks.includes(b);
      equal(t.requiresGrad, on, n);
      equal(t.category, on ? "trainable" : "weights", n);
    }
  }
  ok(changes >= 2, "blocks were swapped at least once");
  // Swapping blocks never counts more than γ blocks as trainable, even for a moment.
  equal(rt().pool.stats().peak.trainable, trainableBytes);
  r.opt.dispose();
  equal(rt().pool.stats().live.optimizer, base);
  r.m.dispose();
});

Deno.test("keepMoments (LMFlow's behaviour): a frozen block keeps its moments, and resumes them when sampled again", () => {
  const r = start({ layers: 1, interval: 1, keepMoments: true }, 5);
  const sampled = new Set<number>();
  for (let s = 0; s < 6; s++) {
    for (const b of r.adapter.activeBlocks) sampled.add(b);
    step(r, s);
  }
  const blockSize = (b: number) =>
    r.m.namedParameters().filter(([n]) => blockOf(n) === b).reduce((a, [, t]) => a + t.size, 0);
  const always = r.m.namedParameters().filter(([n]) => blockOf(n) < 0)
    .reduce((a, [, t]) => a + t.size, 0);
  ok(sampled.size >= 2, "more than one block trained");
  equal(
    r.opt.stateBytes,
    8 * (always + [...sampled].reduce((a, b) => a + blockSize(b), 0)),
    "every block ever sampled still holds its moments",
  );
  r.opt.dispose();
  r.m.dispose();
});

Deno.test("LISA runs are deterministic and resume at the right interval from the optimizer state", async () => {
  const a = start(), b = start();
  for (let s = 0; s < 5; s++) {
    step(a, s);
    step(b, s);
  }
  deepStrictEqual(await logits(a.m), await logits(b.m));
  // Resume: a run stopped after 3 steps continues exactly as one that was not stopped.
  const full = start();
  for (let s = 0; s < 3; s++) step(full, s);
  const saved = await full.opt.saveState();
  const named = full.adapter.groups().flatMap((g) =>
    g.names.map((n, i) => [n, g.params[i]] as const)
  );
  const values = await Promise.all(named.map(async ([, t]) => (await t.read()) as Float32Array));
  const resumed = start();
  const named2 = resumed.adapter.groups().flatMap((g) =>
    g.names.map((n, i) => [n, g.params[i]] as const)
  );
  named2.forEach(([n, t], i) => {
    equal(n, named[i][0]);
    writeInto(t, values[i]);
  });
  deepStrictEqual(resumed.adapter.activeBlocks, expectedSample(5, 0, 4, 2));
  resumed.opt.loadState(saved);
  deepStrictEqual(resumed.adapter.activeBlocks, expectedSample(5, 1, 4, 2));
  for (let s = 3; s < 5; s++) {
    step(full, s);
    step(resumed, s);
  }
  deepStrictEqual(await logits(resumed.m), await logits(full.m));
  const untrained = await logits(model());
  ok((await logits(full.m)).some((v, i) => v !== untrained[i]), "training changed the outputs");
  for (const r of [a, b, full, resumed]) {
    r.opt.dispose();
    r.m.dispose();
  }
});

Deno.test("LISA: every parameter is in a group, lr multipliers apply, targeting is an error", () => {
  const m = model();
  const total = m.namedParameters().reduce((s, [, t]) => s + t.size, 0);
  const groups = applyMethod("lisa", m, {}, ctx({ lrMultipliers: { v_proj: 4 } })).groups();
  equal(groups.reduce((s, g) => s + g.params.reduce((a, t) => a + t.size, 0), 0), total);
  const v = groups.find((g) => g.lrMultiplier === 4)!;
  deepStrictEqual(v.names, [0, 1, 2, 3].map((l) => `model.layers.${l}.self_attn.v_proj.weight`));
  ok(groups.some((g) => g.weightDecay === 0 && g.names.includes("model.norm.weight")));
  throws(
    () => applyMethod("lisa", model(), {}, ctx({ targets: ["q_proj", "k_proj"] })),
    /LISA samples whole transformer blocks/,
  );
  throws(
    () => applyMethod("lisa", model(), { layers: 5 }, ctx()),
    /5 blocks per interval, but the model has 4/,
  );
  throws(() => applyMethod("lisa", model(), { gamma: 2 }, ctx()), /method lisa: invalid options/);
  const defaults = applyMethod(
    "lisa",
    model(),
    {},
    ctx({ targets: ["v_proj", "q_proj"] }),
  ) as LisaAdapter;
  equal(defaults.activeBlocks.length, 2);
});

Deno.test("LISA save writes changed tensors (always-trained + sampled blocks); load restores identical outputs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = start({ layers: 1, interval: 2, keepMoments: false });
    for (let s = 0; s < 4; s++) step(r, s);
    const before = await logits(r.m);
    await r.adapter.save(dir);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/lisa_config.json`));
    equal(config.method, "lisa");
    equal(config.step, 4);
    const trained = [...new Set([0, 1, 2].flatMap((i) => expectedSample(5, i, 4, 1)))].sort();
    deepStrictEqual(config.trained_blocks, trained);
    const reader = await openSafetensors(`${dir}/lisa_model.safetensors`);
    const names = reader.names;
    reader.close();
    ok(names.includes("score.weight") && names.includes("model.embed_tokens.weight"));
    deepStrictEqual([...new Set(names.map(blockOf).filter((b) => b >= 0))].sort(), trained);
    const fresh = model();
    const adapter = applyMethod("lisa", fresh, { layers: 1, interval: 2 }, ctx());
    ok((await logits(fresh)).some((v, i) => v !== before[i]));
    await adapter.load(dir);
    deepStrictEqual(await logits(fresh), before);
    adapter.merge();
    deepStrictEqual(await logits(fresh), before);
    r.opt.dispose();
    r.m.dispose();
    fresh.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("LISA refuses f16 weights (every block trains in turn)", () => {
  const m = model();
  const q = m.getModule("model.layers.1.self_attn.q_proj") as Linear;
  q.setParameter("weight", cast(q.weight, "f16"));
  throws(
    () => applyMethod("lisa", m, {}, ctx()),
    /model\.layers\.1\.self_attn\.q_proj\.weight is stored as f16/,
  );
  m.dispose();
});
