/**
 * Where model constructors get their tensors: from a checkpoint by Hugging Face name, or newly
 * initialised (heads a base checkpoint does not have, as `from_pretrained` does).
 *
 * @module
 */
import type { Tensor } from "../ops/mod.ts";

/** How a new weight is initialised (Hugging Face's `_init_weights` for these models). */
export type InitKind = "normal" | "zeros" | "ones";

/** A source of named weights for a model constructor. */
export interface WeightSource {
  /** Where the weights come from (a checkpoint file), named in errors. */
  readonly origin?: string;
  /** The checkpoint tensor `name` with `shape`, or null when the checkpoint lacks it. */
  get(name: string, shape: readonly number[]): Tensor | null;
  /** A newly initialised tensor (normal: N(0, initializer_range²)). */
  init(name: string, shape: readonly number[], kind: InitKind): Tensor;
}

/** The checkpoint tensor, or an error naming it and the expected shape. */
export function required(w: WeightSource, name: string, shape: readonly number[]): Tensor {
  const t = w.get(name, shape);
  if (!t) {
    throw new Error(
      `${w.origin ?? "checkpoint"}: checkpoint has no tensor ${name} (expected shape [${
        shape.join(", ")
      }]), which the model's config.json implies; the weights file is incomplete or belongs to another model`,
    );
  }
  return t;
}

/** The checkpoint tensor, or a new one initialised as `kind` (classification heads). */
export function orInit(
  w: WeightSource,
  name: string,
  shape: readonly number[],
  kind: InitKind,
): Tensor {
  return w.get(name, shape) ?? w.init(name, shape, kind);
}
