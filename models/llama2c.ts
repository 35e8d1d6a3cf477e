/**
 * llama2.c → Hugging Face LLaMA conversion: reads a legacy ("v0") llama2.c checkpoint and its
 * tokenizer.bin, and writes a folder that Hugging Face `transformers` and this toolkit load as a
 * LlamaForCausalLM: config.json, generation_config.json, model.safetensors, tokenizer.json and
 * tokenizer_config.json.
 *
 * Two things change on the way:
 * - llama2.c rotates interleaved pairs (2i, 2i+1) of each query/key head, Hugging Face rotates the
 *   halves (i, i + headDim/2); the rows of wq and wk are permuted per head so both compute the
 *   same attention (as Hugging Face's convert_llama_weights_to_hf does, in reverse).
 * - llama2.c stores pieces with spaces where SentencePiece has "▁"; tokenizer.json gets "▁" back,
 *   byte fallback, merges ordered by score, and the scores themselves (see models/tokenizer.ts).
 *
 * @example
 * ```ts
 * import { convertLlama2c } from "./llama2c.ts";
 * const dir = "../shared/data/models/stories260K";
 * const output = await Deno.makeTempDir();
 * const result = await convertLlama2c({
 *   checkpoint: `${dir}/stories260K.bin`,
 *   tokenizer: `${dir}/tok512.bin`,
 *   output,
 * });
 * console.log(result.tensors, result.tied); // 47 true
 * ```
 *
 * @module
 */
import { join } from "node:path";
import { type SafetensorsEntry, writeSafetensors } from "./safetensors.ts";
import { LLAMA2C_MODEL_KEY, tokenizerFromJson, type TokenizerJson } from "./tokenizer.ts";

/** The header of a llama2.c v0 checkpoint (7 int32), with the classifier sharing decoded. */
export interface Llama2cConfig {
  /** Model width. */
  dim: number;
  /** FFN width. */
  hiddenDim: number;
  /** Number of transformer blocks. */
  nLayers: number;
  /** Query heads. */
  nHeads: number;
  /** Key/value heads (grouped-query attention when fewer than nHeads). */
  nKvHeads: number;
  /** Vocabulary size (the header's absolute value). */
  vocabSize: number;
  /** Maximum sequence length the model was trained with. */
  seqLen: number;
  /** A positive vocab_size in the header: the classifier is the token embedding. */
  sharedClassifier: boolean;
}

/** The arrays of a llama2.c checkpoint, in its (PyTorch [out, in]) layout, layers stacked first. */
export interface Llama2cWeights {
  /** [vocab, dim] */
  tokenEmbedding: Float32Array;
  /** [layers, dim] */
  rmsAtt: Float32Array;
  /** [layers, dim, dim], heads interleaved-pair RoPE order */
  wq: Float32Array;
  /** [layers, kvDim, dim], interleaved-pair RoPE order */
  wk: Float32Array;
  /** [layers, kvDim, dim] */
  wv: Float32Array;
  /** [layers, dim, dim] */
  wo: Float32Array;
  /** [layers, dim] */
  rmsFfn: Float32Array;
  /** [layers, hidden, dim] (gate) */
  w1: Float32Array;
  /** [layers, dim, hidden] (down) */
  w2: Float32Array;
  /** [layers, hidden, dim] (up) */
  w3: Float32Array;
  /** [dim] */
  rmsFinal: Float32Array;
  /** [vocab, dim], or null when tied to the embedding */
  wcls: Float32Array | null;
}

/** A parsed llama2.c checkpoint. */
export interface Llama2cCheckpoint {
  /** The header. */
  config: Llama2cConfig;
  /** The arrays (RoPE tables skipped). */
  weights: Llama2cWeights;
}

/** A parsed llama2.c tokenizer.bin: pieces as llama2.c stores them (spaces, not "▁"). */
export interface Llama2cVocab {
  /** The longest piece in bytes, as the file's header says. */
  maxTokenLength: number;
  /** Piece text by id (llama2.c's form: spaces, "<0xXX>" byte pieces, "\n<s>\n"). */
  pieces: string[];
  /** Merge score by id (higher merges first). */
  scores: Float32Array;
}

const HEADER_INTS = 7;
/** The magic of llama2.c's later export versions (v1/v2), which this reader does not take. */
const LLAMA2C_MAGIC = 0x616b3432;

/** One array of the checkpoint in file order: name, element count, and the field it fills. */
interface Section {
  name: string;
  count: number;
  field: keyof Llama2cWeights | null;
}

function sections(c: Llama2cConfig): Section[] {
  const headSize = c.dim / c.nHeads;
  const kvDim = headSize * c.nKvHeads;
  const L = c.nLayers;
  const list: Section[] = [
    { name: "token_embedding", count: c.vocabSize * c.dim, field: "tokenEmbedding" },
    { name: "rms_att", count: L * c.dim, field: "rmsAtt" },
    { name: "wq", count: L * c.dim * c.dim, field: "wq" },
    { name: "wk", count: L * kvDim * c.dim, field: "wk" },
    { name: "wv", count: L * kvDim * c.dim, field: "wv" },
    { name: "wo", count: L * c.dim * c.dim, field: "wo" },
    { name: "rms_ffn", count: L * c.dim, field: "rmsFfn" },
    { name: "w1", count: L * c.hiddenDim * c.dim, field: "w1" },
    { name: "w2", count: L * c.dim * c.hiddenDim, field: "w2" },
    { name: "w3", count: L * c.hiddenDim * c.dim, field: "w3" },
    { name: "rms_final", count: c.dim, field: "rmsFinal" },
    { name: "freq_cis_real", count: (c.seqLen * headSize) / 2, field: null },
    { name: "freq_cis_imag", count: (c.seqLen * headSize) / 2, field: null },
  ];
  if (!c.sharedClassifier) list.push({ name: "wcls", count: c.vocabSize * c.dim, field: "wcls" });
  return list;
}

/**
 * Parse a llama2.c v0 checkpoint (header of 7 int32, then f32 arrays; see data README).
 *
 * @param bytes the whole file
 * @param file its name, for error messages
 * @throws naming the file and what was expected: a bad header, or a size that does not match it
 */
export function parseLlama2cCheckpoint(bytes: Uint8Array, file = "checkpoint"): Llama2cCheckpoint {
  if (bytes.length < HEADER_INTS * 4) {
    throw new Error(
      `${file}: ${bytes.length} bytes is too short for a llama2.c checkpoint header ` +
        `(expected 7 int32 = 28 bytes: dim, hidden_dim, n_layers, n_heads, n_kv_heads, ` +
        `vocab_size, seq_len)`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const h = Array.from({ length: HEADER_INTS }, (_, i) => view.getInt32(4 * i, true));
  if (h[0] === LLAMA2C_MAGIC) {
    throw new Error(
      `${file}: starts with llama2.c's "ak42" magic (export version 1/2); expected the legacy v0 ` +
        `format (export with --version 0)`,
    );
  }
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocab, seqLen] = h;
  const config: Llama2cConfig = {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize: Math.abs(vocab),
    seqLen,
    sharedClassifier: vocab > 0,
  };
  const names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
  const problems: string[] = [];
  h.forEach((v, i) => {
    if (i === 5 ? v === 0 : v <= 0) {
      problems.push(`${names[i]} = ${v} must be ${i === 5 ? "non-zero" : "positive"}`);
    }
  });
  if (problems.length === 0) {
    if (dim % nHeads !== 0) problems.push(`n_heads ${nHeads} does not divide dim ${dim}`);
    else if ((dim / nHeads) % 2 !== 0) {
      problems.push(`head size ${dim / nHeads} must be even (RoPE pairs)`);
    }
    if (nHeads % nKvHeads !== 0) {
      problems.push(`n_kv_heads ${nKvHeads} does not divide n_heads ${nHeads}`);
    }
  }
  if (problems.length > 0) {
    throw new Error(`${file}: not a llama2.c v0 checkpoint header: ${problems.join("; ")}`);
  }

  const list = sections(config);
  const needed = HEADER_INTS * 4 + 4 * list.reduce((s, x) => s + x.count, 0);
  const shape = `dim=${dim}, hidden_dim=${hiddenDim}, n_layers=${nLayers}, n_heads=${nHeads}, ` +
    `n_kv_heads=${nKvHeads}, vocab_size=${vocab}, seq_len=${seqLen}`;
  if (bytes.length !== needed) {
    let offset = HEADER_INTS * 4;
    const cut = list.find((s) => (offset += 4 * s.count) > bytes.length);
    throw new Error(
      bytes.length < needed
        ? `${file}: truncated: ${bytes.length} bytes, but a llama2.c v0 checkpoint with ${shape} ` +
          `needs ${needed} (array ${cut?.name} is cut short)`
        : `${file}: ${bytes.length} bytes, but a llama2.c v0 checkpoint with ${shape} has ` +
          `exactly ${needed}: ${bytes.length - needed} trailing bytes (not a v0 checkpoint?)`,
    );
  }
  const weights: Partial<Llama2cWeights> = { wcls: null };
  let offset = HEADER_INTS * 4;
  for (const s of list) {
    if (s.field !== null) {
      // slice() copies into an aligned buffer of its own whatever the input's alignment.
      const raw = bytes.slice(offset, offset + 4 * s.count);
      weights[s.field] = new Float32Array(raw.buffer);
    }
    offset += 4 * s.count;
  }
  return { config, weights: weights as Llama2cWeights };
}

/** Read and parse a llama2.c v0 checkpoint file. */
export async function readLlama2cCheckpoint(path: string): Promise<Llama2cCheckpoint> {
  return parseLlama2cCheckpoint(await readFile(path, "llama2.c checkpoint"), path);
}

/**
 * Parse llama2.c's tokenizer.bin: int32 max_token_length, then `vocabSize` pieces of
 * (f32 score, int32 byte length, UTF-8 bytes).
 */
export function parseLlama2cTokenizer(
  bytes: Uint8Array,
  vocabSize: number,
  file = "tokenizer.bin",
): Llama2cVocab {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 4) {
    throw new Error(`${file}: ${bytes.length} bytes; expected an int32 max_token_length first`);
  }
  const maxTokenLength = view.getInt32(0, true);
  if (maxTokenLength <= 0) {
    throw new Error(`${file}: max_token_length = ${maxTokenLength}; expected a positive int32`);
  }
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const pieces: string[] = [];
  const scores = new Float32Array(vocabSize);
  let offset = 4;
  for (let i = 0; i < vocabSize; i++) {
    if (offset + 8 > bytes.length) {
      throw new Error(
        `${file}: ends after ${i} pieces at byte ${bytes.length}; the checkpoint's vocab_size ` +
          `is ${vocabSize}`,
      );
    }
    scores[i] = view.getFloat32(offset, true);
    const length = view.getInt32(offset + 4, true);
    offset += 8;
    if (length < 0 || length > maxTokenLength || offset + length > bytes.length) {
      throw new Error(
        `${file}: piece ${i} has length ${length} at byte ${offset - 4}; expected 0..` +
          `${maxTokenLength} (max_token_length) within the file's ${bytes.length} bytes`,
      );
    }
    try {
      pieces.push(decoder.decode(bytes.subarray(offset, offset + length)));
    } catch {
      throw new Error(`${file}: piece ${i} is not valid UTF-8`);
    }
    offset += length;
  }
  if (offset !== bytes.length) {
    throw new Error(
      `${file}: ${bytes.length - offset} bytes left after ${vocabSize} pieces; the checkpoint's ` +
        `vocab_size and the tokenizer do not match`,
    );
  }
  return { maxTokenLength, pieces, scores };
}

/** Read and parse llama2.c's tokenizer.bin for a vocabulary of `vocabSize` pieces. */
export async function readLlama2cTokenizer(path: string, vocabSize: number): Promise<Llama2cVocab> {
  return parseLlama2cTokenizer(await readFile(path, "llama2.c tokenizer"), vocabSize, path);
}

/**
 * Reorder the rows of a stacked projection [layers·heads·headDim, cols] from llama2.c's
 * interleaved RoPE pairs (2i, 2i+1) to Hugging Face's halves (i, i + headDim/2), per head.
 */
export function permuteRotary(
  w: Float32Array,
  nHeads: number,
  headDim: number,
  cols: number,
): Float32Array {
  return moveRows(w, nHeads, headDim, cols, true);
}

/** The inverse of {@link permuteRotary}: Hugging Face halves back to interleaved pairs. */
export function unpermuteRotary(
  w: Float32Array,
  nHeads: number,
  headDim: number,
  cols: number,
): Float32Array {
  return moveRows(w, nHeads, headDim, cols, false);
}

function moveRows(
  w: Float32Array,
  nHeads: number,
  headDim: number,
  cols: number,
  toHalves: boolean,
): Float32Array {
  const rows = w.length / cols;
  if (!Number.isInteger(rows) || rows % headDim !== 0 || headDim % 2 !== 0) {
    throw new Error(
      `permuteRotary: ${w.length} values are not whole heads of ${headDim} (even) rows × ${cols}`,
    );
  }
  if ((rows / headDim) % nHeads !== 0) {
    throw new Error(
      `permuteRotary: ${rows / headDim} heads are not a multiple of nHeads ${nHeads}`,
    );
  }
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let head = 0; head < rows / headDim; head++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const pairRow = head * headDim + 2 * i + j, halfRow = head * headDim + j * half + i;
        const [from, to] = toHalves ? [pairRow, halfRow] : [halfRow, pairRow];
        out.set(w.subarray(from * cols, (from + 1) * cols), to * cols);
      }
    }
  }
  return out;
}

/** Hugging Face config.json for the converted model. */
export function llama2cHfConfig(c: Llama2cConfig): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: c.dim,
    intermediate_size: c.hiddenDim,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    head_dim: c.dim / c.nHeads,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.seqLen,
    rms_norm_eps: 1e-5, // run.c's rmsnorm epsilon
    rope_theta: 10000, // run.c's RoPE base
    rope_scaling: null,
    tie_word_embeddings: c.sharedClassifier,
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: "silu",
    initializer_range: 0.02,
    attention_bias: false,
    attention_dropout: 0,
    mlp_bias: false,
    pretraining_tp: 1,
    use_cache: true,
    torch_dtype: "float32",
  };
}

/** The checkpoint's tensors under Hugging Face names, wq/wk permuted for rotate-half RoPE (F32). */
export function llama2cHfTensors({ config: c, weights: w }: Llama2cCheckpoint): SafetensorsEntry[] {
  const headDim = c.dim / c.nHeads, kvDim = headDim * c.nKvHeads;
  const wq = permuteRotary(w.wq, c.nHeads, headDim, c.dim);
  const wk = permuteRotary(w.wk, c.nKvHeads, headDim, c.dim);
  const layer = (all: Float32Array, l: number, rows: number, cols: number): Float32Array =>
    all.subarray(l * rows * cols, (l + 1) * rows * cols);
  const out: SafetensorsEntry[] = [];
  const add = (name: string, shape: number[], data: Float32Array): void => {
    out.push({ name, dtype: "F32", shape, data });
  };
  add("model.embed_tokens.weight", [c.vocabSize, c.dim], w.tokenEmbedding);
  for (let l = 0; l < c.nLayers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [c.dim], layer(w.rmsAtt, l, 1, c.dim));
    add(`${p}.self_attn.q_proj.weight`, [c.dim, c.dim], layer(wq, l, c.dim, c.dim));
    add(`${p}.self_attn.k_proj.weight`, [kvDim, c.dim], layer(wk, l, kvDim, c.dim));
    add(`${p}.self_attn.v_proj.weight`, [kvDim, c.dim], layer(w.wv, l, kvDim, c.dim));
    add(`${p}.self_attn.o_proj.weight`, [c.dim, c.dim], layer(w.wo, l, c.dim, c.dim));
    add(`${p}.post_attention_layernorm.weight`, [c.dim], layer(w.rmsFfn, l, 1, c.dim));
    add(`${p}.mlp.gate_proj.weight`, [c.hiddenDim, c.dim], layer(w.w1, l, c.hiddenDim, c.dim));
    add(`${p}.mlp.up_proj.weight`, [c.hiddenDim, c.dim], layer(w.w3, l, c.hiddenDim, c.dim));
    add(`${p}.mlp.down_proj.weight`, [c.dim, c.hiddenDim], layer(w.w2, l, c.dim, c.hiddenDim));
  }
  add("model.norm.weight", [c.dim], w.rmsFinal);
  if (w.wcls !== null) add("lm_head.weight", [c.vocabSize, c.dim], w.wcls);
  return out;
}

/** llama2.c's special pieces (ids 0–2 as its export writes them) and their Hugging Face names. */
const SPECIALS = [
  { piece: "<unk>", name: "<unk>" },
  { piece: "\n<s>\n", name: "<s>" },
  { piece: "\n</s>\n", name: "</s>" },
] as const;
const BOS = 1;
const BYTE_OFFSET = 3; // run.c hard-codes byte b ↦ id b + 3

/**
 * tokenizer.json for a llama2.c vocabulary: a standard SentencePiece-style BPE (▁ pieces, byte
 * fallback, merges ordered by the merged piece's score, `<s> A` template) that other libraries
 * load, plus the scores under `model.llama2c`, from which models/tokenizer.ts reproduces run.c's
 * encode exactly.
 *
 * @throws if the vocabulary breaks an assumption that exactness rests on (named in the message)
 */
export function llama2cTokenizerJson(vocab: Llama2cVocab, file = "tokenizer.bin"): TokenizerJson {
  const { pieces, scores } = vocab;
  const fail = (detail: string): never => {
    throw new Error(`${file}: ${detail}`);
  };
  SPECIALS.forEach(({ piece }, id) => {
    if (pieces[id] !== piece) {
      fail(
        `piece ${id} is ${JSON.stringify(pieces[id])}; expected llama2.c's ${
          JSON.stringify(piece)
        }`,
      );
    }
  });
  for (let b = 0; b < 256; b++) {
    const name = `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`;
    if (pieces[b + BYTE_OFFSET] !== name) {
      fail(
        `piece ${b + BYTE_OFFSET} is ${
          JSON.stringify(pieces[b + BYTE_OFFSET])
        }; expected byte piece ${name}`,
      );
    }
  }
  const ids = new Map<string, number>();
  pieces.forEach((piece, id) => {
    if (piece.includes("\u2581")) {
      fail(`piece ${id} contains "▁", which would not survive the ▁ ↔ space mapping`);
    }
    if (ids.has(piece)) {
      fail(`pieces ${ids.get(piece)} and ${id} are both ${JSON.stringify(piece)}`);
    }
    ids.set(piece, id);
  });
  if (!ids.has(" ")) fail(`no " " piece for llama2.c's dummy prefix`);
  // run.c looks special pieces up like any other (and merges across BOS); the split-out specials of
  // models/tokenizer.ts agree only if no lookup or merge can reach them.
  SPECIALS.forEach(({ piece }, id) => {
    for (let k = 1; k < piece.length; k++) {
      const a = ids.get(piece.slice(0, k)), b = ids.get(piece.slice(k));
      if (a !== undefined && b !== undefined && a >= SPECIALS.length && b >= SPECIALS.length) {
        fail(`special piece ${id} can be formed by merging pieces ${a} and ${b}`);
      }
    }
  });
  for (const [piece, id] of ids) {
    if (id >= SPECIALS.length && piece.startsWith(SPECIALS[BOS].piece)) {
      fail(`piece ${id} starts with the BOS text, so run.c could merge BOS into it`);
    }
  }

  const hfPiece = (id: number): string =>
    id < SPECIALS.length ? SPECIALS[id].name : pieces[id].replaceAll(" ", "\u2581");
  const hfVocab: Record<string, number> = {};
  pieces.forEach((_, id) => (hfVocab[hfPiece(id)] = id));
  const merges: { a: string; b: string; score: number; id: number; split: number }[] = [];
  pieces.forEach((_, id) => {
    if (id < SPECIALS.length) return;
    const chars = Array.from(hfPiece(id));
    for (let k = 1; k < chars.length; k++) {
      const a = chars.slice(0, k).join(""), b = chars.slice(k).join("");
      const ia = hfVocab[a], ib = hfVocab[b];
      if (ia !== undefined && ib !== undefined && ia >= SPECIALS.length && ib >= SPECIALS.length) {
        merges.push({ a, b, score: scores[id], id, split: k });
      }
    }
  });
  merges.sort((x, y) => y.score - x.score || x.id - y.id || x.split - y.split);

  const bos = SPECIALS[BOS].name;
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: SPECIALS.map(({ name }, id) => ({
      id,
      content: name,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: "\u2581" },
        { type: "Replace", pattern: { String: " " }, content: "\u2581" },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: bos, type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: bos, type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { [bos]: { id: bos, ids: [BOS], tokens: [bos] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "\u2581" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: SPECIALS[0].name,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: hfVocab,
      merges: merges.map((m) => `${m.a} ${m.b}`),
      [LLAMA2C_MODEL_KEY]: { scores: Array.from(scores) },
    },
  };
}

/** tokenizer_config.json for the converted model (LLaMA's: BOS added, left padding, no pad token). */
export function llama2cTokenizerConfig(c: Llama2cConfig): Record<string, unknown> {
  return {
    tokenizer_class: "LlamaTokenizer",
    bos_token: "<s>",
    eos_token: "</s>",
    unk_token: "<unk>",
    pad_token: null,
    add_bos_token: true,
    add_eos_token: false,
    model_max_length: c.seqLen,
    padding_side: "left",
    clean_up_tokenization_spaces: false,
    legacy: true,
  };
}

/** Options of {@link convertLlama2c}: the two llama2.c inputs and the output folder. */
export interface ConvertLlama2cOptions {
  /** llama2.c v0 checkpoint (e.g. stories260K.bin). */
  checkpoint: string;
  /** llama2.c tokenizer.bin (e.g. tok512.bin). */
  tokenizer: string;
  /** Folder to write (created if missing). */
  output: string;
}

/** What {@link convertLlama2c} wrote. */
export interface ConvertLlama2cResult {
  /** The checkpoint's header. */
  config: Llama2cConfig;
  /** Files written, relative to the output folder. */
  files: string[];
  /** Number of tensors in model.safetensors. */
  tensors: number;
  /** Number of parameters (values) in model.safetensors. */
  parameters: number;
  /** Whether the LM head is tied to the embedding. */
  tied: boolean;
}

/** Convert a llama2.c checkpoint + tokenizer.bin into a Hugging Face LLaMA folder. */
export async function convertLlama2c(
  options: ConvertLlama2cOptions,
): Promise<ConvertLlama2cResult> {
  const checkpoint = await readLlama2cCheckpoint(options.checkpoint);
  const vocab = await readLlama2cTokenizer(options.tokenizer, checkpoint.config.vocabSize);
  const tokenizerJson = llama2cTokenizerJson(vocab, options.tokenizer);
  const tokenizerConfig = llama2cTokenizerConfig(checkpoint.config);
  tokenizerFromJson(tokenizerJson, tokenizerConfig, options.tokenizer); // fail before writing
  const tensors = llama2cHfTensors(checkpoint);

  await Deno.mkdir(options.output, { recursive: true });
  const json = (value: unknown): string => JSON.stringify(value, null, 2) + "\n";
  const files: Record<string, string> = {
    "config.json": json(llama2cHfConfig(checkpoint.config)),
    "generation_config.json": json({ bos_token_id: 1, eos_token_id: 2 }),
    "tokenizer.json": JSON.stringify(tokenizerJson) + "\n",
    "tokenizer_config.json": json(tokenizerConfig),
  };
  for (const [name, text] of Object.entries(files)) {
    await Deno.writeTextFile(join(options.output, name), text);
  }
  await writeSafetensors(join(options.output, "model.safetensors"), tensors, { format: "pt" });
  return {
    config: checkpoint.config,
    files: [...Object.keys(files), "model.safetensors"].sort(),
    tensors: tensors.length,
    parameters: tensors.reduce((s, t) => s + t.data.length, 0),
    tied: checkpoint.config.sharedClassifier,
  };
}

async function readFile(path: string, what: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${path}: no such file (the ${what})`);
    if (e instanceof Deno.errors.IsADirectory) {
      throw new Error(`${path}: is a directory; expected the ${what} file`);
    }
    throw new Error(`${path}: cannot read the ${what}: ${e instanceof Error ? e.message : e}`);
  }
}
