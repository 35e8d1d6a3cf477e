/**
 * The counter-based random number generator shared by initialisation and dropout.
 *
 * A value is a pure function of (seed, stream, index): the same seed gives the same numbers on any
 * adapter and in any dispatch order, and dropout regenerates its mask in the backward pass instead
 * of storing it. The mixing function is the PCG hash (Jarzynski & Olano, "Hash Functions for GPU
 * Rendering", 2020), applied three times to chain seed, stream and index.
 *
 * @module
 */

/** WGSL: `rng_u32(seed, stream, index)` and `rng_uniform(...)` in [0, 1). */
export const RNG_WGSL = /* wgsl */ `
fn pcg_hash(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}
fn rng_u32(seed: u32, stream: u32, index: u32) -> u32 {
  return pcg_hash(index + pcg_hash(stream + pcg_hash(seed)));
}
fn rng_uniform(seed: u32, stream: u32, index: u32) -> f32 {
  return f32(rng_u32(seed, stream, index) >> 8u) * (1.0 / 16777216.0);
}
`;

/** Plain-TS twin of the WGSL `pcg_hash`: a bijective mix of one u32. */
export function pcgHash(v: number): number {
  const state = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const word = Math.imul(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}

/** Plain-TS twin of the WGSL `rng_u32` (tests compare the two). */
export function rngU32(seed: number, stream: number, index: number): number {
  return pcgHash((index + pcgHash((stream + pcgHash(seed)) >>> 0)) >>> 0);
}

/** Plain-TS twin of the WGSL `rng_uniform`. */
export function rngUniform(seed: number, stream: number, index: number): number {
  return (rngU32(seed, stream, index) >>> 8) / 16777216;
}

/** A 32-bit seed from any integer (negative and large seeds fold into u32). */
export function seedU32(seed: number): number {
  return Number(BigInt.asUintN(32, BigInt(Math.trunc(seed))));
}

/**
 * A seeded host generator of uniforms in [0, 1) (mulberry32): sampling in generation, batch
 * shuffles and test data. Same seed → same sequence on every machine.
 *
 * @example
 * ```ts
 * import { seededRandom } from "./random.ts";
 * const random = seededRandom(42);
 * console.log(random() < 1); // true
 * ```
 */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
