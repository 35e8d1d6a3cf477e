/**
 * Kernel variants: one kernel family (say "matmul") may have several implementations, each good
 * on some adapters and shapes. A variant states which shapes it `supports` on an adapter and how
 * much it is preferred there; {@link chooseVariant} picks one per call.
 *
 * The choice, in order: a test's override ({@link setVariantOverride}, {@link withVariant}), then
 * a timing result recorded for the call's key ({@link KernelFamily.autotune} or
 * {@link KernelFamily.setTuned}), then the supporting variant with the highest preference.
 *
 * @module
 */
import { type Gpu, gpu } from "./device.ts";

/** One implementation of a kernel family over shape descriptions `S`, running as `I`. */
export interface KernelVariant<S, I> {
  /** Unique within its family; tests and overrides refer to it by name. */
  readonly name: string;
  /** Higher wins among the variants that support a call (ties go to the first registered). */
  preference(g: Gpu): number;
  /** True when this variant can run `shapes` on this adapter (limits, features, dtypes). */
  supports(g: Gpu, shapes: S): boolean;
  /** The implementation the family's op calls. */
  readonly run: I;
}

/** A timing of one variant, as {@link KernelFamily.autotune} reports it. */
export interface VariantTiming {
  /** The variant's name. */
  name: string;
  /** Milliseconds per call as the timing function measured it. */
  ms: number;
}

const overrides = new Map<string, string>();
const families = new Map<string, { variantNames(): string[] }>();

/** A kernel family: its variants, the tuned choices per key, and the choice rule. */
export class KernelFamily<S, I> {
  readonly #variants: KernelVariant<S, I>[] = [];
  readonly #tuned = new Map<string, string>();

  /** Create an empty family; prefer {@link kernelFamily}, which registers it by name. */
  constructor(readonly name: string) {}

  /** Add a variant (names must be unique in the family). Returns the variant. */
  register(v: KernelVariant<S, I>): KernelVariant<S, I> {
    if (this.#variants.some((x) => x.name === v.name)) {
      throw new Error(`kernel family ${this.name}: variant ${v.name} is already registered`);
    }
    this.#variants.push(v);
    return v;
  }

  /** The registered variants in registration order. */
  get variants(): readonly KernelVariant<S, I>[] {
    return this.#variants;
  }

  /** Names of the registered variants. */
  variantNames(): string[] {
    return this.#variants.map((v) => v.name);
  }

  /** The variant called `name`, or an error listing the family's variants. */
  variant(name: string): KernelVariant<S, I> {
    const v = this.#variants.find((x) => x.name === name);
    if (!v) {
      throw new Error(
        `kernel family ${this.name} has no variant "${name}" (has: ${
          this.variantNames().join(", ")
        })`,
      );
    }
    return v;
  }

  /** The variants that support `shapes` here, most preferred first. */
  candidates(shapes: S, g: Gpu = gpu()): KernelVariant<S, I>[] {
    return this.#variants
      .filter((v) => v.supports(g, shapes))
      .map((v, i) => ({ v, i, p: v.preference(g) }))
      .sort((x, y) => y.p - x.p || x.i - y.i)
      .map((x) => x.v);
  }

  /**
   * The variant for one call. `key` identifies the call for tuning (e.g. "512x768x768"); calls
   * without a recorded timing for their key fall back to preferences.
   */
  choose(shapes: S, key?: string, g: Gpu = gpu()): KernelVariant<S, I> {
    const forced = overrides.get(this.name);
    if (forced !== undefined) {
      const v = this.variant(forced);
      if (!v.supports(g, shapes)) {
        throw new Error(
          `kernel family ${this.name}: forced variant ${forced} does not support ${
            JSON.stringify(shapes)
          } on ${g.adapter.name}`,
        );
      }
      return v;
    }
    if (key !== undefined) {
      const tuned = this.#tuned.get(key);
      if (tuned !== undefined) {
        const v = this.variant(tuned);
        if (v.supports(g, shapes)) return v;
      }
    }
    const best = this.candidates(shapes, g)[0];
    if (!best) {
      throw new Error(
        `kernel family ${this.name}: no variant supports ${
          JSON.stringify(shapes)
        } on ${g.adapter.name}`,
      );
    }
    return best;
  }

  /** Record that `name` is the variant to use for calls with `key` (the autotuning hook). */
  setTuned(key: string, name: string): void {
    this.variant(name);
    this.#tuned.set(key, name);
  }

  /** The tuned variant name for `key`, if any. */
  tuned(key: string): string | undefined {
    return this.#tuned.get(key);
  }

  /** Forget every tuned choice. */
  clearTuned(): void {
    this.#tuned.clear();
  }

  /**
   * Time every supporting variant with `time(variant)` (milliseconds, lower is better), record
   * the fastest for `key`, and return all timings, fastest first.
   */
  async autotune(
    shapes: S,
    key: string,
    time: (v: KernelVariant<S, I>) => Promise<number>,
  ): Promise<VariantTiming[]> {
    const timings: VariantTiming[] = [];
    for (const v of this.candidates(shapes)) timings.push({ name: v.name, ms: await time(v) });
    timings.sort((a, b) => a.ms - b.ms);
    if (timings.length) this.#tuned.set(key, timings[0].name);
    return timings;
  }
}

/**
 * The family called `name`, created on first use.
 *
 * @example
 * ```ts
 * import { kernelFamily } from "./variants.ts";
 * const family = kernelFamily<{ n: number }, (n: number) => number>("double");
 * family.register({ name: "plain", preference: () => 1, supports: () => true, run: (n) => 2 * n });
 * ```
 */
export function kernelFamily<S, I>(name: string): KernelFamily<S, I> {
  const existing = families.get(name);
  if (existing) {
    if (!(existing instanceof KernelFamily)) throw new Error(`${name} is not a kernel family`);
    return existing as KernelFamily<S, I>;
  }
  const f = new KernelFamily<S, I>(name);
  families.set(name, f);
  return f;
}

/** The variant of `family` for one call (see {@link KernelFamily.choose}). */
export function chooseVariant<S, I>(
  family: KernelFamily<S, I>,
  shapes: S,
  key?: string,
): KernelVariant<S, I> {
  return family.choose(shapes, key);
}

/**
 * Force every call of `family` to use variant `name` (null lifts the override). Meant for tests
 * and benchmarks; a forced variant that does not support a call's shapes makes that call throw.
 */
export function setVariantOverride(family: string, name: string | null): void {
  const f = families.get(family);
  if (!f) throw new Error(`no kernel family named ${family}`);
  if (name === null) {
    overrides.delete(family);
    return;
  }
  if (!f.variantNames().includes(name)) {
    throw new Error(
      `kernel family ${family} has no variant "${name}" (has: ${f.variantNames().join(", ")})`,
    );
  }
  overrides.set(family, name);
}

/** The forced variant of `family`, if any. */
export function variantOverride(family: string): string | undefined {
  return overrides.get(family);
}

/**
 * Run `fn` with `family` forced to variant `name`; the previous override is restored when `fn`
 * returns or, for a promise, when it settles.
 *
 * @example
 * ```ts
 * import { withVariant } from "./variants.ts";
 * // withVariant("matmul", "texture", () => matmul(a, b));
 * ```
 */
export function withVariant<T>(family: string, name: string, fn: () => T): T {
  const prev = overrides.get(family) ?? null;
  setVariantOverride(family, name);
  const restore = () => setVariantOverride(family, prev);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    restore();
    throw e;
  }
  if (result instanceof Promise) {
    return result.finally(restore) as T;
  }
  restore();
  return result;
}
