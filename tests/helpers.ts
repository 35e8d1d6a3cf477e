/**
 * Test helpers: seeded host data, closeness assertions, and gradient checks.
 *
 * Gradient checks compare the GPU's analytic gradient (from the tape) with central finite
 * differences of the op's plain-TS reference evaluated in float64, so the numeric side is not
 * limited by f32 round-off and needs no GPU round trip per perturbation.
 */
import {
  backward,
  init,
  mul,
  scopeAsync,
  seededRandom,
  setKeptTextureBudget,
  setRowThreads,
  sum,
  type Tensor,
  tensor,
} from "../ops/mod.ts";
import { AssertionError } from "node:assert/strict";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Initialise WebGPU once for a test file. */
export async function setup(): Promise<void> {
  await init();
}

/** A deterministic host PRNG for test inputs: the project's own seeded generator. */
export const rng: (seed: number) => () => number = seededRandom;

/** `n` values uniform in [lo, hi) from `seed`. */
export function randomArray(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  const r = rng(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * r();
  return out;
}

/** Options of {@link assertClose}: |a − e| ≤ atol + rtol·|e| elementwise. */
export interface Tolerance {
  atol?: number;
  rtol?: number;
}

/** Assert two arrays agree elementwise within tolerance; the message shows the worst element. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  { atol = 1e-5, rtol = 1e-5 }: Tolerance = {},
  what = "values",
): void {
  if (actual.length !== expected.length) {
    throw new AssertionError({
      message: `${what}: length ${actual.length} ≠ expected ${expected.length}`,
    });
  }
  let worst = -1, worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    if (Number.isNaN(e) && Number.isNaN(a)) continue;
    if (a === e) continue; // also equal infinities
    const excess = Math.abs(a - e) - (atol + rtol * Math.abs(e));
    if (!(excess <= 0) && (worst < 0 || excess > worstExcess || Number.isNaN(excess))) {
      worst = i;
      worstExcess = Number.isNaN(excess) ? Infinity : excess;
    }
  }
  if (worst >= 0) {
    throw new AssertionError({
      message: `${what}: element ${worst} is ${actual[worst]}, expected ${
        expected[worst]
      } (atol ${atol}, rtol ${rtol})`,
    });
  }
}

/** Central finite-difference gradient of a scalar function of several float64 arrays. */
export function numericGradients(
  f: (inputs: Float64Array[]) => number,
  inputs: Float64Array[],
  eps = 1e-6,
): Float64Array[] {
  return inputs.map((x, k) => {
    const g = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const saved = x[i];
      x[i] = saved + eps;
      const up = f(inputs);
      x[i] = saved - eps;
      const down = f(inputs);
      x[i] = saved;
      g[i] = (up - down) / (2 * eps);
    }
    void k;
    return g;
  });
}

/** One input of a gradient check. */
export interface GradInput {
  shape: number[];
  values: Float64Array;
  /** Check this input's gradient (default true). */
  grad?: boolean;
}

/**
 * Check an op's backward rule: the GPU gradient of L = Σ op(x)·w (w random, fixed) must match
 * central differences of the same L computed with `reference` in float64.
 *
 * `gpuOp` receives tensors (requiring grad where checked) and returns the op's output;
 * `reference` receives float64 arrays and returns the flat output.
 */
export async function checkGradients(
  gpuOp: (xs: Tensor[]) => Tensor,
  reference: (xs: Float64Array[]) => ArrayLike<number>,
  inputs: GradInput[],
  tolerance: Tolerance = { atol: 2e-4, rtol: 2e-3 },
  seed = 7,
): Promise<void> {
  const out0 = reference(inputs.map((i) => i.values));
  const w = randomArray(out0.length, seed);
  const loss = (xs: Float64Array[]) => {
    const y = reference(xs);
    let s = 0;
    for (let i = 0; i < y.length; i++) s += y[i] * w[i];
    return s;
  };
  const numeric = numericGradients(loss, inputs.map((i) => Float64Array.from(i.values)));
  const analytic = await scopeAsync(async () => {
    const xs = inputs.map((i) =>
      tensor(Float32Array.from(i.values), i.shape, { requiresGrad: i.grad !== false })
    );
    const y = gpuOp(xs);
    const weights = tensor(Float32Array.from(w), y.shape);
    backward(sum(mul(y, weights)));
    const grads: (Float32Array | null)[] = [];
    for (const x of xs) grads.push(x.grad ? (await x.grad.read()) as Float32Array : null);
    for (const x of xs) x.dispose(); // also frees the kept .grad
    return grads;
  });
  inputs.forEach((inp, k) => {
    if (inp.grad === false) return;
    const a = analytic[k];
    if (!a) throw new AssertionError({ message: `input ${k} got no gradient` });
    assertClose(a, numeric[k], tolerance, `gradient of input ${k}`);
  });
}

/** Read a tensor and compare it with expected values. */
export async function expectTensor(
  t: Tensor,
  expected: ArrayLike<number>,
  tolerance?: Tolerance,
  shape?: readonly number[],
): Promise<void> {
  if (shape && t.shape.join() !== shape.join()) {
    throw new AssertionError({ message: `shape [${t.shape}] ≠ expected [${shape}]` });
  }
  assertClose(await t.read(), expected, tolerance, t.toString());
}

/** Awkward sizes the kernels must handle (not multiples of any tile). */
export const AWKWARD_SIZES = [1, 7, 33, 130] as const;

/** Row widths for the row-wise kernels (softmax, norms, losses): the awkward sizes and one wide row. */
export const ROW_WIDTHS = [...AWKWARD_SIZES, 1000] as const;

/** Thread counts to run under: the adapter's default, and the GPU sizes the tree reductions use. */
export const ROW_THREADS = [null, 32, 256] as const;

/** Run `fn` with the row-wise kernels forced to `threads` per row (null: the default). */
export async function withRowThreads(
  threads: number | null,
  fn: () => Promise<void>,
): Promise<void> {
  setRowThreads(threads);
  try {
    await fn();
  } finally {
    setRowThreads(null);
  }
}

/** Run `fn` with the pack cache's kept-texture budget at `bytes` (restored after). */
export async function withKeptTextureBudget<T>(bytes: number, fn: () => Promise<T>): Promise<T> {
  const before = setKeptTextureBudget(bytes);
  try {
    return await fn();
  } finally {
    setKeptTextureBudget(before);
  }
}

/** A tensor's f32 values as their bit patterns, for bit-for-bit comparisons. */
export async function bitsOf(t: Tensor): Promise<number[]> {
  return Array.from(new Uint32Array(((await t.read()) as Float32Array).buffer));
}

/**
 * Point the token cache (RUC_PEFT_CACHE) at one folder for the whole test process, and return it.
 * `deno test --parallel` runs every test file in one process, so the environment is shared: a
 * file that set its own folder would redirect the others' caches into a folder it then deletes.
 * The folder is named by the process id, so every file of one run finds the same one.
 */
export function useTestTokenCache(): string {
  const dir = join(tmpdir(), `ruc-peft-test-cache-${Deno.pid}`);
  Deno.mkdirSync(dir, { recursive: true });
  Deno.env.set("RUC_PEFT_CACHE", dir);
  return dir;
}
