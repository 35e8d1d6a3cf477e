/**
 * Dropout and its counter-based RNG: the WGSL `rng_u32` equals the TS `rngU32` bit for bit, the
 * mask matches a host rebuild of the documented rule on awkward and strided shapes, (seed, stream)
 * reproduce it exactly and other pairs change it, the dropped fraction is p within a stated bound,
 * the identity and all-zero edge cases, the backward rule by finite differences, and dropoutStream.
 */
import assert from "node:assert/strict";
import {
  backward,
  dropout,
  dropoutStream,
  dropoutThreshold,
  empty,
  map,
  mul,
  ones,
  RNG_WGSL,
  rngU32,
  rt,
  scope,
  scopeAsync,
  seedU32,
  sum,
  tensor,
  transpose,
} from "../../ops/mod.ts";
import { assertClose, checkGradients, randomArray, setup } from "../helpers.ts";

await setup();

/** Host rebuild of dropout on row-major `x`: the reference every GPU result is compared with. */
function dropoutRef(
  x: ArrayLike<number>,
  p: number,
  seed: number,
  stream: number,
): Float64Array {
  const threshold = dropoutThreshold(p);
  const scale = Math.fround(1 / (1 - p));
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const keep = rngU32(seedU32(seed), stream, i) >= threshold;
    out[i] = keep ? Math.fround(Math.fround(x[i]) * scale) : 0;
  }
  return out;
}

Deno.test("WGSL rng_u32 equals the TS rngU32 bit for bit", async () => {
  const n = 4096;
  const cases = [
    { seed: 0, stream: 0, base: 0 },
    { seed: 1234, stream: 7, base: 0 },
    { seed: seedU32(-5), stream: 0xfffffffe, base: 0x7ffff800 },
    { seed: 0xffffffff, stream: 1, base: 0xfffff800 }, // indices wrap past 2^32 - 1
  ];
  for (const { seed, stream, base } of cases) {
    await scopeAsync(async () => {
      const out = empty([n], { dtype: "u32" });
      map([], "rng_u32(u_seed, u_stream, i + u_base)", {
        out,
        compute: "u32",
        uints: { seed, stream, base },
        helpers: RNG_WGSL,
      });
      const gpuBits = await out.read();
      const hostBits = new Uint32Array(n);
      for (let i = 0; i < n; i++) hostBits[i] = rngU32(seed, stream, (base + i) >>> 0);
      assert.deepEqual(gpuBits, hostBits, `seed ${seed} stream ${stream} base ${base}`);
    });
  }
});

Deno.test("dropout matches the host mask rule on awkward shapes", async () => {
  const cases: { shape: number[]; p: number }[] = [
    { shape: [1], p: 0.5 },
    { shape: [7, 33], p: 0.1 },
    { shape: [130, 7], p: 0.5 },
    { shape: [2, 3, 33], p: 0.9 },
  ];
  for (const [c, { shape, p }] of cases.entries()) {
    await scopeAsync(async () => {
      const n = shape.reduce((a, b) => a * b, 1);
      const x = Float32Array.from(randomArray(n, c + 1));
      const y = dropout(tensor(x, shape), p, { seed: 17 + c, stream: 3 });
      assert.deepEqual(y.shape, shape);
      assertClose(await y.read(), dropoutRef(x, p, 17 + c, 3), { atol: 0, rtol: 0 }, `p ${p}`);
    });
  }
});

Deno.test("dropout of a strided view masks by logical position", async () => {
  await scopeAsync(async () => {
    const base = Float32Array.from(randomArray(13 * 7, 5));
    const y = dropout(transpose(tensor(base, [13, 7])), 0.4, { seed: 8, stream: 2 });
    const logical = new Float32Array(7 * 13);
    for (let a = 0; a < 7; a++) for (let b = 0; b < 13; b++) logical[a * 13 + b] = base[b * 7 + a];
    assertClose(await y.read(), dropoutRef(logical, 0.4, 8, 2), { atol: 0, rtol: 0 });
  });
});

Deno.test("same (seed, stream) gives the same mask; another seed or stream another", async () => {
  await scopeAsync(async () => {
    const x = ones([4099]);
    const mask = async (seed: number, stream: number) =>
      Array.from(await dropout(x, 0.5, { seed, stream }).read(), (v) => v !== 0);
    const a = await mask(1, 0);
    assert.deepEqual(await mask(1, 0), a);
    // For p = 0.5 two independent masks differ in about half the places.
    for (const other of [await mask(2, 0), await mask(1, 1)]) {
      const differing = a.filter((keep, i) => keep !== other[i]).length;
      assert.ok(differing > 4099 * 0.4, `only ${differing} of 4099 mask entries differ`);
    }
  });
});

Deno.test("the dropped fraction is p within 0.01 on 100k elements", async () => {
  // The fraction's standard deviation is at most sqrt(0.25 / 1e5) ≈ 0.0016, so 0.01 is > 6σ.
  const n = 100_000;
  await scopeAsync(async () => {
    const x = ones([n]);
    for (const p of [0.1, 0.3, 0.5, 0.9]) {
      const y = await dropout(x, p, { seed: 2024, stream: Math.round(p * 10) }).read();
      let dropped = 0;
      for (const v of y) if (v === 0) dropped++;
      const kept = y.find((v) => v !== 0)!;
      assertClose([kept], [Math.fround(1 / (1 - p))], { atol: 0, rtol: 1e-7 }, "kept scale");
      assert.ok(Math.abs(dropped / n - p) < 0.01, `p ${p}: dropped fraction ${dropped / n}`);
    }
  });
});

Deno.test("p = 0 and evaluation mode return x with no kernel; p = 1 gives zeros", async () => {
  await scopeAsync(async () => {
    const x = tensor(Float32Array.from(randomArray(33, 1)), [33], { requiresGrad: true });
    const before = rt().dispatchCount;
    assert.equal(dropout(x, 0, { seed: 1, stream: 0 }), x);
    assert.equal(dropout(x, 0.5, { seed: 1, stream: 0, training: false }), x);
    assert.equal(rt().dispatchCount, before);
    const y = dropout(x, 1, { seed: 1, stream: 0 });
    assert.deepEqual(Array.from(await y.read()), new Array(33).fill(0));
    backward(sum(mul(y, 3)));
    assert.deepEqual(Array.from(await x.grad!.read()), new Array(33).fill(0));
    x.dispose();
  });
});

Deno.test("dropout stores no mask: the forward allocates only its output", async () => {
  await scopeAsync(async () => {
    const x = tensor(Float32Array.from(randomArray(1000, 3)), [1000], { requiresGrad: true });
    const live = rt().pool.stats().liveAllocations;
    const y = dropout(x, 0.25, { seed: 9, stream: 1 });
    assert.equal(rt().pool.stats().liveAllocations, live + 1);
    backward(sum(y));
    // d(sum y)/dx is the mask times 1/(1 - p), rebuilt from (seed, stream) alone.
    const expected = dropoutRef(new Float32Array(1000).fill(1), 0.25, 9, 1);
    assertClose(await x.grad!.read(), expected, { atol: 0, rtol: 0 });
    x.dispose();
  });
});

Deno.test("dropout backward regenerates the mask (finite differences)", async () => {
  for (const [p, shape] of [[0.3, [7, 13]], [0.5, [130]]] as const) {
    const n = shape.reduce((a: number, b: number) => a * b, 1);
    await checkGradients(
      ([x]) => dropout(x, p, { seed: 42, stream: 5 }),
      ([x]) => dropoutRef(x, p, 42, 5).map((v, i) => (v === 0 ? 0 : x[i] / (1 - p))),
      [{ shape: [...shape], values: randomArray(n, n) }],
    );
  }
});

Deno.test("dropout validates p, seed, stream and dtype", () => {
  scope(() => {
    const x = ones([3]);
    for (const p of [-0.1, 1.5, NaN]) {
      assert.throws(() => dropout(x, p, { seed: 1, stream: 0 }), /p must be in \[0, 1\]/);
    }
    assert.throws(() => dropout(x, 0.5, { seed: 1.5, stream: 0 }), /seed must be an integer/);
    assert.throws(() => dropout(x, 0.5, { seed: 1, stream: -1 }), /stream must be an integer/);
    assert.throws(
      () => dropout(tensor(new Int32Array(3)), 0.5, { seed: 1, stream: 0 }),
      /must be f32 or f16/,
    );
  });
});

Deno.test("dropoutStream gives every (step, site) its own stream", () => {
  const seen = new Set<number>();
  for (let step = 0; step < 50; step++) {
    for (let site = 0; site < 24; site++) seen.add(dropoutStream(step, site, 24));
  }
  assert.equal(seen.size, 50 * 24);
  assert.equal(dropoutStream(2 ** 32 / 8, 3, 8), 3); // wraps to 32 bits
  assert.throws(() => dropoutStream(0, 24, 24), /site must be an integer in \[0, 24\)/);
  assert.throws(() => dropoutStream(-1, 0, 24), /step must be an integer ≥ 0/);
});

Deno.test("dropout rowStep: rows gathered every k rows get the masks of those rows of the whole", async () => {
  const [rows, cols, step] = [12, 10, 4];
  const full = ones([rows, cols]);
  const whole = await dropout(full, 0.4, { seed: 9, stream: 3 }).read();
  const gathered = ones([rows / step, cols]);
  const some = await dropout(gathered, 0.4, { seed: 9, stream: 3, rowStep: step }).read();
  for (let r = 0; r < rows / step; r++) {
    assert.deepEqual(
      Array.from(some.slice(r * cols, (r + 1) * cols)),
      Array.from(whole.slice(r * step * cols, (r * step + 1) * cols)),
      `row ${r}`,
    );
  }
  assert.throws(() => dropout(gathered, 0.4, { seed: 9, stream: 3, rowStep: 0 }), /rowStep/);
});
