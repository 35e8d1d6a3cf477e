/**
 * `deno task evaluate --model DIR|REPO --task NAME [--adapter DIR] [--data DIR] [--split S]`
 *
 * Evaluate a model, optionally with an adapter folder (ours or Hugging Face PEFT's), on a task
 * split; prints a table and writes the metrics as JSON with `--output FILE`.
 *
 * @module
 */
import { writeTextAtomic } from "../methods/peft.ts";
import {
  parseChoiceFlag,
  parseFlags,
  parseNumberFlag,
  requireFlags,
  runCli,
} from "./lib/cli/runner.ts";
import { formatReport, runEvaluation } from "./lib/eval/run_eval.ts";
import { INSTRUCTION_FORMATS } from "./lib/data/own/instruction.ts";

const USAGE = `usage: deno task evaluate --model DIR|REPO --task NAME [--adapter DIR] [--data DIR]
        [--split NAME] [--limit N] [--batch-size N] [--max-length N]
        [--eval-mode generate|loglik] [--max-new-tokens N] [--frozen-dtype f32|f16]
        [--output FILE.json] [--offline]
   or: deno task evaluate --model DIR|REPO [--adapter RUN/adapter] --eval-file FILE
        [--text-column C] [--text-pair-column C] [--label-column C]
        [--format alpaca|sharegpt|messages|text]   (defaults: the run's config.json)`;

const FLAGS = {
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
  help: { type: "boolean", short: "h" },
} as const;

/** Run `deno task evaluate` with these arguments; returns the exit code (errors throw). */
export async function evaluateCli(args: readonly string[]): Promise<number> {
  const { values } = parseFlags(args, FLAGS, { command: "evaluate" });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  requireFlags(values, values["eval-file"] ? ["model"] : ["model", "task"], "evaluate");
  const int = (flag: keyof typeof FLAGS, min = 1) => {
    const v = values[flag];
    return typeof v === "string" ? parseNumberFlag(flag, v, { integer: true, min }) : undefined;
  };
  const choice = <T extends string>(flag: keyof typeof FLAGS, allowed: readonly T[]) => {
    const v = values[flag];
    return typeof v === "string" ? parseChoiceFlag(flag, v, allowed) : undefined;
  };
  const options = {
    model: values.model!,
    adapter: values.adapter,
    task: values.task,
    evalFile: values["eval-file"],
    textColumn: values["text-column"],
    textPairColumn: values["text-pair-column"],
    labelColumn: values["label-column"],
    format: choice("format", INSTRUCTION_FORMATS),
    progress: true,
    data: values.data,
    split: values.split,
    limit: int("limit"),
    batchSize: int("batch-size"),
    maxLength: int("max-length", 8),
    evalMode: choice("eval-mode", ["generate", "loglik"] as const),
    maxNewTokens: int("max-new-tokens"),
    frozenDtype: choice("frozen-dtype", ["f32", "f16"] as const),
    offline: values.offline,
  };
  const report = await runEvaluation(options);
  console.log(formatReport(report));
  if (values.output) {
    await writeTextAtomic(values.output, JSON.stringify(report, null, 2) + "\n").catch((e) => {
      throw new Error(`${values.output}: cannot write the report (${(e as Error).message})`);
    });
  }
  return 0;
}

if (import.meta.main) await runCli(() => evaluateCli(Deno.args));
