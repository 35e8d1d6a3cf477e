/**
 * llama2.c conversion on the real stories260K checkpoint and tok512 tokenizer
 * (../shared/data/models/stories260K). The tokenizer is checked against a literal plain-TS port of
 * llama2.c's run.c (encode: rescan every pair per merge; decode + safe_printf), written here
 * independently of models/tokenizer.ts's heap-based version.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  convertLlama2c,
  type ConvertLlama2cResult,
  parseLlama2cCheckpoint,
  permuteRotary,
  unpermuteRotary,
} from "../../models/llama2c.ts";
import { loadConfig } from "../../models/config.ts";
import { openSafetensors } from "../../models/safetensors.ts";
import { loadTokenizer, type Tokenizer } from "../../models/tokenizer.ts";
import { rng } from "../helpers.ts";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";

const DATA = new URL("../../../shared/data/models/stories260K/", import.meta.url).pathname;
const CHECKPOINT = join(DATA, "stories260K.bin");
const TOK512 = join(DATA, "tok512.bin");

let converted: Promise<{ dir: string; result: ConvertLlama2cResult }> | null = null;
const scratch: string[] = [];
globalThis.addEventListener("unload", () => {
  for (const dir of scratch) Deno.removeSync(dir, { recursive: true });
});

async function tempDir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "llama2c_test_" });
  scratch.push(dir);
  return dir;
}

/** One conversion shared by the tests of this file. */
function convertOnce(): Promise<{ dir: string; result: ConvertLlama2cResult }> {
  converted ??= (async () => {
    try {
      await Deno.stat(CHECKPOINT);
    } catch {
      throw new Error(`test data missing: ${CHECKPOINT} (see ../shared/data/README.md)`);
    }
    const dir = join(await tempDir(), "stories260K");
    const result = await convertLlama2c({ checkpoint: CHECKPOINT, tokenizer: TOK512, output: dir });
    return { dir, result };
  })();
  return converted;
}

// ---- an independent reading of the checkpoint --------------------------------------------------

interface RawCheckpoint {
  header: number[];
  arrays: Map<string, Float32Array>;
}

async function readRaw(): Promise<RawCheckpoint> {
  const bytes = await Deno.readFile(CHECKPOINT);
  const view = new DataView(bytes.buffer);
  const header = Array.from({ length: 7 }, (_, i) => view.getInt32(4 * i, true));
  const [dim, hidden, layers, heads, kvHeads, vocab] = header;
  const kvDim = (dim / heads) * kvHeads;
  const counts: [string, number][] = [
    ["emb", Math.abs(vocab) * dim],
    ["rms_att", layers * dim],
    ["wq", layers * dim * dim],
    ["wk", layers * kvDim * dim],
    ["wv", layers * kvDim * dim],
    ["wo", layers * dim * dim],
    ["rms_ffn", layers * dim],
    ["w1", layers * hidden * dim],
    ["w2", layers * dim * hidden],
    ["w3", layers * hidden * dim],
    ["rms_final", dim],
  ];
  const arrays = new Map<string, Float32Array>();
  let at = 28;
  for (const [name, n] of counts) {
    arrays.set(name, new Float32Array(bytes.slice(at, at + 4 * n).buffer));
    at += 4 * n;
  }
  return { header, arrays };
}

Deno.test("llama2c: the converted folder has every Hugging Face tensor with its shape, and a config.json the loader accepts", async () => {
  const { dir, result } = await convertOnce();
  assert.deepEqual(result.files, [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
  ]);
  const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
  const expected = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: 64,
    intermediate_size: 172,
    num_hidden_layers: 5,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    vocab_size: 512,
    max_position_embeddings: 512,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true, // stories260K.bin's header has vocab_size +512
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: "silu",
    torch_dtype: "float32",
  };
  for (const [key, value] of Object.entries(expected)) {
    assert.deepEqual(config[key], value, `config.json ${key}`);
  }
  const parsed = await loadConfig(dir);
  assert.equal(parsed.model_type, "llama");

  const shapes = new Map<string, number[]>([["model.embed_tokens.weight", [512, 64]]]);
  for (let l = 0; l < 5; l++) {
    const p = `model.layers.${l}`;
    shapes.set(`${p}.input_layernorm.weight`, [64]);
    shapes.set(`${p}.self_attn.q_proj.weight`, [64, 64]);
    shapes.set(`${p}.self_attn.k_proj.weight`, [32, 64]);
    shapes.set(`${p}.self_attn.v_proj.weight`, [32, 64]);
    shapes.set(`${p}.self_attn.o_proj.weight`, [64, 64]);
    shapes.set(`${p}.post_attention_layernorm.weight`, [64]);
    shapes.set(`${p}.mlp.gate_proj.weight`, [172, 64]);
    shapes.set(`${p}.mlp.up_proj.weight`, [172, 64]);
    shapes.set(`${p}.mlp.down_proj.weight`, [64, 172]);
  }
  shapes.set("model.norm.weight", [64]);
  using reader = await openSafetensors(join(dir, "model.safetensors"));
  assert.deepEqual(
    [...reader.names].sort(),
    [...shapes.keys()].sort(),
    "tensor names (tied: no lm_head)",
  );
  for (const [name, shape] of shapes) {
    const info = reader.info(name);
    assert.equal(info.dtype, "F32", name);
    assert.deepEqual(info.shape, shape, name);
  }
  assert.equal(reader.metadata.format, "pt");
  assert.equal(result.parameters, 260032);
});

Deno.test("llama2c: un-permuting q/k gives back the checkpoint's arrays; every other tensor is the checkpoint's own", async () => {
  const { dir } = await convertOnce();
  const raw = await readRaw();
  using reader = await openSafetensors(join(dir, "model.safetensors"));
  const slice = (name: string, l: number, n: number): Float32Array =>
    raw.arrays.get(name)!.subarray(l * n, (l + 1) * n);
  const same = async (tensor: string, expected: Float32Array): Promise<void> => {
    assert.deepEqual(await reader.readF32(tensor), expected, tensor);
  };
  await same("model.embed_tokens.weight", raw.arrays.get("emb")!);
  await same("model.norm.weight", raw.arrays.get("rms_final")!);
  for (let l = 0; l < 5; l++) {
    const p = `model.layers.${l}`;
    const q = await reader.readF32(`${p}.self_attn.q_proj.weight`);
    const k = await reader.readF32(`${p}.self_attn.k_proj.weight`);
    assert.notDeepEqual(q, slice("wq", l, 64 * 64), "q_proj must be permuted");
    assert.deepEqual(unpermuteRotary(q, 8, 8, 64), slice("wq", l, 64 * 64), `${p} wq`);
    assert.deepEqual(unpermuteRotary(k, 4, 8, 64), slice("wk", l, 32 * 64), `${p} wk`);
    await same(`${p}.self_attn.v_proj.weight`, slice("wv", l, 32 * 64));
    await same(`${p}.self_attn.o_proj.weight`, slice("wo", l, 64 * 64));
    await same(`${p}.input_layernorm.weight`, slice("rms_att", l, 64));
    await same(`${p}.post_attention_layernorm.weight`, slice("rms_ffn", l, 64));
    await same(`${p}.mlp.gate_proj.weight`, slice("w1", l, 172 * 64));
    await same(`${p}.mlp.up_proj.weight`, slice("w3", l, 172 * 64));
    await same(`${p}.mlp.down_proj.weight`, slice("w2", l, 64 * 172));
  }
});

/** q·k of one head at positions (pq, pk), after llama2.c's interleaved or HF's rotate-half RoPE. */
function ropeScore(
  q: Float64Array,
  k: Float64Array,
  pq: number,
  pk: number,
  halves: boolean,
): number {
  const hs = q.length;
  const rotate = (v: Float64Array, pos: number): Float64Array => {
    const out = new Float64Array(hs);
    for (let i = 0; i < hs / 2; i++) {
      const angle = pos / Math.pow(10000, (2 * i) / hs);
      const [a, b] = halves ? [i, i + hs / 2] : [2 * i, 2 * i + 1];
      out[a] = v[a] * Math.cos(angle) - v[b] * Math.sin(angle);
      out[b] = v[a] * Math.sin(angle) + v[b] * Math.cos(angle);
    }
    return out;
  };
  const rq = rotate(q, pq), rk = rotate(k, pk);
  return rq.reduce((s, x, i) => s + x * rk[i], 0);
}

Deno.test("llama2c: permuted q/k under rotate-half RoPE give llama2.c's interleaved attention scores (GQA heads)", async () => {
  const raw = await readRaw();
  const r = rng(7);
  const x = Float64Array.from({ length: 64 }, () => r() * 2 - 1);
  const project = (w: Float32Array, rows: number): Float64Array =>
    Float64Array.from({ length: rows }, (_, o) => {
      let s = 0;
      for (let i = 0; i < 64; i++) s += w[o * 64 + i] * x[i];
      return s;
    });
  const wq = raw.arrays.get("wq")!.subarray(64 * 64 * 2, 64 * 64 * 3); // layer 2
  const wk = raw.arrays.get("wk")!.subarray(32 * 64 * 2, 32 * 64 * 3);
  const [q0, k0] = [project(wq, 64), project(wk, 32)];
  const [q1, k1] = [
    project(permuteRotary(wq, 8, 8, 64), 64),
    project(permuteRotary(wk, 4, 8, 64), 32),
  ];
  let checked = 0;
  for (let h = 0; h < 8; h++) {
    const kvh = Math.floor(h / 2);
    for (const [pq, pk] of [[0, 0], [5, 2], [130, 33], [511, 7]]) {
      const llama2c = ropeScore(
        q0.subarray(h * 8, h * 8 + 8),
        k0.subarray(kvh * 8, kvh * 8 + 8),
        pq,
        pk,
        false,
      );
      const hf = ropeScore(
        q1.subarray(h * 8, h * 8 + 8),
        k1.subarray(kvh * 8, kvh * 8 + 8),
        pq,
        pk,
        true,
      );
      assert.ok(
        Math.abs(llama2c - hf) <= 1e-9 * (1 + Math.abs(llama2c)),
        `head ${h} positions ${pq},${pk}`,
      );
      checked++;
    }
  }
  // Without the permutation the scores differ: the check above can fail.
  const wrong = ropeScore(q0.subarray(0, 8), k0.subarray(0, 8), 5, 2, true);
  assert.ok(Math.abs(wrong - ropeScore(q0.subarray(0, 8), k0.subarray(0, 8), 5, 2, false)) > 1e-6);
  assert.equal(checked, 32);
});

// ---- a literal port of run.c's tokenizer --------------------------------------------------------

interface RefVocab {
  pieces: Uint8Array[];
  scores: Float32Array;
  sorted: Map<string, number>;
}

const latin1 = (bytes: ArrayLike<number>): string => String.fromCharCode(...Array.from(bytes));

async function readRefVocab(): Promise<RefVocab> {
  const bytes = await Deno.readFile(TOK512);
  const view = new DataView(bytes.buffer);
  const pieces: Uint8Array[] = [];
  const scores = new Float32Array(512);
  let at = 4;
  for (let i = 0; i < 512; i++) {
    scores[i] = view.getFloat32(at, true);
    const len = view.getInt32(at + 4, true);
    pieces.push(bytes.slice(at + 8, at + 8 + len));
    at += 8 + len;
  }
  const sorted = new Map<string, number>();
  pieces.forEach((p, i) => sorted.set(latin1(p), i));
  return { pieces, scores, sorted };
}

/** run.c `encode(t, text, bos, eos, ...)`, step by step. */
function runcEncode(v: RefVocab, text: string, bos: boolean, eos: boolean): number[] {
  const lookup = (bytes: ArrayLike<number>): number => v.sorted.get(latin1(bytes)) ?? -1;
  const str = new TextEncoder().encode(text);
  const tokens: number[] = [];
  if (bos) tokens.push(1);
  if (str.length > 0) tokens.push(lookup([0x20]));
  let buffer: number[] = [];
  for (let c = 0; c < str.length; c++) {
    if ((str[c] & 0xc0) !== 0x80) buffer = [];
    buffer.push(str[c]);
    const next = c + 1 < str.length ? str[c + 1] : 0;
    if ((next & 0xc0) === 0x80 && buffer.length < 4) continue;
    const id = lookup(buffer);
    if (id !== -1) tokens.push(id);
    else for (const b of buffer) tokens.push(b + 3);
    buffer = [];
  }
  for (;;) {
    let bestScore = -1e10, bestId = -1, bestIdx = -1;
    for (let i = 0; i < tokens.length - 1; i++) {
      const id = lookup([...v.pieces[tokens[i]], ...v.pieces[tokens[i + 1]]]);
      if (id !== -1 && v.scores[id] > bestScore) {
        bestScore = v.scores[id];
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) break;
    tokens[bestIdx] = bestId;
    tokens.splice(bestIdx + 1, 1);
  }
  if (eos) tokens.push(2);
  return tokens;
}

/** What run.c prints for a sequence that starts at BOS: decode(prev, next), then safe_printf. */
function runcPrint(v: RefVocab, ids: readonly number[], filter: boolean): string {
  const out: number[] = [];
  for (let i = 1; i < ids.length; i++) {
    let piece = v.pieces[ids[i]];
    if (ids[i - 1] === 1 && piece[0] === 0x20) piece = piece.subarray(1);
    const byte = /^<0x([0-9A-Fa-f]{1,2})/.exec(latin1(piece));
    if (byte) piece = Uint8Array.of(parseInt(byte[1], 16));
    if (filter && piece.length === 1) {
      const b = piece[0];
      const printable = (b >= 0x20 && b <= 0x7e) || (b >= 0x09 && b <= 0x0d);
      if (!printable) continue;
    }
    out.push(...piece);
  }
  return new TextDecoder().decode(Uint8Array.from(out));
}

/** ≥ 200 strings: edge cases, TinyStories-like sentences, and random character soup. */
function testStrings(): string[] {
  const fixed = [
    "",
    " ",
    "  ",
    "a",
    "Hello world",
    " Hello",
    "Hello ",
    "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the park with her mom.",
    '"Can I have it?" asked Tom. "No!" said Sue.',
    "Lily's dog didn't want to go; he was scared...",
    "The year was 2023, and 3.14 cookies cost $5.",
    "line one\nline two\n\n\tindented",
    "tabs\tand  double  spaces   here",
    "café, piñata, naïve — “quoted” … end",
    "emoji 😀🐶 and CJK 日本語 and Ελληνικά",
    "a\u00a0b\u200ac", // NBSP and hair space are pieces; ZWSP falls back to bytes
    "\u2581 literal metaspace \u2581\u2581",
    "<s> </s> <unk> <0x41> look like specials",
    "!!!???...,,,;;;:::",
    "1234567890 0987654321",
    "ALL CAPS SHOUTING AND lower",
    "~`@#%^&*()_+-=[]{}|\\/<>",
    "\u{10FFFF}\u{1F600}",
    "lll ooo ppp", // "ll", "oo", "pp" are pieces: equal-score overlapping pairs, leftmost wins
    "Lilllly's pppuppy said ooooh in the balloon",
  ];
  const words = (
    "the a little big happy sad dog cat girl boy Lily Tom Ben Sue mom dad sun tree park ball " +
    "toy box red blue went saw said played jumped was were had wanted to and but so then " +
    "very fun day time friend friends home bird fish water sky named loved"
  ).split(" ");
  const punct = [".", ",", "!", "?", ";", ":", "'s", '"', " -", "..."];
  const r = rng(2024);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
  const stories: string[] = [];
  for (let i = 0; i < 120; i++) {
    const n = 1 + Math.floor(r() * 18);
    let s = r() < 0.2 ? " " : "";
    for (let w = 0; w < n; w++) {
      let word = pick(words);
      if (r() < 0.15) word = word[0].toUpperCase() + word.slice(1);
      s += (w > 0 ? " " : "") + word;
      if (r() < 0.2) s += pick(punct);
      if (r() < 0.05) s += String(Math.floor(r() * 1000));
    }
    if (r() < 0.1) s += "\n";
    stories.push(s);
  }
  const pool = [
    ..."abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    ..." .,!?'\"-:;()[]{}<>/\\|@#$%^&*_+=~`",
    " ",
    " ",
    "\n",
    "\t",
    "\r",
    "é",
    "ñ",
    "ü",
    "—",
    "…",
    "“",
    "”",
    "\u00a0",
    "€",
    "™",
    "😀",
    "🐱",
    "日",
    "本",
    "ß",
    "\u2581",
    "\u0301",
  ];
  const soup: string[] = [];
  for (let i = 0; i < 100; i++) {
    const n = Math.floor(r() * 40);
    soup.push(Array.from({ length: n }, () => pick(pool)).join(""));
  }
  return [...fixed, ...stories, ...soup];
}

Deno.test("llama2c: tokenizer.json encodes exactly as run.c on 246 strings and decodes back", async () => {
  const { dir } = await convertOnce();
  const tok: Tokenizer = await loadTokenizer(dir);
  assert.equal(tok.kind, "llama2c");
  assert.deepEqual([tok.bosId, tok.eosId, tok.unkId, tok.padId], [1, 2, 0, 0]);
  const v = await readRefVocab();
  const strings = testStrings();
  assert.ok(strings.length >= 200);
  let byteFallback = 0, merged = 0;
  for (const text of strings) {
    const expected = runcEncode(v, text, true, false);
    const ids = tok.encode(text).ids;
    assert.deepEqual(ids, expected, `encode ${JSON.stringify(text)}`);
    assert.equal(tok.decode(ids, true), text, `decode ${JSON.stringify(text)}`);
    if (ids.some((id) => id >= 3 && id < 259)) byteFallback++;
    if (ids.length < 1 + new TextEncoder().encode(text).length) merged++;
  }
  // The corpus really exercises byte fallback and merging.
  assert.ok(byteFallback >= 50, `${byteFallback} strings used byte fallback`);
  assert.ok(merged >= 150, `${merged} strings merged`);
  assert.deepEqual(tok.encode("Hello world").ids, [1, 346, 306, 414, 263, 304, 341]);
});

Deno.test("llama2c: the standard BPE part of tokenizer.json (@huggingface/tokenizers) agrees with run.c except on literal ▁ and special-token text", async () => {
  const { dir } = await convertOnce();
  const hf = new HfTokenizer(JSON.parse(await Deno.readTextFile(join(dir, "tokenizer.json"))), {});
  const v = await readRefVocab();
  let compared = 0;
  for (const text of testStrings()) {
    if (text.includes("\u2581") || /<\/?s>|<unk>/.test(text)) continue;
    assert.deepEqual(hf.encode(text).ids, runcEncode(v, text, true, false), JSON.stringify(text));
    compared++;
  }
  assert.ok(compared >= 200, `only ${compared} strings compared`);
  // Where they part: run.c has no "▁" in its text pieces and never splits out "<s>".
  assert.notDeepEqual(hf.encode("x\u2581y").ids, runcEncode(v, "x\u2581y", true, false));
  assert.notDeepEqual(hf.encode("<s>").ids, runcEncode(v, "<s>", true, false));
});

Deno.test("llama2c: decode is the text run.c prints (wherever safe_printf prints every byte)", async () => {
  const { dir } = await convertOnce();
  const tok = await loadTokenizer(dir);
  const v = await readRefVocab();
  let compared = 0;
  for (const text of testStrings()) {
    const ids = runcEncode(v, text, true, false);
    const printed = runcPrint(v, ids, true);
    // safe_printf drops lone non-printable bytes (the pieces of multi-byte characters); decode keeps them.
    if (printed !== runcPrint(v, ids, false)) continue;
    assert.equal(tok.decode(ids, true), printed, JSON.stringify(text));
    compared++;
  }
  assert.ok(compared >= 150, `only ${compared} strings compared`);
  // After BOS the leading space goes; elsewhere it stays.
  assert.equal(tok.decode([1, 403, 407]), "<s>Once upon");
  assert.equal(tok.decode([403, 407]), " Once upon");
  assert.equal(tok.decode([1, 403, 2], true), "Once");
});

Deno.test("llama2c: batches pad left with the unk id and keep BOS", async () => {
  const { dir } = await convertOnce();
  const tok = await loadTokenizer(dir);
  const b = tok.encodeBatch(["Once upon a time", "Hi"]);
  const long = tok.encode("Once upon a time").ids, short = tok.encode("Hi").ids;
  assert.deepEqual(b.inputIds, [long, [
    ...new Array(long.length - short.length).fill(0),
    ...short,
  ]]);
  assert.equal(b.tokenTypeIds, undefined);
  assert.deepEqual(tok.encode("a", "b").ids, [1, ...tok.tokenize("a"), 1, ...tok.tokenize("b")]);
});

Deno.test("llama2c: a truncated or mismatched checkpoint, a wrong tokenizer and missing files fail with clear errors", async () => {
  const full = await Deno.readFile(CHECKPOINT);
  assert.throws(
    () => parseLlama2cCheckpoint(full.subarray(0, 200_000), "stories260K.bin"),
    /stories260K\.bin: truncated: 200000 bytes.*needs 1056540 \(array wq is cut short\)/,
  );
  assert.throws(
    () => parseLlama2cCheckpoint(full.subarray(0, 12), "x.bin"),
    /x\.bin: 12 bytes is too short/,
  );
  const extra = new Uint8Array(full.length + 4);
  extra.set(full);
  assert.throws(() => parseLlama2cCheckpoint(extra, "x.bin"), /4 trailing bytes/);
  const badHeader = full.slice();
  new DataView(badHeader.buffer).setInt32(12, 7, true); // n_heads 7 does not divide dim 64
  assert.throws(
    () => parseLlama2cCheckpoint(badHeader, "x.bin"),
    /n_heads 7 does not divide dim 64/,
  );
  const magic = full.slice();
  new DataView(magic.buffer).setUint32(0, 0x616b3432, true);
  assert.throws(() => parseLlama2cCheckpoint(magic, "x.bin"), /"ak42" magic/);

  const dir = await tempDir();
  const truncated = join(dir, "truncated.bin");
  await Deno.writeFile(truncated, full.subarray(0, 1000));
  await assert.rejects(
    convertLlama2c({ checkpoint: truncated, tokenizer: TOK512, output: join(dir, "out") }),
    (e: Error) => e.message.includes(truncated) && e.message.includes("truncated"),
  );
  const shortTok = join(dir, "tok.bin");
  await Deno.writeFile(shortTok, (await Deno.readFile(TOK512)).subarray(0, 3000));
  await assert.rejects(
    convertLlama2c({ checkpoint: CHECKPOINT, tokenizer: shortTok, output: join(dir, "out") }),
    /tok\.bin: .*vocab_size is 512/,
  );
  await assert.rejects(
    convertLlama2c({
      checkpoint: join(dir, "nope.bin"),
      tokenizer: TOK512,
      output: join(dir, "out"),
    }),
    /nope\.bin: no such file \(the llama2\.c checkpoint\)/,
  );
  await assert.rejects(
    Deno.stat(join(dir, "out")),
    Deno.errors.NotFound,
    "nothing written on failure",
  );
});

Deno.test("llama2c: deno task convert writes the folder, and reports missing flags on stderr with exit code 2", async () => {
  const dir = await tempDir();
  const run = async (...args: string[]): Promise<Deno.CommandOutput> =>
    await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../../tasks/convert.ts", import.meta.url).pathname, ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
  const ok = await run(
    "--checkpoint",
    CHECKPOINT,
    "--tokenizer",
    TOK512,
    "--output",
    join(dir, "m"),
  );
  assert.equal(ok.code, 0, new TextDecoder().decode(ok.stderr));
  assert.match(
    new TextDecoder().decode(ok.stdout),
    /260032 parameters in 47 tensors, tied LM head/,
  );
  const { dir: reference } = await convertOnce();
  for (const file of ["model.safetensors", "tokenizer.json", "config.json"]) {
    assert.deepEqual(
      await Deno.readFile(join(dir, "m", file)),
      await Deno.readFile(join(reference, file)),
      file,
    );
  }
  const missing = await run("--checkpoint", CHECKPOINT);
  assert.equal(missing.code, 2, "missing flags are bad usage (exit 2)");
  assert.match(
    new TextDecoder().decode(missing.stderr),
    /^error: missing --tokenizer, --output \(see deno task convert --help\)\n$/,
  );
});
