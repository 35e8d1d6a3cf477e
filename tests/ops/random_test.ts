/**
 * The counter-based RNG: the WGSL generator equals its TS twin bit for bit, random tensors are
 * pure functions of (seed, stream, index), and their distributions hold on 100k samples.
 *
 * Statistical bounds are about five standard errors of each statistic; the samples are fixed by
 * the seed, so the tests are deterministic, and a wrong transform misses the bounds by far.
 */
import assert from "node:assert/strict";
import {
  defineKernel,
  empty,
  grid1d,
  linearIndex,
  randNormal,
  randUniform,
  RNG_WGSL,
  rngU32,
  rngUniform,
  rt,
  seedU32,
} from "../../ops/mod.ts";
import { assertClose, setup } from "../helpers.ts";

await setup();

const WG = 64;

/** Writes rng_u32(seed, stream, base + i) for i < n: one thread per value. */
const rawRng = defineKernel({
  name: "test_rng_u32",
  bindings: [{ name: "out", type: "u32", access: "read_write" }],
  params: [["n", "u32"], ["seed", "u32"], ["stream", "u32"], ["base", "u32"]],
  source: `${RNG_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(WG)};
  if (i >= params.n) { return; }
  out[i] = rng_u32(params.seed, params.stream, params.base + i);
}`,
});

Deno.test("WGSL rng_u32 equals rngU32 bit for bit", async () => {
  const n = 1000;
  const cases: [number, number, number][] = [
    [0, 0, 0],
    [1, 0, 0],
    [12345, 7, 100],
    [0xffffffff, 0xffffffff, 0],
    [seedU32(-42), 3, 0xfffffe00], // indices wrap past 2^32
    [0x9e3779b9, 1, 2 ** 31],
  ];
  for (const [seed, stream, base] of cases) {
    const out = empty([n], { dtype: "u32" });
    rt().dispatch(rawRng, [out], { n, seed, stream, base }, grid1d(Math.ceil(n / WG)));
    const got = await out.read();
    for (let i = 0; i < n; i++) {
      const expected = rngU32(seed, stream, (base + i) >>> 0);
      if (got[i] !== expected) {
        assert.fail(`seed ${seed} stream ${stream} index ${base + i}: ${got[i]} ≠ ${expected}`);
      }
    }
    out.dispose();
  }
});

Deno.test("randUniform(0, 1) is exactly rngUniform; tensors are pure in (seed, stream)", async () => {
  const n = 4099;
  const u = await randUniform([n], 0, 1, { seed: 2024, stream: 5 }).read();
  const expected = Float64Array.from({ length: n }, (_, i) => rngUniform(2024, 5, i));
  assertClose(u, expected, { atol: 0, rtol: 0 }, "randUniform vs rngUniform");
  const again = await randUniform([n], 0, 1, { seed: 2024, stream: 5 }).read();
  assert.deepEqual(again, u);
  const otherStream = await randUniform([n], 0, 1, { seed: 2024, stream: 6 }).read();
  const otherSeed = await randUniform([n], 0, 1, { seed: 2025, stream: 5 }).read();
  const same = (a: ArrayLike<number>) => Array.from(a).filter((v, i) => v === u[i]).length;
  assert.ok(same(otherStream) < 5, `streams 5 and 6 share ${same(otherStream)} values`);
  assert.ok(same(otherSeed) < 5, `seeds 2024 and 2025 share ${same(otherSeed)} values`);
  // Negative seeds fold into u32.
  assert.equal(seedU32(-1), 0xffffffff);
  assert.deepEqual(
    await randUniform([33], 0, 1, { seed: -1 }).read(),
    await randUniform([33], 0, 1, { seed: 0xffffffff }).read(),
  );
});

function moments(v: ArrayLike<number>): { mean: number; std: number; min: number; max: number } {
  let s = 0, min = Infinity, max = -Infinity;
  for (let i = 0; i < v.length; i++) {
    s += v[i];
    if (v[i] < min) min = v[i];
    if (v[i] > max) max = v[i];
  }
  const mean = s / v.length;
  let ss = 0;
  for (let i = 0; i < v.length; i++) ss += (v[i] - mean) ** 2;
  return { mean, std: Math.sqrt(ss / (v.length - 1)), min, max };
}

Deno.test("randUniform on 100k samples: range, moments and a flat histogram", async () => {
  const n = 100_000, low = -2, high = 3;
  const v = await randUniform([100, 1000], low, high, { seed: 7 }).read();
  const m = moments(v);
  assert.ok(m.min >= low && m.max < high, `range [${m.min}, ${m.max}] outside [${low}, ${high})`);
  // Standard error of the mean: 5/√12/√n ≈ 0.0046; of the std ≈ 0.0035.
  assert.ok(Math.abs(m.mean - 0.5) < 0.025, `mean ${m.mean}, expected 0.5 ± 0.025`);
  assert.ok(Math.abs(m.std - 5 / Math.sqrt(12)) < 0.02, `std ${m.std}, expected 1.443 ± 0.02`);
  // Ten bins of 10,000 expected, each with a standard deviation of √(n·0.1·0.9) ≈ 95.
  const bins = new Array(10).fill(0);
  for (const x of v) bins[Math.floor(((x - low) / (high - low)) * 10)]++;
  for (const [i, c] of bins.entries()) {
    assert.ok(Math.abs(c - n / 10) < 500, `bin ${i} holds ${c}, expected 10000 ± 500`);
  }
});

Deno.test("randNormal on 100k samples: mean, std, tail mass, and the Box–Muller formula", async () => {
  const n = 100_000, mu = 1, sigma = 2;
  const v = await randNormal([n], mu, sigma, { seed: 11, stream: 2 }).read();
  const m = moments(v);
  assert.ok(v.every(Number.isFinite), "non-finite normal sample");
  // Standard errors: mean σ/√n ≈ 0.0063, std σ/√(2n) ≈ 0.0045.
  assert.ok(Math.abs(m.mean - mu) < 0.032, `mean ${m.mean}, expected 1 ± 0.032`);
  assert.ok(Math.abs(m.std - sigma) < 0.025, `std ${m.std}, expected 2 ± 0.025`);
  // P(|z| < 1) = 0.6827 with a standard error of 0.0015 at this n.
  const inside = v.filter((x) => Math.abs(x - mu) < sigma).length / n;
  assert.ok(Math.abs(inside - 0.6827) < 0.0075, `P(|z| < 1) = ${inside}, expected 0.6827`);
  // The largest |z| Box–Muller can produce from 24-bit uniforms is √(2·ln 2^24) ≈ 5.77.
  assert.ok(Math.max(m.max - mu, mu - m.min) / sigma < 5.8);
  // Element i uses the uniforms at indices 2i and 2i + 1 of its stream.
  const ref = Float64Array.from({ length: 1000 }, (_, i) => {
    const u1 = rngUniform(11, 2, 2 * i), u2 = rngUniform(11, 2, 2 * i + 1);
    return mu + sigma * Math.sqrt(-2 * Math.log(1 - u1)) * Math.cos(2 * Math.PI * u2);
  });
  assertClose(v.slice(0, 1000), ref, { atol: 1e-4, rtol: 1e-4 }, "Box–Muller");
});
