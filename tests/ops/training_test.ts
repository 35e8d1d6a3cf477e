/**
 * The engine end to end: a small MLP trained with AdamW fits a real-valued function, and a long
 * training loop (every step inside a scope) keeps GPU memory exactly flat.
 */
import assert from "node:assert/strict";
import {
  AdamW,
  add,
  backward,
  cosineSchedule,
  linear,
  mean,
  mul,
  noGrad,
  rt,
  scope,
  scopeAsync,
  sub,
  sum,
  tanh,
  tapeLength,
  type Tensor,
  tensor,
} from "../../ops/mod.ts";
import { randomArray, setup } from "../helpers.ts";

await setup();

interface Mlp {
  params: Tensor[];
  forward(x: Tensor): Tensor;
  dispose(): void;
}

/** A tanh MLP with PyTorch's default nn.Linear initialisation U(±1/√dIn), seeded. */
function mlp(sizes: number[], seed: number): Mlp {
  const layers = sizes.slice(1).map((dOut, i) => {
    const dIn = sizes[i];
    const bound = 1 / Math.sqrt(dIn);
    const opts = { requiresGrad: true, category: "trainable" as const };
    // weight: [dOut, dIn]
    const weight = tensor(Float32Array.from(randomArray(dOut * dIn, seed + 2 * i, -bound, bound)), [
      dOut,
      dIn,
    ], { ...opts, name: `layers.${i}.weight` }).keep();
    const bias = tensor(Float32Array.from(randomArray(dOut, seed + 2 * i + 1, -bound, bound)), [
      dOut,
    ], { ...opts, name: `layers.${i}.bias` }).keep();
    return { weight, bias };
  });
  return {
    params: layers.flatMap((l) => [l.weight, l.bias]),
    forward(x: Tensor): Tensor {
      let h = x;
      layers.forEach((l, i) => {
        h = linear(h, l.weight, l.bias);
        if (i < layers.length - 1) h = tanh(h);
      });
      return h;
    },
    dispose(): void {
      for (const l of layers) {
        l.weight.dispose();
        l.bias.dispose();
      }
    },
  };
}

/** y = sin(3·x1) + x2² on `n` seeded points of [−1, 1]². */
function problem(n: number, seed: number): { x: Tensor; y: Tensor } {
  const xs = randomArray(2 * n, seed);
  const ys = new Float32Array(n);
  for (let i = 0; i < n; i++) ys[i] = Math.sin(3 * xs[2 * i]) + xs[2 * i + 1] ** 2;
  return {
    x: tensor(Float32Array.from(xs), [n, 2]).keep(),
    y: tensor(ys, [n, 1]).keep(),
  };
}

function mse(pred: Tensor, y: Tensor): Tensor {
  const d = sub(pred, y);
  return mean(mul(d, d));
}

/** One full-batch step inside a scope, then a submit (as a real loop does once per step). */
function trainStep(model: Mlp, opt: AdamW, x: Tensor, y: Tensor): void {
  scope(() => {
    backward(mse(model.forward(x), y));
    opt.step();
    opt.zeroGrad();
  });
  rt().flush();
}

async function evalLoss(model: Mlp, x: Tensor, y: Tensor): Promise<number> {
  const loss = noGrad(() => scope(() => mse(model.forward(x), y)));
  const v = await loss.item();
  loss.dispose();
  return v;
}

Deno.test("training: a 2→32→32→1 tanh MLP fits sin(3·x1) + x2² on 256 points to MSE < 0.01", async () => {
  const { x, y } = problem(256, 1);
  const model = mlp([2, 32, 32, 1], 100);
  const steps = 300;
  const opt = new AdamW([{ params: model.params, lr: 2e-2, weightDecay: 0 }], {
    schedule: cosineSchedule({ warmupSteps: 10, totalSteps: steps }),
  });
  const initial = await evalLoss(model, x, y);
  for (let i = 0; i < steps; i++) trainStep(model, opt, x, y);
  const final = await evalLoss(model, x, y);
  console.log(`MLP fit: MSE ${initial.toFixed(4)} → ${final.toExponential(3)} in ${steps} steps`);
  assert.ok(initial > 0.2, `the initial MSE ${initial} should be that of an untrained model`);
  assert.ok(final < 0.01, `final MSE ${final} should be < 0.01`);
  opt.dispose();
  model.dispose();
  x.dispose();
  y.dispose();
});

Deno.test("training: 200 steps each in a scope keep memory flat (live bytes and allocations, pool reserve)", async () => {
  const { x, y } = problem(64, 2);
  const model = mlp([2, 32, 32, 1], 200);
  const opt = new AdamW([{ params: model.params, lr: 1e-2, weightDecay: 0.01 }], {
    schedule: cosineSchedule({ warmupSteps: 5, totalSteps: 200 }),
    maxGradNorm: 1,
  });
  const pool = rt().pool;
  const snapshots = new Map<number, ReturnType<typeof pool.stats>>();
  const norms: number[] = [];
  const first = await evalLoss(model, x, y);
  for (let step = 1; step <= 200; step++) {
    trainStep(model, opt, x, y);
    if (step % 50 === 0) norms.push(await opt.gradNorm!.item()); // the loop's every-N read
    if (step === 10 || step === 100 || step === 200) snapshots.set(step, pool.stats());
  }
  const last = await evalLoss(model, x, y);
  const [s10, s100, s200] = [10, 100, 200].map((s) => snapshots.get(s)!);
  console.log(
    `flat memory: live ${s10.liveTotal} B in ${s10.liveAllocations} allocations; reserved ` +
      `${s10.reservedBytes} / ${s100.reservedBytes} / ${s200.reservedBytes} B at steps 10/100/200; ` +
      `loss ${first.toFixed(4)} → ${last.toFixed(4)}; grad norms ${norms.map((n) => n.toFixed(3))}`,
  );
  assert.equal(s200.liveTotal, s10.liveTotal, "live bytes at step 200 vs step 10");
  assert.equal(s200.liveAllocations, s10.liveAllocations, "live allocations at step 200 vs 10");
  assert.deepEqual(s200.live, s10.live, "live bytes per category");
  assert.equal(s200.reservedBytes, s100.reservedBytes, "the pool's reserve stopped growing");
  assert.equal(tapeLength(), 0, "the tape is empty between steps");
  assert.ok(norms.every((n) => Number.isFinite(n) && n > 0), `grad norms ${norms}`);
  assert.ok(last < first, `loss should fall: ${first} → ${last}`);
  opt.dispose();
  model.dispose();
  x.dispose();
  y.dispose();
});

Deno.test("autograd: shared gradients are summed, adopted leaf grads stay apart, grads are exact", async () => {
  await scopeAsync(async () => {
    const x = tensor([1, -2, 3], { requiresGrad: true });
    const w = tensor([0.5, 2, -1], { requiresGrad: true });
    // add(x, x): the pass-through g goes to x twice (adopted once, accumulated once).
    // y = x·w is used by two adds, so its pending gradient is summed in place.
    const y = mul(x, w);
    const z = add(add(y, y), add(x, x));
    backward(sum(mul(z, tensor([1, 10, 100]))));
    // dz/dx = 2w + 2, dz/dw = 2x, weighted by [1, 10, 100].
    assert.deepEqual(await x.grad!.toArray(), [3, 60, 0]);
    assert.deepEqual(await w.grad!.toArray(), [2, -40, 600]);
    assert.equal(x.grad!.sharesStorage(w.grad!), false);
    // A second backward accumulates into the adopted .grad buffers.
    backward(sum(add(x, w)));
    assert.deepEqual(await x.grad!.toArray(), [4, 61, 1]);
    assert.deepEqual(await w.grad!.toArray(), [3, -39, 601]);
    x.dispose();
    w.dispose();
  });
});
