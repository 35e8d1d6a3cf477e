/**
 * A sign convention for singular vectors. An SVD fixes each singular vector only up to sign, and
 * which sign a routine returns is arbitrary (LAPACK, cuSOLVER and our Jacobi SVD disagree). Methods
 * whose result depends on that sign (GaLore's projector across refreshes, LoRA-GA's A₀ and B₀,
 * which come from different singular triplets) fix it with this rule so that they are functions of
 * the matrix alone: each vector's largest-magnitude entry is positive (scikit-learn's svd_flip).
 *
 * @module
 */
import { map, max, min, type Tensor } from "../ops/mod.ts";

/**
 * ±1 per column of `m` [rows, k]: the sign of the column's largest-magnitude entry (positive when
 * its maximum is at least minus its minimum), so that `m · sign` has that entry positive.
 *
 * @example
 * ```ts
 * import { init, tensor } from "../ops/mod.ts";
 * import { signOfLargest } from "./signs.ts";
 * await init();
 * console.log(await signOfLargest(tensor([[1, -3], [-2, 1]])).toArray()); // [-1, -1]
 * ```
 */
export function signOfLargest(m: Tensor): Tensor {
  return map([max(m, 0), min(m, 0)], "select(1.0, -1.0, a + b < 0.0)");
}
