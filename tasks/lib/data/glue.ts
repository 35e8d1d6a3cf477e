/**
 * GLUE: task specifications and readers for the two layouts the data comes in.
 *
 * - The Hugging Face `nyu-mll/glue` parquet conversion, `{root}/{config}/{split}/0000.parquet`
 *   (then `0001.parquet`, … for bigger splits), Snappy-compressed; this is what
 *   `deno task download` fetches.
 * - The original GLUE TSV folders (`CoLA/train.tsv`, `MNLI/dev_matched.tsv`, …), read the way the
 *   Hugging Face `glue` builder read them: tab-separated with no quoting, `idx` = the data row's
 *   number, string labels mapped to the label ids of the Hugging Face features.
 *
 * Both readers give the same uniform records, so a TSV dev set and its parquet twin load equal
 * (MRPC excepted for `idx`: Hugging Face numbered MRPC's rows in Microsoft's original files).
 * Test splits carry no labels: their `label` is −1, as in the Hugging Face data.
 *
 * @example
 * ```ts
 * import { loadGlue } from "./glue.ts";
 * const dev = await loadGlue("rte", "validation", { source: "../shared/data/glue" });
 * console.log(dev.length, dev[0].label); // 277 1   (1 = not_entailment)
 * ```
 *
 * @module
 */
import { join } from "node:path";
import { parquetMetadata, parquetReadObjects } from "hyparquet";
import { compressors } from "hyparquet-compressors";
import { z } from "zod";

/** The GLUE configs, by their Hugging Face names. */
export const GLUE_TASKS = [
  "cola",
  "sst2",
  "mrpc",
  "qqp",
  "stsb",
  "mnli",
  "qnli",
  "rte",
  "wnli",
  "ax",
] as const;

/** A GLUE config name. */
export type GlueTask = typeof GLUE_TASKS[number];

/** A GLUE metric, by its Hugging Face `evaluate` name. */
export type GlueMetricName = "accuracy" | "f1" | "matthews_correlation" | "pearson" | "spearmanr";

/** Where a task lives in the original GLUE download and which TSV column is which. */
export interface GlueTsvLayout {
  /** Relative path of each split's file (e.g. `validation` → `SST-2/dev.tsv`). */
  files: Readonly<Record<string, string>>;
  /** TSV columns of the text fields, in the order of {@link GlueTaskSpec.textFields}. */
  textColumns: readonly string[];
  /** TSV column holding the label (absent from test files). */
  labelColumn: string;
  /** Column names of labelled files that have no header row (CoLA's train and dev). */
  headerlessColumns?: readonly string[];
}

/** Everything the toolkit needs to know about one GLUE task. */
export interface GlueTaskSpec {
  /** Hugging Face config name. */
  name: GlueTask;
  /** Hugging Face feature names of the one or two text fields (`sentence`, `premise`, …). */
  textFields: readonly [string] | readonly [string, string];
  /** Label names by class id, as the Hugging Face dataset features define them (empty for STS-B). */
  labelNames: readonly string[];
  /** Outputs of a classification head: the number of classes, or 1 for regression (STS-B). */
  numLabels: number;
  /** Whether labels are real-valued scores (STS-B, 0..5) rather than class ids. */
  isRegression: boolean;
  /** Hugging Face split names, in their order. */
  splits: readonly string[];
  /** The official metrics. */
  metrics: readonly GlueMetricName[];
  /**
   * The score PEFT papers report (LoRA, DoRA, …): Matthews correlation for CoLA, Pearson for
   * STS-B, accuracy elsewhere (MRPC and QQP included; F1 is reported alongside).
   */
  mainMetric: GlueMetricName;
  /** Layout in the original GLUE TSV download. */
  tsv: GlueTsvLayout;
}

/** One example, the same whichever file it came from. */
export interface GlueExample {
  /** Row number within the split (Hugging Face's `idx`). */
  idx: number;
  /** The first text field. */
  text: string;
  /** The second text field of sentence-pair tasks. */
  textPair?: string;
  /** Class id, STS-B score (0..5), or −1 on test splits. */
  label: number;
}

const STANDARD_SPLITS = ["train", "validation", "test"] as const;
const MNLI_SPLITS = [
  "train",
  "validation_matched",
  "validation_mismatched",
  "test_matched",
  "test_mismatched",
] as const;

/** A split's file name in the GLUE download: `validation*` was called `dev*` there. */
function tsvFileName(split: string): string {
  return `${split.replace(/^validation/, "dev")}.tsv`;
}

interface TaskDefinition extends Omit<GlueTaskSpec, "numLabels" | "isRegression" | "tsv"> {
  tsvDir: string;
  tsvFiles?: Readonly<Record<string, string>>;
  textColumns: readonly string[];
  labelColumn: string;
  headerlessColumns?: readonly string[];
}

function defineTask(d: TaskDefinition): GlueTaskSpec {
  const isRegression = d.labelNames.length === 0;
  const files = d.tsvFiles ??
    Object.fromEntries(d.splits.map((s) => [s, `${d.tsvDir}/${tsvFileName(s)}`]));
  return {
    name: d.name,
    textFields: d.textFields,
    labelNames: d.labelNames,
    numLabels: isRegression ? 1 : d.labelNames.length,
    isRegression,
    splits: d.splits,
    metrics: d.metrics,
    mainMetric: d.mainMetric,
    tsv: {
      files,
      textColumns: d.textColumns,
      labelColumn: d.labelColumn,
      ...(d.headerlessColumns ? { headerlessColumns: d.headerlessColumns } : {}),
    },
  };
}

const NLI3 = ["entailment", "neutral", "contradiction"] as const;
const NLI2 = ["entailment", "not_entailment"] as const;
const PAIR_COLUMNS = ["sentence1", "sentence2"] as const;

/** The specification of every GLUE task. */
export const GLUE_TASK_SPECS: Readonly<Record<GlueTask, GlueTaskSpec>> = {
  cola: defineTask({
    name: "cola",
    textFields: ["sentence"],
    labelNames: ["unacceptable", "acceptable"],
    splits: STANDARD_SPLITS,
    metrics: ["matthews_correlation"],
    mainMetric: "matthews_correlation",
    tsvDir: "CoLA",
    textColumns: ["sentence"],
    labelColumn: "label",
    // CoLA's train/dev have no header: source code, label, the author's original mark, sentence.
    headerlessColumns: ["source", "label", "original_mark", "sentence"],
  }),
  sst2: defineTask({
    name: "sst2",
    textFields: ["sentence"],
    labelNames: ["negative", "positive"],
    splits: STANDARD_SPLITS,
    metrics: ["accuracy"],
    mainMetric: "accuracy",
    tsvDir: "SST-2",
    textColumns: ["sentence"],
    labelColumn: "label",
  }),
  mrpc: defineTask({
    name: "mrpc",
    textFields: ["sentence1", "sentence2"],
    labelNames: ["not_equivalent", "equivalent"],
    splits: STANDARD_SPLITS,
    metrics: ["f1", "accuracy"],
    mainMetric: "accuracy",
    tsvDir: "MRPC",
    textColumns: ["#1 String", "#2 String"],
    labelColumn: "Quality",
  }),
  qqp: defineTask({
    name: "qqp",
    textFields: ["question1", "question2"],
    labelNames: ["not_duplicate", "duplicate"],
    splits: STANDARD_SPLITS,
    metrics: ["f1", "accuracy"],
    mainMetric: "accuracy",
    tsvDir: "QQP",
    textColumns: ["question1", "question2"],
    labelColumn: "is_duplicate",
  }),
  stsb: defineTask({
    name: "stsb",
    textFields: ["sentence1", "sentence2"],
    labelNames: [],
    splits: STANDARD_SPLITS,
    metrics: ["pearson", "spearmanr"],
    mainMetric: "pearson",
    tsvDir: "STS-B",
    textColumns: PAIR_COLUMNS,
    labelColumn: "score",
  }),
  mnli: defineTask({
    name: "mnli",
    textFields: ["premise", "hypothesis"],
    labelNames: NLI3,
    splits: MNLI_SPLITS,
    metrics: ["accuracy"],
    mainMetric: "accuracy",
    tsvDir: "MNLI",
    textColumns: PAIR_COLUMNS,
    labelColumn: "gold_label",
  }),
  qnli: defineTask({
    name: "qnli",
    textFields: ["question", "sentence"],
    labelNames: NLI2,
    splits: STANDARD_SPLITS,
    metrics: ["accuracy"],
    mainMetric: "accuracy",
    tsvDir: "QNLI",
    textColumns: ["question", "sentence"],
    labelColumn: "label",
  }),
  rte: defineTask({
    name: "rte",
    textFields: ["sentence1", "sentence2"],
    labelNames: NLI2,
    splits: STANDARD_SPLITS,
    metrics: ["accuracy"],
    mainMetric: "accuracy",
    tsvDir: "RTE",
    textColumns: PAIR_COLUMNS,
    labelColumn: "label",
  }),
  wnli: defineTask({
    name: "wnli",
    textFields: ["sentence1", "sentence2"],
    labelNames: ["not_entailment", "entailment"],
    splits: STANDARD_SPLITS,
    metrics: ["accuracy"],
    mainMetric: "accuracy",
    tsvDir: "WNLI",
    textColumns: PAIR_COLUMNS,
    labelColumn: "label",
  }),
  ax: defineTask({
    name: "ax",
    textFields: ["premise", "hypothesis"],
    labelNames: NLI3,
    splits: ["test"],
    // GLUE scores its diagnostic set with R3, the multiclass Matthews correlation.
    metrics: ["matthews_correlation"],
    mainMetric: "matthews_correlation",
    tsvDir: "diagnostic",
    tsvFiles: { test: "diagnostic/diagnostic.tsv" },
    textColumns: PAIR_COLUMNS,
    labelColumn: "label",
  }),
};

/**
 * The specification of `task`; throws naming the valid tasks when it is not one.
 *
 * @example
 * ```ts
 * import { glueTaskSpec } from "./glue.ts";
 * console.log(glueTaskSpec("mnli").labelNames); // ["entailment", "neutral", "contradiction"]
 * ```
 */
export function glueTaskSpec(task: string): GlueTaskSpec {
  if (!(GLUE_TASKS as readonly string[]).includes(task)) {
    throw new Error(`unknown GLUE task "${task}"; expected one of ${GLUE_TASKS.join(", ")}`);
  }
  return GLUE_TASK_SPECS[task as GlueTask];
}

/**
 * The Hugging Face name of a split of `task`, accepting GLUE's own names too (`dev` →
 * `validation`, `dev_matched` → `validation_matched`); throws naming the valid splits otherwise.
 *
 * @example
 * ```ts
 * import { resolveGlueSplit } from "./glue.ts";
 * console.log(resolveGlueSplit("mnli", "dev_mismatched")); // "validation_mismatched"
 * ```
 */
export function resolveGlueSplit(task: GlueTask, split: string): string {
  const spec = glueTaskSpec(task);
  const name = split.replace(/^dev/, "validation");
  if (!spec.splits.includes(name)) {
    throw new Error(
      `GLUE task "${task}" has no split "${split}"; expected one of ${spec.splits.join(", ")}`,
    );
  }
  return name;
}

/**
 * The labelled evaluation splits of `task` (MNLI has two: matched and mismatched).
 *
 * @example
 * ```ts
 * import { glueEvalSplits } from "./glue.ts";
 * console.log(glueEvalSplits("mnli")); // ["validation_matched", "validation_mismatched"]
 * ```
 */
export function glueEvalSplits(task: GlueTask): string[] {
  return glueTaskSpec(task).splits.filter((s) => s.startsWith("validation"));
}

/** Whether a split has labels (every split but the test ones). */
function isLabelled(split: string): boolean {
  return !split.startsWith("test");
}

/** A data file that does not have the expected layout; names the file, row and field. */
export class GlueDataError extends Error {
  /** The file at fault. */
  readonly file: string;
  /** Where in it: `line N` (TSV, 1-based) or `row N` (parquet, 0-based), when known. */
  readonly location?: string;
  /** The field or column at fault, when there is one. */
  readonly field?: string;

  /**
   * An error whose message reads `file: location: field "x": problem`.
   *
   * @example
   * ```ts
   * import { GlueDataError } from "./glue.ts";
   * const e = new GlueDataError("RTE/dev.tsv", "expected 4 fields", "line 7", "label");
   * console.log(e.message); // RTE/dev.tsv: line 7: field "label": expected 4 fields
   * ```
   */
  constructor(file: string, problem: string, location?: string, field?: string) {
    const where = [file, location, field === undefined ? undefined : `field "${field}"`]
      .filter((p) => p !== undefined).join(": ");
    super(`${where}: ${problem}`);
    this.name = "GlueDataError";
    this.file = file;
    if (location !== undefined) this.location = location;
    if (field !== undefined) this.field = field;
  }
}

/**
 * The shortest decimal that rounds to the float32 `x`: Hugging Face stores STS-B scores as float32,
 * so 3.8 arrives as 3.7999999523; this gives back the 3.8 the TSV (and the annotators) wrote.
 */
function shortestFloat32Decimal(x: number): number {
  if (Math.fround(x) !== x || !Number.isFinite(x)) return x;
  for (let digits = 1; digits < 9; digits++) {
    const candidate = Number(x.toPrecision(digits));
    if (Math.fround(candidate) === x) return candidate;
  }
  return x;
}

/** Parses one label as written in a data file (name, integer or score) into the label's id. */
function parseLabel(
  raw: unknown,
  spec: GlueTaskSpec,
  split: string,
  where: { file: string; location: string; field: string },
): number {
  const fail = (expected: string): never => {
    throw new GlueDataError(
      where.file,
      `label ${JSON.stringify(typeof raw === "bigint" ? Number(raw) : raw)}; expected ${expected}`,
      where.location,
      where.field,
    );
  };
  const labelled = isLabelled(split);
  let value: number;
  if (typeof raw === "bigint") value = Number(raw);
  else if (typeof raw === "number") value = spec.isRegression ? shortestFloat32Decimal(raw) : raw;
  else if (typeof raw === "string") {
    const byName = spec.labelNames.indexOf(raw);
    if (byName >= 0) return byName;
    value = raw.trim() === "" ? NaN : Number(raw);
  } else value = NaN;
  if (!labelled && value === -1) return -1;
  if (spec.isRegression) {
    if (!(value >= 0 && value <= 5)) fail("a similarity score in 0..5");
    return value;
  }
  if (!(Number.isInteger(value) && value >= 0 && value < spec.numLabels)) {
    fail(`one of ${spec.labelNames.join(", ")} or a class id in 0..${spec.numLabels - 1}`);
  }
  return value;
}

/** Options of {@link loadGlue}. */
export interface LoadGlueOptions {
  /**
   * The data folder: either a parquet root (`{source}/{task}/{split}/*.parquet`), a GLUE TSV root
   * (`{source}/SST-2/dev.tsv`, …), or a folder holding both as `parquet/` and `tsv/`.
   */
  source: string;
  /** Which layout to read; `auto` (the default) prefers parquet and falls back to TSV. */
  format?: "parquet" | "tsv" | "auto";
  /**
   * Skip TSV rows with the wrong number of fields instead of failing (the Hugging Face builder
   * dropped such rows silently). Off by default: a malformed row is an error naming it.
   */
  skipMalformed?: boolean;
}

const OptionsSchema = z.object({
  source: z.string().min(1),
  format: z.enum(["parquet", "tsv", "auto"]).default("auto"),
  skipMalformed: z.boolean().default(false),
});

async function isFile(path: string): Promise<boolean> {
  return await Deno.stat(path).then((s) => s.isFile, () => false);
}

/** The shards of a parquet split folder in order, or [] when there is none. */
async function parquetShards(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      // Symlinks count: the Hugging Face cache's snapshot folders link to blobs.
      if (!entry.isDirectory && entry.name.endsWith(".parquet")) names.push(entry.name);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return [];
    throw e;
  }
  return names.sort().map((n) => join(dir, n));
}

/** Reads one parquet shard into records, checking the columns and every value. */
async function readParquetShard(
  file: string,
  spec: GlueTaskSpec,
  split: string,
): Promise<GlueExample[]> {
  const bytes = await Deno.readFile(file).catch((e) => {
    throw new GlueDataError(file, `cannot read (${(e as Error).message})`);
  });
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  let metadata;
  try {
    metadata = parquetMetadata(buffer as ArrayBuffer);
  } catch (e) {
    throw new GlueDataError(file, `not a readable parquet file (${(e as Error).message})`);
  }
  const present = new Set(metadata.schema.slice(1).map((s) => s.name));
  const columns = [...spec.textFields, "label", "idx"];
  for (const column of columns) {
    if (!present.has(column)) {
      throw new GlueDataError(
        file,
        `missing column; expected the ${spec.name} columns ${columns.join(", ")}, ` +
          `found ${[...present].join(", ")}`,
        undefined,
        column,
      );
    }
  }
  let rows: Record<string, unknown>[];
  try {
    rows = await parquetReadObjects({
      file: buffer as ArrayBuffer,
      metadata,
      columns,
      compressors,
    });
  } catch (e) {
    // A damaged page or column chunk: hyparquet's own message names neither file nor fix.
    throw new GlueDataError(
      file,
      `corrupt parquet data (${(e as Error).message}); download the split again ` +
        `(deno task download --dataset glue --config ${spec.name})`,
    );
  }
  return rows.map((row, r) => {
    const location = `row ${r}`;
    const texts = spec.textFields.map((field) => {
      const value = row[field];
      if (typeof value !== "string") {
        throw new GlueDataError(file, `${value}; expected a string`, location, field);
      }
      return value;
    });
    const idxRaw = row.idx;
    const idx = typeof idxRaw === "bigint" ? Number(idxRaw) : idxRaw;
    if (!Number.isInteger(idx)) {
      throw new GlueDataError(file, `${idxRaw}; expected an integer`, location, "idx");
    }
    const label = parseLabel(row.label, spec, split, { file, location, field: "label" });
    return makeExample(idx as number, texts, label);
  });
}

function makeExample(idx: number, texts: string[], label: number): GlueExample {
  return texts.length === 2
    ? { idx, text: texts[0], textPair: texts[1], label }
    : { idx, text: texts[0], label };
}

/**
 * Reads one original GLUE TSV file of `task`/`split` into records (exported for tests and for
 * files outside the usual folders).
 *
 * @example
 * ```ts
 * import { readGlueTsv } from "./glue.ts";
 * const dev = await readGlueTsv("../shared/data/glue/tsv/CoLA/dev.tsv", "cola", "validation");
 * console.log(dev[0]); // { idx: 0, text: "The sailors rode the breeze clear of the rocks.", label: 1 }
 * ```
 */
export async function readGlueTsv(
  file: string,
  task: GlueTask,
  split: string,
  options: { skipMalformed?: boolean } = {},
): Promise<GlueExample[]> {
  const spec = glueTaskSpec(task);
  split = resolveGlueSplit(task, split);
  let content: string;
  try {
    // fatal: a wrong encoding is an error here, not mojibake in the training data. The decoder
    // drops MRPC's byte-order mark.
    content = new TextDecoder("utf-8", { fatal: true }).decode(await Deno.readFile(file));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new GlueDataError(file, "file not found");
    throw new GlueDataError(file, `not valid UTF-8 text (${(e as Error).message})`);
  }
  const lines = content.split("\n").map((l) => l.endsWith("\r") ? l.slice(0, -1) : l);
  const labelled = isLabelled(split);
  const headerless = labelled ? spec.tsv.headerlessColumns : undefined;
  const columns = headerless ?? (lines[0] ?? "").split("\t");
  const firstDataLine = headerless ? 0 : 1;

  const columnIndex = (name: string, required: boolean): number => {
    const i = columns.indexOf(name);
    if (i < 0 && required) {
      throw new GlueDataError(
        file,
        `missing column in the header; expected ${name} among ${JSON.stringify(columns)}`,
        "line 1",
        name,
      );
    }
    return i;
  };
  const textIndexes = spec.tsv.textColumns.map((c) => columnIndex(c, true));
  const labelIndex = columnIndex(spec.tsv.labelColumn, labelled);

  const examples: GlueExample[] = [];
  for (let i = firstDataLine; i < lines.length; i++) {
    const line = lines[i];
    // Blank lines are not rows (the trailing newline, and csv.DictReader skipped them too).
    if (line === "") continue;
    const fields = line.split("\t");
    const location = `line ${i + 1}`;
    if (fields.length !== columns.length) {
      if (options.skipMalformed) continue;
      throw new GlueDataError(
        file,
        `expected ${columns.length} tab-separated fields (${columns.join(", ")}), ` +
          `found ${fields.length}`,
        location,
        columns[Math.min(fields.length, columns.length - 1)],
      );
    }
    const label = labelIndex < 0 ? -1 : parseLabel(fields[labelIndex], spec, split, {
      file,
      location,
      field: spec.tsv.labelColumn,
    });
    examples.push(makeExample(examples.length, textIndexes.map((t) => fields[t]), label));
  }
  return examples;
}

/** The file(s) `loadGlue` will read, and in which layout. */
export interface GlueLocation {
  /** The layout found. */
  format: "parquet" | "tsv";
  /** Parquet shards in order, or the one TSV file. */
  files: string[];
}

/**
 * Finds the files of `task`/`split` under `source` without reading them; throws naming every path
 * tried when there are none.
 *
 * @example
 * ```ts
 * import { locateGlue } from "./glue.ts";
 * const where = await locateGlue("cola", "validation", { source: "../shared/data/glue" });
 * console.log(where.format); // "parquet"
 * ```
 */
export async function locateGlue(
  task: GlueTask,
  split: string,
  options: LoadGlueOptions,
): Promise<GlueLocation> {
  const spec = glueTaskSpec(task);
  split = resolveGlueSplit(task, split);
  const parsed = OptionsSchema.safeParse(options);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`loadGlue options: field "${issue.path.join(".")}": ${issue.message}`);
  }
  const { source, format } = parsed.data;
  const tried: string[] = [];
  if (format !== "tsv") {
    for (const root of [source, join(source, "parquet")]) {
      const dir = join(root, task, split);
      tried.push(join(dir, "*.parquet"));
      const files = await parquetShards(dir);
      if (files.length > 0) return { format: "parquet", files };
    }
  }
  if (format !== "parquet") {
    for (const root of [source, join(source, "tsv")]) {
      const file = join(root, spec.tsv.files[split]);
      tried.push(file);
      if (await isFile(file)) return { format: "tsv", files: [file] };
    }
  }
  throw new Error(
    `no ${format === "auto" ? "parquet or TSV" : format} data for GLUE ${task}/${split} under ` +
      `${source}; tried ${tried.join(", ")}`,
  );
}

/**
 * Loads one split of a GLUE task as uniform records, from the Hugging Face parquet layout or the
 * original TSV files (see {@link LoadGlueOptions.source}). Split names are Hugging Face's
 * (`validation`, `validation_matched`, `test`, …); GLUE's `dev*` names are accepted too.
 *
 * @example
 * ```ts
 * import { loadGlue } from "./glue.ts";
 * const train = await loadGlue("sst2", "train", { source: "../shared/data/glue", format: "tsv" });
 * console.log(train.length); // 67349
 * ```
 */
export async function loadGlue(
  task: GlueTask,
  split: string,
  options: LoadGlueOptions,
): Promise<GlueExample[]> {
  const spec = glueTaskSpec(task);
  split = resolveGlueSplit(task, split);
  const { format, files } = await locateGlue(task, split, options);
  if (format === "tsv") {
    return await readGlueTsv(files[0], task, split, { skipMalformed: options.skipMalformed });
  }
  const examples: GlueExample[] = [];
  for (const file of files) {
    // One push per row: spreading a 100k-row shard into push() would overflow the call stack.
    for (const example of await readParquetShard(file, spec, split)) examples.push(example);
  }
  return examples;
}
