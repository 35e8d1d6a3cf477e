/**
 * Checks that weights are usable before anything runs on them: every value finite, counted on the
 * GPU where the weights already are (one pass over their bytes, one read-back for all of them).
 * A NaN or ±Inf in a checkpoint would otherwise pass evaluate, merge and generate silently
 * (accuracy at chance, empty text); here it is one error naming the tensor and the file.
 *
 * @module
 */
import { countNonFinite, type Tensor } from "../ops/mod.ts";

/**
 * Throw when any of `named` holds NaN or ±Inf, naming the first such tensor, how many values are
 * bad, and `file` (where the values came from). f16 tensors count values that overflowed when
 * they were narrowed, so the check is on what the model will actually use.
 *
 * @example
 * ```ts ignore
 * await assertFiniteWeights(model.namedParameters(), "model/model.safetensors");
 * ```
 */
export async function assertFiniteWeights(
  named: readonly (readonly [string, Tensor])[],
  file: string,
): Promise<void> {
  const floats = named.filter(([, t]) => t.dtype === "f32" || t.dtype === "f16");
  const counts = await countNonFinite(floats.map(([, t]) => t));
  const bad = counts.findIndex((c) => c > 0);
  if (bad < 0) return;
  const [name, t] = floats[bad];
  const others = counts.filter((c) => c > 0).length - 1;
  throw new Error(
    `${file}: tensor ${name} [${t.shape.join(", ")}] holds ${counts[bad]} NaN/Inf value${
      counts[bad] === 1 ? "" : "s"
    }${others > 0 ? ` (and ${others} more tensors do)` : ""}${
      t.dtype === "f16" ? " as f16" : ""
    }; the file is corrupt or its training diverged`,
  );
}

/**
 * Throw unless `shape` (from a file) equals `expected` (what the model needs), naming the tensor
 * and the file.
 */
export function assertShape(
  name: string,
  shape: readonly number[],
  expected: readonly number[],
  file: string,
): void {
  if (shape.join() === expected.join()) return;
  throw new Error(
    `${file}: tensor ${name} has shape [${shape.join(", ")}], the model needs [${
      expected.join(", ")
    }]; it was written for another model or configuration`,
  );
}
