/**
 * `deno task evaluate --eval-file F` on own data: the run's own-data settings (columns, format,
 * label maps) are read from the run folder's config.json beside the adapter, so a trained run is
 * evaluated on a new file with the same label ids; flags override them.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { loadModel } from "../../../../models/load.ts";
import type { Tokenizer } from "../../../../models/tokenizer.ts";
import type { Module } from "../../../../models/module.ts";
import {
  type Classifier,
  type EvalProgress,
  evaluateClassification,
  evaluateLmLoss,
} from "../../eval/evaluate.ts";
import { ownMetrics } from "../../eval/metrics.ts";
import { cachedEncode, encodeGlue } from "../pipeline.ts";
import { ownClassification } from "./classification.ts";
import {
  conversations,
  detectFormat,
  encodeInstructions,
  type InstructionFormat,
} from "./instruction.ts";
import { loadChatTemplate } from "./chat_template.ts";
import { type DataTable, readDataFile } from "./readers.ts";

/** Own-data settings of an evaluation (flags; absent ones come from the run's config.json). */
export interface OwnEvalSettings {
  /** The file to evaluate on. */
  evalFile: string;
  /** Classification columns. */
  textColumn?: string;
  /** See {@link OwnEvalSettings.textColumn}. */
  textPairColumn?: string;
  /** See {@link OwnEvalSettings.textColumn}. */
  labelColumn?: string;
  /** Instruction format. */
  format?: InstructionFormat;
  /** Tokens per example; default the run's maxLength, else 128. */
  maxLength?: number;
  /** Evaluate only the first `limit` records. */
  limit?: number;
  /** Examples per batch. */
  batchSize: number;
  /** Frozen weights' storage type. */
  frozenDtype?: "f32" | "f16";
  /** The adapter folder put on the model (absent: the base model, a new head is untrained). */
  adapter?: string;
}

/** What the run folder's config.json says about its own data, when it was an own-data run. */
export interface RunDataSettings {
  /** The run's task name. */
  task?: string;
  /** Own-data column settings. */
  textColumn?: string;
  /** See {@link RunDataSettings.textColumn}. */
  textPairColumn?: string;
  /** See {@link RunDataSettings.textColumn}. */
  labelColumn?: string;
  /** Instruction format. */
  format?: InstructionFormat;
  /** Tokens per example. */
  maxLength?: number;
  /** Class names by id (own classification and regression runs). */
  id2label?: Record<string, string>;
  /** "single_label_classification" or "regression" (Hugging Face's name). */
  problem_type?: string;
}

/**
 * The run settings of an adapter folder's run (`{run}/adapter` or `{run}/best` next to
 * `{run}/config.json`), or {} when there is no such file.
 */
export async function runDataSettings(adapterDir: string | undefined): Promise<RunDataSettings> {
  if (!adapterDir) return {};
  const file = join(dirname(adapterDir.replace(/[/\\]+$/, "")), "config.json");
  try {
    const raw = JSON.parse(await Deno.readTextFile(file));
    return raw && typeof raw === "object" ? raw as RunDataSettings : {};
  } catch {
    return {};
  }
}

/** The result of an own-data evaluation. */
export interface OwnEvalResult {
  /** Metrics (accuracy/f1, mse/pearson/spearmanr, or loss/perplexity). */
  metrics: Record<string, number>;
  /** Key of the main metric. */
  mainMetric: string;
  /** Its value. */
  main: number;
  /** Examples evaluated. */
  examples: number;
}

/**
 * Evaluate a model (after `attach` puts the adapter on it) on an own data file: classification or
 * regression with the run's label maps, or the reply loss of instruction records.
 */
export async function evaluateOwnFile(
  modelDir: string,
  tokenizer: Tokenizer,
  o: OwnEvalSettings,
  run: RunDataSettings,
  attach: (m: Module, taskType: "SEQ_CLS" | "CAUSAL_LM") => Promise<void>,
  onProgress?: EvalProgress,
): Promise<OwnEvalResult> {
  let t: DataTable = await readDataFile(o.evalFile);
  if (o.limit !== undefined) t = { ...t, rows: t.rows.slice(0, o.limit) };
  const maxLength = o.maxLength ?? run.maxLength ?? 128;
  const padId = tokenizer.padId ?? 0;
  const format = o.format ?? run.format ?? detectFormat(t.columns);
  if (format !== null) {
    const loaded = await loadModel(modelDir, { frozenDtype: o.frozenDtype });
    if (loaded.kind !== "decoder") {
      throw new Error(`${o.evalFile}: ${format} records need a decoder; ${modelDir} is an encoder`);
    }
    await attach(loaded.model, "CAUSAL_LM");
    const template = await loadChatTemplate(modelDir);
    const enc = encodeInstructions(
      tokenizer,
      conversations(t, format, o.textColumn ?? run.textColumn),
      template,
      maxLength,
    );
    if (enc.dropped) {
      console.error(
        `${o.evalFile}: ${enc.dropped} records skipped: no reply token within maxLength ${maxLength}`,
      );
    }
    const r = await evaluateLmLoss(loaded.model, enc.examples, o.batchSize, padId, onProgress);
    loaded.model.dispose();
    return {
      metrics: { loss: r.loss, perplexity: r.perplexity },
      mainMetric: "loss",
      main: r.loss,
      examples: r.examples,
    };
  }
  const columns = {
    textColumn: o.textColumn ?? run.textColumn,
    textPairColumn: o.textPairColumn ?? run.textPairColumn,
    labelColumn: o.labelColumn ?? run.labelColumn,
  };
  const known = run.problem_type === "regression"
    ? { problem: "regression" as const, labels: [] }
    : run.id2label
    ? {
      problem: "classification" as const,
      labels: Object.keys(run.id2label).sort((a, b) => Number(a) - Number(b)).map((k) =>
        run.id2label![k]
      ),
    }
    : undefined;
  const data = ownClassification(t, undefined, columns, known);
  const isRegression = data.problem === "regression";
  const numLabels = isRegression ? 1 : data.labels.length;
  const encoded = await cachedEncode(
    {
      tokenizer: modelDir,
      vocab: tokenizer.vocabSize,
      maxLength,
      own: data.columns,
      labels: data.labels,
      file: o.evalFile,
    },
    data.train,
    () => encodeGlue(tokenizer, data.train, maxLength),
  );
  const loaded = await loadModel(modelDir, {
    numLabels,
    classificationHead: true,
    frozenDtype: o.frozenDtype,
  });
  await attach(loaded.model, "SEQ_CLS");
  if (!o.adapter && loaded.newlyInitialized.length) {
    console.error(
      `warning: ${
        loaded.newlyInitialized.join(", ")
      } newly initialised (no trained head): scores are untrained`,
    );
  }
  const c: Classifier = loaded.kind === "encoder"
    ? { kind: "encoder", model: loaded.model }
    : { kind: "decoder", model: loaded.model };
  const r = await evaluateClassification(
    c,
    encoded,
    {
      name: run.task ?? o.evalFile,
      numLabels,
      isRegression,
      mainMetric: isRegression ? "pearson" : "accuracy",
    },
    o.batchSize,
    padId,
    { score: ownMetrics(data.problem, numLabels), onProgress },
  );
  loaded.model.dispose();
  return { metrics: r.metrics, mainMetric: r.mainMetric, main: r.main, examples: r.examples };
}
