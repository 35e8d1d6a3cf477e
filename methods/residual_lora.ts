/**
 * Residual-base LoRA: the machinery PiSSA, OLoRA and LoRA-GA share.
 *
 * Each of them is LoRA whose A₀ [r, dIn] and B₀ [dOut, r] come from a decomposition (of W, or of
 * W's gradient) instead of LoRA's random/zero start, and whose frozen base becomes the residual
 *   W_res = W − s·B₀·A₀,
 * so the adapted model starts exactly equal to the base model. Training then updates A and B as in
 * LoRA: y = x·W_resᵀ + b + s·x·Aᵀ·Bᵀ.
 *
 * Because W_res ≠ W, trained A and B only mean something on top of the residual. As Hugging Face
 * PEFT does with `save_pretrained(path_initial_model_for_weight_conversion=…)`, the update can be
 * rewritten for the ORIGINAL weights:
 *   ΔW = s·(B·A − B₀·A₀) = s·[B | −B₀]·[A ; A₀],
 * a plain LoRA of rank 2r with α' = 2α (α' = √2·α with rsLoRA), so the scaling is unchanged.
 *
 * Folder layout written by `save(dir)`:
 *   dir/adapter_config.json, adapter_model.safetensors — the residual-base adapter in PEFT's format
 *       (peft_type LORA, init_lora_weights "pissa" / "pissa_niter_K" / "olora" / "lora_ga"; trained
 *       lora_A/lora_B and the task head). PEFT re-runs the decomposition on load, as `apply` does.
 *   dir/initial/ — A₀ and B₀ as a plain PEFT LoRA (init_lora_weights true, no head): exactly what
 *       PEFT's `path_initial_model_for_weight_conversion` points at. `load` uses it to rebuild W_res
 *       when the start is not reproducible from W alone (LoRA-GA, randomized SVD).
 *   dir/lora/ — the converted rank-2r plain LoRA (with the task head), to apply to the original
 *       base model with any LoRA loader. PEFT's conversion drops modules_to_save; we keep the head,
 *       since a sequence classifier without it is not the fine-tuned model.
 *
 * @module
 */
import { join } from "node:path";
import {
  add,
  assign,
  cast,
  concat,
  contiguous,
  matmul,
  mul,
  neg,
  noGrad,
  scope,
  type Tensor,
  tensor,
  zeros,
} from "../ops/mod.ts";
import { Linear, type Module } from "../models/module.ts";
import { buildGroups } from "./groups.ts";
import {
  type LoraConfig,
  LoraLinear,
  loraPeftConfig,
  loraScaling,
  mergeLowRank,
  targetedLinears,
  trainHead,
  usesModuleOptions,
} from "./lora.ts";
import { type AdapterFiles, loadInto, readAdapter, writeAdapter } from "./peft.ts";
import type { Adapter, MethodContext } from "./types.ts";

/** Subfolder of a saved adapter holding A₀, B₀ (PEFT's initial adapter for weight conversion). */
export const INITIAL_SUBDIR = "initial";
/** Subfolder of a saved adapter holding the rank-2r plain LoRA for the original base weights. */
export const CONVERTED_SUBDIR = "lora";

/** A decomposition start of one layer: A₀ [r, dIn] and B₀ [dOut, r], f32. */
export interface LowRankStart {
  /** A₀ [r, dIn]. */
  a: Tensor;
  /** B₀ [dOut, r]. */
  b: Tensor;
}

/** What distinguishes one residual-base method from another when saved. */
export interface ResidualSpec {
  /** Registry name (also the label of its parameter group). */
  method: string;
  /** PEFT's init_lora_weights for adapter_config.json. */
  peftInit: string;
  /** More adapter_config.json fields (e.g. lora_ga_config). */
  peftExtra?: Record<string, unknown>;
  /** Directions the start takes per rank (LoRA-GA splits 2r of them between A and B); 1 if unset. */
  directionsPerRank?: number;
}

/**
 * LoRA layers installed on the targeted Linears with A = B = 0 (the base model's function), and
 * the operations the residual-base methods build on: start from a decomposition, save with the
 * initial and converted adapters, load, merge.
 */
export class ResidualLora {
  /** The adapted layers by full module name. */
  readonly layers: [string, LoraLinear][];
  /** The head's parameters (trained whole, saved as modules_to_save). */
  readonly head: [string, Tensor][];
  /** The LoRA scaling s (α/r, or α/√r with rsLoRA). */
  readonly scaling: number;
  /** A₀, B₀ per layer (frozen copies, category "weights"); null until started. */
  #initial: (LowRankStart | null)[];

  /**
   * Install zero-initialised LoRA layers on `model`'s targeted Linears (the model is modified in
   * place; everything but the head becomes frozen). Errors name the module when a target does not
   * fit the rank, before anything changes.
   */
  constructor(
    readonly model: Module,
    readonly config: LoraConfig,
    readonly ctx: MethodContext,
    readonly spec: ResidualSpec,
  ) {
    const perModule = usesModuleOptions(config);
    if (perModule) {
      // The residual start and its rank-2r conversion assume one r and one α for every module.
      throw new Error(`${spec.method}: ${perModule} is not supported for a residual start`);
    }
    const targets = targetedLinears(model, ctx, spec.method);
    const needed = (spec.directionsPerRank ?? 1) * config.r;
    for (const [name, base] of targets) {
      if (!(base instanceof Linear)) {
        throw new Error(
          `${spec.method}: ${name} is already adapted (${base.constructor.name}); a residual ` +
            "start needs the plain Linear weight",
        );
      }
      const k = Math.min(base.inFeatures, base.outFeatures);
      if (needed > k) {
        throw new Error(
          `${spec.method}: rank r = ${config.r} needs ${needed} directions of ${name} ` +
            `[${base.outFeatures}, ${base.inFeatures}], which has only ${k}; lower r or leave ` +
            `${name} out of targets`,
        );
      }
    }
    model.setRequiresGrad(false);
    this.scaling = loraScaling(config);
    this.layers = targets.map(([name, base]) => {
      const a = zeros([config.r, base.inFeatures], { category: "trainable" });
      const b = zeros([base.outFeatures, config.r], { category: "trainable" });
      a.requiresGrad = b.requiresGrad = true;
      const layer = new LoraLinear(base, a, b, this.scaling, config.dropout);
      model.setModule(name, layer);
      return [name, layer];
    });
    this.#initial = this.layers.map(() => null);
    this.head = trainHead(model, ctx);
  }

  /** The frozen base Linear of layer `i` (W_res once started). */
  base(i: number): Linear {
    return this.layers[i][1].base as Linear;
  }

  /** True once every layer has its decomposition start. */
  get started(): boolean {
    return this.#initial.every((s) => s !== null);
  }

  /**
   * Start every layer from `decompose(name, W, i)`, where W is the layer's weight widened to f32
   * [dOut, dIn]: A ← A₀, B ← B₀, W ← W − s·B₀·A₀. Tensors `decompose` creates are freed.
   */
  start(decompose: (name: string, weight: Tensor, index: number) => LowRankStart): void {
    this.layers.forEach(([name], i) => {
      const w = this.base(i).weight;
      noGrad(() =>
        scope(() => {
          const s = decompose(name, w.dtype === "f32" ? w : cast(w, "f32"), i);
          const [dOut, dIn] = w.shape, r = this.config.r;
          if (s.a.shape.join() !== `${r},${dIn}` || s.b.shape.join() !== `${dOut},${r}`) {
            throw new Error(
              `${this.spec.method}: the start of ${name} has A [${s.a.shape}] and B ` +
                `[${s.b.shape}]; expected [${r}, ${dIn}] and [${dOut}, ${r}]`,
            );
          }
          this.#setStart(i, s.a, s.b);
        })
      );
    });
  }

  /** Make (a0, b0) layer i's start: A, B and the kept copies take their values, W shifts. */
  #setStart(i: number, a0: Tensor, b0: Tensor): void {
    const layer = this.layers[i][1];
    const w = this.base(i).weight;
    const previous = this.#initial[i];
    // From W_res = W − s·B₀'·A₀' to W − s·B₀·A₀ is adding s·(B₀'·A₀' − B₀·A₀), one matmul of rank
    // 2r, so a base that was already started is corrected without the original W.
    const removed = previous
      ? matmul(concat([previous.b, neg(b0)], 1), concat([previous.a, a0], 0))
      : neg(matmul(b0, a0));
    assign(w, add(w, mul(removed, this.scaling)));
    assign(layer.loraA, a0);
    assign(layer.loraB, b0);
    if (previous) {
      assign(previous.a, a0);
      assign(previous.b, b0);
    } else {
      const keep = (t: Tensor) => contiguous(t).keep().setCategory("weights");
      this.#initial[i] = { a: keep(a0), b: keep(b0) };
    }
  }

  /** Named trainable tensors of the LoRA layers, with PEFT's names. */
  loraParams(): [string, Tensor][] {
    return this.layers.flatMap(([n, l]) => [
      [`${n}.lora_A.weight`, l.loraA],
      [`${n}.lora_B.weight`, l.loraB],
    ]);
  }

  /** Write the residual-base adapter, its initial adapter and the rank-2r conversion. */
  async save(dir: string): Promise<void> {
    if (!this.started) {
      throw new Error(
        `${this.spec.method}: nothing to save before the decomposition start (run beforeTraining)`,
      );
    }
    const { config, ctx, spec } = this;
    await writeAdapter(
      dir,
      { ...loraPeftConfig(config, ctx, spec.peftInit), ...spec.peftExtra },
      [...this.loraParams(), ...this.head],
    );
    const initial = this.layers.flatMap(([n], i): [string, Tensor][] => {
      const s = this.#initial[i]!;
      return [[`${n}.lora_A.weight`, s.a], [`${n}.lora_B.weight`, s.b]];
    });
    await writeAdapter(
      join(dir, INITIAL_SUBDIR),
      loraPeftConfig(config, { ...ctx, headModules: [] }, true),
      initial,
    );
    const converted = noGrad(() =>
      this.layers.flatMap(([n, l], i): [string, Tensor][] => {
        const s = this.#initial[i]!;
        return [
          [`${n}.lora_A.weight`, concat([l.loraA, s.a], 0)],
          [`${n}.lora_B.weight`, scope(() => concat([l.loraB, neg(s.b)], 1))],
        ];
      })
    );
    try {
      await writeAdapter(
        join(dir, CONVERTED_SUBDIR),
        loraPeftConfig(
          { ...config, r: 2 * config.r, alpha: config.alpha * (config.rslora ? Math.SQRT2 : 2) },
          ctx,
          true,
        ),
        [...converted, ...this.head],
      );
    } finally {
      for (const [, t] of converted) t.dispose();
    }
  }

  /**
   * Load trained A, B and the head from `dir`. With `dir/initial` (our saves), W_res is rebuilt
   * from its A₀, B₀ where they differ from this model's start; without it (a PEFT folder), the
   * start must already be the same decomposition (`reproducible`), as PEFT itself assumes.
   */
  async load(dir: string, reproducible: boolean): Promise<void> {
    const files = await readAdapter(dir);
    const initialDir = join(dir, INITIAL_SUBDIR);
    const hasInitial = await Deno.stat(join(initialDir, "adapter_config.json")).then(
      () => true,
      () => false,
    );
    if (hasInitial) {
      await this.#loadInitial(await readAdapter(initialDir), initialDir);
    } else if (!reproducible || !this.started) {
      throw new Error(
        `${dir}: a ${this.spec.method} adapter needs ${INITIAL_SUBDIR}/ (A₀, B₀) to rebuild its ` +
          `residual base weights; apply the converted plain LoRA in ${dir}/${CONVERTED_SUBDIR} to ` +
          "the original model instead",
      );
    }
    for (const [name, t] of [...this.loraParams(), ...this.head]) loadInto(files, name, t);
  }

  async #loadInitial(files: AdapterFiles, dir: string): Promise<void> {
    for (const [i, [name]] of this.layers.entries()) {
      const a = files.tensors.get(`${name}.lora_A.weight`);
      const b = files.tensors.get(`${name}.lora_B.weight`);
      const [dOut, dIn] = this.base(i).weight.shape;
      const r = this.config.r;
      if (!a || !b || a.shape.join() !== `${r},${dIn}` || b.shape.join() !== `${dOut},${r}`) {
        throw new Error(
          `${dir}: expected ${name}.lora_A.weight [${r}, ${dIn}] and lora_B.weight [${dOut}, ${r}]`,
        );
      }
      const current = this.#initial[i];
      if (current) {
        const [ca, cb] = [await current.a.read(), await current.b.read()];
        if (ca.every((v, k) => v === a.data[k]) && cb.every((v, k) => v === b.data[k])) continue;
      }
      noGrad(() =>
        scope(() => this.#setStart(i, tensor(a.data, a.shape), tensor(b.data, b.shape)))
      );
    }
  }

  /** Fold s·B·A into W_res (giving the fine-tuned W) and put the plain Linears back. */
  merge(): void {
    mergeLowRank(this.model, this.layers);
    for (const s of this.#initial) {
      s?.a.dispose();
      s?.b.dispose();
    }
    this.#initial = this.layers.map(() => null);
  }

  /** The Adapter over these layers, with the method's own hooks. */
  adapter(
    extra: Pick<Adapter, "beforeTraining"> & { reproducible: boolean },
  ): Adapter {
    const { method } = this.spec;
    return {
      method,
      groups: () => [
        ...buildGroups(method, this.loraParams(), this.ctx.lrMultipliers, this.ctx.weightDecay),
        ...buildGroups("head", this.head, {}, this.ctx.weightDecay),
      ],
      ...(extra.beforeTraining ? { beforeTraining: extra.beforeTraining } : {}),
      merge: () => this.merge(),
      save: (dir) => this.save(dir),
      load: (dir) => this.load(dir, extra.reproducible),
    };
  }
}

/**
 * The registry entry and options of a PEFT LoRA config whose init_lora_weights names a residual
 * start ("pissa", "pissa_niter_K", "olora", "lora_ga"), or null for any other LoRA config.
 */
export function residualMethodFromPeft(
  config: Record<string, unknown>,
): { method: string; options: Record<string, unknown> } | null {
  const init = config.init_lora_weights;
  if (typeof init !== "string") return null;
  const options: Record<string, unknown> = {
    r: config.r,
    alpha: config.lora_alpha,
    dropout: config.lora_dropout ?? 0,
    rslora: config.use_rslora === true,
  };
  if (init.startsWith("pissa")) return { method: "pissa", options: { ...options, init } };
  if (init === "olora") return { method: "olora", options };
  if (init === "lora_ga") {
    const ga = (config.lora_ga_config ?? {}) as Record<string, unknown>;
    const defined = Object.entries({
      direction: ga.direction,
      scale: ga.scale,
      stableGamma: ga.stable_gamma,
    }).filter(([, v]) => v !== undefined);
    return { method: "loraga", options: { ...options, ...Object.fromEntries(defined) } };
  }
  return null;
}
