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
export * from "./glue.ts";
export * from "./commonsense.ts";
export * from "./metrics.ts";
export * from "./config.ts";
export * from "./data.ts";
export * from "./evaluate.ts";
export * from "./trainer.ts";
export * from "./run_eval.ts";
export * from "./merge.ts";
export * from "./generate.ts";
export * from "./hub.ts";
export * from "./model_source.ts";
export * from "./progress.ts";
export * from "./version.ts";
export * from "./sweep.ts";
export * from "./report.ts";
