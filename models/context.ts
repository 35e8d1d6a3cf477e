/**
 * What a forward pass needs besides its inputs: training or evaluation mode, and where dropout
 * draws its random numbers from.
 *
 * Dropout masks are a pure function of (seed, stream, index) (see ops/random.ts). Each dropout
 * call in a forward pass takes the next stream of the step, so a step's masks depend only on the
 * seed, the step number and the call order — a resumed run reproduces them exactly.
 *
 * Models read the context of the running forward pass ({@link ForwardContext.current}) unless one
 * is passed explicitly, so a loss function that only builds the model's inputs still trains with
 * dropout when the trainer runs it inside a training context.
 *
 * @module
 */
import { type AttentionDropout, dropout, rngU32, seedU32, type Tensor } from "../ops/mod.ts";

let active: ForwardContext | null = null;

/**
 * Dropout calls one forward pass may make. Streams are numbered step·CALLS_PER_STEP + call in 64
 * bits; the low 32 bits are the kernel's stream and the high bits pick the 32-bit seed, so no two
 * (step, call) pairs of a run share a mask until 2⁵² micro-steps.
 */
const CALLS_PER_STEP = 4096;
const TWO_POW_32 = 4294967296;
/**
 * Mixed into the run's seed so dropout masks never reuse the streams that initialisation draws
 * from the same seed (initial weights use streams 0, 1, … of the plain seed).
 */
const DROPOUT_SALT = 0x0d0f0a11;

/**
 * The (seed, stream) that dropout call `call` (0, 1, … in forward order) of (micro-)step `step`
 * of a run seeded `runSeed` draws its mask from — what {@link ForwardContext} passes to the
 * dropout kernels (tests rebuild masks with it).
 */
export function dropoutCallStream(
  runSeed: number,
  step: number,
  call: number,
): { seed: number; stream: number } {
  if (call >= CALLS_PER_STEP) {
    throw new Error(
      `ForwardContext: more than ${CALLS_PER_STEP} dropout calls in one forward pass; ` +
        "dropout streams would overlap the next step's",
    );
  }
  const index = BigInt(step) * BigInt(CALLS_PER_STEP) + BigInt(call);
  const stream = Number(index % BigInt(TWO_POW_32));
  const epoch = Number(index / BigInt(TWO_POW_32));
  return { seed: rngU32(seedU32(runSeed), DROPOUT_SALT, epoch), stream };
}

/** Forward-pass settings shared by every module of a model. */
export class ForwardContext {
  #call = 0;

  /**
   * The context of the forward pass running now (set by {@link ForwardContext.run}); evaluation
   * mode outside any. Models and adapter layers read dropout from it.
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
    /** The (micro-)step this forward belongs to: its dropout masks differ from every other's. */
    readonly step = 0,
  ) {
    if (!Number.isInteger(step) || step < 0) {
      throw new Error(`ForwardContext: step must be an integer ≥ 0, got ${step}`);
    }
  }

  /** Evaluation mode (no dropout). */
  static eval(): ForwardContext {
    return new ForwardContext(false);
  }

  /** Dropout calls made so far in this forward pass. */
  get calls(): number {
    return this.#call;
  }

  /** The (seed, stream) of the next dropout call. */
  #nextStream(): { seed: number; stream: number } {
    return dropoutCallStream(this.seed, this.step, this.#call++);
  }

  #rowStep = 1;

  /**
   * Run `fn` on rows gathered every `step` rows of the tensors the model would have (an
   * encoder's last layer computing only the [CLS] rows, one per T tokens): dropout inside draws
   * each row's mask as row r·step of the whole, so the gathered rows get the bits they would
   * have had. Streams are taken in the same order as ever.
   */
  withRowStep<T>(step: number, fn: () => T): T {
    if (!Number.isInteger(step) || step < 1) {
      throw new Error(`ForwardContext: row step must be an integer ≥ 1, got ${step}`);
    }
    const prev = this.#rowStep;
    this.#rowStep = step;
    try {
      return fn();
    } finally {
      this.#rowStep = prev;
    }
  }

  /** The mask options of the next dropout call (its stream, and the row step when not 1). */
  #nextMask(): { seed: number; stream: number; rowStep?: number } {
    const s = this.#nextStream();
    return this.#rowStep === 1 ? s : { ...s, rowStep: this.#rowStep };
  }

  /** Dropout with probability `p` when training; identity otherwise. */
  dropout(x: Tensor, p: number): Tensor {
    if (!this.training || p === 0) return x;
    return dropout(x, p, { ...this.#nextMask(), training: true });
  }

  /**
   * The (p, seed, stream) of the next dropout call, for an op that applies the dropout inside a
   * fused kernel (linearResidual): the same stream `dropout` would take here; undefined in
   * evaluation or when `p` is 0.
   */
  fusedDropout(
    p: number,
  ): { p: number; seed: number; stream: number; rowStep?: number } | undefined {
    if (!this.training || p === 0) return undefined;
    return { p, ...this.#nextMask() };
  }

  /**
   * The attention-probability dropout of one attention call (its `dropout` option), taking the
   * next stream: undefined in evaluation or when `p` is 0.
   */
  attentionDropout(p: number): AttentionDropout | undefined {
    if (!this.training || p === 0) return undefined;
    return { p, ...this.#nextStream() };
  }
}

const EVAL = new ForwardContext(false);
