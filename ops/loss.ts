/**
 * Losses: cross-entropy over class logits (fused log-softmax + NLL, with ignore_index and label
 * smoothing, PyTorch semantics) and mean squared error.
 *
 * @module
 */
import { record } from "./autograd.ts";
import { fillInto, map } from "./elementwise.ts";
import { matmulRaw } from "./matmul.ts";
import { reduceRaw } from "./reduce.ts";
import { defineKernel, grid1d, type Kernel, linearIndex, memoKernel, rt } from "./runtime.ts";
import { NEG_F32_MAX, rowThreads } from "./softmax.ts";
import { contiguousStrides, empty, type Tensor } from "./tensor.ts";

/** How a per-element loss is reduced, as PyTorch's `reduction`. */
export type Reduction = "mean" | "sum" | "none";

/** Options of {@link crossEntropy}. */
export interface CrossEntropyOptions {
  /** Target value whose rows contribute neither loss nor gradient (default -100, as PyTorch). */
  ignoreIndex?: number;
  /** "mean" (default) averages over non-ignored rows; "sum"; "none" returns one loss per row. */
  reduction?: Reduction;
  /** Mix the one-hot target with the uniform distribution: (1 − ε)·onehot + ε/C (default 0). */
  labelSmoothing?: number;
}

const FINAL_WG = 256;
const GRAD_WG = 256;
const NAN = "bitcast<f32>(0x7fc00000u)";

const cached = (key: string, build: () => Kernel): Kernel => memoKernel("loss", key, build);

/** Per row: loss_i and logsumexp_i (saved for the backward). */
function rowLossKernel(wg: number, dtype: string): Kernel {
  return cached(`ce_rows|${wg}|${dtype}`, () =>
    defineKernel({
      name: "cross_entropy_rows",
      bindings: [
        { name: "x", type: dtype as "f32", access: "read" },
        { name: "targets", type: "i32", access: "read" },
        { name: "row_loss", type: "f32", access: "read_write" },
        { name: "lse_out", type: "f32", access: "read_write" },
      ],
      params: [
        ["rows", "u32"],
        ["c", "u32"],
        ["x_off", "u32"],
        ["t_off", "u32"],
        ["ignore", "i32"],
        ["smoothing", "f32"],
      ],
      // One workgroup per row of logits. Each thread folds its strided slice into an online
      // (max, Σ exp(x − max)) pair and a plain Σx (for the smoothing term); one shared tree merges
      // all three. Thread 0 then forms lse − x[target] and the smoothed term.
      source: `
var<workgroup> sm: array<f32, ${wg}>;
var<workgroup> ss: array<f32, ${wg}>;
var<workgroup> sx: array<f32, ${wg}>;
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= params.rows) { return; }
  let c = params.c;
  let base = params.x_off + row * c;
  var m: f32 = ${NEG_F32_MAX};
  var s: f32 = 0.0;
  var total: f32 = 0.0;
  for (var j = l; j < c; j += ${wg}u) {
    let v = f32(x[base + j]);
    if (v > m) { s = s * exp(m - v); m = v; }
    s += exp(v - m);
    total += v;
  }
  sm[l] = m;
  ss[l] = s;
  sx[l] = total;
  workgroupBarrier();
  for (var h = ${wg / 2}u; h > 0u; h = h >> 1u) {
    if (l < h) {
      let m2 = max(sm[l], sm[l + h]);
      ss[l] = ss[l] * exp(sm[l] - m2) + ss[l + h] * exp(sm[l + h] - m2);
      sm[l] = m2;
      sx[l] = sx[l] + sx[l + h];
    }
    workgroupBarrier();
  }
  if (l != 0u) { return; }
  let lse = sm[0] + log(ss[0]);
  let t = targets[params.t_off + row];
  var loss: f32 = 0.0;
  if (t != params.ignore) {
    if (t < 0 || u32(t) >= c) {
      loss = ${NAN};
    } else {
      let nll = lse - f32(x[base + u32(t)]);
      let uniform_nll = lse - sx[0] / f32(c);
      loss = (1.0 - params.smoothing) * nll + params.smoothing * uniform_nll;
    }
  }
  row_loss[row] = loss;
  lse_out[row] = lse;
}`,
    }));
}

/** Σ row losses (and the count of non-ignored rows), divided by the count when `average`. */
function finalKernel(average: boolean): Kernel {
  return cached(`ce_final|${average}`, () =>
    defineKernel({
      name: average ? "cross_entropy_mean" : "cross_entropy_sum",
      bindings: [
        { name: "row_loss", type: "f32", access: "read" },
        { name: "targets", type: "i32", access: "read" },
        { name: "out", type: "f32", access: "read_write" },
        ...(average
          ? [{ name: "count", type: "f32" as const, access: "read_write" as const }]
          : []),
      ],
      params: [["rows", "u32"], ["t_off", "u32"], ["ignore", "i32"]],
      // A single workgroup strides over all rows and merges by a shared tree: fixed order, so the
      // loss is deterministic. An all-ignored batch averages to 0 rather than PyTorch's NaN.
      source: `
var<workgroup> s_loss: array<f32, ${FINAL_WG}>;
var<workgroup> s_cnt: array<f32, ${FINAL_WG}>;
@compute @workgroup_size(${FINAL_WG})
fn main(@builtin(local_invocation_index) l: u32) {
  var a: f32 = 0.0;
  var n: f32 = 0.0;
  for (var r = l; r < params.rows; r += ${FINAL_WG}u) {
    a += row_loss[r];
    n += select(0.0, 1.0, targets[params.t_off + r] != params.ignore);
  }
  s_loss[l] = a;
  s_cnt[l] = n;
  workgroupBarrier();
  for (var h = ${FINAL_WG / 2}u; h > 0u; h = h >> 1u) {
    if (l < h) {
      s_loss[l] = s_loss[l] + s_loss[l + h];
      s_cnt[l] = s_cnt[l] + s_cnt[l + h];
    }
    workgroupBarrier();
  }
  if (l == 0u) {
    ${average ? "count[0] = s_cnt[0];" : ""}
    out[0] = ${average ? "select(0.0, s_loss[0] / s_cnt[0], s_cnt[0] > 0.0)" : "s_loss[0]"};
  }
}`,
    }));
}

/** Where the backward's per-row scale comes from. */
type ScaleSource = "row" | "total" | "mean";

/** dlogits = scale_i·(softmax − (1 − ε)·onehot − ε/C), 0 on ignored rows. */
function gradKernel(scale: ScaleSource, dtype: string): Kernel {
  return cached(`ce_grad|${scale}|${dtype}`, () => {
    const scaleExpr = {
      row: "g[params.g_off + row]",
      total: "g[params.g_off]",
      mean: "g[params.g_off] / max(count[0], 1.0)",
    }[scale];
    return defineKernel({
      name: "cross_entropy_backward",
      bindings: [
        { name: "x", type: dtype as "f32", access: "read" },
        { name: "targets", type: "i32", access: "read" },
        { name: "lse", type: "f32", access: "read" },
        { name: "g", type: "f32", access: "read" },
        ...(scale === "mean"
          ? [{ name: "count", type: "f32" as const, access: "read" as const }]
          : []),
        { name: "dx", type: "f32", access: "read_write" },
      ],
      params: [
        ["n", "u32"],
        ["c", "u32"],
        ["x_off", "u32"],
        ["t_off", "u32"],
        ["g_off", "u32"],
        ["ignore", "i32"],
        ["smoothing", "f32"],
      ],
      // One thread per logit; the saved logsumexp makes every element independent.
      source: `
@compute @workgroup_size(${GRAD_WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(GRAD_WG)};
  if (i >= params.n) { return; }
  let c = params.c;
  let row = i / c;
  let j = i - row * c;
  let t = targets[params.t_off + row];
  var v: f32 = 0.0;
  if (t != params.ignore) {
    if (t < 0 || u32(t) >= c) {
      v = ${NAN};
    } else {
      let p = exp(f32(x[params.x_off + i]) - lse[row]);
      let hot = select(0.0, 1.0 - params.smoothing, u32(t) == j);
      v = ${scaleExpr} * (p - hot - params.smoothing / f32(c));
    }
  }
  dx[i] = v;
}`,
    });
  });
}

function dense(t: Tensor): Tensor {
  if (t.isContiguous) return t;
  return map([t], "a", { dtype: t.dtype, compute: t.dtype === "i32" ? "i32" : "f32" });
}

/**
 * Cross-entropy between class logits and integer targets, as `torch.nn.functional.cross_entropy`:
 * logits `[N, C]` with targets `[N]`, or `[B, T, C]` with `[B, T]` (any leading dims, flattened).
 *
 * - Rows whose target equals `ignoreIndex` give loss 0 and gradient 0 and are not counted by
 *   "mean". When every row is ignored, "mean" returns 0 (PyTorch returns NaN): a batch made only
 *   of padding should not poison a running loss, and its gradient is 0 either way.
 * - With `labelSmoothing` ε the target distribution is (1 − ε)·onehot + ε/C.
 * - A target outside [0, C) that is not `ignoreIndex` is an error. When `targets.hostData` exists
 *   (targets built from host values) this throws here, naming the row. Targets that live only on
 *   the GPU cannot be checked without a read-back; such a row's loss and gradient become NaN, so
 *   the error shows in the loss instead of silently reading another class.
 *
 * "none" returns the per-row losses in the targets' shape; otherwise a scalar (shape []).
 * Differentiable in the logits; computed in f32 (f16 logits are widened).
 *
 * @example
 * ```ts
 * import { crossEntropy, init, tensor } from "./mod.ts";
 * await init();
 * const logits = tensor([[2, 0, 0], [0, 0, 0]]);
 * const loss = crossEntropy(logits, tensor([0, -100], { dtype: "i32" }));
 * console.log(await loss.item()); // ≈ 0.2395, the first row's loss (the second is ignored)
 * ```
 */
export function crossEntropy(
  logits: Tensor,
  targets: Tensor,
  options: CrossEntropyOptions = {},
): Tensor {
  const { ignoreIndex = -100, reduction = "mean", labelSmoothing = 0 } = options;
  if (logits.dtype !== "f32" && logits.dtype !== "f16") {
    throw new Error(`crossEntropy: logits ${logits} must be f32 or f16`);
  }
  if (targets.dtype !== "i32") {
    throw new Error(`crossEntropy: targets ${targets} must be i32 class indices`);
  }
  const lead = logits.shape.slice(0, -1);
  if (logits.rank < 2 || targets.shape.join() !== lead.join()) {
    throw new Error(
      `crossEntropy: logits ${logits} and targets ${targets} do not match; expected logits ` +
        "[N, C] with targets [N], or [B, T, C] with [B, T]",
    );
  }
  if (!(labelSmoothing >= 0 && labelSmoothing <= 1)) {
    throw new Error(`crossEntropy: labelSmoothing must be in [0, 1], got ${labelSmoothing}`);
  }
  if (!["mean", "sum", "none"].includes(reduction)) {
    throw new Error(`crossEntropy: reduction must be "mean", "sum" or "none", got ${reduction}`);
  }
  if (!Number.isInteger(ignoreIndex)) {
    throw new Error(`crossEntropy: ignoreIndex must be an integer, got ${ignoreIndex}`);
  }
  const c = logits.shape[logits.rank - 1];
  const rows = targets.size;
  const host = targets.hostData;
  if (host && host.length === rows) {
    for (let i = 0; i < rows; i++) {
      const t = host[i];
      if (t !== ignoreIndex && (t < 0 || t >= c)) {
        throw new Error(
          `crossEntropy: target ${t} at row ${i} is outside [0, ${c}) and is not ignoreIndex ` +
            `(${ignoreIndex})`,
        );
      }
    }
  }
  const x = dense(logits);
  const t = dense(targets);
  const rowLoss = empty([rows]);
  const lse = empty([rows]);
  if (rows > 0) {
    const wg = rowThreads(c);
    rt().dispatch(rowLossKernel(wg, x.dtype), [x, t, rowLoss, lse], {
      rows,
      c,
      x_off: x.offset,
      t_off: t.offset,
      ignore: ignoreIndex,
      smoothing: labelSmoothing,
    }, grid1d(rows));
  }
  let out: Tensor;
  let count: Tensor | null = null;
  if (reduction === "none") {
    out = rowLoss.view(targets.shape, contiguousStrides(targets.shape));
    rowLoss.dispose();
  } else {
    out = empty([]);
    count = reduction === "mean" ? empty([1]) : null;
    const bufs = [rowLoss, t, out, ...(count ? [count] : [])];
    rt().dispatch(finalKernel(reduction === "mean"), bufs, {
      rows,
      t_off: t.offset,
      ignore: ignoreIndex,
    }, [1, 1, 1]);
    rowLoss.dispose();
  }
  const source: ScaleSource = reduction === "none" ? "row" : reduction === "sum" ? "total" : "mean";
  return record("crossEntropy", out, [logits], (gOut) => {
    const g = dense(gOut);
    const dx = empty(logits.shape);
    const n = rows * c;
    if (n > 0) {
      const bufs = [x, t, lse, g, ...(count ? [count] : []), dx];
      rt().dispatch(gradKernel(source, x.dtype), bufs, {
        n,
        c,
        x_off: x.offset,
        t_off: t.offset,
        g_off: g.offset,
        ignore: ignoreIndex,
        smoothing: labelSmoothing,
      }, grid1d(Math.ceil(n / GRAD_WG)));
    }
    if (g !== gOut) g.dispose();
    return [dx];
  });
}

/**
 * Mean squared error (pred − target)², reduced by "mean" (default), "sum" or "none" (elementwise,
 * in pred's shape). `pred` and `target` must have the same shape: PyTorch only warns on a
 * broadcast here because it is almost always a bug. Differentiable in both.
 *
 * @example
 * ```ts
 * import { init, mseLoss, tensor } from "./mod.ts";
 * await init();
 * const loss = mseLoss(tensor([1, 2, 3]), tensor([1, 2, 5]));
 * console.log(await loss.item()); // 4/3
 * ```
 */
export function mseLoss(pred: Tensor, target: Tensor, reduction: Reduction = "mean"): Tensor {
  if (pred.shape.join() !== target.shape.join()) {
    throw new Error(`mseLoss: pred ${pred} and target ${target} must have the same shape`);
  }
  if (!["mean", "sum", "none"].includes(reduction)) {
    throw new Error(`mseLoss: reduction must be "mean", "sum" or "none", got ${reduction}`);
  }
  const sq = map([pred, target], "(a - b) * (a - b)");
  let out = sq;
  let factor = 2;
  if (reduction !== "none") {
    const total = reduceRaw(sq, "sum");
    sq.dispose();
    factor = reduction === "mean" ? 2 / Math.max(1, pred.size) : 2;
    out = reduction === "mean" ? map([total], "a * s_k", { scalars: { k: factor / 2 } }) : total;
    if (out !== total) total.dispose();
  }
  // The gradient broadcasts g (a scalar for mean/sum) over the elements.
  return record("mseLoss", out, [pred, target], (g) => {
    const dp = map([pred, target, g], "s_k * (a - b) * c", { scalars: { k: factor } });
    const dt = target.requiresGrad ? map([dp], "-a") : null;
    return [dp, dt];
  });
}

// ---- the fused linear + cross-entropy of a vocabulary head ----------------------------------------

/** Vocabulary rows each thread of the column-statistics pass folds (a slice of V). */
const LCE_SLICE_ROWS = 128;
const LCE_WG = 64;

/**
 * Pass 1 over logitsᵀ [V, Mp] (Mp = scored rows padded to a multiple of 4): thread (q, s) folds
 * rows v ∈ slice s of column quad q — x = logitsᵀ[v, 4q…4q+3] + bias[v] — into an online
 * (max, Σ exp(x − max)) vec4 and writes it to partials[s, q]. Lanes of a workgroup walk
 * neighbouring quads of the same rows, so each step reads one contiguous run of a row and the
 * bias load is the same for every lane. The running sum is rescaled only when a lane's max
 * grows (rare after the first rows), so each element costs about one exp.
 */
function lceStatsKernel(hasBias: boolean): Kernel {
  return cached(`lce_stats|${hasBias}`, () =>
    defineKernel({
      name: "linear_cross_entropy_stats",
      bindings: [
        { name: "x", type: "vec4f", access: "read" },
        ...(hasBias ? [{ name: "bias", type: "f32" as const, access: "read" as const }] : []),
        { name: "pmax", type: "vec4f", access: "read_write" },
        { name: "psum", type: "vec4f", access: "read_write" },
      ],
      params: [
        ["v", "u32"],
        ["quads", "u32"],
        ["slice", "u32"],
        ["slices", "u32"],
        ["b_off", "u32"],
      ],
      source: `
@compute @workgroup_size(${LCE_WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let q = gid.x;
  let s = gid.y;
  if (q >= params.quads || s >= params.slices) { return; }
  let v0 = s * params.slice;
  let v1 = min(params.v, v0 + params.slice);
  var m = x[v0 * params.quads + q]${hasBias ? " + bias[params.b_off + v0]" : ""};
  var acc = vec4f(1.0);
  for (var v = v0 + 1u; v < v1; v++) {
    let xv = x[v * params.quads + q]${hasBias ? " + bias[params.b_off + v]" : ""};
    if (any(xv > m)) {
      let up = max(m, xv);
      acc = acc * exp(m - up);
      m = up;
    }
    acc += exp(xv - m);
  }
  pmax[s * params.quads + q] = m;
  psum[s * params.quads + q] = acc;
}`,
    }));
}

/**
 * Pass 2: column m merges the slices' partials into lse[m] (in slice order: deterministic) and
 * forms its loss lse − logit[target]; ignored and padding columns (m ≥ rows) give loss 0, and a
 * target outside [0, V) gives NaN. `tcol[m]` keeps the target as f32 for the backward (−1 where
 * the column takes no part).
 */
function lceLossKernel(hasBias: boolean): Kernel {
  return cached(`lce_loss|${hasBias}`, () =>
    defineKernel({
      name: "linear_cross_entropy_rows",
      bindings: [
        { name: "x", type: "f32", access: "read" },
        ...(hasBias ? [{ name: "bias", type: "f32" as const, access: "read" as const }] : []),
        { name: "pmax", type: "f32", access: "read" },
        { name: "psum", type: "f32", access: "read" },
        { name: "targets", type: "i32", access: "read" },
        { name: "row_loss", type: "f32", access: "read_write" },
        { name: "lse_out", type: "f32", access: "read_write" },
        { name: "tcol", type: "f32", access: "read_write" },
      ],
      params: [
        ["v", "u32"],
        ["rows", "u32"],
        ["cols", "u32"],
        ["slices", "u32"],
        ["t_off", "u32"],
        ["b_off", "u32"],
        ["ignore", "i32"],
      ],
      source: `
@compute @workgroup_size(${LCE_WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let m = gid.x;
  if (m >= params.cols) { return; }
  var mx: f32 = ${NEG_F32_MAX};
  for (var s = 0u; s < params.slices; s++) { mx = max(mx, pmax[s * params.cols + m]); }
  var total: f32 = 0.0;
  for (var s = 0u; s < params.slices; s++) {
    total += psum[s * params.cols + m] * exp(pmax[s * params.cols + m] - mx);
  }
  let lse = mx + log(total);
  var loss: f32 = 0.0;
  var tc: f32 = -1.0;
  if (m < params.rows) {
    let t = targets[params.t_off + m];
    if (t != params.ignore) {
      if (t < 0 || u32(t) >= params.v) {
        loss = ${NAN};
      } else {
        loss = lse - (x[u32(t) * params.cols + m]${
        hasBias ? " + bias[params.b_off + u32(t)]" : ""
      });
        tc = f32(t);
      }
    }
  }
  row_loss[m] = loss;
  lse_out[m] = lse;
  tcol[m] = tc;
}`,
    }));
}

/** Rows of logitsᵀ one workgroup of the backward pass rewrites (LCE_WG / this threads each). */
const LCE_GRAD_ROWS = 64;

/**
 * The backward's one pass over logitsᵀ, in place: each row v is rewritten as
 * dlogitsᵀ[v, m] = g/count · (softmax[v, m] − [v = target_m]) on the columns that take part (0
 * elsewhere) by LCE_WG / LCE_GRAD_ROWS threads striding over the row's vec4s (neighbouring lanes
 * read neighbouring vec4s), which then tree-sum it into dbias[v] in a fixed order
 * (deterministic). Rows are short (N'/4 vec4s), so a workgroup takes several.
 */
function lceGradKernel(hasBias: boolean): Kernel {
  const per = LCE_WG / LCE_GRAD_ROWS;
  return cached(`lce_grad|${hasBias}|${LCE_GRAD_ROWS}`, () =>
    defineKernel({
      name: "linear_cross_entropy_backward",
      bindings: [
        { name: "x", type: "vec4f", access: "read_write" },
        ...(hasBias
          ? [
            { name: "bias", type: "f32" as const, access: "read" as const },
            { name: "dbias", type: "f32" as const, access: "read_write" as const },
          ]
          : []),
        { name: "lse", type: "vec4f", access: "read" },
        { name: "tcol", type: "vec4f", access: "read" },
        { name: "g", type: "f32", access: "read" },
        { name: "count", type: "f32", access: "read" },
      ],
      params: [["v", "u32"], ["quads", "u32"], ["b_off", "u32"], ["g_off", "u32"]],
      source: `
var<workgroup> partial: array<f32, ${LCE_WG}>;
@compute @workgroup_size(${LCE_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u) {
  let v = (wid.x + wid.y * nwg.x) * ${LCE_GRAD_ROWS}u + l / ${per}u;
  let sub = l % ${per}u;
  var total: f32 = 0.0;
  if (v < params.v) {
    let scale = g[params.g_off] / max(count[0], 1.0);
    let xb = ${hasBias ? "bias[params.b_off + v]" : "0.0"};
    let fv = vec4f(f32(v));
    for (var q = sub; q < params.quads; q += ${per}u) {
      let t = tcol[q];
      let hot = select(vec4f(0.0), vec4f(1.0), t == fv);
      let w = select(vec4f(0.0), vec4f(scale), t >= vec4f(0.0));
      let i = v * params.quads + q;
      let d = w * (exp(x[i] + xb - lse[q]) - hot);
      x[i] = d;
      total += (d.x + d.y) + (d.z + d.w);
    }
  }
${
        !hasBias
          ? ""
          : per === 1
          ? "  if (v < params.v) { dbias[v] = total; }"
          : `  partial[l] = total;
  workgroupBarrier();
  for (var h = ${per / 2}u; h > 0u; h = h >> 1u) {
    if (sub < h) { partial[l] = partial[l] + partial[l + h]; }
    workgroupBarrier();
  }
  if (sub == 0u && v < params.v) { dbias[v] = partial[l]; }`
      }
}`,
    }));
}

/**
 * Mean cross-entropy of the logits x·Wᵀ + b of a vocabulary head, without the three passes over
 * the logits that {@link crossEntropy}(linear(…)) makes: `x` [N, H] (the rows to score, e.g. an
 * MLM's masked positions), `weight` [V, H] (a tied decoder: the word embeddings), `bias` [V],
 * `targets` [N] i32 with `ignoreIndex` rows left out of the mean (PyTorch semantics; all ignored
 * gives 0). Differentiable in x, weight and bias.
 *
 * The logits are computed transposed, [V, N'] with N' = N rounded up to 4 (zero rows pad x), so
 * every pass reads them as contiguous vec4s: one pass of per-column softmax statistics, and in
 * backward one pass that overwrites the logits with their gradient in place (no second
 * [N, V] buffer) and sums the bias gradient on the way. dW = dlogitsᵀ·x and dx = dlogits·W then
 * run vocabulary chunk by chunk, so on the texture variant each chunk of dlogitsᵀ is packed once
 * for both products. Targets outside [0, V) throw when `targets.hostData` is present, else
 * make the loss NaN.
 *
 * @example
 * ```ts
 * import { init, linearCrossEntropy, tensor } from "./mod.ts";
 * await init();
 * const x = tensor([[1, 0], [0, 1]]);
 * const w = tensor([[2, 0], [0, 0], [0, 2]]);
 * const loss = linearCrossEntropy(x, w, undefined, tensor([0, -100], { dtype: "i32" }));
 * console.log(await loss.item()); // ≈ 0.2395: the row [2, 0, 0] with target 0
 * ```
 */
export function linearCrossEntropy(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | undefined,
  targets: Tensor,
  options: Pick<CrossEntropyOptions, "ignoreIndex"> = {},
): Tensor {
  const { ignoreIndex = -100 } = options;
  if (x.rank !== 2 || weight.rank !== 2 || x.shape[1] !== weight.shape[1]) {
    throw new Error(
      `linearCrossEntropy: expected x [N, H] and weight [V, H], got x ${x} and weight ${weight}`,
    );
  }
  for (const [t, what] of [[x, "x"], [weight, "weight"], ...(bias ? [[bias, "bias"]] : [])]) {
    if ((t as Tensor).dtype !== "f32") {
      throw new Error(`linearCrossEntropy: ${what} ${t} must be f32`);
    }
  }
  const [rows, h] = x.shape;
  const v = weight.shape[0];
  if (bias && (bias.rank !== 1 || bias.shape[0] !== v)) {
    throw new Error(`linearCrossEntropy: bias ${bias} must have shape [${v}]`);
  }
  if (targets.dtype !== "i32" || targets.rank !== 1 || targets.shape[0] !== rows) {
    throw new Error(`linearCrossEntropy: targets ${targets} must be i32 of shape [${rows}]`);
  }
  if (!Number.isInteger(ignoreIndex)) {
    throw new Error(`linearCrossEntropy: ignoreIndex must be an integer, got ${ignoreIndex}`);
  }
  const host = targets.hostData;
  if (host && host.length === rows) {
    for (let i = 0; i < rows; i++) {
      if (host[i] !== ignoreIndex && (host[i] < 0 || host[i] >= v)) {
        throw new Error(
          `linearCrossEntropy: target ${host[i]} at row ${i} is outside [0, ${v}) and is not ` +
            `ignoreIndex (${ignoreIndex})`,
        );
      }
    }
  }
  if (rows === 0 || v === 0) throw new Error("linearCrossEntropy: x and weight must be non-empty");
  // The backward compares class indices as f32, exact below 2²⁴.
  if (v >= 2 ** 24) {
    throw new Error(`linearCrossEntropy: at most ${2 ** 24 - 1} classes, got weight ${weight}`);
  }
  const cols = 4 * Math.ceil(rows / 4);
  const quads = cols / 4;
  // x padded with zero rows to N' (a copy only when N is not a multiple of 4 or x is strided).
  const xp = dense(x);
  let xs = xp;
  if (cols !== rows) {
    xs = empty([cols, h]);
    fillInto(xs, 0);
    rt().copy(xp.buffer, xp.offset * 4, xs.buffer, 0, rows * h * 4);
  }
  const w = dense(weight);
  const b = bias ? dense(bias) : null;
  const t = dense(targets);
  // logitsᵀ [V, N'] = W·xsᵀ (the bias is added by the passes that read it).
  const xsT = xs.view([h, cols], [1, h]);
  const logitsT = matmulRaw(w, xsT);
  xsT.dispose();
  const slices = Math.ceil(v / LCE_SLICE_ROWS);
  const pmax = empty([slices, cols]);
  const psum = empty([slices, cols]);
  rt().dispatch(lceStatsKernel(b !== null), [logitsT, ...(b ? [b] : []), pmax, psum], {
    v,
    quads,
    slice: LCE_SLICE_ROWS,
    slices,
    b_off: b?.offset ?? 0,
  }, [Math.ceil(quads / LCE_WG), slices]);
  const rowLoss = empty([cols]);
  const lse = empty([cols]);
  const tcol = empty([cols]);
  rt().dispatch(lceLossKernel(b !== null), [
    logitsT,
    ...(b ? [b] : []),
    pmax,
    psum,
    t,
    rowLoss,
    lse,
    tcol,
  ], {
    v,
    rows,
    cols,
    slices,
    t_off: t.offset,
    b_off: b?.offset ?? 0,
    ignore: ignoreIndex,
  }, [Math.ceil(cols / LCE_WG)]);
  pmax.dispose();
  psum.dispose();
  // The mean over the N real rows (padding rows have loss 0 and are not counted).
  const out = empty([]);
  const count = empty([1]);
  rt().dispatch(finalKernel(true), [rowLoss, t, out, count], {
    rows,
    t_off: t.offset,
    ignore: ignoreIndex,
  }, [1, 1, 1]);
  rowLoss.dispose();
  const inputs = bias ? [x, weight, bias] : [x, weight];
  const recorded = record("linearCrossEntropy", out, inputs, (gOut) => {
    const g = dense(gOut);
    const db = b && bias!.requiresGrad ? empty([v]) : null;
    // With no bias to differentiate, the kernel still needs a buffer bound: a one-element scratch.
    const dbBuf = b ? (db ?? empty([v])) : null;
    rt().dispatch(
      lceGradKernel(b !== null),
      [logitsT, ...(b ? [b, dbBuf!] : []), lse, tcol, g, count],
      { v, quads, b_off: b?.offset ?? 0, g_off: g.offset },
      grid1d(Math.ceil(v / LCE_GRAD_ROWS)),
    );
    if (dbBuf && dbBuf !== db) dbBuf.dispose();
    if (g !== gOut) g.dispose();
    const chunk = 4 * Math.floor(rt().textures.maxDimension / 4);
    let dw = weight.requiresGrad && v > chunk ? empty([v, h]) : null;
    let dxs: Tensor | null = null;
    // Chunks of the vocabulary that fit one texture: dW_c = dlogitsᵀ_c·xs first (its pack of
    // dlogitsᵀ_c is kept, reuseA), then dx += (dlogitsᵀ_c)ᵀ·W_c reads that same pack transposed.
    // A chunk's dW lands in its rows of dW by a buffer copy: cheaper than zero-filling dW for an
    // accumulating product.
    for (let r0 = 0; r0 < v; r0 += chunk) {
      const n = Math.min(chunk, v - r0);
      const dlc = logitsT.view([n, cols], [cols, 1], r0 * cols);
      if (weight.requiresGrad) {
        if (n === v) dw = matmulRaw(dlc, xs, { reuseA: x.requiresGrad });
        else {
          const part = matmulRaw(dlc, xs, { reuseA: x.requiresGrad });
          rt().copy(part.buffer, part.offset * 4, dw!.buffer, r0 * h * 4, n * h * 4);
          part.dispose();
        }
      }
      if (x.requiresGrad) {
        const dlcT = dlc.view([cols, n], [1, cols], r0 * cols);
        const wc = w.view([n, h], [h, 1], w.offset + r0 * h);
        if (dxs) matmulRaw(dlcT, wc, { into: dxs });
        else dxs = matmulRaw(dlcT, wc);
        dlcT.dispose();
        wc.dispose();
      }
      dlc.dispose();
    }
    let dx: Tensor | null = dxs;
    if (dxs && cols !== rows) {
      dx = dxs.view([rows, h], [h, 1], 0);
      dxs.dispose();
    }
    return [dx, dw, db];
  });
  if (!recorded.requiresGrad) {
    for (const tt of [logitsT, lse, tcol, count]) tt.dispose();
  }
  // What the forward made for itself (copies, padding) goes now; the backward keeps what it reads.
  if (xs !== xp && !recorded.requiresGrad) xs.dispose();
  if (xp !== x && xs !== xp) xp.dispose();
  return recorded;
}
