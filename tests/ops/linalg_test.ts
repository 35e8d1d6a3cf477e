/**
 * GPU linear algebra against float64 references written here: QR against a host Householder QR
 * with LAPACK's signs (plus QᵀQ = I, QR = A, R upper triangular); SVD singular values against the
 * eigenvalues of AᵀA (or AAᵀ) from a cyclic Jacobi eigen solver, with U·diag(S)·Vᵀ = A and
 * UᵀU = VᵀV = I, on awkward, wide, rank-deficient and repeated-value matrices; randomized SVD on a
 * matrix with a known spectrum 2⁻ⁱ, including the error falling with power iterations.
 */
import assert from "node:assert/strict";
import {
  backward,
  qr,
  randomizedSvd,
  rt,
  scopeAsync,
  sum,
  svd,
  type Tensor,
  tensor,
  withCategory,
  withVariant,
} from "../../ops/mod.ts";
import { assertClose, randomArray, setup } from "../helpers.ts";

await setup();

/** Both thread layouts of the linalg kernels (see ops/linalg.ts); llvmpipe prefers "thread". */
const VARIANTS = ["thread", "workgroup"] as const;

/** `Deno.test` once per variant, with the variant forced. */
function testVariants(name: string, fn: () => Promise<void>): void {
  for (const v of VARIANTS) {
    Deno.test(`${name} [${v}]`, () => withVariant("linalg", v, fn));
  }
}

// ---- float64 host references ------------------------------------------------------------------

/** Row-major [m, n] · [n, p]. */
function matmul64(a: ArrayLike<number>, b: ArrayLike<number>, m: number, n: number, p: number) {
  const out = new Float64Array(m * p);
  for (let i = 0; i < m; i++) {
    for (let k = 0; k < n; k++) {
      const x = a[i * n + k];
      if (x === 0) continue;
      for (let j = 0; j < p; j++) out[i * p + j] += x * b[k * p + j];
    }
  }
  return out;
}

function transpose64(a: ArrayLike<number>, m: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) out[j * m + i] = a[i * n + j];
  return out;
}

/** Householder QR with LAPACK's convention β = −sign(α)·‖x‖ (τ = 0 for a zero sub-column). */
function householderQr64(a: ArrayLike<number>, m: number, n: number) {
  const w = Float64Array.from(a);
  const q = new Float64Array(m * n);
  for (let i = 0; i < n; i++) q[i * n + i] = 1;
  const vs: Float64Array[] = [], taus: number[] = [];
  for (let j = 0; j < n; j++) {
    let sigma = 0;
    for (let i = j + 1; i < m; i++) sigma += w[i * n + j] ** 2;
    const alpha = w[j * n + j];
    const v = new Float64Array(m);
    v[j] = 1;
    let tau = 0, beta = alpha;
    if (sigma > 0) {
      const norm = Math.sqrt(alpha * alpha + sigma);
      beta = alpha >= 0 ? -norm : norm;
      tau = (beta - alpha) / beta;
      for (let i = j + 1; i < m; i++) v[i] = w[i * n + j] / (alpha - beta);
    }
    for (let c = j; c < n; c++) {
      let d = 0;
      for (let i = j; i < m; i++) d += v[i] * w[i * n + c];
      for (let i = j; i < m; i++) w[i * n + c] -= tau * d * v[i];
    }
    w[j * n + j] = beta;
    vs.push(v);
    taus.push(tau);
  }
  for (let j = n - 1; j >= 0; j--) {
    for (let c = 0; c < n; c++) {
      let d = 0;
      for (let i = j; i < m; i++) d += vs[j][i] * q[i * n + c];
      for (let i = j; i < m; i++) q[i * n + c] -= taus[j] * d * vs[j][i];
    }
  }
  const r = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let c = i; c < n; c++) r[i * n + c] = w[i * n + c];
  return { q, r };
}

/** Eigenvalues of a symmetric [n, n] matrix by cyclic Jacobi rotations, descending. */
function symmetricEigenvalues(sym: ArrayLike<number>, n: number): number[] {
  const a = Float64Array.from(sym);
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0, diag = 0;
    for (let i = 0; i < n; i++) {
      diag += a[i * n + i] ** 2;
      for (let j = i + 1; j < n; j++) off += a[i * n + j] ** 2;
    }
    if (off <= 1e-30 * diag || off === 0) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q];
        if (apq === 0) continue;
        const theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1), s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
      }
    }
  }
  return Array.from({ length: n }, (_, i) => a[i * n + i]).sort((x, y) => y - x);
}

/** Singular values of A [m, n] from the eigenvalues of the smaller Gram matrix. */
function singularValues64(a: ArrayLike<number>, m: number, n: number): number[] {
  const gram = m >= n
    ? matmul64(transpose64(a, m, n), a, n, m, n)
    : matmul64(a, transpose64(a, m, n), m, n, m);
  return symmetricEigenvalues(gram, Math.min(m, n)).map((e) => Math.sqrt(Math.max(0, e)));
}

/** [m, k] with orthonormal columns: modified Gram–Schmidt (twice) of a random matrix. */
function orthonormal64(m: number, k: number, seed: number): Float64Array {
  const x = randomArray(m * k, seed);
  for (let pass = 0; pass < 2; pass++) {
    for (let j = 0; j < k; j++) {
      for (let p = 0; p < j; p++) {
        let d = 0;
        for (let i = 0; i < m; i++) d += x[i * k + p] * x[i * k + j];
        for (let i = 0; i < m; i++) x[i * k + j] -= d * x[i * k + p];
      }
      let norm = 0;
      for (let i = 0; i < m; i++) norm += x[i * k + j] ** 2;
      norm = Math.sqrt(norm);
      for (let i = 0; i < m; i++) x[i * k + j] /= norm;
    }
  }
  return x;
}

/** U [m, k]·diag(s)·V [n, k]ᵀ. */
function compose64(
  u: ArrayLike<number>,
  s: ArrayLike<number>,
  v: ArrayLike<number>,
  m: number,
  n: number,
) {
  const k = s.length;
  const us = new Float64Array(m * k);
  for (let i = 0; i < m; i++) for (let j = 0; j < k; j++) us[i * k + j] = u[i * k + j] * s[j];
  return matmul64(us, transpose64(v, n, k), m, k, n);
}

function identity(k: number): Float64Array {
  const out = new Float64Array(k * k);
  for (let i = 0; i < k; i++) out[i * k + i] = 1;
  return out;
}

/** Assert XᵀX = I for X [m, k]. */
function assertOrthonormalColumns(
  x: ArrayLike<number>,
  m: number,
  k: number,
  atol: number,
  what: string,
) {
  assertClose(matmul64(transpose64(x, m, k), x, k, m, k), identity(k), { atol, rtol: 0 }, what);
}

function maxAbs(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 0; i < x.length; i++) best = Math.max(best, Math.abs(x[i]));
  return best;
}

async function read64(t: Tensor): Promise<Float64Array> {
  return Float64Array.from(await t.read());
}

// ---- QR ---------------------------------------------------------------------------------------

const QR_SHAPES: [number, number][] = [[1, 1], [7, 3], [33, 33], [130, 17], [7, 1], [2, 2]];

testVariants(
  "qr: Q orthonormal, QR = A, R upper triangular, equal to a float64 Householder QR",
  async () => {
    for (const [idx, [m, n]] of QR_SHAPES.entries()) {
      await scopeAsync(async () => {
        const data = randomArray(m * n, 100 + idx);
        const { q, r } = qr(tensor(Float32Array.from(data), [m, n]));
        assert.deepEqual(q.shape, [m, n]);
        assert.deepEqual(r.shape, [n, n]);
        const qh = await read64(q), rh = await read64(r);
        const what = `${m}×${n}`;
        assertOrthonormalColumns(qh, m, n, 1e-5, `QᵀQ ${what}`);
        assertClose(matmul64(qh, rh, m, n, n), data, { atol: 1e-5, rtol: 1e-5 }, `QR ${what}`);
        for (let i = 0; i < n; i++) {
          for (let c = 0; c < i; c++) assert.equal(rh[i * n + c], 0, `R[${i}, ${c}] of ${what}`);
        }
        const ref = householderQr64(data, m, n);
        assertClose(rh, ref.r, { atol: 1e-4, rtol: 1e-4 }, `R vs float64 ${what}`);
        assertClose(qh, ref.q, { atol: 1e-4, rtol: 1e-4 }, `Q vs float64 ${what}`);
      });
    }
  },
);

testVariants("qr: rank-deficient columns still give orthonormal Q and QR = A", async () => {
  const m = 9, n = 5;
  const data = randomArray(m * n, 7);
  for (let i = 0; i < m; i++) {
    data[i * n + 1] = 0; // a zero column
    data[i * n + 3] = 2 * data[i * n + 0]; // a dependent column
  }
  await scopeAsync(async () => {
    const { q, r } = qr(tensor(Float32Array.from(data), [m, n]));
    const qh = await read64(q), rh = await read64(r);
    assertOrthonormalColumns(qh, m, n, 1e-5, "QᵀQ");
    assertClose(matmul64(qh, rh, m, n, n), data, { atol: 1e-5, rtol: 1e-5 }, "QR");
    assert.ok(Math.abs(rh[1 * n + 1]) < 1e-6, `R[1, 1] = ${rh[n + 1]} for a zero column`);
    assert.ok(Math.abs(rh[3 * n + 3]) < 1e-5, `R[3, 3] = ${rh[3 * n + 3]} for a dependent column`);
  });
});

Deno.test("qr: f16 and strided inputs are read as their values", async () => {
  const m = 12, n = 4;
  const data = randomArray(m * n, 3).map((x) => Math.round(x * 64) / 64); // exact in f16
  await scopeAsync(async () => {
    const half = tensor(Float32Array.from(data), [m, n], { dtype: "f16" });
    const { q, r } = qr(half);
    assertClose(matmul64(await read64(q), await read64(r), m, n, n), data, { atol: 1e-5 }, "f16");
    // A transposed view: rows of the stored [n, m] matrix are A's columns.
    const stored = tensor(Float32Array.from(transpose64(data, m, n)), [n, m]);
    const view = stored.view([m, n], [1, m]);
    const fromView = qr(view);
    assertClose(await fromView.r.read(), await r.read(), { atol: 1e-6 }, "R of a transposed view");
  });
});

Deno.test("qr: argument errors name the tensor and the rule", () => {
  assert.throws(() => qr(tensor(new Float32Array(6), [2, 3])), /m ≥ n/);
  assert.throws(() => qr(tensor(new Float32Array(8), [2, 2, 2])), /must be a matrix/);
  assert.throws(() => qr(tensor(new Int32Array(4), [2, 2], { dtype: "i32" })), /f32 or f16/);
});

// ---- SVD --------------------------------------------------------------------------------------

/** Check an SVD of `data` [m, n] against the float64 singular values and its own invariants. */
async function checkSvd(
  data: Float64Array,
  m: number,
  n: number,
  what: string,
  tol = 1e-5,
): Promise<{ s: Float64Array; u: Float64Array; v: Float64Array }> {
  return await scopeAsync(async () => {
    const k = Math.min(m, n);
    const res = svd(tensor(Float32Array.from(data), [m, n]));
    assert.deepEqual(res.u.shape, [m, k], `u shape ${what}`);
    assert.deepEqual(res.s.shape, [k], `s shape ${what}`);
    assert.deepEqual(res.v.shape, [n, k], `v shape ${what}`);
    const u = await read64(res.u), s = await read64(res.s), v = await read64(res.v);
    const scale = Math.max(1e-30, maxAbs(data));
    const ref = singularValues64(data, m, n);
    assertClose(s, ref, { atol: tol * Math.max(ref[0], 1e-30), rtol: tol }, `S ${what}`);
    for (let i = 1; i < k; i++) assert.ok(s[i] <= s[i - 1], `S descending ${what}`);
    assertOrthonormalColumns(u, m, k, 5e-6, `UᵀU ${what}`);
    assertOrthonormalColumns(v, n, k, 5e-6, `VᵀV ${what}`);
    assertClose(compose64(u, s, v, m, n), data, { atol: 2 * tol * scale, rtol: 0 }, `USVᵀ ${what}`);
    return { s, u, v };
  });
}

const SVD_SHAPES: [number, number][] = [[7, 5], [5, 7], [33, 33], [64, 16], [1, 1], [1, 6], [6, 1]];

testVariants("svd: singular values match float64, USVᵀ = A, U and V orthonormal", async () => {
  for (const [idx, [m, n]] of SVD_SHAPES.entries()) {
    await checkSvd(randomArray(m * n, 200 + idx), m, n, `${m}×${n}`);
  }
});

testVariants("svd: rank-deficient matrices get zero values and still orthonormal U", async () => {
  // Rank 3 (a product of [20, 3] and [3, 12]) and a zero matrix with one non-zero row.
  const m = 20, n = 12, r = 3;
  const low = matmul64(randomArray(m * r, 31), randomArray(r * n, 32), m, r, n);
  const { s } = await checkSvd(low, m, n, "rank 3");
  for (let i = r; i < n; i++) assert.ok(s[i] < 1e-5 * s[0], `s[${i}] = ${s[i]} should vanish`);
  const sparse = new Float64Array(6 * 4);
  sparse.set([1, -2, 0.5, 3], 2 * 4);
  const one = await checkSvd(sparse, 6, 4, "one non-zero row");
  assertClose(one.s, [Math.hypot(1, 2, 0.5, 3), 0, 0, 0], { atol: 1e-6 }, "S of one row");
  const zero = await checkSvd(new Float64Array(5 * 3), 5, 3, "zero matrix");
  assertClose(zero.s, [0, 0, 0], { atol: 0 }, "S of zero");
});

testVariants("svd: repeated singular values", async () => {
  const m = 12, n = 6;
  const sTrue = [2, 2, 2, 1, 1, 0.5];
  const data = compose64(orthonormal64(m, n, 41), sTrue, orthonormal64(n, n, 42), m, n);
  const { s } = await checkSvd(data, m, n, "repeated");
  assertClose(s, sTrue, { atol: 2e-6 }, "S repeated");
  const wide = transpose64(data, m, n);
  await checkSvd(wide, n, m, "repeated, wide");
});

Deno.test("svd: 130×33 and a graded spectrum", async () => {
  await checkSvd(randomArray(130 * 33, 51), 130, 33, "130×33");
  // Singular values spanning four decades are still found to f32 relative accuracy.
  const n = 10;
  const graded = Array.from({ length: n }, (_, i) => 10 ** (-i / 2.5));
  const data = compose64(orthonormal64(16, n, 52), graded, orthonormal64(n, n, 53), 16, n);
  const { s } = await checkSvd(data, 16, n, "graded");
  assertClose(s, graded, { atol: 1e-7, rtol: 2e-4 }, "graded S");
});

Deno.test("linalg: results are untaped, in the caller's category, and scratch is freed", async () => {
  const before = rt().pool.stats().live;
  await scopeAsync(async () => {
    const a = tensor(Float32Array.from(randomArray(40 * 12, 61)), [40, 12], { requiresGrad: true });
    const res = withCategory("optimizer", () => ({ ...svd(a), ...qr(a) }));
    for (const t of Object.values(res)) {
      assert.equal(t.requiresGrad, false, `${t} must not be on the tape`);
      assert.equal(t.category, "optimizer");
    }
    const low = withCategory("weights", () => randomizedSvd(a, 4));
    for (const t of Object.values(low)) assert.equal(t.category, "weights");
    const live = rt().pool.stats().live;
    assert.equal(live.scratch, before.scratch, "no scratch left live");
    // The input still takes part in ordinary autograd after the untaped calls.
    backward(sum(a));
    assert.ok(a.grad);
    await rt().sync();
  });
  assert.deepEqual(rt().pool.stats().live, before);
});

Deno.test("svd: the sweeps do the work (one sweep is not converged, the default is)", async () => {
  const n = 33;
  const data = randomArray(n * n, 91);
  const ref = singularValues64(data, n, n);
  await scopeAsync(async () => {
    const a = tensor(Float32Array.from(data), [n, n]);
    const worst = async (maxSweeps?: number) => {
      const s = await svd(a, { maxSweeps }).s.read();
      return Math.max(...ref.map((r, i) => Math.abs(s[i] - r) / ref[0]));
    };
    const one = await worst(1), converged = await worst();
    assert.ok(one > 1e-3, `one sweep already within ${one}`);
    assert.ok(converged < 1e-5, `default sweeps only within ${converged}`);
    assert.equal(await worst(60), converged, "sweeps after convergence change nothing");
  });
});

Deno.test("svd: argument errors", () => {
  assert.throws(() => svd(tensor(new Float32Array(4), [4])), /must be a matrix/);
  assert.throws(() => svd(tensor(new Float32Array(4), [2, 2]), { maxSweeps: 0 }), /maxSweeps/);
});

// ---- randomized SVD ---------------------------------------------------------------------------

/** [m, n] = U·diag(ratioⁱ)·Vᵀ with random orthonormal U, V: a known, decaying spectrum. */
function decayingMatrix(m: number, n: number, seed: number, ratio = 0.5) {
  const k = Math.min(m, n);
  const s = Array.from({ length: k }, (_, i) => ratio ** i);
  const u = orthonormal64(m, k, seed), v = orthonormal64(n, k, seed + 1);
  return { data: compose64(u, s, v, m, n), s, u, v };
}

/** Σᵢ |sᵢ − truthᵢ| over the returned values. */
async function spectrumError(
  data: Float64Array,
  [m, n]: [number, number],
  truth: number[],
  rank: number,
  opts: { oversample: number; powerIterations: number; seed: number },
): Promise<number> {
  return await scopeAsync(async () => {
    const { s } = randomizedSvd(tensor(Float32Array.from(data), [m, n]), rank, opts);
    const got = await s.read();
    let err = 0;
    for (let i = 0; i < rank; i++) err += Math.abs(got[i] - truth[i]);
    return err;
  });
}

Deno.test("randomizedSvd: top singular triplets of a 2^-i spectrum, tall and wide", async () => {
  for (const [m, n] of [[130, 90], [40, 130]] as [number, number][]) {
    const rank = 8;
    const truth = decayingMatrix(m, n, 71);
    await scopeAsync(async () => {
      const res = randomizedSvd(tensor(Float32Array.from(truth.data), [m, n]), rank, { seed: 3 });
      assert.deepEqual(res.u.shape, [m, rank]);
      assert.deepEqual(res.s.shape, [rank]);
      assert.deepEqual(res.v.shape, [n, rank]);
      const u = await read64(res.u), s = await read64(res.s), v = await read64(res.v);
      const what = `${m}×${n}`;
      // With 10 oversampled columns and 2 power iterations the leading values are f32-exact.
      assertClose(s, truth.s.slice(0, rank), { atol: 2e-6, rtol: 1e-5 }, `S ${what}`);
      assertOrthonormalColumns(u, m, rank, 1e-5, `UᵀU ${what}`);
      assertOrthonormalColumns(v, n, rank, 1e-5, `VᵀV ${what}`);
      // Each singular vector matches the true one up to sign.
      const k = Math.min(m, n);
      for (let j = 0; j < 4; j++) {
        let du = 0, dv = 0;
        for (let i = 0; i < m; i++) du += u[i * rank + j] * truth.u[i * k + j];
        for (let i = 0; i < n; i++) dv += v[i * rank + j] * truth.v[i * k + j];
        assert.ok(Math.abs(Math.abs(du) - 1) < 1e-4, `|u${j}·u${j}*| = ${Math.abs(du)} ${what}`);
        assert.ok(Math.abs(du - dv) < 1e-4, `u${j} and v${j} share a sign ${what}`);
      }
    });
  }
});

Deno.test("randomizedSvd: the error falls with each power iteration", async () => {
  // On 2^-i one iteration already reaches f32 round-off (measured: 4e-4, 2e-7, 2e-7, 1e-8), so
  // a flatter 0.9^i spectrum without oversampling shows the rate (0.67, 0.08, 0.01, 5e-4).
  const m = 130, n = 90, rank = 8;
  for (const [ratio, floor] of [[0.9, 1e-3], [0.5, 1e-5]]) {
    const { data, s } = decayingMatrix(m, n, 81, ratio);
    const errors: number[] = [];
    for (const powerIterations of [0, 1, 2, 4]) {
      const opts = { oversample: 0, powerIterations, seed: 5 };
      errors.push(await spectrumError(data, [m, n], s, rank, opts));
    }
    // Each iteration lowers the error until it reaches f32 round-off (~1e-7 per value).
    for (let i = 1; i < errors.length; i++) {
      assert.ok(errors[i] < errors[i - 1] || errors[i] < 1e-6, `errors ${errors} (${ratio}ⁱ)`);
    }
    assert.ok(errors[0] > 10 * errors[2], `errors ${errors} (${ratio}ⁱ) barely fall`);
    assert.ok(errors[3] < floor, `error after 4 iterations ${errors[3]} (${ratio}ⁱ)`);
  }
});

Deno.test("randomizedSvd: argument errors", () => {
  const a = tensor(new Float32Array(12), [4, 3]);
  assert.throws(() => randomizedSvd(a, 4), /rank must be an integer in 1…3/);
  assert.throws(() => randomizedSvd(a, 0), /rank/);
  assert.throws(() => randomizedSvd(a, 2, { oversample: -1 }), /oversample/);
  assert.throws(() => randomizedSvd(a, 2, { powerIterations: 1.5 }), /powerIterations/);
  a.dispose();
});
