/**
 * Task setup for own data (the own-data branch of `prepare()`): the tables read, classification
 * or instruction records encoded, the model loaded with the right head, and the loss and the
 * evaluation bound to them.
 *
 * @module
 */
import { crossEntropy, mseLoss, reshape, tensor } from "../../../../ops/mod.ts";
import { loadModel } from "../../../../models/load.ts";
import type { Tokenizer } from "../../../../models/tokenizer.ts";
import type { RunConfig } from "../../train/config.ts";
import type { Prepared } from "../../train/prepare.ts";
import { cachedEncode, encodeGlue } from "../pipeline.ts";
import {
  causalLmLoss,
  type Classifier,
  classifierLogits,
  evaluateClassification,
  evaluateLmLoss,
} from "../../eval/evaluate.ts";
import { ownMetrics } from "../../eval/metrics.ts";
import { DataFileError, type DataTable } from "./readers.ts";
import { labelMaps, ownClassification } from "./classification.ts";
import { conversations, detectFormat, encodeInstructions } from "./instruction.ts";
import { loadChatTemplate } from "./chat_template.ts";
import { readOwnTables } from "./own_task.ts";

/** What a run on own data is. */
export interface OwnTaskInfo {
  /** Always "own". */
  kind: "own";
  /** The run's task name (the file's name unless `task` says otherwise). */
  name: string;
  /** Classification (class ids), regression (a score) or lm (instruction / text data). */
  problem: "classification" | "regression" | "lm";
  /** Class names by id (classification only). */
  labels: string[];
  /** What the scores are on: "validation", "test", an evaluation file, or "train". */
  evalSplit: string;
}

function limit(t: DataTable, n: number | undefined): DataTable {
  return n === undefined || n >= t.rows.length ? t : { ...t, rows: t.rows.slice(0, n) };
}

/**
 * Read, encode and bind an own-data run: classification/regression for any model (a new head),
 * instruction or text data for decoders (reply-only loss, the chat template when the tokenizer
 * config has one).
 */
export async function prepareOwnData(
  config: RunConfig,
  log: (s: string) => void,
  modelDir: string,
  tokenizer: Tokenizer,
): Promise<Prepared> {
  const tables = await readOwnTables(config);
  const train = limit(tables.train, config.trainLimit);
  const noEval = tables.eval === undefined;
  const evaluation = limit(tables.eval ?? tables.train, config.evalLimit);
  if (noEval) {
    log(
      `${config.task}: no evaluation data (--eval-file or a validation split); ` +
        "scores are on training records",
    );
  }
  const padId = tokenizer.padId ?? 0;
  const format = config.format ?? detectFormat(train.columns);
  if (format !== null) {
    if (config.textPairColumn !== undefined || config.labelColumn !== undefined) {
      throw new Error(
        `${train.file}: --text-pair-column / --label-column are for classification data, but ` +
          `the records are ${format} instruction data (--format ${format})`,
      );
    }
    const loaded = await loadModel(modelDir, {
      frozenDtype: config.frozenDtype,
      seed: config.seed,
    });
    if (loaded.kind !== "decoder") {
      throw new Error(
        `${train.file}: ${format} records train a causal LM; ${config.model} is a ` +
          `${loaded.config.model_type} encoder (give classification data a label column)`,
      );
    }
    const model = loaded.model;
    const template = await loadChatTemplate(modelDir);
    const encode = (t: DataTable) => {
      const r = encodeInstructions(
        tokenizer,
        conversations(t, format, config.textColumn),
        template,
        config.maxLength,
      );
      if (r.dropped) {
        log(
          `${t.file}: ${r.dropped} records dropped: no reply token within maxLength ` +
            `${config.maxLength}`,
        );
      }
      if (!r.examples.length) {
        throw new DataFileError(
          t.file,
          `no record has a reply within maxLength ${config.maxLength}`,
        );
      }
      return r.examples;
    };
    const trainSet = encode(train);
    const evalSet = encode(evaluation);
    log(
      `${config.task}: ${trainSet.length} train / ${evalSet.length} ${tables.evalSplit} ${format} ` +
        `records from ${tables.source}; prompts: ${
          template && format !== "text" ? "the model's chat template" : "Alpaca"
        }`,
    );
    const task: OwnTaskInfo = {
      kind: "own",
      name: config.task,
      problem: "lm",
      labels: [],
      evalSplit: tables.evalSplit,
    };
    return {
      task,
      tokenizer,
      loaded,
      train: trainSet,
      padSide: "right",
      padId,
      sequenceClassification: false,
      loss: (h) => causalLmLoss(model, h),
      evaluate: async (onProgress) => {
        const r = await evaluateLmLoss(model, evalSet, config.evalBatchSize, padId, onProgress);
        // main is "higher is better" for best/ and early stopping: the negated loss.
        return {
          scores: { loss: r.loss, perplexity: r.perplexity },
          main: -r.loss,
          mainMetric: "loss",
          detail: r,
        };
      },
    };
  }
  const data = ownClassification(train, noEval ? undefined : evaluation, config);
  const evalExamples = noEval
    ? ownClassification(evaluation, undefined, config, data).train
    : data.eval;
  const isRegression = data.problem === "regression";
  const numLabels = isRegression ? 1 : data.labels.length;
  const tokKey = {
    tokenizer: modelDir,
    vocab: tokenizer.vocabSize,
    maxLength: config.maxLength,
    task: config.task,
    own: data.columns,
    labels: data.labels,
  };
  const trainSet = await cachedEncode(
    { ...tokKey, split: "train", file: train.file },
    data.train,
    () => encodeGlue(tokenizer, data.train, config.maxLength),
  );
  const evalSet = await cachedEncode(
    { ...tokKey, split: tables.evalSplit, file: evaluation.file },
    evalExamples,
    () => encodeGlue(tokenizer, evalExamples, config.maxLength),
  );
  const loaded = await loadModel(modelDir, {
    numLabels,
    classificationHead: true,
    frozenDtype: config.frozenDtype,
    seed: config.seed,
  }).catch((e: Error) => {
    if (!/has shape .* the config implies/.test(e.message)) throw e;
    throw new Error(
      `${e.message}; ${config.task} has ${numLabels} ${isRegression ? "output" : "classes"}, ` +
        "so start from a base checkpoint (one without this classification head)",
    );
  });
  const classifier: Classifier = loaded.kind === "encoder"
    ? { kind: "encoder", model: loaded.model }
    : { kind: "decoder", model: loaded.model };
  const cols = [data.columns.text, data.columns.textPair].filter(Boolean).join(" + ");
  log(
    `${config.task}: ${trainSet.length} train / ${evalSet.length} ${tables.evalSplit} examples ` +
      `from ${tables.source}; ${cols} → ${data.columns.label} (${
        isRegression ? "regression" : `${numLabels} classes: ${data.labels.join(", ")}`
      })`,
  );
  const spec = {
    name: config.task,
    numLabels,
    isRegression,
    mainMetric: isRegression ? "pearson" : "accuracy",
  };
  const score = ownMetrics(data.problem, numLabels);
  const task: OwnTaskInfo = {
    kind: "own",
    name: config.task,
    problem: data.problem,
    labels: data.labels,
    evalSplit: tables.evalSplit,
  };
  return {
    task,
    tokenizer,
    loaded,
    train: trainSet,
    padSide: "right",
    padId,
    sequenceClassification: true,
    labelMaps: labelMaps(data.labels),
    loss: (h) => {
      const logits = classifierLogits(classifier, h);
      if (isRegression) return mseLoss(reshape(logits, [h.b]), tensor(h.labels, [h.b]));
      return crossEntropy(logits, tensor(Int32Array.from(h.labels), [h.b]));
    },
    evaluate: async (onProgress) => {
      const r = await evaluateClassification(
        classifier,
        evalSet,
        spec,
        config.evalBatchSize,
        padId,
        { score, onProgress },
      );
      return { scores: r.metrics, main: r.main, mainMetric: r.mainMetric, detail: r };
    },
  };
}
