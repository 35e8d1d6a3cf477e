/**
 * Optimizers and learning-rate schedules: AdamW with PyTorch's semantics as one fused kernel per
 * parameter tensor, gradient clipping by global norm without a host round trip, `zeroGrad`, exact
 * state export/import for checkpoints, and the Hugging Face schedules as pure functions of the step.
 *
 * Nothing here reads back per step: the learning rate (a host function of the step) and the bias
 * corrections travel as uniforms, and the clip coefficient stays in a GPU buffer the update reads.
 *
 * @module
 */
import { noGrad } from "./autograd.ts";
import { fillInto, map, zeros } from "./elementwise.ts";
import { defineKernel, grid1d, type Kernel, linearIndex, rt } from "./runtime.ts";
import { empty, Tensor } from "./tensor.ts";

const WG = 256;

// ---- learning-rate schedules --------------------------------------------------------------------

/**
 * A learning-rate schedule: the multiplier of each group's base learning rate at a step, counted
 * from 0 (the number of optimizer steps already taken), as Hugging Face's `LambdaLR` lambdas.
 */
export type Schedule = (step: number) => number;

/** Options of the schedules: warm-up length and (for decaying ones) the total number of steps. */
export interface ScheduleOptions {
  /** Steps of linear warm-up from 0 (default 0). */
  warmupSteps?: number;
  /** Total training steps; the decay reaches its end here. */
  totalSteps?: number;
}

function checkSteps(what: string, value: number | undefined, min: number): number {
  const v = value ?? 0;
  if (!Number.isInteger(v) || v < min) {
    throw new Error(`${what}: expected an integer ≥ ${min}, got ${value}`);
  }
  return v;
}

function warmup(step: number, warmupSteps: number): number {
  return step / Math.max(1, warmupSteps);
}

/**
 * Constant multiplier 1 after an optional linear warm-up (HF `get_constant_schedule_with_warmup`).
 *
 * @example
 * ```ts
 * import { constantSchedule } from "./optim.ts";
 * const s = constantSchedule({ warmupSteps: 10 });
 * console.log(s(5), s(20)); // 0.5 1
 * ```
 */
export function constantSchedule(options: Pick<ScheduleOptions, "warmupSteps"> = {}): Schedule {
  const w = checkSteps("constantSchedule warmupSteps", options.warmupSteps, 0);
  return (step) => (step < w ? warmup(step, w) : 1);
}

function decayingSteps(name: string, options: ScheduleOptions): [number, number] {
  const w = checkSteps(`${name} warmupSteps`, options.warmupSteps, 0);
  const total = checkSteps(`${name} totalSteps`, options.totalSteps, 1);
  return [w, total];
}

/**
 * Linear warm-up to 1, then linear decay to 0 at `totalSteps`
 * (HF `get_linear_schedule_with_warmup`).
 *
 * @example
 * ```ts
 * import { linearSchedule } from "./optim.ts";
 * const s = linearSchedule({ warmupSteps: 10, totalSteps: 110 });
 * console.log(s(60)); // 0.5
 * ```
 */
export function linearSchedule(options: ScheduleOptions): Schedule {
  const [w, total] = decayingSteps("linearSchedule", options);
  return (step) =>
    step < w ? warmup(step, w) : Math.max(0, (total - step) / Math.max(1, total - w));
}

/**
 * Linear warm-up to 1, then a cosine decay to 0 over the remaining steps
 * (HF `get_cosine_schedule_with_warmup`; `numCycles` 0.5 is a half cosine). As in HF, steps past
 * `totalSteps` are not clamped: the cosine continues and the multiplier rises again.
 *
 * @example
 * ```ts
 * import { cosineSchedule } from "./optim.ts";
 * const s = cosineSchedule({ warmupSteps: 0, totalSteps: 100 });
 * console.log(s(50)); // 0.5
 * ```
 */
export function cosineSchedule(options: ScheduleOptions & { numCycles?: number }): Schedule {
  const [w, total] = decayingSteps("cosineSchedule", options);
  const cycles = options.numCycles ?? 0.5;
  if (!(cycles > 0)) throw new Error(`cosineSchedule numCycles: expected > 0, got ${cycles}`);
  return (step) => {
    if (step < w) return warmup(step, w);
    const progress = (step - w) / Math.max(1, total - w);
    return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * cycles * 2 * progress)));
  };
}

// ---- kernels -------------------------------------------------------------------------------------

/**
 * The fused AdamW update, in torch.optim.AdamW's order of operations: decay the parameter, update
 * the moments (m by lerp), then p −= stepSize · m / (√v / √bc2 + eps). With `scaled`, the gradient
 * is first multiplied by `scale[scale_off]` (the clip coefficient, left on the GPU).
 *
 * Layout: one thread per element, 256 per workgroup, grid split by `grid1d`; every tensor is
 * contiguous and addressed from its own element offset. With `vec4` a thread updates four
 * consecutive elements (n, offsets in vec4s): storage-buffer loads are the slow path on software
 * adapters, and one vec4 load costs about what one f32 load does. The arithmetic per element is
 * the same, in the same order.
 */
function adamwKernel({ scaled, vec4 }: { scaled: boolean; vec4: boolean }): Kernel {
  const t = vec4 ? "vec4f" : "f32";
  return defineKernel({
    name: `${scaled ? "adamw_scaled" : "adamw"}${vec4 ? "_vec4" : ""}`,
    bindings: [
      { name: "param", type: t, access: "read_write" },
      { name: "grad", type: t, access: "read" },
      { name: "exp_avg", type: t, access: "read_write" },
      { name: "exp_avg_sq", type: t, access: "read_write" },
      ...(scaled ? [{ name: "scale", type: "f32" as const, access: "read" as const }] : []),
    ],
    params: [
      ["n", "u32"],
      ["p_off", "u32"],
      ["g_off", "u32"],
      ["m_off", "u32"],
      ["v_off", "u32"],
      ["scale_off", "u32"],
      ["decay", "f32"],
      ["one_minus_beta1", "f32"],
      ["beta2", "f32"],
      ["one_minus_beta2", "f32"],
      ["step_size", "f32"],
      ["bc2_sqrt", "f32"],
      ["eps", "f32"],
    ],
    source: `
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(WG)};
  if (i >= params.n) { return; }
  let g = grad[params.g_off + i]${scaled ? " * scale[params.scale_off]" : ""};
  let p = param[params.p_off + i] * params.decay;
  let m0 = exp_avg[params.m_off + i];
  let m = m0 + params.one_minus_beta1 * (g - m0);
  let v = exp_avg_sq[params.v_off + i] * params.beta2 + params.one_minus_beta2 * (g * g);
  let denom = sqrt(v) / params.bc2_sqrt + params.eps;
  exp_avg[params.m_off + i] = m;
  exp_avg_sq[params.v_off + i] = v;
  param[params.p_off + i] = p + -params.step_size * (m / denom);
}`,
  });
}

const ADAMW = {
  scaled: adamwKernel({ scaled: true, vec4: false }),
  plain: adamwKernel({ scaled: false, vec4: false }),
  scaledVec4: adamwKernel({ scaled: true, vec4: true }),
  plainVec4: adamwKernel({ scaled: false, vec4: true }),
};

/** The scalars of one tensor's update (the single-tensor kernel's parameters). */
const UPDATE_SCALARS: [string, "u32" | "f32"][] = [
  ["n", "u32"],
  ["p_off", "u32"],
  ["g_off", "u32"],
  ["m_off", "u32"],
  ["v_off", "u32"],
  ["decay", "f32"],
  ["one_minus_beta1", "f32"],
  ["beta2", "f32"],
  ["one_minus_beta2", "f32"],
  ["step_size", "f32"],
  ["bc2_sqrt", "f32"],
  ["eps", "f32"],
];

/**
 * The same update for `count` tensors in one dispatch (multi-tensor AdamW): tensor j has its own
 * four bindings and scalars `<name>_j`; thread i updates element i − start_j of the tensor whose
 * range [start_j, start_j + n_j) holds it. Each element's arithmetic is the single-tensor
 * kernel's, in the same order, so results are bit-identical.
 */
const multiKernels = new Map<string, Kernel>();
function adamwMultiKernel(count: number, scaled: boolean): Kernel {
  const id = `${count}|${scaled}`;
  let k = multiKernels.get(id);
  if (k) return k;
  const bindings: { name: string; type: "f32"; access: "read" | "read_write" }[] = [];
  const params: [string, "u32" | "f32"][] = [["total", "u32"], ["scale_off", "u32"]];
  const branches: string[] = [];
  for (let j = 0; j < count; j++) {
    bindings.push(
      { name: `param${j}`, type: "f32", access: "read_write" },
      { name: `grad${j}`, type: "f32", access: "read" },
      { name: `exp_avg${j}`, type: "f32", access: "read_write" },
      { name: `exp_avg_sq${j}`, type: "f32", access: "read_write" },
    );
    params.push(
      ["start" + j, "u32"],
      ...UPDATE_SCALARS.map(([n, t]) => [`${n}${j}`, t]) as [
        string,
        "u32" | "f32",
      ][],
    );
    const P = (n: string) => `params.${n}${j}`;
    branches.push(`  ${j ? "else " : ""}if (i < params.start${j} + ${P("n")}) {
    let e = i - params.start${j};
    let g = grad${j}[${P("g_off")} + e]${scaled ? " * scale[params.scale_off]" : ""};
    let p = param${j}[${P("p_off")} + e] * ${P("decay")};
    let m0 = exp_avg${j}[${P("m_off")} + e];
    let m = m0 + ${P("one_minus_beta1")} * (g - m0);
    let v = exp_avg_sq${j}[${P("v_off")} + e] * ${P("beta2")} + ${P("one_minus_beta2")} * (g * g);
    let denom = sqrt(v) / ${P("bc2_sqrt")} + ${P("eps")};
    exp_avg${j}[${P("m_off")} + e] = m;
    exp_avg_sq${j}[${P("v_off")} + e] = v;
    param${j}[${P("p_off")} + e] = p + -${P("step_size")} * (m / denom);
  }`);
  }
  if (scaled) bindings.push({ name: "scale", type: "f32", access: "read" });
  k = defineKernel({
    name: `adamw_multi${scaled ? "_scaled" : ""}`,
    bindings,
    params,
    source: `
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(WG)};
  if (i >= params.total) { return; }
${branches.join("\n")}
}`,
  });
  multiKernels.set(id, k);
  return k;
}

/** Tensors above this many elements are updated by a dispatch of their own. */
const MULTI_MAX_ELEMENTS = 1 << 16;

/** One tensor's pending update: its four buffers and scalars. */
interface PendingUpdate {
  buffers: [Tensor, Tensor, Tensor, Tensor];
  scalars: Record<string, number>;
}

/**
 * Dispatch `updates` as multi-tensor AdamW: as many tensors per dispatch as the adapter's
 * storage-buffer limit allows (and never one buffer twice in a dispatch, which WebGPU forbids
 * for written bindings). A chunk of one uses the single-tensor kernel.
 */
function dispatchUpdates(updates: readonly PendingUpdate[], scale: Tensor | null): void {
  const limit = rt().device.limits.maxStorageBuffersPerShaderStage;
  const perDispatch = Math.max(1, Math.min(8, Math.floor((limit - (scale ? 1 : 0)) / 4)));
  let chunk: PendingUpdate[] = [];
  let used = new Set<GPUBuffer>();
  const dispatchOne = (u: PendingUpdate) => {
    const sc = u.scalars;
    const vec4 = [sc.n, sc.p_off, sc.g_off, sc.m_off, sc.v_off].every((x) => x % 4 === 0);
    const kernel = vec4
      ? (scale ? ADAMW.scaledVec4 : ADAMW.plainVec4)
      : (scale ? ADAMW.scaled : ADAMW.plain);
    const per = vec4 ? 4 : 1;
    rt().dispatch(kernel, [...u.buffers, ...(scale ? [scale] : [])], {
      ...sc,
      n: sc.n / per,
      p_off: sc.p_off / per,
      g_off: sc.g_off / per,
      m_off: sc.m_off / per,
      v_off: sc.v_off / per,
      scale_off: scale ? scale.offset : 0,
    }, grid1d(Math.ceil(sc.n / per / WG)));
  };
  const flush = () => {
    if (chunk.length === 0) return;
    if (chunk.length === 1) {
      dispatchOne(chunk[0]);
    } else {
      const p: Record<string, number> = { scale_off: scale ? scale.offset : 0 };
      let start = 0;
      chunk.forEach((u, j) => {
        p[`start${j}`] = start;
        for (const [name] of UPDATE_SCALARS) p[`${name}${j}`] = u.scalars[name];
        start += u.scalars.n;
      });
      p.total = start;
      rt().dispatch(
        adamwMultiKernel(chunk.length, scale !== null),
        [...chunk.flatMap((u) => u.buffers), ...(scale ? [scale] : [])],
        p,
        grid1d(Math.ceil(start / WG)),
      );
    }
    chunk = [];
    used = new Set();
  };
  for (const u of updates) {
    if (u.scalars.n > MULTI_MAX_ELEMENTS) {
      // Large tensors get the single-tensor kernel: on llvmpipe the branchy multi-tensor kernel
      // ran a 6.4M-element embedding 5× slower, and one dispatch is no overhead at that size.
      dispatchOne(u);
      continue;
    }
    const bufs = u.buffers.map((t) => t.buffer);
    if (chunk.length >= perDispatch || bufs.some((b) => used.has(b))) flush();
    chunk.push(u);
    for (const b of bufs) used.add(b);
  }
  flush();
}

/** Threads of the norm kernels and the most workgroups one tensor's sum of squares uses. */
const NORM_WG = 256;
const MAX_NORM_GROUPS = 256;

/** Workgroups of the sum-of-squares pass for `n` elements (about 4 elements per thread). */
function normGroups(n: number): number {
  return Math.min(MAX_NORM_GROUPS, Math.max(1, Math.ceil(n / (NORM_WG * 4))));
}

/** WGSL that tree-reduces `acc` (one f32 per thread) so that acc[0] holds the total. */
function treeSum(threads: number): string {
  return `  workgroupBarrier();
  for (var k = ${threads / 2}u; k > 0u; k = k >> 1u) {
    if (l < k) { acc[l] = acc[l] + acc[l + k]; }
    workgroupBarrier();
  }`;
}

/**
 * Sum of squares of one tensor into `groups` partial sums at partials[base …].
 *
 * Layout: `groups` workgroups of 256 threads walk the tensor in a grid-stride loop (a fixed order,
 * so the result is deterministic), then each workgroup tree-reduces in shared memory and writes
 * one partial.
 */
const SUM_SQUARES = defineKernel({
  name: "sum_squares",
  bindings: [
    { name: "x", type: "f32", access: "read" },
    { name: "partials", type: "f32", access: "read_write" },
  ],
  params: [["n", "u32"], ["off", "u32"], ["groups", "u32"], ["base", "u32"]],
  source: `
var<workgroup> acc: array<f32, ${NORM_WG}>;
@compute @workgroup_size(${NORM_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) l: u32) {
  var s = 0.0;
  let stride = params.groups * ${NORM_WG}u;
  for (var i = wid.x * ${NORM_WG}u + l; i < params.n; i += stride) {
    let v = x[params.off + i];
    s += v * v;
  }
  acc[l] = s;
${treeSum(NORM_WG)}
  if (l == 0u) { partials[params.base + wid.x] = acc[0]; }
}`,
});

/**
 * Total norm and clip coefficient from the partial sums: out[off] = √Σ partials,
 * out[off + 1] = min(1, maxNorm / (norm + 1e-6)) as torch.nn.utils.clip_grad_norm_.
 *
 * Layout: a single workgroup of 256 threads strides over the partials, then tree-reduces.
 */
const CLIP_COEFFICIENT = defineKernel({
  name: "clip_coefficient",
  bindings: [
    { name: "partials", type: "f32", access: "read" },
    { name: "out", type: "f32", access: "read_write" },
  ],
  params: [["count", "u32"], ["off", "u32"], ["max_norm", "f32"]],
  source: `
var<workgroup> acc: array<f32, ${NORM_WG}>;
@compute @workgroup_size(${NORM_WG})
fn main(@builtin(local_invocation_index) l: u32) {
  var s = 0.0;
  for (var i = l; i < params.count; i += ${NORM_WG}u) { s += partials[i]; }
  acc[l] = s;
${treeSum(NORM_WG)}
  if (l == 0u) {
    let norm = sqrt(acc[0]);
    out[params.off] = norm;
    out[params.off + 1u] = min(1.0, params.max_norm / (norm + 1e-6));
  }
}`,
});

// ---- gradient clipping ----------------------------------------------------------------------------

function checkF32Contiguous(t: Tensor, what: string): void {
  if (t.dtype !== "f32") throw new Error(`${what}: expected dtype f32, got ${t.dtype}`);
  if (!t.isContiguous) throw new Error(`${what}: expected a contiguous tensor, got a strided view`);
}

function label(t: Tensor, fallback: string): string {
  return t.name ? `${fallback} (${t.name})` : fallback;
}

/**
 * Measures the global L2 norm of the gradients of some parameters on the GPU and turns it into
 * PyTorch's clip coefficient, into persistent buffers: the same two scalars are rewritten every
 * step, so a loop can read {@link GradClipper.totalNorm} every N steps without a per-step
 * read-back or allocation.
 *
 * @example
 * ```ts
 * import { GradClipper, init, tensor } from "./mod.ts";
 * await init();
 * const w = tensor([1, 2], { requiresGrad: true });
 * w.grad = tensor([3, 4]).keep();
 * const clipper = new GradClipper(1);
 * clipper.measure([w]);
 * console.log(await clipper.totalNorm.item()); // 5
 * ```
 */
export class GradClipper {
  /** The global L2 norm of the gradients at the last {@link measure} (a kept scalar view). */
  readonly totalNorm: Tensor;
  /** min(1, maxNorm / (norm + 1e-6)) at the last {@link measure} (a kept scalar view). */
  readonly coefficient: Tensor;
  #storage: Tensor;
  #partials: Tensor | null = null;

  /** `maxNorm` must be positive (finite, or Infinity to measure without clipping). */
  constructor(readonly maxNorm: number) {
    if (!(maxNorm > 0)) throw new Error(`GradClipper maxNorm: expected > 0, got ${maxNorm}`);
    this.#storage = empty([2], { category: "optimizer" }).keep();
    this.totalNorm = this.#storage.view([], [], 0).keep();
    this.coefficient = this.#storage.view([], [], 1).keep();
  }

  /** Record the norm of the `.grad`s of `params` (those without a gradient count as zero). */
  measure(params: readonly Tensor[]): void {
    const grads = params.flatMap((p, i) => {
      if (!p.grad) return [];
      checkF32Contiguous(p.grad, `gradient of ${label(p, `parameter ${i}`)}`);
      return [p.grad];
    });
    const groups = grads.map((g) => normGroups(g.size));
    const count = Math.max(1, groups.reduce((a, b) => a + b, 0));
    if (!this.#partials || this.#partials.size < count) {
      this.#partials?.dispose();
      this.#partials = empty([count], { category: "scratch" }).keep();
    }
    const partials = this.#partials;
    if (grads.length === 0) fillInto(partials, 0);
    let base = 0;
    grads.forEach((g, k) => {
      rt().dispatch(SUM_SQUARES, [g, partials], {
        n: g.size,
        off: g.offset,
        groups: groups[k],
        base,
      }, [groups[k]]);
      base += groups[k];
    });
    rt().dispatch(CLIP_COEFFICIENT, [partials, this.#storage], {
      count,
      off: 0,
      max_norm: Math.min(this.maxNorm, 3.4e38),
    }, [1]);
  }

  /** Multiply every `.grad` of `params` by the coefficient in place (clip_grad_norm_'s effect). */
  scaleGrads(params: readonly Tensor[]): void {
    for (const p of params) {
      if (p.grad) map([p.grad, this.coefficient], "a * b", { out: p.grad });
    }
  }

  /** Free the buffers. */
  dispose(): void {
    this.totalNorm.dispose();
    this.coefficient.dispose();
    this.#storage.dispose();
    this.#partials?.dispose();
    this.#partials = null;
  }
}

/**
 * torch.nn.utils.clip_grad_norm_: scale the gradients of `params` in place so that their global
 * L2 norm is at most `maxNorm`, and return the norm before clipping as a scalar tensor (on the GPU;
 * read it when needed). For clipping inside AdamW's update, use its `maxGradNorm` option instead.
 */
export function clipGradNorm(params: readonly Tensor[], maxNorm: number): Tensor {
  const clipper = new GradClipper(maxNorm);
  try {
    clipper.measure(params);
    clipper.scaleGrads(params);
    return map([clipper.totalNorm], "a");
  } finally {
    clipper.dispose();
  }
}

// ---- zeroGrad -----------------------------------------------------------------------------------

/** Options of {@link zeroGrad}. */
export interface ZeroGradOptions {
  /** Drop the gradients (free their memory) instead of filling them with zeros (default true). */
  setToNone?: boolean;
}

/** Reset the gradients of `params`: drop them (the default, as PyTorch) or fill them with zeros. */
export function zeroGrad(params: Iterable<Tensor>, options: ZeroGradOptions = {}): void {
  const setToNone = options.setToNone ?? true;
  for (const p of params) {
    if (!p.grad) continue;
    if (setToNone) {
      p.grad.dispose();
      p.grad = null;
    } else {
      fillInto(p.grad, 0);
    }
  }
}

// ---- AdamW --------------------------------------------------------------------------------------

/** A parameter group: parameters sharing hyper-parameters (e.g. a module with its own lr). */
export interface ParamGroup {
  /** The trainable tensors (f32, contiguous; each in one group only). */
  params: Tensor[];
  /** Base learning rate (the schedule multiplies it). */
  lr: number;
  /** Decoupled weight decay: p ← p − lr·weightDecay·p each step. */
  weightDecay: number;
  /** Moment decay rates (default [0.9, 0.999]). */
  betas?: [number, number];
  /** Added to √v̂ (default 1e-8). */
  eps?: number;
}

/** Options of {@link AdamW}. */
export interface AdamWOptions {
  /** Multiplier of every group's lr as a function of the optimizer step (default constant 1). */
  schedule?: Schedule;
  /** Clip the gradients' global norm to this before each update (default: no clipping). */
  maxGradNorm?: number;
}

/** One parameter's AdamW state as host arrays (see {@link AdamW.exportState}). */
export interface AdamWParamState {
  /** The parameter's name when it has one (checked on import). */
  name?: string;
  /** Updates this parameter received (its bias-correction step). */
  step: number;
  /** First moment (PyTorch's `exp_avg`). */
  expAvg: Float32Array;
  /** Second moment (PyTorch's `exp_avg_sq`). */
  expAvgSq: Float32Array;
}

/** A whole optimizer's state: enough to resume bit-exactly. */
export interface AdamWState {
  /** Optimizer steps taken (the schedule's step). */
  step: number;
  /** Hyper-parameters of each group (restored on import, as PyTorch's `param_groups`). */
  groups: { lr: number; weightDecay: number; betas: [number, number]; eps: number }[];
  /** Per parameter, in group order; null where the parameter has no state yet. */
  params: (AdamWParamState | null)[];
}

interface MomentState {
  step: number;
  expAvg: Tensor;
  expAvgSq: Tensor;
}

/** An optimizer's state as JSON metadata plus named host arrays (what a checkpoint stores). */
export interface OptimizerState {
  /** JSON-serialisable bookkeeping (type, step counts, groups), in the optimizer's own shape. */
  meta: unknown;
  /** Moment buffers by key (AdamW: `${i}.exp_avg`, `${i}.exp_avg_sq` of parameter i). */
  arrays: Record<string, Float32Array>;
}

/**
 * What the training loop needs of an optimizer. AdamW implements it; methods that change the
 * update rule (GaLore's projected AdamW) provide their own.
 */
export interface Optimizer {
  /** Steps taken (the schedule's step). */
  readonly stepCount: number;
  /** Update every parameter that has a gradient. */
  step(): void;
  /** Drop (or zero) the gradients. */
  zeroGrad(): void;
  /** The current learning rate of a group (after the schedule). */
  lr(group?: number): number;
  /** Free a parameter's state (e.g. when LISA freezes its layer). */
  releaseState(param: Tensor): void;
  /** Bytes of optimizer state held on the GPU. */
  readonly stateBytes: number;
  /** Copy the state to the host (exact), for checkpoints. */
  saveState(): Promise<OptimizerState>;
  /** Restore a state from {@link Optimizer.saveState}. */
  loadState(state: OptimizerState): void;
  /** Free everything. */
  dispose(): void;
}

/** A parameter group with its defaults filled in; its fields may be changed between steps. */
export interface AdamWGroup {
  /** The group's parameters. */
  params: Tensor[];
  /** Base learning rate. */
  lr: number;
  /** Decoupled weight decay. */
  weightDecay: number;
  /** Moment decay rates. */
  betas: [number, number];
  /** Added to √v̂. */
  eps: number;
}

function resolveGroup(g: ParamGroup, i: number): AdamWGroup {
  const where = `AdamW param group ${i}`;
  if (!Array.isArray(g.params)) throw new Error(`${where}: params must be an array of tensors`);
  if (!(g.lr >= 0) || !Number.isFinite(g.lr)) {
    throw new Error(`${where}: lr must be a finite number ≥ 0, got ${g.lr}`);
  }
  if (!(g.weightDecay >= 0) || !Number.isFinite(g.weightDecay)) {
    throw new Error(`${where}: weightDecay must be a finite number ≥ 0, got ${g.weightDecay}`);
  }
  const betas = g.betas ?? [0.9, 0.999];
  for (const [k, b] of betas.entries()) {
    if (!(b >= 0 && b < 1)) throw new Error(`${where}: betas[${k}] must be in [0, 1), got ${b}`);
  }
  const eps = g.eps ?? 1e-8;
  if (!(eps >= 0)) throw new Error(`${where}: eps must be ≥ 0, got ${eps}`);
  g.params.forEach((p, j) => {
    if (!(p instanceof Tensor)) throw new Error(`${where}: params[${j}] is not a Tensor`);
    checkF32Contiguous(p, `${where}: ${label(p, `params[${j}]`)}`);
  });
  return { params: [...g.params], lr: g.lr, weightDecay: g.weightDecay, betas: [...betas], eps };
}

/**
 * AdamW exactly as torch.optim.AdamW (amsgrad off): decoupled weight decay, bias-corrected
 * moments, eps added outside the square root. Multi-tensor: one fused dispatch updates up to
 * eight parameter tensors (as the adapter's storage-buffer limit allows); moments are created on a
 * parameter's first update (category "optimizer", kept) and each parameter counts its
 * own steps, so parameters that skip steps (no gradient) are corrected as PyTorch corrects them.
 *
 * @example
 * ```ts
 * import { AdamW, backward, init, linearSchedule, mul, sum, tensor } from "./mod.ts";
 * await init();
 * const w = tensor([1, -2], { requiresGrad: true, category: "trainable" }).keep();
 * const opt = new AdamW([{ params: [w], lr: 0.1, weightDecay: 0.01 }], {
 *   schedule: linearSchedule({ warmupSteps: 0, totalSteps: 100 }),
 *   maxGradNorm: 1,
 * });
 * backward(sum(mul(w, w)));
 * opt.step();
 * opt.zeroGrad();
 * ```
 */
export class AdamW implements Optimizer {
  /** The parameter groups with defaults filled in. */
  readonly groups: readonly AdamWGroup[];
  /** The learning-rate multiplier as a function of the optimizer step. */
  readonly schedule: Schedule;
  #clipper: GradClipper | null;
  #state = new Map<Tensor, MomentState>();
  #step = 0;

  /** Validate the groups (errors name the group and parameter) and set up clipping. */
  constructor(groups: readonly ParamGroup[], options: AdamWOptions = {}) {
    if (groups.length === 0) throw new Error("AdamW: at least one parameter group is needed");
    this.groups = groups.map(resolveGroup);
    const seen = new Set<Tensor>();
    this.groups.forEach((g, i) =>
      g.params.forEach((p, j) => {
        if (seen.has(p)) {
          throw new Error(
            `AdamW param group ${i}: ${label(p, `params[${j}]`)} appears in more than one place`,
          );
        }
        seen.add(p);
      })
    );
    this.schedule = options.schedule ?? (() => 1);
    const maxNorm = options.maxGradNorm;
    if (maxNorm !== undefined && !(maxNorm > 0)) {
      throw new Error(`AdamW maxGradNorm: expected > 0, got ${maxNorm}`);
    }
    this.#clipper = maxNorm === undefined ? null : new GradClipper(maxNorm);
  }

  /** Every parameter, in group order. */
  get params(): Tensor[] {
    return this.groups.flatMap((g) => g.params);
  }

  /** Optimizer steps taken so far (the step the schedule sees next). */
  get stepCount(): number {
    return this.#step;
  }

  /** The learning rate group `group` uses at the next step (base lr × schedule). */
  lr(group = 0): number {
    const g = this.groups[group];
    if (!g) throw new Error(`AdamW: no param group ${group} (${this.groups.length} groups)`);
    return g.lr * this.schedule(this.#step);
  }

  /**
   * The global gradient norm measured at the last step, before clipping (a kept scalar tensor on
   * the GPU, rewritten each step), or null without `maxGradNorm`.
   */
  get gradNorm(): Tensor | null {
    return this.#clipper?.totalNorm ?? null;
  }

  /** Bytes of optimizer state currently held on the GPU. */
  get stateBytes(): number {
    let n = 0;
    for (const s of this.#state.values()) n += s.expAvg.bytes + s.expAvgSq.bytes;
    return n;
  }

  /** True when `param` has moments (it has been updated and not released since). */
  hasState(param: Tensor): boolean {
    return this.#state.has(param);
  }

  /**
   * One update of every parameter that has a gradient; parameters without one are skipped (as
   * PyTorch skips `grad is None`). Records dispatches only; nothing is read back.
   */
  step(): void {
    const multiplier = this.schedule(this.#step);
    if (!Number.isFinite(multiplier) || multiplier < 0) {
      throw new Error(`AdamW schedule returned ${multiplier} at step ${this.#step}`);
    }
    noGrad(() => {
      const clipper = this.#clipper;
      if (clipper) clipper.measure(this.params);
      const updates: PendingUpdate[] = [];
      this.groups.forEach((group, gi) => {
        const lr = group.lr * multiplier;
        const [beta1, beta2] = group.betas;
        group.params.forEach((p, j) => {
          const grad = p.grad;
          if (!grad) return;
          if (grad.shape.join() !== p.shape.join()) {
            throw new Error(
              `AdamW param group ${gi}: gradient of ${label(p, `params[${j}]`)} has shape ` +
                `[${grad.shape}], expected [${p.shape}]`,
            );
          }
          checkF32Contiguous(grad, `gradient of ${label(p, `params[${j}]`)}`);
          const s = this.#stateOf(p);
          s.step++;
          if (p.size === 0) return;
          // Host-side scalars in float64, as PyTorch computes them in Python floats.
          const bc1 = 1 - beta1 ** s.step;
          const bc2 = 1 - beta2 ** s.step;
          updates.push({
            buffers: [p, grad, s.expAvg, s.expAvgSq],
            scalars: {
              n: p.size,
              p_off: p.offset,
              g_off: grad.offset,
              m_off: s.expAvg.offset,
              v_off: s.expAvgSq.offset,
              decay: 1 - lr * group.weightDecay,
              one_minus_beta1: 1 - beta1,
              beta2,
              one_minus_beta2: 1 - beta2,
              step_size: lr / bc1,
              bc2_sqrt: Math.sqrt(bc2),
              eps: group.eps,
            },
          });
        });
      });
      dispatchUpdates(updates, clipper ? clipper.coefficient : null);
    });
    this.#step++;
  }

  #stateOf(p: Tensor): MomentState {
    let s = this.#state.get(p);
    if (!s) {
      s = {
        step: 0,
        expAvg: zeros(p.shape, { category: "optimizer" }).keep(),
        expAvgSq: zeros(p.shape, { category: "optimizer" }).keep(),
      };
      this.#state.set(p, s);
    }
    return s;
  }

  /** Reset the gradients of every parameter (see {@link zeroGrad}). */
  zeroGrad(options: ZeroGradOptions = {}): void {
    zeroGrad(this.params, options);
  }

  /**
   * Free `param`'s moments and forget its step count (e.g. when LISA freezes its layer); its next
   * update starts from fresh state, as after deleting PyTorch's `optimizer.state[param]`.
   */
  releaseState(param: Tensor): void {
    const s = this.#state.get(param);
    if (!s) return;
    s.expAvg.dispose();
    s.expAvgSq.dispose();
    this.#state.delete(param);
  }

  /** Copy the whole state to host arrays (for checkpoints). Reads back once per state tensor. */
  async exportState(): Promise<AdamWState> {
    const params = await Promise.all(this.params.map(async (p): Promise<AdamWParamState | null> => {
      const s = this.#state.get(p);
      if (!s) return null;
      const [expAvg, expAvgSq] = await Promise.all([s.expAvg.read(), s.expAvgSq.read()]);
      return {
        ...(p.name ? { name: p.name } : {}),
        step: s.step,
        expAvg: expAvg as Float32Array,
        expAvgSq: expAvgSq as Float32Array,
      };
    }));
    return {
      step: this.#step,
      groups: this.groups.map((g) => ({
        lr: g.lr,
        weightDecay: g.weightDecay,
        betas: [...g.betas],
        eps: g.eps,
      })),
      params,
    };
  }

  /**
   * Restore a state from {@link exportState} (the same parameters in the same order): moments,
   * step counts and group hyper-parameters, so the next step equals the one that was not taken.
   */
  importState(state: AdamWState): void {
    const params = this.params;
    if (state.groups.length !== this.groups.length) {
      throw new Error(
        `AdamW state: ${state.groups.length} param groups, this optimizer has ${this.groups.length}`,
      );
    }
    if (state.params.length !== params.length) {
      throw new Error(
        `AdamW state: ${state.params.length} parameters, this optimizer has ${params.length}`,
      );
    }
    if (!Number.isInteger(state.step) || state.step < 0) {
      throw new Error(`AdamW state step: expected an integer ≥ 0, got ${state.step}`);
    }
    const resolved = state.groups.map((g, i) => resolveGroup({ ...g, params: [] }, i));
    state.params.forEach((s, i) => {
      if (!s) return;
      const p = params[i];
      const what = `AdamW state parameter ${i}${s.name ? ` (${s.name})` : ""}`;
      if (s.name && p.name && s.name !== p.name) {
        throw new Error(`${what}: expected parameter ${p.name} at this position`);
      }
      if (!(s.expAvg instanceof Float32Array) || !(s.expAvgSq instanceof Float32Array)) {
        throw new Error(`${what}: expAvg and expAvgSq must be Float32Arrays`);
      }
      if (s.expAvg.length !== p.size || s.expAvgSq.length !== p.size) {
        throw new Error(`${what}: moments of ${s.expAvg.length} values, expected ${p.size}`);
      }
      if (!Number.isInteger(s.step) || s.step < 0) {
        throw new Error(`${what}: step must be an integer ≥ 0, got ${s.step}`);
      }
    });
    this.groups.forEach((g, i) => {
      const r = resolved[i];
      Object.assign(g, { lr: r.lr, weightDecay: r.weightDecay, betas: r.betas, eps: r.eps });
    });
    for (const p of params) this.releaseState(p);
    state.params.forEach((s, i) => {
      if (!s) return;
      const st = this.#stateOf(params[i]);
      st.step = s.step;
      if (s.expAvg.length > 0) {
        rt().write(st.expAvg.buffer, st.expAvg.offset * 4, s.expAvg);
        rt().write(st.expAvgSq.buffer, st.expAvgSq.offset * 4, s.expAvgSq);
      }
    });
    this.#step = state.step;
  }

  /** {@link exportState} as generic metadata + arrays. */
  async saveState(): Promise<OptimizerState> {
    const s = await this.exportState();
    const arrays: Record<string, Float32Array> = {};
    s.params.forEach((p, i) => {
      if (!p) return;
      arrays[`${i}.exp_avg`] = p.expAvg;
      arrays[`${i}.exp_avg_sq`] = p.expAvgSq;
    });
    const meta = {
      type: "adamw",
      step: s.step,
      groups: s.groups,
      params: s.params.map((p) => (p ? { name: p.name, step: p.step } : null)),
    };
    return { meta, arrays };
  }

  /** Restore from {@link saveState}'s output. */
  loadState(state: OptimizerState): void {
    const meta = state.meta as {
      type?: string;
      step: number;
      groups: AdamWState["groups"];
      params: ({ name?: string; step: number } | null)[];
    };
    if (meta?.type !== "adamw") {
      throw new Error(`optimizer state is not AdamW's (type ${meta?.type})`);
    }
    const array = (key: string) => {
      const a = state.arrays[key];
      if (!a) throw new Error(`AdamW state: missing array ${key}`);
      return a;
    };
    this.importState({
      step: meta.step,
      groups: meta.groups,
      params: meta.params.map((p, i) =>
        p ? { ...p, expAvg: array(`${i}.exp_avg`), expAvgSq: array(`${i}.exp_avg_sq`) } : null
      ),
    });
  }

  /** Free every moment and the clipping buffers. */
  dispose(): void {
    for (const p of [...this.#state.keys()]) this.releaseState(p);
    this.#clipper?.dispose();
    this.#clipper = null;
  }
}
