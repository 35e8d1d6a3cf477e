/**
 * Linear algebra on the GPU: thin Householder QR, one-sided Jacobi SVD and randomized SVD
 * (Halko–Martinsson–Tropp), the factorizations PiSSA, OLoRA, EVA, GaLore and AdaLoRA start from.
 *
 * Every function takes an f32 (or f16) matrix, returns new f32 tensors in the caller's memory
 * category, records nothing on the autograd tape, and frees its temporaries (category "scratch"
 * while they live). All arithmetic runs in WGSL kernels or engine ops; nothing is read back, so
 * the calls are synchronous and convergence is decided on the GPU (see {@link svd}).
 *
 * Conventions:
 * - `qr`: R's diagonal may be negative, as LAPACK's `geqrf` (and so `torch.linalg.qr`) leaves it:
 *   reflector j maps column j to β·e_j with β = −sign(α)·‖x‖, α the diagonal entry (sign(0) = +).
 *   A column already zero below the diagonal gets no reflection (τ = 0, β = α).
 * - `svd`: singular values descending. Singular vectors are unique only up to sign (and up to a
 *   rotation within repeated singular values); left vectors of numerically zero singular values
 *   (s ≤ max(m, n)·2⁻²³·s₀) are an arbitrary orthonormal completion.
 * - `randomizedSvd`: torch.svd_lowrank's algorithm (a tall problem, the transpose when m < n; a
 *   QR after every product of the power iterations), with `rank + oversample` sampled columns of
 *   which the top `rank` are returned. `oversample: 0` reproduces PiSSA's `pissa_niter_k` call.
 *
 * @module
 */
import { noGrad } from "./autograd.ts";
import { fillInto, map, randNormal } from "./elementwise.ts";
import { matmul } from "./matmul.ts";
import { defineKernel, grid1d, type Kernel, linearIndex, memoKernel, rt } from "./runtime.ts";
import { slice, transpose } from "./shape.ts";
import type { Category } from "./memory.ts";
import { currentCategory, empty, scope, type Tensor, withCategory } from "./tensor.ts";
import { type KernelFamily, kernelFamily } from "./variants.ts";

/** A thin QR factorization A = Q·R. */
export interface QrResult {
  /** [m, n] with orthonormal columns. */
  q: Tensor;
  /** [n, n] upper triangular. */
  r: Tensor;
}

/** A (possibly truncated) singular value decomposition A ≈ U·diag(S)·Vᵀ. */
export interface SvdResult {
  /** [m, k] left singular vectors (orthonormal columns). */
  u: Tensor;
  /** [k] singular values, descending. */
  s: Tensor;
  /** [n, k] right singular vectors (orthonormal columns). */
  v: Tensor;
}

/** Options of {@link svd}. */
export interface SvdOptions {
  /**
   * Sweeps recorded (default 30, LAPACK's bound). Sweeps after convergence cost one no-op
   * dispatch per round, since the GPU skips them.
   */
  maxSweeps?: number;
}

/** Options of {@link randomizedSvd}. */
export interface RandomizedSvdOptions {
  /** Extra sampled columns beyond `rank` (default 10). */
  oversample?: number;
  /** Power (subspace) iterations, torch's `niter` (default 2). */
  powerIterations?: number;
  /** Seed of the Gaussian test matrix (default 0). */
  seed?: number;
}

// ---- how threads map onto columns -------------------------------------------------------------
//
// Every heavy kernel here works on items (a column, or a column pair) of row-major matrices and
// walks each item's rows. `threads` says how many threads share an item:
// - threads > 1 ("workgroup"): one workgroup per item, rows strided over its threads and summed
//   by a tree in workgroup memory — many threads in flight, the layout for GPUs;
// - threads = 1 ("thread"): one thread per item walking its rows serially, adjacent threads on
//   adjacent columns, no barriers — llvmpipe runs a workgroup's barriers as coroutine switches,
//   which cost it far more than the lost parallelism.
// Serial sums are blocked (a partial per `CHUNK` rows per thread) so f32 rounding stays near
// √rows·ε rather than rows·ε. Kernels never return early and never put a loop inside a branch:
// an item that has nothing to do gets a loop bound of zero instead. Besides keeping barriers in
// uniform control flow, this sidesteps an llvmpipe pathology where a loop nested in a divergent
// branch runs ~100× slower (measured: 25 ms instead of 0.2 ms per Householder step).

/** What the linalg variants choose by: the length of the columns the kernels walk. */
export interface LinalgShapes {
  /** Rows per column. */
  rows: number;
}

/** A linalg variant: threads per item for columns of `rows` elements. */
export type LinalgRun = (rows: number) => number;

/**
 * The kernel family of QR and SVD; its variants are "workgroup" (preferred on hardware GPUs) and
 * "thread" (preferred on software adapters: on llvmpipe, bench/linalg_bench.ts measured SVD of
 * 256×256 in 5.3 s against 67 s, QR of 768×768 in 16 s against 44 s).
 */
export const LINALG: KernelFamily<LinalgShapes, LinalgRun> = kernelFamily("linalg");

LINALG.register({
  name: "workgroup",
  preference: (g) => (g.adapter.isFallback ? 0 : 1),
  supports: () => true,
  run: (rows) => {
    let t = 32;
    while (t < rows && t < 256) t *= 2;
    return t;
  },
});

LINALG.register({
  name: "thread",
  preference: (g) => (g.adapter.isFallback ? 2 : 0),
  supports: () => true,
  run: () => 1,
});

/** Threads per item for columns of `rows` elements on this adapter. */
function threadsFor(rows: number): number {
  return LINALG.choose({ rows }).run(rows);
}

/** Threads per workgroup of the elementwise kernels and of the one-thread-per-item layout. */
const WG = 64;
/** Rows per partial sum of a thread's blocked column sum. */
const CHUNK = 32;
/** Two to the −23: f32 machine epsilon (numpy's finfo(float32).eps). */
const F32_EPS = 2 ** -23;

const cachedKernel = (key: string, build: () => Kernel): Kernel => memoKernel("linalg", key, build);

/**
 * WGSL of a per-item kernel: `item` (the column or pair index) and `lane` (this thread's rank
 * among the item's `threads`) are defined before `body`; `wg_sum` exists when threads > 1.
 */
function itemKernelSource(threads: number, body: string): string {
  const grouped = threads > 1;
  return /* wgsl */ `
${grouped ? workgroupSum(threads) : ""}
@compute @workgroup_size(${grouped ? threads : WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let item = ${grouped ? "wid.x + wid.y * nwg.x" : linearIndex(WG)};
  let lane = ${grouped ? "li" : "0u"};
${body}
}`;
}

/**
 * WGSL `wg_sum(li, v)`: the sum of every thread's vec4 partial, returned to all threads (a tree
 * in workgroup memory; the trailing barrier lets the caller reuse the array at once).
 */
function workgroupSum(size: number): string {
  return /* wgsl */ `
var<workgroup> wg_red: array<vec4f, ${size}>;
fn wg_sum(li: u32, v: vec4f) -> vec4f {
  wg_red[li] = v;
  workgroupBarrier();
  for (var s = ${size / 2}u; s > 0u; s = s >> 1u) {
    if (li < s) { wg_red[li] = wg_red[li] + wg_red[li + s]; }
    workgroupBarrier();
  }
  let total = wg_red[0];
  workgroupBarrier();
  return total;
}`;
}

/**
 * WGSL declaring `total` (vec4f), the sum over rows i in [`from`, `to`) of what `body` adds to
 * `part`, known to every thread of the item.
 */
function columnSum(threads: number, o: { from: string; to: string; body: string }): string {
  const block = CHUNK * threads;
  return `  var partial = vec4f(0.0);
  for (var i0 = ${o.from} + lane; i0 < ${o.to}; i0 += ${block}u) {
    var part = vec4f(0.0);
    let i1 = min(i0 + ${block}u, ${o.to});
    for (var i = i0; i < i1; i += ${threads}u) { ${o.body} }
    partial += part;
  }
  let total = ${threads > 1 ? "wg_sum(li, partial)" : "partial"};`;
}

/** WGSL loop over this thread's rows i in [`from`, `to`). */
function rowLoop(threads: number, from: string, to: string, body: string): string {
  return `for (var i = ${from} + lane; i < ${to}; i += ${threads}u) { ${body} }`;
}

/**
 * WGSL applying the reflector H = I − τ·v·vᵀ, v = (0…0, 1, scale·X[j+1.., j]), to column `c` of
 * the row-major [m, n] matrix `target` (items with `live` false touch nothing). `head` is
 * target[j, c], read before the column sum's barrier (lane 0 overwrites it); `dot` is
 * Σ_{i>j} X[i, j]·target[i, c], from a {@link columnSum}.
 */
function applyReflector(o: { threads: number; x: string; target: string; dot: string }): string {
  return `  let f = tau * (head + scale * ${o.dot});
  if (live && lane == 0u) { ${o.target}[j * n + c] = head - f; }
  let fs = f * scale;
  ${
    rowLoop(
      o.threads,
      "j + 1u",
      "select(j + 1u, m, live)",
      `${o.target}[i * n + c] -= fs * ${o.x}[i * n + j];`,
    )
  }`;
}

/**
 * WGSL rotating columns p and q of the row-major [rows, N] `matrix` by (c, s), in Rutishauser's
 * form x − s·(y + r·x), y + s·(x − r·y) with r = s/(1 + c): small rotations, the bulk of the
 * later sweeps, then add small corrections instead of rounding two full products.
 */
function rotateColumns(threads: number, matrix: string, rows: string): string {
  return rowLoop(
    threads,
    "0u",
    rows,
    `let x = ${matrix}[i * N + p];
    let y = ${matrix}[i * N + q];
    ${matrix}[i * N + p] = x - s * (y + r * x);
    ${matrix}[i * N + q] = y + s * (x - r * y);`,
  );
}

/** Dispatch a per-item kernel over `items` items. */
function dispatchItems(
  k: Kernel,
  threads: number,
  bound: Tensor[],
  params: Record<string, number>,
  items: number,
): void {
  rt().dispatch(k, bound, params, grid1d(threads > 1 ? items : Math.ceil(items / WG)));
}

/** Dispatch an elementwise kernel (one thread per output element). */
function dispatchElements(
  k: Kernel,
  bound: Tensor[],
  params: Record<string, number>,
  n: number,
): void {
  rt().dispatch(k, bound, params, grid1d(Math.ceil(n / WG)));
}

// ---- kernels ----------------------------------------------------------------------------------

/** Identity columns: out [rows, cols] with ones where row = column. */
function identityKernel(): Kernel {
  return cachedKernel("identity", () =>
    defineKernel({
      name: "linalg_identity",
      bindings: [{ name: "out", type: "f32", access: "read_write" }],
      params: [["rows", "u32"], ["cols", "u32"]],
      source: /* wgsl */ `
// One thread per element of a row-major [rows, cols] matrix.
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(WG)};
  if (i < params.rows * params.cols) { out[i] = select(0.0, 1.0, i / params.cols == i % params.cols); }
}`,
    }));
}

/** A new [rows, cols] tensor: the first `cols` columns of the identity. */
function identityColumns(rows: number, cols: number): Tensor {
  const out = empty([rows, cols]);
  dispatchElements(identityKernel(), [out], { rows, cols }, rows * cols);
  return out;
}

/** One Householder step of the factorization (see the WGSL comment). */
function householderStepKernel(threads: number): Kernel {
  return cachedKernel(`householder|${threads}`, () =>
    defineKernel({
      name: "qr_householder_step",
      bindings: [
        { name: "W", type: "f32", access: "read_write" },
        { name: "coef", type: "f32", access: "read_write" },
      ],
      params: [["m", "u32"], ["n", "u32"], ["j", "u32"]],
      source: itemKernelSource(
        threads,
        /* wgsl */ `
  // Step j of a thin Householder QR of W [m, n] (row-major, overwritten); item t handles column
  // c = j + t, t < n − j. Every item recomputes σ = Σ_{i>j} W[i, j]² the same way, so all hold
  // the bit-identical reflector and one dispatch suffices. Column j is only read: its part below
  // the diagonal stays as the reflector's unscaled tail, and item 0 stores τ = (β−α)/β, β and
  // scale = 1/(α−β) in coef[j], coef[n + j], coef[2n + j]; the others apply H to their column.
  let m = params.m;
  let n = params.n;
  let j = params.j;
  let live = item > 0u && item < n - j;
  let c = min(j + item, n - 1u);
  let head = W[j * n + c];
${
          columnSum(threads, {
            from: "j + 1u",
            to: "m",
            body: "let x = W[i * n + j]; part += vec4f(x * x, x * W[i * n + c], 0.0, 0.0);",
          })
        }
  let alpha = W[j * n + j];
  var beta = alpha;
  var tau = 0.0;
  var scale = 0.0;
  if (total.x > 0.0) {
    let norm = sqrt(alpha * alpha + total.x);
    beta = select(norm, -norm, alpha >= 0.0);
    tau = (beta - alpha) / beta;
    scale = 1.0 / (alpha - beta);
  }
  if (item == 0u && lane == 0u) {
    coef[j] = tau;
    coef[n + j] = beta;
    coef[2u * n + j] = scale;
  }
${applyReflector({ threads, x: "W", target: "W", dot: "total.y" })}`,
      ),
    }));
}

/** Applies reflector j to the columns j… of the thin Q being formed. */
function applyReflectorKernel(threads: number): Kernel {
  return cachedKernel(`reflect|${threads}`, () =>
    defineKernel({
      name: "qr_apply_reflector",
      bindings: [
        { name: "W", type: "f32", access: "read" },
        { name: "coef", type: "f32", access: "read" },
        { name: "Q", type: "f32", access: "read_write" },
      ],
      params: [["m", "u32"], ["n", "u32"], ["j", "u32"]],
      source: itemKernelSource(
        threads,
        /* wgsl */ `
  // Q [m, n] row-major; item t applies reflector j (tail in column j of the factored W [m, n],
  // τ and scale in coef) to column c = j + t. Reflectors are applied last to first, so columns
  // before j are still the unit vectors e_c (c < j) that H_j leaves alone, and the step skips them.
  let m = params.m;
  let n = params.n;
  let j = params.j;
  let live = item < n - j;
  let c = min(j + item, n - 1u);
  let head = Q[j * n + c];
  let tau = coef[j];
  let scale = coef[2u * n + j];
${
          columnSum(threads, {
            from: "j + 1u",
            to: "select(j + 1u, m, live)",
            body: "part.x += W[i * n + j] * Q[i * n + c];",
          })
        }
${applyReflector({ threads, x: "W", target: "Q", dot: "total.x" })}`,
      ),
    }));
}

/** R [n, n] from the factored W (strictly upper part) and the β's (diagonal). */
function extractRKernel(): Kernel {
  return cachedKernel("extractR", () =>
    defineKernel({
      name: "qr_extract_r",
      bindings: [
        { name: "W", type: "f32", access: "read" },
        { name: "coef", type: "f32", access: "read" },
        { name: "R", type: "f32", access: "read_write" },
      ],
      params: [["n", "u32"]],
      source: /* wgsl */ `
// One thread per element of the row-major R [n, n]; W [m, n] is the factored matrix.
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(WG)};
  let n = params.n;
  let r = i / n;
  let c = i % n;
  if (i < n * n) { R[i] = select(select(0.0, coef[n + r], r == c), W[i], r < c); }
}`,
    }));
}

/**
 * One round of one-sided Jacobi: the disjoint column pairs of round `round` of a round-robin
 * tournament, each rotated to orthogonality.
 */
function jacobiRoundKernel(threads: number): Kernel {
  return cachedKernel(`jacobi|${threads}`, () =>
    defineKernel({
      name: "svd_jacobi_round",
      bindings: [
        { name: "G", type: "f32", access: "read_write" },
        { name: "V", type: "f32", access: "read_write" },
        { name: "counts", type: "atomic<u32>", access: "read_write" },
      ],
      params: [
        ["M", "u32"],
        ["N", "u32"],
        ["players", "u32"],
        ["round", "u32"],
        ["sweep", "u32"],
        ["tol", "f32"],
      ],
      source: itemKernelSource(
        threads,
        /* wgsl */ `
  // G [M, N] is the tall matrix being orthogonalised and V [N, N] the accumulated rotations,
  // both row-major; item w is pair w of the round. Round-robin ("circle") schedule over an even
  // number P of players: in round r, pair 0 is (r, P−1) and pair w is ((r+w) mod (P−1),
  // (r−w) mod (P−1)), so a round's P/2 pairs are disjoint and a sweep's P−1 rounds meet every
  // pair once; a player ≥ N is padding. With α = ‖g_p‖², β = ‖g_q‖², γ = g_pᵀg_q, a pair with
  // |γ| > tol·√α·√β is rotated by the Jacobi angle (ζ = (β−α)/2γ, t = sign ζ/(|ζ| + √(1+ζ²)),
  // c = 1/√(1+t²), s = c·t) in G and V and counted in counts[sweep]. A sweep whose predecessor
  // rotated nothing does nothing (counts[sweep − 1] is not written during this dispatch, so
  // every thread reads the same value): convergence is decided on the GPU.
  let M = params.M;
  let N = params.N;
  let last = params.players - 1u;
  var p = params.round;
  var q = last;
  if (item > 0u) {
    p = (params.round + item) % last;
    q = (params.round + last - item) % last;
  }
  var converged = false;
  if (params.sweep > 0u) { converged = atomicLoad(&counts[params.sweep - 1u]) == 0u; }
  let live = item < params.players / 2u && max(p, q) < N && !converged;
${
          columnSum(threads, {
            from: "0u",
            to: "select(0u, M, live)",
            body: "let x = G[i * N + p]; let y = G[i * N + q]; " +
              "part += vec4f(x * x, y * y, x * y, 0.0);",
          })
        }
  let alpha = total.x;
  let beta = total.y;
  let gamma = total.z;
  let rotate = live && abs(gamma) > params.tol * sqrt(alpha) * sqrt(beta);
  if (rotate && lane == 0u) { atomicAdd(&counts[params.sweep], 1u); }
  let zeta = (beta - alpha) / (2.0 * select(1.0, gamma, rotate));
  let az = min(abs(zeta), 1e18);
  let t = select(-1.0, 1.0, zeta >= 0.0) / (az + sqrt(1.0 + az * az));
  let c = inverseSqrt(1.0 + t * t);
  let s = c * t;
  let r = s / (1.0 + c);
  ${rotateColumns(threads, "G", "select(0u, M, rotate)")}
  ${rotateColumns(threads, "V", "select(0u, N, rotate)")}`,
      ),
    }));
}

/** Column norms of G [M, N]. */
function columnNormsKernel(threads: number): Kernel {
  return cachedKernel(`norms|${threads}`, () =>
    defineKernel({
      name: "svd_column_norms",
      bindings: [
        { name: "G", type: "f32", access: "read" },
        { name: "s", type: "f32", access: "read_write" },
      ],
      params: [["M", "u32"], ["N", "u32"]],
      source: itemKernelSource(
        threads,
        /* wgsl */ `
  // Item c is column c of G [M, N]: after the sweeps the column norms are the singular values.
  let N = params.N;
  let live = item < N;
${
          columnSum(threads, {
            from: "0u",
            to: "select(0u, params.M, live)",
            body: "let x = G[i * N + item]; part.x += x * x;",
          })
        }
  if (live && lane == 0u) { s[item] = sqrt(total.x); }`,
      ),
    }));
}

/** perm[rank of s_i in descending order] = i (ties keep index order). */
function rankKernel(): Kernel {
  return cachedKernel("rank", () =>
    defineKernel({
      name: "svd_rank",
      bindings: [
        { name: "s", type: "f32", access: "read" },
        { name: "perm", type: "u32", access: "read_write" },
      ],
      params: [["N", "u32"]],
      source: /* wgsl */ `
// One thread per value: its rank is the count of larger values (and of equal ones before it), a
// stable descending sort in O(N²) work and one dispatch, cheap for one matrix's N values.
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(WG)};
  let live = i < params.N;
  let si = s[min(i, params.N - 1u)];
  var rank = 0u;
  for (var j = 0u; j < select(0u, params.N, live); j++) {
    let sj = s[j];
    rank += select(0u, 1u, sj > si || (sj == si && j < i));
  }
  if (live) { perm[rank] = i; }
}`,
    }));
}

/** Sorted outputs: U (normalised columns), V and S. */
function gatherKernel(): Kernel {
  return cachedKernel("gather", () =>
    defineKernel({
      name: "svd_gather",
      bindings: [
        { name: "G", type: "f32", access: "read" },
        { name: "V", type: "f32", access: "read" },
        { name: "s", type: "f32", access: "read" },
        { name: "perm", type: "u32", access: "read" },
        { name: "U", type: "f32", access: "read_write" },
        { name: "Vs", type: "f32", access: "read_write" },
        { name: "S", type: "f32", access: "read_write" },
      ],
      params: [["M", "u32"], ["N", "u32"], ["negligible", "f32"]],
      source: /* wgsl */ `
// One thread per output element over three ranges, all row-major: U [M, N] (column c is column
// perm[c] of G over its norm, or zero when that norm ≤ negligible·s_max, for the QR to complete),
// Vs [N, N] (column c = column perm[c] of V) and S [N] (s[perm[c]]).
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(WG)};
  let M = params.M;
  let N = params.N;
  if (i < M * N) {
    let src = perm[i % N];
    let sv = s[src];
    var u = 0.0;
    if (sv > params.negligible * s[perm[0]]) { u = G[i - i % N + src] / sv; }
    U[i] = u;
  } else if (i < M * N + N * N) {
    let k = i - M * N;
    Vs[k] = V[k - k % N + perm[k % N]];
  } else if (i < M * N + N * N + N) {
    let c = i - M * N - N * N;
    S[c] = s[perm[c]];
  }
}`,
    }));
}

// ---- building blocks --------------------------------------------------------------------------

function checkMatrix(a: Tensor, what: string): [number, number] {
  if (a.rank !== 2) throw new Error(`${what}: ${a} must be a matrix [m, n]`);
  if (a.dtype !== "f32" && a.dtype !== "f16") {
    throw new Error(`${what}: ${a} must be f32 or f16, got ${a.dtype}`);
  }
  const [m, n] = a.shape;
  if (m < 1 || n < 1) throw new Error(`${what}: ${a} must have at least one row and column`);
  return [m, n];
}

/** A contiguous f32 copy (f16 widened, strided views gathered): the matrix the kernels own. */
function workingCopy(a: Tensor): Tensor {
  return map([a], "a", { dtype: "f32" });
}

/**
 * Householder QR of `w` [m, n] (m ≥ n, row-major, overwritten): Q [m, n] and R [n, n].
 * Cost: 2n + 2 dispatches and ≈ 4·m·n² flops.
 */
function householderQr(w: Tensor): QrResult {
  const [m, n] = w.shape;
  const threads = threadsFor(m);
  const coef = empty([3 * n]);
  const step = householderStepKernel(threads);
  for (let j = 0; j < n; j++) dispatchItems(step, threads, [w, coef], { m, n, j }, n - j);
  const r = empty([n, n]);
  dispatchElements(extractRKernel(), [w, coef, r], { n }, n * n);
  const q = identityColumns(m, n);
  const reflect = applyReflectorKernel(threads);
  for (let j = n - 1; j >= 0; j--) {
    dispatchItems(reflect, threads, [w, coef, q], { m, n, j }, n - j);
  }
  coef.dispose();
  return { q, r };
}

/** Run `fn` untaped with scratch as the default category; its result moves to `category`. */
function scratchCall<T extends QrResult | SvdResult>(category: Category, fn: () => T): T {
  return noGrad(() =>
    scope(() => {
      const out = withCategory("scratch", fn);
      for (const t of Object.values(out) as Tensor[]) t.setCategory(category);
      return out;
    })
  );
}

/** A contiguous f32 copy of the first `k` columns of `x` (`x` itself when it has k). */
function leadingColumns(x: Tensor, k: number): Tensor {
  if (x.shape[1] === k) return x;
  const view = slice(x, 1, 0, k);
  const out = map([view], "a");
  view.dispose();
  return out;
}

// ---- the public API ---------------------------------------------------------------------------

/**
 * Thin QR of a tall matrix by Householder reflections: A [m, n] (m ≥ n) = Q [m, n]·R [n, n], Q with
 * orthonormal columns, R upper triangular with LAPACK's signs (its diagonal may be negative; see
 * the module notes). One dispatch per reflector builds it and applies it to the trailing columns
 * (a thread or a workgroup per column, see {@link LINALG}); Q is then formed by applying the
 * reflectors to the identity in reverse, one dispatch each. Cost: 2n + 3 dispatches,
 * ≈ 4·m·n² − 4n³/3 flops. Measured QᵀQ − I ≈ 5e-7 for 256×256.
 *
 * @example
 * ```ts
 * import { init, qr, tensor } from "./mod.ts";
 * await init();
 * const { q, r } = qr(tensor([[3, 1], [4, 2], [0, 5]]));
 * console.log(q.shape, r.shape); // [3, 2] [2, 2]
 * ```
 */
export function qr(a: Tensor): QrResult {
  const [m, n] = checkMatrix(a, "qr");
  if (m < n) {
    throw new Error(`qr: ${a} must have at least as many rows as columns (thin QR needs m ≥ n)`);
  }
  return scratchCall(currentCategory(), () => householderQr(workingCopy(a)));
}

/**
 * Singular value decomposition A [m, n] = U [m, k]·diag(S [k])·Vᵀ with V [n, k], k = min(m, n),
 * by one-sided (Hestenes) Jacobi on the tall problem (Aᵀ when m < n, then U and V swap): the
 * columns are orthogonalised pairwise by plane rotations, accumulated into V; the column norms
 * are the singular values and the normalised columns U. Each round of a round-robin ordering
 * rotates k/2 disjoint pairs in one dispatch; a sweep is k − 1 rounds (k + 1 padded to even when
 * k is odd). A pair is left alone when |g_pᵀg_q| ≤ √M·2⁻²²·‖g_p‖·‖g_q‖ (LAPACK sgesvj's √M·ε
 * test with room for the f32 dot's rounding; M the long side). The GPU counts rotations per sweep
 * and skips every sweep after one that rotated nothing, so `maxSweeps` bounds the work without a
 * read-back; measured: 6–10 sweeps for random 33² to 256². Values are sorted descending on the
 * GPU; left vectors of numerically zero values (s ≤ max(m, n)·2⁻²³·s₀) are completed to an
 * orthonormal set by a Householder QR of U, which otherwise only restores signs. Rotations use
 * Rutishauser's update, which keeps V orthonormal to f32 rounding (measured VᵀV − I: 5e-7 at
 * 256², against 6e-5 with the plain c·x − s·y).
 *
 * Cost per sweep: k − 1 dispatches and ≈ 7·M·k² + 4·k³ flops (M = max(m, n)), plus a QR of
 * [M, k] (≈ 4·M·k²). Intended for k up to ~1024 (a 768×768 weight: 767 dispatches a sweep); for
 * a few leading triplets of a large matrix {@link randomizedSvd} is far cheaper.
 *
 * @example
 * ```ts
 * import { init, svd, tensor } from "./mod.ts";
 * await init();
 * const { u, s, v } = svd(tensor([[3, 0], [0, -2], [0, 0]]));
 * console.log(await s.toArray()); // [3, 2]
 * ```
 */
export function svd(a: Tensor, options: SvdOptions = {}): SvdResult {
  const [m, n] = checkMatrix(a, "svd");
  const maxSweeps = options.maxSweeps ?? 30;
  if (!Number.isInteger(maxSweeps) || maxSweeps < 1) {
    throw new Error(`svd: maxSweeps must be an integer ≥ 1, got ${maxSweeps}`);
  }
  const tall = m >= n;
  const M = Math.max(m, n), N = Math.min(m, n);
  return scratchCall(currentCategory(), () => {
    const aT = tall ? null : transpose(a);
    const g = workingCopy(aT ?? a);
    aT?.dispose();
    const v = identityColumns(N, N);
    const counts = empty([maxSweeps], { dtype: "u32" });
    fillInto(counts, 0);
    const players = N + (N % 2);
    const threads = threadsFor(M);
    const round = jacobiRoundKernel(threads);
    const tol = Math.sqrt(M) * 2 * F32_EPS;
    for (let sweep = 0; sweep < maxSweeps; sweep++) {
      for (let r = 0; r < players - 1; r++) {
        dispatchItems(
          round,
          threads,
          [g, v, counts],
          { M, N, players, round: r, sweep, tol },
          players / 2,
        );
      }
    }
    const norms = empty([N]);
    dispatchItems(columnNormsKernel(threads), threads, [g, norms], { M, N }, N);
    const perm = empty([N], { dtype: "u32" });
    dispatchElements(rankKernel(), [norms, perm], { N }, N);
    const u = empty([M, N]), vSorted = empty([N, N]), s = empty([N]);
    dispatchElements(
      gatherKernel(),
      [g, v, norms, perm, u, vSorted, s],
      { M, N, negligible: M * F32_EPS },
      M * N + N * N + N,
    );
    // The QR completes the zeroed columns of numerically zero values; R's diagonal is ±1 on the
    // others, whose signs are put back.
    const { q, r } = householderQr(u);
    const diag = r.view([1, N], [0, N + 1], r.offset);
    const uTall = map([q, diag], "select(a, -a, b < 0.0)");
    return tall ? { u: uTall, s, v: vSorted } : { u: vSorted, s, v: uTall };
  });
}

/**
 * The leading `rank` singular triplets of A [m, n] by randomized subspace iteration
 * (Halko, Martinsson & Tropp 2011, Algorithms 4.4 and 5.1), as torch.svd_lowrank computes them:
 * on the tall problem T (A, or Aᵀ when m < n) with l = min(rank + oversample, m, n) columns,
 * Y = T·Ω for a Gaussian Ω [N, l] (`seed`), Q = qr(Y).q, then `powerIterations` times
 * Q ← qr(Tᵀ·Q).q, Q ← qr(T·Q).q; finally B = Qᵀ·T [l, N] is decomposed exactly by {@link svd} and
 * U = Q·U_B. Returns u [m, rank], s [rank] (descending), v [n, rank].
 *
 * Cost: (2·powerIterations + 2) products with A (≈ 2·m·n·l flops each), as many thin QRs of
 * [M, l] or [N, l], and the SVD of an l×N matrix.
 *
 * @example
 * ```ts
 * import { init, randNormal, randomizedSvd } from "./mod.ts";
 * await init();
 * const w = randNormal([256, 128], 0, 1, { seed: 1 });
 * const { u, s, v } = randomizedSvd(w, 8, { powerIterations: 2, seed: 0 });
 * console.log(u.shape, s.shape, v.shape); // [256, 8] [8] [128, 8]
 * ```
 */
export function randomizedSvd(
  a: Tensor,
  rank: number,
  options: RandomizedSvdOptions = {},
): SvdResult {
  const [m, n] = checkMatrix(a, "randomizedSvd");
  const k = Math.min(m, n);
  if (!Number.isInteger(rank) || rank < 1 || rank > k) {
    throw new Error(`randomizedSvd: rank must be an integer in 1…${k} for ${a}, got ${rank}`);
  }
  const oversample = options.oversample ?? 10;
  const iterations = options.powerIterations ?? 2;
  if (!Number.isInteger(oversample) || oversample < 0) {
    throw new Error(`randomizedSvd: oversample must be an integer ≥ 0, got ${oversample}`);
  }
  if (!Number.isInteger(iterations) || iterations < 0) {
    throw new Error(`randomizedSvd: powerIterations must be an integer ≥ 0, got ${iterations}`);
  }
  const l = Math.min(rank + oversample, k);
  const tall = m >= n;
  return scratchCall(currentCategory(), () => {
    const t = tall ? a : transpose(a);
    const tT = transpose(t);
    const N = t.shape[1];
    const basis = (y: Tensor): Tensor => {
      const { q, r } = qr(y);
      y.dispose();
      r.dispose();
      return q;
    };
    const omega = randNormal([N, l], 0, 1, { seed: options.seed ?? 0 });
    let q = basis(matmul(t, omega));
    omega.dispose();
    for (let i = 0; i < iterations; i++) {
      const p = basis(matmul(tT, q));
      q.dispose();
      q = basis(matmul(t, p));
      p.dispose();
    }
    const qT = transpose(q);
    const b = matmul(qT, t);
    const small = svd(b);
    const uFull = matmul(q, small.u);
    const u = leadingColumns(uFull, rank);
    const v = leadingColumns(small.v, rank);
    const s = slice(small.s, 0, 0, rank);
    const sOut = map([s], "a");
    return tall ? { u, s: sOut, v } : { u: v, s: sOut, v: u };
  });
}
