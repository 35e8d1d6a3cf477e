/**
 * A pretraining corpus of real English text that is reachable offline: the training splits of the
 * GLUE and commonsense sets (never their dev/test splits), the GNU Collaborative International
 * Dictionary of English (Debian's `dict-gcide`) and WordNet's glosses (`wordnet-base`).
 *
 * Each source becomes one text file with one document per line (the format `--objective mlm|clm`
 * reads), written atomically, and `manifest.json` records what went in: documents, characters and
 * the SHA-256 of every file, so a reader can check that a recipe ran on the same text.
 *
 * @module
 */
import { join } from "node:path";
import { GLUE_TASKS, type GlueTask, loadGlue, locateGlue } from "../data/glue.ts";
import { type CommonsenseDataset, loadCommonsense } from "../data/commonsense.ts";

/** Where the Debian packages put their files. */
export const DEFAULT_GCIDE = "/usr/share/dictd/gcide.dict.dz";
/** WordNet's database folder (`wordnet-base`). */
export const DEFAULT_WORDNET = "/usr/share/wordnet";

/** The commonsense sets that ship a training split in ../shared/data. */
export const COMMONSENSE_TRAIN_SETS: readonly CommonsenseDataset[] = [
  "boolq",
  "ARC-Easy",
  "ARC-Challenge",
  "openbookqa",
];

/** One corpus file of the manifest. */
export interface CorpusFile {
  /** File name inside the corpus folder. */
  file: string;
  /** Where the text came from (a path or a data set and split). */
  source: string;
  /** Documents (lines). */
  documents: number;
  /** UTF-16 characters over all documents. */
  characters: number;
  /** SHA-256 of the file's bytes. */
  sha256: string;
}

/** What `manifest.json` of a corpus folder holds. */
export interface CorpusManifest {
  /** The files, in the order they were written. */
  files: CorpusFile[];
  /** Sources asked for but not found (e.g. a Debian package not installed). */
  missing: string[];
}

/** Collapse whitespace runs (newlines and tabs included) to single spaces. */
function squash(text: string): string {
  return text.replace(/\s+/g, " ").trim();
}

async function* linesOf(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    let nl: number;
    while ((nl = rest.indexOf("\n")) >= 0) {
      yield rest.slice(0, nl);
      rest = rest.slice(nl + 1);
    }
  }
  if (rest) yield rest;
}

/**
 * Documents of a dictd GCIDE file (`.dict.dz` is gzip; `.dict` plain): one per headword entry,
 * "headword: definitions and quotations", without pronunciations, part-of-speech marks, sense
 * numbers or source tags such as "[1913 Webster]". The database's own header entries (URLs,
 * licence) are skipped.
 */
export async function* gcideDocuments(path: string): AsyncGenerator<string> {
  const file = await Deno.open(path);
  const stream = path.endsWith(".dz") || path.endsWith(".gz")
    ? file.readable.pipeThrough(new DecompressionStream("gzip"))
    : file.readable;
  let entry: string[] = [];
  const document = (): string | null => {
    const text = entry.join(" ");
    entry = [];
    // An entry proper starts "Headword \pron\ pos."; the database notes before the letter-A
    // file and the "00-database-*" entries have no pronunciation.
    const m = text.match(/^([^\\]+?)\s*\\[^\\]*\\(.*)$/s);
    if (!m || /^00-database/.test(m[1])) return null;
    let rest = m[2]
      // Letters with diacritics are written [=a] (macron), [.a], [^a], ["a]…: keep the letter.
      .replace(/\[[=.^~'"`]([a-zA-Z])\]/g, "$1")
      .replace(/\[(ae|oe|AE|OE)\]/g, "$1");
    // Etymologies and source tags ([AS. …], [1913 Webster]) may nest brackets: innermost first.
    for (let prev = ""; prev !== rest;) {
      prev = rest;
      rest = rest.replace(/\[[^\[\]]*\]/g, " ");
    }
    const body = squash(
      rest
        .replace(/\\[^\\]*\\/g, " ") // further pronunciations
        .replace(/[\\\[\]]/g, " ") // unpaired marks left by entries that span lines
        .replace(/[{}]/g, "") // cross-reference markup: {Owe}
        .replace(/(^|\s)\d+\.(?=\s)/g, " ") // sense numbers
        .replace(/(^|\s)\([a-z]\)(?=\s)/g, " "), // sub-sense letters
    ).replace(/^(?:(?:[a-z]+\.|&|,|;)\s*)+/, ""); // part of speech: "n.", "v. t.;", "a. & n."
    return body.length >= 8 ? `${squash(m[1])}: ${body}` : null;
  };
  for await (const line of linesOf(stream)) {
    if (/^\S/.test(line) && entry.length) {
      const doc = document();
      if (doc) yield doc;
    }
    if (line.trim()) entry.push(line.trim());
  }
  const last = document();
  if (last) yield last;
}

/**
 * Documents of WordNet's `data.{noun,verb,adj,adv}` files: one per synset, "word, word: gloss"
 * (the gloss keeps its quoted usage examples). The licence lines at the top (two leading spaces)
 * are skipped.
 */
export async function* wordnetDocuments(dir: string): AsyncGenerator<string> {
  for (const pos of ["noun", "verb", "adj", "adv"]) {
    const file = await Deno.open(join(dir, `data.${pos}`));
    for await (const line of linesOf(file.readable)) {
      if (line.startsWith("  ") || !line.trim()) continue;
      const bar = line.indexOf(" | ");
      if (bar < 0) continue;
      const fields = line.slice(0, bar).split(" ");
      const count = parseInt(fields[3], 16);
      if (!Number.isFinite(count)) {
        throw new Error(`${join(dir, `data.${pos}`)}: a synset line without a word count`);
      }
      const words: string[] = [];
      for (let i = 0; i < count; i++) {
        words.push(fields[4 + 2 * i].replace(/\(\w+\)$/, "").replace(/_/g, " "));
      }
      const gloss = squash(line.slice(bar + 3));
      if (gloss) yield `${[...new Set(words)].join(", ")}: ${gloss}`;
    }
  }
}

/** GLUE tasks whose training split can be read from `source`, with every text of their rows. */
export async function* glueTrainDocuments(
  source: string,
  tasks: readonly GlueTask[] = GLUE_TASKS,
): AsyncGenerator<string> {
  for (const task of tasks) {
    const found = await locateGlue(task, "train", { source }).then(() => true, () => false);
    if (!found) continue;
    for (const ex of await loadGlue(task, "train", { source })) {
      yield squash(ex.textPair ? `${ex.text} ${ex.textPair}` : ex.text);
    }
  }
}

/** Training records of the commonsense sets: the question (instruction) and the answer text. */
export async function* commonsenseTrainDocuments(
  source: string,
  sets: readonly CommonsenseDataset[] = COMMONSENSE_TRAIN_SETS,
): AsyncGenerator<string> {
  for (const set of sets) {
    const records = await loadCommonsense(set, "train", { source }).catch(() => null);
    if (!records) continue;
    for (const r of records) yield squash(`${r.instruction} ${r.output}`);
  }
}

/** Options of {@link buildCorpus}. */
export interface BuildCorpusOptions {
  /** The folder to write (created). */
  out: string;
  /** The GLUE root (parquet and/or TSV layout); null: leave GLUE out. */
  glue?: string | null;
  /** The commonsense root (LLM-Adapters layout); null: leave it out. */
  commonsense?: string | null;
  /** The GCIDE dictd file; null: leave it out. */
  gcide?: string | null;
  /** WordNet's database folder; null: leave it out. */
  wordnet?: string | null;
  /** Progress lines. */
  log?: (line: string) => void;
}

async function writeDocuments(
  dir: string,
  name: string,
  source: string,
  docs: AsyncIterable<string>,
): Promise<CorpusFile> {
  const path = join(dir, name);
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  const enc = new TextEncoder();
  let documents = 0, characters = 0;
  let pending: string[] = [];
  try {
    for await (const doc of docs) {
      if (!doc) continue;
      pending.push(doc.replace(/\n/g, " "));
      documents++;
      characters += doc.length;
      if (pending.length >= 4096) {
        await writeAll(file, enc.encode(pending.join("\n") + "\n"));
        pending = [];
      }
    }
    if (pending.length) await writeAll(file, enc.encode(pending.join("\n") + "\n"));
  } finally {
    file.close();
  }
  const sha256 = await fileSha256(tmp);
  await Deno.rename(tmp, path);
  return { file: name, source, documents, characters, sha256 };
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await file.write(bytes.subarray(off));
}

/** SHA-256 (hex) of a file's bytes. */
export async function fileSha256(path: string): Promise<string> {
  const bytes = await Deno.readFile(path);
  const d = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/**
 * Write the corpus folder: `glue-train.txt`, `commonsense-train.txt`, `gcide.txt`, `wordnet.txt`
 * (each present when its source is) and `manifest.json`.
 *
 * @example
 * ```ts ignore
 * const m = await buildCorpus({ out: "corpus", glue: "../shared/data/glue", commonsense: null });
 * ```
 */
export async function buildCorpus(options: BuildCorpusOptions): Promise<CorpusManifest> {
  const log = options.log ?? (() => {});
  await Deno.mkdir(options.out, { recursive: true });
  const files: CorpusFile[] = [];
  const missing: string[] = [];
  const add = async (name: string, source: string, docs: () => AsyncIterable<string>) => {
    const t0 = performance.now();
    const f = await writeDocuments(options.out, name, source, docs());
    if (f.documents === 0) {
      await Deno.remove(join(options.out, name));
      missing.push(source);
      return;
    }
    files.push(f);
    log(
      `${name}: ${f.documents.toLocaleString()} documents, ${f.characters.toLocaleString()} ` +
        `characters from ${source} (${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    );
  };
  if (options.glue) {
    await add(
      "glue-train.txt",
      `${options.glue} (train splits)`,
      () => glueTrainDocuments(options.glue!),
    );
  }
  if (options.commonsense) {
    await add(
      "commonsense-train.txt",
      `${options.commonsense} (train splits)`,
      () => commonsenseTrainDocuments(options.commonsense!),
    );
  }
  for (
    const [name, path, docs] of [
      ["gcide.txt", options.gcide, gcideDocuments],
      ["wordnet.txt", options.wordnet, wordnetDocuments],
    ] as const
  ) {
    if (!path) continue;
    if (!(await exists(path))) {
      missing.push(path);
      log(`${path} not found (apt-get install dict-gcide wordnet-base); left out`);
      continue;
    }
    await add(name, path, () => docs(path));
  }
  const manifest: CorpusManifest = { files, missing };
  const tmp = join(options.out, `manifest.json.tmp-${crypto.randomUUID().slice(0, 8)}`);
  await Deno.writeTextFile(tmp, JSON.stringify(manifest, null, 2) + "\n");
  await Deno.rename(tmp, join(options.out, "manifest.json"));
  return manifest;
}
