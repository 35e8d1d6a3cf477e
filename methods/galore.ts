/**
 * GaLore, Gradient Low-Rank Projection (Zhao et al., 2024), as the official `galore_torch`
 * GaLoreAdamW implements it.
 *
 * The targeted Linear weights W [m, n] = [dOut, dIn] train in full (with their biases and the task
 * head); only the optimizer changes. Every T (`updateProjGap`) updates of a weight, counted from
 * its first, the projector P is refreshed from the SVD of the current gradient G: with projType
 * "std", P = the top-r right singular vectors [n, r] when m ≥ n ("right"), else the top-r left
 * ones [m, r] ("left") — always the smaller side, so the projected gradient R has r·max(m, n)
 * entries. Then, in GaloreAdamW's order:
 *   R = G·P (right) or Pᵀ·G (left)
 *   m ← β₁m + (1−β₁)R,  v ← β₂v + (1−β₂)R²,  N = m / (√v + ε)
 *   W ← W − lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · α · (N·Pᵀ or P·N)     (α = `scale`)
 *   W ← W − lr·λ·W                                      (decoupled decay, after the update)
 * Moments persist across refreshes (the official code does not reset or re-project them).
 * Parameters that are not projected (biases, the head) use the engine's AdamW (torch semantics:
 * ε added to √v̂, decay first); the official code runs them through the same GaloreAdamW, whose
 * ε placement differs only at the scale of ε. Gradient clipping (maxGradNorm) scales every
 * gradient by the global clip coefficient before either update, as HF's Trainer clips before
 * `optimizer.step()`.
 *
 * Deviations, chosen deliberately: the official code uses a full SVD; here `svd: "auto"` uses the
 * exact one-sided Jacobi SVD when min(m, n) ≤ 256 or r ≥ min(m, n)/2, and a randomized SVD (10
 * oversampled columns, 2 power iterations, seeded by (seed, parameter, refresh)) otherwise — the
 * top-r subspace is all GaLore uses. A rank above min(m, n) is clamped to min(m, n) with a warning
 * (the official code would fail in the slicing's shapes).
 *
 * Memory accounting: the projectors count as optimizer state (the paper's accounting), so a
 * projected matrix holds 2·r·max(m, n) + r·min(m, n) floats in category "optimizer" (std).
 *
 * Saved format (no PEFT equivalent): a folder with
 *   - `galore_config.json`: `{ "method": "galore", "rank", "update_proj_gap", "scale",
 *     "proj_type", "base_model", "target_modules", "modules_to_save", "tensors": [names] }`
 *   - `galore_model.safetensors`: every trained tensor (targeted weights and biases, the head) in
 *     F32 under the model's own Hugging Face names.
 * `merge()` is a no-op: the trained weights are the model's own.
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import {
  AdamW,
  type AdamWOptions,
  cast,
  GradClipper,
  map,
  matmul,
  noGrad,
  type Optimizer,
  type OptimizerState,
  type ParamGroup,
  randomizedSvd,
  rt,
  type Schedule,
  scope,
  slice,
  svd,
  type Tensor,
  transpose,
  withCategory,
  zeroGrad,
  zeros,
} from "../ops/mod.ts";
import { allLinears, Linear, type Module } from "../models/module.ts";
import { openSafetensors, writeSafetensors } from "../models/safetensors.ts";
import { buildGroups } from "./groups.ts";
import { adaptableLinears, trainHead } from "./lora.ts";
import { toEntries, writeInto, writeTextAtomic } from "./peft.ts";
import type { Adapter, ConfigSchema, Method, MethodContext } from "./types.ts";

/** Which side a projector spans: "std" picks the smaller side of each matrix. */
export type ProjType = "std" | "reverse_std" | "left" | "right";

/** GaLore's options, with the official defaults (rank 128, T = 200, α = 0.25). */
export const GaloreConfigSchema: ConfigSchema<GaloreConfig> = z.object({
  /** r: rank of the gradient projection (clamped to min(dOut, dIn)). */
  rank: z.number().int().positive().default(128),
  /** T: updates between projector refreshes. */
  updateProjGap: z.number().int().positive().default(200),
  /** α: the projected-back update is multiplied by this. */
  scale: z.number().positive().default(0.25),
  /** Which side the projector spans (see {@link ProjType}). */
  projType: z.enum(["std", "reverse_std", "left", "right"]).default("std"),
  /** How the projector's SVD is computed (see the module notes). */
  svd: z.enum(["auto", "exact", "randomized"]).default("auto"),
}).strict();

/** Parsed GaLore options. */
export interface GaloreConfig {
  /** r: rank of the gradient projection (clamped to min(dOut, dIn)); default 128. */
  rank: number;
  /** T: updates between projector refreshes; default 200. */
  updateProjGap: number;
  /** α: the projected-back update is multiplied by this; default 0.25. */
  scale: number;
  /** Which side the projector spans (see {@link ProjType}); default "std". */
  projType: ProjType;
  /** How the projector's SVD is computed (see the module notes); default "auto". */
  svd: "auto" | "exact" | "randomized";
}

/** The config file GaLore writes next to its weights. */
export const GALORE_CONFIG = "galore_config.json";
/** The weights file GaLore writes. */
export const GALORE_WEIGHTS = "galore_model.safetensors";

/** The side of W [m, n] the projector spans for a projection type. */
export function projectorSide(m: number, n: number, projType: ProjType): "left" | "right" {
  if (projType === "left" || projType === "right") return projType;
  const right = m >= n;
  return (projType === "std") === right ? "right" : "left";
}

/** Settings of the projected update shared by every projected matrix. */
export interface GaloreSettings {
  /** T: updates of a matrix between projector refreshes. */
  updateProjGap: number;
  /** α: multiplies the projected-back update. */
  scale: number;
  /** Which side each projector spans. */
  projType: ProjType;
  /** Exact, randomized, or chosen by size (see the module notes). */
  svd: GaloreConfig["svd"];
  /** Seeds the randomized SVD's test matrices. */
  seed: number;
}

interface ProjectedState {
  /** Updates taken (the bias-correction step; refresh when a multiple of T). */
  step: number;
  side: "left" | "right";
  rank: number;
  /** [n, r] (right) or [m, r] (left). */
  projector: Tensor;
  /** [m, r] (right) or [r, n] (left). */
  expAvg: Tensor;
  expAvgSq: Tensor;
}

interface ResolvedGroup {
  params: Tensor[];
  lr: number;
  weightDecay: number;
  betas: [number, number];
  eps: number;
}

/**
 * AdamW with GaLore's projected update for the matrices in `ranks` (parameter → rank) and the
 * engine's AdamW for every other parameter of `groups`.
 *
 * @example
 * ```ts
 * import { init, tensor } from "../ops/mod.ts";
 * import { GaLoreAdamW } from "./galore.ts";
 * await init();
 * const w = tensor([[1, 2, 3], [4, 5, 6]], { requiresGrad: true, category: "trainable" }).keep();
 * const opt = new GaLoreAdamW([{ params: [w], lr: 0.01, weightDecay: 0 }], {}, new Map([[w, 1]]), {
 *   updateProjGap: 200, scale: 0.25, projType: "std", svd: "auto", seed: 0,
 * });
 * ```
 */
export class GaLoreAdamW implements Optimizer {
  readonly #groups: ResolvedGroup[];
  readonly #schedule: Schedule;
  readonly #inner: AdamW;
  readonly #ranks: Map<Tensor, number>;
  readonly #settings: GaloreSettings;
  #clipper: GradClipper | null;
  #state = new Map<Tensor, ProjectedState>();
  #step = 0;

  /** Validate the projected matrices (2-D, f32, each in a group) and set up the inner AdamW. */
  constructor(
    groups: readonly ParamGroup[],
    options: AdamWOptions,
    ranks: Map<Tensor, number>,
    settings: GaloreSettings,
  ) {
    if (!(settings.updateProjGap >= 1 && Number.isInteger(settings.updateProjGap))) {
      throw new Error(
        `GaLore updateProjGap: expected an integer ≥ 1, got ${settings.updateProjGap}`,
      );
    }
    this.#groups = groups.map((g) => ({
      params: [...g.params],
      lr: g.lr,
      weightDecay: g.weightDecay,
      betas: g.betas ?? [0.9, 0.999],
      eps: g.eps ?? 1e-8,
    }));
    const all = new Set(this.#groups.flatMap((g) => g.params));
    for (const [p, r] of ranks) {
      const what = p.name ?? String(p);
      if (!all.has(p)) throw new Error(`GaLore: projected matrix ${what} is in no parameter group`);
      if (p.rank !== 2) throw new Error(`GaLore: ${what} must be a 2-D weight, got [${p.shape}]`);
      if (!(Number.isInteger(r) && r >= 1 && r <= Math.min(...p.shape))) {
        throw new Error(`GaLore: rank of ${what} must be in 1…${Math.min(...p.shape)}, got ${r}`);
      }
    }
    this.#ranks = ranks;
    this.#settings = settings;
    this.#schedule = options.schedule ?? (() => 1);
    const maxNorm = options.maxGradNorm;
    this.#clipper = maxNorm === undefined ? null : new GradClipper(maxNorm);
    this.#inner = new AdamW(
      this.#groups.map((g) => ({ ...g, params: g.params.filter((p) => !ranks.has(p)) })),
      { schedule: this.#schedule },
    );
  }

  /** Every parameter, in group order. */
  get params(): Tensor[] {
    return this.#groups.flatMap((g) => g.params);
  }

  /** Optimizer steps taken so far. */
  get stepCount(): number {
    return this.#step;
  }

  /** The learning rate of group `group` at the next step (base lr × schedule). */
  lr(group = 0): number {
    const g = this.#groups[group];
    if (!g) throw new Error(`GaLore: no param group ${group} (${this.#groups.length} groups)`);
    return g.lr * this.#schedule(this.#step);
  }

  /** The projector of a projected matrix ([n, r] right or [m, r] left), once it has one. */
  projector(param: Tensor): Tensor | null {
    return this.#state.get(param)?.projector ?? null;
  }

  /** Bytes of optimizer state on the GPU: moments of R, projectors, the inner AdamW's moments. */
  get stateBytes(): number {
    let n = this.#inner.stateBytes;
    for (const s of this.#state.values()) {
      n += s.projector.bytes + s.expAvg.bytes + s.expAvgSq.bytes;
    }
    return n;
  }

  /** One update of every parameter with a gradient (projected ones as GaLore, others AdamW). */
  step(): void {
    const multiplier = this.#schedule(this.#step);
    if (!Number.isFinite(multiplier) || multiplier < 0) {
      throw new Error(`GaLore schedule returned ${multiplier} at step ${this.#step}`);
    }
    noGrad(() => {
      if (this.#clipper) {
        this.#clipper.measure(this.params);
        this.#clipper.scaleGrads(this.params);
      }
      for (const group of this.#groups) {
        for (const p of group.params) {
          if (p.grad && this.#ranks.has(p)) this.#update(p, p.grad, group, group.lr * multiplier);
        }
      }
      this.#inner.step();
    });
    this.#step++;
  }

  #update(p: Tensor, grad: Tensor, group: ResolvedGroup, lr: number): void {
    const [m, n] = p.shape;
    if (grad.shape.join() !== p.shape.join()) {
      throw new Error(
        `GaLore: gradient of ${p.name ?? p} has shape [${grad.shape}], expected [${p.shape}]`,
      );
    }
    let s = this.#state.get(p);
    if (!s) {
      const rank = this.#ranks.get(p)!;
      const side = projectorSide(m, n, this.#settings.projType);
      const momentShape = side === "right" ? [m, rank] : [rank, n];
      s = {
        step: 0,
        side,
        rank,
        projector: zeros(side === "right" ? [n, rank] : [m, rank], { category: "optimizer" })
          .keep(),
        expAvg: zeros(momentShape, { category: "optimizer" }).keep(),
        expAvgSq: zeros(momentShape, { category: "optimizer" }).keep(),
      };
      this.#state.set(p, s);
    }
    const st = s;
    if (st.step % this.#settings.updateProjGap === 0) this.#refresh(p, grad, st);
    const [beta1, beta2] = group.betas;
    st.step++;
    const bc1 = 1 - beta1 ** st.step, bc2 = 1 - beta2 ** st.step;
    withCategory("scratch", () =>
      scope(() => {
        const proj = st.projector;
        const r = st.side === "right" ? matmul(grad, proj) : matmul(transpose(proj), grad);
        map([st.expAvg, r], "a + s_c * (b - a)", { out: st.expAvg, scalars: { c: 1 - beta1 } });
        map([st.expAvgSq, r], "a * s_b + s_c * b * b", {
          out: st.expAvgSq,
          scalars: { b: beta2, c: 1 - beta2 },
        });
        const normalized = map([st.expAvg, st.expAvgSq], "a / (sqrt(b) + s_eps)", {
          scalars: { eps: group.eps },
        });
        const back = st.side === "right"
          ? matmul(normalized, transpose(proj))
          : matmul(proj, normalized);
        map([p, back], "(a - s_step * b) * s_decay", {
          out: p,
          scalars: {
            step: (lr * Math.sqrt(bc2) / bc1) * this.#settings.scale,
            decay: 1 - lr * group.weightDecay,
          },
        });
      }));
  }

  /** P ← the top-r singular vectors of G on the projector's side. */
  #refresh(p: Tensor, grad: Tensor, st: ProjectedState): void {
    const [m, n] = p.shape;
    const exact = this.#settings.svd === "exact" ||
      (this.#settings.svd === "auto" && (Math.min(m, n) <= 256 || 2 * st.rank >= Math.min(m, n)));
    withCategory("scratch", () =>
      scope(() => {
        const index = this.params.indexOf(p);
        const f = exact ? svd(grad) : randomizedSvd(grad, st.rank, {
          seed: this.#settings.seed * 1_000_003 + index * 7919 + st.step,
        });
        const vectors = st.side === "right" ? f.v : f.u;
        map([slice(vectors, 1, 0, st.rank)], "a", { out: st.projector });
      }));
  }

  /** Drop (or zero) every parameter's gradient. */
  zeroGrad(): void {
    zeroGrad(this.params);
  }

  /** Free a parameter's state (its moments and projector); its next update starts afresh. */
  releaseState(param: Tensor): void {
    const s = this.#state.get(param);
    if (!s) {
      this.#inner.releaseState(param);
      return;
    }
    for (const t of [s.projector, s.expAvg, s.expAvgSq]) t.dispose();
    this.#state.delete(param);
  }

  /** The whole state as metadata + arrays: inner AdamW, and per projected matrix m, v and P. */
  async saveState(): Promise<OptimizerState> {
    const inner = await this.#inner.saveState();
    const arrays: Record<string, Float32Array> = {};
    for (const [k, v] of Object.entries(inner.arrays)) arrays[`adamw.${k}`] = v;
    const params = this.params;
    const projected = await Promise.all(params.map(async (p, i) => {
      const s = this.#state.get(p);
      if (!s) return null;
      const [expAvg, expAvgSq, projector] = await Promise.all([
        s.expAvg.read(),
        s.expAvgSq.read(),
        s.projector.read(),
      ]);
      arrays[`galore.${i}.exp_avg`] = expAvg as Float32Array;
      arrays[`galore.${i}.exp_avg_sq`] = expAvgSq as Float32Array;
      arrays[`galore.${i}.projector`] = projector as Float32Array;
      return { name: p.name, step: s.step, side: s.side, rank: s.rank };
    }));
    return {
      meta: {
        type: "galore_adamw",
        step: this.#step,
        groups: this.#groups.map((g) => ({
          lr: g.lr,
          weightDecay: g.weightDecay,
          betas: g.betas,
          eps: g.eps,
        })),
        adamw: inner.meta,
        projected,
      },
      arrays,
    };
  }

  /** Restore a state from {@link saveState} (the same parameters in the same order). */
  loadState(state: OptimizerState): void {
    const meta = state.meta as {
      type?: string;
      step: number;
      groups: { lr: number; weightDecay: number; betas: [number, number]; eps: number }[];
      adamw: unknown;
      projected: ({ name?: string; step: number; side: "left" | "right"; rank: number } | null)[];
    };
    if (meta?.type !== "galore_adamw") {
      throw new Error(`optimizer state is not GaLore's (type ${meta?.type})`);
    }
    const params = this.params;
    if (!Array.isArray(meta.projected) || meta.projected.length !== params.length) {
      throw new Error(
        `GaLore state: ${meta.projected?.length} parameters, this optimizer has ${params.length}`,
      );
    }
    if (meta.groups.length !== this.#groups.length) {
      throw new Error(
        `GaLore state: ${meta.groups.length} param groups, this optimizer has ${this.#groups.length}`,
      );
    }
    const inner: Record<string, Float32Array> = {};
    for (const [k, v] of Object.entries(state.arrays)) {
      if (k.startsWith("adamw.")) inner[k.slice(6)] = v;
    }
    this.#inner.loadState({ meta: meta.adamw, arrays: inner });
    meta.groups.forEach((g, i) => Object.assign(this.#groups[i], g));
    for (const p of [...this.#state.keys()]) this.releaseState(p);
    meta.projected.forEach((s, i) => {
      if (!s) return;
      const p = params[i];
      const what = `GaLore state parameter ${i}${s.name ? ` (${s.name})` : ""}`;
      if (!this.#ranks.has(p)) throw new Error(`${what}: this optimizer does not project it`);
      if (s.rank !== this.#ranks.get(p)) {
        throw new Error(`${what}: rank ${s.rank}, this optimizer uses ${this.#ranks.get(p)}`);
      }
      const [m, n] = p.shape;
      const momentShape = s.side === "right" ? [m, s.rank] : [s.rank, n];
      const projShape = s.side === "right" ? [n, s.rank] : [m, s.rank];
      const make = (key: string, shape: number[]) => {
        const a = state.arrays[`galore.${i}.${key}`];
        const size = shape[0] * shape[1];
        if (!a || a.length !== size) {
          throw new Error(`${what}: ${key} needs ${size} values, got ${a?.length ?? "none"}`);
        }
        const t = zeros(shape, { category: "optimizer" }).keep();
        rt().write(t.buffer, t.offset * 4, a);
        return t;
      };
      this.#state.set(p, {
        step: s.step,
        side: s.side,
        rank: s.rank,
        projector: make("projector", projShape),
        expAvg: make("exp_avg", momentShape),
        expAvgSq: make("exp_avg_sq", momentShape),
      });
    });
    this.#step = meta.step;
  }

  /** Free every state tensor and the clipping buffers. */
  dispose(): void {
    for (const p of [...this.#state.keys()]) this.releaseState(p);
    this.#inner.dispose();
    this.#clipper?.dispose();
    this.#clipper = null;
  }
}

/** GaLore's adapter: an {@link Adapter} that also exposes the projected matrices' ranks. */
export interface GaloreAdapter extends Adapter {
  /** Rank used per projected weight (after clamping), by parameter name. */
  readonly ranks: Map<string, number>;
}

/** Apply GaLore to the targeted Linear layers of `model`. */
export function applyGalore(
  model: Module,
  config: GaloreConfig,
  ctx: MethodContext,
): GaloreAdapter {
  const targets = adaptableLinears(model, ctx);
  if (targets.length === 0) {
    throw new Error(
      `GaLore: no Linear module matches targets [${ctx.targets.join(", ")}]; Linear modules here ` +
        `end in ${[...new Set(allLinears(model).map(([n]) => n.split(".").pop()))].join(", ")}`,
    );
  }
  model.setRequiresGrad(false);
  const head = trainHead(model, ctx);
  const weights: [string, Tensor][] = [];
  const biases: [string, Tensor][] = [];
  const ranks = new Map<string, number>();
  const clamped: string[] = [];
  for (const [name, layer] of targets) {
    if (!(layer instanceof Linear)) {
      throw new Error(`GaLore: ${name} is already adapted; GaLore trains a plain Linear`);
    }
    for (const key of ["weight", "bias"] as const) {
      const t = key === "weight" ? layer.weight : layer.bias;
      if (!t) continue;
      // Trained tensors are f32 even when the frozen model is stored as f16.
      const f32 = t.dtype === "f32" ? t : noGrad(() => cast(t, "f32"));
      if (f32 !== t) layer.setParameter(key, f32);
      f32.requiresGrad = true;
      f32.setCategory("trainable");
      (key === "weight" ? weights : biases).push([`${name}.${key}`, f32]);
    }
    const limit = Math.min(layer.outFeatures, layer.inFeatures);
    if (config.rank > limit) clamped.push(`${name} [${layer.outFeatures}, ${layer.inFeatures}]`);
    ranks.set(`${name}.weight`, Math.min(config.rank, limit));
  }
  if (clamped.length) {
    console.warn(
      `GaLore: rank ${config.rank} exceeds min(dOut, dIn) of ${clamped.length} matrices ` +
        `(${clamped.slice(0, 3).join(", ")}${
          clamped.length > 3 ? ", …" : ""
        }); using min(dOut, dIn) there`,
    );
  }
  const trained = (): [string, Tensor][] => [...weights, ...biases, ...head];
  return {
    method: "galore",
    ranks,
    groups: () => [
      ...buildGroups("galore", [...weights, ...biases], ctx.lrMultipliers, ctx.weightDecay),
      ...buildGroups("head", head, {}, ctx.weightDecay),
    ],
    createOptimizer: (groups, options) =>
      new GaLoreAdamW(groups, options, new Map(weights.map(([n, t]) => [t, ranks.get(n)!])), {
        updateProjGap: config.updateProjGap,
        scale: config.scale,
        projType: config.projType,
        svd: config.svd,
        seed: ctx.seed,
      }),
    merge: () => {},
    save: async (dir) => {
      await Deno.mkdir(dir, { recursive: true });
      await writeSafetensors(join(dir, GALORE_WEIGHTS), await toEntries(trained()), {
        format: "pt",
      });
      await writeTextAtomic(
        join(dir, GALORE_CONFIG),
        JSON.stringify(
          {
            method: "galore",
            rank: config.rank,
            update_proj_gap: config.updateProjGap,
            scale: config.scale,
            proj_type: config.projType,
            base_model: ctx.baseModel,
            target_modules: ctx.targets,
            modules_to_save: ctx.headModules,
            tensors: trained().map(([n]) => n),
          },
          null,
          2,
        ) + "\n",
      );
    },
    load: async (dir) => {
      const file = join(dir, GALORE_WEIGHTS);
      const reader = await openSafetensors(file);
      try {
        for (const [name, t] of trained()) {
          if (!reader.has(name)) throw new Error(`${file}: missing tensor ${name}`);
          const shape = reader.info(name).shape;
          if (shape.join() !== t.shape.join()) {
            throw new Error(
              `${file}: ${name} has shape [${shape}], the model expects [${t.shape}]`,
            );
          }
          writeInto(t, await reader.readF32(name));
        }
      } finally {
        reader.close();
      }
    },
  };
}

/** GaLore as a registry entry. */
export const galore: Method<GaloreConfig> = {
  name: "galore",
  config: GaloreConfigSchema,
  apply: (model, config, ctx) => applyGalore(model, config, ctx),
};
