/**
 * The shape every fine-tuning method has: a zod config with the method's defaults, and
 * `apply(model, config, ctx)` which adapts the model in place and returns an {@link Adapter}.
 *
 * Two knobs are the same for every method and live in {@link MethodContext}: which modules are
 * targeted, and per-module learning-rate multipliers (e.g. `value: 4` trains W_v at 4× the rate).
 *
 * @module
 */
import type { AdamWOptions, Optimizer, ParamGroup, Tensor } from "../ops/mod.ts";
import type { Module } from "../models/module.ts";

/** One problem a schema found in its input: where it is and what was expected. */
export interface SchemaIssue {
  /** The kind of problem (zod's issue code, e.g. "invalid_type", "unrecognized_keys"). */
  readonly code: string;
  /** Keys and indices from the root to the offending value ([] for the root itself). */
  readonly path: readonly PropertyKey[];
  /** What was expected, in words. */
  readonly message: string;
  /** The unknown keys, for code "unrecognized_keys". */
  readonly keys?: readonly string[];
}

/** Why validation failed: every issue found. */
export interface SchemaError {
  /** All issues in one readable text. */
  readonly message: string;
  /** At least one issue. */
  readonly issues: readonly SchemaIssue[];
}

/** The outcome of {@link ConfigSchema.safeParse}: the value, or the error. */
export type SchemaResult<T> =
  | { readonly success: true; readonly data: T }
  | { readonly success: false; readonly error: SchemaError };

/**
 * A validator of untrusted input (config files, flags, method options). Every zod schema is one;
 * the public API names this interface instead of zod's types, which are not part of it.
 */
export interface ConfigSchema<T> {
  /** The validated value with defaults filled in; throws a zod error when `input` is invalid. */
  parse(input: unknown): T;
  /** As `parse`, but returns the issues instead of throwing. */
  safeParse(input: unknown): SchemaResult<T>;
}

/** A group of trainable tensors sharing one learning rate and weight decay. */
export interface ParamGroupSpec {
  /** A readable label, e.g. "lora (value ×4)". */
  label: string;
  /** Full parameter names, aligned with `params`. */
  names: string[];
  /** The trainable tensors, aligned with `names`. */
  params: Tensor[];
  /** Multiplies the run's learning rate. */
  lrMultiplier: number;
  /** Decoupled (AdamW) weight decay of this group: the run's, or 0 for biases and norm weights. */
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
  taskType: "SEQ_CLS" | "CAUSAL_LM" | null;
  /** The base model's name or path (adapter_config.json base_model_name_or_path). */
  baseModel: string;
  /** The run's seed; random initialisations and selections derive from it. */
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
  /** Rows (sequences) of the batch. */
  b: number;
  /** Positions per row (the padded length). */
  t: number;
  /** b·t entries: 1 at a real token, 0 at padding. */
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
  /** The registry key, e.g. "lora", "pissa". */
  readonly name: string;
  /** The config schema; parsing `{}` gives the method's defaults. */
  readonly config: ConfigSchema<C>;
  /**
   * The method's own default targets for `model` (IA3's per-architecture modules, BitFit's every
   * bias), used when the run names none; absent: the run's default (query,value / q_proj,v_proj).
   */
  defaultTargets?(model: Module): string[];
  /** Adapt `model` in place (swap targeted layers, choose what trains) and return its adapter. */
  apply(model: Module, config: C, ctx: MethodContext): Adapter;
}
