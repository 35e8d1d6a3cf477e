/**
 * Tokenizers: a wrapper over `@huggingface/tokenizers` (tokenizer.json) that adds what the package
 * lacks — batch encoding with truncation and padding, special-token ids, token type ids — plus two
 * ways of getting a tokenizer.json the package cannot load on its own:
 *
 * - a folder with only `vocab.json` + `merges.txt` (RoBERTa's original release): the equivalent
 *   byte-level BPE tokenizer.json is built in memory;
 * - a tokenizer.json converted from llama2.c (see models/llama2c.ts): its model section is an
 *   ordinary `"type": "BPE"` with merges ordered by score (so other libraries load it), plus a
 *   `"llama2c": {"scores": [...]}` object. Merge ranks cannot reproduce llama2.c exactly (a literal
 *   "▁" or "<s>" in the text, and overlapping pairs that build the same piece, come out
 *   differently), so for this kind the text is split by a port of llama2.c's own score-merge
 *   `encode` and decoded with its rules.
 *
 * @example
 * ```ts
 * import { loadTokenizer } from "./tokenizer.ts";
 * const tok = await loadTokenizer("../shared/data/tokenizers/roberta-base");
 * console.log(tok.encode("Hello world").ids); // [0, 31414, 232, 2]
 * const batch = tok.encodeBatch(["Hello world", "Hi"], { padding: "longest" });
 * console.log(batch.attentionMask); // [[1, 1, 1, 1], [1, 1, 1, 0]]
 * ```
 *
 * @module
 */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { join } from "node:path";

/** A tokenizer.json object (Hugging Face `tokenizers` serialization), loosely typed. */
export type TokenizerJson = Record<string, unknown>;

/** The key of the llama2.c score-merge section inside a tokenizer.json `model` object. */
export const LLAMA2C_MODEL_KEY = "llama2c";

/** Which segmentation algorithm a {@link Tokenizer} runs. */
export type TokenizerKind = "huggingface" | "llama2c";

/**
 * How a pair (or a single sequence) is shortened to `maxLength` tokens, special tokens included
 * (Hugging Face's names). `longest_first` follows the Rust `tokenizers` crate: when both sequences
 * must shrink, the shorter keeps ⌊budget/2⌋ tokens and the longer the rest.
 */
export type TruncationStrategy = "longest_first" | "only_first" | "only_second";

/** Pad every row to the longest row of the batch, or to `maxLength`. */
export type PaddingStrategy = "longest" | "max_length";

/** Which end of a row padding (or truncation) applies to. */
export type Side = "left" | "right";

/** One encoded sequence (or pair). */
export interface Encoding {
  /** Token ids, special tokens included. */
  ids: number[];
  /** Segment of each token: 0 for the first sequence, 1 for the second (per the template). */
  typeIds: number[];
}

/** Options of {@link Tokenizer.encodeBatch}. */
export interface BatchOptions {
  /** Second sequences, one per text (sentence-pair tasks). */
  pairs?: readonly string[];
  /** Row length limit, special tokens included; required by truncation and `max_length` padding. */
  maxLength?: number;
  /** Default: `longest_first` when `maxLength` is set; `false` never truncates. */
  truncation?: TruncationStrategy | false;
  /** Drop tokens from the end (`right`, default) or the start (`left`) of a sequence. */
  truncationSide?: Side;
  /** Default `longest`; `false` leaves rows ragged. */
  padding?: PaddingStrategy | false;
  /** Default: the tokenizer's {@link Tokenizer.paddingSide}. */
  paddingSide?: Side;
  /** Overrides {@link Tokenizer.padId}. */
  padId?: number;
  /** Add the template's special tokens (default true). */
  addSpecialTokens?: boolean;
}

/** A batch ready for a model: rows of equal length unless padding is off. */
export interface BatchEncoding {
  /** Token ids [B][T]. */
  inputIds: number[][];
  /** 1 for real tokens, 0 for padding [B][T]. */
  attentionMask: number[][];
  /** Segment ids [B][T]; only for tokenizers whose model takes them (BERT-style). */
  tokenTypeIds?: number[][];
}

/** One position of a post-processing template: a special token, or where sequence A/B goes. */
type Slot = { special: number; typeId: number } | { sequence: "A" | "B"; typeId: number };

/** The part that differs between the two kinds: text → ids, and ids → text. */
interface Segmenter {
  tokenize(text: string): number[];
  decode(ids: readonly number[], skipSpecial: boolean): string;
}

/**
 * A loaded tokenizer. Construct with {@link loadTokenizer} or {@link tokenizerFromJson}.
 */
export class Tokenizer {
  /** Which segmentation algorithm runs. */
  readonly kind: TokenizerKind;
  /** Number of ids (model vocabulary plus added tokens). */
  readonly vocabSize: number;
  /** Beginning-of-sequence id (`<s>`), or null. */
  readonly bosId: number | null;
  /** End-of-sequence id (`</s>`), or null. */
  readonly eosId: number | null;
  /** Unknown-token id, or null. */
  readonly unkId: number | null;
  /**
   * Padding id: the pad token, else the unknown token (the LLaMA fine-tuning convention, e.g.
   * LLM-Adapters' `pad_token_id = 0`), else null (padding then needs an explicit `padId`).
   */
  readonly padId: number | null;
  /** Whether batches carry token type ids (BERT-style models). */
  readonly hasTokenTypeIds: boolean;
  /** Default padding side (tokenizer_config.json `padding_side`, else right). */
  readonly paddingSide: Side;
  /** Ids of special tokens (dropped by `decode(ids, true)`). */
  readonly specialIds: ReadonlySet<number>;
  readonly #hf: HfTokenizer;
  readonly #segmenter: Segmenter;
  readonly #single: readonly Slot[];
  readonly #pair: readonly Slot[];

  /** @internal use {@link tokenizerFromJson}. */
  constructor(json: TokenizerJson, config: Record<string, unknown>, source: string) {
    const model = json.model;
    if (!isObject(model)) throw new Error(`${source}: "model" must be an object`);
    for (const key of ["normalizer", "pre_tokenizer", "post_processor", "decoder"]) {
      if (!(key in json)) json = { ...json, [key]: null };
    }
    if (!Array.isArray(json.added_tokens)) json = { ...json, added_tokens: [] };
    try {
      this.#hf = new HfTokenizer(json, config);
    } catch (e) {
      throw new Error(`${source}: @huggingface/tokenizers rejected it: ${errorText(e)}`);
    }
    const hf = this.#hf;
    let maxId = -1;
    for (const id of hf.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    const special = new Set<number>();
    for (const [id, token] of hf.get_added_tokens_decoder()) if (token.special) special.add(id);
    this.specialIds = special;

    const idOf = (field: string, fallbacks: readonly string[]): number | null => {
      const named = tokenName(config[field]);
      if (named !== null) {
        const id = hf.token_to_id(named);
        if (id === undefined) {
          throw new Error(
            `${source}: tokenizer_config ${field} "${named}" is not in the vocabulary`,
          );
        }
        return id;
      }
      if (field in config && config[field] === null) return null;
      for (const name of fallbacks) {
        const id = hf.token_to_id(name);
        if (id !== undefined) return id;
      }
      return null;
    };
    this.bosId = idOf("bos_token", ["<s>", "<|begin_of_text|>"]);
    this.eosId = idOf("eos_token", ["</s>", "<|endoftext|>", "<|end_of_text|>"]);
    this.unkId = idOf("unk_token", ["<unk>", "[UNK]"]);
    this.padId = idOf("pad_token", ["<pad>", "[PAD]"]) ?? this.unkId;

    const side = config.padding_side;
    if (side !== undefined && side !== "left" && side !== "right") {
      throw new Error(`${source}: tokenizer_config padding_side must be "left" or "right"`);
    }
    this.paddingSide = (side as Side | undefined) ?? "right";

    this.#single = this.#template(false, source);
    this.#pair = this.#template(true, source);
    this.hasTokenTypeIds = wantsTokenTypeIds(json, config);

    const cleanUp = config.clean_up_tokenization_spaces === true;
    const scores = model[LLAMA2C_MODEL_KEY];
    if (scores !== undefined) {
      this.kind = "llama2c";
      this.#segmenter = new Llama2cSegmenter(model, special, this.bosId, scores, source);
    } else {
      this.kind = "huggingface";
      this.#segmenter = {
        tokenize: (text) => hf.encode(text, { add_special_tokens: false }).ids,
        decode: (ids, skipSpecial) =>
          ids.length === 0 ? "" : hf.decode([...ids], {
            skip_special_tokens: skipSpecial,
            clean_up_tokenization_spaces: cleanUp,
          }),
      };
    }
  }

  /** Ids of `text` alone, without special tokens. */
  tokenize(text: string): number[] {
    if (typeof text !== "string") {
      throw new Error(`tokenize: expected a string, got ${typeof text}`);
    }
    return this.#segmenter.tokenize(text);
  }

  /**
   * Encode one text or a pair with the template's special tokens (RoBERTa: `<s> A </s></s> B </s>`).
   *
   * @example
   * ```ts
   * import { loadTokenizer } from "./tokenizer.ts";
   * const tok = await loadTokenizer("../shared/data/tokenizers/roberta-base");
   * console.log(tok.encode("Hello", "world").ids); // [0, 31414, 2, 2, 8331, 2]
   * ```
   */
  encode(text: string, pair?: string, { addSpecialTokens = true } = {}): Encoding {
    const a = this.tokenize(text);
    const b = pair === undefined ? null : this.tokenize(pair);
    return this.#assemble(a, b, addSpecialTokens);
  }

  /** Number of special tokens the template adds to a single sequence or to a pair. */
  numSpecialTokens(pair: boolean): number {
    return (pair ? this.#pair : this.#single).filter((s) => "special" in s).length;
  }

  /**
   * Encode a batch with truncation and padding.
   *
   * @example
   * ```ts
   * import { loadTokenizer } from "./tokenizer.ts";
   * const tok = await loadTokenizer("../shared/data/tokenizers/roberta-base");
   * const b = tok.encodeBatch(["a b c d e f", "x"], { maxLength: 5, padding: "max_length" });
   * console.log(b.inputIds[1].length); // 5
   * ```
   */
  encodeBatch(texts: readonly string[], options: BatchOptions = {}): BatchEncoding {
    const {
      pairs,
      maxLength,
      truncationSide = "right",
      padding = "longest",
      paddingSide = this.paddingSide,
      addSpecialTokens = true,
    } = options;
    const truncation = options.truncation ?? (maxLength === undefined ? false : "longest_first");
    if (!Array.isArray(texts)) throw new Error("encodeBatch: texts must be an array of strings");
    if (pairs !== undefined && pairs.length !== texts.length) {
      throw new Error(
        `encodeBatch: pairs has ${pairs.length} entries, expected one per text (${texts.length})`,
      );
    }
    if (maxLength !== undefined && !(Number.isInteger(maxLength) && maxLength > 0)) {
      throw new Error(`encodeBatch: maxLength must be a positive integer, got ${maxLength}`);
    }
    if ((truncation !== false || padding === "max_length") && maxLength === undefined) {
      throw new Error(
        `encodeBatch: ${
          truncation !== false ? `truncation "${truncation}"` : `padding "max_length"`
        }` +
          " needs maxLength",
      );
    }
    const rows = texts.map((text, i) => {
      let a = this.tokenize(text);
      let b = pairs === undefined ? null : this.tokenize(pairs[i]);
      if (truncation !== false) {
        const budget = maxLength! - (addSpecialTokens ? this.numSpecialTokens(b !== null) : 0);
        const [n1, n2] = truncatedLengths(a.length, b?.length ?? null, budget, truncation, i);
        a = keep(a, n1, truncationSide);
        if (b !== null) b = keep(b, n2, truncationSide);
      }
      return this.#assemble(a, b, addSpecialTokens);
    });

    const width = padding === "max_length"
      ? maxLength!
      : Math.max(0, ...rows.map((r) => r.ids.length));
    const padId = options.padId ?? this.padId;
    if (padding !== false && padId === null && rows.some((r) => r.ids.length < width)) {
      throw new Error("encodeBatch: the tokenizer has no pad or unk token; pass padId");
    }
    const out: BatchEncoding = { inputIds: [], attentionMask: [] };
    const types: number[][] = [];
    rows.forEach((row, i) => {
      const n = row.ids.length;
      if (padding !== false && n > width) {
        throw new Error(
          `encodeBatch: row ${i} has ${n} tokens, more than maxLength ${width}, and truncation is off`,
        );
      }
      const fill = padding === false ? 0 : width - n;
      out.inputIds.push(pad(row.ids, fill, padId ?? 0, paddingSide));
      out.attentionMask.push(pad(new Array<number>(n).fill(1), fill, 0, paddingSide));
      types.push(pad(row.typeIds, fill, 0, paddingSide));
    });
    if (this.hasTokenTypeIds) out.tokenTypeIds = types;
    return out;
  }

  /**
   * Ids back to text. For llama2.c tokenizers this is llama2.c's own output: byte pieces become
   * bytes, and a piece right after BOS loses its leading space (run.c prints the same, except that
   * its safe_printf drops lone non-printable bytes, i.e. the byte pieces of non-ASCII characters).
   * Hugging Face's clean_up_tokenization_spaces applies only when tokenizer_config.json says true.
   */
  decode(ids: readonly number[], skipSpecial = false): string {
    ids.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new Error(`decode: ids[${i}] = ${id} is not a token id in [0, ${this.vocabSize})`);
      }
    });
    return this.#segmenter.decode(ids, skipSpecial);
  }

  /** The id of a token string, or undefined. */
  tokenToId(token: string): number | undefined {
    return this.#hf.token_to_id(token);
  }

  /** The token string of an id, or undefined. */
  idToToken(id: number): string | undefined {
    return this.#hf.id_to_token(id);
  }

  #assemble(a: number[], b: number[] | null, addSpecial: boolean): Encoding {
    if (!addSpecial) {
      return {
        ids: b === null ? a : [...a, ...b],
        typeIds: [...a.map(() => 0), ...(b ?? []).map(() => 1)],
      };
    }
    const ids: number[] = [], typeIds: number[] = [];
    for (const slot of b === null ? this.#single : this.#pair) {
      const part = "special" in slot ? [slot.special] : slot.sequence === "A" ? a : b!;
      for (const id of part) {
        ids.push(id);
        typeIds.push(slot.typeId);
      }
    }
    return { ids, typeIds };
  }

  /**
   * The post-processor's layout, found by running it on one placeholder token per sequence:
   * every post-processor type only places special tokens around whole sequences.
   */
  #template(pair: boolean, source: string): Slot[] {
    const hf = this.#hf;
    const markA = "\u0000sequence A\u0000", markB = "\u0000sequence B\u0000";
    if (hf.post_processor === null) {
      return pair
        ? [{ sequence: "A", typeId: 0 }, { sequence: "B", typeId: 1 }]
        : [{ sequence: "A", typeId: 0 }];
    }
    const out = hf.post_processor([markA], pair ? [markB] : null, true);
    const slots = out.tokens.map((token, i): Slot => {
      const typeId = out.token_type_ids?.[i] ?? 0;
      if (token === markA) return { sequence: "A", typeId };
      if (token === markB) return { sequence: "B", typeId };
      const special = hf.token_to_id(token);
      if (special === undefined) {
        throw new Error(
          `${source}: post_processor adds "${token}", which is not in the vocabulary`,
        );
      }
      return { special, typeId };
    });
    // Processors that leave the pair alone (ByteLevel) get Rust's default: B appended, type 1.
    if (pair && !out.tokens.includes(markB)) slots.push({ sequence: "B", typeId: 1 });
    return slots;
  }
}

/**
 * Load the tokenizer of a model folder: tokenizer.json (+ tokenizer_config.json when present), or
 * RoBERTa-style vocab.json + merges.txt.
 */
export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  const configPath = join(dir, "tokenizer_config.json");
  const config = (await exists(configPath)) ? await readJson(configPath) : {};
  const jsonPath = join(dir, "tokenizer.json");
  if (await exists(jsonPath)) return tokenizerFromJson(await readJson(jsonPath), config, jsonPath);
  const vocabPath = join(dir, "vocab.json"), mergesPath = join(dir, "merges.txt");
  if ((await exists(vocabPath)) && (await exists(mergesPath))) {
    const vocab = await readJson(vocabPath);
    const merges = await Deno.readTextFile(mergesPath);
    return tokenizerFromJson(robertaTokenizerJson(vocab, merges, dir), config, vocabPath);
  }
  throw new Error(`no tokenizer in ${dir}: expected tokenizer.json, or vocab.json + merges.txt`);
}

/** A tokenizer from a parsed tokenizer.json (and optional tokenizer_config.json contents). */
export function tokenizerFromJson(
  json: TokenizerJson,
  config: Record<string, unknown> = {},
  source = "tokenizer.json",
): Tokenizer {
  if (!isObject(json)) throw new Error(`${source}: expected a JSON object`);
  return new Tokenizer(json, config, source);
}

/**
 * The tokenizer.json equivalent of RoBERTa's original vocab.json + merges.txt: byte-level BPE with
 * GPT-2's pre-tokenizer, `<s> A </s>` / `<s> A </s></s> B </s>`, and its five special tokens.
 */
export function robertaTokenizerJson(
  vocab: Record<string, unknown>,
  mergesText: string,
  source = "vocab.json",
): TokenizerJson {
  for (const [token, id] of Object.entries(vocab)) {
    if (!Number.isInteger(id)) {
      throw new Error(`${source}: vocab.json entry "${token}" must map to an integer id`);
    }
  }
  const idOf = (token: string): number => {
    const id = vocab[token];
    if (typeof id !== "number") {
      throw new Error(`${source}: vocab.json lacks RoBERTa's special token "${token}"`);
    }
    return id;
  };
  const special = (content: string, lstrip = false): Record<string, unknown> => ({
    id: idOf(content),
    content,
    single_word: false,
    lstrip,
    rstrip: false,
    normalized: false,
    special: true,
  });
  const merges = mergesText.split("\n").filter((l) => l.trim() !== "" && !l.startsWith("#version"));
  merges.forEach((line, i) => {
    if (line.split(" ").length !== 2) {
      throw new Error(`${source}: merges.txt line ${i + 1} "${line}" is not two tokens`);
    }
  });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [
      special("<s>"),
      special("<pad>"),
      special("</s>"),
      special("<unk>"),
      special("<mask>", true),
    ],
    normalizer: null,
    pre_tokenizer: {
      type: "ByteLevel",
      add_prefix_space: false,
      trim_offsets: true,
      use_regex: true,
    },
    post_processor: {
      type: "RobertaProcessing",
      sep: ["</s>", idOf("</s>")],
      cls: ["<s>", idOf("<s>")],
      trim_offsets: true,
      add_prefix_space: false,
    },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges,
    },
  };
}

// ---- llama2.c score-merge ------------------------------------------------------------------------

/** The score threshold llama2.c starts its best-pair search from: lower scores never merge. */
const LLAMA2C_MIN_SCORE = -1e10;

/** A byte string (one char per byte, 0–255), so concatenation is byte concatenation. */
function byteString(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return s;
}

/**
 * llama2.c's `encode` and `decode` (run.c), on pieces as llama2.c stores them: the tokenizer.json
 * pieces with "▁" turned back into spaces, looked up as UTF-8 byte strings.
 */
class Llama2cSegmenter implements Segmenter {
  readonly #lookup = new Map<string, number>();
  readonly #pieces: Uint8Array[] = [];
  readonly #scores: Float64Array;
  readonly #byteIds = new Int32Array(256);
  readonly #pieceByte = new Map<number, number>();
  readonly #dummyPrefix: number;
  readonly #specialText = new Map<number, Uint8Array>();
  readonly #bos: number | null;

  constructor(
    model: Record<string, unknown>,
    special: ReadonlySet<number>,
    bos: number | null,
    section: unknown,
    source: string,
  ) {
    const where = `${source}: model.${LLAMA2C_MODEL_KEY}`;
    if (!isObject(section) || !Array.isArray(section.scores)) {
      throw new Error(`${where} must be an object with a "scores" array`);
    }
    const vocab = model.vocab;
    if (!isObject(vocab)) throw new Error(`${source}: model.vocab must be an object`);
    const n = section.scores.length;
    const pieces: (string | undefined)[] = new Array(n);
    for (const [piece, id] of Object.entries(vocab)) {
      if (!Number.isInteger(id) || (id as number) < 0 || (id as number) >= n) {
        throw new Error(`${source}: model.vocab["${piece}"] = ${id} is not an id below ${n}`);
      }
      pieces[id as number] = piece;
    }
    this.#scores = new Float64Array(n);
    const utf8 = new TextEncoder();
    for (let id = 0; id < n; id++) {
      const score = section.scores[id];
      if (typeof score !== "number" || !Number.isFinite(score)) {
        throw new Error(`${where}.scores[${id}] must be a finite number`);
      }
      this.#scores[id] = score;
      const piece = pieces[id];
      if (piece === undefined) throw new Error(`${source}: model.vocab has no piece with id ${id}`);
      if (special.has(id)) {
        this.#specialText.set(id, utf8.encode(piece));
        this.#pieces.push(new Uint8Array());
        continue;
      }
      const bytes = utf8.encode(piece.replaceAll("\u2581", " "));
      this.#pieces.push(bytes);
      this.#lookup.set(byteString(bytes), id);
      const byte = /^<0x([0-9A-F]{2})>$/.exec(piece);
      if (byte) this.#pieceByte.set(id, parseInt(byte[1], 16));
    }
    for (let b = 0; b < 256; b++) {
      const name = `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`;
      const id = this.#lookup.get(name);
      if (id === undefined) throw new Error(`${source}: model.vocab lacks the byte piece ${name}`);
      this.#byteIds[b] = id;
    }
    const prefix = this.#lookup.get(" ");
    if (prefix === undefined) throw new Error(`${source}: model.vocab lacks the piece "\u2581"`);
    this.#dummyPrefix = prefix;
    this.#bos = bos;
  }

  /**
   * run.c's encode without BOS/EOS (the template adds those): a dummy-prefix space for non-empty
   * text, each UTF-8 character looked up whole or split into byte pieces, then repeatedly the
   * adjacent pair whose concatenation is the highest-scoring piece is merged, leftmost on ties.
   * run.c rescans every pair per merge; a max-heap keyed (score, position) with lazy invalidation
   * picks the same pair each step in O(n log n). (A NUL, where run.c's C string would end, is
   * encoded as its byte piece.)
   */
  tokenize(text: string): number[] {
    const bytes = new TextEncoder().encode(text);
    const ids: number[] = [];
    if (bytes.length > 0) ids.push(this.#dummyPrefix);
    for (let i = 0; i < bytes.length;) {
      let j = i + 1;
      while (j < bytes.length && (bytes[j] & 0xc0) === 0x80 && j - i < 4) j++;
      const id = this.#lookup.get(byteString(bytes.subarray(i, j)));
      if (id !== undefined) ids.push(id);
      else for (let k = i; k < j; k++) ids.push(this.#byteIds[bytes[k]]);
      i = j;
    }
    return this.#merge(ids);
  }

  #merge(initial: number[]): number[] {
    const n = initial.length;
    const ids = Int32Array.from(initial);
    const text = initial.map((id) => byteString(this.#pieces[id]));
    const next = Int32Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
    const prev = Int32Array.from({ length: n }, (_, i) => i - 1);
    const version = new Int32Array(n);
    const heap = new PairHeap();
    const offer = (left: number, right: number): void => {
      if (left < 0 || right < 0) return;
      const id = this.#lookup.get(text[left] + text[right]);
      if (id === undefined || !(this.#scores[id] > LLAMA2C_MIN_SCORE)) return;
      heap.push({
        score: this.#scores[id],
        left,
        right,
        id,
        lv: version[left],
        rv: version[right],
      });
    };
    for (let i = 0; i + 1 < n; i++) offer(i, i + 1);
    let head = n > 0 ? 0 : -1;
    for (let c = heap.pop(); c !== undefined; c = heap.pop()) {
      const { left, right } = c;
      if (next[left] !== right || version[left] !== c.lv || version[right] !== c.rv) continue;
      ids[left] = c.id;
      text[left] += text[right];
      version[left]++;
      version[right] = -1; // right is gone: no entry can match it again
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      offer(prev[left], left);
      offer(left, next[left]);
    }
    const out: number[] = [];
    for (; head >= 0; head = next[head]) out.push(ids[head]);
    return out;
  }

  /** run.c's decode: byte pieces become their byte; after BOS a leading space is dropped. */
  decode(ids: readonly number[], skipSpecial: boolean): string {
    const bytes: number[] = [];
    let prev = -1;
    for (const id of ids) {
      const special = this.#specialText.get(id);
      if (special !== undefined) {
        if (!skipSpecial) bytes.push(...special);
      } else {
        const byte = this.#pieceByte.get(id);
        if (byte !== undefined) bytes.push(byte);
        else {
          const piece = this.#pieces[id];
          const start = prev === this.#bos && piece[0] === 0x20 ? 1 : 0;
          for (let k = start; k < piece.length; k++) bytes.push(piece[k]);
        }
      }
      prev = id;
    }
    return new TextDecoder().decode(Uint8Array.from(bytes));
  }
}

/** A candidate merge: `left`'s and `right`'s pieces concatenate to piece `id`. */
interface PairCandidate {
  score: number;
  left: number;
  right: number;
  id: number;
  lv: number;
  rv: number;
}

/** Binary max-heap on score, then min on position (llama2.c keeps the leftmost of equal scores). */
class PairHeap {
  readonly #items: PairCandidate[] = [];

  static #before(a: PairCandidate, b: PairCandidate): boolean {
    return a.score > b.score || (a.score === b.score && a.left < b.left);
  }

  push(c: PairCandidate): void {
    const h = this.#items;
    h.push(c);
    for (let i = h.length - 1; i > 0;) {
      const p = (i - 1) >> 1;
      if (!PairHeap.#before(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }

  pop(): PairCandidate | undefined {
    const h = this.#items;
    if (h.length === 0) return undefined;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      for (let i = 0;;) {
        const l = 2 * i + 1, r = l + 1;
        let best = i;
        if (l < h.length && PairHeap.#before(h[l], h[best])) best = l;
        if (r < h.length && PairHeap.#before(h[r], h[best])) best = r;
        if (best === i) break;
        [h[i], h[best]] = [h[best], h[i]];
        i = best;
      }
    }
    return top;
  }
}

// ---- helpers -------------------------------------------------------------------------------------

/**
 * Kept lengths of sequence A (and B) so that they fit `budget` tokens (maxLength minus the
 * template's special tokens), per the Rust `tokenizers` crate's rules.
 */
function truncatedLengths(
  n1: number,
  n2: number | null,
  budget: number,
  strategy: TruncationStrategy,
  row: number,
): [number, number] {
  if (budget < 0) {
    throw new Error(`encodeBatch: maxLength is smaller than the ${-budget} special tokens' need`);
  }
  if (n2 === null) {
    if (strategy === "only_second") {
      throw new Error(`encodeBatch: truncation "only_second" needs pairs`);
    }
    return [Math.min(n1, budget), 0];
  }
  if (n1 + n2 <= budget) return [n1, n2];
  if (strategy === "longest_first") {
    const short = Math.min(n1, n2), long = Math.max(n1, n2);
    let keepShort = short, keepLong = short > budget ? short : Math.max(short, budget - short);
    if (keepShort + keepLong > budget) {
      keepShort = Math.floor(budget / 2);
      keepLong = keepShort + (budget % 2);
    }
    keepLong = Math.min(keepLong, long);
    return n1 <= n2 ? [keepShort, keepLong] : [keepLong, keepShort];
  }
  const remove = n1 + n2 - budget;
  const target = strategy === "only_first" ? n1 : n2;
  if (target <= remove) {
    const which = strategy === "only_first" ? "first" : "second";
    throw new Error(
      `encodeBatch: row ${row}: truncation "${strategy}" must remove ${remove} tokens but the ` +
        `${which} sequence has only ${target}; raise maxLength or use "longest_first"`,
    );
  }
  return strategy === "only_first" ? [n1 - remove, n2] : [n1, n2 - remove];
}

function keep(ids: number[], n: number, side: Side): number[] {
  if (n >= ids.length) return ids;
  return side === "right" ? ids.slice(0, n) : ids.slice(ids.length - n);
}

function pad(row: number[], fill: number, value: number, side: Side): number[] {
  if (fill <= 0) return row;
  const padding = new Array<number>(fill).fill(value);
  return side === "right" ? [...row, ...padding] : [...padding, ...row];
}

/** BERT-style models take token type ids: said by model_input_names, else by a [SEP] template. */
function wantsTokenTypeIds(json: TokenizerJson, config: Record<string, unknown>): boolean {
  if (Array.isArray(config.model_input_names)) {
    return config.model_input_names.includes("token_type_ids");
  }
  const post = json.post_processor;
  if (!isObject(post)) return false;
  if (post.type === "BertProcessing") return true;
  return JSON.stringify(post).includes('"[SEP]"');
}

/** A tokenizer_config special-token field: a string or an AddedToken object with `content`. */
function tokenName(value: unknown): string | null {
  if (typeof value === "string") return value;
  if (isObject(value) && typeof value.content === "string") return value.content;
  return null;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  let value: unknown;
  try {
    value = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${errorText(e)})`);
  }
  if (!isObject(value)) throw new Error(`${path}: expected a JSON object`);
  return value;
}
