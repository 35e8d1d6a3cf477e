/**
 * Fused scaled dot-product attention against a plain-TS float64 reference: awkward T, S, D,
 * batches, grouped-query heads, causal masking (also with T < S and T > S), key padding masks,
 * fully masked rows, strided q/k/v views, and the backward rule for q, k and v by finite
 * differences in several of those settings. Attention-probability dropout: the kernels' mask
 * equals the host rule (attentionDropoutKeep), its kept fraction and 1/(1−p) scale match p, and
 * the backward regenerates the same mask (finite differences against the explicit-mask reference).
 */
import assert from "node:assert/strict";
import {
  ATTENTION,
  type AttentionDropout,
  attentionDropoutKeep,
  type AttentionTiling,
  backward,
  clearPackCache,
  gpu,
  type HostArray,
  linear,
  MATMUL,
  mul,
  noGrad,
  reshape,
  rt,
  scaledDotProductAttention,
  scopeAsync,
  sum,
  tapeLength,
  type Tensor,
  tensor,
  transpose,
  withVariant,
} from "../../ops/mod.ts";
import {
  assertClose,
  bitsOf,
  checkGradients,
  randomArray,
  setup,
  withKeptTextureBudget,
} from "../helpers.ts";

await setup();

/**
 * Register `fn` once per variant of the attention family ("workgroup" for GPUs, "texture" for
 * software adapters), with that variant forced, so both are checked on any test machine.
 */
function variantTest(name: string, fn: () => Promise<void>): void {
  for (const variant of ATTENTION.variantNames()) {
    Deno.test(`${name} [${variant}]`, () => withVariant("attention", variant, fn));
  }
}

/** One attention configuration: q [B, Hq, T, D], k/v [B, Hkv, S, D]. */
interface Case {
  B: number;
  Hq: number;
  Hkv: number;
  T: number;
  S: number;
  D: number;
  causal?: boolean;
  /** [B, S] keep flags (1 keep, 0 pad). */
  mask?: number[];
  scale?: number;
  /** Forces a workgroup shape instead of the adapter's default. */
  tiling?: AttentionTiling;
  /** Dropout on the probabilities (the reference rebuilds the explicit mask). */
  dropout?: AttentionDropout;
}

/**
 * Host layouts of a [B, heads, T, D] tensor: `toTokens` true maps [B, H, T, D] → [B, T, H, D]
 * (the projections' own layout), false the inverse.
 */
function swapHeadsAndTokens(a: ArrayLike<number>, c: Case, toTokens: boolean): Float64Array {
  const o = new Float64Array(a.length);
  for (let b = 0; b < c.B; b++) {
    for (let h = 0; h < c.Hq; h++) {
      for (let t = 0; t < c.T; t++) {
        for (let d = 0; d < c.D; d++) {
          const heads = ((b * c.Hq + h) * c.T + t) * c.D + d;
          const tokens = ((b * c.T + t) * c.Hq + h) * c.D + d;
          if (toTokens) o[tokens] = a[heads];
          else o[heads] = a[tokens];
        }
      }
    }
  }
  return o;
}

const FORWARD_TOL = { atol: 2e-5, rtol: 2e-4 };
/** Tighter than checkGradients' default so that a 0.1% slip in one gradient term is caught. */
const GRAD_TOL = { atol: 3e-5, rtol: 3e-4 };

/**
 * The textbook definition in float64: full scores, masked softmax, (dropout with the explicit
 * mask of attentionDropoutKeep,) weighted sum of values.
 */
function referenceAttention(
  c: Case,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
): Float64Array {
  const { B, Hq, Hkv, T, S, D } = c;
  const scale = c.scale ?? 1 / Math.sqrt(D);
  const out = new Float64Array(B * Hq * T * D);
  const scores = new Float64Array(S);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hq; h++) {
      const kh = Math.floor((h * Hkv) / Hq);
      for (let i = 0; i < T; i++) {
        const qo = ((b * Hq + h) * T + i) * D;
        let m = -Infinity;
        for (let j = 0; j < S; j++) {
          const visible = (!c.causal || j <= i + S - T) && (!c.mask || c.mask[b * S + j] !== 0);
          if (!visible) {
            scores[j] = -Infinity;
            continue;
          }
          const ko = ((b * Hkv + kh) * S + j) * D;
          let s = 0;
          for (let d = 0; d < D; d++) s += q[qo + d] * k[ko + d];
          scores[j] = s * scale;
          m = Math.max(m, scores[j]);
        }
        if (m === -Infinity) continue; // every key masked: the row stays 0
        let l = 0;
        for (let j = 0; j < S; j++) l += scores[j] === -Infinity ? 0 : Math.exp(scores[j] - m);
        for (let j = 0; j < S; j++) {
          if (scores[j] === -Infinity) continue;
          let p = Math.exp(scores[j] - m) / l;
          if (c.dropout) {
            const kept = attentionDropoutKeep(c.dropout, b * Hq + h, i, j);
            p = kept ? p / (1 - c.dropout.p) : 0;
          }
          const vo = ((b * Hkv + kh) * S + j) * D;
          for (let d = 0; d < D; d++) out[qo + d] += p * v[vo + d];
        }
      }
    }
  }
  return out;
}

function inputs(c: Case, seed: number): [Float64Array, Float64Array, Float64Array] {
  return [
    randomArray(c.B * c.Hq * c.T * c.D, seed, -1.5, 1.5),
    randomArray(c.B * c.Hkv * c.S * c.D, seed + 1, -1.5, 1.5),
    randomArray(c.B * c.Hkv * c.S * c.D, seed + 2, -1, 1),
  ];
}

function run(c: Case, q: Tensor, k: Tensor, v: Tensor, maskDtype: "f32" | "i32" = "f32"): Tensor {
  const keyPaddingMask = c.mask ? tensor(c.mask, [c.B, c.S], { dtype: maskDtype }) : undefined;
  return scaledDotProductAttention(q, k, v, {
    causal: c.causal,
    keyPaddingMask,
    scale: c.scale,
    tiling: c.tiling,
    dropout: c.dropout,
  });
}

async function checkForward(c: Case, seed: number): Promise<Float32Array> {
  const [q, k, v] = inputs(c, seed);
  const expected = referenceAttention(c, q, k, v);
  const actual = await scopeAsync(async () => {
    const out = run(
      c,
      tensor(Float32Array.from(q), [c.B, c.Hq, c.T, c.D]),
      tensor(Float32Array.from(k), [c.B, c.Hkv, c.S, c.D]),
      tensor(Float32Array.from(v), [c.B, c.Hkv, c.S, c.D]),
    );
    assert.deepEqual(out.shape, [c.B, c.Hq, c.T, c.D]);
    return (await out.read()) as Float32Array;
  });
  assertClose(
    actual,
    expected,
    FORWARD_TOL,
    `attention ${JSON.stringify({ ...c, mask: !!c.mask })}`,
  );
  return actual;
}

/** A [B, S] mask keeping a prefix of each batch's keys (lengths cycle through `lengths`). */
function prefixMask(B: number, S: number, lengths: number[]): number[] {
  const m: number[] = [];
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < S; j++) m.push(j < lengths[b % lengths.length] ? 1 : 0);
  }
  return m;
}

variantTest("attention forward matches the reference on awkward shapes", async () => {
  const cases: Case[] = [
    { B: 1, Hq: 1, Hkv: 1, T: 1, S: 1, D: 8 },
    { B: 2, Hq: 2, Hkv: 2, T: 7, S: 33, D: 16 },
    { B: 1, Hq: 3, Hkv: 3, T: 33, S: 7, D: 64 },
    { B: 2, Hq: 1, Hkv: 1, T: 130, S: 130, D: 8 },
    { B: 1, Hq: 2, Hkv: 1, T: 7, S: 7, D: 33 },
    { B: 2, Hq: 2, Hkv: 2, T: 5, S: 9, D: 16, scale: 0.7 },
  ];
  let seed = 10;
  for (const c of cases) await checkForward(c, seed += 3);
});

variantTest("attention forward: grouped-query heads (Hq 4 with Hkv 2 and 1)", async () => {
  await checkForward({ B: 2, Hq: 4, Hkv: 2, T: 33, S: 7, D: 16 }, 40);
  await checkForward({ B: 1, Hq: 4, Hkv: 1, T: 33, S: 33, D: 64 }, 41);
  await checkForward({ B: 3, Hq: 4, Hkv: 1, T: 1, S: 130, D: 8 }, 42);
});

variantTest("attention forward: causal, also with T < S (KV cache) and T > S", async () => {
  await checkForward({ B: 2, Hq: 2, Hkv: 2, T: 33, S: 33, D: 16, causal: true }, 50);
  await checkForward({ B: 1, Hq: 4, Hkv: 2, T: 130, S: 130, D: 8, causal: true }, 51);
  await checkForward({ B: 2, Hq: 4, Hkv: 1, T: 7, S: 33, D: 64, causal: true }, 52);
  await checkForward({ B: 1, Hq: 2, Hkv: 2, T: 1, S: 33, D: 16, causal: true }, 53);
  // T > S: the first T − S rows see no key and must be exactly 0.
  const c: Case = { B: 1, Hq: 2, Hkv: 1, T: 33, S: 7, D: 8, causal: true };
  const out = await checkForward(c, 54);
  for (let h = 0; h < c.Hq; h++) {
    for (let i = 0; i < c.T - c.S; i++) {
      for (let d = 0; d < c.D; d++) assert.equal(out[(h * c.T + i) * c.D + d], 0);
    }
  }
});

variantTest(
  "attention forward: key padding masks (f32 and i32), combined with causal",
  async () => {
    await checkForward({
      B: 3,
      Hq: 4,
      Hkv: 2,
      T: 7,
      S: 33,
      D: 16,
      mask: prefixMask(3, 33, [33, 1, 20]),
    }, 60);
    await checkForward(
      { B: 2, Hq: 2, Hkv: 1, T: 7, S: 33, D: 8, causal: true, mask: prefixMask(2, 33, [30, 12]) },
      61,
    );
    // A scattered mask, read as i32, must give exactly what the f32 mask gives.
    const c: Case = { B: 2, Hq: 2, Hkv: 2, T: 7, S: 33, D: 16 };
    c.mask = Array.from({ length: 2 * 33 }, (_, i) => (i * 7) % 3 === 0 ? 0 : 1);
    const f32 = await checkForward(c, 62);
    const [q, k, v] = inputs(c, 62);
    const viaI32 = await scopeAsync(async () => {
      const out = run(
        c,
        tensor(Float32Array.from(q), [c.B, c.Hq, c.T, c.D]),
        tensor(Float32Array.from(k), [c.B, c.Hkv, c.S, c.D]),
        tensor(Float32Array.from(v), [c.B, c.Hkv, c.S, c.D]),
        "i32",
      );
      return await out.read();
    });
    assert.deepEqual(Array.from(viaI32), Array.from(f32));
    // Bound in place (contiguous f32 at offset 0) with other nonzero values, and converted from a
    // view at an offset: both must give exactly what the 0/1 mask gives.
    const S = c.S, weighted = c.mask.map((m, i) => m * (i % 2 ? 2.5 : -0.5));
    for (const layout of ["in place", "offset view"]) {
      const again = await scopeAsync(async () => {
        const padded = tensor([...new Array(S).fill(0), ...weighted], [c.B + 1, S]);
        const mask = layout === "in place"
          ? tensor(weighted, [c.B, S])
          : padded.view([c.B, S], [S, 1], S);
        const out = scaledDotProductAttention(
          tensor(Float32Array.from(q), [c.B, c.Hq, c.T, c.D]),
          tensor(Float32Array.from(k), [c.B, c.Hkv, S, c.D]),
          tensor(Float32Array.from(v), [c.B, c.Hkv, S, c.D]),
          { keyPaddingMask: mask },
        );
        return await out.read();
      });
      assert.deepEqual(Array.from(again), Array.from(f32), layout);
    }
  },
);

variantTest("attention forward: fully masked rows output 0, not NaN", async () => {
  // Batch 1 pads every key; with causal and T > S the early rows of batch 0 see none either.
  const c: Case = {
    B: 2,
    Hq: 2,
    Hkv: 1,
    T: 9,
    S: 7,
    D: 16,
    causal: true,
    mask: prefixMask(2, 7, [7, 0]),
  };
  const out = await checkForward(c, 70);
  assert.ok(out.every(Number.isFinite), "no NaN or infinity in the output");
  const rowSize = c.Hq * c.T * c.D;
  assert.ok(out.subarray(rowSize).every((x) => x === 0), "a fully padded batch is all zeros");
});

variantTest("attention forward reads strided q/k/v views in place", async () => {
  // q/k/v as the transposes of [B, T, H, D] projections, the layout a linear layer produces.
  const c: Case = { B: 2, Hq: 4, Hkv: 2, T: 7, S: 33, D: 16, causal: true };
  const [q, k, v] = inputs(c, 80);
  const toBTHD = (x: Float64Array, H: number, L: number): Float32Array => {
    const y = new Float32Array(x.length);
    for (let b = 0; b < c.B; b++) {
      for (let h = 0; h < H; h++) {
        for (let l = 0; l < L; l++) {
          for (let d = 0; d < c.D; d++) {
            y[((b * L + l) * H + h) * c.D + d] = x[((b * H + h) * L + l) * c.D + d];
          }
        }
      }
    }
    return y;
  };
  const expected = referenceAttention(c, q, k, v);
  const actual = await scopeAsync(async () => {
    const qv = transpose(tensor(toBTHD(q, c.Hq, c.T), [c.B, c.T, c.Hq, c.D]), 1, 2);
    const kv = transpose(tensor(toBTHD(k, c.Hkv, c.S), [c.B, c.S, c.Hkv, c.D]), 1, 2);
    const vv = transpose(tensor(toBTHD(v, c.Hkv, c.S), [c.B, c.S, c.Hkv, c.D]), 1, 2);
    assert.ok(!qv.isContiguous && !kv.isContiguous, "the test must feed strided views");
    return await run(c, qv, kv, vv).read();
  });
  assertClose(actual, expected, FORWARD_TOL, "attention on transposed views");
});

// ---- gradients -----------------------------------------------------------------------------------

async function checkAttentionGradients(c: Case, seed: number): Promise<void> {
  const [q, k, v] = inputs(c, seed);
  await checkGradients(
    ([qt, kt, vt]) => run(c, qt, kt, vt),
    ([qa, ka, va]) => referenceAttention(c, qa, ka, va),
    [
      { shape: [c.B, c.Hq, c.T, c.D], values: q },
      { shape: [c.B, c.Hkv, c.S, c.D], values: k },
      { shape: [c.B, c.Hkv, c.S, c.D], values: v },
    ],
    GRAD_TOL,
  );
}

variantTest("attention backward: q, k, v gradients, plain and grouped-query", async () => {
  await checkAttentionGradients({ B: 2, Hq: 2, Hkv: 2, T: 7, S: 5, D: 8 }, 90);
  await checkAttentionGradients({ B: 1, Hq: 4, Hkv: 2, T: 5, S: 7, D: 16 }, 91);
  await checkAttentionGradients({ B: 1, Hq: 4, Hkv: 1, T: 1, S: 7, D: 8, scale: 0.9 }, 92);
});

variantTest("attention backward: several tiles, causal, T < S, padding", async () => {
  // S = 33 and T = 33 span two key tiles and two query tiles; 4·33 rows span three row blocks.
  await checkAttentionGradients({ B: 1, Hq: 4, Hkv: 1, T: 33, S: 33, D: 8, causal: true }, 100);
  await checkAttentionGradients(
    { B: 2, Hq: 2, Hkv: 1, T: 7, S: 33, D: 8, causal: true, mask: prefixMask(2, 33, [33, 20]) },
    101,
  );
});

variantTest("attention backward: fully masked rows get zero gradients", async () => {
  const c: Case = {
    B: 2,
    Hq: 2,
    Hkv: 2,
    T: 9,
    S: 5,
    D: 8,
    causal: true,
    mask: prefixMask(2, 5, [5, 0]),
  };
  await checkAttentionGradients(c, 110);
  // And explicitly: the padded batch's dq, dk, dv are exactly 0 and everything is finite.
  const [q, k, v] = inputs(c, 110);
  await scopeAsync(async () => {
    const qt = tensor(Float32Array.from(q), [c.B, c.Hq, c.T, c.D], { requiresGrad: true });
    const kt = tensor(Float32Array.from(k), [c.B, c.Hkv, c.S, c.D], { requiresGrad: true });
    const vt = tensor(Float32Array.from(v), [c.B, c.Hkv, c.S, c.D], { requiresGrad: true });
    backward(sum(run(c, qt, kt, vt)));
    for (
      const [name, t, half] of [["dq", qt, c.Hq * c.T * c.D], ["dk", kt, c.Hkv * c.S * c.D], [
        "dv",
        vt,
        c.Hkv * c.S * c.D,
      ]] as const
    ) {
      const g = await t.grad!.read();
      assert.ok(g.every(Number.isFinite), `${name} is finite`);
      assert.ok(g.subarray(half).every((x) => x === 0), `${name} of the padded batch is 0`);
      assert.ok(g.subarray(0, half).some((x) => x !== 0), `${name} of the live batch is not 0`);
    }
    for (const t of [qt, kt, vt]) t.dispose();
  });
});

variantTest("attention backward through strided views of [B, T, H, D] inputs", async () => {
  const c: Case = { B: 2, Hq: 2, Hkv: 1, T: 5, S: 7, D: 8, causal: true };
  const [q, k, v] = inputs(c, 120);
  const fromBTHD = (x: ArrayLike<number>, H: number, L: number): Float64Array => {
    const y = new Float64Array(x.length);
    for (let b = 0; b < c.B; b++) {
      for (let l = 0; l < L; l++) {
        for (let h = 0; h < H; h++) {
          for (let d = 0; d < c.D; d++) {
            y[((b * H + h) * L + l) * c.D + d] = x[((b * L + l) * H + h) * c.D + d];
          }
        }
      }
    }
    return y;
  };
  await checkGradients(
    ([qt, kt, vt]) => run(c, transpose(qt, 1, 2), transpose(kt, 1, 2), transpose(vt, 1, 2)),
    ([qa, ka, va]) =>
      referenceAttention(
        c,
        fromBTHD(qa, c.Hq, c.T),
        fromBTHD(ka, c.Hkv, c.S),
        fromBTHD(va, c.Hkv, c.S),
      ),
    [
      { shape: [c.B, c.T, c.Hq, c.D], values: q },
      { shape: [c.B, c.S, c.Hkv, c.D], values: k },
      { shape: [c.B, c.S, c.Hkv, c.D], values: v },
    ],
    GRAD_TOL,
  );
});

variantTest(
  "attention backward is deterministic and only computes requested gradients",
  async () => {
    const c: Case = { B: 1, Hq: 4, Hkv: 2, T: 33, S: 33, D: 16, causal: true };
    const [q, k, v] = inputs(c, 130);
    const grads = async (kvGrad: boolean): Promise<(Float32Array | null)[]> =>
      await scopeAsync(async () => {
        const qt = tensor(Float32Array.from(q), [c.B, c.Hq, c.T, c.D], { requiresGrad: true });
        const kt = tensor(Float32Array.from(k), [c.B, c.Hkv, c.S, c.D], { requiresGrad: kvGrad });
        const vt = tensor(Float32Array.from(v), [c.B, c.Hkv, c.S, c.D], { requiresGrad: kvGrad });
        backward(sum(run(c, qt, kt, vt)));
        const out = [];
        for (const t of [qt, kt, vt]) {
          out.push(t.grad ? (await t.grad.read()) as Float32Array : null);
        }
        for (const t of [qt, kt, vt]) t.dispose();
        return out;
      });
    const first = await grads(true);
    const second = await grads(true);
    first.forEach((g, i) => assert.deepEqual(second[i], g, `gradient ${i} differs between runs`));
    const qOnly = await grads(false);
    assert.equal(qOnly[1], null);
    assert.equal(qOnly[2], null);
    assert.deepEqual(qOnly[0], first[0]);
  },
);

Deno.test("attention records nothing under noGrad", async () => {
  const c: Case = { B: 1, Hq: 1, Hkv: 1, T: 7, S: 7, D: 8 };
  const [q, k, v] = inputs(c, 140);
  await scopeAsync(async () => {
    const qt = tensor(Float32Array.from(q), [1, 1, 7, 8], { requiresGrad: true });
    const before = tapeLength();
    const out = noGrad(() =>
      run(
        c,
        qt,
        tensor(Float32Array.from(k), [1, 1, 7, 8]),
        tensor(Float32Array.from(v), [1, 1, 7, 8]),
      )
    );
    assert.equal(tapeLength(), before);
    assert.equal(out.requiresGrad, false);
    assertClose(await out.read(), referenceAttention(c, q, k, v), FORWARD_TOL, "noGrad output");
    qt.dispose();
  });
});

// The adapter picks one workgroup shape (one row per invocation on GPUs, several on llvmpipe);
// every shape must compute the same thing, so each is checked here whatever the test machine is.
const TILINGS: AttentionTiling[] = [
  { threads: 64, rowsPerThread: 1 },
  { threads: 8, rowsPerThread: 2 },
  { threads: 4, rowsPerThread: 3 },
];

variantTest("attention forward agrees across workgroup shapes", async () => {
  const c: Case = {
    B: 2,
    Hq: 4,
    Hkv: 2,
    T: 33,
    S: 40,
    D: 16,
    causal: true,
    mask: prefixMask(2, 40, [40, 29]),
  };
  for (const tiling of TILINGS) await checkForward({ ...c, tiling }, 150);
});

variantTest("attention backward agrees across workgroup shapes", async () => {
  for (const tiling of [TILINGS[0], TILINGS[2]]) {
    await checkAttentionGradients(
      {
        B: 1,
        Hq: 2,
        Hkv: 1,
        T: 9,
        S: 11,
        D: 8,
        causal: true,
        mask: prefixMask(1, 11, [10]),
        tiling,
      },
      160,
    );
  }
});

Deno.test("attention picks the texture variant on software adapters, workgroup memory on GPUs", () => {
  const shapes = { batch: 2, queryHeads: 4, kvHeads: 2, queryLen: 128, keyLen: 128, headDim: 64 };
  const expected = gpu().adapter.isFallback ? "texture" : "workgroup";
  assert.equal(ATTENTION.choose(shapes).name, expected);
});

Deno.test("attention variants agree when packed rows wrap over several texture lines", async () => {
  // D 16 packs 4 texels per row, so a 16384-texel line (llvmpipe's limit) holds 4096 rows:
  // S 4200 wraps the packed keys (forward, dQ) and T 4200 the packed queries (dK/dV). Checked
  // against the reference forward and, for gradients, against the workgroup variant (no packing).
  for (
    const c of [
      { B: 1, Hq: 2, Hkv: 1, T: 3, S: 4200, D: 16, causal: true },
      { B: 1, Hq: 1, Hkv: 1, T: 4200, S: 5, D: 16 },
    ] as Case[]
  ) {
    const [q, k, v] = inputs(c, 170);
    const results: HostArray[][] = [];
    for (const variant of ["texture", "workgroup"]) {
      results.push(
        await withVariant("attention", variant, () =>
          scopeAsync(async () => {
            const qt = tensor(Float32Array.from(q), [c.B, c.Hq, c.T, c.D], { requiresGrad: true });
            const kt = tensor(Float32Array.from(k), [c.B, c.Hkv, c.S, c.D], { requiresGrad: true });
            const vt = tensor(Float32Array.from(v), [c.B, c.Hkv, c.S, c.D], { requiresGrad: true });
            const out = run(c, qt, kt, vt);
            backward(sum(mul(out, out)));
            const read = [await out.read()];
            for (const t of [qt, kt, vt]) read.push(await t.grad!.read());
            for (const t of [qt, kt, vt]) t.dispose();
            return read;
          })),
      );
    }
    const [texture, workgroup] = results;
    assertClose(texture[0], referenceAttention(c, q, k, v), FORWARD_TOL, "texture forward");
    ["dq", "dk", "dv"].forEach((name, i) =>
      assertClose(texture[i + 1], workgroup[i + 1], { atol: 1e-5, rtol: 1e-4 }, name)
    );
  }
});

Deno.test("attention on the texture variant keeps the forward's k and v packs for dQ's backward, bit for bit", async () => {
  await withVariant("attention", "texture", async () => {
    const [b, h, t, d] = [2, 2, 12, 8];
    const mk = (seed: number) =>
      tensor(Float32Array.from(randomArray(b * h * t * d, seed)), [b, h, t, d], {
        requiresGrad: true,
      });
    const q = mk(301), k = mk(302), v = mk(303);
    const w = tensor(Float32Array.from(randomArray(b * h * t * d, 304)), [b, h, t, d]);
    const run = (budget: number) =>
      withKeptTextureBudget(budget, () =>
        scopeAsync(async () => {
          clearPackCache();
          const y = scaledDotProductAttention(q, k, v, { causal: true });
          const loss = sum(mul(y, w));
          const d0 = rt().dispatchCount;
          backward(loss);
          const dispatches = rt().dispatchCount - d0;
          const grads = [];
          for (const x of [q, k, v]) {
            grads.push(await bitsOf(x.grad!));
            x.grad!.dispose();
            x.grad = null;
          }
          return { grads, dispatches };
        }));
    const repacked = await run(0), kept = await run(8 * 2 ** 20);
    assert.deepEqual(kept.grads, repacked.grads, "the same gradients, bit for bit");
    assert.equal(kept.dispatches, repacked.dispatches - 2, "dQ's backward packs neither k nor v");
  });
});

Deno.test("attention rejects mismatched shapes, dtypes and masks with named errors", () => {
  const q = tensor(new Float32Array(2 * 3 * 4 * 8), [2, 3, 4, 8]);
  const kv = tensor(new Float32Array(2 * 2 * 5 * 8), [2, 2, 5, 8]);
  const kv1 = tensor(new Float32Array(2 * 1 * 5 * 8), [2, 1, 5, 8]);
  assert.throws(() => scaledDotProductAttention(q, kv, kv), /multiple of kv heads/);
  assert.throws(
    () => scaledDotProductAttention(tensor([1, 2]), kv1, kv1),
    /q must have rank 4/,
  );
  const kvWrongD = tensor(new Float32Array(2 * 5 * 4), [2, 1, 5, 4]);
  assert.throws(() => scaledDotProductAttention(q, kvWrongD, kvWrongD), /k \[2,1,5,4\] must be/);
  assert.throws(() => scaledDotProductAttention(q, kv1, kvWrongD), /v \[2,1,5,4\] must equal/);
  assert.throws(
    () => scaledDotProductAttention(q, kv1, kv1, { keyPaddingMask: tensor([1, 1, 1, 1, 1]) }),
    /keyPaddingMask must be \[B, S\] = \[2, 5\]/,
  );
  assert.throws(
    () =>
      scaledDotProductAttention(q, kv1, kv1, {
        keyPaddingMask: tensor(new Uint32Array(10), [2, 5]),
      }),
    /keyPaddingMask must be f32 or i32/,
  );
  assert.throws(
    () => scaledDotProductAttention(q, kv1, kv1, { tiling: { threads: 0, rowsPerThread: 1 } }),
    /tiling must have integer threads/,
  );
  for (const t of [q, kv, kv1, kvWrongD]) t.dispose();
});

// ---- dropout on the probabilities ----------------------------------------------------------------

variantTest("attention dropout: forward equals the explicit-mask reference", async () => {
  const dropout = { p: 0.3, seed: 1234, stream: 7 };
  await checkForward({ B: 2, Hq: 2, Hkv: 2, T: 7, S: 33, D: 16, dropout }, 200);
  await checkForward(
    {
      B: 2,
      Hq: 4,
      Hkv: 1,
      T: 33,
      S: 40,
      D: 8,
      causal: true,
      mask: prefixMask(2, 40, [40, 29]),
      dropout,
    },
    201,
  );
  for (const tiling of TILINGS) {
    await checkForward({ B: 1, Hq: 4, Hkv: 2, T: 9, S: 11, D: 8, dropout, tiling }, 202);
  }
});

/**
 * The kernel's dropout multipliers read straight off the output: with q = 0 every visible key has
 * probability 1/S, and with v_j = e_j (D = S) output (i, j) is that probability times the mask.
 */
async function observedMultipliers(
  c: { B: number; Hq: number; T: number; S: number },
  dropout: AttentionDropout,
): Promise<Float32Array> {
  const { B, Hq, T, S } = c;
  const eye = new Float32Array(B * S * S);
  for (let b = 0; b < B; b++) for (let j = 0; j < S; j++) eye[(b * S + j) * S + j] = 1;
  const out = await scopeAsync(() =>
    scaledDotProductAttention(
      tensor(new Float32Array(B * Hq * T * S), [B, Hq, T, S]),
      tensor(new Float32Array(B * S * S), [B, 1, S, S]),
      tensor(eye, [B, 1, S, S]),
      { dropout },
    ).read()
  );
  return out.map((x) => x * S) as Float32Array;
}

variantTest("attention dropout: kept fraction ≈ 1 − p, kept ones scaled by 1/(1−p)", async () => {
  const shape = { B: 2, Hq: 3, T: 40, S: 64 };
  const n = shape.B * shape.Hq * shape.T * shape.S; // 15360 probabilities
  for (const p of [0.1, 0.5]) {
    const dropout = { p, seed: 99, stream: 3 };
    const m = await observedMultipliers(shape, dropout);
    let kept = 0;
    for (let e = 0; e < n; e++) {
      const v = m[e];
      const isKept = Math.abs(v - 1 / (1 - p)) < 1e-4;
      assert.ok(isKept || Math.abs(v) < 1e-6, `multiplier ${v} is neither 0 nor 1/(1−p)`);
      if (isKept) kept++;
      // Element (b, h, i, j) of the output is exactly the host rule's decision.
      const j = e % shape.S, i = Math.floor(e / shape.S) % shape.T;
      const bh = Math.floor(e / (shape.S * shape.T));
      assert.equal(isKept, attentionDropoutKeep(dropout, bh, i, j), `mask at ${e}`);
    }
    // Binomial(n, 1 − p): 5 standard deviations.
    const sd = Math.sqrt(n * p * (1 - p));
    assert.ok(Math.abs(kept - n * (1 - p)) < 5 * sd, `kept ${kept} of ${n} at p ${p}`);
  }
  // Another stream, another mask; the same stream, the same mask; p = 1 drops everything.
  const a = await observedMultipliers(shape, { p: 0.5, seed: 99, stream: 3 });
  const b = await observedMultipliers(shape, { p: 0.5, seed: 99, stream: 4 });
  const again = await observedMultipliers(shape, { p: 0.5, seed: 99, stream: 3 });
  assert.deepEqual(again, a);
  const differ = a.filter((x, e) => x !== b[e]).length;
  assert.ok(differ > n / 3, `streams 3 and 4 differ in ${differ} of ${n}`);
  const all = await observedMultipliers(shape, { p: 1, seed: 99, stream: 3 });
  assert.ok(all.every((x) => x === 0), "p = 1 drops every probability");
});

variantTest("attention dropout: p = 0 is exactly no dropout", async () => {
  const c: Case = { B: 1, Hq: 2, Hkv: 1, T: 7, S: 9, D: 8, causal: true };
  const plain = await checkForward(c, 210);
  const zero = await checkForward({ ...c, dropout: { p: 0, seed: 5, stream: 1 } }, 210);
  assert.deepEqual(zero, plain);
});

variantTest("attention dropout backward regenerates the mask (finite differences)", async () => {
  const dropout = { p: 0.25, seed: 77, stream: 12 };
  await checkAttentionGradients({ B: 2, Hq: 2, Hkv: 2, T: 7, S: 5, D: 8, dropout }, 220);
  await checkAttentionGradients(
    {
      B: 1,
      Hq: 4,
      Hkv: 2,
      T: 9,
      S: 11,
      D: 8,
      causal: true,
      mask: prefixMask(1, 11, [10]),
      dropout,
    },
    221,
  );
  await checkAttentionGradients(
    { B: 1, Hq: 2, Hkv: 1, T: 33, S: 33, D: 8, causal: true, dropout, tiling: TILINGS[2] },
    222,
  );
});

Deno.test("attention dropout: gradients differ from the undropped ones (the mask is applied)", async () => {
  const c: Case = { B: 1, Hq: 2, Hkv: 1, T: 7, S: 9, D: 8 };
  const [q, k, v] = inputs(c, 230);
  const grads = (dropout?: AttentionDropout) =>
    scopeAsync(async () => {
      const qt = tensor(Float32Array.from(q), [c.B, c.Hq, c.T, c.D], { requiresGrad: true });
      const kt = tensor(Float32Array.from(k), [c.B, c.Hkv, c.S, c.D], { requiresGrad: true });
      const vt = tensor(Float32Array.from(v), [c.B, c.Hkv, c.S, c.D], { requiresGrad: true });
      backward(sum(mul(run({ ...c, dropout }, qt, kt, vt), run(c, qt, kt, vt))));
      const out = [];
      for (const t of [qt, kt, vt]) out.push(await t.grad!.read());
      for (const t of [qt, kt, vt]) t.dispose();
      return out;
    });
  const plain = await grads();
  const dropped = await grads({ p: 0.4, seed: 3, stream: 0 });
  for (let i = 0; i < 3; i++) {
    assert.ok(dropped[i].some((x, e) => Math.abs(x - plain[i][e]) > 1e-4), `gradient ${i}`);
  }
});

Deno.test("attention dropout options are validated with named errors", () => {
  const q = tensor(new Float32Array(8), [1, 1, 1, 8]);
  assert.throws(
    () => scaledDotProductAttention(q, q, q, { dropout: { p: 1.5, seed: 0, stream: 0 } }),
    /dropout\.p must be in \[0, 1\], got 1\.5/,
  );
  assert.throws(
    () => scaledDotProductAttention(q, q, q, { dropout: { p: 0.1, seed: 0.5, stream: 0 } }),
    /dropout\.seed must be an integer/,
  );
  assert.throws(
    () => scaledDotProductAttention(q, q, q, { dropout: { p: 0.1, seed: 0, stream: -1 } }),
    /dropout\.stream must be an integer in \[0, 2\^32\)/,
  );
  q.dispose();
});

variantTest(
  "attention output and gradients are stored heads-interleaved: merging heads is a view both ways",
  async () => {
    // The encoder's pattern: projections [B, T, H·D] split into heads, attention, merged back.
    const c: Case = { B: 2, Hq: 3, Hkv: 3, T: 5, S: 5, D: 8 };
    const [q, k, v] = inputs(c, 150);
    const toHeads = (a: Float64Array) => swapHeadsAndTokens(a, c, true);
    await scopeAsync(async () => {
      const proj = [q, k, v].map((a) =>
        tensor(Float32Array.from(toHeads(a)), [c.B, c.T, c.Hq * c.D], { requiresGrad: true })
      );
      const [qt, kt, vt] = proj.map((p) => transpose(reshape(p, [c.B, c.T, c.Hq, c.D]), 1, 2));
      const out = run(c, qt, kt, vt);
      assert.deepEqual(out.shape, [c.B, c.Hq, c.T, c.D]);
      const back = transpose(out, 1, 2);
      assert.ok(back.isContiguous, "transpose(out, 1, 2) is contiguous: the merge is a view");
      const before = rt().dispatchCount;
      const merged = reshape(back, [c.B, c.T, c.Hq * c.D]);
      assert.equal(rt().dispatchCount, before, "merging heads dispatches nothing");
      assertClose(
        await merged.read(),
        toHeads(referenceAttention(c, q, k, v)),
        FORWARD_TOL,
        "merged output",
      );
      // Weights make every output element's gradient distinct.
      const w = tensor(Float32Array.from(randomArray(merged.size, 151, -1, 1)), merged.shape);
      backward(sum(mul(merged, w)));
      for (const p of proj) {
        assert.ok(p.grad, "each projection gets a gradient");
        assert.deepEqual(p.grad.shape, p.shape);
      }
      // Against finite differences of the same composition, checked per projection.
      const wHost = await w.read();
      const loss = (qa: Float64Array, ka: Float64Array, va: Float64Array) => {
        const o = toHeads(referenceAttention(c, qa, ka, va));
        return o.reduce((s, x, i) => s + x * wHost[i], 0);
      };
      const eps = 1e-3;
      const fromHeads = (a: ArrayLike<number>) => swapHeadsAndTokens(a, c, false);
      const base = [q, k, v];
      for (let which = 0; which < 3; which++) {
        const got = await proj[which].grad!.read();
        for (const i of [0, 7, 41, got.length - 1]) {
          const plus = base.map((a) => Float64Array.from(toHeads(a)));
          const minus = base.map((a) => Float64Array.from(toHeads(a)));
          plus[which][i] += eps;
          minus[which][i] -= eps;
          const f = (xs: Float64Array[]) =>
            loss(...(xs.map(fromHeads) as [Float64Array, Float64Array, Float64Array]));
          const fd = (f(plus) - f(minus)) / (2 * eps);
          assert.ok(
            Math.abs(got[i] - fd) <= 2e-3 + 2e-3 * Math.abs(fd),
            `grad of projection ${which} element ${i}: ${got[i]} vs finite difference ${fd}`,
          );
        }
      }
    });
  },
);

variantTest(
  "attention packOut/packGrads: the packs the kernels write serve the projections, bits unchanged",
  async () => {
    // q, k, v are projections of x and the merged output feeds one: forward and backward products
    // find the output's and the gradients' packs. D 8 and 16 pack (whole texels per head); D 6
    // cannot and must fall back. Masked, with dropout.
    for (const [B, H, T, D] of [[2, 3, 7, 8], [1, 2, 33, 16], [2, 2, 5, 6]]) {
      for (const mm of MATMUL.variantNames()) {
        await withVariant("matmul", mm, async () => {
          const run = (hint: boolean) =>
            scopeAsync(async () => {
              clearPackCache();
              let seed = 301;
              const mk = (shape: number[]) =>
                tensor(
                  Float32Array.from(randomArray(shape.reduce((a, n) => a * n), seed++, -0.5, 0.5)),
                  shape,
                  { requiresGrad: true },
                );
              const x = mk([B, T, 12]);
              const [wq, wk, wv] = [mk([H * D, 12]), mk([H * D, 12]), mk([H * D, 12])];
              const wo = mk([5, H * D]);
              const heads = (w: Tensor) => transpose(reshape(linear(x, w), [B, T, H, D]), 1, 2);
              const mask = tensor(Array.from({ length: B * T }, (_, i) => (i % 5 === 3 ? 0 : 1)), [
                B,
                T,
              ]);
              const d0 = rt().dispatchCount;
              const out = scaledDotProductAttention(heads(wq), heads(wk), heads(wv), {
                keyPaddingMask: mask,
                dropout: { p: 0.2, seed: 4, stream: 9 },
                packOut: hint,
                packGrads: hint,
              });
              const y = linear(reshape(transpose(out, 1, 2), [B, T, H * D]), wo);
              const upstream = Float32Array.from(randomArray(B * T * 5, 305));
              backward(sum(mul(y, tensor(upstream, [B, T, 5]))));
              const dispatches = rt().dispatchCount - d0;
              const values = [await out.read(), await y.read()];
              for (const t of [x, wq, wk, wv, wo]) values.push(await t.grad!.read());
              const bits = values.map((a) =>
                Array.from(new Uint32Array((a as Float32Array).buffer))
              );
              return { bits, dispatches };
            });
          const plain = await run(false), hinted = await run(true);
          const what = `${mm} B${B} H${H} T${T} D${D}`;
          plain.bits.forEach((b, i) => assert.deepEqual(hinted.bits[i], b, `${what}: output ${i}`));
          // Texture products: the output's pack and at least two of the three gradients' (the
          // pack cache keeps two layer inputs) are not packed again.
          if (mm === "texture" && D % 4 === 0) {
            assert.ok(hinted.dispatches <= plain.dispatches - 3, `${what}: ${hinted.dispatches}`);
          } else assert.equal(hinted.dispatches, plain.dispatches, what);
        });
      }
    }
  },
);
