/**
 * Dropout with a counter-based mask: element i of a call with (seed, stream) is dropped when
 * `rng_u32(seed, stream, i) < threshold(p)`, i being the element's row-major index in the
 * tensor's logical shape. The mask is a pure function of (seed, stream, i), so the backward pass
 * regenerates it instead of storing it (no mask memory), and a resumed run redraws the same masks.
 *
 * Choosing streams: every dropout call of a run must use a different (seed, stream) pair, or two
 * calls would share a mask. Keep `seed` fixed for the run (derived from the run's seed, and not
 * the seed that drew the initial weights, whose streams start at 0) and number the dropout sites
 * of one step 0, 1, … (e.g. layer·sitesPerLayer + siteInLayer); {@link dropoutStream} then turns
 * (step, site) into a stream that no other step or site uses. Because the global step is part of
 * the stream, resuming from a checkpoint at step s reproduces the masks of an unbroken run.
 *
 * @module
 */
import { record } from "./autograd.ts";
import { map, zeros } from "./elementwise.ts";
import { RNG_WGSL, seedU32 } from "./random.ts";
import type { Tensor } from "./tensor.ts";

/** Options of {@link dropout}. */
export interface DropoutOptions {
  /** The run's dropout seed (any integer; folded to 32 bits). */
  seed: number;
  /** Which stream of the seed this call draws from; see {@link dropoutStream}. */
  stream: number;
  /** False in evaluation: dropout is the identity (default true). */
  training?: boolean;
  /**
   * Row r (of the last dimension's rows) draws the mask of row r·rowStep (default 1): rows
   * gathered every rowStep rows from a larger tensor keep the masks they have there.
   */
  rowStep?: number;
}

const TWO_POW_32 = 4294967296;

/**
 * The u32 threshold below which an element is dropped: round(p·2³²), clamped to u32, so the
 * dropped fraction is p to within 2⁻³². Exported so tests and host code can rebuild a mask.
 */
export function dropoutThreshold(p: number): number {
  return Math.min(TWO_POW_32 - 1, Math.round(p * TWO_POW_32));
}

/**
 * The stream for dropout site `site` (0 ≤ site < sitesPerStep) at training step `step`:
 * step·sitesPerStep + site, wrapped to 32 bits. Distinct for every (step, site) until the counter
 * wraps after 2³² / sitesPerStep steps.
 *
 * @example
 * ```ts
 * import { dropoutStream } from "./dropout.ts";
 * // layer 3 of 12, two dropout sites per layer (attention probabilities, output), step 100:
 * const stream = dropoutStream(100, 3 * 2 + 1, 12 * 2);
 * ```
 */
export function dropoutStream(step: number, site: number, sitesPerStep: number): number {
  if (!Number.isInteger(sitesPerStep) || sitesPerStep < 1) {
    throw new Error(`dropoutStream: sitesPerStep must be an integer ≥ 1, got ${sitesPerStep}`);
  }
  if (!Number.isInteger(site) || site < 0 || site >= sitesPerStep) {
    throw new Error(`dropoutStream: site must be an integer in [0, ${sitesPerStep}), got ${site}`);
  }
  if (!Number.isInteger(step) || step < 0) {
    throw new Error(`dropoutStream: step must be an integer ≥ 0, got ${step}`);
  }
  return Number(BigInt.asUintN(32, BigInt(step) * BigInt(sitesPerStep) + BigInt(site)));
}

// The kernel is the elementwise generator's: one thread per element, `i` its row-major index in
// the output (= logical) shape, so strided inputs get the mask of their logical positions.
const MASKED_SCALE = "select(0.0, a * s_scale, rng_u32(u_seed, u_stream, i) >= u_threshold)";
// With row steps: row i / cols draws the mask of row (i / cols)·step.
const MASKED_SCALE_ROWS = "select(0.0, a * s_scale, rng_u32(u_seed, u_stream, " +
  "(i / u_cols) * u_rstep * u_cols + i % u_cols) >= u_threshold)";

/**
 * Zero each element of `x` with probability `p` and scale the kept ones by 1/(1−p). The mask is a
 * function of (seed, stream, element index) only: the same pair gives the same mask, and the
 * backward pass recomputes it. `p = 0` or `training: false` returns `x` itself (no kernel);
 * `p = 1` gives zeros. The output is f32.
 *
 * @example
 * ```ts
 * import { dropout, init, ones } from "./mod.ts";
 * await init();
 * const y = dropout(ones([4, 8]), 0.1, { seed: 1234, stream: 0 }); // 0 or 1/0.9 elementwise
 * ```
 */
export function dropout(x: Tensor, p: number, options: DropoutOptions): Tensor {
  if (!(p >= 0 && p <= 1)) throw new Error(`dropout: p must be in [0, 1], got ${p}`);
  const { seed, stream, training = true, rowStep = 1 } = options;
  if (!Number.isInteger(rowStep) || rowStep < 1) {
    throw new Error(`dropout: rowStep must be an integer ≥ 1, got ${rowStep}`);
  }
  if (!Number.isInteger(seed)) throw new Error(`dropout: seed must be an integer, got ${seed}`);
  if (!Number.isInteger(stream) || stream < 0 || stream >= TWO_POW_32) {
    throw new Error(`dropout: stream must be an integer in [0, 2^32), got ${stream}`);
  }
  if (x.dtype !== "f32" && x.dtype !== "f16") {
    throw new Error(`dropout: x ${x} must be f32 or f16`);
  }
  if (!training || p === 0) return x;
  if (p === 1) return record("dropout", zeros(x.shape), [x], () => [zeros(x.shape)], []);
  const cols = x.rank === 0 ? 1 : x.shape[x.rank - 1];
  const uints = { seed: seedU32(seed), stream, threshold: dropoutThreshold(p) };
  const apply = (t: Tensor): Tensor =>
    map([t], rowStep === 1 ? MASKED_SCALE : MASKED_SCALE_ROWS, {
      scalars: { scale: 1 / (1 - p) },
      uints: rowStep === 1 ? uints : { ...uints, cols, rstep: rowStep },
      helpers: RNG_WGSL,
    });
  // The mask is recomputed from its hash: backward reads nothing of the forward.
  return record("dropout", apply(x), [x], (g) => [apply(g)], []);
}
