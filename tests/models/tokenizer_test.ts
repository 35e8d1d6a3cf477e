/**
 * The tokenizer wrapper on the real roberta-base vocab.json + merges.txt
 * (../shared/data/tokenizers/roberta-base) and on a small BERT-style WordPiece tokenizer.json
 * written inline. Expected ids for roberta-base are Hugging Face's. The llama2.c kind is tested in
 * llama2c_test.ts against a port of run.c.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  loadTokenizer,
  type Tokenizer,
  tokenizerFromJson,
  type TokenizerJson,
} from "../../models/tokenizer.ts";

const ROBERTA = new URL("../../../shared/data/tokenizers/roberta-base/", import.meta.url).pathname;

let roberta: Promise<Tokenizer> | null = null;
function robertaOnce(): Promise<Tokenizer> {
  roberta ??= loadTokenizer(ROBERTA);
  return roberta;
}

/** A text of `n` words that roberta-base encodes as exactly `n` tokens (checked). */
async function words(n: number, first = "a"): Promise<string> {
  const tok = await robertaOnce();
  const text = [first, ..."bcdefghijklmnopqrstuvwxyz"].slice(0, n).join(" ");
  assert.equal(tok.tokenize(text).length, n, `premise: "${text}" is ${n} tokens`);
  return text;
}

Deno.test("tokenizer: roberta-base from vocab.json + merges.txt gives Hugging Face's ids", async () => {
  const tok = await robertaOnce();
  assert.equal(tok.kind, "huggingface");
  assert.deepEqual(tok.encode("Hello world").ids, [0, 31414, 232, 2]);
  assert.deepEqual(tok.encode(" Hello").ids, [0, 20920, 2], "a leading space is part of the token");
  assert.deepEqual(tok.encode("Hello").ids, [0, 31414, 2]);
  assert.deepEqual(
    tok.encode("Hello <mask>!").ids,
    [0, 31414, 50264, 328, 2],
    "<mask> strips the space on its left",
  );
  assert.deepEqual(tok.encode("").ids, [0, 2]);
  assert.deepEqual(tok.encode("Hello world", undefined, { addSpecialTokens: false }).ids, [
    31414,
    232,
  ]);
  assert.deepEqual([tok.bosId, tok.padId, tok.eosId, tok.unkId, tok.vocabSize], [
    0,
    1,
    2,
    3,
    50265,
  ]);
  assert.equal(tok.hasTokenTypeIds, false);
  assert.equal(tok.numSpecialTokens(false), 2);
  assert.equal(tok.numSpecialTokens(true), 4);
  assert.equal(tok.decode([0, 31414, 232, 2]), "<s>Hello world</s>");
  assert.equal(tok.decode([0, 31414, 232, 2], true), "Hello world");
  assert.equal(tok.decode([]), "");
  for (
    const text of ["naïve café — “quotes” 😀", "  two  spaces\nnewline\ttab", "Don't stop , ok ?"]
  ) {
    assert.equal(
      tok.decode(tok.encode(text).ids, true),
      text,
      "byte-level BPE round-trips any text",
    );
  }
  assert.throws(() => tok.decode([0, 50265]), /ids\[1\] = 50265 is not a token id in \[0, 50265\)/);
});

Deno.test("tokenizer: roberta-base pairs are <s> A </s></s> B </s> with no token type ids", async () => {
  const tok = await robertaOnce();
  const pair = tok.encode("Hello", "world");
  assert.deepEqual(pair.ids, [0, 31414, 2, 2, 8331, 2]);
  const batch = tok.encodeBatch(["Hello"], { pairs: ["world"] });
  assert.deepEqual(batch.inputIds, [[0, 31414, 2, 2, 8331, 2]]);
  assert.equal(batch.tokenTypeIds, undefined);
  assert.throws(
    () => tok.encodeBatch(["a", "b"], { pairs: ["c"] }),
    /pairs has 1 entries, expected one per text \(2\)/,
  );
});

Deno.test("tokenizer: truncation counts special tokens (longest_first, only_first, only_second, left side)", async () => {
  const tok = await robertaOnce();
  const [w3, w6, w7, w10] = [
    await words(3, "x"),
    await words(6),
    await words(7, "x"),
    await words(10),
  ];
  const lengths = (b: { inputIds: number[][] }): number[] => b.inputIds.map((r) => r.length);
  const a10 = tok.tokenize(w10);

  // Single: maxLength 6 keeps 4 tokens between <s> and </s>, from the right or the left end.
  assert.deepEqual(tok.encodeBatch([w10], { maxLength: 6 }).inputIds, [[0, ...a10.slice(0, 4), 2]]);
  assert.deepEqual(
    tok.encodeBatch([w10], { maxLength: 6, truncationSide: "left" }).inputIds,
    [[0, ...a10.slice(6), 2]],
  );
  // longest_first (Rust tokenizers rules), budget = maxLength − 4 specials:
  // only the longer shrinks (10 + 3 → 5 + 3) ...
  const onlyLonger = tok.encodeBatch([w10], { pairs: [w3], maxLength: 12 });
  assert.deepEqual(onlyLonger.inputIds[0], [0, ...a10.slice(0, 5), 2, 2, ...tok.tokenize(w3), 2]);
  // ... both shrink: the shorter keeps ⌊7/2⌋ = 3, the longer 4 ...
  const both = tok.encodeBatch([w10], { pairs: [w7], maxLength: 11 }).inputIds[0];
  assert.deepEqual(both, [0, ...a10.slice(0, 4), 2, 2, ...tok.tokenize(w7).slice(0, 3), 2]);
  // ... and on equal lengths the first keeps ⌊5/2⌋ = 2, the second 3.
  const equal = tok.encodeBatch([w6], { pairs: [w6], maxLength: 9 }).inputIds[0];
  assert.deepEqual(equal, [
    0,
    ...tok.tokenize(w6).slice(0, 2),
    2,
    2,
    ...tok.tokenize(w6).slice(0, 3),
    2,
  ]);
  // only_first / only_second take everything from one side.
  const first = tok.encodeBatch([w10], { pairs: [w3], maxLength: 12, truncation: "only_first" });
  assert.deepEqual(first.inputIds[0], onlyLonger.inputIds[0]);
  const second = tok.encodeBatch([w3], { pairs: [w10], maxLength: 12, truncation: "only_second" });
  assert.deepEqual(second.inputIds[0], [0, ...tok.tokenize(w3), 2, 2, ...a10.slice(0, 5), 2]);
  assert.deepEqual(lengths(tok.encodeBatch([w10, w3], { pairs: [w3, w3], maxLength: 12 })), [
    12,
    12,
  ]);
  // Nothing to do when everything fits; truncation false keeps long rows whole.
  assert.deepEqual(lengths(tok.encodeBatch([w3], { maxLength: 12 })), [5]);
  assert.deepEqual(lengths(tok.encodeBatch([w10], { maxLength: 4, truncation: false })), [12]);

  assert.throws(
    () => tok.encodeBatch([w3], { pairs: [w10], maxLength: 8, truncation: "only_first" }),
    /row 0: truncation "only_first" must remove 9 tokens but the first sequence has only 3/,
  );
  assert.throws(
    () => tok.encodeBatch([w3], { maxLength: 4, truncation: "only_second" }),
    /"only_second" needs pairs/,
  );
  assert.throws(
    () => tok.encodeBatch([w3], { pairs: [w3], maxLength: 3 }),
    /maxLength is smaller than/,
  );
  assert.throws(() => tok.encodeBatch([w3], { truncation: "longest_first" }), /needs maxLength/);
  assert.throws(
    () => tok.encodeBatch([w3], { maxLength: 0 }),
    /maxLength must be a positive integer/,
  );
});

Deno.test("tokenizer: padding right or left, to the longest row or to maxLength, with the pad id", async () => {
  const tok = await robertaOnce();
  const [w1, w3] = [await words(1), await words(3)];
  const long = tok.encode(w3).ids, short = tok.encode(w1).ids; // 5 and 3 ids
  const right = tok.encodeBatch([w3, w1]);
  assert.deepEqual(right.inputIds, [long, [...short, 1, 1]]);
  assert.deepEqual(right.attentionMask, [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]);
  const left = tok.encodeBatch([w3, w1], { paddingSide: "left" });
  assert.deepEqual(left.inputIds, [long, [1, 1, ...short]]);
  assert.deepEqual(left.attentionMask, [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]);
  const fixed = tok.encodeBatch([w3, w1], { maxLength: 7, padding: "max_length" });
  assert.deepEqual(fixed.inputIds, [[...long, 1, 1], [...short, 1, 1, 1, 1]]);
  assert.deepEqual(fixed.attentionMask[1], [1, 1, 1, 0, 0, 0, 0]);
  const custom = tok.encodeBatch([w3, w1], { padId: 99, paddingSide: "left" });
  assert.deepEqual(custom.inputIds[1], [99, 99, ...short]);
  const ragged = tok.encodeBatch([w3, w1], { padding: false });
  assert.deepEqual(ragged.inputIds, [long, short]);
  assert.throws(
    () => tok.encodeBatch([w3], { padding: "max_length" }),
    /padding "max_length" needs maxLength/,
  );
  assert.throws(
    () => tok.encodeBatch([w3], { maxLength: 4, padding: "max_length", truncation: false }),
    /row 0 has 5 tokens, more than maxLength 4, and truncation is off/,
  );
  assert.deepEqual(tok.encodeBatch([]).inputIds, []);
});

/** A small BERT-style tokenizer.json: WordPiece, lowercasing, [CLS] A [SEP] B [SEP]. */
function bertJson(): TokenizerJson {
  const vocab = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "hello",
    "world",
    "the",
    "cat",
    "##s",
    "sat",
    ".",
  ];
  const special = (content: string): Record<string, unknown> => ({
    id: vocab.indexOf(content),
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  return {
    added_tokens: ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(special),
    normalizer: {
      type: "BertNormalizer",
      clean_text: true,
      handle_chinese_chars: true,
      strip_accents: null,
      lowercase: true,
    },
    pre_tokenizer: { type: "BertPreTokenizer" },
    post_processor: {
      type: "TemplateProcessing",
      single: [
        { SpecialToken: { id: "[CLS]", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "[SEP]", type_id: 0 } },
      ],
      pair: [
        { SpecialToken: { id: "[CLS]", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "[SEP]", type_id: 0 } },
        { Sequence: { id: "B", type_id: 1 } },
        { SpecialToken: { id: "[SEP]", type_id: 1 } },
      ],
      special_tokens: {
        "[CLS]": { id: "[CLS]", ids: [2], tokens: ["[CLS]"] },
        "[SEP]": { id: "[SEP]", ids: [3], tokens: ["[SEP]"] },
      },
    },
    decoder: { type: "WordPiece", prefix: "##", cleanup: true },
    model: {
      type: "WordPiece",
      unk_token: "[UNK]",
      continuing_subword_prefix: "##",
      max_input_chars_per_word: 100,
      vocab: Object.fromEntries(vocab.map((t, i) => [t, i])),
    },
  };
}

Deno.test("tokenizer: BERT-style tokenizer.json gets token type ids, [PAD] padding and its config's padding side", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tokenizer_test_" });
  try {
    await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(bertJson()));
    await Deno.writeTextFile(
      join(dir, "tokenizer_config.json"),
      JSON.stringify({ padding_side: "left" }),
    );
    const tok = await loadTokenizer(dir);
    assert.equal(tok.hasTokenTypeIds, true);
    assert.deepEqual([tok.padId, tok.unkId, tok.bosId, tok.paddingSide], [0, 1, null, "left"]);
    const e = tok.encode("Hello World", "the cats sat.");
    assert.deepEqual(e.ids, [2, 5, 6, 3, 7, 8, 9, 10, 11, 3]);
    assert.deepEqual(e.typeIds, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
    const b = tok.encodeBatch(["hello", "the cat"], { pairs: ["world", "sat dog"] });
    assert.deepEqual(b.inputIds, [[0, 0, 2, 5, 3, 6, 3], [2, 7, 8, 3, 10, 1, 3]]);
    assert.deepEqual(b.tokenTypeIds, [[0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1]]);
    assert.deepEqual(b.attentionMask, [[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]]);
    assert.equal(tok.decode(e.ids, true), "hello world the cats sat.");
    const noTypes = tokenizerFromJson(bertJson(), {
      model_input_names: ["input_ids", "attention_mask"],
    });
    assert.equal(noTypes.hasTokenTypeIds, false, "model_input_names decides when given");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tokenizer: missing or malformed tokenizer files fail naming the file and what was expected", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tokenizer_test_" });
  try {
    await assert.rejects(
      loadTokenizer(dir),
      /no tokenizer in .*: expected tokenizer\.json, or vocab\.json \+ merges\.txt/,
    );
    await Deno.writeTextFile(
      join(dir, "vocab.json"),
      JSON.stringify({ "<s>": 0, "</s>": 1, a: 2 }),
    );
    await Deno.writeTextFile(join(dir, "merges.txt"), "#version: 0.2\n");
    await assert.rejects(loadTokenizer(dir), /vocab\.json lacks RoBERTa's special token "<pad>"/);
    await Deno.writeTextFile(join(dir, "tokenizer.json"), "{ not json");
    await assert.rejects(loadTokenizer(dir), /tokenizer\.json: not valid JSON/);
    await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify({ added_tokens: [] }));
    await assert.rejects(loadTokenizer(dir), /tokenizer\.json: "model" must be an object/);
    await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(bertJson()));
    await Deno.writeTextFile(
      join(dir, "tokenizer_config.json"),
      JSON.stringify({ pad_token: "<pad>" }),
    );
    await assert.rejects(
      loadTokenizer(dir),
      /tokenizer_config pad_token "<pad>" is not in the vocabulary/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
