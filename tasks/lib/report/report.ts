/**
 * `deno task report RUNS_DIR`: the benchmark table of a sweep.
 *
 * Every summary.json under a folder becomes one row of an arquero table (one run); runs of the
 * same method whose settings differ within a task (targets, rank, lr multipliers, …) get a
 * "variant" label so that a sweep pivots into separate rows. The pivot is methods × tasks with
 * mean ± sample std over seeds, the average over tasks, trainable parameters, peak memory by
 * category and throughput. It is written as Markdown, a LaTeX booktabs table, CSV (flat runs and
 * pivot) and one
 * self-contained HTML page whose SVG charts vega-lite and vega render here, without a browser.
 *
 * @example
 * ```ts ignore
 * import { writeReport } from "./report.ts";
 * const { files, warnings } = await writeReport({ runsDir: "runs/glue-sweep" });
 * console.log(files.markdown, warnings.length);
 * ```
 *
 * @module
 */
import { basename, join, relative } from "node:path";
import * as aq from "arquero";
import type { ColumnTable } from "arquero";
import * as vega from "vega";
import * as vl from "vega-lite";
import { z } from "zod";
import { getMethod } from "../../../methods/registry.ts";
import { writeTextAtomic } from "../../../methods/peft.ts";
import { COMMONSENSE_DATASETS } from "../data/commonsense.ts";
import { formatIssues } from "../train/config.ts";
import { GLUE_TASKS } from "../data/glue.ts";
import { resolveTask } from "../data/pipeline.ts";
import { pairedEffects, renderPairedMarkdown } from "./paired.ts";

/**
 * A run's task under its canonical key (commonsense names are matched case-insensitively by the
 * trainer, so "BoolQ" and "boolq" runs are one task); unknown tasks (own data) stay as written.
 */
function canonicalTask(task: string): string {
  try {
    return resolveTask(task).name;
  } catch {
    return task;
  }
}

const MIB = 2 ** 20;

/** Memory categories of the engine's pool, in the order tables and charts show them. */
export const MEMORY_CATEGORIES: readonly string[] = [
  "weights",
  "trainable",
  "grads",
  "optimizer",
  "activations",
  "scratch",
];

/** Options of {@link writeReport} (and of `deno task report`). */
export interface ReportOptions {
  /** Folder searched recursively for summary.json files. */
  runsDir: string;
  /** Where the report files go (default: runsDir). */
  out?: string;
  /** Score each run by its final evaluation or by its best one (default final). */
  score?: "final" | "best";
  /** Decimals of scores in the tables (default 1). */
  digits?: number;
}

const ReportOptionsSchema = z.object({
  runsDir: z.string().min(1),
  out: z.string().min(1).optional(),
  score: z.enum(["final", "best"]).default("final"),
  digits: z.number().int().min(0).max(4).default(1),
}).strict();

/**
 * Validate report options (from flags or code); errors name `source`, the field and what was
 * expected.
 */
export function parseReportOptions(
  raw: unknown,
  source = "report options",
): Required<Omit<ReportOptions, "out">> & Pick<ReportOptions, "out"> {
  const r = ReportOptionsSchema.safeParse(raw);
  if (!r.success) throw new Error(formatIssues(r.error, source));
  return r.data;
}

/** One run, as read from its summary.json (and adapter_config.json for default targets). */
export interface RunRecord {
  /** Run folder relative to the runs folder. */
  dir: string;
  /** Model id or folder, as the run was given it. */
  model: string;
  /** Task name (`sst2`, `boolq`, …). */
  task: string;
  /** Method name (`lora`, `full`, …). */
  method: string;
  /** Settings that tell this run apart from other runs of its method on the same task. */
  variant: string;
  /** method, plus the variant in parentheses when there is one: the pivot row's name. */
  label: string;
  /** The run's seed. */
  seed: number;
  /** Name of the task's main metric. */
  mainMetric: string;
  /** The main metric × 100 (as papers print it), from the final or best evaluation. */
  score: number;
  /** Every metric of the final and of the best evaluation, as written (0..1). */
  final: Record<string, number | null>;
  /** Every metric of the best evaluation. */
  best: Record<string, number | null>;
  /** Mean training loss of the last logged interval (null if it was not finite). */
  finalLoss: number | null;
  /** Optimizer steps. */
  steps: number | null;
  /** Parameters the optimizer updated. */
  trainableParams: number;
  /** Parameters of the model, frozen and trainable. */
  totalParams: number;
  /** Peak MiB per memory category. */
  memoryMiB: Record<string, number>;
  /** Peak MiB of all categories together. */
  peakTotalMiB: number;
  /** Training throughput. */
  tokensPerSecond: number;
  /** Wall time of the whole run, evaluation included. */
  wallSeconds: number;
  /** GPU adapter name. */
  device: string;
  /** Toolkit name and version that wrote the run. */
  toolkit: string;
  /** Flattened settings that can define a variant (`methodOptions.r`, `lrMultipliers.value`, …). */
  settings: Record<string, string>;
}

/** One logged training loss of one run. */
export interface LossPoint {
  /** Task of the run. */
  task: string;
  /** Pivot row of the run ({@link RunRecord.label}). */
  label: string;
  /** Seed of the run. */
  seed: number;
  /** Optimizer step the loss was logged at. */
  step: number;
  /** Mean training loss since the previous logged step. */
  loss: number;
}

/** Everything found under a runs folder. */
export interface CollectedRuns {
  /** The folder that was searched. */
  runsDir: string;
  /** The readable runs, in path order. */
  runs: RunRecord[];
  /** The flat per-run table (one row per run; metric and memory columns flattened). */
  table: ColumnTable;
  /** Every logged training loss of every run. */
  curves: LossPoint[];
  /** One line per file that was skipped or partly read, naming the file. */
  warnings: string[];
}

/** One cell of the pivot: a method (variant) on a task over its seeds. */
export interface PivotCell {
  /** Mean score over seeds. */
  mean: number;
  /** Sample standard deviation (n − 1); null for a single seed. */
  std: number | null;
  /** Number of seeds (runs). */
  n: number;
  /** Mean trainable parameters of the cell's runs (heads differ between tasks). */
  trainableParams: number;
}

/** One row of the pivot: a method, or one variant of it. */
export interface PivotRow {
  /** Method name. */
  method: string;
  /** Variant label ("" when the method was run with one setting). */
  variant: string;
  /** The row's name: method (variant). */
  label: string;
  /** By task; absent where the row has no run on that task. */
  cells: Record<string, PivotCell>;
  /** Mean over tasks of the cells' means; null unless the row has every task. */
  avg: number | null;
  /** Mean, smallest and largest trainable parameter count over the row's runs. */
  trainableParams: number;
  /** Smallest trainable parameter count of the row's runs. */
  trainableMin: number;
  /** Largest trainable parameter count of the row's runs. */
  trainableMax: number;
  /** Mean total parameter count over the row's runs. */
  totalParams: number;
  /** 100 × trainable / total (means over the row's runs). */
  trainablePercent: number;
  /** Largest peak MiB per category over the row's runs. */
  memoryMiB: Record<string, number>;
  /** Largest total peak MiB over the row's runs. */
  peakTotalMiB: number;
  /** Mean training throughput over the row's runs. */
  tokensPerSecond: number;
  /** Number of runs in the row. */
  runs: number;
}

/** The methods × tasks table. */
export interface Pivot {
  /** Task columns, in the order papers print them. */
  tasks: string[];
  /** The main metric of each task. */
  mainMetrics: Record<string, string>;
  /** Memory categories seen, in {@link MEMORY_CATEGORIES} order. */
  categories: string[];
  /** Rows, largest trainable parameter count first. */
  rows: PivotRow[];
  /** Seeds per cell when every cell has the same count, else null (cells then show n). */
  uniformN: number | null;
}

/** A whole report: the runs, their pivot and how scores were taken. */
export interface ReportData extends CollectedRuns {
  /** The methods × tasks table. */
  pivot: Pivot;
  /** Which evaluation scored the runs. */
  score: "final" | "best";
  /** Decimals of scores in the tables. */
  digits: number;
}

/** What {@link writeReport} wrote. */
export interface ReportResult {
  /** What the files show. */
  report: ReportData;
  /** Paths of the files written. */
  files: { markdown: string; latex: string; csv: string; pivotCsv: string; html: string };
  /** Files skipped or partly read, one line each. */
  warnings: string[];
}

// ---------------------------------------------------------------------------------------------
// Collecting runs

const metricRecord = z.record(z.string(), z.number().nullable());

/** The part of summary.json (tasks/lib/train/trainer.ts `Summary`) the report relies on. */
const SummaryFileSchema = z.object({
  model: z.string().min(1),
  task: z.string().min(1),
  method: z.string().min(1),
  seed: z.number().int(),
  config: z.record(z.string(), z.unknown()),
  steps: z.number().int().nonnegative().optional(),
  finalLoss: z.number().nullable().optional(),
  final: metricRecord,
  best: metricRecord,
  mainMetric: z.string().min(1),
  trainableParams: z.number().int().nonnegative(),
  totalParams: z.number().int().positive(),
  memory: z.object({
    peak: z.record(z.string(), z.number().nonnegative()),
    peakTotal: z.number().nonnegative(),
  }),
  tokensPerSecond: z.number().nonnegative(),
  wallSeconds: z.number().nonnegative(),
  device: z.object({ name: z.string() }).partial().optional(),
  toolkit: z.string().optional(),
});

type SummaryFile = z.infer<typeof SummaryFileSchema>;

/** Config keys that never define a variant: bookkeeping, or the row/column keys themselves. */
const NOT_SETTINGS = new Set([
  "seed",
  "task",
  "data",
  "output",
  "offline",
  "logInterval",
  "evalInterval",
  "saveInterval",
  "evalBatchSize",
]);

function settingValue(v: unknown): string {
  if (v === undefined) return "default";
  if (typeof v === "string") return v;
  if (Array.isArray(v)) return v.map(settingValue).join(",");
  return JSON.stringify(v);
}

/** Resolve a method's options with its schema's defaults, so `{}` and `{ r: 8 }` compare equal. */
function resolvedMethodOptions(method: string, options: unknown): Record<string, unknown> {
  const raw = (options && typeof options === "object") ? options as Record<string, unknown> : {};
  try {
    const parsed = getMethod(method).config.safeParse(raw);
    if (parsed.success && parsed.data && typeof parsed.data === "object") {
      return parsed.data as Record<string, unknown>;
    }
  } catch {
    // A method this toolkit version does not know: compare its options as written.
  }
  return raw;
}

/** The flattened settings of a run; `targets` falls back to what the saved adapter names. */
function runSettings(
  summary: SummaryFile,
  adapterTargets: string[] | null,
): Record<string, string> {
  const out: Record<string, string> = {};
  const config = summary.config;
  for (const [key, value] of Object.entries(config)) {
    if (NOT_SETTINGS.has(key) || key === "methodOptions" || key === "lrMultipliers") continue;
    out[key] = settingValue(value);
  }
  out.model = summary.model;
  out.targets = settingValue(config.targets ?? adapterTargets ?? undefined);
  const options = resolvedMethodOptions(summary.method, config.methodOptions);
  for (const [key, value] of Object.entries(options)) {
    out[`methodOptions.${key}`] = settingValue(value);
  }
  const multipliers = config.lrMultipliers;
  if (multipliers && typeof multipliers === "object") {
    for (const [key, value] of Object.entries(multipliers)) {
      out[`lrMultipliers.${key}`] = settingValue(value);
    }
  }
  return out;
}

function settingOf(settings: Record<string, string>, key: string): string {
  // An lr multiplier that is not given is 1.
  return settings[key] ?? (key.startsWith("lrMultipliers.") ? "1" : "default");
}

function settingRank(key: string): number {
  if (key === "model") return 0;
  if (key === "targets") return 1;
  if (key.startsWith("methodOptions.")) return 2;
  if (key.startsWith("lrMultipliers.")) return 3;
  return 4;
}

function formatSetting(key: string, value: string): string {
  if (key === "model") return basename(value);
  if (key.startsWith("methodOptions.")) return `${key.slice("methodOptions.".length)}=${value}`;
  if (key.startsWith("lrMultipliers.")) {
    return `${key.slice("lrMultipliers.".length)} lr ×${value}`;
  }
  return `${key}=${value}`;
}

/**
 * Variant labels: for each method, the settings that take more than one value among its runs on
 * one task (seeds aside). Settings that differ only between tasks (a per-task learning rate, the
 * epochs) do not split a method into rows.
 */
export function variantLabels(
  runs: readonly { method: string; task: string; settings: Record<string, string> }[],
): string[] {
  const varying = new Map<string, Set<string>>();
  const groups = new Map<string, (typeof runs)[number][]>();
  for (const r of runs) {
    const k = JSON.stringify([r.method, r.task]);
    groups.set(k, [...(groups.get(k) ?? []), r]);
    if (!varying.has(r.method)) varying.set(r.method, new Set());
  }
  for (const group of groups.values()) {
    const keys = new Set(group.flatMap((r) => Object.keys(r.settings)));
    for (const key of keys) {
      const values = new Set(group.map((r) => settingOf(r.settings, key)));
      if (values.size > 1) varying.get(group[0].method)!.add(key);
    }
  }
  return runs.map((r) => {
    const keys = [...varying.get(r.method)!].sort((a, b) =>
      settingRank(a) - settingRank(b) || a.localeCompare(b)
    );
    return keys.map((k) => formatSetting(k, settingOf(r.settings, k))).join(" · ");
  });
}

async function findSummaries(dir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (d: string): Promise<void> => {
    const entries: Deno.DirEntry[] = [];
    for await (const e of Deno.readDir(d)) entries.push(e);
    entries.sort((a, b) => a.name.localeCompare(b.name));
    for (const e of entries) {
      // Half-written folders of the trainer's atomic renames are not runs.
      if (e.isDirectory && !/\.(tmp-[0-9a-f]+|old)$/.test(e.name)) await walk(join(d, e.name));
      else if (e.isFile && e.name === "summary.json") found.push(join(d, e.name));
    }
  };
  await walk(dir);
  return found;
}

async function adapterTargets(runDir: string): Promise<string[] | null> {
  try {
    const cfg = JSON.parse(await Deno.readTextFile(join(runDir, "adapter", "adapter_config.json")));
    const t = cfg?.target_modules;
    if (Array.isArray(t) && t.every((x) => typeof x === "string")) return t;
    if (typeof t === "string") return [t];
  } catch {
    // No adapter written (or not in PEFT's format): the targets stay "default".
  }
  return null;
}

async function readSummary(file: string): Promise<SummaryFile | string> {
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(file));
  } catch (e) {
    return `${file}: not valid JSON (${e instanceof Error ? e.message : e}); skipped`;
  }
  const parsed = SummaryFileSchema.safeParse(raw);
  if (!parsed.success) return `${formatIssues(parsed.error, file).split("\n").join("; ")}; skipped`;
  return parsed.data;
}

async function readLosses(
  file: string,
  warnings: string[],
): Promise<{ step: number; loss: number }[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch {
    warnings.push(`${file}: missing; the run has no loss curve`);
    return [];
  }
  const out: { step: number; loss: number }[] = [];
  const lines = text.split("\n");
  lines.forEach((line, i) => {
    if (!line.trim()) return;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch {
      warnings.push(`${file}:${i + 1}: not a JSON line; skipped`);
      return;
    }
    if (!obj || typeof obj !== "object") {
      warnings.push(`${file}:${i + 1}: expected a JSON object; skipped`);
      return;
    }
    const { step, loss } = obj as Record<string, unknown>;
    // Evaluation lines carry no loss; a diverged step's loss is null.
    if (typeof step === "number" && typeof loss === "number" && Number.isFinite(loss)) {
      out.push({ step, loss });
    }
  });
  return out;
}

const scoreOf = (summary: SummaryFile, from: "final" | "best"): number | null => {
  const v = summary[from][summary.mainMetric];
  return typeof v === "number" && Number.isFinite(v) ? 100 * v : null;
};

/** Column name of a metric or memory category in the flat table. */
function columnName(prefix: string, name: string, suffix = ""): string {
  return `${prefix}_${name.replace(/[^A-Za-z0-9]+/g, "_")}${suffix}`;
}

/** The flat per-run table: fixed columns, then every metric and memory category seen. */
function runsTable(runs: readonly RunRecord[], categories: readonly string[]): ColumnTable {
  const metricNames = [
    ...new Set(runs.flatMap((r) => [...Object.keys(r.final), ...Object.keys(r.best)])),
  ]
    .sort();
  const rows = runs.map((r) => {
    const row: Record<string, string | number | null> = {
      dir: r.dir,
      model: r.model,
      task: r.task,
      method: r.method,
      variant: r.variant,
      label: r.label,
      seed: r.seed,
      mainMetric: r.mainMetric,
      score: r.score,
    };
    for (const m of metricNames) row[columnName("final", m)] = r.final[m] ?? null;
    for (const m of metricNames) row[columnName("best", m)] = r.best[m] ?? null;
    row.finalLoss = r.finalLoss;
    row.steps = r.steps;
    row.trainableParams = r.trainableParams;
    row.totalParams = r.totalParams;
    row.trainablePercent = (100 * r.trainableParams) / r.totalParams;
    for (const c of categories) row[columnName("mem", c, "_mib")] = r.memoryMiB[c] ?? 0;
    row.mem_total_mib = r.peakTotalMiB;
    row.tokensPerSecond = r.tokensPerSecond;
    row.wallSeconds = r.wallSeconds;
    row.device = r.device;
    row.toolkit = r.toolkit;
    return row;
  });
  return aq.from(rows);
}

function orderedCategories(runs: readonly RunRecord[]): string[] {
  const seen = new Set(runs.flatMap((r) => Object.keys(r.memoryMiB)));
  const known = MEMORY_CATEGORIES.filter((c) => seen.has(c));
  return [...known, ...[...seen].filter((c) => !known.includes(c)).sort()];
}

/**
 * Find every summary.json under `runsDir` (recursively) and its metrics.jsonl. A file that cannot
 * be read or does not hold what the trainer writes is skipped with a warning naming it.
 */
export async function collectRuns(
  runsDir: string,
  options: { score?: "final" | "best" } = {},
): Promise<CollectedRuns> {
  const from = options.score ?? "final";
  const stat = await Deno.stat(runsDir).catch(() => null);
  if (!stat?.isDirectory) {
    throw new Error(`${runsDir}: expected a folder of runs (with summary.json files)`);
  }
  const warnings: string[] = [];
  const partial:
    (Omit<RunRecord, "variant" | "label"> & { losses: { step: number; loss: number }[] })[] = [];
  for (const file of await findSummaries(runsDir)) {
    const summary = await readSummary(file);
    if (typeof summary === "string") {
      warnings.push(summary);
      continue;
    }
    const score = scoreOf(summary, from);
    if (score === null) {
      warnings.push(
        `${file}: field "${from}.${summary.mainMetric}" (the main metric): expected a number; skipped`,
      );
      continue;
    }
    const runDir = join(file, "..");
    const memoryMiB: Record<string, number> = {};
    for (const [c, bytes] of Object.entries(summary.memory.peak)) memoryMiB[c] = bytes / MIB;
    partial.push({
      dir: relative(runsDir, runDir) || ".",
      model: summary.model,
      task: canonicalTask(summary.task),
      method: summary.method,
      seed: summary.seed,
      mainMetric: summary.mainMetric,
      score,
      final: summary.final,
      best: summary.best,
      finalLoss: summary.finalLoss ?? null,
      steps: summary.steps ?? null,
      trainableParams: summary.trainableParams,
      totalParams: summary.totalParams,
      memoryMiB,
      peakTotalMiB: summary.memory.peakTotal / MIB,
      tokensPerSecond: summary.tokensPerSecond,
      wallSeconds: summary.wallSeconds,
      device: summary.device?.name ?? "unknown",
      toolkit: summary.toolkit ?? "unknown",
      settings: runSettings(summary, await adapterTargets(runDir)),
      losses: await readLosses(join(runDir, "metrics.jsonl"), warnings),
    });
  }
  const variants = variantLabels(partial);
  const runs: RunRecord[] = [];
  const curves: LossPoint[] = [];
  partial.forEach(({ losses, ...r }, i) => {
    const variant = variants[i];
    const label = variant ? `${r.method} (${variant})` : r.method;
    runs.push({ ...r, variant, label });
    for (const p of losses) curves.push({ task: r.task, label, seed: r.seed, ...p });
  });
  return { runsDir, runs, table: runsTable(runs, orderedCategories(runs)), curves, warnings };
}

// ---------------------------------------------------------------------------------------------
// The pivot

function taskRank(task: string): number {
  const glue = (GLUE_TASKS as readonly string[]).indexOf(task);
  if (glue >= 0) return glue;
  const cs = (COMMONSENSE_DATASETS as readonly string[]).indexOf(task);
  return cs >= 0 ? 100 + cs : 1000;
}

/** Tasks in the order papers print them (GLUE, then commonsense, then others by name). */
function orderTasks(tasks: Iterable<string>): string[] {
  return [...new Set(tasks)].sort((a, b) => taskRank(a) - taskRank(b) || a.localeCompare(b));
}

interface CellStats {
  method: string;
  variant: string;
  task: string;
  mean: number;
  std: number | null;
  n: number;
  trainable: number;
}

interface RowStats {
  method: string;
  variant: string;
  label: string;
  trainable: number;
  trainableMin: number;
  trainableMax: number;
  total: number;
  tokens: number;
  peakTotal: number;
  runs: number;
}

/**
 * Pivot the per-run table into methods (and variants) × tasks: mean ± sample std of the score
 * over seeds, the average over tasks, trainable parameters, peak memory and throughput. Rows are
 * ordered by trainable parameters, largest first (full fine-tuning heads the table).
 */
export function pivotRuns(collected: CollectedRuns, warnings: string[] = []): Pivot {
  const { runs, table } = collected;
  const tasks = orderTasks(runs.map((r) => r.task));
  const mainMetrics: Record<string, string> = {};
  for (const r of runs) {
    if (mainMetrics[r.task] === undefined) mainMetrics[r.task] = r.mainMetric;
    else if (mainMetrics[r.task] !== r.mainMetric) {
      warnings.push(
        `${join(collected.runsDir, r.dir, "summary.json")}: main metric ${r.mainMetric} differs ` +
          `from ${mainMetrics[r.task]} of other ${r.task} runs; its cell mixes the two`,
      );
    }
  }
  const categories = orderedCategories(runs);
  if (runs.length === 0) return { tasks, mainMetrics, categories, rows: [], uniformN: null };

  const cells = table.groupby("method", "variant", "task").rollup({
    mean: "d => op.mean(d.score)",
    std: "d => op.stdev(d.score)",
    n: "d => op.count()",
    trainable: "d => op.mean(d.trainableParams)",
  }).objects() as CellStats[];
  const memoryExprs: Record<string, string> = {};
  categories.forEach((c, i) =>
    memoryExprs[`m${i}`] = `d => op.max(d['${columnName("mem", c, "_mib")}'])`
  );
  const rowStats = table.groupby("method", "variant", "label").rollup({
    trainable: "d => op.mean(d.trainableParams)",
    trainableMin: "d => op.min(d.trainableParams)",
    trainableMax: "d => op.max(d.trainableParams)",
    total: "d => op.mean(d.totalParams)",
    tokens: "d => op.mean(d.tokensPerSecond)",
    peakTotal: "d => op.max(d.mem_total_mib)",
    runs: "d => op.count()",
    ...memoryExprs,
  }).objects() as (RowStats & Record<string, number>)[];

  const rows: PivotRow[] = rowStats.map((s) => {
    const rowCells: Record<string, PivotCell> = {};
    for (const c of cells) {
      if (c.method !== s.method || c.variant !== s.variant) continue;
      rowCells[c.task] = { mean: c.mean, std: c.std ?? null, n: c.n, trainableParams: c.trainable };
    }
    const complete = tasks.every((t) => rowCells[t] !== undefined);
    const memoryMiB: Record<string, number> = {};
    categories.forEach((c, i) => memoryMiB[c] = s[`m${i}`]);
    return {
      method: s.method,
      variant: s.variant,
      label: s.label,
      cells: rowCells,
      avg: complete ? tasks.reduce((acc, t) => acc + rowCells[t].mean, 0) / tasks.length : null,
      trainableParams: s.trainable,
      trainableMin: s.trainableMin,
      trainableMax: s.trainableMax,
      totalParams: s.total,
      trainablePercent: (100 * s.trainable) / s.total,
      memoryMiB,
      peakTotalMiB: s.peakTotal,
      tokensPerSecond: s.tokens,
      runs: s.runs,
    };
  });
  rows.sort((a, b) => b.trainableParams - a.trainableParams || a.label.localeCompare(b.label));
  const ns = new Set(cells.map((c) => c.n));
  return { tasks, mainMetrics, categories, rows, uniformN: ns.size === 1 ? [...ns][0] : null };
}

/** The pivot as a flat table (one row per method/variant) for the second CSV. */
export function pivotTable(pivot: Pivot): ColumnTable {
  const rows = pivot.rows.map((r) => {
    const row: Record<string, string | number | null> = {
      method: r.method,
      variant: r.variant,
      label: r.label,
    };
    for (const t of pivot.tasks) {
      const c = r.cells[t];
      row[`${t}_mean`] = c?.mean ?? null;
      row[`${t}_std`] = c?.std ?? null;
      row[`${t}_n`] = c?.n ?? 0;
    }
    row.avg = r.avg;
    row.trainableParams = r.trainableParams;
    row.totalParams = r.totalParams;
    row.trainablePercent = r.trainablePercent;
    for (const c of pivot.categories) row[columnName("mem", c, "_mib")] = r.memoryMiB[c];
    row.mem_total_mib = r.peakTotalMiB;
    row.tokensPerSecond = r.tokensPerSecond;
    row.runs = r.runs;
    return row;
  });
  return aq.from(rows);
}

const TEXT_COLUMNS = [
  "dir",
  "model",
  "task",
  "method",
  "variant",
  "label",
  "mainMetric",
  "device",
  "toolkit",
];

/**
 * Read a CSV this module wrote. Text columns stay text (a run folder named "2024-05-01" is not a
 * date), and an empty text cell reads back as "" (CSV cannot tell "" from a missing value).
 */
export function readReportCsv(text: string): ColumnTable {
  const parse: Record<string, (v: string) => string> = {};
  for (const c of TEXT_COLUMNS) parse[c] = (v) => v;
  const table = aq.fromCSV(text, { parse });
  const present = TEXT_COLUMNS.filter((c) => table.columnNames().includes(c));
  const derive: Record<string, string> = {};
  for (const c of present) derive[c] = `d => d['${c}'] == null ? '' : d['${c}']`;
  return present.length ? table.derive(derive) : table;
}

// ---------------------------------------------------------------------------------------------
// Formatting

const TASK_NAMES: Record<string, string> = {
  cola: "CoLA",
  sst2: "SST-2",
  mrpc: "MRPC",
  qqp: "QQP",
  stsb: "STS-B",
  mnli: "MNLI",
  qnli: "QNLI",
  rte: "RTE",
  wnli: "WNLI",
  ax: "AX",
  boolq: "BoolQ",
  piqa: "PIQA",
  social_i_qa: "SIQA",
  hellaswag: "HellaSwag",
  winogrande: "WinoGrande",
  "ARC-Easy": "ARC-e",
  "ARC-Challenge": "ARC-c",
  openbookqa: "OBQA",
};

const METRIC_NAMES: Record<string, string> = {
  accuracy: "Acc",
  f1: "F1",
  matthews_correlation: "MCC",
  pearson: "Pearson",
  spearmanr: "Spearman",
};

/** A task's name as papers print it (SST-2, BoolQ, ARC-e), the one spelling every output uses. */
export const taskName = (t: string): string => TASK_NAMES[t] ?? t;
const metricName = (m: string): string => METRIC_NAMES[m] ?? m;

function formatCount(n: number): string {
  const units: [number, string][] = [[1e9, "B"], [1e6, "M"], [1e3, "K"]];
  for (const [size, unit] of units) {
    if (n >= size) return `${Number((n / size).toPrecision(3))}${unit}`;
  }
  return String(Math.round(n));
}

/** Trainable parameters of a row; a range where tasks differ visibly (e.g. by their heads). */
function formatParams(r: PivotRow): string {
  const [lo, hi] = [formatCount(r.trainableMin), formatCount(r.trainableMax)];
  return lo === hi ? formatCount(r.trainableParams) : `${lo}–${hi}`;
}

const formatPercent = (p: number): string => `${Number(p.toPrecision(3))}%`;
function formatMiB(v: number): string {
  if (v === 0) return "0";
  if (v < 0.01) return "<0.01";
  return v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? "" : "s"}`;

function formatCell(c: PivotCell, digits: number, showN: boolean): string {
  const mean = c.mean.toFixed(digits);
  const std = c.std === null ? "" : ` ± ${c.std.toFixed(digits)}`;
  return `${mean}${std}${showN ? ` (n=${c.n})` : ""}`;
}

/** Whether `value` is the best of a column (ties all count; within float noise). */
function isBest(
  value: number | null | undefined,
  column: readonly (number | null | undefined)[],
): boolean {
  if (value === null || value === undefined) return false;
  const finite = column.filter((v): v is number => typeof v === "number");
  return finite.length > 1 && value >= Math.max(...finite) - 1e-9;
}

interface TableText {
  header: string[];
  rows: { cells: string[]; bold: boolean[] }[];
}

/** The main table as text cells (shared by Markdown and HTML). */
function mainTable(report: ReportData): TableText {
  const { pivot, digits } = report;
  const showN = pivot.uniformN === null;
  const header = [
    "Method",
    ...pivot.tasks.map((t) => `${taskName(t)} (${metricName(pivot.mainMetrics[t])})`),
    "Avg",
    "Trainable params",
    "% of total",
    "Peak MiB",
    "Tokens/s",
  ];
  const rows = pivot.rows.map((r) => {
    const cells = [r.label];
    const bold = [false];
    for (const t of pivot.tasks) {
      const c = r.cells[t];
      cells.push(c ? formatCell(c, digits, showN) : "—");
      bold.push(isBest(c?.mean, pivot.rows.map((x) => x.cells[t]?.mean)));
    }
    cells.push(r.avg === null ? "—" : r.avg.toFixed(digits));
    bold.push(isBest(r.avg, pivot.rows.map((x) => x.avg)));
    cells.push(
      formatParams(r),
      formatPercent(r.trainablePercent),
      formatMiB(r.peakTotalMiB),
      Math.round(r.tokensPerSecond).toLocaleString("en-US"),
    );
    bold.push(false, false, false, false);
    return { cells, bold };
  });
  return { header, rows };
}

function memoryTable(pivot: Pivot): TableText {
  return {
    header: ["Method", ...pivot.categories, "peak total"],
    rows: pivot.rows.map((r) => ({
      cells: [
        r.label,
        ...pivot.categories.map((c) => formatMiB(r.memoryMiB[c])),
        formatMiB(r.peakTotalMiB),
      ],
      bold: [],
    })),
  };
}

const mdEscape = (s: string): string => s.replace(/\|/g, "\\|");

function markdownTable(t: TableText, align: ("l" | "r")[]): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  const sep = `|${align.map((a) => a === "l" ? ":---" : "---:").join("|")}|`;
  return [
    line(t.header.map(mdEscape)),
    sep,
    ...t.rows.map((r) =>
      line(r.cells.map((c, i) => r.bold[i] ? `**${mdEscape(c)}**` : mdEscape(c)))
    ),
  ].join("\n");
}

function scoreNote(report: ReportData): string {
  const { pivot } = report;
  const seeds = pivot.uniformN === null
    ? "n, the number of seeds, is shown because it differs between cells"
    : `${plural(pivot.uniformN, "seed")} per cell`;
  return `Scores: the ${report.score} evaluation's main metric × 100, mean ± sample std over seeds; ` +
    `${seeds}. Avg is the mean over tasks of the per-task means, for rows with every task. ` +
    `Best per column in bold. Peak MiB is the largest total peak over a row's runs.`;
}

function runsSummaryLines(report: ReportData): string[] {
  const { runs, pivot } = report;
  const devices = [...new Set(runs.map((r) => r.device))];
  const toolkits = [...new Set(runs.map((r) => r.toolkit))];
  const wall = runs.reduce((s, r) => s + r.wallSeconds, 0);
  const seeds = [...new Set(runs.map((r) => r.seed))].sort((a, b) => a - b);
  const models = [...new Set(runs.map((r) => basename(r.model)))];
  return [
    `${plural(runs.length, "run")}: ${plural(pivot.rows.length, "method/variant row")} × ` +
    `${plural(pivot.tasks.length, "task")} (${pivot.tasks.map(taskName).join(", ")}), ` +
    `seeds ${seeds.join(", ")}`,
    `models: ${models.join(", ")}`,
    `devices: ${devices.join(", ")}`,
    `toolkit: ${toolkits.join(", ")}`,
    `total wall time: ${(wall / 60).toFixed(1)} min (${wall.toFixed(1)} s)`,
    `skipped or partly read files: ${report.warnings.length}`,
  ];
}

/**
 * The paired-effects section (tasks/lib/report/paired.ts), when some setting varies within a
 * method: each value against its base, over runs equal in task, seed and every other setting.
 */
function pairedSection(report: ReportData): string[] {
  const effects = pairedEffects(report.runs);
  if (!effects.length) return [];
  return [
    "## Paired effects of each varying setting",
    "",
    "Score(value) − score(base) in points, over pairs of runs that agree on task, seed and every " +
    'other setting; "all" pools the methods. W / T / L: pairs where the value scored higher, ' +
    "the same, lower. The per-task columns are the mean differences on that task.",
    "",
    renderPairedMarkdown(effects, taskName, report.digits),
    "",
  ];
}

/** The report as Markdown: the paper-style table, the memory table and a short runs summary. */
export function renderReportMarkdown(report: ReportData): string {
  const { pivot } = report;
  const main = mainTable(report);
  const parts = [
    `# Benchmark report: ${report.runsDir}`,
    "",
    scoreNote(report),
    "",
    markdownTable(main, main.header.map((_, i) => i === 0 ? "l" : "r")),
    "",
    ...pairedSection(report),
    "## Peak memory by category (MiB)",
    "",
    "Largest peak per category over a row's runs. Categories peak at different moments, so their " +
    "sum can exceed the peak total.",
    "",
    markdownTable(memoryTable(pivot), ["l", ...pivot.categories.map(() => "r" as const), "r"]),
    "",
    "## Runs",
    "",
    ...runsSummaryLines(report).map((l) => `- ${l}`),
  ];
  if (report.warnings.length) {
    parts.push("", "## Warnings", "", ...report.warnings.map((w) => `- ${mdEscape(w)}`));
  }
  return parts.join("\n") + "\n";
}

/** Characters LaTeX treats specially in text, and symbols it needs math mode for. */
const LATEX_ESCAPES: Record<string, string> = {
  "\\": "\\textbackslash{}",
  "&": "\\&",
  "%": "\\%",
  "$": "\\$",
  "#": "\\#",
  "_": "\\_",
  "{": "\\{",
  "}": "\\}",
  "~": "\\textasciitilde{}",
  "^": "\\textasciicircum{}",
  "±": "$\\pm$",
  "×": "$\\times$",
  "·": "$\\cdot$",
  "λ": "$\\lambda$",
  "α": "$\\alpha$",
  "η": "$\\eta$",
  "≤": "$\\le$",
  "≥": "$\\ge$",
  "–": "--",
  "—": "---",
  "<": "$<$",
  ">": "$>$",
};

/** `text` safe inside a LaTeX table cell; a minus sign before a number is typeset as one. */
export function latexEscape(text: string): string {
  const escaped = text.replace(/[\\&%$#_{}~^±×·λαη≤≥–—<>]/g, (c) => LATEX_ESCAPES[c]);
  return escaped.replace(/(^|[\s(])-(?=\d)/g, (_, before: string) => `${before}$-$`);
}

/**
 * The main table as a LaTeX booktabs table (needs `\usepackage{booktabs}`): methods × tasks,
 * mean ± std over seeds, best per column in bold, the note as the caption. Paste it or
 * `\input{report.tex}`.
 */
export function renderReportLatex(report: ReportData): string {
  const main = mainTable(report);
  const spec = main.header.map((_, i) => i === 0 ? "l" : "r").join("");
  const line = (cells: string[]) => `${cells.join(" & ")} \\\\`;
  const body = main.rows.map((r) =>
    line(r.cells.map((c, i) => r.bold[i] ? `\\textbf{${latexEscape(c)}}` : latexEscape(c)))
  );
  return [
    `% @ruc/peft report of ${report.runsDir}; needs \\usepackage{booktabs}.`,
    "\\begin{table}[t]",
    "\\centering",
    "\\small",
    `\\begin{tabular}{${spec}}`,
    "\\toprule",
    line(main.header.map(latexEscape)),
    "\\midrule",
    ...body,
    "\\bottomrule",
    "\\end{tabular}",
    `\\caption{${latexEscape(scoreNote(report))}}`,
    "\\label{tab:peft-benchmark}",
    "\\end{table}",
    "",
  ].join("\n");
}

// ---------------------------------------------------------------------------------------------
// Charts

/** A vega-lite specification, as vega-lite's `compile` takes it. */
export type ChartSpec = vl.TopLevelSpec;

/** The three chart specifications of the HTML page. */
export interface ReportCharts {
  /** Training loss per step, one line per row, a panel per task. */
  loss: ChartSpec;
  /** Score against trainable parameters (log x), a panel per task, a point ± std per row. */
  scoreVsParams: ChartSpec;
  /** Peak memory, a panel per category (own scale), a bar per row. */
  memory: ChartSpec;
}

const CHART_CONFIG = {
  font: "Helvetica, Arial, sans-serif",
  view: { stroke: "#ccc" },
  axis: { labelFontSize: 11, titleFontSize: 12 },
  // Label widths are estimated without a canvas (generously), so the limits are generous too.
  legend: { labelFontSize: 11, titleFontSize: 12, labelLimit: 1000 },
  header: { labelFontSize: 13, labelFontWeight: "bold" as const },
  title: { fontSize: 14, anchor: "start" as const },
};

/** Loss mean over seeds per (task, row, step). */
function meanCurves(
  curves: readonly LossPoint[],
): { task: string; label: string; step: number; loss: number }[] {
  if (curves.length === 0) return [];
  return aq.from(curves).groupby("task", "label", "step").rollup({ loss: "d => op.mean(d.loss)" })
    .orderby("task", "label", "step").objects() as {
      task: string;
      label: string;
      step: number;
      loss: number;
    }[];
}

/**
 * Colours of the method/variant rows, in row order: Kelly's colours of maximum contrast (black
 * and white left out, the pale ones last), so that neighbours in the legend never look alike;
 * past them lines repeat the colours dashed.
 */
export const METHOD_COLORS: readonly string[] = [
  "#0067A5", // blue
  "#BE0032", // red
  "#008856", // green
  "#F38400", // orange
  "#875692", // purple
  "#222222", // near black
  "#882D17", // reddish brown
  "#E68FAC", // pink
  "#8DB600", // yellow green
  "#A1CAF1", // light blue
  "#F3C300", // yellow
  "#604E97", // violet
  "#F99379", // salmon
  "#848482", // grey
  "#2B3D26", // olive green
  "#C2B280", // buff
];

/** Solid for the first round of colours, dashed for the rows that reuse them. */
function dashOf(i: number): number[] {
  return i < METHOD_COLORS.length ? [1, 0] : [6, 3];
}

/**
 * Chart specifications: loss curves (mean over seeds, one line per method/variant, a panel per
 * task, each with its own step and loss range), score against trainable parameters (log x, a
 * panel per task, a point per method/variant with a ±1 std bar over seeds), and peak memory by
 * category (a panel per category, each with its own MiB axis, so a dominant category such as
 * activations does not flatten the others).
 */
export function reportCharts(report: ReportData): ReportCharts {
  const { pivot } = report;
  const labels = pivot.rows.map((r) => r.label);
  const taskNames = pivot.tasks.map(taskName);
  const range = labels.map((_, i) => METHOD_COLORS[i % METHOD_COLORS.length]);
  const color = {
    field: "label",
    type: "nominal" as const,
    title: "method",
    scale: { domain: labels, range },
  };
  const columns = Math.min(3, Math.max(1, taskNames.length));
  const loss: ChartSpec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: "Training loss (mean over seeds)",
    data: { values: meanCurves(report.curves).map((p) => ({ ...p, task: taskName(p.task) })) },
    facet: { field: "task", type: "nominal", title: null, sort: taskNames },
    columns,
    spec: {
      width: 300,
      height: 200,
      mark: { type: "line", strokeWidth: 2 },
      encoding: {
        x: {
          field: "step",
          type: "quantitative",
          title: "step",
          scale: { nice: false },
          axis: { format: "d", tickMinStep: 1 },
        },
        y: { field: "loss", type: "quantitative", title: "loss", scale: { zero: false } },
        color,
        // Same field and title as colour: one legend showing colour and dash together.
        strokeDash: {
          field: "label",
          type: "nominal",
          title: "method",
          scale: { domain: labels, range: labels.map((_, i) => dashOf(i)) },
        },
      },
    },
    // Tasks train for different numbers of steps and sit at different losses.
    resolve: { scale: { x: "independent", y: "independent" } },
    config: CHART_CONFIG,
  };
  const points = pivot.rows.flatMap((r) =>
    pivot.tasks.filter((t) => r.cells[t] && r.cells[t].trainableParams > 0).map((t) => {
      const c = r.cells[t];
      const std = c.std ?? 0;
      return {
        label: r.label,
        task: taskName(t),
        params: c.trainableParams,
        score: c.mean,
        low: c.mean - std,
        high: c.mean + std,
        n: c.n,
      };
    })
  );
  // Decades only: a log axis otherwise draws a grid line at every 2…9 × 10^k.
  const params = points.map((p) => p.params);
  const lo = Math.floor(Math.log10(Math.min(...params, 1e9)));
  const hi = Math.max(lo + 1, Math.ceil(Math.log10(Math.max(...params, 1))));
  const decades = Array.from({ length: hi - lo + 1 }, (_, i) => 10 ** (lo + i));
  const x = {
    field: "params",
    type: "quantitative" as const,
    title: "trainable parameters (log scale)",
    scale: { type: "log" as const, domain: [decades[0], decades[decades.length - 1]] },
    axis: { values: decades, format: "~s" },
  };
  const scoreVsParams: ChartSpec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: "Score against trainable parameters (mean ± std over seeds)",
    data: { values: points },
    facet: { field: "task", type: "nominal", title: null, sort: taskNames },
    columns: Math.min(2, Math.max(1, taskNames.length)),
    spec: {
      width: 360,
      height: 240,
      layer: [
        {
          mark: { type: "rule", strokeWidth: 2 },
          encoding: {
            x,
            y: { field: "low", type: "quantitative" },
            y2: { field: "high" },
            color,
          },
        },
        {
          mark: { type: "point", filled: true, size: 80, opacity: 0.9 },
          encoding: {
            x,
            y: {
              field: "score",
              type: "quantitative",
              title: "score (main metric × 100)",
              scale: { zero: false, padding: 12 },
              axis: { format: ".1~f" },
            },
            color,
          },
        },
      ],
    },
    resolve: { scale: { y: "independent" } },
    config: CHART_CONFIG,
  };
  const bars = pivot.rows.flatMap((r) =>
    pivot.categories.filter((c) => r.memoryMiB[c] > 0).map((c) => ({
      label: r.label,
      category: c,
      mib: r.memoryMiB[c],
    }))
  );
  const memory: ChartSpec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: "Peak memory by category (MiB, largest over a row's runs; each panel its own scale)",
    data: { values: bars },
    facet: {
      column: { field: "category", type: "nominal", title: null, sort: pivot.categories },
    },
    spec: {
      width: 110,
      height: { step: 22 },
      mark: "bar",
      encoding: {
        y: {
          field: "label",
          type: "nominal",
          title: null,
          sort: labels,
          axis: { labelLimit: 1000 },
        },
        x: { field: "mib", type: "quantitative", title: "MiB", axis: { tickCount: 3 } },
        // The rows are named on the y axis already.
        color: { ...color, legend: null },
      },
    },
    resolve: { scale: { x: "independent" } },
    config: CHART_CONFIG,
  };
  return { loss, scoreVsParams, memory };
}

/** Render a vega-lite specification to an SVG string (no browser, no canvas). */
export async function renderChartSvg(spec: ChartSpec): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

// ---------------------------------------------------------------------------------------------
// HTML

const htmlEscape = (s: string): string =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

function htmlTable(t: TableText, className: string): string {
  const head = `<tr>${t.header.map((h) => `<th>${htmlEscape(h)}</th>`).join("")}</tr>`;
  const body = t.rows.map((r) =>
    `<tr>${
      r.cells.map((c, i) => {
        const text = htmlEscape(c);
        return `<td>${r.bold[i] ? `<strong>${text}</strong>` : text}</td>`;
      }).join("")
    }</tr>`
  ).join("\n");
  return `<table class="${className}">\n<thead>${head}</thead>\n<tbody>\n${body}\n</tbody>\n</table>`;
}

function runsHtmlTable(report: ReportData): TableText {
  const header = [
    "Run",
    "Method",
    "Task",
    "Seed",
    "Score",
    "Final loss",
    "Trainable",
    "Peak MiB",
    "Tokens/s",
    "Wall s",
  ];
  const rows = report.runs.map((r) => ({
    cells: [
      r.dir,
      r.label,
      taskName(r.task),
      String(r.seed),
      r.score.toFixed(report.digits),
      r.finalLoss === null ? "—" : r.finalLoss.toFixed(4),
      formatCount(r.trainableParams),
      formatMiB(r.peakTotalMiB),
      Math.round(r.tokensPerSecond).toLocaleString("en-US"),
      r.wallSeconds.toFixed(1),
    ],
    bold: [],
  }));
  return { header, rows };
}

const PAGE_STYLE = `
body { font: 14px/1.45 Helvetica, Arial, sans-serif; color: #222; margin: 24px auto; max-width: 1280px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p.note { color: #555; max-width: 900px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; border-bottom: 2px solid #bbb; }
th:first-child, td:first-child { text-align: left; }
table.runs td:nth-child(2), table.runs td:nth-child(3),
table.runs th:nth-child(2), table.runs th:nth-child(3) { text-align: left; }
table.runs { font-size: 12px; }
figure { margin: 16px 0 24px; }
figure svg { max-width: 100%; height: auto; }
ul.warnings li { color: #8a4b00; }
`;

/**
 * The report as one self-contained HTML page: tables and SVG charts inline, no scripts, no
 * external files.
 */
export async function renderReportHtml(report: ReportData): Promise<string> {
  const charts = reportCharts(report);
  const [loss, scatter, memory] = await Promise.all([
    renderChartSvg(charts.loss),
    renderChartSvg(charts.scoreVsParams),
    renderChartSvg(charts.memory),
  ]);
  const warnings = report.warnings.length
    ? `<h2>Warnings</h2>\n<ul class="warnings">${
      report.warnings.map((w) => `<li>${htmlEscape(w)}</li>`).join("\n")
    }</ul>`
    : "";
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Benchmark report: ${htmlEscape(report.runsDir)}</title>
<style>${PAGE_STYLE}</style>
</head>
<body>
<h1>Benchmark report</h1>
<p class="note">${htmlEscape(report.runsDir)}</p>
<h2>Scores</h2>
${htmlTable(mainTable(report), "main")}
<p class="note">${htmlEscape(scoreNote(report))}</p>
<h2>Peak memory by category (MiB)</h2>
${htmlTable(memoryTable(report.pivot), "memory")}
<p class="note">Largest peak per category over a row's runs. Categories peak at different moments, so their sum can exceed the peak total.</p>
<h2>Charts</h2>
<figure>${loss}</figure>
<figure>${scatter}</figure>
<figure>${memory}</figure>
<h2>Runs</h2>
<ul>${runsSummaryLines(report).map((l) => `<li>${htmlEscape(l)}</li>`).join("")}</ul>
${htmlTable(runsHtmlTable(report), "runs")}
${warnings}
</body>
</html>
`;
}

// ---------------------------------------------------------------------------------------------
// Writing

/** Collect the runs under `runsDir` and pivot them (no files written). */
export async function buildReport(options: ReportOptions): Promise<ReportData> {
  const o = parseReportOptions(options);
  const collected = await collectRuns(o.runsDir, { score: o.score });
  const warnings = [...collected.warnings];
  const pivot = pivotRuns(collected, warnings);
  return { ...collected, warnings, pivot, score: o.score, digits: o.digits };
}

/**
 * Build the report of `runsDir` and write report.md, report.csv (one row per run),
 * report.tex (the main table for a paper), report_pivot.csv and report.html into `out` (default `runsDir`), each atomically.
 */
export async function writeReport(options: ReportOptions): Promise<ReportResult> {
  const o = parseReportOptions(options);
  const report = await buildReport(o);
  if (report.runs.length === 0) {
    throw new Error(
      `${o.runsDir}: no readable summary.json found${
        report.warnings.length ? ` (${report.warnings.join("; ")})` : ""
      }`,
    );
  }
  const out = o.out ?? o.runsDir;
  await Deno.mkdir(out, { recursive: true });
  const files = {
    markdown: join(out, "report.md"),
    latex: join(out, "report.tex"),
    csv: join(out, "report.csv"),
    pivotCsv: join(out, "report_pivot.csv"),
    html: join(out, "report.html"),
  };
  const html = await renderReportHtml(report);
  await writeTextAtomic(files.markdown, renderReportMarkdown(report));
  await writeTextAtomic(files.latex, renderReportLatex(report));
  await writeTextAtomic(files.csv, report.table.toCSV());
  await writeTextAtomic(files.pivotCsv, pivotTable(report.pivot).toCSV());
  await writeTextAtomic(files.html, html);
  return { report, files, warnings: report.warnings };
}
