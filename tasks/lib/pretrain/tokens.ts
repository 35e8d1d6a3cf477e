/**
 * Raw text for pretraining, streamed: documents from `.txt` files (one per non-empty line) or
 * `.jsonl` files (one JSON object per line, text in a column), plain or gzip-compressed; tokenised
 * and packed into fixed-length blocks the way Hugging Face's run_mlm.py / run_clm.py do it
 * (`group_texts`: each document tokenised with the model's special tokens, the documents of a
 * group of 1000 concatenated, cut into blocks of `blockSize`, the group's remainder dropped).
 *
 * The blocks go to a token cache file on disk (not memory), written once and atomically, and are
 * read back one block at a time by offset, so a corpus larger than memory trains, and a resumed
 * run reads exactly the blocks the uninterrupted one would.
 *
 * @module
 */
import { join, resolve } from "node:path";
import type { Tokenizer } from "../../../models/tokenizer.ts";

/** Where a document of the stream came from, for error messages. */
export interface DocumentOrigin {
  /** The file. */
  file: string;
  /** 1-based line number. */
  line: number;
}

/** Options of {@link readTextDocuments}. */
export interface TextReadOptions {
  /** The JSONL field holding the text (default "text"). */
  textColumn?: string;
}

/** The file kinds a pretraining corpus may use, by extension. */
export const TEXT_EXTENSIONS = [".txt", ".text", ".jsonl", ".txt.gz", ".jsonl.gz"] as const;

function kindOf(file: string): "txt" | "jsonl" {
  const f = file.toLowerCase().replace(/\.gz$/, "");
  if (f.endsWith(".txt") || f.endsWith(".text")) return "txt";
  if (f.endsWith(".jsonl")) return "jsonl";
  throw new Error(
    `${file}: a pretraining text file must end in ${TEXT_EXTENSIONS.join(", ")}`,
  );
}

async function* lines(file: string): AsyncGenerator<string> {
  let handle: Deno.FsFile;
  try {
    handle = await Deno.open(file);
  } catch (e) {
    throw new Error(`${file}: cannot open (${e instanceof Error ? e.message : e})`);
  }
  const stream: ReadableStream<Uint8Array> = file.toLowerCase().endsWith(".gz")
    ? handle.readable.pipeThrough(new DecompressionStream("gzip"))
    : handle.readable;
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    let nl: number;
    while ((nl = rest.indexOf("\n")) >= 0) {
      yield rest.slice(0, nl).replace(/\r$/, "");
      rest = rest.slice(nl + 1);
    }
  }
  if (rest) yield rest.replace(/\r$/, "");
}

/**
 * The documents of `files`, in order, streamed. Empty lines are skipped (Hugging Face's text
 * loader keeps them as empty examples, which only add `<s></s>` pairs to the packed stream).
 */
export async function* readTextDocuments(
  files: readonly string[],
  options: TextReadOptions = {},
): AsyncGenerator<{ text: string; origin: DocumentOrigin }> {
  const column = options.textColumn ?? "text";
  if (files.length === 0) throw new Error("pretraining needs at least one --train-file");
  for (const file of files) {
    const kind = kindOf(file);
    let n = 0;
    for await (const raw of lines(file)) {
      n++;
      if (!raw.trim()) continue;
      if (kind === "txt") {
        yield { text: raw, origin: { file, line: n } };
        continue;
      }
      let row: unknown;
      try {
        row = JSON.parse(raw);
      } catch (e) {
        throw new Error(
          `${file}:${n}: not a JSON object (${
            e instanceof Error ? e.message : e
          }); JSONL holds one object per line`,
        );
      }
      if (typeof row !== "object" || row === null || Array.isArray(row)) {
        throw new Error(`${file}:${n}: expected a JSON object with a "${column}" field`);
      }
      const text = (row as Record<string, unknown>)[column];
      if (typeof text !== "string") {
        const keys = Object.keys(row).slice(0, 8).join(", ");
        throw new Error(
          `${file}:${n}: column "${column}" ${
            text === undefined ? "is missing" : "is not a string"
          } (fields: ${keys}); choose the text column with --text-column`,
        );
      }
      if (text.trim()) yield { text, origin: { file, line: n } };
    }
  }
}

/** How documents become blocks. */
export interface PackOptions {
  /** Tokens per block (the model's sequence length, `--max-length`). */
  blockSize: number;
  /** Documents concatenated before cutting (Hugging Face's `map(batched=True)` default: 1000). */
  groupSize?: number;
  /** The JSONL text field. */
  textColumn?: string;
}

const MAGIC = 0x4b4f5452; // "RTOK"
const FORMAT_VERSION = 1;
const HEADER_BYTES = 32;

/** Packed token blocks in a cache file, read one block at a time. */
export class TokenBlocks {
  readonly #file: Deno.FsFile;
  readonly #bytesPerToken: number;

  /** @internal use {@link packTokenBlocks} or {@link TokenBlocks.open}. */
  constructor(
    file: Deno.FsFile,
    /** Tokens per block. */
    readonly blockSize: number,
    /** Number of blocks. */
    readonly count: number,
    bytesPerToken: number,
    /** Tokens of the corpus before the per-group remainders were dropped. */
    readonly totalTokens: number,
    /** The cache file. */
    readonly path: string,
  ) {
    this.#file = file;
    this.#bytesPerToken = bytesPerToken;
  }

  /** Open a cache file written by {@link packTokenBlocks}; null when it is not one. */
  static open(path: string): TokenBlocks | null {
    let file: Deno.FsFile;
    try {
      file = Deno.openSync(path, { read: true });
    } catch {
      return null;
    }
    const head = new Uint8Array(HEADER_BYTES);
    const n = file.readSync(head);
    const w = new Uint32Array(head.buffer);
    const size = file.statSync().size;
    const [magic, version, blockSize, count, bpt, totalLo, totalHi] = w;
    const total = totalLo + totalHi * 2 ** 32;
    if (
      n !== HEADER_BYTES || magic !== MAGIC || version !== FORMAT_VERSION ||
      (bpt !== 2 && bpt !== 4) || size !== HEADER_BYTES + blockSize * count * bpt
    ) {
      file.close();
      return null;
    }
    return new TokenBlocks(file, blockSize, count, bpt, total, path);
  }

  /** Block `k` (0 ≤ k < count) as token ids. */
  read(k: number): Int32Array {
    if (!Number.isInteger(k) || k < 0 || k >= this.count) {
      throw new Error(`${this.path}: block ${k} out of range (0..${this.count - 1})`);
    }
    const bytes = new Uint8Array(this.blockSize * this.#bytesPerToken);
    this.#file.seekSync(HEADER_BYTES + k * bytes.length, Deno.SeekMode.Start);
    let off = 0;
    while (off < bytes.length) {
      const got = this.#file.readSync(bytes.subarray(off));
      if (got === null || got === 0) throw new Error(`${this.path}: truncated at block ${k}`);
      off += got;
    }
    const src = this.#bytesPerToken === 2
      ? new Uint16Array(bytes.buffer)
      : new Uint32Array(bytes.buffer);
    return Int32Array.from(src);
  }

  /** Close the file. */
  close(): void {
    try {
      this.#file.close();
    } catch { /* already closed */ }
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await file.write(bytes.subarray(off));
}

/** The cache key of a packing: the files' identity (path, size, mtime) and every setting. */
async function cacheKey(
  files: readonly string[],
  tokenizerId: string,
  options: PackOptions,
): Promise<string> {
  const stats = [];
  for (const f of files) {
    const s = await Deno.stat(f).catch((e) => {
      throw new Error(`${f}: cannot read (${e instanceof Error ? e.message : e})`);
    });
    stats.push([resolve(f), s.size, s.mtime?.getTime() ?? 0]);
  }
  const text = JSON.stringify({
    v: FORMAT_VERSION,
    stats,
    tokenizerId,
    blockSize: options.blockSize,
    groupSize: options.groupSize ?? 1000,
    textColumn: options.textColumn ?? "text",
  });
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(d)].slice(0, 12).map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Tokenise `files` into blocks of `blockSize` tokens in `cacheDir` (reused when the files and
 * settings are unchanged) and open them.
 *
 * @example
 * ```ts ignore
 * const blocks = await packTokenBlocks(["corpus/wordnet.txt"], tokenizer, "roberta-base", {
 *   blockSize: 128,
 * }, "/tmp/cache");
 * console.log(blocks.count, blocks.read(0).length); // …, 128
 * ```
 */
export async function packTokenBlocks(
  files: readonly string[],
  tokenizer: Tokenizer,
  tokenizerId: string,
  options: PackOptions,
  cacheDir: string,
  log: (line: string) => void = () => {},
): Promise<TokenBlocks> {
  const { blockSize } = options;
  const groupSize = options.groupSize ?? 1000;
  if (!Number.isInteger(blockSize) || blockSize < 2) {
    throw new Error(`--max-length ${blockSize}: pretraining blocks need at least 2 tokens`);
  }
  const key = await cacheKey(files, tokenizerId, options);
  const path = join(cacheDir, `blocks-${key}.bin`);
  const hit = TokenBlocks.open(path);
  if (hit) return hit;
  await Deno.mkdir(cacheDir, { recursive: true });
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  const bpt = tokenizer.vocabSize <= 65536 ? 2 : 4;
  const out = await Deno.open(tmp, { write: true, create: true, truncate: true });
  const t0 = performance.now();
  let count = 0, total = 0, docs = 0;
  try {
    await writeAll(out, new Uint8Array(HEADER_BYTES)); // the header is written last
    let group: number[] = [];
    let inGroup = 0;
    let pending: number[] = [];
    const emit = async (force: boolean) => {
      if (pending.length >= 1 << 20 || (force && pending.length)) {
        const arr = bpt === 2 ? Uint16Array.from(pending) : Uint32Array.from(pending);
        await writeAll(out, new Uint8Array(arr.buffer));
        pending = [];
      }
    };
    const cut = async () => {
      const n = Math.floor(group.length / blockSize) * blockSize;
      for (let i = 0; i < n; i++) pending.push(group[i]);
      count += n / blockSize;
      group = [];
      inGroup = 0;
      await emit(false);
    };
    for await (const { text } of readTextDocuments(files, options)) {
      const ids = tokenizer.encode(text).ids;
      for (const id of ids) group.push(id);
      total += ids.length;
      docs++;
      if (++inGroup === groupSize) await cut();
      if (docs % 100000 === 0) {
        log(`tokenised ${docs.toLocaleString()} documents (${total.toLocaleString()} tokens)`);
      }
    }
    await cut();
    await emit(true);
    const head = new Uint32Array(HEADER_BYTES / 4);
    head.set([
      MAGIC,
      FORMAT_VERSION,
      blockSize,
      count,
      bpt,
      total % 2 ** 32,
      Math.floor(total / 2 ** 32),
    ]);
    await out.seek(0, Deno.SeekMode.Start);
    await writeAll(out, new Uint8Array(head.buffer));
  } finally {
    out.close();
  }
  if (count === 0) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(
      `${files.join(", ")}: ${total} tokens in ${docs} documents make no block of ${blockSize} ` +
        `tokens; add text or lower --max-length`,
    );
  }
  await Deno.rename(tmp, path);
  log(
    `packed ${docs.toLocaleString()} documents (${total.toLocaleString()} tokens) into ` +
      `${count.toLocaleString()} blocks of ${blockSize} in ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s`,
  );
  const blocks = TokenBlocks.open(path);
  if (!blocks) throw new Error(`${path}: the token cache just written cannot be read back`);
  return blocks;
}
