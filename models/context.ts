/**
 * What a forward pass needs besides its inputs: training or evaluation mode, and where dropout
 * draws its random numbers from.
 *
 * Dropout masks are a pure function of (seed, stream, index) (see ops/random.ts). Each dropout
 * call in a forward pass takes the next stream of the step, so a step's masks depend only on the
 * seed, the step number and the call order — a resumed run reproduces them exactly.
 *
 * @module
 */
import { dropout, type Tensor } from "../ops/mod.ts";

/** Forward-pass settings shared by every module of a model. */
export class ForwardContext {
  #call = 0;

  constructor(
    /** Dropout and other training-only behaviour are on. */
    readonly training = false,
    /** The run's seed (dropout streams derive from it). */
    readonly seed = 0,
    /** The optimizer step this forward belongs to. */
    readonly step = 0,
  ) {}

  /** Evaluation mode (no dropout). */
  static eval(): ForwardContext {
    return new ForwardContext(false);
  }

  /** Dropout with probability `p` when training; identity otherwise. */
  dropout(x: Tensor, p: number): Tensor {
    if (!this.training || p === 0) return x;
    // 2^16 dropout calls per step is far more than any model here makes.
    const stream = (this.step * 65536 + this.#call++) >>> 0;
    return dropout(x, p, { seed: this.seed, stream, training: true });
  }
}
