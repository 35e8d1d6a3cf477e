/**
 * Pretraining data: the offline corpus builders (GCIDE, WordNet, GLUE/commonsense train splits),
 * streamed text files packed into blocks as Hugging Face's group_texts does, and MLM masking with
 * DataCollatorForLanguageModeling's 80/10/10 rule. Host-only: no GPU needed.
 *
 * The GCIDE and WordNet readers are tested on small files in the packages' exact formats (a
 * gzip-compressed dictd file and a `data.noun` with its licence header); the real Debian files are
 * read too when the packages are installed (`apt-get install dict-gcide wordnet-base`).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  buildCorpus,
  DEFAULT_GCIDE,
  DEFAULT_WORDNET,
  gcideDocuments,
  wordnetDocuments,
} from "../../tasks/lib/pretrain/corpus.ts";
import {
  packTokenBlocks,
  readTextDocuments,
  TokenBlocks,
} from "../../tasks/lib/pretrain/tokens.ts";
import { maskTokens } from "../../tasks/lib/pretrain/masking.ts";
import { corpusCli } from "../../tasks/corpus.ts";
import { loadTokenizer } from "../../models/tokenizer.ts";

const SHARED = new URL("../../../shared/data/", import.meta.url).pathname;
const ROBERTA = join(SHARED, "tokenizers", "roberta-base");
const haveShared = await Deno.stat(join(ROBERTA, "vocab.json")).then(() => true, () => false);
const haveGcide = await Deno.stat(DEFAULT_GCIDE).then(() => true, () => false);
const haveWordnet = await Deno.stat(join(DEFAULT_WORDNET, "data.noun")).then(
  () => true,
  () => false,
);

const work = await Deno.makeTempDir({ prefix: "pretrain-data-" });

async function gzip(text: string): Promise<Uint8Array> {
  const stream = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

const GCIDE_SAMPLE = `00-database-url
   ftp://ftp.gnu.org/gnu/gcide

00-database-info
   This file was converted from the original database on:
             Tue Feb 15 10:31:36 2022
===============================================================

 Begin file 1 of 26:  Letter A (Version 0.48)
This dictionary was derived from the
     Webster's Revised Unabridged Dictionary

Abacus \\Ab"a*cus\\, n.; pl. E. {Abacuses}, L. {Abaci}. [L.
   abacus, fr. Gr. 'abax.]
   1. A table or tray strewn with sand, anciently used for
      drawing, calculating, etc. [Obs.]
      [1913 Webster]

   2. A calculating table or frame; an instrument for performing
      arithmetical calculations.
      [1913 Webster]

Own \\Own\\ ([=o]n), a. [AS. [=a]gen, p. p. of [=a]gan to possess;
   See {Owe}.]
   Belonging to; belonging exclusively or especially to.
   [1913 Webster]

Zymic \\Zym"ic\\, a. (Chem.)
   Pertaining to, or produced by, fermentation.
`;

const WORDNET_SAMPLE = `  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 | that which is perceived or known or inferred to have its own distinct existence (living or nonliving)
00002137 03 n 02 abstraction 0 abstract_entity 0 010 ~ 00023100 n 0000 | a general concept formed by extracting common features from specific examples
00596081 04 n 01 plum 0 001 @ 00586262 n 0000 | a highly desirable position or assignment; "a political plum"
`;

Deno.test("gcideDocuments: one document per entry; pronunciations, etymologies, sense numbers and tags removed", async () => {
  const file = join(work, "sample.dict.dz");
  await Deno.writeFile(file, await gzip(GCIDE_SAMPLE));
  const docs = await collect(gcideDocuments(file));
  assert.deepEqual(docs, [
    "Abacus: E. Abacuses, L. Abaci. A table or tray strewn with sand, anciently used for " +
    "drawing, calculating, etc. A calculating table or frame; an instrument for performing " +
    "arithmetical calculations.",
    "Own: (on), a. Belonging to; belonging exclusively or especially to.",
    "Zymic: (Chem.) Pertaining to, or produced by, fermentation.",
  ]);
});

Deno.test("wordnetDocuments: one document per synset (its words and gloss), licence lines skipped", async () => {
  const dir = join(work, "wordnet");
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(join(dir, "data.noun"), WORDNET_SAMPLE);
  for (const pos of ["verb", "adj", "adv"]) await Deno.writeTextFile(join(dir, `data.${pos}`), "");
  assert.deepEqual(await collect(wordnetDocuments(dir)), [
    "entity: that which is perceived or known or inferred to have its own distinct existence (living or nonliving)",
    "abstraction, abstract entity: a general concept formed by extracting common features from specific examples",
    'plum: a highly desirable position or assignment; "a political plum"',
  ]);
});

Deno.test({
  name: "the real dict-gcide and wordnet-base files give >100k documents each",
  ignore: !haveGcide || !haveWordnet,
  async fn() {
    let n = 0;
    for await (const d of gcideDocuments(DEFAULT_GCIDE)) {
      assert.match(d, /^[^:]+: \S/);
      assert.doesNotMatch(d, /\[1913 Webster\]|\\/);
      n++;
    }
    assert.ok(n > 100_000, `${n} GCIDE documents`);
    let m = 0;
    for await (const _ of wordnetDocuments(DEFAULT_WORDNET)) m++;
    assert.ok(m > 100_000, `${m} WordNet documents`);
  },
});

Deno.test({
  name: "buildCorpus: GLUE and commonsense train splits only, manifest with counts and hashes",
  ignore: !haveShared,
  async fn() {
    const out = join(work, "corpus");
    const gcide = join(work, "g.dict.dz");
    await Deno.writeFile(gcide, await gzip(GCIDE_SAMPLE));
    const m = await buildCorpus({
      out,
      glue: join(SHARED, "glue"),
      commonsense: join(SHARED, "commonsense"),
      gcide,
      wordnet: join(work, "no-such-wordnet"),
    });
    assert.deepEqual(m.files.map((f) => f.file), [
      "glue-train.txt",
      "commonsense-train.txt",
      "gcide.txt",
    ]);
    assert.deepEqual(m.missing, [join(work, "no-such-wordnet")]);
    const glue = (await Deno.readTextFile(join(out, "glue-train.txt"))).split("\n").filter(Boolean);
    assert.equal(glue.length, m.files[0].documents);
    // SST-2 train has 67,349 rows; CoLA, MRPC, RTE, STS-B and WNLI add theirs.
    assert.ok(glue.length > 67_349 + 8_551, `${glue.length} GLUE documents`);
    // No dev sentence of SST-2 leaks in (dev sentences are whole sentences, not train phrases).
    const dev = (await Deno.readTextFile(join(SHARED, "glue/tsv/SST-2/dev.tsv"))).split("\n")
      .slice(1, 40).map((l) => l.split("\t")[0].trim()).filter((s) => s.length > 60);
    const all = new Set(glue);
    for (const s of dev) assert.ok(!all.has(s), `dev sentence in the corpus: ${s}`);
    const manifest = JSON.parse(await Deno.readTextFile(join(out, "manifest.json")));
    assert.deepEqual(manifest, m);
    for (const f of m.files) assert.match(f.sha256, /^[0-9a-f]{64}$/);
  },
});

Deno.test("readTextDocuments: .txt lines and .jsonl columns, gzip, errors name file, line and column", async () => {
  const txt = join(work, "a.txt");
  await Deno.writeTextFile(txt, "first doc\n\n  \nsecond doc\r\n");
  const jsonl = join(work, "b.jsonl.gz");
  await Deno.writeFile(jsonl, await gzip('{"body":"third"}\n{"body":"fourth","x":1}\n'));
  const docs = await collect(readTextDocuments([txt, jsonl], { textColumn: "body" }));
  assert.deepEqual(docs.map((d) => d.text), ["first doc", "second doc", "third", "fourth"]);
  assert.deepEqual(docs[1].origin, { file: txt, line: 4 });
  const bad = join(work, "bad.jsonl");
  await Deno.writeTextFile(bad, '{"text":"ok"}\n{"txt":"oops"}\n');
  await assert.rejects(
    () => collect(readTextDocuments([bad])),
    /bad\.jsonl:2: column "text" is missing \(fields: txt\); choose the text column with --text-column/,
  );
  await Deno.writeTextFile(bad, '{"text":"ok"}\nnot json\n');
  await assert.rejects(() => collect(readTextDocuments([bad])), /bad\.jsonl:2: not a JSON object/);
  await assert.rejects(
    () => collect(readTextDocuments([join(work, "x.csv")])),
    /x\.csv: a pretraining text file must end in \.txt/,
  );
});

Deno.test({
  name:
    "packTokenBlocks: group_texts packing (1000-document groups, remainder dropped), cached, read by offset",
  ignore: !haveShared,
  async fn() {
    const tok = await loadTokenizer(ROBERTA);
    const file = join(work, "pack.txt");
    const docs = Array.from({ length: 2500 }, (_, i) => `document number ${i} says hello`);
    await Deno.writeTextFile(file, docs.join("\n") + "\n");
    const cache = join(work, "cache");
    const blocks = await packTokenBlocks([file], tok, "roberta-base", { blockSize: 16 }, cache);
    // The reference: tokenise each document with special tokens, concatenate per group of 1000,
    // keep whole blocks of each group.
    const expected: number[] = [];
    let total = 0;
    for (let g = 0; g < docs.length; g += 1000) {
      const ids = docs.slice(g, g + 1000).flatMap((d) => tok.encode(d).ids);
      total += ids.length;
      expected.push(...ids.slice(0, Math.floor(ids.length / 16) * 16));
    }
    assert.equal(blocks.count, expected.length / 16);
    assert.equal(blocks.totalTokens, total);
    for (const k of [0, 1, blocks.count - 1]) {
      assert.deepEqual([...blocks.read(k)], expected.slice(16 * k, 16 * k + 16));
    }
    assert.equal(blocks.read(0)[0], tok.bosId);
    assert.throws(() => blocks.read(blocks.count), /out of range/);
    blocks.close();
    // A second packing of unchanged files is a cache hit (same file, no new temp files).
    const again = await packTokenBlocks([file], tok, "roberta-base", { blockSize: 16 }, cache);
    assert.equal(again.path, blocks.path);
    again.close();
    assert.deepEqual([...Deno.readDirSync(cache)].map((e) => e.name), [
      blocks.path.split("/").pop(),
    ]);
    // A truncated cache file is not trusted.
    const bytes = await Deno.readFile(blocks.path);
    await Deno.writeFile(blocks.path, bytes.subarray(0, bytes.length - 2));
    assert.equal(TokenBlocks.open(blocks.path), null);
    await assert.rejects(
      () => packTokenBlocks([join(work, "a.txt")], tok, "roberta-base", { blockSize: 512 }, cache),
      /make no block of 512 tokens; add text or lower --max-length/,
    );
  },
});

Deno.test("maskTokens: 15 % of non-special tokens, 80/10/10, labels −100 elsewhere, pure in (seed, stream)", () => {
  const n = 200_000;
  const special = new Set([0, 1, 2, 3, 999]);
  const ids = Int32Array.from({ length: n }, (_, i) => (i % 50 === 0 ? 0 : 10 + (i % 500)));
  const opts = { maskId: 999, vocabSize: 1000, specialIds: special, seed: 7, stream: 3 };
  const r = maskTokens(ids, opts);
  let real = 0, masked = 0, random = 0, kept = 0;
  for (let i = 0; i < n; i++) {
    if (special.has(ids[i])) {
      assert.equal(r.labels[i], -100);
      assert.equal(r.inputs[i], ids[i]);
      continue;
    }
    real++;
    if (r.labels[i] === -100) {
      assert.equal(r.inputs[i], ids[i]);
      continue;
    }
    assert.equal(r.labels[i], ids[i]);
    if (r.inputs[i] === 999) masked++;
    else if (r.inputs[i] === ids[i]) kept++;
    else random++;
  }
  const sel = masked + random + kept;
  assert.equal(sel, r.selected);
  const near = (x: number, want: number, tol: number, what: string) =>
    assert.ok(Math.abs(x - want) < tol, `${what}: ${x.toFixed(4)}, want ${want} ± ${tol}`);
  near(sel / real, 0.15, 0.005, "selected share");
  near(masked / sel, 0.8, 0.01, "mask share");
  // "random" can draw the original id (1 in 1000 here), which then counts as kept.
  near(random / sel, 0.1 * 0.999, 0.008, "random share");
  near(kept / sel, 0.1 + 0.1 * 0.001, 0.008, "kept share");
  assert.deepEqual(maskTokens(ids, opts), r);
  const other = maskTokens(ids, { ...opts, stream: 4 });
  assert.notDeepEqual(other.labels, r.labels);
  assert.throws(() => maskTokens(ids, { ...opts, probability: 1.5 }), /mlm probability 1\.5/);
});

Deno.test("deno task corpus: flags, 'none' leaves a source out, usage errors exit 2", async () => {
  const out = join(work, "cli-corpus");
  const lines = await corpusCli([
    "--out",
    out,
    "--glue",
    "none",
    "--commonsense",
    "none",
    "--gcide",
    join(work, "absent.dict.dz"),
    "--wordnet",
    "none",
  ]);
  assert.match(lines[0], /0 files, 0 documents \(missing: .*absent\.dict\.dz\)/);
  const manifest = JSON.parse(await Deno.readTextFile(join(out, "manifest.json")));
  assert.deepEqual(manifest.files, []);
  await assert.rejects(() => corpusCli([]), /--out DIR is required/);
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../../tasks/corpus.ts", import.meta.url).pathname, "--bogus"],
    stdout: "piped",
    stderr: "piped",
  });
  const r = await cmd.output();
  assert.equal(r.code, 2);
  assert.match(new TextDecoder().decode(r.stderr), /^error: .*--bogus/);
});

Deno.test("cleanup of the temporary work folder", async () => {
  await Deno.remove(work, { recursive: true });
});
