/**
 * Setup shared by the method tests: the tiny random RoBERTa and LLaMA they adapt, a MethodContext
 * builder over each file's defaults, the fixed two-sequence batch, evaluation logits, and helpers
 * that list adapted layers or write seeded random values into trainable tensors.
 *
 * Every number here is one the tests were written against; changing one changes many tests.
 */
import { deepStrictEqual, equal } from "node:assert/strict";
import { randomArray } from "../helpers.ts";
import {
  AdamW,
  backward,
  crossEntropy,
  type MemoryStats,
  noGrad,
  rt,
  scope,
  scopeAsync,
  sum,
  type Tensor,
  tensor,
} from "../../ops/mod.ts";
import { EncoderForSequenceClassification } from "../../models/encoder.ts";
import { LlamaForCausalLM } from "../../models/llama.ts";
import type { Module } from "../../models/module.ts";
import {
  LoraLinear,
  type MethodContext,
  namedTrainable,
  type ParamGroupSpec,
  writeInto,
} from "../../methods/mod.ts";
import {
  encoderDims,
  encoderWeights,
  hostSource,
  llamaDims,
  llamaWeights,
} from "../models/fixtures.ts";
import type { HostWeights, RefEncoderDims, RefLlamaDims } from "../models/reference.ts";

/**
 * hidden 16, intermediate 32: query/value/attention.output.dense are square, intermediate.dense
 * tall, output.dense wide.
 */
export const TINY_ROBERTA: RefEncoderDims = {
  kind: "roberta",
  vocab: 13,
  hidden: 16,
  inter: 32,
  layers: 2,
  heads: 4,
  eps: 1e-5,
  pad: 1,
  labels: 2,
};

/** Position table size of the tiny RoBERTa (the fixed batch is 5 tokens long). */
export const MAX_POSITIONS = 12;

/** Parameters of the RoBERTa classification head: dense [H, H] + bias, out_proj [labels, H] + bias. */
export const ROBERTA_HEAD = TINY_ROBERTA.hidden * TINY_ROBERTA.hidden + TINY_ROBERTA.hidden +
  TINY_ROBERTA.labels * TINY_ROBERTA.hidden + TINY_ROBERTA.labels;

/** Host weights of a tiny model and a factory of fresh GPU models built from them. */
export interface TinyModel<M> {
  weights: HostWeights;
  model: () => M;
}

/** The tiny RoBERTa classifier with weights drawn from `seed`. */
export function tinyRoberta(seed = 5): TinyModel<EncoderForSequenceClassification> {
  const weights = encoderWeights(TINY_ROBERTA, MAX_POSITIONS, seed);
  return {
    weights,
    model: () =>
      new EncoderForSequenceClassification(
        encoderDims(TINY_ROBERTA, MAX_POSITIONS),
        hostSource(weights),
      ),
  };
}

/** Dims of a tiny tied-embedding LLaMA (GQA: 2 query heads share 1 key/value head). */
export function tinyLlamaDims(layers: number): RefLlamaDims {
  return {
    vocab: 11,
    hidden: 8,
    inter: 12,
    layers,
    heads: 2,
    kvHeads: 1,
    eps: 1e-5,
    theta: 10000,
    tied: true,
  };
}

/**
 * A tiny LLaMA with a 2-label score head: weights from `seed`; `initSeed` draws what the host
 * weights lack (the score head).
 */
export function tinyLlama(
  { layers, seed, initSeed = 0 }: { layers: number; seed: number; initSeed?: number },
): TinyModel<LlamaForCausalLM> & { dims: RefLlamaDims } {
  const dims = tinyLlamaDims(layers);
  const weights = llamaWeights(dims, seed);
  return {
    dims,
    weights,
    model: () => new LlamaForCausalLM(llamaDims(dims, 2), hostSource(weights, initSeed)),
  };
}

/** The run context most method tests use on the tiny RoBERTa. */
export const ROBERTA_CONTEXT: Readonly<MethodContext> = {
  targets: ["query", "value"],
  lrMultipliers: {},
  weightDecay: 0.01,
  headModules: ["classifier"],
  taskType: "SEQ_CLS",
  baseModel: "tiny-roberta",
  seed: 3,
};

/** A context builder: {@link ROBERTA_CONTEXT} with a file's `defaults`, then each call's `over`. */
export function contextBuilder(
  defaults: Partial<MethodContext> = {},
): (over?: Partial<MethodContext>) => MethodContext {
  // A fresh lrMultipliers per call, so no run can leak multipliers into the next.
  return (over = {}) => ({ ...ROBERTA_CONTEXT, lrMultipliers: {}, ...defaults, ...over });
}

/** The fixed RoBERTa batch: two sequences of 5 tokens, the second right-padded by 2. */
export function fixedBatch(): { ids: Tensor; attentionMask: Tensor } {
  return {
    ids: tensor(Int32Array.from([0, 5, 9, 4, 2, 0, 7, 2, 1, 1]), [2, 5]),
    attentionMask: tensor(Float32Array.from([1, 1, 1, 1, 1, 1, 1, 1, 0, 0]), [2, 5]),
  };
}

/** Labels of {@link fixedBatch}. */
export const FIXED_LABELS = [1, 0];

/** Mean cross-entropy of the model on {@link fixedBatch}. */
export function fixedBatchLoss(m: EncoderForSequenceClassification): Tensor {
  return crossEntropy(m.forward(fixedBatch()), tensor(Int32Array.from(FIXED_LABELS), [2]));
}

/** Evaluation logits (no tape, temporaries freed) of a batch, {@link fixedBatch} by default. */
export function evalLogits(
  m: EncoderForSequenceClassification,
  inputs: () => { ids: Tensor; attentionMask: Tensor } = fixedBatch,
): Promise<Float32Array> {
  return scopeAsync(() => noGrad(() => m.forward(inputs())).read()) as Promise<Float32Array>;
}

/** The modules of `m` that are instances of `kind`, with their full names, in model order. */
export function layersOf<T extends Module>(
  m: Module,
  kind: abstract new (...args: never[]) => T,
): [string, T][] {
  return m.namedModules().filter((e): e is [string, T] => e[1] instanceof kind);
}

/** Overwrite `t` with `randomArray(t.size, seed, lo, hi)`. */
export function writeRandom(t: Tensor, seed: number, lo: number, hi: number): void {
  writeInto(t, Float32Array.from(randomArray(t.size, seed, lo, hi)));
}

/** Give every LoRA B random values (layer i from seed 100 + i) so the update is not zero. */
export function randomizeLoraB(m: Module): void {
  layersOf(m, LoraLinear).forEach(([, l], i) => writeRandom(l.loraB, 100 + i, -0.3, 0.3));
}

/**
 * One backward pass over the fixed batch and one AdamW step, checking the memory rules every
 * adapter method must keep: exactly the `trainable` tensors get gradients, every parameter's
 * category is "trainable" or "weights" accordingly, and gradients and optimizer state add 4 and
 * 8 bytes per trainable value over `applied` (the live bytes right after the method was applied).
 */
export async function checkOneStepMemory(
  m: EncoderForSequenceClassification,
  groups: ParamGroupSpec[],
  applied: MemoryStats["live"],
): Promise<void> {
  const trainable = namedTrainable(groups);
  const count = trainable.reduce((s, [, t]) => s + t.size, 0);
  const opt = new AdamW(
    groups.map((g) => ({ params: g.params, lr: 1e-3, weightDecay: g.weightDecay })),
  );
  scope(() => backward(sum(m.forward(fixedBatch()))));
  deepStrictEqual(
    m.namedParameters().filter(([, t]) => t.grad).map(([n]) => n).sort(),
    trainable.map(([n]) => n).sort(),
  );
  for (const [n, t] of m.namedParameters()) {
    equal(t.category, trainable.some(([tn]) => tn === n) ? "trainable" : "weights", n);
  }
  equal(rt().pool.stats().live.grads - applied.grads, 4 * count);
  opt.step();
  await rt().sync(); // surfaces any WebGPU error of the step
  equal(rt().pool.stats().live.optimizer - applied.optimizer, 8 * count);
  opt.dispose();
}
