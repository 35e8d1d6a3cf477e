/**
 * `deno task report RUNS_DIR [--out DIR] [--score final|best] [--digits N]` — the benchmark
 * tables and charts of every run under a folder: report.md, report.csv, report_pivot.csv and a
 * self-contained report.html.
 *
 * @module
 */
import { parseFlags, parseNumberFlag, runCli, UsageError } from "./lib/cli/runner.ts";
import { parseReportOptions, type ReportOptions, writeReport } from "./lib/report/report.ts";

const USAGE = `usage: deno task report RUNS_DIR [options]

  RUNS_DIR                folder searched recursively for summary.json (+ metrics.jsonl)
  --out DIR               where report.md/.csv/.html go (default RUNS_DIR)
  --score final|best      score a run by its final or its best evaluation (default final)
  --digits N              decimals of scores (default 1)`;

/** Parse the command line of `deno task report` into validated options (null: --help). */
export function reportOptionsFromArgs(args: string[]): ReportOptions | null {
  const { values, positionals } = parseFlags(
    args,
    {
      out: { type: "string" },
      score: { type: "string" },
      digits: { type: "string" },
      help: { type: "boolean", short: "h" },
    } as const,
    { command: "report", positionals: 1 },
  );
  if (values.help) return null;
  if (positionals.length !== 1) {
    throw new UsageError(
      `expected one RUNS_DIR, got ${positionals.length} (see deno task report --help)`,
    );
  }
  const raw: Record<string, unknown> = { runsDir: positionals[0] };
  if (values.out !== undefined) raw.out = values.out;
  if (values.score !== undefined) raw.score = values.score;
  if (values.digits !== undefined) {
    raw.digits = parseNumberFlag("digits", values.digits, { integer: true, min: 0, max: 4 });
  }
  try {
    return parseReportOptions(raw, "flags");
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

if (import.meta.main) {
  await runCli(async () => {
    const options = reportOptionsFromArgs(Deno.args);
    if (options === null) {
      console.log(USAGE);
      return 0;
    }
    const { report, files, warnings } = await writeReport(options);
    for (const w of warnings) console.error(`warning: ${w}`);
    console.log(
      `${report.runs.length} runs → ${report.pivot.rows.length} rows × ${report.pivot.tasks.length} tasks\n` +
        Object.values(files).map((f) => `  ${f}`).join("\n"),
    );
  });
}
