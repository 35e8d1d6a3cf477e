/**
 * AdaLoRA (Zhang et al., 2023): LoRA in SVD form whose rank budget is re-allocated across layers
 * during training, as Hugging Face PEFT implements it (AdaLoraModel + RankAllocator).
 *
 * For a targeted Linear y = x·Wᵀ + b with W [dOut, dIn]:
 *   y = x·Wᵀ + b + s · dropout(x)·(Q ⊙ Λ)ᵀ·Pᵀ,   Q = lora_A [r, dIn], Λ = lora_E [r, 1],
 *   P = lora_B [dOut, r], s = α / (init_r + 1e-5)   (PEFT's scaling / ranknum; ranknum stays init_r).
 * Initialisation as PEFT: Λ = 0, P and Q ~ N(0, 0.02²), so the model starts equal to the base.
 * Default targets are PEFT's for AdaLoRA: query, key, value, dense on RoBERTa (every attention and
 * feed-forward matrix), query, value on BERT, q_proj, v_proj on LLaMA.
 *
 * The schedule runs at every optimizer step t, counted from 0 as PEFT's training loop passes it to
 * `update_and_allocate(global_step)` (after `optimizer.step()`, before `zero_grad()`):
 * - t < T − tfinal: the importance of every entry p of P, Λ, Q with (clipped) gradient g, read
 *   after the update as PEFT reads it: I = |p·g|, Ī ← β1·Ī + (1 − β1)·I,
 *   Ū ← β2·Ū + (1 − β2)·|I − Ī|, S = Ī·Ū; the score of triplet i of a layer is
 *   S(Λ_i) + mean_j S(Q_ij) + mean_j S(P_ji). When t > tinit and t % deltaT = 0, the lowest-scoring
 *   Λ entries are zeroed so that b(t) triplets stay, with PEFT's budget_schedule
 *   b(t) = ⌊(init_r·L − target_r·L)·(1 − (t − tinit)/(T − tfinal − tinit))³ + target_r·L⌋;
 * - t = T − tfinal: a final mask to target_r·L triplets, frozen (rank_pattern), EMAs freed;
 * - t > T − tfinal: the frozen mask is re-applied.
 * As in PEFT, with tfinal = 0 the final allocation never happens inside T steps (the last mask
 * keeps slightly more than target_r·L triplets).
 * Regulariser added to the loss: γ · mean over the 2L matrices of ‖QQᵀ − I‖_F and ‖PᵀP − I‖_F,
 * the unsquared Frobenius norm of PEFT and of the authors' code.
 *
 * Where the references disagree, the choices made here (and the option for the other):
 * - The paper writes the regulariser with squared norms; PEFT and the original code take the
 *   norm itself. Default PEFT's; `orthNorm: "squared"` gives the paper's.
 * - The paper's Algorithm 1 scores the parameters before their update; PEFT after it (its
 *   allocator runs after `optimizer.step()`). Default PEFT's; `importance: "before-step"` gives
 *   the paper's. With clipping (`maxGradNorm`) the gradient is the clipped one, as Hugging
 *   Face's Trainer clips in place before the step.
 * - Masking keeps exactly b(t) triplets: ties in score are broken by position (earlier masked
 *   first). PEFT's kthvalue threshold masks every entry tied with the threshold (all of them when
 *   every score is 0); with distinct scores the two are the same.
 * - Ī, Ū and the mask are optimizer-like state: category "optimizer", saved with the optimizer in
 *   checkpoints (the adapter supplies an AdamW wrapper that also runs the schedule), freed when the
 *   mask is frozen.
 *
 * Saved as PEFT does: `base_model.model.<module>.lora_A` / `.lora_E` / `.lora_B` (no `.weight`),
 * truncated to the kept triplets when a mask exists, with `rank_pattern` ({"<module>.lora_E":
 * [bool × init_r]}) and the schedule fields (target_r, init_r, tinit, tfinal, deltaT, beta1, beta2,
 * orth_reg_weight, total_step) in adapter_config.json, peft_type "ADALORA".
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import {
  AdamW,
  add,
  arange,
  concat,
  GradClipper,
  linear,
  map,
  matmul,
  mean,
  mul,
  noGrad,
  type Optimizer,
  type OptimizerState,
  randNormal,
  reshape,
  scope,
  slice,
  sqrt,
  sub,
  sum,
  type Tensor,
  tensor,
  transpose,
  zeros,
} from "../ops/mod.ts";
import { ForwardContext } from "../models/context.ts";
import { type LinearLike, Module } from "../models/module.ts";
import { writeSafetensors } from "../models/safetensors.ts";
import { buildGroups } from "./groups.ts";
import { architectureOf, mergeLowRank, targetedLinears, trainHead } from "./lora.ts";
import {
  ADAPTER_CONFIG,
  ADAPTER_WEIGHTS,
  loadInto,
  PEFT_PREFIX,
  readAdapter,
  toEntries,
  writeInto,
  writeTextAtomic,
} from "./peft.ts";
import type { Adapter, ConfigSchema, Method, MethodContext } from "./types.ts";

/** AdaLoRA's options, with PEFT's defaults (AdaLoraConfig). */
export const AdaLoraConfigSchema: ConfigSchema<AdaLoraConfig> = z.object({
  /** Average rank per layer at the end of the budgeting phase (target_r). */
  targetR: z.number().int().positive().default(8),
  /** Rank each layer starts with (init_r). */
  initR: z.number().int().positive().default(12),
  /** Steps of warm-up before the budget starts to shrink (tinit). */
  tinit: z.number().int().min(0).default(0),
  /** Steps at the end trained with the frozen final mask (tfinal). */
  tfinal: z.number().int().min(0).default(0),
  /** Re-allocate every deltaT steps during the budgeting phase. */
  deltaT: z.number().int().positive().default(1),
  /** EMA rate of the sensitivity Ī. */
  beta1: z.number().gt(0).lt(1).default(0.85),
  /** EMA rate of the uncertainty Ū. */
  beta2: z.number().gt(0).lt(1).default(0.85),
  /** γ, the weight of the orthogonality regulariser (0 turns it off). */
  orthRegWeight: z.number().min(0).default(0.5),
  /** Total optimizer steps T (total_step); defaults to the run's step count. */
  totalSteps: z.number().int().positive().optional(),
  /** α: the update is scaled by α / init_r. */
  alpha: z.number().positive().default(8),
  /** Dropout on the adapter's input. */
  dropout: z.number().min(0).lt(1).default(0),
  /** The regulariser's norm: PEFT's ‖·‖_F ("frobenius") or the paper's ‖·‖²_F ("squared"). */
  orthNorm: z.enum(["frobenius", "squared"]).default("frobenius"),
  /** Score parameters after the update (PEFT, "after-step") or before it (the paper). */
  importance: z.enum(["after-step", "before-step"]).default("after-step"),
}).strict();

/** Parsed AdaLoRA options. */
export interface AdaLoraConfig {
  /** Average rank per layer at the end of the budgeting phase (target_r); default 8. */
  targetR: number;
  /** Rank each layer starts with (init_r); default 12. */
  initR: number;
  /** Steps of warm-up before the budget starts to shrink (tinit); default 0. */
  tinit: number;
  /** Steps at the end trained with the frozen final mask (tfinal); default 0. */
  tfinal: number;
  /** Re-allocate every deltaT steps during the budgeting phase; default 1. */
  deltaT: number;
  /** EMA rate of the sensitivity Ī, in (0, 1); default 0.85. */
  beta1: number;
  /** EMA rate of the uncertainty Ū, in (0, 1); default 0.85. */
  beta2: number;
  /** γ, the weight of the orthogonality regulariser (0 turns it off); default 0.5. */
  orthRegWeight: number;
  /** Total optimizer steps T (total_step); absent: the run's step count. */
  totalSteps?: number;
  /** α: the update is scaled by α / init_r; default 8. */
  alpha: number;
  /** Dropout probability on the adapter's input, in [0, 1); default 0. */
  dropout: number;
  /**
   * The regulariser's norm: "frobenius" ‖·‖_F as PEFT and the authors' code (default), or
   * "squared" ‖·‖²_F as the paper writes it.
   */
  orthNorm: "frobenius" | "squared";
  /**
   * When importance reads the parameters: "after-step" (PEFT: its allocator runs after
   * `optimizer.step()`; default) or "before-step" (the paper's Algorithm 1).
   */
  importance: "after-step" | "before-step";
}

/** A Linear with an SVD-form update; `base_layer` keeps the frozen original. */
export class SvdLinear extends Module implements LinearLike {
  /** dIn of the base layer. */
  readonly inFeatures: number;
  /** dOut of the base layer. */
  readonly outFeatures: number;

  /** Wrap `base` with Q = `loraA` [r, dIn], Λ = `loraE` [r, 1], P = `loraB` [dOut, r]. */
  constructor(
    readonly base: LinearLike,
    loraA: Tensor,
    loraE: Tensor,
    loraB: Tensor,
    readonly scaling: number,
    readonly dropout: number,
  ) {
    super();
    this.inFeatures = base.inFeatures;
    this.outFeatures = base.outFeatures;
    this.addModule("base_layer", base);
    this.addParameter("lora_A", loraA);
    this.addParameter("lora_E", loraE);
    this.addParameter("lora_B", loraB);
  }

  /** Q, the right singular vectors [r, dIn]. */
  get loraA(): Tensor {
    return this.param("lora_A");
  }

  /** Λ, the singular values [r, 1]. */
  get loraE(): Tensor {
    return this.param("lora_E");
  }

  /** P, the left singular vectors [dOut, r]. */
  get loraB(): Tensor {
    return this.param("lora_B");
  }

  /** The rank the layer was created with (init_r). */
  get rank(): number {
    return this.loraA.shape[0];
  }

  /** base(x) + s·dropout(x)·(Q ⊙ Λ)ᵀ·Pᵀ. */
  forward(x: Tensor): Tensor {
    const y = this.base.forward(x);
    const xd = ForwardContext.current().dropout(x, this.dropout);
    const update = linear(linear(xd, mul(this.loraA, this.loraE)), this.loraB);
    return add(y, mul(update, this.scaling));
  }

  /** ΔW = s·P·diag(Λ)·Q [dOut, dIn]. */
  deltaWeight(): Tensor {
    return noGrad(() => mul(matmul(this.loraB, mul(this.loraA, this.loraE)), this.scaling));
  }
}

/** The numbers the budget schedule depends on. */
export interface BudgetSchedule {
  /** init_r · L. */
  initBudget: number;
  /** target_r · L. */
  targetBudget: number;
  /** Warm-up steps at the full budget. */
  tinit: number;
  /** Final steps with the frozen mask. */
  tfinal: number;
  /** T, the total number of optimizer steps. */
  totalSteps: number;
  /** Steps between re-allocations. */
  deltaT: number;
}

/**
 * The rank budget at optimizer step `step` (counted from 0) and whether to re-mask then: PEFT's
 * RankAllocator.budget_schedule.
 *
 * @example
 * ```ts
 * import { adaloraBudget } from "./adalora.ts";
 * const s = { initBudget: 48, targetBudget: 32, tinit: 10, tfinal: 20, totalSteps: 110, deltaT: 5 };
 * console.log(adaloraBudget(50, s)); // { budget: 34, mask: true }
 * ```
 */
export function adaloraBudget(step: number, s: BudgetSchedule): { budget: number; mask: boolean } {
  if (step <= s.tinit) return { budget: s.initBudget, mask: false };
  if (step > s.totalSteps - s.tfinal) return { budget: s.targetBudget, mask: true };
  const left = 1 - (step - s.tinit) / (s.totalSteps - s.tfinal - s.tinit);
  const budget = Math.floor((s.initBudget - s.targetBudget) * left ** 3 + s.targetBudget);
  return { budget, mask: step % s.deltaT === 0 };
}

/** Ī and Ū of one parameter (same shape as the parameter). */
export interface Importance {
  /** Ī, the smoothed sensitivity. */
  ipt: Tensor;
  /** Ū, the smoothed uncertainty. */
  unc: Tensor;
}

/**
 * The importance EMAs of every P, Λ, Q entry and the current mask over all triplets (layers in
 * order, init_r triplets each).
 */
export class RankAllocator {
  readonly #ema = new Map<Tensor, Importance>();
  #keep: Tensor | null = null;
  /** True once the final mask is fixed (t ≥ T − tfinal). */
  frozen = false;

  /** Track the triplets of `layers` with EMA rates β1 (Ī) and β2 (Ū). */
  constructor(
    readonly layers: readonly [string, SvdLinear][],
    readonly beta1: number,
    readonly beta2: number,
  ) {}

  /** Triplets over all layers (init_r · L). */
  get size(): number {
    return this.layers.reduce((s, [, l]) => s + l.rank, 0);
  }

  /** The current mask [init_r · L] (1 keep, 0 masked), or null before the first allocation. */
  get keep(): Tensor | null {
    return this.#keep;
  }

  /** Ī and Ū of a parameter (null before its first update). */
  importance(param: Tensor): Importance | null {
    return this.#ema.get(param) ?? null;
  }

  /** Bytes of GPU state (EMAs and mask). */
  get stateBytes(): number {
    let n = this.#keep?.bytes ?? 0;
    for (const { ipt, unc } of this.#ema.values()) n += ipt.bytes + unc.bytes;
    return n;
  }

  #params(): Tensor[] {
    return this.layers.flatMap(([, l]) => [l.loraA, l.loraE, l.loraB]);
  }

  /** Fold the current gradients into Ī and Ū (in place, on the GPU). */
  updateImportance(): void {
    noGrad(() => {
      for (const p of this.#params()) {
        if (!p.grad) continue;
        let st = this.#ema.get(p);
        if (!st) {
          st = {
            ipt: zeros(p.shape, { category: "optimizer" }).keep(),
            unc: zeros(p.shape, { category: "optimizer" }).keep(),
          };
          this.#ema.set(p, st);
        }
        map([st.ipt, p, p.grad], "s_beta * a + (1.0 - s_beta) * abs(b * c)", {
          out: st.ipt,
          scalars: { beta: this.beta1 },
        });
        map([st.unc, p, p.grad, st.ipt], "s_beta * a + (1.0 - s_beta) * abs(abs(b * c) - d)", {
          out: st.unc,
          scalars: { beta: this.beta2 },
        });
      }
    });
  }

  /** Triplet scores [init_r · L] (entries without statistics score 0). */
  scores(): Tensor {
    return scope(() =>
      noGrad(() => {
        // Per triplet: S of Λ_i, the mean S over row i of Q ([r, dIn]) and over column i of P.
        const score = (p: Tensor, rank: number, axis: number | null): Tensor => {
          const st = this.#ema.get(p);
          if (!st) return zeros([rank]);
          const s = mul(st.ipt, st.unc);
          return axis === null ? reshape(s, [rank]) : mean(s, axis);
        };
        const parts = this.layers.map(([, l]) =>
          add(
            add(score(l.loraE, l.rank, null), score(l.loraA, l.rank, 1)),
            score(l.loraB, l.rank, 0),
          )
        );
        return parts.length === 1 ? parts[0] : concat(parts, 0);
      })
    );
  }

  /** Keep the `budget` highest-scoring triplets (zero the others' Λ); returns the new mask. */
  maskToBudget(budget: number): Tensor {
    const n = this.size;
    const masked = Math.max(0, n - budget);
    const keep = scope(() =>
      noGrad(() => {
        const s = this.scores();
        const idx = arange(n);
        // Entry (i, j) is 1 when triplet j ranks below triplet i (lower score, or equal and earlier).
        const below = map(
          [reshape(s, [n, 1]), reshape(s, [1, n]), reshape(idx, [n, 1]), reshape(idx, [1, n])],
          "select(0.0, 1.0, b < a || (b == a && d < c))",
        );
        return map([sum(below, 1)], "select(0.0, 1.0, a >= s_masked)", {
          scalars: { masked },
          category: "optimizer",
        }).keep();
      })
    );
    this.#keep?.dispose();
    this.#keep = keep;
    this.applyMask();
    return keep;
  }

  /** Zero the masked Λ entries (no-op before the first allocation). */
  applyMask(): void {
    const keep = this.#keep;
    if (!keep) return;
    scope(() =>
      noGrad(() => {
        let offset = 0;
        for (const [, l] of this.layers) {
          const part = reshape(slice(keep, 0, offset, offset + l.rank), [l.rank, 1]);
          map([l.loraE, part], "a * b", { out: l.loraE });
          offset += l.rank;
        }
      })
    );
  }

  /** Set the mask from host values (loading an adapter or a checkpoint). */
  setMask(values: Float32Array | null): void {
    this.#keep?.dispose();
    this.#keep = values ? tensor(values, [values.length], { category: "optimizer" }).keep() : null;
  }

  /** Free Ī and Ū (after the final allocation, as PEFT's reset_ipt). */
  releaseImportance(): void {
    for (const { ipt, unc } of this.#ema.values()) {
      ipt.dispose();
      unc.dispose();
    }
    this.#ema.clear();
  }

  /** PEFT's rank_pattern: per layer `<module>.lora_E` → which triplets are kept; null unmasked. */
  async rankPattern(): Promise<Record<string, boolean[]> | null> {
    if (!this.#keep) return null;
    const keep = await this.#keep.read();
    const out: Record<string, boolean[]> = {};
    let offset = 0;
    for (const [name, l] of this.layers) {
      out[`${name}.lora_E`] = Array.from(keep.subarray(offset, offset + l.rank), (v) => v > 0);
      offset += l.rank;
    }
    return out;
  }

  /** Host copies of the state, for checkpoints (arrays keyed by parameter position). */
  async saveState(): Promise<OptimizerState> {
    const arrays: Record<string, Float32Array> = {};
    const params = this.#params();
    for (const [i, p] of params.entries()) {
      const st = this.#ema.get(p);
      if (!st) continue;
      arrays[`${i}.ipt`] = (await st.ipt.read()) as Float32Array;
      arrays[`${i}.unc`] = (await st.unc.read()) as Float32Array;
    }
    if (this.#keep) arrays.keep = (await this.#keep.read()) as Float32Array;
    return { meta: { frozen: this.frozen }, arrays };
  }

  /** Restore from {@link RankAllocator.saveState}. */
  loadState(state: OptimizerState): void {
    this.releaseImportance();
    const params = this.#params();
    for (const [i, p] of params.entries()) {
      const ipt = state.arrays[`${i}.ipt`], unc = state.arrays[`${i}.unc`];
      if (!ipt || !unc) continue;
      if (ipt.length !== p.size || unc.length !== p.size) {
        throw new Error(
          `AdaLoRA state: importance of parameter ${i} has ${ipt.length} values, expected ${p.size}`,
        );
      }
      this.#ema.set(p, {
        ipt: tensor(ipt, p.shape, { category: "optimizer" }).keep(),
        unc: tensor(unc, p.shape, { category: "optimizer" }).keep(),
      });
    }
    const keep = state.arrays.keep ?? null;
    if (keep && keep.length !== this.size) {
      throw new Error(`AdaLoRA state: mask has ${keep.length} entries, expected ${this.size}`);
    }
    this.setMask(keep);
    this.frozen = (state.meta as { frozen?: boolean } | null)?.frozen === true;
  }

  /** Free everything. */
  dispose(): void {
    this.releaseImportance();
    this.setMask(null);
  }
}

const STATE_PREFIX = "adalora.";

/**
 * AdamW plus the rank allocator. One `step()` is one iteration of PEFT's loop at global step t:
 * clip the gradients in place (as Hugging Face's Trainer does before `optimizer.step()`), update,
 * then `update_and_allocate(t)` while the (clipped) gradients still exist. The allocator's state
 * is saved with the optimizer's, so checkpoints resume AdaLoRA exactly.
 */
class AdaLoraOptimizer implements Optimizer {
  readonly #clipper: GradClipper | null;

  constructor(
    readonly inner: AdamW,
    readonly allocator: RankAllocator,
    maxGradNorm: number | undefined,
    readonly allocate: (step: number, phase: "before-step" | "after-step") => void,
  ) {
    this.#clipper = maxGradNorm === undefined ? null : new GradClipper(maxGradNorm);
  }

  get stepCount(): number {
    return this.inner.stepCount;
  }

  get stateBytes(): number {
    return this.inner.stateBytes + this.allocator.stateBytes;
  }

  step(): void {
    const t = this.inner.stepCount;
    if (this.#clipper) {
      const params = this.inner.params;
      noGrad(() => {
        this.#clipper!.measure(params);
        this.#clipper!.scaleGrads(params);
      });
    }
    this.allocate(t, "before-step");
    this.inner.step();
    this.allocate(t, "after-step");
  }

  zeroGrad(): void {
    this.inner.zeroGrad();
  }

  lr(group?: number): number {
    return this.inner.lr(group);
  }

  releaseState(param: Tensor): void {
    this.inner.releaseState(param);
  }

  async saveState(): Promise<OptimizerState> {
    const inner = await this.inner.saveState();
    const own = await this.allocator.saveState();
    const arrays = { ...inner.arrays };
    for (const [k, v] of Object.entries(own.arrays)) arrays[STATE_PREFIX + k] = v;
    return { meta: { inner: inner.meta, adalora: own.meta }, arrays };
  }

  loadState(state: OptimizerState): void {
    const meta = state.meta as { inner?: unknown; adalora?: unknown } | null;
    if (!meta || !("inner" in meta)) {
      throw new Error("AdaLoRA optimizer state: expected meta.inner");
    }
    const inner: Record<string, Float32Array> = {}, own: Record<string, Float32Array> = {};
    for (const [k, v] of Object.entries(state.arrays)) {
      if (k.startsWith(STATE_PREFIX)) own[k.slice(STATE_PREFIX.length)] = v;
      else inner[k] = v;
    }
    this.inner.loadState({ meta: meta.inner, arrays: inner });
    this.allocator.loadState({ meta: meta.adalora ?? null, arrays: own });
  }

  dispose(): void {
    this.inner.dispose();
    this.allocator.dispose();
    this.#clipper?.dispose();
  }
}

/** What {@link applyAdaLora} returns: an Adapter plus its layers and allocator (for tests). */
export interface AdaLoraAdapter extends Adapter {
  /** The adapted layers by name, in tree order. */
  readonly layers: readonly [string, SvdLinear][];
  /** Importance scores and the mask. */
  readonly allocator: RankAllocator;
  /** The budget schedule (null when the total step count is unknown). */
  readonly schedule: BudgetSchedule | null;
  /** The orthogonality regulariser R (unweighted), recorded on the tape. */
  regularizer(): Tensor;
  /**
   * PEFT's `update_and_allocate(step)` (step counted from 0), split at the optimizer update: with
   * "before-step" only the paper's importance update (when `importance` is "before-step"), with
   * "after-step" PEFT's importance update (by default) and the masking of the budget schedule.
   * The adapter's optimizer calls both around its update; tests call them directly.
   */
  allocate(step: number, phase: "before-step" | "after-step"): void;
}

/**
 * The orthogonality regulariser: the mean over the given layers' 2L matrices of ‖QQᵀ − I‖_F
 * (Q = lora_A [r, dIn]) and ‖PᵀP − I‖_F (P = lora_B [dOut, r]), as PEFT's AdaLoraModel.forward
 * adds it; `norm: "squared"` takes ‖·‖²_F instead (the paper's formula). Recorded on the tape.
 */
export function orthRegularizer(
  layers: readonly { loraA: Tensor; loraB: Tensor }[],
  norm: AdaLoraConfig["orthNorm"] = "frobenius",
): Tensor {
  if (layers.length === 0) throw new Error("orthRegularizer: no layers");
  const terms = layers.flatMap(({ loraA, loraB }) => {
    const r = loraA.shape[0];
    const eye = tensor(
      Float32Array.from({ length: r * r }, (_, k) => (k % (r + 1) === 0 ? 1 : 0)),
      [r, r],
    );
    return [matmul(loraA, transpose(loraA)), matmul(transpose(loraB), loraB)].map((gram) => {
      const d = sub(gram, eye);
      const squares = sum(mul(d, d));
      return norm === "squared" ? squares : sqrt(squares);
    });
  });
  return mul(terms.reduce((s, t) => add(s, t)), 1 / terms.length);
}

/** Rows (axis 0) or columns (axis 1) `keep` of a row-major [rows, cols] host matrix. */
function pick(
  data: Float32Array,
  rows: number,
  cols: number,
  keep: boolean[],
  axis: 0 | 1,
): Float32Array {
  const out: number[] = [];
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) if (keep[axis === 0 ? i : j]) out.push(data[i * cols + j]);
  }
  return Float32Array.from(out);
}

/** The inverse of {@link pick}: scatter kept rows/columns into a zero matrix. */
function unpick(
  data: Float32Array,
  rows: number,
  cols: number,
  keep: boolean[],
  axis: 0 | 1,
): Float32Array {
  const out = new Float32Array(rows * cols);
  let k = 0;
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) if (keep[axis === 0 ? i : j]) out[i * cols + j] = data[k++];
  }
  if (k !== data.length) throw new Error(`expected ${k} kept values, got ${data.length}`);
  return out;
}

/** Apply AdaLoRA to the targeted Linear layers of `model`. */
export function applyAdaLora(
  model: Module,
  config: AdaLoraConfig,
  ctx: MethodContext,
): AdaLoraAdapter {
  if (config.targetR > config.initR) {
    throw new Error(`AdaLoRA: targetR (${config.targetR}) must not exceed initR (${config.initR})`);
  }
  // Without a step count the adapter still runs, loads, saves and merges; training needs it.
  const totalSteps = config.totalSteps ?? ctx.totalSteps ?? null;
  if (totalSteps !== null && config.tinit >= totalSteps - config.tfinal) {
    throw new Error(
      `AdaLoRA: tinit (${config.tinit}) must be below totalSteps − tfinal (${totalSteps} − ${config.tfinal}) ` +
        "so that there is a budgeting phase",
    );
  }
  const targets = targetedLinears(model, ctx, "AdaLoRA");
  model.setRequiresGrad(false);
  const r = config.initR;
  const scaling = config.alpha / (r + 1e-5);
  const layers: [string, SvdLinear][] = targets.map(([name, base], i) => {
    const opts = { seed: ctx.seed, category: "trainable" as const };
    const a = randNormal([r, base.inFeatures], 0, 0.02, { ...opts, stream: 104729 + 2 * i });
    const b = randNormal([base.outFeatures, r], 0, 0.02, { ...opts, stream: 104730 + 2 * i });
    const e = zeros([r, 1], { category: "trainable" });
    a.requiresGrad = b.requiresGrad = e.requiresGrad = true;
    const layer = new SvdLinear(base, a, e, b, scaling, config.dropout);
    model.setModule(name, layer);
    return [name, layer];
  });
  const head = trainHead(model, ctx);
  const allocator = new RankAllocator(layers, config.beta1, config.beta2);
  const schedule: BudgetSchedule | null = totalSteps === null ? null : {
    initBudget: r * layers.length,
    targetBudget: config.targetR * layers.length,
    tinit: config.tinit,
    tfinal: config.tfinal,
    totalSteps,
    deltaT: config.deltaT,
  };
  const requireSchedule = (): BudgetSchedule => {
    if (schedule) return schedule;
    throw new Error(
      "AdaLoRA: the budget schedule needs the total number of training steps: set the totalSteps " +
        "option, or train through the trainer, which passes its step count",
    );
  };
  const adapterParams = (): [string, Tensor][] =>
    layers.flatMap(([n, l]) => [
      [`${n}.lora_A`, l.loraA],
      [`${n}.lora_E`, l.loraE],
      [`${n}.lora_B`, l.loraB],
    ]);
  const regularizer = (): Tensor => orthRegularizer(layers.map(([, l]) => l), config.orthNorm);
  /** PEFT's update_and_allocate(t), with importance read before or after the update. */
  const allocate = (t: number, phase: "before-step" | "after-step") => {
    const s = requireSchedule();
    const finalStep = s.totalSteps - s.tfinal;
    if (phase === config.importance && t < finalStep) allocator.updateImportance();
    if (phase === "before-step") return;
    if (t < finalStep) {
      const { budget, mask } = adaloraBudget(t, s);
      if (mask) allocator.maskToBudget(budget);
    } else if (t === finalStep) {
      allocator.maskToBudget(s.targetBudget);
      allocator.frozen = true;
      allocator.releaseImportance();
    } else {
      allocator.applyMask();
    }
  };
  return {
    method: "adalora",
    layers,
    allocator,
    schedule,
    regularizer,
    allocate,
    groups: () => [
      ...buildGroups("adalora", adapterParams(), ctx.lrMultipliers, ctx.weightDecay),
      ...buildGroups("head", head, {}, ctx.weightDecay),
    ],
    extraLoss: () => (config.orthRegWeight > 0 ? mul(regularizer(), config.orthRegWeight) : null),
    createOptimizer: (groups, options) => {
      requireSchedule();
      const inner = new AdamW(groups, { schedule: options.schedule });
      return new AdaLoraOptimizer(inner, allocator, options.maxGradNorm, allocate);
    },
    merge: () => {
      mergeLowRank(model, layers);
      allocator.dispose();
    },
    save: async (dir) => {
      const pattern = await allocator.rankPattern();
      const entries = await toEntries(head.map(([n, t]) => [`${PEFT_PREFIX}${n}`, t]));
      for (const [name, l] of layers) {
        const keep = pattern?.[`${name}.lora_E`] ?? new Array<boolean>(r).fill(true);
        const kept = keep.filter(Boolean).length;
        const [a, e, b] = await Promise.all([
          l.loraA.read(),
          l.loraE.read(),
          l.loraB.read(),
        ]) as Float32Array[];
        const key = (p: string) => `${PEFT_PREFIX}${name}.${p}`;
        entries.push(
          {
            name: key("lora_A"),
            dtype: "F32",
            shape: [kept, l.inFeatures],
            data: pick(a, r, l.inFeatures, keep, 0),
          },
          { name: key("lora_E"), dtype: "F32", shape: [kept, 1], data: pick(e, r, 1, keep, 0) },
          {
            name: key("lora_B"),
            dtype: "F32",
            shape: [l.outFeatures, kept],
            data: pick(b, l.outFeatures, r, keep, 1),
          },
        );
      }
      await Deno.mkdir(dir, { recursive: true });
      await writeSafetensors(join(dir, ADAPTER_WEIGHTS), entries, { format: "pt" });
      const peftConfig = {
        peft_type: "ADALORA",
        task_type: ctx.taskType,
        base_model_name_or_path: ctx.baseModel,
        // PEFT's LoraConfig default; AdaLoRA ignores r (and warns when it is not 8).
        r: 8,
        lora_alpha: config.alpha,
        lora_dropout: config.dropout,
        target_r: config.targetR,
        init_r: config.initR,
        tinit: config.tinit,
        tfinal: config.tfinal,
        deltaT: config.deltaT,
        beta1: config.beta1,
        beta2: config.beta2,
        orth_reg_weight: config.orthRegWeight,
        total_step: totalSteps,
        rank_pattern: pattern,
        target_modules: ctx.targets,
        modules_to_save: ctx.headModules.length ? ctx.headModules : null,
        bias: "none",
        fan_in_fan_out: false,
        init_lora_weights: true,
        inference_mode: true,
        use_rslora: false,
        use_dora: false,
        alpha_pattern: {},
        exclude_modules: null,
        lora_bias: false,
        layers_to_transform: null,
        layers_pattern: null,
        revision: null,
      };
      await writeTextAtomic(join(dir, ADAPTER_CONFIG), JSON.stringify(peftConfig, null, 2) + "\n");
    },
    load: async (dir) => {
      const files = await readAdapter(dir);
      const raw = files.config.rank_pattern;
      const pattern = raw && typeof raw === "object" ? raw as Record<string, unknown> : null;
      const mask: number[] = [];
      for (const [name, l] of layers) {
        const p: unknown = pattern?.[`${name}.lora_E`];
        if (pattern && (!Array.isArray(p) || p.length !== r)) {
          throw new Error(
            `${dir}/${ADAPTER_CONFIG}: rank_pattern["${name}.lora_E"] must list ${r} booleans (init_r)`,
          );
        }
        const keep = Array.isArray(p) ? p.map((v) => v === true) : new Array<boolean>(r).fill(true);
        const kept = keep.filter(Boolean).length;
        const get = (param: string, shape: number[]) => {
          const t = files.tensors.get(`${name}.${param}`);
          if (!t) throw new Error(`${dir}: adapter has no tensor ${PEFT_PREFIX}${name}.${param}`);
          if (t.shape.join() !== shape.join()) {
            throw new Error(
              `${dir}: ${PEFT_PREFIX}${name}.${param} has shape [${t.shape}], expected [${shape}]`,
            );
          }
          return t.data;
        };
        writeInto(l.loraA, unpick(get("lora_A", [kept, l.inFeatures]), r, l.inFeatures, keep, 0));
        writeInto(l.loraE, unpick(get("lora_E", [kept, 1]), r, 1, keep, 0));
        writeInto(l.loraB, unpick(get("lora_B", [l.outFeatures, kept]), l.outFeatures, r, keep, 1));
        mask.push(...keep.map(Number));
      }
      allocator.setMask(pattern ? Float32Array.from(mask) : null);
      for (const [name, t] of head) loadInto(files, name, t);
    },
  };
}

/**
 * PEFT's default AdaLoRA targets (TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING) for the
 * architectures we load: RoBERTa every attention and feed-forward matrix, BERT and LLaMA q and v.
 */
export function adaloraDefaultTargets(model: Module): string[] {
  const arch = architectureOf(model);
  if (arch === "llama") return ["q_proj", "v_proj"];
  if (arch === "roberta") return ["query", "key", "value", "dense"];
  if (arch === "bert") return ["query", "value"];
  throw new Error(
    "AdaLoRA: no default targets for this model (neither RoBERTa, BERT nor LLaMA); name the " +
      "target modules explicitly",
  );
}

/** AdaLoRA as a registry entry. */
export const adalora: Method<AdaLoraConfig> = {
  name: "adalora",
  config: AdaLoraConfigSchema,
  defaultTargets: adaloraDefaultTargets,
  apply: (model, config, ctx) => applyAdaLora(model, config, ctx),
};
