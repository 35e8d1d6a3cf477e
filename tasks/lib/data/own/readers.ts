/**
 * Readers for a user's own data files: JSON lines, JSON arrays, CSV, TSV and parquet (chosen by
 * the file's extension), and Hugging Face datasets folders (one or more files per split). Every
 * reader returns plain rows plus a way to name where each row came from, so that a bad value can
 * be reported as `file: line N: column "x": problem`.
 *
 * @example
 * ```ts ignore
 * import { readDataFile } from "./readers.ts";
 * const table = await readDataFile("reviews.csv");
 * console.log(table.columns, table.rows.length, table.where(0)); // ["text", "label"] 120 "line 2"
 * ```
 *
 * @module
 */
import { join, relative } from "node:path";
import { parquetMetadata, parquetReadObjects } from "hyparquet";
import { compressors } from "hyparquet-compressors";

/** One record of a data file: column name → value. */
export type Row = Record<string, unknown>;

/** The kind of a column as the file declares it (parquet) or as its text shows it (CSV/TSV). */
export type ColumnKind = "int" | "float" | "string" | "bool" | "other";

/** The rows of one data file (or of every shard of a split), with their provenance. */
export interface DataTable {
  /** The file read (the first shard for a split of several files). */
  file: string;
  /** Column names, in the file's order (JSON: the keys of the first record). */
  columns: string[];
  /** The records. */
  rows: Row[];
  /** Where row `i` is: `line N` (text formats, 1-based) or `row N` (parquet, 0-based). */
  where: (i: number) => string;
  /** The file holding row `i` (differs from `file` for split folders with several shards). */
  fileOf: (i: number) => string;
  /** Column kinds the format declares: parquet's physical types, CSV's numeric look. */
  kinds: Record<string, ColumnKind>;
}

/** A data file that cannot be read as its extension says; the message names file and place. */
export class DataFileError extends Error {
  /**
   * `file: where: column "c": problem`, leaving out the parts that are not known.
   *
   * @example
   * ```ts
   * import { DataFileError } from "./readers.ts";
   * console.log(new DataFileError("a.csv", "expected 2 fields, found 3", "line 4").message);
   * // a.csv: line 4: expected 2 fields, found 3
   * ```
   */
  constructor(file: string, problem: string, where?: string, column?: string) {
    const parts = [file, where, column === undefined ? undefined : `column "${column}"`];
    super(`${parts.filter((p) => p !== undefined).join(": ")}: ${problem}`);
    this.name = "DataFileError";
  }
}

/** The extensions {@link readDataFile} reads. */
export const DATA_EXTENSIONS: readonly string[] = [
  ".jsonl",
  ".ndjson",
  ".json",
  ".csv",
  ".tsv",
  ".parquet",
];

function extensionOf(file: string): string {
  const m = /\.[^./\\]+$/.exec(file.toLowerCase());
  return m ? m[0] : "";
}

async function readText(file: string): Promise<string> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DataFileError(file, "file not found");
    throw new DataFileError(file, `cannot read (${(e as Error).message})`);
  }
  try {
    // fatal: a wrong encoding is an error here, not mojibake in the training data; the decoder
    // drops a byte-order mark.
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new DataFileError(file, "not valid UTF-8 text; save the file as UTF-8");
  }
}

function lineStarts(text: string): number[] {
  const starts = [0];
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) starts.push(i + 1);
  return starts;
}

/** 1-based line of character offset `pos`, by binary search over the line starts. */
function lineAt(starts: readonly number[], pos: number): number {
  let lo = 0, hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= pos) lo = mid;
    else hi = mid - 1;
  }
  return lo + 1;
}

function table(
  file: string,
  rows: Row[],
  where: (i: number) => string,
  kinds: Record<string, ColumnKind> = {},
  columns?: string[],
): DataTable {
  return {
    file,
    columns: columns ?? (rows.length ? Object.keys(rows[0]) : []),
    rows,
    where,
    fileOf: () => file,
    kinds,
  };
}

function asRecord(file: string, value: unknown, where: string): Row {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    const found = value === null ? "null" : Array.isArray(value) ? "an array" : typeof value;
    throw new DataFileError(file, `expected a JSON object (one record), found ${found}`, where);
  }
  return value as Row;
}

/** JSON lines: one object per non-empty line. */
export function parseJsonLines(file: string, text: string): DataTable {
  const rows: Row[] = [], lines: number[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line) return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      throw new DataFileError(file, `not valid JSON (${(e as Error).message})`, `line ${i + 1}`);
    }
    rows.push(asRecord(file, value, `line ${i + 1}`));
    lines.push(i + 1);
  });
  return table(file, rows, (i) => `line ${lines[i]}`);
}

/**
 * Start offsets of the elements of a top-level JSON array (the text is valid JSON already): a
 * scan that tracks nesting and strings, so an error can name the line a record starts on.
 */
function arrayElementOffsets(text: string): number[] {
  const offsets: number[] = [];
  let depth = 0, inString = false, expectElement = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === " " || c === "\n" || c === "\r" || c === "\t") continue;
    if (depth === 1 && expectElement && c !== "]") {
      offsets.push(i);
      expectElement = false;
    }
    if (c === '"') inString = true;
    else if (c === "[" || c === "{") {
      depth++;
      if (depth === 1) expectElement = true;
    } else if (c === "]" || c === "}") depth--;
    else if (c === "," && depth === 1) expectElement = true;
  }
  return offsets;
}

/** A JSON file: an array of records, or (as Hugging Face's json loader allows) JSON lines. */
export function parseJson(file: string, text: string): DataTable {
  const first = text.trimStart()[0];
  if (first !== "[" && first !== "{") {
    throw new DataFileError(file, "expected a JSON array of records");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    // Several objects, one per line: JSON lines in a .json file.
    if (first === "{") return parseJsonLines(file, text);
    throw new DataFileError(file, `not valid JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(value)) {
    // One object: Hugging Face's {"data": [...]} layout is the common case.
    const obj = value as Record<string, unknown>;
    const lists = Object.entries(obj).filter(([, v]) => Array.isArray(v));
    if (lists.length !== 1) {
      throw new DataFileError(
        file,
        "expected a JSON array of records (or an object holding one array of records)",
      );
    }
    const rows = (lists[0][1] as unknown[]).map((v, i) =>
      asRecord(file, v, `field "${lists[0][0]}" record ${i}`)
    );
    return table(file, rows, (i) => `field "${lists[0][0]}" record ${i}`);
  }
  const starts = lineStarts(text);
  const lines = arrayElementOffsets(text).map((o) => lineAt(starts, o));
  const where = (i: number) => `line ${lines[i] ?? "?"} (record ${i})`;
  const rows = value.map((v, i) => asRecord(file, v, where(i)));
  return table(file, rows, where);
}

/**
 * Delimiter-separated values with a header row. CSV follows RFC 4180 (double quotes around a
 * field that holds commas, quotes or line breaks; `""` inside them is one quote). TSV follows the
 * IANA text/tab-separated-values rule: no quoting, fields never hold tabs or line breaks (GLUE's
 * files rely on this: their sentences contain unbalanced quotes).
 */
export function parseDelimited(file: string, text: string, delimiter: "," | "\t"): DataTable {
  const records: { fields: string[]; line: number }[] = [];
  const quoted = delimiter === ",";
  let line = 1, i = 0;
  const n = text.length;
  while (i < n) {
    const startLine = line;
    const fields: string[] = [];
    let field = "";
    let inQuotes = false, wasQuoted = false, done = false;
    while (i < n && !done) {
      const c = text[i];
      if (inQuotes) {
        if (c === '"') {
          if (text[i + 1] === '"') {
            field += '"';
            i += 2;
            continue;
          }
          inQuotes = false;
          i++;
          continue;
        }
        if (c === "\n") line++;
        field += c;
        i++;
        continue;
      }
      if (quoted && c === '"' && field === "" && !wasQuoted) {
        inQuotes = wasQuoted = true;
        i++;
      } else if (c === delimiter) {
        fields.push(field);
        field = "";
        wasQuoted = false;
        i++;
      } else if (c === "\n" || c === "\r") {
        i += c === "\r" && text[i + 1] === "\n" ? 2 : 1;
        line++;
        done = true;
      } else {
        if (wasQuoted) {
          throw new DataFileError(
            file,
            `text after a closing quote in field ${fields.length + 1}; quote the whole field ` +
              `and write a quote inside it as ""`,
            `line ${line}`,
          );
        }
        field += c;
        i++;
      }
    }
    if (inQuotes) {
      throw new DataFileError(file, "a quoted field is never closed", `line ${startLine}`);
    }
    fields.push(field);
    if (fields.length === 1 && fields[0] === "" && !wasQuoted) continue; // blank line
    records.push({ fields, line: startLine });
  }
  if (records.length === 0) throw new DataFileError(file, "empty file; expected a header row");
  const header = records[0].fields.map((h) => h.trim());
  const seen = new Set<string>();
  for (const h of header) {
    if (!h) throw new DataFileError(file, "the header row has an empty column name", "line 1");
    if (seen.has(h)) {
      throw new DataFileError(file, `the header row names column "${h}" twice`, "line 1");
    }
    seen.add(h);
  }
  const rows: Row[] = [], lines: number[] = [];
  for (const r of records.slice(1)) {
    if (r.fields.length !== header.length) {
      throw new DataFileError(
        file,
        `expected ${header.length} fields (${header.join(", ")}), found ${r.fields.length}`,
        `line ${r.line}`,
      );
    }
    const row: Row = {};
    header.forEach((h, k) => row[h] = r.fields[k]);
    rows.push(row);
    lines.push(r.line);
  }
  const kinds: Record<string, ColumnKind> = {};
  for (const h of header) kinds[h] = textColumnKind(rows.map((r) => r[h] as string));
  return table(file, rows, (k) => `line ${lines[k]}`, kinds, header);
}

/** How a CSV column's text looks: every value an integer, a decimal number, or otherwise text. */
function textColumnKind(values: readonly string[]): ColumnKind {
  let kind: ColumnKind = "int";
  for (const raw of values) {
    const v = raw.trim();
    if (/^[-+]?\d+$/.test(v)) continue;
    if (/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(v)) kind = "float";
    else return "string";
  }
  return values.length ? kind : "string";
}

function plainValue(v: unknown): unknown {
  if (typeof v === "bigint") return Number(v);
  return v;
}

/** Reads a parquet file (any compression hyparquet-compressors handles) into rows. */
export async function readParquet(file: string): Promise<DataTable> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DataFileError(file, "file not found");
    throw new DataFileError(file, `cannot read (${(e as Error).message})`);
  }
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  let metadata;
  try {
    metadata = parquetMetadata(buffer as ArrayBuffer);
  } catch (e) {
    throw new DataFileError(file, `not a readable parquet file (${(e as Error).message})`);
  }
  // Top-level columns only: nested groups (a list of messages) arrive as JS arrays/objects.
  const columns: string[] = [];
  const kinds: Record<string, ColumnKind> = {};
  let k = 1;
  while (k < metadata.schema.length) {
    const s = metadata.schema[k];
    columns.push(s.name);
    const t = s.type;
    kinds[s.name] = s.num_children
      ? "other"
      : t === "INT32" || t === "INT64"
      ? "int"
      : t === "FLOAT" || t === "DOUBLE"
      ? "float"
      : t === "BOOLEAN"
      ? "bool"
      : t === "BYTE_ARRAY"
      ? "string"
      : "other";
    k += 1 + countDescendants(metadata.schema, k);
  }
  let rows: Row[];
  try {
    const raw = await parquetReadObjects({ file: buffer as ArrayBuffer, metadata, compressors });
    rows = raw.map((r) => {
      const out: Row = {};
      for (const [key, v] of Object.entries(r)) out[key] = plainValue(v);
      return out;
    });
  } catch (e) {
    throw new DataFileError(file, `cannot decode the parquet data (${(e as Error).message})`);
  }
  return table(file, rows, (i) => `row ${i}`, kinds, columns);
}

function countDescendants(
  schema: readonly { num_children?: number }[],
  at: number,
): number {
  let count = 0;
  const children = schema[at].num_children ?? 0;
  let next = at + 1;
  for (let c = 0; c < children; c++) {
    const sub = 1 + countDescendants(schema, next);
    count += sub;
    next += sub;
  }
  return count;
}

/**
 * Reads one data file by its extension: `.jsonl`/`.ndjson`, `.json`, `.csv`, `.tsv`, `.parquet`.
 *
 * @example
 * ```ts ignore
 * const t = await readDataFile("train.jsonl");
 * console.log(t.rows[0]); // { text: "great film", label: "pos" }
 * ```
 */
export async function readDataFile(file: string): Promise<DataTable> {
  const ext = extensionOf(file);
  switch (ext) {
    case ".jsonl":
    case ".ndjson":
      return parseJsonLines(file, await readText(file));
    case ".json":
      return parseJson(file, await readText(file));
    case ".csv":
      return parseDelimited(file, await readText(file), ",");
    case ".tsv":
      return parseDelimited(file, await readText(file), "\t");
    case ".parquet":
      return await readParquet(file);
    default:
      throw new DataFileError(
        file,
        `unknown data format "${ext || "(no extension)"}"; expected one of ${
          DATA_EXTENSIONS.join(", ")
        }`,
      );
  }
}

/** Several files of one split (shards) as one table; columns must agree. */
export async function readDataFiles(files: readonly string[]): Promise<DataTable> {
  const tables: DataTable[] = [];
  for (const f of files) tables.push(await readDataFile(f));
  if (tables.length === 1) return tables[0];
  const first = tables[0];
  const offsets: number[] = [];
  let total = 0;
  for (const t of tables) {
    offsets.push(total);
    total += t.rows.length;
    const a = [...first.columns].sort().join(","), b = [...t.columns].sort().join(",");
    if (t.rows.length && a !== b) {
      throw new DataFileError(
        t.file,
        `columns ${t.columns.join(", ")} differ from ${first.file}'s ${first.columns.join(", ")}`,
      );
    }
  }
  const shardOf = (i: number) => {
    let s = offsets.length - 1;
    while (offsets[s] > i) s--;
    return s;
  };
  return {
    file: first.file,
    columns: first.columns,
    rows: tables.flatMap((t) => t.rows),
    where: (i) => tables[shardOf(i)].where(i - offsets[shardOf(i)]),
    fileOf: (i) => tables[shardOf(i)].file,
    kinds: first.kinds,
  };
}

/** The split names Hugging Face's data-files resolution recognises, canonical name first. */
export const SPLIT_KEYWORDS: Readonly<Record<"train" | "validation" | "test", readonly string[]>> =
  {
    train: ["train", "training"],
    validation: ["validation", "valid", "val", "dev", "eval"],
    test: ["test", "testing"],
  };

/** The data files of each split of a Hugging Face datasets folder. */
export interface DatasetFolder {
  /** The folder. */
  dir: string;
  /** Files per canonical split name (train, validation, test), sorted. */
  splits: Partial<Record<"train" | "validation" | "test", string[]>>;
}

/** Which split a relative path names: a folder called like a split, or a file name starting so. */
function splitOfPath(
  rel: string,
): { split: "train" | "validation" | "test"; prefix: string } | null {
  const parts = rel.split("/");
  for (let k = 0; k < parts.length; k++) {
    const part = parts[k].toLowerCase();
    for (const [split, words] of Object.entries(SPLIT_KEYWORDS)) {
      for (const w of words) {
        // As Hugging Face's patterns: the keyword alone, or followed by a delimiter / shard
        // number ("train-00000-of-00001.parquet", "validation.jsonl", "dev_0.csv").
        const isDir = k < parts.length - 1;
        const ok = isDir ? part === w : new RegExp(`^${w}([-_.]|\\d)`).test(part);
        if (ok) {
          return {
            split: split as "train" | "validation" | "test",
            prefix: parts.slice(0, k).join("/"),
          };
        }
      }
    }
  }
  return null;
}

async function listFiles(dir: string, depth: number): Promise<string[]> {
  const out: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (e) {
    throw new DataFileError(dir, `cannot list the folder (${(e as Error).message})`);
  }
  for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (e.name.startsWith(".")) continue;
    const path = join(dir, e.name);
    const isDir = e.isDirectory ||
      (e.isSymlink && await Deno.stat(path).then((s) => s.isDirectory, () => false));
    if (isDir && depth > 0) out.push(...await listFiles(path, depth - 1));
    else if (!isDir && DATA_EXTENSIONS.includes(extensionOf(e.name))) out.push(path);
  }
  return out;
}

/**
 * Finds the split files of a Hugging Face datasets folder: `data/train-*.parquet`,
 * `train/*.parquet`, `validation.jsonl`, `{config}/{split}/0000.parquet` (the Hub's parquet
 * conversion; one config only) — any of the readable extensions. Errors name the folder.
 */
export async function findDatasetSplits(dir: string): Promise<DatasetFolder> {
  const ok = await Deno.stat(dir).then((s) => s.isDirectory, () => false);
  if (!ok) {
    throw new DataFileError(dir, "not a folder; --data expects a Hugging Face datasets folder");
  }
  const files = await listFiles(dir, 3);
  const splits: DatasetFolder["splits"] = {};
  const prefixes = new Map<string, Set<string>>();
  for (const f of files) {
    const rel = relative(dir, f).replaceAll("\\", "/");
    const s = splitOfPath(rel);
    if (!s) continue;
    (splits[s.split] ??= []).push(f);
    if (!prefixes.has(s.split)) prefixes.set(s.split, new Set());
    prefixes.get(s.split)!.add(s.prefix);
  }
  for (const [split, set] of prefixes) {
    if (set.size > 1) {
      throw new DataFileError(
        dir,
        `${split} files in several sub-folders (${[...set].map((p) => p || ".").join(", ")}); ` +
          `pass --data with one of them`,
      );
    }
  }
  if (!splits.train) {
    throw new DataFileError(
      dir,
      `no train split; expected files like data/train-00000-of-00001.parquet, train/*.parquet or ` +
        `train.jsonl (found ${
          files.length ? files.map((f) => relative(dir, f)).join(", ") : "no data files"
        })`,
    );
  }
  return { dir, splits };
}
