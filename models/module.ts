/**
 * A module tree with Hugging Face names.
 *
 * Every module has named children and named parameters, so the full name of a weight is the
 * Hugging Face key (`roberta.encoder.layer.3.attention.self.value.weight`). The method catalogue
 * finds Linear layers by full name or suffix and swaps them for adapted ones with
 * {@link Module.setModule}.
 *
 * @module
 */
import { linear, type Tensor } from "../ops/mod.ts";

/** Anything with a forward over one tensor (Linear and the adapted layers that replace it). */
export interface LinearLike extends Module {
  /** dIn: size of the last axis of the input. */
  readonly inFeatures: number;
  /** dOut: size of the last axis of the output. */
  readonly outFeatures: number;
  /** Map x [..., dIn] to [..., dOut]. */
  forward(x: Tensor): Tensor;
}

/** A node of the module tree. */
export class Module {
  readonly #children = new Map<string, Module>();
  readonly #params = new Map<string, Tensor | null>();

  /** Register (or replace) a child module under `name`. */
  protected addModule<M extends Module>(name: string, m: M): M {
    this.#children.set(name, m);
    return m;
  }

  /** Register a parameter (null for an optional parameter that is absent, e.g. no bias). */
  protected addParameter(name: string, t: Tensor | null): Tensor | null {
    this.#params.set(name, t);
    if (t) t.keep();
    return t;
  }

  /** The parameter registered as `name` on this module. */
  protected param(name: string): Tensor {
    const t = this.#params.get(name);
    if (!t) throw new Error(`${this.constructor.name} has no parameter ${name}`);
    return t;
  }

  /** Replace a local parameter tensor (loading weights, merging adapters). */
  setParameter(name: string, t: Tensor): void {
    if (!this.#params.has(name)) {
      throw new Error(`${this.constructor.name} has no parameter ${name}`);
    }
    const old = this.#params.get(name);
    if (old && old !== t) old.dispose();
    this.#params.set(name, t.keep());
  }

  /** Direct children, in registration order. */
  children(): [string, Module][] {
    return [...this.#children];
  }

  /** Every module below (and including) this one, with dotted names relative to it. */
  namedModules(prefix = ""): [string, Module][] {
    const out: [string, Module][] = [[prefix, this]];
    for (const [n, m] of this.#children) {
      out.push(...m.namedModules(prefix ? `${prefix}.${n}` : n));
    }
    return out;
  }

  /** Every parameter below this module with its full dotted name. */
  namedParameters(prefix = ""): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [n, t] of this.#params) if (t) out.push([prefix ? `${prefix}.${n}` : n, t]);
    for (const [n, m] of this.#children) {
      out.push(...m.namedParameters(prefix ? `${prefix}.${n}` : n));
    }
    return out;
  }

  /** The module at a dotted path below this one. */
  getModule(path: string): Module {
    return path.split(".").reduce<Module>((m, part) => {
      const next = m.#children.get(part);
      if (!next) throw new Error(`no module named ${path} (missing part "${part}")`);
      return next;
    }, this);
  }

  /** Replace the module at a dotted path. */
  setModule(path: string, replacement: Module): void {
    const parts = path.split(".");
    const last = parts.pop()!;
    const parent = parts.length ? this.getModule(parts.join(".")) : this;
    if (!parent.#children.has(last)) throw new Error(`no module named ${path}`);
    parent.#children.set(last, replacement);
  }

  /** Set every parameter's requiresGrad (true: trainable). */
  setRequiresGrad(requiresGrad: boolean): void {
    for (const [, t] of this.namedParameters()) t.requiresGrad = requiresGrad;
  }

  /** Dispose every parameter (and gradient) of this subtree. */
  dispose(): void {
    for (const [, t] of this.namedParameters()) t.dispose();
  }
}

/** A Hugging Face nn.Linear: y = x·Wᵀ + b with weight [dOut, dIn]. */
export class Linear extends Module implements LinearLike {
  /** dIn, from the weight's shape. */
  readonly inFeatures: number;
  /** dOut, from the weight's shape. */
  readonly outFeatures: number;

  /** Wrap `weight` [dOut, dIn] and `bias` [dOut] (or null); throws on other shapes. */
  constructor(weight: Tensor, bias: Tensor | null) {
    super();
    if (weight.rank !== 2) throw new Error(`Linear weight must be 2-D, got [${weight.shape}]`);
    this.outFeatures = weight.shape[0];
    this.inFeatures = weight.shape[1];
    if (bias && (bias.rank !== 1 || bias.shape[0] !== this.outFeatures)) {
      throw new Error(`Linear bias must be [${this.outFeatures}], got [${bias.shape}]`);
    }
    this.addParameter("weight", weight);
    this.addParameter("bias", bias);
  }

  /** The weight [dOut, dIn]. */
  get weight(): Tensor {
    return this.param("weight");
  }

  /** The bias [dOut], or null. */
  get bias(): Tensor | null {
    return this.namedParameters().find(([n]) => n === "bias")?.[1] ?? null;
  }

  /** x·Wᵀ + b. */
  forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias ?? undefined);
  }
}

/** A module holding only parameters (embeddings, norms) under given names. */
export class ParamModule extends Module {
  /** Register each entry as a parameter of that name (null: a declared but absent parameter). */
  constructor(params: Record<string, Tensor | null>) {
    super();
    for (const [n, t] of Object.entries(params)) this.addParameter(n, t);
  }

  /** A parameter by name. */
  get(name: string): Tensor {
    return this.param(name);
  }

  /** A parameter by name, or null when absent. */
  maybe(name: string): Tensor | null {
    return this.namedParameters().find(([n]) => n === name)?.[1] ?? null;
  }
}

/** A container of children only (e.g. `encoder`, `layer`, `mlp`). */
export class Container extends Module {
  /** Add a child. */
  add<M extends Module>(name: string, m: M): M {
    return this.addModule(name, m);
  }

  /** A child by name, typed by the caller. */
  child<M extends Module>(name: string): M {
    return this.getModule(name) as M;
  }
}

/**
 * Does module name `name` match `target`? A target matches the full name, a dotted suffix
 * (`attention.self.value`), or the last component (`value`, `q_proj`) as PEFT's target_modules do.
 */
export function matchesTarget(name: string, target: string): boolean {
  return name === target || name.endsWith(`.${target}`);
}

/** Every Linear-like module below `root` (adapted layers count; their inner base does not). */
export function allLinears(root: Module): [string, LinearLike][] {
  const out: [string, LinearLike][] = [];
  const visit = (m: Module, name: string) => {
    if ("inFeatures" in m && "forward" in m) {
      out.push([name, m as LinearLike]);
      return;
    }
    for (const [n, c] of m.children()) visit(c, name ? `${name}.${n}` : n);
  };
  visit(root, "");
  return out;
}

/** All Linear-like modules whose names match any of `targets`, in tree order. */
export function findLinears(root: Module, targets: readonly string[]): [string, LinearLike][] {
  return allLinears(root).filter(([name]) => targets.some((t) => matchesTarget(name, t)));
}
