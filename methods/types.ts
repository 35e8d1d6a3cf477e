/**
 * The shape every fine-tuning method has: a zod config with the method's defaults, and
 * `apply(model, config, ctx)` which adapts the model in place and returns an {@link Adapter}.
 *
 * Two knobs are the same for every method and live in {@link MethodContext}: which modules are
 * targeted, and per-module learning-rate multipliers (e.g. `value: 4` trains W_v at 4× the rate).
 *
 * @module
 */
import type { z } from "zod";
import type { AdamWOptions, Optimizer, ParamGroup, Tensor } from "../ops/mod.ts";
import type { Module } from "../models/module.ts";

/** A group of trainable tensors sharing one learning rate and weight decay. */
export interface ParamGroupSpec {
  /** A readable label, e.g. "lora (value ×4)". */
  label: string;
  /** Full parameter names, aligned with `params`. */
  names: string[];
  params: Tensor[];
  /** Multiplies the run's learning rate. */
  lrMultiplier: number;
  weightDecay: number;
}

/** What a method needs to know about the run besides its own config. */
export interface MethodContext {
  /** Module names or suffixes to adapt (PEFT's target_modules), e.g. ["query", "value"]. */
  targets: string[];
  /** Learning-rate multipliers by module name or suffix, e.g. { value: 4 }. */
  lrMultipliers: Record<string, number>;
  /** The run's weight decay (not applied to biases and norm weights). */
  weightDecay: number;
  /** Modules trained in full and saved whole (the task head), PEFT's modules_to_save. */
  headModules: string[];
  /** PEFT task type written to adapter_config.json. */
  taskType: "SEQ_CLS" | "CAUSAL_LM";
  /** The base model's name or path (adapter_config.json base_model_name_or_path). */
  baseModel: string;
  seed: number;
  /** Optimizer steps the run will take (AdaLoRA's budget schedule), when the caller knows it. */
  totalSteps?: number;
}

/**
 * Access to training data before training starts (EVA's activation statistics, LoRA-GA's gradient
 * estimate). Each thunk builds the task loss of one training batch when called — inside noGrad for
 * statistics, or with gradients enabled followed by `backward`.
 */
export interface DataPass {
  /** Loss thunks of the first `n` training batches (deterministic for a run's seed). */
  losses(n: number): (() => Tensor)[];
  /**
   * Which token positions of the same batches count, aligned with `losses(n)`: statistics over
   * layer inputs skip padding (EVA). Absent: every position counts.
   */
  tokenMasks?(n: number): TokenMask[];
}

/** The positions of one batch, row-major [b, t]: 1 where a real token is, 0 at padding. */
export interface TokenMask {
  b: number;
  t: number;
  mask: Float32Array;
  /** Language modelling: 1 where the token carries a training label (answer tokens), else 0. */
  labelMask?: Float32Array;
}

/** The result of applying a method to a model. */
export interface Adapter {
  /** The method's name (registry key). */
  readonly method: string;
  /** Trainable tensors grouped by learning-rate multiplier and weight decay. */
  groups(): ParamGroupSpec[];
  /**
   * Optional data pass before training (EVA, LoRA-GA). Runs on resume too (it is deterministic),
   * so frozen weights it changes are the same; the checkpoint then restores trainable tensors.
   */
  beforeTraining?(data: DataPass): Promise<void>;
  /** A term added to the task loss at `step` (AdaLoRA's orthogonality regulariser), or null. */
  extraLoss?(step: number): Tensor | null;
  /** After backward, before the optimizer step (SIFT's gradient masks). */
  beforeStep?(step: number): void;
  /** After each optimizer step (AdaLoRA's budget, LISA's layer resampling). */
  afterStep?(step: number, optimizer: Optimizer): void;
  /** Replace AdamW (GaLore's projected AdamW; LoRA+ needs only groups). */
  createOptimizer?(groups: ParamGroup[], options: AdamWOptions): Optimizer;
  /** Fold the adapter into the base weights; the model becomes a plain model again. */
  merge(): void;
  /** Write the adapter (PEFT format where PEFT has one) into `dir`. */
  save(dir: string): Promise<void>;
  /** Read adapter weights written by `save` (or by PEFT) from `dir`. */
  load(dir: string): Promise<void>;
}

/** A fine-tuning method: its config schema and how it adapts a model. */
export interface Method<C> {
  readonly name: string;
  /** The config schema; parsing `{}` gives the method's defaults. */
  readonly config: z.ZodType<C>;
  /**
   * The method's own default targets for `model` (IA3's per-architecture modules, BitFit's every
   * bias), used when the run names none; absent: the run's default (query,value / q_proj,v_proj).
   */
  defaultTargets?(model: Module): string[];
  apply(model: Module, config: C, ctx: MethodContext): Adapter;
}
