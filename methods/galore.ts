/**
 * GaLore, Gradient Low-Rank Projection (Zhao et al., 2024), as the official `galore_torch`
 * GaLoreAdamW and Hugging Face's `optim="galore_adamw"` train with it.
 *
 * GaLore is full-parameter training with a different optimizer: by default every parameter of
 * the model trains (embeddings, norms, biases, every Linear, the task head), as the official
 * run_glue.py and HF's Trainer put every parameter into the optimizer. The targeted Linear
 * weights W [m, n] = [dOut, dIn] are the projected group; every other parameter is GaLoreAdamW's
 * plain (unprojected) branch. Every T (`updateProjGap`) updates of a projected weight, counted from
 * its first, the projector P is refreshed from the SVD of the current gradient G: with projType
 * "std", P = the top-r right singular vectors [n, r] when m ≥ n ("right"), else the top-r left
 * ones [m, r] ("left") — always the smaller side, so the projected gradient R has r·max(m, n)
 * entries. Default targets are the reference recipes' (METHODS.md 2.12): every attention and
 * feed-forward matrix (query, key, value, intermediate.dense, output.dense — which also matches
 * attention.output.dense — on RoBERTa/BERT; every Linear of a LLaMA block).
 * Then, in GaLoreAdamW's order, for a projected weight (R = G·P or Pᵀ·G) and for any other
 * parameter (R = G, no projection, α = 1):
 *   m ← β₁m + (1−β₁)R,  v ← β₂v + (1−β₂)R²,  N = m / (√v + ε)
 *   W ← W − lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · α · (N·Pᵀ or P·N)     (α = `scale`)
 *   W ← W − lr·λ·W                                      (decoupled decay, after the update)
 * which differs from torch's AdamW in where ε enters (here it is added to √v before the bias
 * correction) and in decaying after the update. Moments persist across refreshes (the official
 * code does not reset or re-project them). Gradient clipping (maxGradNorm) scales every gradient
 * by the global clip coefficient first, as HF's Trainer clips before `optimizer.step()`.
 *
 * Deviations, chosen deliberately:
 * - Weight decay is the run's (biases and norm weights exempt, as everywhere here); HF's
 *   `galore_adamw` passes no weight decay to GaLoreAdamW (its groups carry none), so
 *   `--weight-decay 0` reproduces it. ε is the run's AdamW ε (1e-8, HF's `adam_epsilon`); the
 *   official run_glue.py keeps GaLoreAdamW's default 1e-6.
 * - Each projector column is sign-normalised (its largest-magnitude entry made positive). The
 *   moments carry over refreshes, so the trajectory depends on the signs the SVD returns; torch's
 *   are whatever LAPACK/cuSOLVER produce (CPU and GPU differ), ours are fixed by this rule.
 * - The official code uses a full SVD; here `svd: "auto"` uses the exact one-sided Jacobi SVD when
 *   min(m, n) ≤ 256 or r ≥ min(m, n)/2, and a randomized SVD (10 oversampled columns, 2 power
 *   iterations, seeded by (seed, parameter, refresh)) otherwise — the top-r subspace is all GaLore
 *   uses. A rank above min(m, n) is clamped to min(m, n) with a warning (the official code would
 *   fail in the slicing's shapes).
 * - `trainAll: false` trains only the targeted weights, their biases and the task head (the rest
 *   stays frozen), which costs less memory than the reference setting.
 *
 * Memory accounting: the projectors count as optimizer state (the paper's accounting), so a
 * projected matrix holds 2·r·max(m, n) + r·min(m, n) floats in category "optimizer" (std); every
 * other trained tensor holds its two moments there.
 *
 * Saved format (no PEFT equivalent): a folder with
 *   - `galore_config.json`: `{ "method": "galore", "rank", "update_proj_gap", "scale",
 *     "proj_type", "train_all", "base_model", "target_modules", "modules_to_save",
 *     "tensors": [names] }`
 *   - `galore_model.safetensors`: every trained tensor (with `trainAll`, every parameter of the
 *     model; otherwise the targeted weights and biases and the head) in F32 under the model's own
 *     Hugging Face names.
 * `merge()` is a no-op: the trained weights are the model's own.
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import {
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
import { Linear, type Module } from "../models/module.ts";
import { openSafetensors, writeSafetensors } from "../models/safetensors.ts";
import { buildGroups } from "./groups.ts";
import { signOfLargest } from "./signs.ts";
import { architectureOf, targetedLinears, trainHead } from "./lora.ts";
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
  /** Train every parameter (the reference); false: the targets, their biases and the head. */
  trainAll: z.boolean().default(true),
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
  /**
   * Train every parameter of the model, the projected weights with GaLore and the rest with
   * GaLoreAdamW's plain branch, as the official code and HF's galore_adamw do (default true);
   * false: only the targeted weights, their biases and the task head train.
   */
  trainAll: boolean;
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

/** Moments of one trained tensor, and its projector when it is a projected weight. */
interface ParamState {
  /** Updates taken (the bias-correction step; a projector refreshes when it is a multiple of T). */
  step: number;
  /** [m, r] (right), [r, n] (left), or the parameter's shape when not projected. */
  expAvg: Tensor;
  expAvgSq: Tensor;
  projection: Projection | null;
}

interface Projection {
  side: "left" | "right";
  rank: number;
  /** [n, r] (right) or [m, r] (left). */
  projector: Tensor;
}

interface ResolvedGroup {
  params: Tensor[];
  lr: number;
  weightDecay: number;
  betas: [number, number];
  eps: number;
}

/** What {@link GaLoreAdamW.saveState} records per parameter besides its arrays. */
interface SavedParam {
  name?: string;
  step: number;
  projection: { side: "left" | "right"; rank: number } | null;
}

/**
 * GaLoreAdamW: the projected update for the matrices in `ranks` (parameter → rank) and
 * GaLoreAdamW's plain branch for every other parameter of `groups` (see the module notes).
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
  readonly #ranks: Map<Tensor, number>;
  readonly #settings: GaloreSettings;
  #clipper: GradClipper | null;
  #state = new Map<Tensor, ParamState>();
  #step = 0;

  /** Validate the groups and the projected matrices (2-D, f32, each in a group). */
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
    if (groups.length === 0) throw new Error("GaLore: at least one parameter group is needed");
    this.#groups = groups.map((g, i) => {
      const where = `GaLore param group ${i}`;
      if (!(g.lr >= 0) || !Number.isFinite(g.lr)) {
        throw new Error(`${where}: lr must be a finite number ≥ 0, got ${g.lr}`);
      }
      if (!(g.weightDecay >= 0) || !Number.isFinite(g.weightDecay)) {
        throw new Error(`${where}: weightDecay must be a finite number ≥ 0, got ${g.weightDecay}`);
      }
      for (const p of g.params) {
        if (p.dtype !== "f32" || !p.isContiguous) {
          throw new Error(`${where}: ${p.name ?? p} must be a contiguous f32 tensor`);
        }
      }
      return {
        params: [...g.params],
        lr: g.lr,
        weightDecay: g.weightDecay,
        betas: g.betas ?? [0.9, 0.999],
        eps: g.eps ?? 1e-8,
      };
    });
    const all = new Set<Tensor>();
    for (const p of this.#groups.flatMap((g) => g.params)) {
      if (all.has(p)) throw new Error(`GaLore: ${p.name ?? p} appears in more than one group`);
      all.add(p);
    }
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
    return this.#state.get(param)?.projection?.projector ?? null;
  }

  /** Bytes of optimizer state on the GPU: moments (of R or of the parameter) and projectors. */
  get stateBytes(): number {
    let n = 0;
    for (const s of this.#state.values()) {
      n += s.expAvg.bytes + s.expAvgSq.bytes + (s.projection?.projector.bytes ?? 0);
    }
    return n;
  }

  /** One update of every parameter with a gradient (projected ones through their projector). */
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
          if (p.grad) this.#update(p, p.grad, group, group.lr * multiplier);
        }
      }
    });
    this.#step++;
  }

  #stateOf(p: Tensor): ParamState {
    let s = this.#state.get(p);
    if (s) return s;
    const rank = this.#ranks.get(p);
    let projection: Projection | null = null;
    let momentShape = [...p.shape];
    if (rank !== undefined) {
      const [m, n] = p.shape;
      const side = projectorSide(m, n, this.#settings.projType);
      momentShape = side === "right" ? [m, rank] : [rank, n];
      projection = {
        side,
        rank,
        projector: zeros(side === "right" ? [n, rank] : [m, rank], { category: "optimizer" })
          .keep(),
      };
    }
    s = {
      step: 0,
      expAvg: zeros(momentShape, { category: "optimizer" }).keep(),
      expAvgSq: zeros(momentShape, { category: "optimizer" }).keep(),
      projection,
    };
    this.#state.set(p, s);
    return s;
  }

  #update(p: Tensor, grad: Tensor, group: ResolvedGroup, lr: number): void {
    if (grad.shape.join() !== p.shape.join()) {
      throw new Error(
        `GaLore: gradient of ${p.name ?? p} has shape [${grad.shape}], expected [${p.shape}]`,
      );
    }
    const st = this.#stateOf(p);
    const proj = st.projection;
    if (proj && st.step % this.#settings.updateProjGap === 0) {
      this.#refresh(p, grad, proj, st.step);
    }
    const [beta1, beta2] = group.betas;
    st.step++;
    const bc1 = 1 - beta1 ** st.step, bc2 = 1 - beta2 ** st.step;
    const scale = proj ? this.#settings.scale : 1;
    withCategory("scratch", () =>
      scope(() => {
        const r = !proj
          ? grad
          : proj.side === "right"
          ? matmul(grad, proj.projector)
          : matmul(transpose(proj.projector), grad);
        map([st.expAvg, r], "a + s_c * (b - a)", { out: st.expAvg, scalars: { c: 1 - beta1 } });
        map([st.expAvgSq, r], "a * s_b + s_c * b * b", {
          out: st.expAvgSq,
          scalars: { b: beta2, c: 1 - beta2 },
        });
        const normalized = map([st.expAvg, st.expAvgSq], "a / (sqrt(b) + s_eps)", {
          scalars: { eps: group.eps },
        });
        const back = !proj
          ? normalized
          : proj.side === "right"
          ? matmul(normalized, transpose(proj.projector))
          : matmul(proj.projector, normalized);
        map([p, back], "(a - s_step * b) * s_decay", {
          out: p,
          scalars: {
            step: (lr * Math.sqrt(bc2) / bc1) * scale,
            decay: 1 - lr * group.weightDecay,
          },
        });
      }));
  }

  /** P ← the top-r singular vectors of G on the projector's side, columns sign-normalised. */
  #refresh(p: Tensor, grad: Tensor, proj: Projection, step: number): void {
    const [m, n] = p.shape;
    const exact = this.#settings.svd === "exact" ||
      (this.#settings.svd === "auto" &&
        (Math.min(m, n) <= 256 || 2 * proj.rank >= Math.min(m, n)));
    withCategory("scratch", () =>
      scope(() => {
        const index = this.params.indexOf(p);
        const f = exact ? svd(grad) : randomizedSvd(grad, proj.rank, {
          seed: this.#settings.seed * 1_000_003 + index * 7919 + step,
        });
        const vectors = slice(proj.side === "right" ? f.v : f.u, 1, 0, proj.rank);
        map([vectors, signOfLargest(vectors)], "a * b", { out: proj.projector });
      }));
  }

  /** Drop (or zero) every parameter's gradient. */
  zeroGrad(): void {
    zeroGrad(this.params);
  }

  /** Free a parameter's state (its moments and projector); its next update starts afresh. */
  releaseState(param: Tensor): void {
    const s = this.#state.get(param);
    if (!s) return;
    for (const t of [s.expAvg, s.expAvgSq, s.projection?.projector]) t?.dispose();
    this.#state.delete(param);
  }

  /** The whole state as metadata + arrays: per parameter m, v and (projected) P. */
  async saveState(): Promise<OptimizerState> {
    const arrays: Record<string, Float32Array> = {};
    const params = await Promise.all(this.params.map(async (p, i): Promise<SavedParam | null> => {
      const s = this.#state.get(p);
      if (!s) return null;
      const tensors = [s.expAvg, s.expAvgSq, ...(s.projection ? [s.projection.projector] : [])];
      const [expAvg, expAvgSq, projector] = await Promise.all(tensors.map((t) => t.read()));
      arrays[`${i}.exp_avg`] = expAvg as Float32Array;
      arrays[`${i}.exp_avg_sq`] = expAvgSq as Float32Array;
      if (projector) arrays[`${i}.projector`] = projector as Float32Array;
      const projection = s.projection ? { side: s.projection.side, rank: s.projection.rank } : null;
      return { name: p.name, step: s.step, projection };
    }));
    return {
      meta: {
        type: "galore_adamw",
        version: 2,
        step: this.#step,
        groups: this.#groups.map((g) => ({
          lr: g.lr,
          weightDecay: g.weightDecay,
          betas: g.betas,
          eps: g.eps,
        })),
        params,
      },
      arrays,
    };
  }

  /** Restore a state from {@link saveState} (the same parameters in the same order). */
  loadState(state: OptimizerState): void {
    const meta = state.meta as {
      type?: string;
      version?: number;
      step: number;
      groups: { lr: number; weightDecay: number; betas: [number, number]; eps: number }[];
      params: (SavedParam | null)[];
    };
    if (meta?.type !== "galore_adamw" || meta.version !== 2) {
      throw new Error(
        `optimizer state is not this version's GaLore state (type ${meta?.type}, version ` +
          `${meta?.version}); it cannot be resumed here`,
      );
    }
    const params = this.params;
    if (!Array.isArray(meta.params) || meta.params.length !== params.length) {
      throw new Error(
        `GaLore state: ${meta.params?.length} parameters, this optimizer has ${params.length}`,
      );
    }
    if (meta.groups.length !== this.#groups.length) {
      throw new Error(
        `GaLore state: ${meta.groups.length} param groups, this optimizer has ${this.#groups.length}`,
      );
    }
    meta.groups.forEach((g, i) => Object.assign(this.#groups[i], g));
    for (const p of [...this.#state.keys()]) this.releaseState(p);
    meta.params.forEach((saved, i) => {
      if (!saved) return;
      const p = params[i];
      const what = `GaLore state parameter ${i}${saved.name ? ` (${saved.name})` : ""}`;
      const rank = this.#ranks.get(p);
      if ((rank === undefined) !== (saved.projection === null)) {
        throw new Error(`${what}: projected in the state but not here, or the reverse`);
      }
      if (saved.projection && saved.projection.rank !== rank) {
        throw new Error(`${what}: rank ${saved.projection.rank}, this optimizer uses ${rank}`);
      }
      const s = this.#stateOf(p);
      s.step = saved.step;
      const fill = (key: string, t: Tensor) => {
        const a = state.arrays[`${i}.${key}`];
        if (!a || a.length !== t.size) {
          throw new Error(`${what}: ${key} needs ${t.size} values, got ${a?.length ?? "none"}`);
        }
        rt().write(t.buffer, t.offset * 4, a);
      };
      fill("exp_avg", s.expAvg);
      fill("exp_avg_sq", s.expAvgSq);
      if (s.projection) fill("projector", s.projection.projector);
    });
    this.#step = meta.step;
  }

  /** Free every state tensor and the clipping buffers. */
  dispose(): void {
    for (const p of [...this.#state.keys()]) this.releaseState(p);
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
  const targets = targetedLinears(model, ctx, "GaLore");
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
  // Full-parameter training: everything else trains with GaLoreAdamW's plain branch.
  const rest: [string, Tensor][] = [];
  if (config.trainAll) {
    const taken = new Set([...weights, ...biases, ...head].map(([, t]) => t));
    const unusedLmHead = (n: string) => ctx.taskType === "SEQ_CLS" && /(^|\.)lm_head\./.test(n);
    for (const [name, t] of model.namedParameters()) {
      if (taken.has(t) || unusedLmHead(name)) continue;
      taken.add(t);
      if (t.dtype !== "f32") {
        throw new Error(
          `GaLore trains every parameter in f32 (trainAll), but ${name} is stored as ${t.dtype}: ` +
            "load the model with frozenDtype f32, or set trainAll: false",
        );
      }
      t.requiresGrad = true;
      t.setCategory("trainable");
      rest.push([name, t]);
    }
  }
  const trained = (): [string, Tensor][] => [...weights, ...biases, ...rest, ...head];
  return {
    method: "galore",
    ranks,
    groups: () => [
      ...buildGroups(
        "galore",
        [...weights, ...biases, ...rest],
        ctx.lrMultipliers,
        ctx.weightDecay,
      ),
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
            train_all: config.trainAll,
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
        const expected = new Set(trained().map(([name]) => name));
        const extra = reader.names.find((n) => !expected.has(n));
        if (extra) {
          throw new Error(
            `${file}: tensor ${extra} is not trained by GaLore on this model (another model or ` +
              "other targets?)",
          );
        }
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

/** The reference recipes' projected matrices: every attention and feed-forward matrix. */
export function galoreDefaultTargets(model: Module): string[] {
  return architectureOf(model) === "llama"
    ? ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    : ["query", "key", "value", "intermediate.dense", "output.dense"];
}

/** GaLore as a registry entry. */
export const galore: Method<GaloreConfig> = {
  name: "galore",
  changesBaseWeights: true,
  config: GaloreConfigSchema,
  defaultTargets: galoreDefaultTargets,
  apply: (model, config, ctx) => applyGalore(model, config, ctx),
};
