/**
 * `deno task evaluate --model DIR|REPO --task NAME [--adapter DIR] [--data DIR] [--split S]`
 *
 * Evaluate a model, optionally with an adapter folder (ours or Hugging Face PEFT's), on a task
 * split; prints a table and writes the metrics as JSON with `--output FILE`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { writeTextAtomic } from "../methods/peft.ts";
import { formatReport, runEvaluation } from "./lib/eval/run_eval.ts";
import { INSTRUCTION_FORMATS } from "./lib/data/own/instruction.ts";

const USAGE = `usage: deno task evaluate --model DIR|REPO --task NAME [--adapter DIR] [--data DIR]
        [--split NAME] [--limit N] [--batch-size N] [--max-length N]
   or: deno task evaluate --model DIR|REPO [--adapter RUN/adapter] --eval-file FILE
        [--text-column C] [--text-pair-column C] [--label-column C]
        [--format alpaca|sharegpt|messages|text]   (defaults: the run's config.json)
        [--eval-mode generate|loglik] [--max-new-tokens N] [--frozen-dtype f32|f16]
        [--output FILE.json] [--offline]`;

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      adapter: { type: "string" },
      task: { type: "string" },
      "eval-file": { type: "string" },
      "text-column": { type: "string" },
      "text-pair-column": { type: "string" },
      "label-column": { type: "string" },
      format: { type: "string" },
      data: { type: "string" },
      split: { type: "string" },
      limit: { type: "string" },
      "batch-size": { type: "string" },
      "max-length": { type: "string" },
      "eval-mode": { type: "string" },
      "max-new-tokens": { type: "string" },
      "frozen-dtype": { type: "string" },
      output: { type: "string" },
      offline: { type: "boolean" },
      help: { type: "boolean" },
    },
  });
  if (values.help || !values.model || !(values.task || values["eval-file"])) {
    console.log(USAGE);
    Deno.exit(values.help ? 0 : 2);
  }
  const int = (flag: string, v: string | undefined) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) {
      console.error(`--${flag}: expected a positive integer, got "${v}"`);
      Deno.exit(2);
    }
    return n;
  };
  const choice = <T extends string>(flag: string, v: string | undefined, allowed: readonly T[]) => {
    if (v === undefined) return undefined;
    if (!allowed.includes(v as T)) {
      console.error(`--${flag}: expected one of ${allowed.join(", ")}, got "${v}"`);
      Deno.exit(2);
    }
    return v as T;
  };
  try {
    const report = await runEvaluation({
      model: values.model,
      adapter: values.adapter,
      task: values.task,
      evalFile: values["eval-file"],
      textColumn: values["text-column"],
      textPairColumn: values["text-pair-column"],
      labelColumn: values["label-column"],
      format: choice("format", values.format, INSTRUCTION_FORMATS),
      progress: true,
      data: values.data,
      split: values.split,
      limit: int("limit", values.limit),
      batchSize: int("batch-size", values["batch-size"]),
      maxLength: int("max-length", values["max-length"]),
      evalMode: choice("eval-mode", values["eval-mode"], ["generate", "loglik"] as const),
      maxNewTokens: int("max-new-tokens", values["max-new-tokens"]),
      frozenDtype: choice("frozen-dtype", values["frozen-dtype"], ["f32", "f16"] as const),
      offline: values.offline,
    });
    console.log(formatReport(report));
    if (values.output) await writeTextAtomic(values.output, JSON.stringify(report, null, 2) + "\n");
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
