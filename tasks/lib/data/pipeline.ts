/**
 * From a task name to batches: locate the data (a local folder, or the Hugging Face cache via
 * download), tokenise once (cached on disk, keyed by the tokenizer and the settings), and cut
 * deterministic, length-bucketed, dynamically padded batches.
 *
 * @module
 */
import { join } from "node:path";
import { seededRandom } from "../../../ops/mod.ts";
import type { Tokenizer } from "../../../models/tokenizer.ts";
import {
  COMMONSENSE_DATASETS,
  type CommonsenseDataset,
  type CommonsenseRecord,
  evaluationPrompt,
  loadCommonsense,
  trainingText,
} from "./commonsense.ts";
import {
  GLUE_TASKS,
  type GlueExample,
  type GlueTask,
  type GlueTaskSpec,
  glueTaskSpec,
  loadGlue,
} from "./glue.ts";
import { downloadGlue } from "../hub/hub.ts";

/** What a task is. */
export type TaskInfo =
  | { kind: "glue"; name: GlueTask; spec: GlueTaskSpec; evalSplit: string }
  | { kind: "commonsense"; name: CommonsenseDataset; evalSplit: "test" };

/** Resolve a task name, or an error listing the known ones. */
export function resolveTask(name: string): TaskInfo {
  if ((GLUE_TASKS as readonly string[]).includes(name)) {
    const spec = glueTaskSpec(name);
    const evalSplit = name === "mnli" ? "validation_matched" : "validation";
    return { kind: "glue", name: name as GlueTask, spec, evalSplit };
  }
  const cs = COMMONSENSE_DATASETS.find((d) => d.toLowerCase() === name.toLowerCase());
  if (cs) return { kind: "commonsense", name: cs, evalSplit: "test" };
  throw new Error(
    `unknown task "${name}"; GLUE: ${GLUE_TASKS.join(", ")}; commonsense: ${
      COMMONSENSE_DATASETS.join(", ")
    }; for your own data pass --train-file FILE or --data DIR with --text-column, ` +
      "--label-column or --format",
  );
}

/** Where a task's files live: a local folder, or the Hugging Face cache (downloading if needed). */
export async function dataSource(
  task: TaskInfo,
  local: string | undefined,
  offline: boolean,
): Promise<string> {
  if (local) {
    const ok = await Deno.stat(local).then((s) => s.isDirectory, () => false);
    if (!ok) throw new Error(`--data ${local}: not a folder`);
    return local;
  }
  if (task.kind === "commonsense") {
    throw new Error(
      `commonsense data set ${task.name}: pass --data DIR with LLM-Adapters' {dataset}/{train,test}.json ` +
        "(e.g. ../shared/data/commonsense)",
    );
  }
  try {
    return (await downloadGlue(task.name, { offline })).snapshotDir;
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new Error(
      `GLUE ${task.name}: could not get the data from the Hugging Face Hub (${why}).\n` +
        "Offline? Pass --data with a local GLUE folder, e.g. --data ../shared/data/glue/tsv",
    );
  }
}

/** A tokenised example: ids, optional segment ids, and its target. */
export interface Encoded {
  /** Token ids, special tokens included (at most the encoding's maxLength). */
  ids: Int32Array;
  /** Segment ids aligned with `ids`, when the tokenizer has them (BERT). */
  typeIds?: Int32Array;
  /** Class id or regression score (sequence classification). */
  label: number;
  /** Number of leading tokens excluded from the LM loss (0: train on the full sequence). */
  promptTokens: number;
  /**
   * Per token, 1 where the LM loss counts (multi-turn chats: every reply, not the turns between);
   * absent: every token from `promptTokens` on. Not kept by the token cache.
   */
  lossMask?: Uint8Array;
}

const CACHE_VERSION = 1;

function cacheRoot(): string {
  const env = Deno.env.get("RUC_PEFT_CACHE");
  if (env) return env;
  const home = Deno.env.get("HOME") ?? "/tmp";
  return join(Deno.env.get("XDG_CACHE_HOME") ?? join(home, ".cache"), "ruc-peft", "tokens");
}

async function sha256Hex(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Serialise encoded examples (little-endian int32 stream with a small header). */
function pack(items: readonly Encoded[]): Uint8Array {
  const words: number[] = [CACHE_VERSION, items.length];
  for (const e of items) {
    words.push(e.ids.length, e.typeIds ? 1 : 0, e.promptTokens);
    const label = new Float32Array([e.label]);
    words.push(new Int32Array(label.buffer)[0]);
    words.push(...e.ids);
    if (e.typeIds) words.push(...e.typeIds);
  }
  return new Uint8Array(Int32Array.from(words).buffer);
}

function unpack(bytes: Uint8Array): Encoded[] | null {
  if (bytes.byteLength % 4) return null;
  const w = new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  if (w[0] !== CACHE_VERSION) return null;
  const out: Encoded[] = [];
  let p = 2;
  for (let i = 0; i < w[1]; i++) {
    const n = w[p], hasTypes = w[p + 1] === 1, promptTokens = w[p + 2];
    const label = new Float32Array(new Int32Array([w[p + 3]]).buffer)[0];
    p += 4;
    const ids = w.slice(p, p + n);
    p += n;
    const typeIds = hasTypes ? w.slice(p, p + n) : undefined;
    if (hasTypes) p += n;
    out.push({ ids, typeIds, label, promptTokens });
  }
  return p === w.length ? out : null;
}

/**
 * Tokenise with a disk cache keyed by the tokenizer's identity, the settings and the texts' hash:
 * a second run of the same task skips tokenisation.
 */
export async function cachedEncode(
  key: Record<string, unknown>,
  texts: readonly unknown[],
  encode: () => Encoded[],
): Promise<Encoded[]> {
  const id = await sha256Hex(
    JSON.stringify({ key, texts: await sha256Hex(JSON.stringify(texts)) }),
  );
  const file = join(cacheRoot(), `${id}.bin`);
  try {
    const hit = unpack(await Deno.readFile(file));
    if (hit && hit.length === texts.length) return hit;
  } catch { /* not cached yet */ }
  const items = encode();
  try {
    await Deno.mkdir(cacheRoot(), { recursive: true });
    const tmp = `${file}.tmp-${crypto.randomUUID().slice(0, 8)}`;
    await Deno.writeFile(tmp, pack(items));
    await Deno.rename(tmp, file);
  } catch { /* a read-only cache only costs the re-tokenisation */ }
  return items;
}

/** Tokenise GLUE examples for sequence classification (pairs as the tokenizer's template). */
export function encodeGlue(
  tokenizer: Tokenizer,
  examples: readonly GlueExample[],
  maxLength: number,
): Encoded[] {
  return examples.map((e) => {
    const batch = tokenizer.encodeBatch([e.text], {
      pairs: e.textPair !== undefined ? [e.textPair] : undefined,
      maxLength,
      truncation: "longest_first",
    });
    const ids = Int32Array.from(batch.inputIds[0]);
    const typeIds = batch.tokenTypeIds ? Int32Array.from(batch.tokenTypeIds[0]) : undefined;
    return { ids, typeIds, label: e.label, promptTokens: 0 };
  });
}

/**
 * Tokenise commonsense records for causal-LM training: prompt + answer (+ EOS), the loss over the
 * full sequence (LLM-Adapters' train_on_inputs default), truncated to `maxLength`.
 */
export function encodeCommonsenseTrain(
  tokenizer: Tokenizer,
  records: readonly CommonsenseRecord[],
  maxLength: number,
): Encoded[] {
  return records.map((r) => {
    let ids = tokenizer.encode(trainingText(r)).ids;
    if (tokenizer.eosId !== null && ids[ids.length - 1] !== tokenizer.eosId) {
      ids = [...ids, tokenizer.eosId];
    }
    return { ids: Int32Array.from(ids.slice(0, maxLength)), label: 0, promptTokens: 0 };
  });
}

/** Evaluation prompts of commonsense records, tokenised (BOS included, no EOS). */
export function encodeCommonsensePrompts(
  tokenizer: Tokenizer,
  records: readonly CommonsenseRecord[],
  maxLength: number,
): number[][] {
  return records.map((r) => {
    const ids = tokenizer.encode(evaluationPrompt(r)).ids;
    const trimmed = tokenizer.eosId !== null && ids[ids.length - 1] === tokenizer.eosId
      ? ids.slice(0, -1)
      : ids;
    return trimmed.slice(Math.max(0, trimmed.length - maxLength));
  });
}

/** Load GLUE examples of a split (optionally the first `limit`). */
export async function glueExamples(
  task: GlueTask,
  split: string,
  source: string,
  limit?: number,
): Promise<GlueExample[]> {
  const all = await loadGlue(task, split, { source });
  return limit ? all.slice(0, limit) : all;
}

/** Load commonsense records of a split (optionally the first `limit`). */
export async function commonsenseRecords(
  dataset: CommonsenseDataset,
  split: "train" | "test",
  source: string,
  limit?: number,
): Promise<CommonsenseRecord[]> {
  const all = await loadCommonsense(dataset, split, { source });
  return limit ? all.slice(0, limit) : all;
}

// ---- batching -----------------------------------------------------------------------------------

function shuffled<T>(items: readonly T[], random: () => number): T[] {
  const a = [...items];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/**
 * The batches of one epoch, as lists of example indices. Deterministic in (seed, epoch): examples
 * are shuffled, grouped into pools of 50 batches, sorted by length inside a pool (so a batch pads
 * little), and the batches are shuffled again. Without `shuffle`, batches follow the input order.
 */
export function epochBatches(
  lengths: readonly number[],
  batchSize: number,
  seed: number,
  epoch: number,
  shuffle = true,
): number[][] {
  const order = [...lengths.keys()];
  if (!shuffle) {
    const out: number[][] = [];
    for (let i = 0; i < order.length; i += batchSize) out.push(order.slice(i, i + batchSize));
    return out;
  }
  const random = seededRandom((seed * 1000003 + epoch * 7919) >>> 0);
  const mixed = shuffled(order, random);
  const pool = batchSize * 50;
  const batches: number[][] = [];
  for (let p = 0; p < mixed.length; p += pool) {
    const chunk = mixed.slice(p, p + pool).sort((a, b) => lengths[a] - lengths[b] || a - b);
    for (let i = 0; i < chunk.length; i += batchSize) batches.push(chunk.slice(i, i + batchSize));
  }
  return shuffled(batches, random);
}

/** A padded batch on the host. */
export interface HostBatch {
  /** Rows (examples) in the batch. */
  b: number;
  /** Padded length: the longest row's tokens. */
  t: number;
  /** [b·t] token ids. */
  ids: Int32Array;
  /** [b·t] 1 for real tokens. */
  mask: Float32Array;
  /** [b·t] segment ids, when the tokenizer has them. */
  typeIds?: Int32Array;
  /** Per row: class id / score. */
  labels: Float32Array;
  /** [b·t] causal-LM labels (−100: ignored). */
  lmLabels: Int32Array;
  /** Per row: index of the last real token. */
  lastIndex: number[];
  /** Real (non-padding) tokens in the batch. */
  tokens: number;
}

/** Pad a batch of encoded examples (dynamic padding to the longest; `side` as the model wants). */
export function collate(
  items: readonly Encoded[],
  padId: number,
  side: "left" | "right" = "right",
): HostBatch {
  const b = items.length;
  const t = Math.max(1, ...items.map((e) => e.ids.length));
  const ids = new Int32Array(b * t).fill(padId);
  const mask = new Float32Array(b * t);
  const hasTypes = items.some((e) => e.typeIds);
  const typeIds = hasTypes ? new Int32Array(b * t) : undefined;
  const lmLabels = new Int32Array(b * t).fill(-100);
  const labels = new Float32Array(b);
  const lastIndex: number[] = [];
  let tokens = 0;
  items.forEach((e, i) => {
    const n = e.ids.length;
    const start = side === "left" ? t - n : 0;
    ids.set(e.ids, i * t + start);
    mask.fill(1, i * t + start, i * t + start + n);
    if (typeIds && e.typeIds) typeIds.set(e.typeIds, i * t + start);
    for (let j = e.promptTokens; j < n; j++) {
      if (!e.lossMask || e.lossMask[j]) lmLabels[i * t + start + j] = e.ids[j];
    }
    labels[i] = e.label;
    lastIndex.push(start + n - 1);
    tokens += n;
  });
  return { b, t, ids, mask, typeIds, labels, lmLabels, lastIndex, tokens };
}
