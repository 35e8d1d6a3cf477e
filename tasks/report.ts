/**
 * `deno task report RUNS_DIR [--out DIR] [--score final|best] [--digits N]` — the benchmark
 * tables and charts of every run under a folder: report.md, report.tex, report.csv, report_pivot.csv and a
 * self-contained report.html.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { parseReportOptions, type ReportOptions, writeReport } from "./lib/report/report.ts";

const USAGE = `usage: deno task report RUNS_DIR [options]

  RUNS_DIR                folder searched recursively for summary.json (+ metrics.jsonl)
  --out DIR               where report.md/.tex/.csv/.html go (default RUNS_DIR)
  --score final|best      score a run by its final or its best evaluation (default final)
  --digits N              decimals of scores (default 1)`;

/** Parse the command line of `deno task report` into validated options (null: --help). */
export function reportOptionsFromArgs(args: string[]): ReportOptions | null {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        out: { type: "string" },
        score: { type: "string" },
        digits: { type: "string" },
        help: { type: "boolean" },
      },
    });
  } catch (e) {
    throw new Error(`${e instanceof Error ? e.message : e}\n${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) return null;
  if (positionals.length !== 1) {
    throw new Error(`expected one RUNS_DIR, got ${positionals.length}\n${USAGE}`);
  }
  const raw: Record<string, unknown> = { runsDir: positionals[0] };
  if (values.out !== undefined) raw.out = values.out;
  if (values.score !== undefined) raw.score = values.score;
  if (values.digits !== undefined) {
    const n = Number(values.digits);
    if (values.digits === "" || !Number.isInteger(n)) {
      throw new Error(`--digits: expected an integer, got "${values.digits}"`);
    }
    raw.digits = n;
  }
  return parseReportOptions(raw, "flags");
}

if (import.meta.main) {
  try {
    const options = reportOptionsFromArgs(Deno.args);
    if (options === null) {
      console.log(USAGE);
    } else {
      const { report, files, warnings } = await writeReport(options);
      for (const w of warnings) console.error(`warning: ${w}`);
      console.log(
        `${report.runs.length} runs → ${report.pivot.rows.length} rows × ${report.pivot.tasks.length} tasks\n` +
          Object.values(files).map((f) => `  ${f}`).join("\n"),
      );
    }
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
