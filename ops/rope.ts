/**
 * Rotary position embeddings (RoPE) in Hugging Face LLaMA's rotate-half convention:
 * out = x·cos + rotate_half(x)·sin, where rotate_half(x) = [−x₂, x₁] for the halves x₁, x₂ of the
 * head dimension and both halves of pair i use angle = pos · inv_freq[i], i < Dh/2.
 *
 * inv_freq is computed exactly as HF does, in f32: 1 / theta^(f32(2i) / Dh) (see
 * {@link ropeInvFreq}); it is built on the host once per (Dh, theta) because WGSL's `pow` is only
 * accurate to a few ulp, which at position 4096 would already shift angles by ~1e-3 rad. The angle
 * pos·inv_freq is then formed in f32 in the kernel (the product HF takes) and cos/sin evaluated
 * there in f32. The backward pass is the rotation by −angle.
 *
 * @module
 */
import { record } from "./autograd.ts";
import { defineKernel, grid1d, type Kernel, linearIndex, rt } from "./runtime.ts";
import { type DType, empty, type Tensor, tensor } from "./tensor.ts";

const WG = 256;

/** Options of {@link rope}. */
export interface RopeOptions {
  /** The RoPE base (`rope_theta` in a HF config); default 10000. */
  theta?: number;
}

/**
 * HF LLaMA's `inv_freq` for head dimension `headDim`: 1 / theta^(2i/headDim) for i < headDim/2,
 * with every step rounded to f32 as PyTorch does in float32.
 */
export function ropeInvFreq(headDim: number, theta: number): Float32Array {
  const half = headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    const exponent = Math.fround(Math.fround(2 * i) / Math.fround(headDim));
    out[i] = Math.fround(1 / Math.fround(Math.pow(Math.fround(theta), exponent)));
  }
  return out;
}

// The tables are tiny constants of the model (HF registers inv_freq as a buffer), kept for the
// life of the process.
const invFreqTables = new Map<string, Tensor>();

function invFreqTable(headDim: number, theta: number): Tensor {
  const key = `${headDim}|${theta}`;
  let t = invFreqTables.get(key);
  if (!t || t.disposed) {
    t = tensor(ropeInvFreq(headDim, theta), { category: "weights" }).keep();
    invFreqTables.set(key, t);
  }
  return t;
}

const cache = new Map<string, Kernel>();

function ropeKernel(xType: DType): Kernel {
  let k = cache.get(xType);
  if (k) return k;
  k = defineKernel({
    name: `rope(${xType})`,
    bindings: [
      { name: "x", type: xType, access: "read" },
      { name: "positions", type: "i32", access: "read" },
      { name: "inv_freq", type: "f32", access: "read" },
      { name: "out", type: "f32", access: "read_write" },
    ],
    params: [
      ["total", "u32"],
      ["heads", "u32"],
      ["seq", "u32"],
      ["half", "u32"],
      ["x_off", "u32"],
      ["x_sb", "u32"],
      ["x_sh", "u32"],
      ["x_st", "u32"],
      ["x_sd", "u32"],
      ["pos_off", "u32"],
      ["pos_sb", "u32"],
      ["pos_st", "u32"],
      ["direction", "f32"],
    ],
    source: /* wgsl */ `
// Layout: x [B, H, T, Dh] is read through its strides (a transposed [B, T, H, Dh] view needs no
// copy); out is contiguous [B, H, T, Dh]. One thread per (b, h, t, i < Dh/2) rotates the pair
// (i, i + Dh/2) by direction·angle. The f32 angle is reduced to [-pi, pi] first (Cody-Waite with
// 2pi = HI + LO, HI = 6.28125 having 8 significant bits so k·HI is exact for k < 2^16), because
// GPU sin/cos are only accurate near zero and angles grow with the position.
const INV_TWO_PI: f32 = 0.15915494309189535;
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let lin = ${linearIndex(WG)};
  if (lin >= params.total) { return; }
  let i = lin % params.half;
  var r = lin / params.half;
  let t = r % params.seq;
  r = r / params.seq;
  let h = r % params.heads;
  let b = r / params.heads;
  let pos = positions[params.pos_off + b * params.pos_sb + t * params.pos_st];
  let angle = f32(pos) * inv_freq[i];
  let turns = round(angle * INV_TWO_PI);
  let reduced = (angle - turns * TWO_PI_HI) - turns * TWO_PI_LO;
  let c = cos(reduced);
  let s = params.direction * sin(reduced);
  let src = params.x_off + b * params.x_sb + h * params.x_sh + t * params.x_st;
  let x1 = f32(x[src + i * params.x_sd]);
  let x2 = f32(x[src + (i + params.half) * params.x_sd]);
  let dst = (((b * params.heads + h) * params.seq + t) * params.half) * 2u;
  out[dst + i] = x1 * c - x2 * s;
  out[dst + i + params.half] = x2 * c + x1 * s;
}`,
  });
  cache.set(xType, k);
  return k;
}

/** Rotate every (i, i + Dh/2) pair of `x` by direction·angle. Not recorded. */
function rotate(
  x: Tensor,
  positions: Tensor,
  invFreq: Tensor,
  direction: 1 | -1,
): Tensor {
  const [batch, heads, seq, headDim] = x.shape;
  const out = empty(x.shape, { dtype: "f32" });
  const half = headDim / 2;
  const total = batch * heads * seq * half;
  if (total === 0) return out;
  const perBatch = positions.rank === 2;
  rt().dispatch(ropeKernel(x.dtype), [x, positions, invFreq, out], {
    total,
    heads,
    seq,
    half,
    x_off: x.offset,
    x_sb: x.strides[0],
    x_sh: x.strides[1],
    x_st: x.strides[2],
    x_sd: x.strides[3],
    pos_off: positions.offset,
    pos_sb: perBatch ? positions.strides[0] : 0,
    pos_st: positions.strides[positions.rank - 1],
    direction,
  }, grid1d(Math.ceil(total / WG)));
  return out;
}

/**
 * Apply rotary position embeddings to `x` [B, H, T, Dh] (f32 or f16, any strides; a transposed
 * view of [B, T, H, Dh] is read in place) at `positions`, i32 [T] (shared by the batch) or [B, T].
 * Hugging Face LLaMA's rotate-half convention; the output is a contiguous f32 [B, H, T, Dh].
 * Differentiable in `x` (the backward pass rotates by −angle). cos/sin match PyTorch's of the
 * same f32 angle to ~1e-6 while pos·inv_freq < 2¹⁶·2π ≈ 411,000 rad (any position below that).
 *
 * @example
 * ```ts
 * import { init, rope, tensor } from "./mod.ts";
 * await init();
 * const q = tensor(new Float32Array(1 * 2 * 3 * 4).fill(1), [1, 2, 3, 4]);
 * const rotated = rope(q, tensor(new Int32Array([0, 1, 2])), { theta: 10000 });
 * ```
 */
export function rope(x: Tensor, positions: Tensor, options: RopeOptions = {}): Tensor {
  const theta = options.theta ?? 10000;
  if (x.rank !== 4) throw new Error(`rope: x ${x} must be [B, H, T, Dh]`);
  if (x.dtype !== "f32" && x.dtype !== "f16") throw new Error(`rope: x ${x} must be f32 or f16`);
  const [batch, , seq, headDim] = x.shape;
  if (headDim % 2 !== 0) {
    throw new Error(`rope: the head dimension Dh of x ${x} must be even, got ${headDim}`);
  }
  if (!(theta > 0) || !Number.isFinite(theta)) {
    throw new Error(`rope: theta must be a positive finite number, got ${theta}`);
  }
  if (positions.dtype !== "i32") throw new Error(`rope: positions ${positions} must be i32`);
  const okShape = (positions.rank === 1 && positions.shape[0] === seq) ||
    (positions.rank === 2 && positions.shape[0] === batch && positions.shape[1] === seq);
  if (!okShape) {
    throw new Error(
      `rope: positions ${positions} must be [T] = [${seq}] or [B, T] = [${batch}, ${seq}] for x ${x}`,
    );
  }
  const invFreq = invFreqTable(headDim, theta);
  const y = rotate(x, positions, invFreq, 1);
  return record("rope", y, [x, positions], (g) => [rotate(g, positions, invFreq, -1), null]);
}
