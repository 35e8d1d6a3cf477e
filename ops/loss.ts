/**
 * Losses: cross-entropy over class logits (fused log-softmax + NLL, with ignore_index and label
 * smoothing, PyTorch semantics) and mean squared error.
 *
 * @module
 */
import { record } from "./autograd.ts";
import { map } from "./elementwise.ts";
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
