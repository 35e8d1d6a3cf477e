/**
 * matmul and linear against a plain-TS float64 reference, for every kernel variant forced in
 * turn: awkward sizes (1, 7, 33, 130, not multiples of any tile), broadcast batches, transposed
 * views read in place, f16 B, rank-1 operands, fused bias, the texture variant's chunking past
 * the texture size limit; the variant registry's choice rules; and the backward rules of both by
 * finite differences.
 */
import assert from "node:assert/strict";
import {
  add,
  autotuneMatmul,
  backward,
  clearPackCache,
  defineKernel,
  dropout,
  expand,
  fillInto,
  gelu as geluOp,
  type Gpu,
  gpu,
  linear,
  linearResidual,
  lowRankLinear,
  MATMUL,
  matmul,
  matmulKey,
  matmulRaw,
  type MatmulShapes,
  mul as mulOp,
  packCacheBytes,
  rt,
  scopeAsync,
  setPackByCopy,
  slice,
  sum,
  type Tensor,
  tensor,
  transpose,
  withVariant,
} from "../../ops/mod.ts";
import {
  assertClose,
  AWKWARD_SIZES,
  bitsOf,
  checkGradients,
  randomArray,
  setup,
  withKeptTextureBudget,
} from "../helpers.ts";

await setup();

const VARIANTS = MATMUL.variantNames();
/** f32 accumulation over K ≤ 130 of products of values in [-1, 1]. */
const TOL = { atol: 2e-5, rtol: 1e-4 };

// ---- the reference ------------------------------------------------------------------------------

function stridesOf(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** torch.matmul semantics in float64 on row-major arrays. */
function refMatmul(
  a: ArrayLike<number>,
  aShape: readonly number[],
  b: ArrayLike<number>,
  bShape: readonly number[],
): { values: Float64Array; shape: number[] } {
  const as = aShape.length === 1 ? [1, aShape[0]] : [...aShape];
  const bs = bShape.length === 1 ? [bShape[0], 1] : [...bShape];
  const [M, K] = as.slice(-2), [K2, N] = bs.slice(-2);
  if (K !== K2) throw new Error("reference: inner dims differ");
  const ab = as.slice(0, -2), bb = bs.slice(0, -2);
  const rank = Math.max(ab.length, bb.length);
  const pad = (s: number[]) => [...new Array(rank - s.length).fill(1), ...s];
  const pa = pad(ab), pb = pad(bb);
  const batch = pa.map((d, i) => Math.max(d, pb[i]));
  const sa = stridesOf(pa), sb = stridesOf(pb);
  const nb = batch.reduce((p, d) => p * d, 1);
  const out = new Float64Array(nb * M * N);
  for (let z = 0; z < nb; z++) {
    let rest = z, ia = 0, ib = 0;
    for (let d = rank - 1; d >= 0; d--) {
      const c = rest % batch[d];
      rest = Math.floor(rest / batch[d]);
      if (pa[d] !== 1) ia += c * sa[d];
      if (pb[d] !== 1) ib += c * sb[d];
    }
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += a[ia * M * K + m * K + k] * b[ib * K * N + k * N + n];
        out[z * M * N + m * N + n] = s;
      }
    }
  }
  const shape = [...batch];
  if (aShape.length > 1) shape.push(M);
  if (bShape.length > 1) shape.push(N);
  return { values: out, shape };
}

/** Row-major values of the transpose of a [rows, cols] matrix. */
function transposeValues(v: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const out = new Float64Array(v.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = v[r * cols + c];
  return out;
}

const size = (shape: readonly number[]) => shape.reduce((p, d) => p * d, 1);

/** Run `fn` once per variant (forced), inside a scope. */
async function eachVariant(fn: (variant: string) => Promise<void>): Promise<void> {
  for (const v of VARIANTS) await withVariant("matmul", v, () => scopeAsync(() => fn(v)));
}

async function expectMatmul(
  y: Tensor,
  expected: { values: Float64Array; shape: number[] },
  what: string,
): Promise<void> {
  assert.deepEqual([...y.shape], expected.shape, `${what}: shape`);
  assertClose(await y.read(), expected.values, TOL, what);
}

// ---- forward ------------------------------------------------------------------------------------

Deno.test("matmul: awkward 2D shapes match the reference for every variant", async () => {
  const shapes: [number, number, number][] = [[1, 1, 1], [7, 33, 130], [65, 1, 64], [64, 64, 64]];
  for (const s of AWKWARD_SIZES) shapes.push([s, 130, 7], [130, s, 33]);
  await eachVariant(async (v) => {
    for (const [M, K, N] of shapes) {
      const a = randomArray(M * K, M * 7 + K), b = randomArray(K * N, N * 3 + K);
      const y = matmul(tensor(a, [M, K]), tensor(b, [K, N]));
      await expectMatmul(y, refMatmul(a, [M, K], b, [K, N]), `${v} ${M}×${K}×${N}`);
    }
  });
});

Deno.test("matmul: broadcast batch dimensions", async () => {
  const cases: [number[], number[]][] = [
    [[2, 3, 7, 33], [33, 5]], // B shared by the batch: folded into rows
    [[3, 1, 7, 9], [1, 4, 9, 6]], // both broadcast
    [[4, 7, 9], [2, 1, 9, 5]], // A broadcast over a new leading dim
    [[7, 9], [3, 9, 130]], // A shared by the batch
    [[1, 1, 5], [2, 5, 1]],
  ];
  await eachVariant(async (v) => {
    for (const [as, bs] of cases) {
      const a = randomArray(size(as), size(as)), b = randomArray(size(bs), size(bs) + 1);
      const y = matmul(tensor(a, as), tensor(b, bs));
      await expectMatmul(y, refMatmul(a, as, b, bs), `${v} [${as}]·[${bs}]`);
    }
    // A zero-stride (expanded) operand is read in place as a broadcast.
    const a = randomArray(7 * 9, 1), b = randomArray(3 * 9 * 4, 2);
    const ae = expand(tensor(a, [1, 7, 9]), [3, 7, 9]);
    const y = matmul(ae, tensor(b, [3, 9, 4]));
    await expectMatmul(y, refMatmul(a, [1, 7, 9], b, [3, 9, 4]), `${v} expanded A`);
  });
});

Deno.test("matmul: transposed views are read in place, other strides are copied", async () => {
  const [M, K, N] = [33, 7, 130];
  const x = randomArray(M * K, 11), w = randomArray(N * K, 12), at = randomArray(K * M, 13);
  // One dispatch for the buffer variant; two packs and one product for the texture variant.
  const expectedDispatches: Record<string, number> = { buffer: 1, texture: 3 };
  await eachVariant(async (v) => {
    const xt = tensor(x, [M, K]), wt = tensor(w, [N, K]), att = tensor(at, [K, M]);
    await rt().sync();
    const cases: [string, () => Tensor, { values: Float64Array; shape: number[] }][] = [
      [
        "x·wᵀ",
        () => matmul(xt, transpose(wt)),
        refMatmul(x, [M, K], transposeValues(w, N, K), [K, N]),
      ],
      [
        "aᵀ·w",
        () => matmul(transpose(att), transpose(wt)),
        refMatmul(transposeValues(at, K, M), [M, K], transposeValues(w, N, K), [K, N]),
      ],
      [
        "aᵀ·xᵀ",
        () => matmul(transpose(att), tensor(transposeValues(x, M, K), [K, M])),
        refMatmul(transposeValues(at, K, M), [M, K], transposeValues(x, M, K), [K, M]),
      ],
    ];
    for (const [name, run, expected] of cases) {
      const before = rt().dispatchCount;
      const y = run();
      const dispatches = rt().dispatchCount - before;
      assert.equal(dispatches, expectedDispatches[v], `${v} ${name}: dispatches (no copy)`);
      await expectMatmul(y, expected, `${v} ${name}`);
    }
    // Batched transposed operand: [2, K, M] viewed as [2, M, K].
    const ab = randomArray(2 * K * M, 14);
    const abT = transpose(tensor(ab, [2, K, M]));
    const aVals = new Float64Array(2 * M * K);
    for (let z = 0; z < 2; z++) {
      aVals.set(transposeValues(ab.subarray(z * K * M, (z + 1) * K * M), K, M), z * M * K);
    }
    const wb = randomArray(K * 5, 15);
    await expectMatmul(
      matmul(abT, tensor(wb, [K, 5])),
      refMatmul(aVals, [2, M, K], wb, [K, 5]),
      `${v} batched Aᵀ`,
    );
    // Neither last dim unit-stride (every other column): copied first, still right.
    const wide = randomArray(M * 2 * K, 16);
    const strided = slice(tensor(wide, [M, 2 * K]), 1, 0, 2 * K, 2);
    const sv = new Float64Array(M * K);
    for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) sv[m * K + k] = wide[m * 2 * K + 2 * k];
    const before = rt().dispatchCount;
    const y = matmul(strided, tensor(w, [K, N]));
    assert.equal(rt().dispatchCount - before, expectedDispatches[v] + 1, `${v} strided: one copy`);
    await expectMatmul(y, refMatmul(sv, [M, K], w, [K, N]), `${v} strided A`);
  });
});

Deno.test("matmul: f16 B is widened in the kernel", async () => {
  const [M, K, N] = [7, 33, 130];
  const a = randomArray(M * K, 21), w = randomArray(N * K, 22);
  await eachVariant(async (v) => {
    const wh = tensor(w, [N, K], { dtype: "f16" });
    const wRounded = Float64Array.from(await wh.read()); // the values f16 can hold
    const y = matmul(tensor(a, [M, K]), transpose(wh));
    await expectMatmul(
      y,
      refMatmul(a, [M, K], transposeValues(wRounded, N, K), [K, N]),
      `${v} f16 Bᵀ`,
    );
    const bh = tensor(w, [K, N], { dtype: "f16" });
    const bRounded = Float64Array.from(await bh.read());
    const y2 = matmul(tensor(a, [1, M, K]), bh);
    await expectMatmul(y2, refMatmul(a, [1, M, K], bRounded, [K, N]), `${v} f16 B`);
  });
});

Deno.test("matmul: rank-1 operands as torch.matmul", async () => {
  const cases: [number[], number[]][] = [[[33], [33, 7]], [[7, 33], [33]], [[33], [33]], [
    [2, 5, 33],
    [33],
  ], [[33], [3, 33, 4]]];
  await eachVariant(async (v) => {
    for (const [as, bs] of cases) {
      const a = randomArray(size(as), 31), b = randomArray(size(bs), 32);
      const y = matmul(tensor(a, as), tensor(b, bs));
      await expectMatmul(y, refMatmul(a, as, b, bs), `${v} [${as}]·[${bs}]`);
    }
  });
});

Deno.test("matmul: fused bias, empty and K = 0 products", async () => {
  const [M, K, N] = [33, 7, 130];
  const a = randomArray(M * K, 41), b = randomArray(K * N, 42), bias = randomArray(N, 43);
  const ref = refMatmul(a, [M, K], b, [K, N]);
  for (let i = 0; i < ref.values.length; i++) ref.values[i] += bias[i % N];
  await eachVariant(async (v) => {
    const y = matmulRaw(tensor(a, [M, K]), tensor(b, [K, N]), { bias: tensor(bias) });
    await expectMatmul(y, ref, `${v} bias`);
    const z = matmul(tensor(new Float32Array(0), [3, 0]), tensor(new Float32Array(0), [0, 4]));
    await expectMatmul(z, { values: new Float64Array(12), shape: [3, 4] }, `${v} K = 0`);
    const e = matmul(tensor(new Float32Array(0), [0, 5]), tensor(b.subarray(0, 20), [5, 4]));
    assert.deepEqual([...e.shape], [0, 4]);
  });
});

Deno.test("matmul: the texture variant splits products past the texture size limit", async () => {
  const max = gpu().device.limits.maxTextureDimension2D;
  // A batch whose stacked A rows exceed one texture: packed chunk by chunk.
  const batch = Math.ceil((max + 1) / 64);
  const as = [batch, 64, 3], bs = [batch, 3, 2];
  const a = randomArray(size(as), 51), b = randomArray(size(bs), 52);
  // A single A taller than a texture: split into row chunks.
  const tall = max + 5;
  const t = randomArray(tall * 2, 53), w = randomArray(2 * 3, 54);
  await withVariant("matmul", "texture", () =>
    scopeAsync(async () => {
      // Two chunks each: two packs and one product per chunk.
      let before = rt().dispatchCount;
      const y = matmul(tensor(a, as), tensor(b, bs));
      assert.equal(rt().dispatchCount - before, 6, "batch chunks: dispatches");
      await expectMatmul(y, refMatmul(a, as, b, bs), "batch chunks");
      before = rt().dispatchCount;
      const y2 = matmul(tensor(t, [tall, 2]), tensor(w, [2, 3]));
      assert.equal(rt().dispatchCount - before, 6, "row chunks: dispatches");
      await expectMatmul(y2, refMatmul(t, [tall, 2], w, [2, 3]), "row chunks");
    }));
});

Deno.test("matmul: the texture variant sums K chunks when K exceeds a texture", async () => {
  const max = gpu().device.limits.maxTextureDimension2D;
  // Three K chunks, the last one ragged (an LM head's dx = g·W over a vocabulary past the limit).
  const M = 3, K = 2 * max + 6, N = 5;
  const a = randomArray(M * K, 61), b = randomArray(K * N, 62), bias = randomArray(N, 63);
  const prior = randomArray(M * N, 64);
  const ref = refMatmul(a, [M, K], b, [K, N]);
  await withVariant("matmul", "texture", () =>
    scopeAsync(async () => {
      const y = matmulRaw(tensor(a, [M, K]), tensor(b, [K, N]), { bias: tensor(bias) });
      const withBias = ref.values.map((v, i) => v + bias[i % N]);
      await expectMatmul(y, { values: withBias, shape: [M, N] }, "K chunks + bias");
      // Accumulating with α: C += α·A·B, each chunk adding its share once.
      const into = tensor(prior, [M, N]);
      matmulRaw(tensor(a, [M, K]), tensor(b, [K, N]), { into, alpha: 0.5 });
      const acc = ref.values.map((v, i) => prior[i] + 0.5 * v);
      await expectMatmul(into, { values: acc, shape: [M, N] }, "K chunks accumulated");
      // A transposed left operand (Gᵀ with G [K, M]): chunk offsets step along G's rows.
      const g = new Float32Array(K * M);
      for (let r = 0; r < M; r++) for (let k = 0; k < K; k++) g[k * M + r] = a[r * K + k];
      const yt = matmul(transpose(tensor(g, [K, M]), 0, 1), tensor(b, [K, N]));
      await expectMatmul(yt, ref, "K chunks, transposed A");
    }));
});

Deno.test("matmul: validation names the operands", () => {
  assert.throws(
    () => matmul(tensor([1, 2, 3], [1, 3]), tensor([1, 2], [2, 1])),
    /inner dimensions 3 and 2/,
  );
  assert.throws(
    () => matmul(tensor(new Float32Array(12), [3, 2, 2]), tensor(new Float32Array(8), [2, 2, 2])),
    /do not broadcast/,
  );
  assert.throws(
    () => matmul(tensor(new Int32Array(4), [2, 2]), tensor([1, 2], [2, 1])),
    /operand A.*f32 or f16/,
  );
  assert.throws(
    () => matmulRaw(tensor([1, 2], [1, 2]), tensor([1, 2], [2, 1]), { bias: tensor([1, 2]) }),
    /bias \[2\] must have shape \[1\]/,
  );
  assert.throws(() => linear(tensor([1, 2, 3]), tensor([1, 2], [1, 2])), /must end in dIn = 2/);
  assert.throws(() => linear(tensor([1, 2]), tensor([1, 2]), undefined), /must be \[dOut, dIn\]/);
});

// ---- runtime support for textures ---------------------------------------------------------------

Deno.test("runtime: write-only and read-only storage-texture bindings round-trip", async () => {
  const write = defineKernel({
    name: "test_tex_write",
    bindings: [
      { name: "src", type: "f32", access: "read" },
      { name: "dst", texture: "rgba32float", access: "write" },
    ],
    params: [["w", "u32"]],
    source: `@compute @workgroup_size(1) fn main(@builtin(global_invocation_id) g: vec3u) {
  let i = 4u * (g.y * params.w + g.x);
  textureStore(dst, g.xy, vec4f(src[i], src[i + 1u], src[i + 2u], src[i + 3u]) * 2.0);
}`,
  });
  const read = defineKernel({
    name: "test_tex_read",
    bindings: [
      { name: "src", texture: "rgba32float", access: "read" },
      { name: "out", type: "f32", access: "read_write" },
    ],
    params: [["w", "u32"]],
    source: `@compute @workgroup_size(1) fn main(@builtin(global_invocation_id) g: vec3u) {
  let v = textureLoad(src, g.xy);
  let i = 4u * (g.y * params.w + g.x);
  out[i] = v.x; out[i + 1u] = v.y; out[i + 2u] = v.z; out[i + 3u] = v.w;
}`,
  });
  assert.match(write.wgsl, /var dst: texture_storage_2d<rgba32float, write>;/);
  assert.match(read.wgsl, /var src: texture_storage_2d<rgba32float, read>;/);
  await scopeAsync(async () => {
    const [w, h] = [3, 5];
    const values = randomArray(w * h * 4, 91);
    const src = tensor(values, [h, w, 4]);
    const out = tensor(new Float32Array(w * h * 4), [h, w, 4]);
    const tex = rt().textures.acquire(w, h);
    assert.ok(tex.width >= w && tex.height >= h, "the pool rounds sizes up");
    rt().dispatch(write, [src, tex], { w }, [w, h]);
    rt().dispatch(read, [tex, out], { w }, [w, h]);
    assertClose(await out.read(), values.map((x) => 2 * x), { atol: 1e-6 }, "texture round trip");
    assert.throws(() => rt().dispatch(read, [src, out], { w }, [1]), /src expects a texture/);
    assert.throws(() => rt().dispatch(write, [src, src], { w }, [1]), /dst expects a texture/);
    rt().textures.release(tex);
    assert.equal(rt().textures.acquire(w, h), tex, "a released texture is reused");
    rt().textures.release(tex);
    const max = rt().textures.maxDimension;
    assert.throws(() => rt().textures.acquire(max + 1, 1), /outside this adapter's 1…/);
  });
});

// ---- variant choice ----------------------------------------------------------------------------

Deno.test("matmul variants: preference by adapter, limits, tuning and overrides", () => {
  const real = gpu();
  const fake = (isFallback: boolean): Gpu => ({
    ...real,
    adapter: { ...real.adapter, isFallback },
  });
  const shapes: MatmulShapes = {
    M: 64,
    N: 64,
    K: 64,
    batch: 1,
    aMatrices: 1,
    bMatrices: 1,
    aDtype: "f32",
    bDtype: "f32",
  };
  assert.equal(MATMUL.choose(shapes, undefined, fake(true)).name, "texture");
  assert.equal(MATMUL.choose(shapes, undefined, fake(false)).name, "buffer");
  // K beyond what a texture can hold: the texture variant splits a single product along K, but
  // not a batched one, nor one whose epilogue (dropout, residual) must see the whole sum.
  const deep = { ...shapes, K: 4 * real.device.limits.maxTextureDimension2D + 4 };
  assert.equal(MATMUL.choose(deep, undefined, fake(true)).name, "texture");
  const deepBatch = { ...deep, batch: 2, aMatrices: 2, bMatrices: 2 };
  assert.equal(MATMUL.choose(deepBatch, undefined, fake(true)).name, "buffer");
  const deepEpilogue = { ...deep, epilogue: true };
  assert.equal(MATMUL.choose(deepEpilogue, undefined, fake(true)).name, "buffer");
  // A recorded tuning result wins over preference for its key only.
  MATMUL.setTuned("tuned-key", "buffer");
  try {
    assert.equal(MATMUL.choose(shapes, "tuned-key", fake(true)).name, "buffer");
    assert.equal(MATMUL.choose(shapes, "other-key", fake(true)).name, "texture");
  } finally {
    MATMUL.clearTuned();
  }
  // An override wins over everything, and refuses shapes its variant cannot run.
  withVariant("matmul", "buffer", () => {
    assert.equal(MATMUL.choose(shapes, undefined, fake(true)).name, "buffer");
  });
  withVariant("matmul", "texture", () => {
    assert.throws(
      () => MATMUL.choose(deepBatch, undefined, fake(true)),
      /forced variant texture/,
    );
  });
  assert.throws(() => withVariant("matmul", "nope", () => 0), /has no variant "nope"/);
});

Deno.test("matmul variants: autotune records the fastest variant for a key", async () => {
  const shapes: MatmulShapes = {
    M: 8,
    N: 8,
    K: 8,
    batch: 1,
    aMatrices: 1,
    bMatrices: 1,
    aDtype: "f32",
    bDtype: "f32",
  };
  const fakeMs: Record<string, number> = { buffer: 1, texture: 5 };
  try {
    const timings = await MATMUL.autotune(shapes, "k", (v) => Promise.resolve(fakeMs[v.name]));
    assert.deepEqual(timings.map((t) => t.name), ["buffer", "texture"]);
    assert.equal(MATMUL.tuned("k"), "buffer");
  } finally {
    MATMUL.clearTuned();
  }
});

Deno.test("matmul variants: autotuneMatmul times both and later calls use the winner", async () => {
  await scopeAsync(async () => {
    const a = tensor(randomArray(7 * 9, 1), [7, 9]), b = tensor(randomArray(9 * 5, 2), [9, 5]);
    try {
      const timings = await autotuneMatmul(a, b, 1);
      assert.deepEqual(timings.map((t) => t.name).sort(), [...VARIANTS].sort());
      assert.ok(timings.every((t) => t.ms > 0 && Number.isFinite(t.ms)), "positive timings");
      const winner = timings[0].name;
      const key = matmulKey({
        M: 7,
        N: 5,
        K: 9,
        batch: 1,
        aMatrices: 1,
        bMatrices: 1,
        aDtype: "f32",
        bDtype: "f32",
      });
      assert.equal(MATMUL.tuned(key), winner);
      // The buffer variant records one dispatch, the texture variant three.
      const before = rt().dispatchCount;
      const y = matmul(a, b);
      assert.equal(rt().dispatchCount - before, winner === "buffer" ? 1 : 3, "tuned variant ran");
      const ref = refMatmul(await a.read(), [7, 9], await b.read(), [9, 5]);
      await expectMatmul(y, ref, "after tuning");
    } finally {
      MATMUL.clearTuned();
    }
  });
});

// ---- linear -------------------------------------------------------------------------------------

/** Reference x·Wᵀ + b over [rows, dIn] values. */
function refLinear(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  bias: ArrayLike<number> | null,
  rows: number,
  dIn: number,
  dOut: number,
): Float64Array {
  const y = new Float64Array(rows * dOut);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < dOut; o++) {
      let s = bias ? bias[o] : 0;
      for (let i = 0; i < dIn; i++) s += x[r * dIn + i] * w[o * dIn + i];
      y[r * dOut + o] = s;
    }
  }
  return y;
}

Deno.test("linear: x·Wᵀ + b for rank-1/3 inputs, with and without bias, f16 weights", async () => {
  const [dIn, dOut] = [33, 7];
  const x = randomArray(2 * 5 * dIn, 61),
    w = randomArray(dOut * dIn, 62),
    b = randomArray(dOut, 63);
  await eachVariant(async (v) => {
    const y = linear(tensor(x, [2, 5, dIn]), tensor(w, [dOut, dIn]), tensor(b));
    assert.deepEqual([...y.shape], [2, 5, dOut]);
    assertClose(await y.read(), refLinear(x, w, b, 10, dIn, dOut), TOL, `${v} rank 3`);
    const y1 = linear(tensor(x.subarray(0, dIn)), tensor(w, [dOut, dIn]));
    assert.deepEqual([...y1.shape], [dOut]);
    assertClose(await y1.read(), refLinear(x, w, null, 1, dIn, dOut), TOL, `${v} rank 1`);
    const wh = tensor(w, [dOut, dIn], { dtype: "f16" });
    const wr = await wh.read();
    const yh = linear(tensor(x, [10, dIn]), wh, tensor(b));
    assertClose(await yh.read(), refLinear(x, wr, b, 10, dIn, dOut), TOL, `${v} f16 weight`);
    // A strided input (a transposed view) is copied to rows first.
    const xt = transpose(tensor(transposeValues(x.subarray(0, 10 * dIn), 10, dIn), [dIn, 10]));
    const ys = linear(xt, tensor(w, [dOut, dIn]), tensor(b));
    assertClose(await ys.read(), refLinear(x, w, b, 10, dIn, dOut), TOL, `${v} strided x`);
  });
});

// ---- gradients ----------------------------------------------------------------------------------

/** Gradient-check matmul on shapes `as`·`bs`, optionally through a transposed view of B. */
async function checkMatmulGrad(as: number[], bs: number[], transposeB = false): Promise<void> {
  const bStored = transposeB ? [...bs.slice(0, -2), bs.at(-1)!, bs.at(-2)!] : bs;
  await checkGradients(
    ([a, b]) => matmul(a, transposeB ? transpose(b) : b),
    ([a, b]) => {
      let bv: Float64Array = b;
      if (transposeB) {
        const [r, c] = bStored.slice(-2), n = r * c;
        bv = new Float64Array(b.length);
        for (let z = 0; z < b.length / n; z++) {
          bv.set(transposeValues(b.subarray(z * n, (z + 1) * n), r, c), z * n);
        }
      }
      return refMatmul(a, as, bv, bs).values;
    },
    [
      { shape: as, values: randomArray(size(as), 71) },
      { shape: bStored, values: randomArray(size(bStored), 72) },
    ],
  );
}

Deno.test("matmul backward: dA = dC·Bᵀ and dB = Aᵀ·dC, summed over broadcast dims", async () => {
  const cases: [number[], number[], boolean][] = [
    [[7, 5], [5, 3], false],
    [[2, 3, 4], [4, 5], false], // B shared: dB contracts over batch and rows at once
    [[3, 4], [2, 4, 5], false], // A shared: dA summed over the batch
    [[2, 1, 3, 4], [1, 2, 4, 5], false], // both broadcast
    [[3, 6], [6, 5], true], // B through a transposed view
    [[2, 3, 6], [2, 6, 5], true],
    [[4], [4, 3], false], // rank-1 operands
    [[2, 3, 4], [4], false],
    [[4], [4], false],
    [[4], [2, 4, 3], false],
  ];
  for (const v of VARIANTS) {
    await withVariant("matmul", v, async () => {
      for (const [as, bs, t] of cases) await checkMatmulGrad(as, bs, t);
    });
  }
});

Deno.test("linear backward: dx = g·W, dW = gᵀ·x, db = Σ g", async () => {
  const [dIn, dOut] = [6, 5];
  for (const v of VARIANTS) {
    await withVariant("matmul", v, async () => {
      for (const lead of [[4], [2, 3], []]) {
        const xs = [...lead, dIn], rows = size(lead);
        await checkGradients(
          ([x, w, b]) => linear(x, w, b),
          ([x, w, b]) => refLinear(x, w, b, rows, dIn, dOut),
          [
            { shape: xs, values: randomArray(size(xs), 81) },
            { shape: [dOut, dIn], values: randomArray(dOut * dIn, 82) },
            { shape: [dOut], values: randomArray(dOut, 83) },
          ],
        );
      }
      // Frozen weight, no bias: only x gets a gradient.
      await checkGradients(
        ([x, w]) => linear(x, w),
        ([x, w]) => refLinear(x, w, null, 3, dIn, dOut),
        [
          { shape: [3, dIn], values: randomArray(3 * dIn, 84) },
          { shape: [dOut, dIn], values: randomArray(dOut * dIn, 85), grad: false },
        ],
      );
    });
  }
});

Deno.test("the texture variant's scratch textures count in the memory report (scratch) while held", async () => {
  const a = tensor(Float32Array.from(randomArray(33 * 40, 1)), [33, 40]);
  const b = tensor(Float32Array.from(randomArray(40 * 17, 2)), [40, 17]);
  await rt().sync();
  rt().pool.resetPeak();
  const before = rt().pool.stats();
  const c = withVariant("matmul", "texture", () => matmul(a, b));
  await c.read();
  const after = rt().pool.stats();
  // Both operands were packed: at least 33×40 + 40×17 floats of rgba32float texels were held.
  assert.ok(after.peak.scratch - before.live.scratch >= (33 * 40 + 40 * 17) * 4);
  assert.equal(after.live.scratch, before.live.scratch, "textures are returned after the product");
  for (const t of [a, b, c]) t.dispose();
});

// ---- epilogues, the fused low-rank linear and the packed-operand cache ------------------------

Deno.test("matmulRaw: α scales the product and `into` accumulates onto the target", async () => {
  await eachVariant(async (v) => {
    const [M, K, N] = [7, 33, 9];
    const av = randomArray(M * K, 91), bv = randomArray(K * N, 92), cv = randomArray(M * N, 93);
    const biasV = randomArray(N, 94);
    const a = tensor(Float32Array.from(av), [M, K]), b = tensor(Float32Array.from(bv), [K, N]);
    const c = tensor(Float32Array.from(cv), [M, N]);
    const bias = tensor(Float32Array.from(biasV));
    const out = matmulRaw(a, b, { alpha: 0.25, into: c, bias });
    assert.equal(out, c, `${v}: the target is returned`);
    const want = new Float64Array(M * N);
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let acc = 0;
        for (let k = 0; k < K; k++) acc += av[i * K + k] * bv[k * N + j];
        want[i * N + j] = cv[i * N + j] + 0.25 * acc + biasV[j];
      }
    }
    assertClose(await c.read(), want, TOL, `${v}: C + α·A·B + bias`);
    assert.throws(
      () => matmulRaw(a, b, { into: tensor(new Float32Array(M * N + 1)) }),
      /accumulation target .* must be contiguous f32 of shape \[7,9\]/,
    );
  });
});

function refLowRank(
  [x, w, b, xd, la, lb]: Float64Array[],
  rows: number,
  dIn: number,
  dOut: number,
  r: number,
  s: number,
): Float64Array {
  const y = refLinear(x, w, b, rows, dIn, dOut);
  const h = refLinear(xd, la, null, rows, dIn, r);
  const u = refLinear(h, lb, null, rows, r, dOut);
  for (let i = 0; i < y.length; i++) y[i] += s * u[i];
  return y;
}

Deno.test("lowRankLinear: x·Wᵀ + b + s·(xd·Aᵀ)·Bᵀ and its gradients for every input", async () => {
  const [dIn, dOut, r, rows, s] = [10, 7, 3, 6, 0.75];
  for (const v of VARIANTS) {
    await withVariant("matmul", v, async () => {
      const inputs = [
        { shape: [2, 3, dIn], values: randomArray(rows * dIn, 101) },
        { shape: [dOut, dIn], values: randomArray(dOut * dIn, 102) },
        { shape: [dOut], values: randomArray(dOut, 103) },
        { shape: [2, 3, dIn], values: randomArray(rows * dIn, 104) },
        { shape: [r, dIn], values: randomArray(r * dIn, 105) },
        { shape: [dOut, r], values: randomArray(dOut * r, 106) },
      ];
      await checkGradients(
        ([x, w, b, xd, la, lb]) => lowRankLinear(x, w, b, xd, la, lb, s),
        (xs) => refLowRank(xs, rows, dIn, dOut, r, s),
        inputs,
      );
      // LoRA's case: W and b frozen, xd is x itself (no dropout): x's two paths are summed.
      const frozen = inputs.map((i, k) => ({ ...i, grad: k === 0 || k >= 4 }));
      await checkGradients(
        ([x, w, b, , la, lb]) => lowRankLinear(x, w, b, x, la, lb, s),
        ([x, w, b, , la, lb]) => refLowRank([x, w, b, x, la, lb], rows, dIn, dOut, r, s),
        frozen,
      );
    });
  }
  assert.throws(
    () =>
      lowRankLinear(
        tensor([[1, 2]]),
        tensor([[1, 0]]),
        undefined,
        tensor([[1, 2]]),
        tensor([[1, 1, 1]]),
        tensor([[1]]),
        1,
      ),
    /A .* must be \[r, 2\]/,
  );
});

Deno.test("texture variant: frozen weights are packed once and repacked after a write", async () => {
  await withVariant("matmul", "texture", async () => {
    clearPackCache();
    const x = tensor(Float32Array.from(randomArray(12 * 8, 111)), [12, 8]);
    const wv = randomArray(5 * 8, 112);
    const w = tensor(Float32Array.from(wv), [5, 8], { category: "weights" });
    const xs = await x.read();
    const y1 = linear(x, w);
    const d0 = rt().dispatchCount;
    const y2 = linear(x, w);
    // x (a layer input, reuseA) and W both come from the cache: only the product is dispatched.
    assert.equal(rt().dispatchCount - d0, 1, "a repeated linear dispatches only its product");
    assertClose(await y2.read(), await y1.read(), { atol: 0, rtol: 0 }, "cached operands");
    assert.ok(packCacheBytes() > 0);
    // An in-place write to W bumps its version: the next product repacks and sees new values.
    fillInto(w, 0.5);
    const y3 = linear(x, w);
    assertClose(
      await y3.read(),
      refLinear(xs, new Float64Array(40).fill(0.5), null, 12, 8, 5),
      TOL,
      "after writing W",
    );
    // Disposing the operands drops their textures.
    const before = packCacheBytes();
    w.dispose();
    x.dispose();
    assert.ok(packCacheBytes() < before);
    assert.equal(packCacheBytes(), 0);
    for (const t of [y1, y2, y3]) t.dispose();
  });
});

Deno.test("linearResidual: dropout(x·Wᵀ + b) + residual in the epilogue equals the composed ops", async () => {
  const [rows, dIn, dOut] = [37, 12, 70];
  for (const v of VARIANTS) {
    await withVariant("matmul", v, () =>
      scopeAsync(async () => {
        const mk = (n: number, seed: number, shape: number[]) =>
          tensor(Float32Array.from(randomArray(n, seed)), shape, { requiresGrad: true });
        const x = mk(rows * dIn, 121, [rows, dIn]), w = mk(dOut * dIn, 122, [dOut, dIn]);
        const b = mk(dOut, 123, [dOut]), r = mk(rows * dOut, 124, [rows, dOut]);
        const drop = { p: 0.3, seed: 77, stream: 5 };
        const weights = tensor(Float32Array.from(randomArray(rows * dOut, 125)), [rows, dOut]);
        const grads = async (y: Tensor) => {
          backward(sum(mulOp(y, weights)));
          const out = [];
          for (const t of [x, w, b, r]) {
            out.push(await t.grad!.read());
            t.grad!.dispose();
            t.grad = null;
          }
          return out;
        };
        // Each graph is built right before its backward (backward consumes the whole tape).
        const fused = linearResidual(x, w, b, r, drop);
        const yf = await fused.read();
        const gf = await grads(fused);
        const composed = add(dropout(linear(x, w, b), drop.p, drop), r);
        assertClose(yf, await composed.read(), TOL, `${v}: forward`);
        const gc = await grads(composed);
        gf.forEach((g, i) => assertClose(g, gc[i], TOL, `${v}: gradient of input ${i}`));
      }));
  }
  // Without dropout: finite differences of x·Wᵀ + b + r.
  await checkGradients(
    ([x, w, b, r]) => linearResidual(x, w, b, r),
    ([x, w, b, r]) => refLinear(x, w, b, 3, 4, 5).map((y, i) => y + r[i]),
    [
      { shape: [3, 4], values: randomArray(12, 126) },
      { shape: [5, 4], values: randomArray(20, 127) },
      { shape: [5], values: randomArray(5, 128) },
      { shape: [3, 5], values: randomArray(15, 129) },
    ],
  );
  assert.throws(
    () => linearResidual(tensor([[1, 2]]), tensor([[1, 1]]), undefined, tensor([[1, 2]])),
    /residual .* must have shape \[1,1\]/,
  );
});

Deno.test("texture variant: residual epilogues stored four columns at a time give the composed ops' bits", async () => {
  // N in fours: the product stores vec4s (N 70 above takes the scalar stores).
  for (const [rows, dIn, dOut] of [[37, 12, 72], [16, 8, 128], [5, 4, 4]]) {
    await withVariant("matmul", "texture", () =>
      scopeAsync(async () => {
        const mk = (shape: number[], seed: number) =>
          tensor(Float32Array.from(randomArray(size(shape), seed)), shape);
        const x = mk([rows, dIn], 141), w = mk([dOut, dIn], 142), b = mk([dOut], 143);
        const r = mk([rows, dOut], 144);
        for (const drop of [undefined, { p: 0.3, seed: 79, stream: 7 }]) {
          const fused = await bitsOf(linearResidual(x, w, b, r, drop));
          const y = linear(x, w, b);
          const composed = await bitsOf(add(drop ? dropout(y, drop.p, drop) : y, r));
          assert.deepEqual(fused, composed, `${rows}×${dIn}→${dOut} p ${drop?.p ?? 0}`);
        }
      }));
  }
});

Deno.test("linearResidual with W and b frozen: dx = dropout(g)·W masks g while packing it, bit for bit", async () => {
  for (const [rows, dIn, dOut] of [[37, 12, 70], [24, 10, 33]]) {
    for (const v of VARIANTS) {
      await withVariant("matmul", v, () =>
        scopeAsync(async () => {
          const mk = (shape: number[], seed: number, requiresGrad: boolean) =>
            tensor(Float32Array.from(randomArray(size(shape), seed)), shape, { requiresGrad });
          const x = mk([rows, dIn], 131, true), w = mk([dOut, dIn], 132, false);
          const b = mk([dOut], 133, false), r = mk([rows, dOut], 134, false);
          const w2 = mk([dOut, dIn], 135, false);
          const drop = { p: 0.3, seed: 78, stream: 6 };
          const weights = tensor(Float32Array.from(randomArray(rows * dOut, 136)), [rows, dOut]);
          // Alone, and with x's gradient pending from a second consumer (added into it).
          for (const shared of [false, true]) {
            const run = async (fused: boolean) => {
              clearPackCache();
              const xi = add(x, tensor(new Float32Array(rows * dIn), [rows, dIn]));
              const y = fused
                ? linearResidual(xi, w, b, r, drop)
                : add(dropout(linear(xi, w, b), drop.p, drop), r);
              const loss = sum(mulOp(y, weights));
              const total = shared ? add(loss, sum(mulOp(linear(xi, w2), weights))) : loss;
              const d0 = rt().dispatchCount;
              backward(total);
              const dispatches = rt().dispatchCount - d0;
              const g = Array.from(
                new Uint32Array(((await x.grad!.read()) as Float32Array).buffer),
              );
              x.grad!.dispose();
              x.grad = null;
              return { g, dispatches };
            };
            const composed = await run(false), fused = await run(true);
            const what = `${v} ${rows}×${dIn}→${dOut}${shared ? " shared" : ""}`;
            assert.deepEqual(fused.g, composed.g, what);
            // Texture: the dropout map is gone (its mask is applied in dx's pack of g).
            if (v === "texture") assert.ok(fused.dispatches < composed.dispatches, what);
          }
        }));
    }
  }
});

Deno.test("linearResidual with inputGelu: GELU in x's pack and its backward in dx's epilogue, bit for bit with gelu then the op", async () => {
  // [37, 24, 12]: dz's product (N = 24, in fours) stores four columns at a time.
  for (const [rows, dIn, dOut] of [[37, 12, 70], [24, 10, 33], [64, 32, 16], [37, 24, 12]]) {
    for (const v of VARIANTS) {
      for (const drop of [undefined, { p: 0.3, seed: 78, stream: 6 }]) {
        // W and b frozen (the fused path) and W training (the composed ops inside the op).
        for (const trainW of [false, true]) {
          await withVariant("matmul", v, () =>
            scopeAsync(async () => {
              const mk = (shape: number[], seed: number, requiresGrad: boolean) =>
                tensor(Float32Array.from(randomArray(size(shape), seed)), shape, {
                  requiresGrad,
                });
              // z spans GELU's curved part: values in [-3, 3].
              const z = mulOp(mk([rows, dIn], 131, false), tensor([3]));
              const zLeaf = tensor(await z.read() as Float32Array, [rows, dIn], {
                requiresGrad: true,
              });
              const w = mk([dOut, dIn], 132, trainW), b = mk([dOut], 133, false);
              const r = mk([rows, dOut], 134, true);
              const weights = tensor(Float32Array.from(randomArray(rows * dOut, 136)), [
                rows,
                dOut,
              ]);
              // Shared: z's gradient is pending from a second consumer (added into it).
              for (const shared of [false, true]) {
                const run = async (fused: boolean) => {
                  clearPackCache();
                  const zi = add(zLeaf, tensor(new Float32Array(rows * dIn), [rows, dIn]));
                  const y = fused
                    ? linearResidual(zi, w, b, r, drop, { inputGelu: true })
                    : linearResidual(geluOp(zi), w, b, r, drop);
                  const loss = sum(mulOp(y, weights));
                  const total = shared ? add(loss, sum(mulOp(zi, zi))) : loss;
                  const d0 = rt().dispatchCount;
                  backward(total);
                  const dispatches = rt().dispatchCount - d0;
                  const out = {
                    y: await bitsOf(y),
                    dz: await bitsOf(zLeaf.grad!),
                    dr: await bitsOf(r.grad!),
                    dw: trainW ? await bitsOf(w.grad!) : [],
                    dispatches,
                  };
                  for (const t of [zLeaf, r, w]) {
                    t.grad?.dispose();
                    t.grad = null;
                  }
                  return out;
                };
                const composed = await run(false), fused = await run(true);
                const what = `${v} ${rows}×${dIn}→${dOut} p ${drop?.p ?? 0}${
                  trainW ? " W trains" : ""
                }${shared ? " shared" : ""}`;
                for (const k of ["y", "dz", "dr", "dw"] as const) {
                  assert.deepEqual(fused[k], composed[k], `${what}: ${k}`);
                }
                // Texture, W frozen: GELU's forward and backward maps are gone.
                if (v === "texture" && !trainW) {
                  assert.ok(fused.dispatches < composed.dispatches, what);
                }
              }
            }));
        }
      }
    }
  }
});

Deno.test("linear with packGelu writes gelu(y)'s pack for linearResidual's inputGelu, bit for bit", async () => {
  await withVariant("matmul", "texture", async () => {
    for (const [rows, dIn, dMid, dOut] of [[24, 12, 32, 16], [37, 10, 33, 7]]) {
      await scopeAsync(async () => {
        const mk = (shape: number[], seed: number, opts = {}) =>
          tensor(Float32Array.from(randomArray(size(shape), seed)), shape, opts);
        const x = mk([rows, dIn], 161, { requiresGrad: true });
        const w1 = mk([dMid, dIn], 162, { category: "weights" }), b1 = mk([dMid], 163);
        const w2 = mk([dOut, dMid], 164, { category: "weights" }), b2 = mk([dOut], 165);
        const r = mk([rows, dOut], 166);
        const weights = mk([rows, dOut], 167);
        const drop = { p: 0.2, seed: 4, stream: 2 };
        const run = async (packGelu: boolean) => {
          clearPackCache();
          const d0 = rt().dispatchCount;
          const z = linear(x, mulOp(w1, tensor([3])), b1, { packGelu });
          const y = linearResidual(z, w2, b2, r, drop, { inputGelu: true });
          const forward = rt().dispatchCount - d0;
          backward(sum(mulOp(y, weights)));
          const out = { y: await bitsOf(y), dx: await bitsOf(x.grad!), forward };
          x.grad!.dispose();
          x.grad = null;
          return out;
        };
        const plain = await run(false), fused = await run(true);
        assert.deepEqual(fused.y, plain.y, `${rows}×${dIn}: y`);
        assert.deepEqual(fused.dx, plain.dx, `${rows}×${dIn}: dx`);
        assert.equal(fused.forward, plain.forward - 1, "the GELU pack is written by the product");
      });
    }
  });
});

Deno.test("texture variant: gᵀ·x reads the pack g·W left instead of packing gᵀ", async () => {
  await withVariant("matmul", "texture", () =>
    scopeAsync(async () => {
      const [rows, cols, n] = [12, 10, 7];
      const gv = randomArray(rows * cols, 131), xv = randomArray(rows * n, 132);
      const g = tensor(Float32Array.from(gv), [rows, cols]);
      const x = tensor(Float32Array.from(xv), [rows, n]);
      const w = tensor(Float32Array.from(randomArray(cols * 3, 133)), [cols, 3]);
      matmulRaw(g, w, { reuseA: true }); // leaves g's pack in the cache
      const d0 = rt().dispatchCount;
      const y = matmulRaw(transpose(g), x);
      assert.equal(rt().dispatchCount - d0, 2, "only x is packed, then the product");
      const want = new Float64Array(cols * n);
      for (let i = 0; i < cols; i++) {
        for (let j = 0; j < n; j++) {
          let acc = 0;
          for (let k = 0; k < rows; k++) acc += gv[k * cols + i] * xv[k * n + j];
          want[i * n + j] = acc;
        }
      }
      assertClose(await y.read(), want, TOL, "gᵀ·x from g's pack");
      clearPackCache();
    }));
});

Deno.test("texture variant: a LoRA step packs each weight once and h, dh with the products that write them", async () => {
  // rows 24 and r 8 keep the packs aligned (the shared A- and B-layout keys need multiples of 4).
  const [rows, dIn, dOut, r, s] = [24, 12, 20, 8, 0.5];
  const run = (variant: string) =>
    withVariant("matmul", variant, () =>
      scopeAsync(async () => {
        clearPackCache();
        const mk = (n: number, seed: number, shape: number[], opts = {}) =>
          tensor(Float32Array.from(randomArray(n, seed)), shape, opts);
        const x = mk(rows * dIn, 131, [rows, dIn], { requiresGrad: true });
        const w = mk(dOut * dIn, 132, [dOut, dIn], { category: "weights" });
        const la = mk(r * dIn, 133, [r, dIn], { requiresGrad: true, category: "trainable" });
        const lb = mk(dOut * r, 134, [dOut, r], { requiresGrad: true, category: "trainable" });
        const weights = mk(rows * dOut, 135, [rows, dOut]);
        const d0 = rt().dispatchCount;
        const y = lowRankLinear(x, w, undefined, x, la, lb, s);
        const forward = rt().dispatchCount - d0;
        const loss = sum(mulOp(y, weights));
        const d1 = rt().dispatchCount;
        backward(loss);
        const backwardCount = rt().dispatchCount - d1;
        const out = [await y.read()];
        for (const t of [x, la, lb]) out.push(await t.grad!.read());
        return { out, forward, backwardCount };
      }));
  const tex = await run("texture");
  const buf = await run("buffer");
  // Forward: the buffer variant's dispatches plus the packs of x, W, A and B (h's pack is
  // written by h = x·Aᵀ itself, not packed for h·Bᵀ).
  assert.equal(tex.forward, buf.forward + 4, "forward dispatches on the texture variant");
  // Backward: plus g's pack and W's plain pack for dx = g·W (the forward read the frozen W
  // through a pack of Wᵀ of its own; both stay for the run) — dhᵀ = s·Bᵀ·gᵀ (writing dhᵀ's
  // pack), dB = s·gᵀ·h, dxd = dh·A and dA = dhᵀ·x read B, A, hᵀ and dhᵀ from the cache.
  assert.equal(
    tex.backwardCount,
    buf.backwardCount + 2,
    "backward dispatches on the texture variant",
  );
  const names = ["y", "dx", "dA", "dB"];
  tex.out.forEach((t, i) => assertClose(t, buf.out[i], TOL, `texture vs buffer: ${names[i]}`));
});

Deno.test("texture variant: a transposed weight is read from its own row-major pack when it trains, from a kept pack of Wᵀ when frozen, bit for bit as the plain pack", async () => {
  await withVariant("matmul", "texture", async () => {
    const [rows, dIn, dOut] = [33, 130, 7];
    const xv = randomArray(rows * dIn, 141), wv = randomArray(dOut * dIn, 142);
    const wTv = Float32Array.from(
      { length: dIn * dOut },
      (_, i) => wv[(i % dOut) * dIn + Math.floor(i / dOut)],
    );
    for (const category of ["trainable", "weights"] as const) {
      clearPackCache();
      const x = tensor(Float32Array.from(xv), [rows, dIn]);
      const w = tensor(Float32Array.from(wv), [dOut, dIn], { category });
      // x·Wᵀ through the transposed view and through a materialised Wᵀ.
      const viaView = matmulRaw(x, transpose(w));
      const wT = tensor(wTv, [dIn, dOut]);
      const viaCopy = matmulRaw(x, wT);
      assertClose(await viaView.read(), await viaCopy.read(), { atol: 0, rtol: 0 }, category);
      assertClose(await viaView.read(), refLinear(xv, wv, null, rows, dIn, dOut), TOL, category);
      const g = tensor(Float32Array.from(randomArray(rows * dOut, 143)), [rows, dOut]);
      const d0 = rt().dispatchCount;
      const dx = matmulRaw(g, w);
      const again = matmulRaw(x, transpose(w));
      const d1 = rt().dispatchCount;
      if (category === "trainable") {
        // One pack of W serves both: g·W dispatches g's pack and the product; x·Wᵀ again packs
        // x and runs.
        assert.equal(d1 - d0, 4, "a trainable W is packed once for x·Wᵀ and g·W");
      } else {
        // g·W packs W as it lies (once: frozen packs are kept), x·Wᵀ reads its kept Wᵀ pack.
        assert.equal(d1 - d0, 5, "a frozen W keeps a pack in each layout");
        const d2 = rt().dispatchCount;
        matmulRaw(g, w).dispose();
        assert.equal(rt().dispatchCount - d2, 2, "the frozen W's packs are reused");
      }
      assertClose(await again.read(), await viaView.read(), { atol: 0, rtol: 0 }, "again");
      assert.equal((await dx.read()).length, rows * dIn);
      for (const t of [x, w, wT, viaView, viaCopy, g, dx, again]) t.dispose();
    }
  });
});

Deno.test("lowRankLinear: inputDropout inside the op equals dropout then the op, bit for bit", async () => {
  // rows 37 and dIn 10 exercise the unaligned packs; rows 24 × dIn 12 the vec4 ones.
  for (const [rows, dIn, dOut, r] of [[37, 10, 7, 3], [24, 12, 20, 8]]) {
    for (const v of VARIANTS) {
      await withVariant("matmul", v, () =>
        scopeAsync(async () => {
          clearPackCache();
          const s = 0.75, drop = { p: 0.3, seed: 91, stream: 4 };
          const mk = (n: number, seed: number, shape: number[], opts = {}) =>
            tensor(Float32Array.from(randomArray(n, seed)), shape, { requiresGrad: true, ...opts });
          const x = mk(rows * dIn, 161, [rows, dIn]);
          const w = mk(dOut * dIn, 162, [dOut, dIn]);
          const b = mk(dOut, 163, [dOut]);
          const la = mk(r * dIn, 164, [r, dIn], { category: "trainable" });
          const lb = mk(dOut * r, 165, [dOut, r], { category: "trainable" });
          const weights = tensor(Float32Array.from(randomArray(rows * dOut, 166)), [rows, dOut]);
          const run = async (fused: boolean) => {
            clearPackCache(); // each run packs its own operands (A and B stay valid between)
            const y = fused
              ? lowRankLinear(x, w, b, x, la, lb, s, drop)
              : lowRankLinear(x, w, b, dropout(x, drop.p, drop), la, lb, s);
            const out = [await y.read()];
            backward(sum(mulOp(y, weights)));
            for (const t of [x, w, b, la, lb]) {
              out.push(await t.grad!.read());
              t.grad!.dispose();
              t.grad = null;
            }
            return out;
          };
          // The composed graph first: it leaves the engine's constants (the ones column of the
          // bias gradient) made, which would otherwise count against it.
          const d1 = rt().dispatchCount;
          const composed = await run(false);
          const composedCount = rt().dispatchCount - d1;
          const d0 = rt().dispatchCount;
          const fused = await run(true);
          const fusedCount = rt().dispatchCount - d0;
          const names = ["y", "dx", "dW", "db", "dA", "dB"];
          fused.forEach((f, i) =>
            assertClose(f, composed[i], { atol: 0, rtol: 0 }, `${v} ${rows}×${dIn}: ${names[i]}`)
          );
          if (v === "texture") {
            // The dropout, its backward and the sum of x's two gradients are fused away; the
            // packs of xd in forward and backward become the masked packs of x.
            assert.ok(fusedCount <= composedCount - 3, `${fusedCount} vs ${composedCount}`);
          }
        }));
    }
  }
  assert.throws(
    () =>
      lowRankLinear(
        tensor([[1, 2]]),
        tensor([[1, 0]]),
        undefined,
        tensor([[1, 2]]),
        tensor([[1, 1]]),
        tensor([[1]]),
        1,
        { p: 2, seed: 0, stream: 0 },
      ),
    /inputDropout\.p must be in \[0, 1\]/,
  );
});

Deno.test("lowRankLinear with inputDropout: the forward's dropped pack of x serves dA in backward, bit for bit", async () => {
  await withVariant("matmul", "texture", async () => {
    const [rows, dIn, dOut, r, s] = [24, 12, 20, 8, 0.5];
    const mk = (n: number, seed: number, shape: number[], opts = {}) =>
      tensor(Float32Array.from(randomArray(n, seed)), shape, opts);
    const x = mk(rows * dIn, 151, [rows, dIn], { requiresGrad: true });
    const w = mk(dOut * dIn, 152, [dOut, dIn], { category: "weights" });
    const la = mk(r * dIn, 153, [r, dIn], { requiresGrad: true, category: "trainable" });
    const lb = mk(dOut * r, 154, [dOut, r], { requiresGrad: true, category: "trainable" });
    const weights = mk(rows * dOut, 155, [rows, dOut]);
    const drop = { p: 0.25, seed: 9, stream: 3 };
    const run = (budget: number) =>
      withKeptTextureBudget(budget, () =>
        scopeAsync(async () => {
          clearPackCache();
          const y = lowRankLinear(x, w, undefined, x, la, lb, s, drop);
          const loss = sum(mulOp(y, weights));
          const d0 = rt().dispatchCount;
          backward(loss);
          const dispatches = rt().dispatchCount - d0;
          const grads = [];
          for (const t of [x, la, lb]) {
            grads.push(await bitsOf(t.grad!));
            t.grad!.dispose();
            t.grad = null;
          }
          return { grads, dispatches };
        }));
    const repacked = await run(0), kept = await run(8 * 2 ** 20);
    assert.deepEqual(kept.grads, repacked.grads, "the same gradients, bit for bit");
    assert.equal(kept.dispatches, repacked.dispatches - 1, "dA reads the forward's dropped pack");
  });
});

Deno.test("backward: a shared input's gradient is summed in the consumers' product epilogues, bit for bit with separate adds", async () => {
  // x feeds (in recording order) linear, linearResidual as its input, lowRankLinear with fused
  // input dropout, lowRankLinear with xd = x, and last a residual: backward meets the residual's
  // plain gradient first, then each product adds its dx onto the pending sum.
  for (const [rows, dIn, dOut, r] of [[37, 10, 7, 3], [24, 12, 20, 8]]) {
    for (const v of VARIANTS) {
      await withVariant("matmul", v, () =>
        scopeAsync(async () => {
          clearPackCache();
          let seed = 170;
          const mk = (shape: number[], opts = {}) =>
            tensor(Float32Array.from(randomArray(size(shape), seed++)), shape, {
              requiresGrad: true,
              ...opts,
            });
          const leaf = mk([rows, dIn]);
          const zero = tensor(new Float32Array(rows * dIn), [rows, dIn]);
          const [w1, b1, w2, b2, w3, w4, wr] = [
            [dOut, dIn],
            [dOut],
            [dOut, dIn],
            [dOut],
            [dOut, dIn],
            [dOut, dIn],
            [dIn, dOut],
          ].map((s) => mk(s));
          const [la3, la4] = [mk([r, dIn], { category: "trainable" }), mk([r, dIn])];
          const [lb3, lb4] = [mk([dOut, r], { category: "trainable" }), mk([dOut, r])];
          const res = tensor(Float32Array.from(randomArray(rows * dOut, seed++)), [rows, dOut]);
          const u = tensor(Float32Array.from(randomArray(rows * dOut, seed++)), [rows, dOut]);
          const drop = { p: 0.25, seed: 5, stream: 2 };
          // x's values without a gradient: lowRankLinear's dx and dxd alone (they sum as two
          // gradients of x: dx first, then dxd).
          const xc = tensor(await leaf.read(), [rows, dIn]);
          const consumers: ((x: Tensor) => Tensor)[] = [
            (x) => linear(x, w1, b1),
            (x) => linearResidual(x, w2, b2, res, drop),
            (x) => lowRankLinear(x, w3, undefined, x, la3, lb3, 0.5, drop),
            (x) => lowRankLinear(x, w4, b1, x, la4, lb4, 2),
            (x) => linearResidual(u, wr, undefined, x, { p: 0.2, seed: 6, stream: 1 }),
            (x) => lowRankLinear(x, w4, b1, xc, la4, lb4, 2),
            (x) => lowRankLinear(xc, w4, b1, x, la4, lb4, 2),
            (x) => lowRankLinear(x, w3, undefined, xc, la3, lb3, 0.5, drop),
            (x) => lowRankLinear(xc, w3, undefined, x, la3, lb3, 0.5, drop),
          ];
          // The gradients of x each consumer contributes, in the order autograd sums them. The
          // fused input dropout (texture variant) gives one, dx + dropout(dh·A); the buffer
          // variant runs dropout as its own op, whose gradient arrives after dx.
          const parts = [[0], [1], v === "texture" ? [2] : [7, 8], [5, 6], [4]];
          const outWeights = consumers.map((_, i) =>
            tensor(
              Float32Array.from(
                randomArray(rows * (i === 4 ? dIn : dOut), 190 + [0, 1, 2, 3, 4, 3, 3, 2, 2][i]),
              ),
              [
                rows,
                i === 4 ? dIn : dOut,
              ],
            )
          );
          // x is an op's output (so its gradient is an intermediate that autograd sums), and the
          // leaf's gradient is x's as it is.
          const grads = async (which: number[]) => {
            clearPackCache();
            const x = add(leaf, zero);
            const losses = which.map((i) => sum(mulOp(consumers[i](x), outWeights[i])));
            const loss = losses.slice(1).reduce((a, b) => add(a, b), losses[0]);
            const profiled = await rt().profile(() => backward(loss));
            const g = (await leaf.grad!.read()) as Float32Array;
            leaf.grad!.dispose();
            leaf.grad = null;
            for (const p of [w1, b1, w2, b2, w3, w4, wr, la3, la4, lb3, lb4]) {
              p.grad?.dispose();
              p.grad = null;
            }
            const adds = profiled?.find(([name]) => name === "map(a + b)")?.[1].count ?? null;
            return { g, adds };
          };
          const alone = [];
          for (let i = 0; i < consumers.length; i++) alone.push((await grads([i])).g);
          // The sum autograd forms, in f32, in the order backward meets the gradients.
          const order = [4, 3, 2, 1, 0].flatMap((i) => parts[i]);
          const expected = Float32Array.from(alone[order[0]]);
          for (const i of order.slice(1)) {
            for (let j = 0; j < expected.length; j++) {
              expected[j] = Math.fround(expected[j] + alone[i][j]);
            }
          }
          const all = await grads([0, 1, 2, 3, 4]);
          assertClose(all.g, expected, { atol: 0, rtol: 0 }, `${v} ${rows}×${dIn}: dx`);
          // The loss's own adds have no backward kernels; every sum of x's gradient a product
          // makes is fused (lowRankLinear with xd = x adds dx and dxd into it), leaving b1's (a
          // shared leaf) and, on the buffer variant, the dropout op's gradient.
          const separate = v === "texture" ? 1 : 2;
          if (all.adds !== null) assert.equal(all.adds, separate, `${v}: separate adds`);
        }));
    }
  }
});

Deno.test("texture variant: a pack moved by the driver's copy reads as the pack kernel's, bit for bit", async () => {
  await withVariant("matmul", "texture", async () => {
    clearPackCache();
    // Rows 64-element aligned (128 apart) are copied into the texture; the same values 132
    // apart are packed by the kernel. One row, and a matrix starting at an offset, copy too.
    const [rows, dIn, dOut] = [33, 128, 7];
    const xv = randomArray(rows * dIn, 151), wv = randomArray(dOut * dIn, 152);
    const w = tensor(Float32Array.from(wv), [dOut, dIn], { category: "weights" });
    const padded = (pitch: number, lead: number) => {
      const v = new Float32Array((rows + lead) * pitch);
      for (let r = 0; r < rows; r++) v.set(xv.slice(r * dIn, (r + 1) * dIn), (r + lead) * pitch);
      const t = tensor(v, [rows + lead, pitch]);
      return { t, x: slice(slice(t, 0, lead), 1, 0, dIn) };
    };
    const copied = padded(dIn, 0), offset = padded(dIn, 1), kernel = padded(dIn + 4, 0);
    const d0 = rt().dispatchCount;
    const y = matmulRaw(copied.x, transpose(w));
    assert.equal(rt().dispatchCount - d0, 3, "x's copy, W's pack and the product");
    const expected = await matmulRaw(kernel.x, transpose(w)).read();
    assertClose(await y.read(), expected, { atol: 0, rtol: 0 }, "copied pack");
    assertClose(
      await matmulRaw(offset.x, transpose(w)).read(),
      expected,
      { atol: 0, rtol: 0 },
      "copied pack at an offset",
    );
    assertClose(await y.read(), refLinear(xv, wv, null, rows, dIn, dOut), TOL, "reference");
    const row = tensor(Float32Array.from(xv.slice(0, dIn)), [1, dIn]);
    assertClose(
      await matmulRaw(row, transpose(w)).read(),
      expected.slice(0, dOut),
      { atol: 0, rtol: 0 },
      "one row",
    );
    // The same operand packed by the kernel (the copy switched off).
    setPackByCopy(false);
    try {
      const d1 = rt().dispatchCount;
      const viaKernel = matmulRaw(copied.x, transpose(w));
      assert.equal(rt().dispatchCount - d1, 2, "x's pack kernel and the product (W cached)");
      assertClose(await viaKernel.read(), expected, { atol: 0, rtol: 0 }, "pack kernel");
      viaKernel.dispose();
    } finally {
      setPackByCopy(true);
    }
    for (const t of [w, copied.t, offset.t, kernel.t, y, row]) t.dispose();
  });
});
