/**
 * Library code behind the task entry points: data sets (GLUE, commonsense reasoning) and their
 * official metrics. Other modules (training loop, sweep, report) append their exports below.
 *
 * @example
 * ```ts
 * import { glueMetrics, loadGlue } from "./mod.ts";
 * const dev = await loadGlue("cola", "validation", { source: "../shared/data/glue" });
 * const labels = dev.map((e) => e.label);
 * console.log(glueMetrics("cola", labels, labels).main); // 1
 * ```
 *
 * @module
 */
export * from "./data/glue.ts";
export * from "./data/commonsense.ts";
export * from "./eval/metrics.ts";
export * from "./train/config.ts";
export * from "./data/pipeline.ts";
export * from "./eval/evaluate.ts";
export * from "./train/trainer.ts";
export * from "./eval/run_eval.ts";
export * from "./output/merge.ts";
export * from "./eval/generate.ts";
export * from "./hub/hub.ts";
export * from "./hub/model_source.ts";
export * from "./cli/progress.ts";
export * from "./version.ts";
export * from "./sweep/sweep.ts";
export * from "./report/report.ts";
export * from "./train/aliases.ts";
export * from "./train/prepare.ts";
export * from "./data/own/readers.ts";
export * from "./data/own/classification.ts";
export * from "./data/own/instruction.ts";
export * from "./data/own/chat_template.ts";
export * from "./data/own/own_task.ts";
export * from "./data/own/prepare_own.ts";
export * from "./data/own/evaluate_own.ts";
export * from "./cli/runner.ts";
export * from "./train/lock.ts";
export * from "./train/run_folder.ts";
export * from "./train/validate.ts";
export * from "./train/checkpoint.ts";
