/**
 * Sequence classification and regression on a user's own table: which columns hold the text (and
 * the optional second text) and the label, what kind the labels are, and the label set.
 *
 * Label rule (as Hugging Face's `run_glue.py` for custom files): float labels make a regression
 * task; integer or string labels make classes, ordered by sorting the distinct training labels
 * (numerically for integers, by code point for strings), so the same data always gives the same
 * `id2label`. Booleans are the strings "false" and "true".
 *
 * @module
 */
import type { GlueExample } from "../glue.ts";
import { DataFileError, type DataTable } from "./readers.ts";

/** Column choices; absent ones are found by the conventions below. */
export interface ClassificationColumns {
  /** Column of the (first) text; default `text`, else `sentence`, else `sentence1`. */
  textColumn?: string;
  /** Column of the second text of a pair; default `sentence2` when the text is `sentence1`. */
  textPairColumn?: string;
  /** Column of the label; default `label`, else `labels`. */
  labelColumn?: string;
}

/** An own classification or regression data set, ready for tokenisation. */
export interface OwnClassification {
  /** "classification" (class ids) or "regression" (one real-valued output). */
  problem: "classification" | "regression";
  /** Class names by id (empty for regression). */
  labels: string[];
  /** Columns used. */
  columns: { text: string; textPair?: string; label: string };
  /** Training examples (`idx` is the row's index in its file). */
  train: GlueExample[];
  /** Evaluation examples (empty when there is no evaluation data). */
  eval: GlueExample[];
}

function pickColumns(t: DataTable, o: ClassificationColumns, flagSuffix = ""): {
  text: string;
  textPair?: string;
  label: string;
} {
  const has = (c: string) => t.columns.includes(c);
  const need = (c: string, flag: string) => {
    if (!has(c)) {
      throw new DataFileError(
        t.file,
        `no such column (${flag}${flagSuffix}); the file has ${t.columns.join(", ")}`,
        undefined,
        c,
      );
    }
    return c;
  };
  const guess = (candidates: string[], flag: string) => {
    const c = candidates.find(has);
    if (c === undefined) {
      throw new DataFileError(
        t.file,
        `none of the columns ${candidates.join(", ")} is there; pass ${flag} ` +
          `(the file has ${t.columns.join(", ")})`,
      );
    }
    return c;
  };
  const text = o.textColumn !== undefined
    ? need(o.textColumn, "--text-column")
    : guess(["text", "sentence", "sentence1"], "--text-column");
  const label = o.labelColumn !== undefined
    ? need(o.labelColumn, "--label-column")
    : guess(["label", "labels"], "--label-column");
  let textPair = o.textPairColumn !== undefined
    ? need(o.textPairColumn, "--text-pair-column")
    : undefined;
  if (textPair === undefined && o.textColumn === undefined && text === "sentence1") {
    textPair = has("sentence2") ? "sentence2" : undefined;
  }
  return textPair === undefined ? { text, label } : { text, textPair, label };
}

type LabelValue = { kind: "int" | "float"; value: number } | { kind: "string"; value: string };

/** One raw label as the file holds it; numbers written as text count as numbers. */
function labelValue(t: DataTable, i: number, column: string): LabelValue {
  const raw = t.rows[i][column];
  const fail = (expected: string): never => {
    throw new DataFileError(
      t.fileOf(i),
      `label ${JSON.stringify(raw) ?? String(raw)}; expected ${expected}`,
      t.where(i),
      column,
    );
  };
  if (raw === null || raw === undefined) return fail("a label (the value is missing)");
  if (typeof raw === "boolean") return { kind: "string", value: String(raw) };
  if (typeof raw === "number") {
    if (!Number.isFinite(raw)) return fail("a finite number or a class name");
    const declaredFloat = t.kinds[column] === "float";
    return { kind: Number.isInteger(raw) && !declaredFloat ? "int" : "float", value: raw };
  }
  if (typeof raw === "string") {
    const v = raw.trim();
    if (v === "") return fail("a label (the value is empty)");
    if (/^[-+]?\d+$/.test(v)) return { kind: "int", value: Number(v) };
    if (/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(v)) {
      return { kind: "float", value: Number(v) };
    }
    return { kind: "string", value: v };
  }
  return fail("a class name, an integer or a number");
}

function textValue(t: DataTable, i: number, column: string): string {
  const v = t.rows[i][column];
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  const found = v === null || v === undefined ? "missing" : Array.isArray(v) ? "a list" : typeof v;
  throw new DataFileError(t.fileOf(i), `expected text, found ${found}`, t.where(i), column);
}

/**
 * Reads the classification/regression examples of a training table (and an optional evaluation
 * table). `knownLabels` fixes the class order (an evaluation of a trained run); otherwise it comes
 * from the training labels. Every bad cell is an error naming file, line and column.
 *
 * @example
 * ```ts ignore
 * const d = ownClassification(await readDataFile("train.csv"), await readDataFile("dev.csv"), {});
 * console.log(d.problem, d.labels); // "classification" ["negative", "positive"]
 * ```
 */
export function ownClassification(
  train: DataTable,
  evaluation: DataTable | undefined,
  columns: ClassificationColumns,
  knownLabels?: { problem: "classification" | "regression"; labels: string[] },
): OwnClassification {
  if (train.rows.length === 0) throw new DataFileError(train.file, "no records");
  const cols = pickColumns(train, columns);
  if (evaluation) pickColumns(evaluation, { ...columns, ...cols }, " of the evaluation file");
  const values = train.rows.map((_, i) => labelValue(train, i, cols.label));
  const kinds = new Set(values.map((v) => v.kind));
  let problem: "classification" | "regression" = kinds.has("string")
    ? "classification"
    : kinds.has("float")
    ? "regression"
    : "classification";
  if (kinds.has("string") && kinds.size > 1) {
    const odd = values.findIndex((v) => v.kind !== "string");
    throw new DataFileError(
      train.fileOf(odd),
      `label ${values[odd].value} is a number while other labels are names; ` +
        "use one kind of label for every record",
      train.where(odd),
      cols.label,
    );
  }
  let labels: string[];
  if (knownLabels) {
    problem = knownLabels.problem;
    labels = knownLabels.labels;
  } else if (problem === "regression") labels = [];
  else if (kinds.has("int")) {
    labels = [...new Set(values.map((v) => v.value as number))].sort((a, b) => a - b).map(String);
  } else {
    labels = [...new Set(values.map((v) => v.value as string))].sort((a, b) =>
      a < b ? -1 : a > b ? 1 : 0
    );
  }
  if (problem === "classification" && labels.length < 2) {
    throw new DataFileError(
      train.file,
      `every record has the label ${JSON.stringify(labels[0])}; a classifier needs at least two ` +
        "classes",
      undefined,
      cols.label,
    );
  }
  const ids = new Map(labels.map((l, i) => [l, i]));
  const examples = (t: DataTable): GlueExample[] =>
    t.rows.map((_, i) => {
      const text = textValue(t, i, cols.text);
      const textPair = cols.textPair === undefined ? undefined : textValue(t, i, cols.textPair);
      const v = labelValue(t, i, cols.label);
      let label: number;
      if (problem === "regression") {
        if (v.kind === "string") {
          throw new DataFileError(
            t.fileOf(i),
            `label "${v.value}"; expected a number (this is a regression task)`,
            t.where(i),
            cols.label,
          );
        }
        label = v.value;
      } else {
        const id = ids.get(String(v.value));
        if (id === undefined) {
          throw new DataFileError(
            t.fileOf(i),
            `label ${JSON.stringify(String(v.value))} is not one of the training labels ` +
              `${labels.join(", ")}`,
            t.where(i),
            cols.label,
          );
        }
        label = id;
      }
      return textPair === undefined ? { idx: i, text, label } : { idx: i, text, textPair, label };
    });
  return {
    problem,
    labels,
    columns: cols,
    train: examples(train),
    eval: evaluation ? examples(evaluation) : [],
  };
}

/** The head's labels as Hugging Face's config.json writes them. */
export interface LabelMaps {
  /** Class name by id ("LABEL_0" for regression's one output). */
  id2label: Record<string, string>;
  /** Class id by name. */
  label2id: Record<string, number>;
  /** "single_label_classification" or "regression". */
  problem_type: "single_label_classification" | "regression";
}

/** Hugging Face's `id2label` / `label2id` / `problem_type` for a label list (empty: regression). */
export function labelMaps(labels: readonly string[]): LabelMaps {
  const names = labels.length ? labels : ["LABEL_0"];
  return {
    id2label: Object.fromEntries(names.map((l, i) => [String(i), l])),
    label2id: Object.fromEntries(names.map((l, i) => [l, i])),
    problem_type: labels.length ? "single_label_classification" : "regression",
  };
}
