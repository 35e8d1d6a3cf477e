/**
 * Library side of `deno task evaluate`: a model (optionally with an adapter folder, also one
 * written by Hugging Face PEFT) on a task split → metrics and a readable table.
 *
 * @module
 */
import { gpu, init } from "../../../ops/mod.ts";
import { loadModel } from "../../../models/load.ts";
import { loadTokenizer } from "../../../models/tokenizer.ts";
import { loadAdapter } from "../../../methods/registry.ts";
import {
  cachedEncode,
  commonsenseRecords,
  dataSource,
  encodeGlue,
  glueExamples,
  resolveTask,
} from "../data/pipeline.ts";
import {
  type Classifier,
  evaluateClassification,
  evaluateCommonsenseGenerate,
  evaluateCommonsenseLoglik,
} from "./evaluate.ts";
import { resolveModelDir } from "../hub/model_source.ts";
import { evaluateOwnFile, runDataSettings } from "../data/own/evaluate_own.ts";
import type { InstructionFormat } from "../data/own/instruction.ts";
import { Progress } from "../cli/progress.ts";

/** Options of {@link runEvaluation}. */
export interface EvaluationOptions {
  /** A Hugging Face repo id or a local model folder. */
  model: string;
  /** An adapter folder (PEFT format or this toolkit's) applied to the model; absent: base model. */
  adapter?: string;
  /**
   * A GLUE task (sst2, cola, …) or a commonsense data set (boolq, piqa, …); with `evalFile` only
   * a name for the report (default: the run's task, else the file).
   */
  task?: string;
  /** Own data: evaluate on this file (.jsonl, .json, .csv, .tsv, .parquet) instead of a task. */
  evalFile?: string;
  /** Own data: columns and format (default: the adapter's run config.json, else detected). */
  textColumn?: string;
  /** See {@link EvaluationOptions.textColumn}. */
  textPairColumn?: string;
  /** See {@link EvaluationOptions.textColumn}. */
  labelColumn?: string;
  /** See {@link EvaluationOptions.textColumn}. */
  format?: InstructionFormat;
  /** Show a progress bar on stderr; default false. */
  progress?: boolean;
  /** Local data folder (GLUE or commonsense root); absent: download. */
  data?: string;
  /** Split name; default validation (GLUE; validation_matched for MNLI) or test (commonsense). */
  split?: string;
  /** Evaluate only the first `limit` examples. */
  limit?: number;
  /** Examples per batch; default 32. */
  batchSize?: number;
  /** GLUE: tokens per example after truncation; default 128. */
  maxLength?: number;
  /** Commonsense: answer by generation (default) or by candidate log-likelihood. */
  evalMode?: "generate" | "loglik";
  /** Commonsense generation: most tokens generated per answer; default 32. */
  maxNewTokens?: number;
  /** Storage type of the frozen matrices on the GPU; default "f32". */
  frozenDtype?: "f32" | "f16";
  /** Never touch the network; default false. */
  offline?: boolean;
}

/** What an evaluation reports. */
export interface EvaluationReport {
  /** The model as given. */
  model: string;
  /** The adapter folder, or null for the base model. */
  adapter: string | null;
  /** The task's canonical name. */
  task: string;
  /** The split evaluated. */
  split: string;
  /** Examples evaluated. */
  examples: number;
  /** The task's official metrics (commonsense: accuracy and the count correct). */
  metrics: Record<string, number>;
  /** Key of the main metric in `metrics`. */
  mainMetric: string;
  /** Value of the main metric. */
  main: number;
  /** Wall-clock seconds of the whole evaluation, loading included. */
  seconds: number;
  /** Name of the WebGPU adapter. */
  device: string;
  /** Commonsense: a few generations with their extracted answers. */
  samples?: { answer: string; predicted: string; output: string }[];
}

/** Evaluate a model (+ adapter) on a task split. */
export async function runEvaluation(o: EvaluationOptions): Promise<EvaluationReport> {
  await init();
  const started = performance.now();
  const modelDir = await resolveModelDir(o.model, o.offline ?? false);
  const tokenizer = await loadTokenizer(modelDir);
  let bar: Progress | null = null;
  const onProgress = (done: number, total: number) => {
    bar ??= new Progress(total, Deno.stderr.isTerminal(), o.progress === true, {
      label: "eval",
      every: 0.25,
      start: started,
    });
    bar.count(done);
  };
  if (o.evalFile) {
    const run = await runDataSettings(o.adapter);
    const r = await evaluateOwnFile(
      modelDir,
      tokenizer,
      {
        evalFile: o.evalFile,
        textColumn: o.textColumn,
        textPairColumn: o.textPairColumn,
        labelColumn: o.labelColumn,
        format: o.format,
        maxLength: o.maxLength,
        limit: o.limit,
        batchSize: o.batchSize ?? 32,
        frozenDtype: o.frozenDtype,
        adapter: o.adapter,
      },
      run,
      (m, taskType) => attachAdapter(o, m, taskType),
      onProgress,
    );
    (bar as Progress | null)?.finish();
    return {
      model: o.model,
      adapter: o.adapter ?? null,
      task: o.task ?? run.task ?? o.evalFile,
      split: o.evalFile,
      examples: r.examples,
      metrics: r.metrics,
      mainMetric: r.mainMetric,
      main: r.main,
      seconds: (performance.now() - started) / 1000,
      device: gpu().adapter.name,
    };
  }
  if (!o.task) throw new Error("evaluate: pass --task NAME or --eval-file FILE");
  const task = resolveTask(o.task);
  const source = await dataSource(task, o.data, o.offline ?? false);
  const split = o.split ?? task.evalSplit;
  const batchSize = o.batchSize ?? 32;
  const base = {
    model: o.model,
    adapter: o.adapter ?? null,
    task: task.name,
    split,
    device: gpu().adapter.name,
  };
  const attach = (m: Parameters<typeof loadAdapter>[0], taskType: "SEQ_CLS" | "CAUSAL_LM") =>
    attachAdapter(o, m, taskType);
  if (task.kind === "glue") {
    const examples = await glueExamples(task.name, split, source, o.limit);
    const maxLength = o.maxLength ?? 128;
    const encoded = await cachedEncode(
      { tokenizer: modelDir, vocab: tokenizer.vocabSize, maxLength, task: task.name, split },
      examples,
      () => encodeGlue(tokenizer, examples, maxLength),
    );
    const loaded = await loadModel(modelDir, {
      numLabels: task.spec.numLabels,
      classificationHead: true,
      frozenDtype: o.frozenDtype,
    });
    await attach(loaded.model, "SEQ_CLS");
    const c: Classifier = loaded.kind === "encoder"
      ? { kind: "encoder", model: loaded.model }
      : { kind: "decoder", model: loaded.model };
    if (!o.adapter && loaded.newlyInitialized.length) {
      console.error(
        `warning: ${
          loaded.newlyInitialized.join(", ")
        } newly initialised (no trained head): scores are untrained`,
      );
    }
    const r = await evaluateClassification(c, encoded, task.spec, batchSize, tokenizer.padId ?? 0, {
      onProgress,
    });
    (bar as Progress | null)?.finish();
    loaded.model.dispose();
    return {
      ...base,
      examples: r.examples,
      metrics: r.metrics,
      mainMetric: r.mainMetric,
      main: r.main,
      seconds: (performance.now() - started) / 1000,
    };
  }
  if (split !== "train" && split !== "test") {
    throw new Error(`commonsense split must be train or test, got ${split}`);
  }
  const records = await commonsenseRecords(task.name, split, source, o.limit);
  const loaded = await loadModel(modelDir, { frozenDtype: o.frozenDtype });
  if (loaded.kind !== "decoder") {
    throw new Error(`commonsense evaluation needs a decoder; ${o.model} is an encoder`);
  }
  await attach(loaded.model, "CAUSAL_LM");
  const maxNewTokens = o.maxNewTokens ?? 32;
  const opts = {
    batchSize,
    maxPromptTokens: loaded.model.dims.maxPositions - maxNewTokens,
    onProgress,
  };
  const r = o.evalMode === "loglik"
    ? await evaluateCommonsenseLoglik(loaded.model, tokenizer, task.name, records, opts)
    : await evaluateCommonsenseGenerate(loaded.model, tokenizer, task.name, records, {
      ...opts,
      maxNewTokens,
    });
  (bar as Progress | null)?.finish();
  loaded.model.dispose();
  return {
    ...base,
    examples: r.total,
    metrics: { accuracy: r.accuracy, correct: r.correct },
    mainMetric: "accuracy",
    main: r.accuracy,
    seconds: (performance.now() - started) / 1000,
    samples: r.samples,
  };
}

/** Put the evaluation's adapter (if any) on `m`. */
async function attachAdapter(
  o: EvaluationOptions,
  m: Parameters<typeof loadAdapter>[0],
  taskType: "SEQ_CLS" | "CAUSAL_LM",
): Promise<void> {
  if (!o.adapter) return;
  await loadAdapter(m, o.adapter, {
    lrMultipliers: {},
    weightDecay: 0,
    taskType,
    baseModel: o.model,
    seed: 0,
  });
}

/** A readable table of a report. */
export function formatReport(r: EvaluationReport): string {
  const rows: [string, string][] = [
    ["model", r.model],
    ["adapter", r.adapter ?? "—"],
    ["task / split", `${r.task} / ${r.split}`],
    ["examples", String(r.examples)],
    ...Object.entries(r.metrics).map((
      [k, v],
    ): [string, string] => [k, Number.isInteger(v) ? String(v) : v.toFixed(4)]),
    ["seconds", r.seconds.toFixed(1)],
    ["device", r.device],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join("\n");
}
