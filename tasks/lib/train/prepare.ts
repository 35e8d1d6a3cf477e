/**
 * Task setup for the training loop: the data set read and tokenised, the model loaded, and the
 * loss and evaluation functions of the task bound to them.
 *
 * @module
 */
import { crossEntropy, mseLoss, reshape, type Tensor, tensor } from "../../../ops/mod.ts";
import { type LoadedMaskedLM, type LoadedModel, loadModel } from "../../../models/load.ts";
import { loadTokenizer, type Tokenizer } from "../../../models/tokenizer.ts";
import type { RunConfig } from "./config.ts";
import {
  cachedEncode,
  commonsenseRecords,
  dataSource,
  encodeCommonsenseTrain,
  type Encoded,
  encodeGlue,
  glueExamples,
  type HostBatch,
  resolveTask,
  type TaskInfo,
} from "../data/pipeline.ts";
import {
  causalLmLoss,
  type ClassificationEval,
  type Classifier,
  classifierLogits,
  type CommonsenseEval,
  evaluateClassification,
  evaluateCommonsenseGenerate,
  evaluateCommonsenseLoglik,
} from "../eval/evaluate.ts";
import { resolveModelDir } from "../hub/model_source.ts";
import { usesOwnData } from "../data/own/own_task.ts";
import { type OwnTaskInfo, prepareOwnData } from "../data/own/prepare_own.ts";
import type { LabelMaps } from "../data/own/classification.ts";
import type { EvalProgress, LmEval } from "../eval/evaluate.ts";
import {
  type BatchSource,
  type Objective,
  preparePretraining,
  type PretrainEval,
} from "../pretrain/objective.ts";
import { writePretrainedModel } from "../pretrain/save.ts";

/** One evaluation's scores (flat, for tables). */
export type Scores = Record<string, number>;

/** What a run trains on: a task's data set, or raw text under a pretraining objective. */
export type PreparedTask = TaskInfo | { kind: "pretrain"; name: Objective };

/** A task made ready to train: data encoded, model loaded, loss and evaluation bound. */
export interface Prepared {
  /** A built-in task, raw text under a pretraining objective, or the user's own data. */
  task: PreparedTask | OwnTaskInfo;
  /** The model's tokenizer. */
  tokenizer: Tokenizer;
  /** The model, frozen, with the task's head when it has one. */
  loaded: LoadedModel | LoadedMaskedLM;
  /** The encoded training examples (empty when `batches` streams them). */
  train: Encoded[];
  /** Batches produced on demand (pretraining streams its blocks from disk). */
  batches?: BatchSource;
  /** Write a complete Hugging Face model folder of the trained model (pretraining's output). */
  saveModel?: (dir: string) => Promise<void>;
  /** Evaluate now; `main` is higher-is-better (a loss comes negated). */
  evaluate: (onProgress?: EvalProgress) => Promise<
    {
      scores: Scores;
      main: number;
      mainMetric: string;
      detail: ClassificationEval | CommonsenseEval | PretrainEval | LmEval;
    }
  >;
  /** The task's loss of one batch (records onto the tape). */
  loss: (h: HostBatch) => Tensor;
  /** Where batches are padded. */
  padSide: "left" | "right";
  /** The padding token id. */
  padId: number;
  /** Whether the model has a sequence-classification head (else it trains as a causal LM). */
  sequenceClassification: boolean;
  /** Own classification data: Hugging Face's label maps of the new head. */
  labelMaps?: LabelMaps;
}

/**
 * Resolve the task's data and the model, tokenise (cached), load the model (frozen) and bind the
 * task's loss and evaluation: the first half of `train()`'s data flow.
 */
export async function prepare(config: RunConfig, log: (s: string) => void): Promise<Prepared> {
  if (config.objective) return await preparePretrainingRun(config, log);
  const modelDir = await resolveModelDir(config.model, config.offline);
  const tokenizer = await loadTokenizer(
    config.tokenizer ? await resolveModelDir(config.tokenizer, config.offline) : modelDir,
  );
  if (usesOwnData(config)) return await prepareOwnData(config, log, modelDir, tokenizer);
  const task = resolveTask(config.task);
  const source = await dataSource(task, config.data, config.offline);
  const padId = tokenizer.padId ?? 0;
  const tokKey = {
    tokenizer: modelDir,
    vocab: tokenizer.vocabSize,
    maxLength: config.maxLength,
    task: config.task,
  };
  if (task.kind === "glue") {
    const [trainEx, evalEx] = await Promise.all([
      glueExamples(task.name, "train", source, config.trainLimit),
      glueExamples(task.name, task.evalSplit, source, config.evalLimit),
    ]);
    const train = await cachedEncode(
      { ...tokKey, split: "train" },
      trainEx,
      () => encodeGlue(tokenizer, trainEx, config.maxLength),
    );
    const evalSet = await cachedEncode(
      { ...tokKey, split: task.evalSplit },
      evalEx,
      () => encodeGlue(tokenizer, evalEx, config.maxLength),
    );
    const loaded = await loadModel(modelDir, {
      numLabels: task.spec.numLabels,
      classificationHead: true,
      frozenDtype: config.frozenDtype,
      seed: config.seed,
      fromScratch: config.fromScratch,
    });
    const classifier: Classifier = loaded.kind === "encoder"
      ? { kind: "encoder", model: loaded.model }
      : { kind: "decoder", model: loaded.model };
    log(
      `${task.name}: ${train.length} train / ${evalSet.length} ${task.evalSplit} examples from ${source}`,
    );
    return {
      task,
      tokenizer,
      loaded,
      train,
      padSide: "right",
      padId,
      sequenceClassification: true,
      loss: (h) => {
        const logits = classifierLogits(classifier, h);
        if (task.spec.isRegression) return mseLoss(reshape(logits, [h.b]), tensor(h.labels, [h.b]));
        return crossEntropy(logits, tensor(Int32Array.from(h.labels), [h.b]));
      },
      evaluate: async (onProgress) => {
        const r = await evaluateClassification(
          classifier,
          evalSet,
          task.spec,
          config.evalBatchSize,
          padId,
          { onProgress },
        );
        return { scores: r.metrics, main: r.main, mainMetric: r.mainMetric, detail: r };
      },
    };
  }
  const loaded = await loadModel(modelDir, {
    frozenDtype: config.frozenDtype,
    seed: config.seed,
    fromScratch: config.fromScratch,
  });
  if (loaded.kind !== "decoder") {
    throw new Error(
      `commonsense tasks train a causal LM; ${config.model} is a ${loaded.config.model_type} encoder`,
    );
  }
  const model = loaded.model;
  const [trainRec, evalRec] = await Promise.all([
    commonsenseRecords(task.name, "train", source, config.trainLimit),
    commonsenseRecords(task.name, "test", source, config.evalLimit),
  ]);
  const train = await cachedEncode(
    { ...tokKey, split: "train", lm: true },
    trainRec,
    () => encodeCommonsenseTrain(tokenizer, trainRec, config.maxLength),
  );
  log(`${task.name}: ${train.length} train / ${evalRec.length} test records from ${source}`);
  return {
    task,
    tokenizer,
    loaded,
    train,
    padSide: "right",
    padId,
    sequenceClassification: false,
    loss: (h) => causalLmLoss(model, h),
    evaluate: async (onProgress) => {
      const opts = {
        batchSize: config.evalBatchSize,
        maxPromptTokens: model.dims.maxPositions - config.maxNewTokens,
        onProgress,
      };
      const r = config.evalMode === "loglik"
        ? await evaluateCommonsenseLoglik(model, tokenizer, task.name, evalRec, opts)
        : await evaluateCommonsenseGenerate(model, tokenizer, task.name, evalRec, {
          ...opts,
          maxNewTokens: config.maxNewTokens,
        });
      return {
        scores: { accuracy: r.accuracy },
        main: r.accuracy,
        mainMetric: "accuracy",
        detail: r,
      };
    },
  };
}

/** A pretraining objective's run: streamed blocks, its LM loss, held-out loss and accuracy. */
async function preparePretrainingRun(
  config: RunConfig,
  log: (s: string) => void,
): Promise<Prepared> {
  const p = await preparePretraining(config, log);
  return {
    task: { kind: "pretrain", name: p.objective },
    tokenizer: p.tokenizer,
    loaded: p.loaded,
    train: [],
    batches: p.batches,
    padSide: "right",
    padId: p.tokenizer.padId ?? 0,
    sequenceClassification: false,
    loss: p.loss,
    evaluate: async () => {
      const r = await p.evaluate();
      return {
        scores: { loss: r.loss, perplexity: r.perplexity, accuracy: r.accuracy },
        main: r.accuracy,
        mainMetric: "accuracy",
        detail: r,
      };
    },
    saveModel: (dir) => writePretrainedModel(dir, p.loaded, p.modelDir, p.tokenizerDir),
  };
}
