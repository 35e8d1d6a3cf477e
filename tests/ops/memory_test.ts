/**
 * Memory and lifetimes: the size-class pool, exact per-category accounting, buffer reuse and the
 * parking rule, scopes and keep(), and the autograd tape's gradient accumulation and cleanup.
 *
 * Tests in this file share one pool, so every check works on differences from a snapshot taken at
 * its start (after a flush, so no earlier buffer is still parked) and resets peaks itself.
 */
import assert from "node:assert/strict";
import {
  add,
  assign,
  backward,
  CATEGORIES,
  type Category,
  clearTape,
  empty,
  exp,
  type MemoryStats,
  mul,
  neg,
  noGrad,
  rt,
  scope,
  scopeAsync,
  sizeClass,
  sum,
  tapeLength,
  type Tensor,
  tensor,
  withCategory,
} from "../../ops/mod.ts";
import { expectTensor, randomArray, setup } from "../helpers.ts";

await setup();

/** A snapshot after submitting pending work, with peaks restarted from the live values. */
function fresh(): MemoryStats {
  rt().flush();
  rt().pool.resetPeak();
  return rt().pool.stats();
}

/** Per-category change of `live` (or `peak`) since `before`. */
function delta(before: MemoryStats, field: "live" | "peak" = "live"): Record<Category, number> {
  const now = rt().pool.stats()[field];
  const out = {} as Record<Category, number>;
  for (const c of CATEGORIES) out[c] = now[c] - before[field][c];
  return out;
}

function only(values: Partial<Record<Category, number>>): Record<Category, number> {
  const out = {} as Record<Category, number>;
  for (const c of CATEGORIES) out[c] = values[c] ?? 0;
  return out;
}

// ---- the pool -----------------------------------------------------------------------------------

Deno.test("size classes cover every request with at most 25 % waste", () => {
  const requests: number[] = [];
  for (let b = 1; b <= 20000; b++) requests.push(b);
  for (let k = 8; k <= 40; k++) requests.push(2 ** k - 1, 2 ** k, 2 ** k + 1, 1.3 * 2 ** k | 0);
  for (const b of requests) {
    const c = sizeClass(b);
    assert.ok(c >= b, `class ${c} < request ${b}`);
    assert.equal(c % 4, 0, `class ${c} of ${b} is not a multiple of 4 bytes`);
    if (b > 256) assert.ok((c - b) / b <= 0.25, `class ${c} wastes more than 25 % of ${b}`);
    else assert.equal(c, 256);
  }
  // Four classes per power of two: (2^k, 2^(k+1)] holds exactly four of them.
  for (let k = 8; k < 30; k++) {
    const classes = new Set<number>();
    for (let i = 1; i <= 64; i++) classes.add(sizeClass(2 ** k + (i * 2 ** k) / 64));
    assert.equal(classes.size, 4, `classes above 2^${k}: ${[...classes]}`);
  }
});

Deno.test("live and peak bytes are exact per category", () => {
  const s0 = fresh();
  const w = empty([7, 33], { category: "weights" }); // 924 bytes
  const h = empty([7], { dtype: "f16", category: "weights" }); // 14 bytes
  const g = withCategory("grads", () => empty([130])); // 520 bytes
  const o = empty([1], { category: "optimizer", dtype: "u32" }); // 4 bytes
  const a = empty([3, 5]); // activations by default: 60 bytes
  assert.deepEqual(delta(s0), only({ weights: 938, grads: 520, optimizer: 4, activations: 60 }));
  const s1 = rt().pool.stats();
  assert.equal(s1.liveTotal - s0.liveTotal, 938 + 520 + 4 + 60);
  assert.equal(s1.liveAllocations - s0.liveAllocations, 5);
  assert.deepEqual(delta(s0, "peak"), delta(s0));

  // Views allocate nothing; storage goes back only when its last view is gone.
  const v = w.view([33, 7], [1, 33]);
  assert.deepEqual(delta(s0), only({ weights: 938, grads: 520, optimizer: 4, activations: 60 }));
  w.dispose();
  assert.equal(delta(s0).weights, 938);
  v.dispose();
  assert.equal(delta(s0).weights, 14);
  for (const t of [h, g, o, a]) t.dispose();
  assert.deepEqual(delta(s0), only({}));
  assert.deepEqual(
    delta(s0, "peak"),
    only({ weights: 938, grads: 520, optimizer: 4, activations: 60 }),
  );
  assert.equal(rt().pool.stats().liveAllocations, s0.liveAllocations);
});

Deno.test("peakTotal is the highest sum, not the sum of per-category peaks", () => {
  const s0 = fresh();
  const a = empty([250], { category: "activations" }); // 1000 bytes
  a.dispose();
  const b = empty([250], { category: "scratch" });
  const c = empty([10], { category: "scratch" }); // 40 bytes
  b.dispose();
  c.dispose();
  const s1 = rt().pool.stats();
  assert.equal(s1.peak.activations - s0.live.activations, 1000);
  assert.equal(s1.peak.scratch - s0.live.scratch, 1040);
  assert.equal(s1.peakTotal - s0.liveTotal, 1040);
  assert.equal(s1.liveTotal, s0.liveTotal);
  rt().pool.resetPeak();
  assert.equal(rt().pool.stats().peakTotal, s0.liveTotal);
});

Deno.test("released buffers are reused, parked while pending commands may read them", async () => {
  fresh();
  // An unusual size gets a class of its own: 300,000 bytes round up to 327,680.
  const r0 = rt().pool.stats().reservedBytes;
  const x = tensor(Float32Array.from(randomArray(75000, 1)), [75000]);
  const first = x.buffer;
  assert.equal(rt().pool.stats().reservedBytes - r0, sizeClass(300000));
  assert.equal(sizeClass(300000), 327680);
  x.dispose();
  const y = empty([75001]); // same class, nothing pending: the freed buffer comes back
  assert.equal(y.buffer, first);
  assert.equal(rt().pool.stats().reservedBytes - r0, 327680);

  // y is read by an encoded, unsubmitted dispatch; releasing it parks its buffer, so a new tensor
  // (whose upload runs before the pending dispatch) cannot overwrite what the dispatch reads.
  const values = Float32Array.from(randomArray(75001, 2));
  const src = tensor(values, [75001]);
  assign(y, src);
  const z = add(y, 1);
  y.dispose();
  const w = tensor(new Float32Array(75001).fill(-7), [75001]);
  assert.notEqual(w.buffer, first, "a parked buffer was handed out before the submit");
  await expectTensor(z, values.map((v) => Math.fround(v + 1)), { atol: 0 });
  // After the submit the parked buffer is free again.
  const again = empty([75000]);
  assert.equal(again.buffer, first);
  for (const t of [src, z, w, again]) t.dispose();
});

Deno.test("trim returns free buffers to the driver and leaves live ones alone", async () => {
  fresh();
  const keepAlive = tensor([1, 2, 3]);
  const big = empty([123457]);
  big.dispose();
  rt().flush();
  const before = rt().pool.stats();
  assert.ok(before.reservedBytes >= sizeClass(123457 * 4));
  rt().pool.trim();
  const after = rt().pool.stats();
  assert.ok(
    before.reservedBytes - after.reservedBytes >= sizeClass(123457 * 4),
    `trim freed ${before.reservedBytes - after.reservedBytes} bytes`,
  );
  assert.equal(after.liveTotal, before.liveTotal);
  await expectTensor(keepAlive, [1, 2, 3], { atol: 0 });
  keepAlive.dispose();
});

Deno.test("releasing an allocation twice throws; disposing a tensor twice does not", () => {
  const pool = rt().pool;
  const a = pool.acquire(100, "scratch");
  pool.release(a);
  assert.throws(() => pool.release(a), /released twice/);
  const t = tensor([1, 2], { name: "encoder.layer.0.weight" });
  t.dispose();
  t.dispose();
  assert.ok(t.disposed);
  assert.throws(() => t.buffer, /use of a disposed tensor \(encoder\.layer\.0\.weight\)/);
});

// ---- scopes -------------------------------------------------------------------------------------

Deno.test("scope disposes what it created except results and kept tensors", () => {
  const s0 = fresh();
  let inner: Tensor[] = [];
  const out = scope(() => {
    const a = tensor([1, 2, 3]);
    const b = mul(a, 2);
    const k = tensor([5]).keep();
    inner = [a, b, k];
    return { result: b, also: [k] };
  });
  const [a, b, k] = inner;
  assert.ok(a.disposed, "an intermediate survived its scope");
  assert.ok(!b.disposed && out.result === b);
  assert.ok(!k.disposed && k.kept);
  assert.equal(delta(s0).activations, 12 + 4);
  b.dispose();
  k.dispose();
  assert.deepEqual(delta(s0), only({}));
});

Deno.test("nested scopes hand results outward, and the outer scope frees them", () => {
  const s0 = fresh();
  let fromInner: Tensor | null = null;
  let kept: Tensor | null = null;
  const outer = scope(() => {
    fromInner = scope(() => {
      const t = tensor([1, 2]);
      kept = tensor([3]).keep();
      return add(t, 1);
    });
    assert.ok(!fromInner.disposed, "the inner scope freed its own result");
    const survivor = mul(fromInner, 3);
    return survivor;
  });
  assert.ok(fromInner!.disposed, "the outer scope did not free the inner scope's result");
  assert.ok(!kept!.disposed, "a kept tensor was freed by an enclosing scope");
  assert.ok(!outer.disposed);
  outer.dispose();
  kept!.dispose();
  assert.deepEqual(delta(s0), only({}));
});

Deno.test("a throwing scope still frees everything, and scopeAsync waits for its promise", async () => {
  const s0 = fresh();
  let leaked: Tensor | null = null;
  assert.throws(() =>
    scope(() => {
      leaked = tensor([1, 2, 3]);
      throw new Error("boom");
    }), /boom/);
  assert.ok(leaked!.disposed);
  // The failed scope is off the stack: a tensor created now is not freed by it later.
  const after = tensor([4]);
  assert.ok(!after.disposed);
  after.dispose();

  let early: Tensor | null = null;
  const r = await scopeAsync(async () => {
    early = tensor([1, 2]);
    const y = exp(early);
    await y.read(); // the scope must survive this await
    assert.ok(!early.disposed);
    return y;
  });
  assert.ok(early!.disposed && !r.disposed);
  r.dispose();
  await assert.rejects(
    scopeAsync(async () => {
      leaked = tensor([1]);
      await Promise.resolve();
      throw new Error("async boom");
    }),
    /async boom/,
  );
  assert.ok(leaked!.disposed);
  assert.deepEqual(delta(s0), only({}));
});

// ---- autograd -----------------------------------------------------------------------------------

Deno.test("autograd: a tensor used twice accumulates, and .grad accumulates across backwards", async () => {
  const values = [0.5, -1.25, 2, 3.5];
  const x = tensor(values, { requiresGrad: true });
  // L = Σ (x·x + x) → dL/dx = 2x + 1.
  scope(() => backward(sum(add(mul(x, x), x))));
  await expectTensor(x.grad!, values.map((v) => 2 * v + 1), { atol: 1e-6 });
  assert.equal(x.grad!.category, "grads");
  scope(() => backward(sum(mul(x, 3))));
  await expectTensor(x.grad!, values.map((v) => 2 * v + 4), { atol: 1e-6 });
  assert.equal(tapeLength(), 0);
  x.dispose();
});

Deno.test("autograd: frozen inputs get no gradient and cost no gradient memory", async () => {
  const s0 = fresh();
  const x = tensor([1, 2, 3, 4, 5, 6, 7], { requiresGrad: true, category: "trainable" });
  const w = tensor([0.5, 1, 1.5, 2, 2.5, 3, 3.5], { category: "weights" });
  scope(() => backward(sum(exp(mul(x, w)))));
  assert.equal(w.grad, null);
  assert.ok(!w.requiresGrad);
  // Only the leaf's gradient remains: every intermediate gradient was released.
  assert.deepEqual(delta(s0), only({ weights: 28, trainable: 28, grads: 28 }));
  const host = [1, 2, 3, 4, 5, 6, 7].map((v, i) => (i + 1) * 0.5 * Math.exp(v * (i + 1) * 0.5));
  await expectTensor(x.grad!, host, { rtol: 1e-5 });
  x.dispose(); // also frees x.grad
  w.dispose();
  assert.deepEqual(delta(s0), only({}));
});

Deno.test("autograd: noGrad records nothing; backward needs a scalar or a gradOutput", async () => {
  clearTape();
  const x = tensor([1, 2, 3], { requiresGrad: true });
  const y = noGrad(() => mul(x, 2));
  assert.equal(tapeLength(), 0);
  assert.ok(!y.requiresGrad);
  assert.throws(() => backward(y), /does not depend on any tensor that requires grad/);

  const z = mul(x, x);
  assert.equal(tapeLength(), 1);
  assert.throws(() => backward(z), /loss must be a scalar, got shape \[3\]/);
  backward(z, tensor([1, 0.5, -1]));
  await expectTensor(x.grad!, [2, 2, -6], { atol: 0 });
  assert.equal(tapeLength(), 0);
  for (const t of [x, y, z]) t.dispose();
});

// ---- releasing intermediates ------------------------------------------------------------------

Deno.test("release: a tensor a rule reads lives until that rule has run; others go at once", async () => {
  const s0 = fresh();
  const values = [0.5, -1, 2];
  const x = tensor(values, { requiresGrad: true });
  scope(() => {
    // exp's rule reads its output h; mul by a number and neg read nothing of the forward.
    const h = exp(x);
    const n = mul(neg(h), 3);
    const y = sum(mul(n, h));
    h.release();
    n.release();
    assert.ok(!h.disposed, "exp's and the product's rules still read h");
    assert.ok(n.disposed === false, "the product's rule for h reads n");
    const live = rt().pool.stats().live.activations;
    backward(y);
    assert.ok(h.disposed && n.disposed, "released tensors go once their last rule has run");
    assert.ok(rt().pool.stats().live.activations < live);
  });
  // y = Σ −3·e^{2x} → dy/dx = −6·e^{2x}.
  await expectTensor(x.grad!, values.map((v) => -6 * Math.exp(2 * v)), { rtol: 1e-5 });
  x.dispose();
  const s1 = fresh();
  scope(() => {
    const leaf = tensor(values, { requiresGrad: true });
    const m = neg(leaf);
    const z = sum(mul(m, 2));
    m.release(); // neither rule reads m
    assert.ok(m.disposed);
    backward(z);
    assert.equal(leaf.grad!.category, "grads");
    leaf.dispose();
  });
  assert.deepEqual(delta(s1), only({}));
  assert.deepEqual(delta(s0), only({}));
});

Deno.test("release: a product's rule keeps only the operand the other's gradient needs", () => {
  const s0 = fresh();
  const w = tensor([1, 2, 3], { category: "weights" }); // frozen: no gradient, so a is not read
  const x = tensor([4, 5, 6], { requiresGrad: true });
  scope(() => {
    const a = exp(x);
    const b = exp(x);
    const y = sum(add(mul(a, w), mul(w, b)));
    for (const t of [a, b]) t.release();
    // exp's rule reads its output: both stay until backward has run it.
    assert.ok(!a.disposed && !b.disposed);
    backward(y);
    assert.ok(a.disposed && b.disposed);
    const c = add(x, 1);
    const z = sum(mul(c, w));
    c.release(); // add reads nothing, mul(c, w)'s rule for c reads w only
    assert.ok(c.disposed);
    backward(z);
  });
  w.dispose();
  x.dispose();
  assert.deepEqual(delta(s0), only({}));
});

Deno.test("release: clearTape frees what only the dropped rules held; kept tensors stay", () => {
  const s0 = fresh();
  const x = tensor([1, 2], { requiresGrad: true }).keep();
  const h = exp(x);
  h.release();
  x.release(); // a kept tensor (a parameter) is never released this way
  assert.ok(!h.disposed && !x.disposed);
  clearTape();
  assert.ok(h.disposed, "the tape no longer needs h");
  assert.ok(!x.disposed);
  // Under noGrad nothing is recorded, so a release frees at once.
  const e = noGrad(() => exp(x));
  e.release();
  assert.ok(e.disposed);
  x.dispose();
  assert.deepEqual(delta(s0), only({}));
});

Deno.test("backward: intermediate gradients count as activations, a leaf's gradient as grads", () => {
  const s0 = fresh();
  const w = tensor(new Float32Array(256).fill(0.5), { requiresGrad: true, category: "trainable" });
  const x = tensor(new Float32Array(256).fill(2), { category: "weights" });
  scope(() => {
    // Three intermediates of 1 KiB each; only w's gradient (1 KiB) is a "grads" allocation.
    backward(sum(exp(mul(exp(mul(w, x)), x))));
  });
  const peak = rt().pool.stats().peak.grads - s0.live.grads;
  assert.equal(peak, 1024, `grads peaked at ${peak} bytes, w's gradient is 1024`);
  assert.deepEqual(delta(s0), only({ weights: 1024, trainable: 1024, grads: 1024 }));
  w.dispose();
  x.dispose();
});
