/**
 * LayerNorm (BERT/RoBERTa) and RMSNorm (LLaMA) over the last dimension, as one family: RMSNorm
 * is LayerNorm without centring and without bias, so every kernel here is generated from one
 * function with a `centered` switch.
 *
 * The forward saves the per-row statistics (mean, 1/σ) so the backward never recomputes them.
 * LayerNorm centres each row on its first element before anything else ("shifted data"): then
 * x − x₀ is exact for nearby values and the saved mean is the small mean of x − x₀, so rows with
 * |mean| ≫ σ keep their precision in the forward and the backward alike.
 *
 * Two layouts: one workgroup per row with a shared-memory tree (GPUs), and — where the row-wise
 * kernels get at most {@link ROW_PER_THREAD_MAX_WG} threads per row, i.e. on software adapters —
 * one row per thread: no workgroup memory and no barrier at all (on llvmpipe every barrier
 * switches coroutines per thread), each thread walking its row in two passes (shifted mean, then
 * the centred sum of squares: no Welford merge needed).
 *
 * The weight and bias gradients are column sums over rows; they are computed in two deterministic
 * stages (per-chunk partial sums of both in one kernel, then one kernel summing the partials over
 * chunks in fixed order into dweight and dbias), never with atomics, so two runs give
 * bit-identical gradients.
 *
 * @module
 */
import { record } from "./autograd.ts";
import { map } from "./elementwise.ts";
import { dropout as dropoutOp, dropoutThreshold } from "./dropout.ts";
import { type EpilogueDropout, keepOutputPack, outputPackTexture } from "./matmul.ts";
import { RNG_WGSL, seedU32 } from "./random.ts";
import {
  defineKernel,
  grid1d,
  type Kernel,
  linearIndex,
  memoKernel,
  type ParamType,
  rt,
} from "./runtime.ts";
import { rowThreads } from "./softmax.ts";
import { empty, type Tensor } from "./tensor.ts";

/** Rows summed by one thread of the first stage of the weight/bias gradient (at least). */
const ROWS_PER_CHUNK = 64;
/**
 * The same on software adapters, where a few long-running threads per core are as fast as
 * many: up to this many rows need no second stage at all.
 */
const SOFTWARE_ROWS_PER_CHUNK = 4096;
/** The most chunks one dispatch may have (the grid's y limit). */
const MAX_CHUNKS = 65535;
/** Columns (threads) per workgroup of that stage. */
const COLS_PER_GROUP = 64;
/** At most this many threads per row (software adapters): one row per thread instead. */
export const ROW_PER_THREAD_MAX_WG = 8;
/** Rows (threads) per workgroup of the row-per-thread kernels. */
const ROWS_PER_GROUP = 64;

/** What differs between LayerNorm and RMSNorm, and which optional operands a kernel binds. */
interface NormVariant {
  /** Subtract the row mean (LayerNorm) or not (RMSNorm). */
  centered: boolean;
  /** A bias is added in the forward. */
  bias: boolean;
  /** The forward also writes y into the texture P, packed for the products that read it. */
  packOut?: boolean;
  /** The forward's output is dropout(y) (the mask of `dropout` for the same seed and stream). */
  dropout?: boolean;
}

/**
 * WGSL for output element j of `row`: (x − mean)·rstd·w (+ b), with the dropout mask applied
 * when the variant drops (its index the element's row-major one, as the dropout op's).
 */
function outputValue(v: NormVariant, shift: string): string {
  const value = `${shift} * rstd * f32(w[params.w_off + j])${
    v.bias ? " + f32(b[params.b_off + j])" : ""
  }`;
  if (!v.dropout) return value;
  return `select(0.0, (${value}) * params.drop_scale, ` +
    "rng_u32(params.drop_seed, params.drop_stream, row * d + j) >= params.drop_threshold)";
}

/** The kernel cache key of a forward variant. */
function variantKey(v: NormVariant): string {
  return `${v.centered}|${v.bias}|${!!v.packOut}|${!!v.dropout}`;
}

const cached = (key: string, build: () => Kernel): Kernel => memoKernel("norm", key, build);

type FloatType = "f32" | "f16";

/**
 * WGSL for x − mean of the element `x` of a row whose first element is `first`, where `shiftedMean`
 * is the saved mean of x − first (see the module comment); just `x` when not centred.
 */
function centred(centered: boolean, x: string, first: string, shiftedMean: string): string {
  return centered ? `((${x} - ${first}) - ${shiftedMean})` : x;
}

/** WGSL binding `first`, the row's first element, where the row is centred on it. */
function firstOf(centered: boolean): string {
  return centered ? "let first = f32(x[base]);" : "";
}

/** The bindings and parameters the forward kernels share. */
function forwardSpec(v: NormVariant, xt: FloatType, wt: FloatType) {
  const params: [string, ParamType][] = [["rows", "u32"], ["d", "u32"], ["x_off", "u32"]];
  params.push(["w_off", "u32"]);
  if (v.bias) params.push(["b_off", "u32"]);
  params.push(["eps", "f32"]);
  if (v.dropout) {
    params.push(["drop_seed", "u32"], ["drop_stream", "u32"], ["drop_threshold", "u32"], [
      "drop_scale",
      "f32",
    ]);
  }
  return {
    name: v.centered ? "layer_norm" : "rms_norm",
    bindings: [
      { name: "x", type: xt, access: "read" as const },
      { name: "w", type: wt, access: "read" as const },
      ...(v.bias ? [{ name: "b", type: wt, access: "read" as const }] : []),
      { name: "y", type: "f32" as const, access: "read_write" as const },
      ...(v.centered
        ? [{ name: "mean_out", type: "f32" as const, access: "read_write" as const }]
        : []),
      { name: "rstd_out", type: "f32" as const, access: "read_write" as const },
      ...(v.packOut
        ? [{ name: "P", texture: "rgba32float" as const, access: "write" as const }]
        : []),
    ],
    params,
  };
}

/**
 * Forward, one row per thread: y = (x − mean)·rstd·w + b, saving (shifted mean,) rstd. With
 * `vec4` (an f32 x whose rows and offset are in fours) x is bound as vec4s and each pass loads
 * four elements at once, visiting them in the same order: the same bits, a third fewer
 * storage-buffer loads' cost on software adapters (0.49 → 0.35 ms for 1024 rows of 128).
 */
function forwardRowKernel(v: NormVariant, xt: FloatType, wt: FloatType, vec4 = false): Kernel {
  return cached(`fwd-row|${variantKey(v)}|${xt}|${wt}${vec4 ? "|vec4" : ""}`, () => {
    // Thread `row` reads its row three times (mean, centred squares, output); the row stays in
    // cache between passes. Neighbouring threads read addresses d apart. With packOut the output
    // pass walks the row in fours and stores each four as one texel of P too (zero past d).
    if (vec4) return forwardRowKernelVec4(v, wt);
    const shift = centred(v.centered, "f32(x[base + j])", "first", "mean");
    const value = outputValue(v, shift);
    const output = v.packOut
      ? `for (var j4 = 0u; j4 < (d + 3u) / 4u; j4++) {
    var t = vec4f(0.0);
    for (var l = 0u; l < 4u; l++) {
      let j = 4u * j4 + l;
      if (j < d) {
        let v = ${value};
        y[row * d + j] = v;
        t[l] = v;
      }
    }
    textureStore(P, vec2u(j4, row), t);
  }`
      : `for (var j = 0u; j < d; j++) {
    y[row * d + j] = ${value};
  }`;
    return defineKernel({
      ...forwardSpec(v, xt, wt),
      source: `${v.dropout ? RNG_WGSL : ""}
@compute @workgroup_size(${ROWS_PER_GROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = ${linearIndex(ROWS_PER_GROUP)};
  if (row >= params.rows) { return; }
  let d = params.d;
  let base = params.x_off + row * d;
  ${firstOf(v.centered)}
  ${
        v.centered
          ? `var s: f32 = 0.0;
  for (var j = 0u; j < d; j++) { s += f32(x[base + j]) - first; }
  let mean = s / f32(d);
  mean_out[row] = mean;`
          : ""
      }
  var sq: f32 = 0.0;
  for (var j = 0u; j < d; j++) {
    let c = ${shift};
    sq += c * c;
  }
  let rstd = inverseSqrt(sq / f32(d) + params.eps);
  rstd_out[row] = rstd;
  ${output}
}`,
    });
  });
}

/** {@link forwardRowKernel}'s vec4 form (x f32, d and x's offset multiples of 4). */
function forwardRowKernelVec4(v: NormVariant, wt: FloatType): Kernel {
  const lanes = (body: (x: string, l: number) => string) =>
    [0, 1, 2, 3].map((l) => body(`xv[${l}]`, l)).join("\n    ");
  const shifted = (x: string) => centred(v.centered, x, "first", "mean");
  const output = (l: number) => {
    const value = outputValue(v, shifted(`xv[${l}]`));
    return `{ let j = 4u * j4 + ${l}u; let o = ${value}; y[row * d + j] = o;${
      v.packOut ? ` t[${l}] = o;` : ""
    } }`;
  };
  const spec = forwardSpec(v, "f32", wt);
  return defineKernel({
    ...spec,
    bindings: spec.bindings.map((b) => b.name === "x" ? { ...b, type: "vec4f" as const } : b),
    source: `${v.dropout ? RNG_WGSL : ""}
@compute @workgroup_size(${ROWS_PER_GROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = ${linearIndex(ROWS_PER_GROUP)};
  if (row >= params.rows) { return; }
  let d = params.d;
  let base4 = (params.x_off + row * d) / 4u;
  ${v.centered ? "let first = x[base4].x;" : ""}
  ${
      v.centered
        ? `var s: f32 = 0.0;
  for (var j4 = 0u; j4 < d / 4u; j4++) {
    let xv = x[base4 + j4];
    ${lanes((x) => `s += ${x} - first;`)}
  }
  let mean = s / f32(d);
  mean_out[row] = mean;`
        : ""
    }
  var sq: f32 = 0.0;
  for (var j4 = 0u; j4 < d / 4u; j4++) {
    let xv = x[base4 + j4];
    ${lanes((x) => `{ let c = ${shifted(x)}; sq += c * c; }`)}
  }
  let rstd = inverseSqrt(sq / f32(d) + params.eps);
  rstd_out[row] = rstd;
  for (var j4 = 0u; j4 < d / 4u; j4++) {
    let xv = x[base4 + j4];${v.packOut ? "\n    var t = vec4f(0.0);" : ""}
    ${[0, 1, 2, 3].map(output).join("\n    ")}${
      v.packOut ? "\n    textureStore(P, vec2u(j4, row), t);" : ""
    }
  }
}`,
  });
}

/** Forward: y = (x − mean)·rstd·w + b, saving the shifted mean (centred only) and rstd per row. */
function forwardKernel(
  v: NormVariant,
  wg: number,
  xt: FloatType,
  wt: FloatType,
  vec4 = false,
): Kernel {
  if (wg <= ROW_PER_THREAD_MAX_WG) return forwardRowKernel(v, xt, wt, vec4);
  if (v.packOut) throw new Error("norm: packOut needs the row-per-thread kernel");
  return cached(`fwd|${variantKey(v)}|${wg}|${xt}|${wt}`, () => {
    // One workgroup per contiguous row. Centred: each thread runs Welford over its strided slice
    // of x − x₀ and the tree merges (count, mean, M2) triples by Chan's rule. Uncentred: a plain
    // Σx² tree. A second pass normalises and writes.
    const stats = v.centered
      ? `
  var cnt: f32 = 0.0;
  var mu: f32 = 0.0;
  var m2: f32 = 0.0;
  for (var j = l; j < d; j += ${wg}u) {
    let xv = f32(x[base + j]) - first;
    cnt += 1.0;
    let delta = xv - mu;
    mu += delta / cnt;
    m2 += delta * (xv - mu);
  }
  s_cnt[l] = cnt;
  s_mu[l] = mu;
  s_m2[l] = m2;
  workgroupBarrier();
  for (var h = ${wg / 2}u; h > 0u; h = h >> 1u) {
    if (l < h && s_cnt[l + h] > 0.0) {
      let na = s_cnt[l];
      let nb = s_cnt[l + h];
      let nn = na + nb;
      let delta = s_mu[l + h] - s_mu[l];
      s_mu[l] = s_mu[l] + delta * nb / nn;
      s_m2[l] = s_m2[l] + s_m2[l + h] + delta * delta * na * nb / nn;
      s_cnt[l] = nn;
    }
    workgroupBarrier();
  }
  let mean = s_mu[0];
  let rstd = inverseSqrt(s_m2[0] / f32(d) + params.eps);
  if (l == 0u) { mean_out[row] = mean; rstd_out[row] = rstd; }`
      : `
  var sq: f32 = 0.0;
  for (var j = l; j < d; j += ${wg}u) {
    let xv = f32(x[base + j]);
    sq += xv * xv;
  }
  s_m2[l] = sq;
  workgroupBarrier();
  for (var h = ${wg / 2}u; h > 0u; h = h >> 1u) {
    if (l < h) { s_m2[l] = s_m2[l] + s_m2[l + h]; }
    workgroupBarrier();
  }
  let mean = 0.0;
  let rstd = inverseSqrt(s_m2[0] / f32(d) + params.eps);
  if (l == 0u) { rstd_out[row] = rstd; }`;
    const shared = (v.centered ? ["s_cnt", "s_mu", "s_m2"] : ["s_m2"])
      .map((nm) => `var<workgroup> ${nm}: array<f32, ${wg}>;`).join("\n");
    const value = outputValue(v, centred(v.centered, "f32(x[base + j])", "first", "mean"));
    return defineKernel({
      ...forwardSpec(v, xt, wt),
      source: `${v.dropout ? RNG_WGSL : ""}
${shared}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= params.rows) { return; }
  let d = params.d;
  let base = params.x_off + row * d;
  ${firstOf(v.centered)}
${stats}
  for (var j = l; j < d; j += ${wg}u) {
    y[row * d + j] = ${value};
  }
}`,
    });
  });
}

/** The bindings and parameters the input-gradient kernels share (x and g as f32s or vec4s). */
function inputGradSpec(
  centered: boolean,
  xt: FloatType | "vec4f",
  wt: FloatType,
  gt: "f32" | "vec4f",
) {
  return {
    name: centered ? "layer_norm_backward" : "rms_norm_backward",
    bindings: [
      { name: "x", type: xt, access: "read" as const },
      { name: "w", type: wt, access: "read" as const },
      { name: "g", type: gt, access: "read" as const },
      ...(centered ? [{ name: "mean_in", type: "f32" as const, access: "read" as const }] : []),
      { name: "rstd_in", type: "f32" as const, access: "read" as const },
      { name: "dx", type: "f32" as const, access: "read_write" as const },
    ],
    params: [["rows", "u32"], ["d", "u32"], ["x_off", "u32"], ["w_off", "u32"], [
      "g_off",
      "u32",
    ]] as [string, ParamType][],
  };
}

/**
 * Input gradient: with x̂ = (x − mean)·rstd and ĝ = g·w,
 * dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)); the mean(ĝ) term drops for RMSNorm.
 */
function inputGradKernel(
  centered: boolean,
  wg: number,
  xt: FloatType,
  wt: FloatType,
  vec4 = false,
): Kernel {
  const perThread = wg <= ROW_PER_THREAD_MAX_WG;
  if (perThread && vec4) return inputGradRowKernelVec4(centered, wt);
  return cached(`dx|${centered}|${perThread ? "row" : wg}|${xt}|${wt}`, () => {
    // One pass accumulates Σĝ and Σĝ·x̂, a second writes dx. One workgroup per row: each thread
    // takes a stride of the row and two shared trees sum the partials. One row per thread: the
    // same two passes over the whole row, no tree.
    const xhat = `${centred(centered, "f32(x[base + j])", "first", "mean")} * rstd`;
    const passes = (from: string, step: string, reduce: string, sg: string, sgx: string) => `
  if (row >= params.rows) { return; }
  let d = params.d;
  let base = params.x_off + row * d;
  let gbase = params.g_off + row * d;
  ${firstOf(centered)}
  let mean = ${centered ? "mean_in[row]" : "0.0"};
  let rstd = rstd_in[row];
  var sg: f32 = 0.0;
  var sgx: f32 = 0.0;
  for (var j = ${from}; j < d; j += ${step}) {
    let gh = g[gbase + j] * f32(w[params.w_off + j]);
    sg += gh;
    sgx += gh * ${xhat};
  }${reduce}
  let inv_d = 1.0 / f32(d);
  let mean_g = ${centered ? `${sg} * inv_d` : "0.0"};
  let mean_gx = ${sgx} * inv_d;
  for (var j = ${from}; j < d; j += ${step}) {
    let gh = g[gbase + j] * f32(w[params.w_off + j]);
    dx[row * d + j] = rstd * (gh - mean_g - ${xhat} * mean_gx);
  }
}`;
    const rowSource = `
@compute @workgroup_size(${ROWS_PER_GROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = ${linearIndex(ROWS_PER_GROUP)};${passes("0u", "1u", "", "sg", "sgx")}`;
    const tree = `
  s_g[l] = sg;
  s_gx[l] = sgx;
  workgroupBarrier();
  for (var h = ${wg / 2}u; h > 0u; h = h >> 1u) {
    if (l < h) {
      s_g[l] = s_g[l] + s_g[l + h];
      s_gx[l] = s_gx[l] + s_gx[l + h];
    }
    workgroupBarrier();
  }`;
    const groupSource = `
var<workgroup> s_g: array<f32, ${wg}>;
var<workgroup> s_gx: array<f32, ${wg}>;
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32,
        @builtin(num_workgroups) nwg: vec3u) {
  let row = wid.x + wid.y * nwg.x;${passes("l", `${wg}u`, tree, "s_g[0]", "s_gx[0]")}`;
    return defineKernel({
      ...inputGradSpec(centered, xt, wt, "f32"),
      source: perThread ? rowSource : groupSource,
    });
  });
}

/**
 * {@link inputGradKernel}'s row-per-thread form with x and g read as vec4s (f32, d and both
 * offsets in fours): the same two passes visiting the elements in the same order, so the same bits.
 */
function inputGradRowKernelVec4(centered: boolean, wt: FloatType): Kernel {
  return cached(`dx|${centered}|row|f32|${wt}|vec4`, () => {
    const lanes = (body: (l: number) => string) => [0, 1, 2, 3].map(body).join("\n    ");
    const xhat = (l: number) => `${centred(centered, `xv[${l}]`, "first", "mean")} * rstd`;
    const gh = (l: number) => `gv[${l}] * f32(w[params.w_off + 4u * j4 + ${l}u])`;
    return defineKernel({
      ...inputGradSpec(centered, "vec4f", wt, "vec4f"),
      source: `
@compute @workgroup_size(${ROWS_PER_GROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = ${linearIndex(ROWS_PER_GROUP)};
  if (row >= params.rows) { return; }
  let d = params.d;
  let base4 = (params.x_off + row * d) / 4u;
  let gbase4 = (params.g_off + row * d) / 4u;
  ${centered ? "let first = x[base4].x;" : ""}
  let mean = ${centered ? "mean_in[row]" : "0.0"};
  let rstd = rstd_in[row];
  var sg: f32 = 0.0;
  var sgx: f32 = 0.0;
  for (var j4 = 0u; j4 < d / 4u; j4++) {
    let xv = x[base4 + j4];
    let gv = g[gbase4 + j4];
    ${lanes((l) => `{ let gh = ${gh(l)}; sg += gh; sgx += gh * ${xhat(l)}; }`)}
  }
  let inv_d = 1.0 / f32(d);
  let mean_g = ${centered ? "sg * inv_d" : "0.0"};
  let mean_gx = sgx * inv_d;
  for (var j4 = 0u; j4 < d / 4u; j4++) {
    let xv = x[base4 + j4];
    let gv = g[gbase4 + j4];
    ${
        lanes((l) =>
          `{ let gh = ${gh(l)}; dx[row * d + 4u * j4 + ${l}u] = rstd * (gh - mean_g - ${
            xhat(l)
          } * mean_gx); }`
        )
      }
  }
}`,
    });
  });
}

/** Which column sums the parameter-gradient stage produces. */
interface ParamGrads {
  weight: boolean;
  bias: boolean;
}

/** Stage one of dw = Σ_rows g·x̂ and db = Σ_rows g: partial sums per chunk of rows. */
function paramGradKernel(centered: boolean, want: ParamGrads, xt: FloatType): Kernel {
  return cached(`dwb|${centered}|${want.weight}|${want.bias}|${xt}`, () => {
    // Grid: x over groups of COLS_PER_GROUP columns (one thread per column, so neighbouring
    // threads read neighbouring addresses), y over chunks of `per_chunk` rows. Each thread sums
    // its chunk in row order and writes partial[chunk, col]; a fixed-order reduction over chunks
    // follows, so the result is deterministic.
    const xv = "f32(x[params.x_off + r * d + col])";
    const xhat = `${
      centred(centered, xv, "f32(x[params.x_off + r * d])", "mean_in[r]")
    } * rstd_in[r]`;
    return defineKernel({
      name: centered ? "layer_norm_param_grad" : "rms_norm_param_grad",
      bindings: [
        { name: "x", type: xt, access: "read" },
        { name: "g", type: "f32", access: "read" },
        ...(centered ? [{ name: "mean_in", type: "f32" as const, access: "read" as const }] : []),
        { name: "rstd_in", type: "f32", access: "read" },
        ...(want.weight
          ? [{ name: "dw", type: "f32" as const, access: "read_write" as const }]
          : []),
        ...(want.bias ? [{ name: "db", type: "f32" as const, access: "read_write" as const }] : []),
      ],
      params: [
        ["rows", "u32"],
        ["d", "u32"],
        ["x_off", "u32"],
        ["g_off", "u32"],
        ["per_chunk", "u32"],
      ],
      source: `
@compute @workgroup_size(${COLS_PER_GROUP})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let col = gid.x;
  let d = params.d;
  if (col >= d) { return; }
  let chunk = gid.y;
  let r0 = chunk * params.per_chunk;
  let r1 = min(params.rows, r0 + params.per_chunk);
  var sw: f32 = 0.0;
  var sb: f32 = 0.0;
  for (var r = r0; r < r1; r++) {
    let gv = g[params.g_off + r * d + col];
    ${want.weight ? `sw += gv * ${xhat};` : ""}
    sb += gv;
  }
  ${want.weight ? "dw[chunk * d + col] = sw;" : ""}
  ${want.bias ? "db[chunk * d + col] = sb;" : ""}
}`,
    });
  });
}

function floatType(t: Tensor, what: string): FloatType {
  if (t.dtype !== "f32" && t.dtype !== "f16") {
    throw new Error(`${what}: ${t} must be f32 or f16`);
  }
  return t.dtype;
}

/** `t` itself when contiguous, else a contiguous copy (the caller disposes copies it gets). */
function dense(t: Tensor): Tensor {
  return t.isContiguous ? t : map([t], "a", { dtype: t.dtype });
}

/** Sum the [chunks, d] partials over chunks into a [d] gradient. */
function finishColumnSum(partials: readonly Tensor[]): Tensor[] {
  const [chunks, d] = partials[0].shape;
  const outs = partials.map(() => empty([d]));
  // One thread per column of every partial, summing its chunks in order: dweight and dbias in
  // one dispatch.
  rt().dispatch(
    finishKernel(partials.length),
    [...partials, ...outs],
    { chunks, d },
    grid1d(Math.ceil((d * partials.length) / COLS_PER_GROUP)),
  );
  for (const p of partials) p.dispose();
  return outs;
}

/** Sum `count` [chunks, d] partials over chunks (fixed order) into `count` [d] outputs. */
function finishKernel(count: number): Kernel {
  return cached(`finish|${count}`, () => {
    const ins = Array.from({ length: count }, (_, i) => `p${i}`);
    const outs = Array.from({ length: count }, (_, i) => `o${i}`);
    const body = ins.map((p, i) => `
  if (which == ${i}u) {
    var s: f32 = 0.0;
    for (var c = 0u; c < params.chunks; c++) { s += ${p}[c * d + col]; }
    ${outs[i]}[col] = s;
  }`).join("");
    return defineKernel({
      name: "norm_param_grad_finish",
      bindings: [
        ...ins.map((name) => ({ name, type: "f32" as const, access: "read" as const })),
        ...outs.map((name) => ({ name, type: "f32" as const, access: "read_write" as const })),
      ],
      params: [["chunks", "u32"], ["d", "u32"]],
      source: `
@compute @workgroup_size(${COLS_PER_GROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(COLS_PER_GROUP)};
  let d = params.d;
  if (i >= d * ${count}u) { return; }
  let which = i / d;
  let col = i % d;${body}
}`,
    });
  });
}

function normOp(
  name: string,
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  eps: number,
  centered: boolean,
  options: NormOptions = {},
): Tensor {
  const xt = floatType(x, `${name} input`);
  const wt = floatType(weight, `${name} weight`);
  if (x.rank === 0) throw new Error(`${name}: input ${x} must have at least one dimension`);
  const d = x.shape[x.rank - 1];
  if (d === 0) throw new Error(`${name}: input ${x} has an empty last dimension`);
  const checkParam = (p: Tensor, what: string) => {
    if (p.rank !== 1 || p.shape[0] !== d || !p.isContiguous) {
      throw new Error(`${name}: ${what} ${p} must be contiguous with shape [${d}]`);
    }
  };
  checkParam(weight, "weight");
  if (bias) {
    checkParam(bias, "bias");
    if (bias.dtype !== weight.dtype) {
      throw new Error(`${name}: bias ${bias} and weight ${weight} must share a dtype`);
    }
  }
  if (!(eps >= 0)) throw new Error(`${name}: eps must be ≥ 0, got ${eps}`);
  const dp = options.dropout;
  if (dp && !(dp.p >= 0 && dp.p <= 1)) {
    throw new Error(`${name}: dropout p must be in [0, 1], got ${dp.p}`);
  }
  if (dp && (dp.rowStep ?? 1) !== 1) {
    throw new Error(`${name}: a fused dropout's rowStep is not supported (got ${dp.rowStep})`);
  }
  if (dp && (dp.p === 0 || dp.p === 1)) {
    // No mask to fuse: p = 0 is the plain norm, p = 1 the dropout op's zeros.
    const y = normOp(name, x, weight, bias, eps, centered, { packOut: options.packOut });
    if (dp.p === 0) return y;
    const dropped = dropoutOp(y, 1, { seed: dp.seed, stream: dp.stream });
    y.release();
    return dropped;
  }
  const rows = x.size / d;
  const xc = dense(x);
  const y = empty(x.shape);
  const mean = centered ? empty([rows]) : null;
  const rstd = empty([rows]);
  const wg = rowThreads(d);
  const rowGrid = grid1d(wg <= ROW_PER_THREAD_MAX_WG ? Math.ceil(rows / ROWS_PER_GROUP) : rows);
  // The packed copy for the products that read y next: written by the row-per-thread kernel
  // (software adapters, where products read packs); elsewhere they pack y themselves.
  const pack = options.packOut && wg <= ROW_PER_THREAD_MAX_WG ? outputPackTexture(rows, d) : null;
  const drop = options.dropout;
  if (rows > 0) {
    const k = forwardKernel(
      { centered, bias: bias !== null, packOut: pack !== null, dropout: drop !== undefined },
      wg,
      xt,
      wt,
      xt === "f32" && d % 4 === 0 && xc.offset % 4 === 0,
    );
    const params: Record<string, number> = {
      rows,
      d,
      x_off: xc.offset,
      w_off: weight.offset,
      eps,
    };
    if (bias) params.b_off = bias.offset;
    if (drop) {
      params.drop_seed = seedU32(drop.seed);
      params.drop_stream = drop.stream;
      params.drop_threshold = dropoutThreshold(drop.p);
      params.drop_scale = 1 / (1 - drop.p);
    }
    const bufs = [xc, weight, ...(bias ? [bias] : []), y, ...(mean ? [mean] : []), rstd];
    rt().dispatch(k, pack ? [...bufs, pack] : bufs, params, rowGrid);
    if (pack) keepOutputPack(y, pack);
  }
  const inputs = bias ? [x, weight, bias] : [x, weight];
  const out = record(name, y, inputs, (gOut) => {
    // The output dropout's backward: the same mask on the incoming gradient.
    const gd = drop ? dropoutOp(gOut, drop.p, { seed: drop.seed, stream: drop.stream }) : gOut;
    const g = dense(gd);
    const stats = mean ? [mean, rstd] : [rstd];
    let dx: Tensor | null = null;
    if (x.requiresGrad) {
      dx = empty(x.shape);
      const k = inputGradKernel(
        centered,
        wg,
        xt,
        wt,
        xt === "f32" && d % 4 === 0 && xc.offset % 4 === 0 && g.offset % 4 === 0,
      );
      rt().dispatch(k, [xc, weight, g, ...stats, dx], {
        rows,
        d,
        x_off: xc.offset,
        w_off: weight.offset,
        g_off: g.offset,
      }, rowGrid);
    }
    const want = { weight: weight.requiresGrad, bias: bias?.requiresGrad ?? false };
    let dw: Tensor | null = null;
    let db: Tensor | null = null;
    if (want.weight || want.bias) {
      const perChunk = Math.max(
        wg <= ROW_PER_THREAD_MAX_WG ? SOFTWARE_ROWS_PER_CHUNK : ROWS_PER_CHUNK,
        Math.ceil(rows / MAX_CHUNKS),
      );
      const chunks = Math.max(1, Math.ceil(rows / perChunk));
      // One chunk: the kernel writes the gradients themselves (allocated as such).
      const partial = () => chunks === 1 ? empty([d]) : empty([chunks, d], { category: "scratch" });
      const pw = want.weight ? partial() : null;
      const pb = want.bias ? partial() : null;
      if (rows === 0) {
        for (const p of [pw, pb]) if (p) map([], "0.0", { out: p });
      } else {
        const k = paramGradKernel(centered, want, xt);
        const outs = [...(pw ? [pw] : []), ...(pb ? [pb] : [])];
        rt().dispatch(
          k,
          [xc, g, ...stats, ...outs],
          { rows, d, x_off: xc.offset, g_off: g.offset, per_chunk: perChunk },
          [Math.ceil(d / COLS_PER_GROUP), chunks, 1],
        );
      }
      const partials = [pw, pb].filter((t): t is Tensor => t !== null);
      [dw, db] = chunks === 1
        ? [pw, pb] // one chunk: the partials are the sums
        : (() => {
          const sums = finishColumnSum(partials);
          return [pw ? sums[0] : null, pb ? sums.at(-1)! : null];
        })();
    }
    if (g !== gd) g.dispose();
    if (gd !== gOut) gd.dispose();
    return bias ? [dx, dw, db] : [dx, dw];
  }, [xc, weight, ...(mean ? [mean] : []), rstd]);
  // The statistics (and a contiguous copy of x) serve the backward alone: they go as soon as it
  // has run, or now when nothing was recorded.
  for (const t of [mean, rstd, xc === x ? null : xc]) if (t) t.release();
  return out;
}

/**
 * Layer normalisation over the last dimension: (x − mean)/√(var + eps)·weight + bias, with the
 * biased variance, as `torch.nn.LayerNorm`. RoBERTa uses eps 1e-5 (the default), BERT 1e-12.
 *
 * `x` is `[..., d]`; `weight` and `bias` are `[d]` (f32, or f16 for frozen weights; `bias` may be
 * null). Differentiable in all three; a weight or bias that does not require grad gets none and
 * costs no gradient memory. Output f32.
 *
 * @example
 * ```ts
 * import { init, layerNorm, ones, tensor, zeros } from "./mod.ts";
 * await init();
 * const y = layerNorm(tensor([[1, 2, 3]]), ones([3]), zeros([3]));
 * console.log(await y.toArray()); // ≈ [-1.2247, 0, 1.2247]
 * ```
 */
export function layerNorm(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  eps = 1e-5,
  options: NormOptions = {},
): Tensor {
  return normOp("layerNorm", x, weight, bias, eps, true, options);
}

/** Options of {@link layerNorm} and {@link rmsNorm}. */
export interface NormOptions {
  /**
   * The output is read next by matrix products (a transformer block's input feeding its
   * projections): where products read packed operands (the matmul's texture variant), the
   * normalisation writes the output's pack in the same dispatch and leaves it cached for them.
   * A hint: the values are the same either way.
   */
  packOut?: boolean;
  /**
   * Dropout on the output, in the same kernel: the result is dropout(norm(x)) with the mask
   * `dropout(y, p, {seed, stream})` draws (an embedding block's LayerNorm and its dropout).
   * Nothing more is kept for backward, which applies the mask to the incoming gradient.
   */
  dropout?: EpilogueDropout;
}

/**
 * RMS normalisation over the last dimension, as LLaMA: x·rsqrt(mean(x²) + eps)·weight, computed
 * in f32. `x` is `[..., d]`, `weight` `[d]`. Differentiable in both. Output f32.
 *
 * @example
 * ```ts
 * import { init, ones, rmsNorm, tensor } from "./mod.ts";
 * await init();
 * const y = rmsNorm(tensor([[3, 4]]), ones([2]));
 * console.log(await y.toArray()); // ≈ [0.8485, 1.1314]
 * ```
 */
export function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-6, options: NormOptions = {}): Tensor {
  return normOp("rmsNorm", x, weight, null, eps, false, options);
}
