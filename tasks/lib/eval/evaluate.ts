/**
 * Evaluation: GLUE-style classification/regression with the official metrics, and commonsense QA
 * by generation + first-match answer extraction (LLM-Adapters) or by the log-likelihood of each
 * candidate answer.
 *
 * @module
 */
import {
  crossEntropy,
  noGrad,
  reshape,
  scopeAsync,
  slice,
  type Tensor,
  tensor,
} from "../../../ops/mod.ts";
import { ForwardContext } from "../../../models/context.ts";
import { generate } from "../../../models/generate.ts";
import type { EncoderForSequenceClassification } from "../../../models/encoder.ts";
import type { LlamaForCausalLM } from "../../../models/llama.ts";
import type { Tokenizer } from "../../../models/tokenizer.ts";
import {
  answerCandidates,
  type CommonsenseDataset,
  type CommonsenseRecord,
  extractAnswer,
  scoreCommonsense,
  scoringContinuations,
} from "../data/commonsense.ts";
import {
  collate,
  encodeCommonsensePrompts,
  type Encoded,
  type HostBatch,
} from "../data/pipeline.ts";
import type { GlueTask } from "../data/glue.ts";
import { glueMetrics } from "./metrics.ts";

/** A model that scores sequence-classification batches. */
export type Classifier =
  | { kind: "encoder"; model: EncoderForSequenceClassification }
  | { kind: "decoder"; model: LlamaForCausalLM };

/** Upload a host batch's ids/mask/types. */
export function batchTensors(h: HostBatch): { ids: Tensor; mask: Tensor; typeIds?: Tensor } {
  return {
    ids: tensor(h.ids, [h.b, h.t]),
    mask: tensor(h.mask, [h.b, h.t]),
    typeIds: h.typeIds ? tensor(h.typeIds, [h.b, h.t]) : undefined,
  };
}

/**
 * Classification logits [B, numLabels] of a batch, with the dropout of the running forward
 * context ({@link ForwardContext.current}): the trainer's training context, evaluation elsewhere.
 */
export function classifierLogits(c: Classifier, h: HostBatch): Tensor {
  const { ids, mask, typeIds } = batchTensors(h);
  if (c.kind === "encoder") {
    return c.model.forward({ ids, attentionMask: mask, tokenTypeIds: typeIds });
  }
  return c.model.classify({ ids, keyMask: mask }, h.lastIndex);
}

/** The result of a classification evaluation. */
export interface ClassificationEval {
  /** Official metrics of the task (accuracy, f1, matthews_correlation, pearson, spearmanr). */
  metrics: Record<string, number>;
  /** The task's main score. */
  main: number;
  /** Key of the main score in `metrics`. */
  mainMetric: string;
  /** Examples evaluated. */
  examples: number;
}

/** What a classification evaluation needs to know about its task. */
export interface ClassificationSpec {
  /** The task's name (GLUE tasks pick their official metrics by it). */
  name: string;
  /** Outputs of the head: classes, or 1 for regression. */
  numLabels: number;
  /** Whether the head predicts a real value. */
  isRegression: boolean;
  /** Key of the main score among the metrics. */
  mainMetric: string;
}

/** Metrics of predictions against labels: the named scores and the main one. */
export type ScoreFunction = (
  predictions: number[],
  labels: number[],
) => { metrics: Record<string, number>; main: number };

/** Called after each evaluation batch with the examples done and the total. */
export type EvalProgress = (done: number, total: number) => void;

/**
 * Evaluate a classifier on encoded examples: with `score` (own data), or else the GLUE task's
 * official metrics.
 */
export async function evaluateClassification(
  c: Classifier,
  examples: readonly Encoded[],
  spec: ClassificationSpec,
  batchSize: number,
  padId: number,
  options: { score?: ScoreFunction; onProgress?: EvalProgress } = {},
): Promise<ClassificationEval> {
  const predictions: number[] = [];
  for (let i = 0; i < examples.length; i += batchSize) {
    const h = collate(examples.slice(i, i + batchSize), padId, "right");
    // Evaluation is deterministic: no dropout even if called inside a training forward context.
    const logits = await scopeAsync(() =>
      noGrad(() => ForwardContext.eval().run(() => classifierLogits(c, h))).read()
    );
    const k = spec.numLabels;
    for (let r = 0; r < h.b; r++) {
      if (spec.isRegression) predictions.push(logits[r]);
      else {
        let best = 0;
        for (let j = 1; j < k; j++) if (logits[r * k + j] > logits[r * k + best]) best = j;
        predictions.push(best);
      }
    }
    options.onProgress?.(Math.min(examples.length, i + batchSize), examples.length);
  }
  const labels = examples.map((e) => e.label);
  if (labels.some((l) => l < 0) && !options.score) {
    throw new Error(
      `GLUE ${spec.name}: this split has no labels (a test split); evaluate on validation`,
    );
  }
  const result = options.score
    ? options.score(predictions, labels)
    : glueMetrics(spec.name as GlueTask, predictions, labels);
  return {
    metrics: result.metrics as Record<string, number>,
    main: result.main,
    mainMetric: spec.mainMetric,
    examples: examples.length,
  };
}

/** The result of a language-modelling evaluation (own instruction or text data). */
export interface LmEval {
  /** Mean next-token cross-entropy over the scored (reply) tokens, in nats. */
  loss: number;
  /** exp(loss). */
  perplexity: number;
  /** Tokens scored. */
  tokens: number;
  /** Examples evaluated. */
  examples: number;
}

/**
 * Mean next-token loss over the tokens the examples score (their replies, as in training), summed
 * over every token before dividing, as Hugging Face's `eval_loss` of one batch of everything.
 */
export async function evaluateLmLoss(
  model: LlamaForCausalLM,
  examples: readonly Encoded[],
  batchSize: number,
  padId: number,
  onProgress?: EvalProgress,
): Promise<LmEval> {
  let total = 0, tokens = 0;
  for (let i = 0; i < examples.length; i += batchSize) {
    const h = collate(examples.slice(i, i + batchSize), padId, "right");
    const targets = shiftLabels(h);
    const nll = await scopeAsync(() =>
      noGrad(() => {
        const hidden = model.hidden({
          ids: tensor(h.ids, [h.b, h.t]),
          keyMask: tensor(h.mask, [h.b, h.t]),
        });
        const logits = model.logits(slice(hidden, 1, 0, h.t - 1));
        return crossEntropy(
          reshape(logits, [h.b * (h.t - 1), model.dims.vocabSize]),
          tensor(targets, [targets.length]),
          { ignoreIndex: -100, reduction: "none" },
        );
      }).read()
    );
    for (let j = 0; j < targets.length; j++) {
      if (targets[j] !== -100) {
        total += nll[j];
        tokens++;
      }
    }
    onProgress?.(Math.min(examples.length, i + batchSize), examples.length);
  }
  if (tokens === 0) throw new Error("evaluation: no scored tokens (every reply was truncated)");
  const loss = total / tokens;
  return { loss, perplexity: Math.exp(loss), tokens, examples: examples.length };
}

/** The result of a commonsense evaluation. */
export interface CommonsenseEval {
  /** correct / total, in [0, 1]. */
  accuracy: number;
  /** Records answered correctly. */
  correct: number;
  /** Records evaluated. */
  total: number;
  /** How answers were chosen: generation + extraction, or the most likely candidate. */
  mode: "generate" | "loglik";
  /** Up to 5 examples of what the model produced, for the report. */
  samples: { answer: string; predicted: string; output: string }[];
}

/** Accuracy by greedy generation and first-match answer extraction. */
export async function evaluateCommonsenseGenerate(
  model: LlamaForCausalLM,
  tokenizer: Tokenizer,
  dataset: CommonsenseDataset,
  records: readonly CommonsenseRecord[],
  options: {
    maxNewTokens: number;
    batchSize: number;
    maxPromptTokens: number;
    onProgress?: EvalProgress;
  },
): Promise<CommonsenseEval> {
  const prompts = encodeCommonsensePrompts(tokenizer, records, options.maxPromptTokens);
  const outputs: string[] = [];
  const stop = [tokenizer.eosId].filter((t): t is number => t !== null);
  for (let i = 0; i < prompts.length; i += options.batchSize) {
    const part = prompts.slice(i, i + options.batchSize);
    const gens = await generate(model, part, {
      maxNewTokens: options.maxNewTokens,
      stopTokens: stop,
      padTokenId: tokenizer.padId ?? 0,
    });
    for (const g of gens) outputs.push(tokenizer.decode(g, true));
    options.onProgress?.(outputs.length, prompts.length);
  }
  const score = scoreCommonsense(dataset, records, outputs);
  return {
    accuracy: score.accuracy,
    correct: score.correct,
    total: score.total,
    mode: "generate",
    samples: records.slice(0, 5).map((r, i) => ({
      answer: r.answer,
      predicted: extractAnswer(dataset, outputs[i]),
      output: outputs[i],
    })),
  };
}

/**
 * Accuracy by log-likelihood: each candidate continuation ("the correct answer is X") is scored
 * by the sum of its token log-probabilities after the prompt; the best-scoring candidate is the
 * prediction.
 */
export async function evaluateCommonsenseLoglik(
  model: LlamaForCausalLM,
  tokenizer: Tokenizer,
  dataset: CommonsenseDataset,
  records: readonly CommonsenseRecord[],
  options: { batchSize: number; maxPromptTokens: number; onProgress?: EvalProgress },
): Promise<CommonsenseEval> {
  const prompts = encodeCommonsensePrompts(tokenizer, records, options.maxPromptTokens);
  // One sequence per (record, candidate); the continuation's tokens are the scored ones.
  const seqs: Encoded[] = [];
  const owner: { record: number; candidate: string }[] = [];
  records.forEach((r, i) => {
    const candidates = answerCandidates(dataset, r);
    scoringContinuations(dataset, r).forEach((cont, j) => {
      const full = tokenizer.encode(`${tokenizer.decode(prompts[i], true)}${cont}`).ids;
      const ids = full[full.length - 1] === tokenizer.eosId ? full.slice(0, -1) : full;
      seqs.push({ ids: Int32Array.from(ids), label: 0, promptTokens: prompts[i].length });
      owner.push({ record: i, candidate: candidates[j] });
    });
  });
  const scores = new Float64Array(seqs.length);
  for (let i = 0; i < seqs.length; i += options.batchSize) {
    const items = seqs.slice(i, i + options.batchSize);
    const h = collate(items, tokenizer.padId ?? 0, "right");
    const nll = await scopeAsync(() =>
      noGrad(() => {
        const hidden = model.hidden({
          ids: tensor(h.ids, [h.b, h.t]),
          keyMask: tensor(h.mask, [h.b, h.t]),
        }, ForwardContext.eval());
        const logits = model.logits(slice(hidden, 1, 0, h.t - 1));
        const targets = tensor(shiftLabels(h), [h.b * (h.t - 1)]);
        return crossEntropy(reshape(logits, [h.b * (h.t - 1), model.dims.vocabSize]), targets, {
          ignoreIndex: -100,
          reduction: "none",
        });
      }).read()
    );
    items.forEach((_, r) => {
      let s = 0;
      for (let j = 0; j < h.t - 1; j++) s -= nll[r * (h.t - 1) + j];
      scores[i + r] = s;
    });
    options.onProgress?.(Math.min(seqs.length, i + options.batchSize), seqs.length);
  }
  const best = new Map<number, { score: number; candidate: string }>();
  owner.forEach((o, k) => {
    const cur = best.get(o.record);
    if (!cur || scores[k] > cur.score) {
      best.set(o.record, { score: scores[k], candidate: o.candidate });
    }
  });
  const predicted = records.map((_, i) => best.get(i)?.candidate ?? "");
  const correct = predicted.filter((p, i) => p === records[i].answer).length;
  return {
    accuracy: correct / records.length,
    correct,
    total: records.length,
    mode: "loglik",
    samples: records.slice(0, 5).map((r, i) => ({
      answer: r.answer,
      predicted: predicted[i],
      output: predicted[i],
    })),
  };
}

/** Next-token targets [b·(t−1)]: lmLabels shifted left (−100 where not scored). */
export function shiftLabels(h: HostBatch): Int32Array {
  const out = new Int32Array(h.b * (h.t - 1));
  for (let r = 0; r < h.b; r++) {
    for (let j = 0; j < h.t - 1; j++) out[r * (h.t - 1) + j] = h.lmLabels[r * h.t + j + 1];
  }
  return out;
}

/** Next-token loss of a causal-LM batch (targets: {@link shiftLabels}; −100 ignored). */
export function causalLmLoss(model: LlamaForCausalLM, h: HostBatch): Tensor {
  const hidden = model.hidden({
    ids: tensor(h.ids, [h.b, h.t]),
    keyMask: tensor(h.mask, [h.b, h.t]),
  });
  return model.lmLoss(hidden, tensor(shiftLabels(h), [h.b * (h.t - 1)]));
}
