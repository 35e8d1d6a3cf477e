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

let active: ForwardContext | null = null;

/** Forward-pass settings shared by every module of a model. */
export class ForwardContext {
  #call = 0;

  /**
   * The context of the forward pass running now (set by {@link ForwardContext.run}); evaluation
   * mode outside any. Adapter layers, which only see their input tensor, read dropout from it.
   */
  static current(): ForwardContext {
    return active ?? EVAL;
  }

  /** Run `fn` with this context as {@link ForwardContext.current}. */
  run<T>(fn: () => T): T {
    const prev = active;
    active = this;
    try {
      return fn();
    } finally {
      active = prev;
    }
  }

  /** A context for one forward pass; the defaults describe evaluation (no dropout). */
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

const EVAL = new ForwardContext(false);
