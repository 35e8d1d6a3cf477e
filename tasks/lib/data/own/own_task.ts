/**
 * When a run uses the user's own data, what the run's task is called then, and which tables it
 * reads: `--train-file` / `--eval-file`, or the splits of a Hugging Face datasets folder
 * (`--data DIR`).
 *
 * @module
 */
import { basename, dirname } from "node:path";
import { type DataTable, findDatasetSplits, readDataFiles, SPLIT_KEYWORDS } from "./readers.ts";

/** Run settings that only own data uses. */
export const OWN_DATA_KEYS: readonly string[] = [
  "trainFile",
  "evalFile",
  "textColumn",
  "textPairColumn",
  "labelColumn",
  "format",
];

/** The settings that decide where own data comes from. */
export interface OwnDataSettings {
  /** The run's task name. */
  task: string;
  /** A data folder. */
  data?: string;
  /** Training files (several: shards of one table). */
  trainFile?: string | string[];
  /** Evaluation files. */
  evalFile?: string | string[];
  /** A pretraining objective (raw text, not own data). */
  objective?: string;
  /** Own-data column and format settings (their presence selects own data). */
  textColumn?: string;
  /** See {@link OwnDataSettings.textColumn}. */
  textPairColumn?: string;
  /** See {@link OwnDataSettings.textColumn}. */
  labelColumn?: string;
  /** See {@link OwnDataSettings.textColumn}. */
  format?: string;
}

/**
 * Whether a run trains on own data: it names a file or an own-data setting (then `--data` is a
 * Hugging Face datasets folder). A task name alone never selects own data, so a mistyped task
 * with a GLUE folder is an error rather than a run on that folder's files.
 *
 * @example
 * ```ts
 * import { usesOwnData } from "./own_task.ts";
 * console.log(usesOwnData({ task: "sst2" }), usesOwnData({ task: "reviews", trainFile: "r.csv" }));
 * // false true
 * ```
 */
export function usesOwnData(s: OwnDataSettings): boolean {
  if (s.objective !== undefined) return false;
  const r = s as unknown as Record<string, unknown>;
  return OWN_DATA_KEYS.some((k) => r[k] !== undefined);
}

/**
 * Raw run settings with a task name for own data when none is given: the training file's name
 * without its extension (reviews.csv → "reviews"), else the data folder's name.
 */
export function ownTaskDefault(raw: Record<string, unknown>): Record<string, unknown> {
  if (raw.task !== undefined || raw.objective !== undefined) return raw;
  if (!OWN_DATA_KEYS.some((k) => raw[k] !== undefined)) return raw;
  const first = Array.isArray(raw.trainFile) ? raw.trainFile[0] : raw.trainFile;
  const from = typeof first === "string"
    ? first
    : typeof raw.data === "string"
    ? raw.data
    : undefined;
  if (from === undefined) return raw;
  const path = from.replace(/[/\\]+$/, "");
  let name = basename(path).replace(/\.[^.]+$/, "");
  // "SST-2/train.tsv" and "my_ds/train-00000-of-00001.parquet" are named after their folder.
  const splitWords = Object.values(SPLIT_KEYWORDS).flat().join("|");
  if (new RegExp(`^(${splitWords})([-_.]|\\d|$)`, "i").test(name)) {
    name = basename(dirname(path)) || name;
  }
  return { ...raw, task: name || "own" };
}

/** The tables of an own-data run and where they came from. */
export interface OwnTables {
  /** Training rows. */
  train: DataTable;
  /** Evaluation rows, when there are any. */
  eval?: DataTable;
  /** Names of the files or folder, for the log. */
  source: string;
  /** Which split the evaluation rows are ("validation", "test", or the file). */
  evalSplit: string;
}

/** Reads an own-data run's tables (files win over the folder's splits). */
export async function readOwnTables(s: OwnDataSettings): Promise<OwnTables> {
  const list = (f: string | string[] | undefined) => f === undefined ? [] : [f].flat();
  const trainFiles = list(s.trainFile), evalFiles = list(s.evalFile);
  const evalName = evalFiles.length ? basename(evalFiles[0]) : undefined;
  if (trainFiles.length) {
    const train = await readDataFiles(trainFiles);
    const evaluation = evalFiles.length ? await readDataFiles(evalFiles) : undefined;
    const source = [...trainFiles, ...evalFiles].join(" + ");
    return { train, eval: evaluation, source, evalSplit: evalName ?? "train" };
  }
  if (!s.data) {
    throw new Error(
      `own data for task "${s.task}": pass --train-file FILE ` +
        "[--eval-file FILE] (jsonl, json, csv, tsv, parquet) or --data DIR (a Hugging Face " +
        "datasets folder)",
    );
  }
  const folder = await findDatasetSplits(s.data);
  const train = await readDataFiles(folder.splits.train!);
  const evalSplit = evalName ??
    (folder.splits.validation ? "validation" : folder.splits.test ? "test" : "train");
  const evaluation = evalFiles.length
    ? await readDataFiles(evalFiles)
    : evalSplit === "validation" || evalSplit === "test"
    ? await readDataFiles(folder.splits[evalSplit]!)
    : undefined;
  return { train, eval: evaluation, source: s.data, evalSplit };
}
