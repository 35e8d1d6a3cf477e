/**
 * The reference encoder training step, shared by `bench/step_bench.ts` and `bench/gpu/run.ts`:
 * a randomly initialised RoBERTa-shaped classifier, one batch of random ids, dropout on, AdamW,
 * either LoRA on query,value or full fine-tuning. One step is what the trainer does per batch:
 * forward in a training ForwardContext → cross-entropy → backward → optimizer step → zero grads,
 * all inside one memory scope, nothing read back.
 *
 * @module
 */
import {
  AdamW,
  backward,
  CATEGORIES,
  type Category,
  crossEntropy,
  init,
  randNormal,
  rt,
  scope,
  type Tensor,
  tensor,
  withCategory,
  zeros,
} from "../ops/mod.ts";
import { type EncoderDims, EncoderForSequenceClassification } from "../models/encoder.ts";
import { ForwardContext } from "../models/context.ts";
import type { WeightSource } from "../models/weights.ts";
import { fullFineTuning } from "../methods/full.ts";
import { lora } from "../methods/lora.ts";
import type { Adapter, MethodContext } from "../methods/types.ts";

/** Shape of the reference step. */
export interface StepShape {
  /** Hidden width H. */
  hidden: number;
  /** Encoder layers. */
  layers: number;
  /** Attention heads. */
  heads: number;
  /** FFN width. */
  ffn: number;
  /** Vocabulary rows. */
  vocab: number;
  /** Sequences per batch. */
  batch: number;
  /** Tokens per sequence. */
  seq: number;
}

/** The reference step: hidden 128, 2 layers, 4 heads, FFN 512, vocab 50265, 16 × 64. */
export const REFERENCE_STEP: StepShape = {
  hidden: 128,
  layers: 2,
  heads: 4,
  ffn: 512,
  vocab: 50265,
  batch: 16,
  seq: 64,
};

/** roberta-base's shape at batch 32 × seq 128 (the GPU benchmark's model). */
export const ROBERTA_BASE_STEP: StepShape = {
  hidden: 768,
  layers: 12,
  heads: 12,
  ffn: 3072,
  vocab: 50265,
  batch: 32,
  seq: 128,
};

/** Which parameters train. */
export type StepMode = "lora" | "full";

/** A prepared step: call `run()` to record one, `dispose()` to free everything. */
export interface StepCase {
  /** The mode. */
  readonly mode: StepMode;
  /** Record one training step (no sync). */
  run(): void;
  /** Trainable parameters (elements). */
  readonly trainable: number;
  /** Free model, optimizer and inputs. */
  dispose(): void;
}

const DROPOUT = 0.1;

/** Random weights as Hugging Face initialises RoBERTa: N(0, 0.02²), LayerNorm 1/0, biases 0. */
function randomWeights(seed: number): WeightSource {
  let stream = 0;
  const make = (name: string, shape: readonly number[]): Tensor => {
    if (name.endsWith("LayerNorm.weight")) return tensor(new Float32Array(shape[0]).fill(1));
    if (name.endsWith(".bias")) return zeros(shape);
    return randNormal(shape, 0, 0.02, { seed, stream: stream++ });
  };
  return {
    get: (name, shape) => withCategory("weights", () => make(name, shape)),
    init: (name, shape) => withCategory("weights", () => make(name, shape)),
  };
}

/**
 * Dimensions of the random RoBERTa for `s`; attention-probability dropout `attentionDropout`
 * (default 0.1, as Hugging Face's roberta-base and the PyTorch peer).
 */
export function encoderDims(s: StepShape, attentionDropout = DROPOUT): EncoderDims {
  return {
    kind: "roberta",
    vocabSize: s.vocab,
    hiddenSize: s.hidden,
    intermediateSize: s.ffn,
    numLayers: s.layers,
    numHeads: s.heads,
    maxPositions: s.seq + 2,
    typeVocabSize: 1,
    layerNormEps: 1e-5,
    hiddenDropout: DROPOUT,
    attentionDropout,
    padTokenId: 1,
    numLabels: 2,
  };
}

/** Build the model, adapter, optimizer and one batch for `mode`; everything is kept. */
export async function prepareStep(
  mode: StepMode,
  shape: StepShape = REFERENCE_STEP,
  seed = 0,
  attentionDropout = DROPOUT,
  firstTokenOnly = true,
): Promise<StepCase> {
  await init();
  const model = new EncoderForSequenceClassification(
    encoderDims(shape, attentionDropout),
    randomWeights(seed),
  );
  // The last layer past its attention on the [CLS] rows alone (the default; same values).
  model.firstTokenOnly = firstTokenOnly;
  const ctx: MethodContext = {
    targets: ["query", "value"],
    lrMultipliers: {},
    weightDecay: 0.01,
    headModules: model.headModules,
    taskType: "SEQ_CLS",
    baseModel: "random-roberta",
    seed,
  };
  const adapter: Adapter = mode === "lora"
    ? lora.apply(model, { r: 8, alpha: 16, dropout: 0.1, rslora: false }, ctx)
    : fullFineTuning.apply(model, { targetsOnly: false }, ctx);
  const groups = adapter.groups();
  const opt = new AdamW(
    groups.map((g) => ({
      params: g.params,
      lr: (mode === "lora" ? 5e-4 : 2e-5) * g.lrMultiplier,
      weightDecay: g.weightDecay,
    })),
  );
  const { batch: b, seq: t, vocab } = shape;
  let state = (seed * 2654435761 + 12345) >>> 0;
  const next = () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
  const ids = new Int32Array(b * t);
  for (let i = 0; i < ids.length; i++) ids[i] = 3 + Math.floor(next() * (vocab - 3));
  for (let i = 0; i < b; i++) {
    ids[i * t] = 0;
    ids[i * t + t - 1] = 2;
  }
  const labels = Int32Array.from({ length: b }, () => Math.floor(next() * 2));
  const idsT = tensor(ids, [b, t]).keep();
  const labelsT = tensor(labels, [b]).keep();
  const maskT = tensor(new Float32Array(b * t).fill(1), [b, t]).keep();
  let step = 0;
  const trainable = groups.reduce((n, g) => n + g.params.reduce((m, p) => m + p.size, 0), 0);
  return {
    mode,
    trainable,
    run() {
      const fctx = new ForwardContext(true, seed, step++);
      scope(() => {
        const logits = fctx.run(() => model.forward({ ids: idsT, attentionMask: maskT }, fctx));
        backward(crossEntropy(logits, labelsT));
      });
      opt.step();
      opt.zeroGrad();
    },
    dispose() {
      opt.dispose();
      model.dispose();
      for (const t of [idsT, labelsT, maskT]) t.dispose();
      rt().clearTextures();
    },
  };
}

/** Timing and memory of one mode over some steps. */
export interface StepMeasure {
  /**
   * Wall time per step of the timed steps recorded back to back and waited for once at the end,
   * ms: how `train()` runs them (it reads the loss back only every `logInterval` steps), so the
   * GPU's completion latency is paid once, not per step. This is the step's cost.
   */
  msPerStep: number;
  /** Median wall time of one step recorded, submitted and waited for alone, ms (its latency). */
  syncedMs: number;
  /** Every synced step, ms. */
  stepsMs: number[];
  /** Dispatches recorded per step. */
  dispatches: number;
  /** Peak live bytes per category over the timed steps, and the peak of the total. */
  peak: Record<Category, number> & { total: number };
}

/**
 * Run `warmup` untimed steps of `c`, then `steps` steps back to back waited for once (the cost
 * per step), then `steps` steps each waited for (the latency), measuring memory over both. Peaks
 * are reported above `baseline` (the live bytes of whatever else the process holds, e.g. another
 * mode's model), so they cover this case alone.
 */
export async function measureStep(
  c: StepCase,
  steps: number,
  warmup = 2,
  baseline: Partial<Record<Category, number>> = {},
): Promise<StepMeasure> {
  for (let i = 0; i < warmup; i++) {
    c.run();
    await rt().sync();
  }
  rt().pool.resetPeak();
  const d0 = rt().dispatchCount;
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) {
    c.run();
    // Submitted at once, as the trainer's steps are: the GPU starts while the next is recorded.
    rt().flush();
  }
  await rt().sync();
  const msPerStep = (performance.now() - t0) / steps;
  const dispatches = (rt().dispatchCount - d0) / steps;
  const stepsMs: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t1 = performance.now();
    c.run();
    await rt().sync();
    stepsMs.push(performance.now() - t1);
  }
  const s = rt().pool.stats();
  let base = 0;
  const peak = { ...s.peak, total: 0 };
  for (const k of CATEGORIES) {
    peak[k] -= baseline[k] ?? 0;
    base += baseline[k] ?? 0;
  }
  peak.total = s.peakTotal - base;
  return { msPerStep, syncedMs: median(stepsMs), stepsMs, dispatches, peak };
}

/** Median of `xs`. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Bytes as MiB with one decimal. */
export function mib(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(1);
}

/** "weights 12.3, grads 4.5, …" for the non-zero categories of a peak record. */
export function categoryLine(peak: Partial<Record<Category, number>>): string {
  return CATEGORIES.filter((c) => (peak[c] ?? 0) > 0).map((c) => `${c} ${mib(peak[c] ?? 0)}`)
    .join(", ");
}
