/**
 * `deno task corpus --out DIR` — write a pretraining corpus of real English text reachable
 * offline: the GLUE and commonsense training splits (never dev/test), Debian's GCIDE dictionary
 * and WordNet glosses (`apt-get install dict-gcide wordnet-base`). One document per line per
 * source, plus manifest.json with document counts and SHA-256 of every file.
 *
 * ```
 * deno task corpus --out runs/corpus --glue ../shared/data/glue --commonsense ../shared/data/commonsense
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { buildCorpus, DEFAULT_GCIDE, DEFAULT_WORDNET } from "./lib/pretrain/corpus.ts";

const USAGE = `usage: deno task corpus --out DIR [--glue DIR|none] [--commonsense DIR|none]
       [--gcide FILE|none] [--wordnet DIR|none]
  --glue DIR          GLUE root (parquet and/or TSV layout); its train splits only
  --commonsense DIR   commonsense root (LLM-Adapters layout); its train splits only
  --gcide FILE        dictd GCIDE file (default ${DEFAULT_GCIDE})
  --wordnet DIR       WordNet database folder (default ${DEFAULT_WORDNET})
  "none" leaves a source out.`;

/** Parse the flags and build the corpus; returns the lines to print. */
export async function corpusCli(args: readonly string[]): Promise<string[]> {
  const { values } = parseArgs({
    args: [...args],
    options: {
      out: { type: "string" },
      glue: { type: "string" },
      commonsense: { type: "string" },
      gcide: { type: "string" },
      wordnet: { type: "string" },
      help: { type: "boolean" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return [USAGE];
  if (!values.out) throw new UsageError("--out DIR is required");
  const pick = (v: string | undefined, dflt: string | null) => v === "none" ? null : v ?? dflt;
  const manifest = await buildCorpus({
    out: values.out,
    glue: pick(values.glue, null),
    commonsense: pick(values.commonsense, null),
    gcide: pick(values.gcide, DEFAULT_GCIDE),
    wordnet: pick(values.wordnet, DEFAULT_WORDNET),
    log: (l) => console.error(l),
  });
  const docs = manifest.files.reduce((a, f) => a + f.documents, 0);
  return [
    `${values.out}: ${manifest.files.length} files, ${docs.toLocaleString()} documents` +
    (manifest.missing.length ? ` (missing: ${manifest.missing.join(", ")})` : ""),
    ...manifest.files.map((f) => `  ${f.file}  ${f.documents.toLocaleString()} documents`),
  ];
}

/** A bad flag (exit 2). */
class UsageError extends Error {}

if (import.meta.main) {
  try {
    for (const line of await corpusCli(Deno.args)) console.log(line);
  } catch (e) {
    const usage = e instanceof UsageError || (e instanceof TypeError && "code" in e);
    console.error(`error: ${e instanceof Error ? e.message : e}${usage ? `\n${USAGE}` : ""}`);
    Deno.exit(usage ? 2 : 1);
  }
}
