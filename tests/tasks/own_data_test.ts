/**
 * Own data: every file format read into the same rows (jsonl, json, csv, tsv, parquet written
 * with hyparquet-writer), Hugging Face datasets folders (synthetic and the real GLUE parquet
 * conversion in ../shared/data), label kinds and label maps, instruction formats rendered with
 * a real Jinja chat template and their reply-only loss masks checked token by token, and one
 * error naming file, line and column for each kind of bad input.
 */
import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { join } from "node:path";
import { parquetWriteBuffer } from "hyparquet-writer";
import { loadTokenizer, type Tokenizer } from "../../models/tokenizer.ts";
import {
  findDatasetSplits,
  readDataFile,
  readDataFiles,
} from "../../tasks/lib/data/own/readers.ts";
import { labelMaps, ownClassification } from "../../tasks/lib/data/own/classification.ts";
import {
  conversations,
  detectFormat,
  encodeInstructions,
  encodeWithSpecials,
  segments,
} from "../../tasks/lib/data/own/instruction.ts";
import { ChatTemplate, loadChatTemplate } from "../../tasks/lib/data/own/chat_template.ts";
import { trainingPrompt } from "../../tasks/lib/data/commonsense.ts";
import { convertLlama2c } from "../../models/llama2c.ts";
import { collate } from "../../tasks/lib/data/pipeline.ts";
import { ownTaskDefault, usesOwnData } from "../../tasks/lib/data/own/own_task.ts";

const SHARED = new URL("../../../shared/data/", import.meta.url).pathname;
const work = await Deno.makeTempDir({ prefix: "own-data-test-" });
const roberta = `${SHARED}tokenizers/roberta-base`;
const hasRoberta = await Deno.stat(`${roberta}/vocab.json`).then(() => true, () => false);
const hasStories = await Deno.stat(`${SHARED}models/stories260K/stories260K.bin`).then(
  () => true,
  () => false,
);
const hasGlueParquet = await Deno.stat(`${SHARED}glue/parquet/rte`).then(() => true, () => false);

const ROWS = [
  { text: 'a great, "moving" film', label: "pos" },
  { text: "terrible acting", label: "neg" },
  { text: "multi\nline", label: "pos" },
];

async function write(name: string, content: string | Uint8Array): Promise<string> {
  const path = join(work, name);
  await Deno.mkdir(join(path, ".."), { recursive: true });
  if (typeof content === "string") await Deno.writeTextFile(path, content);
  else await Deno.writeFile(path, content);
  return path;
}

function parquet(columns: { name: string; data: unknown[]; type?: string }[]): Uint8Array {
  return new Uint8Array(
    parquetWriteBuffer({
      columnData: columns as Parameters<typeof parquetWriteBuffer>[0]["columnData"],
    }),
  );
}

Deno.test("jsonl, json, csv and parquet give the same rows; tsv reads unquoted fields", async () => {
  const jsonl = await write("f/a.jsonl", ROWS.map((r) => JSON.stringify(r)).join("\n") + "\n");
  const json = await write("f/a.json", JSON.stringify(ROWS, null, 2));
  const csv = await write(
    "f/a.csv",
    'text,label\r\n"a great, ""moving"" film",pos\r\nterrible acting,neg\r\n"multi\nline",pos\r\n',
  );
  const pq = await write(
    "f/a.parquet",
    parquet([
      { name: "text", data: ROWS.map((r) => r.text), type: "STRING" },
      { name: "label", data: ROWS.map((r) => r.label), type: "STRING" },
    ]),
  );
  for (const f of [jsonl, json, csv, pq]) {
    const t = await readDataFile(f);
    deepEqual(t.rows, ROWS, f);
    deepEqual(t.columns, ["text", "label"], f);
  }
  // A .json file may also hold JSON lines, or one object with the records' array.
  const lines = await write("f/lines.json", ROWS.map((r) => JSON.stringify(r)).join("\n"));
  deepEqual((await readDataFile(lines)).rows, ROWS);
  const wrapped = await write("f/wrapped.json", JSON.stringify({ data: ROWS }, null, 2));
  deepEqual((await readDataFile(wrapped)).rows, ROWS);
  // Where a row is: lines (1-based, the header is line 1) or parquet rows (0-based).
  equal((await readDataFile(csv)).where(2), "line 4");
  equal((await readDataFile(jsonl)).where(1), "line 2");
  equal((await readDataFile(json)).where(1), "line 6 (record 1)");
  equal((await readDataFile(pq)).where(2), "row 2");
  const tsv = await write(
    "f/a.tsv",
    'sentence\tlabel\n"quoted at start\t1\nplain "mid" quote\t0\n',
  );
  deepEqual((await readDataFile(tsv)).rows, [
    { sentence: '"quoted at start', label: "1" },
    { sentence: 'plain "mid" quote', label: "0" },
  ]);
});

Deno.test("each bad file names the file, the line or row and the column", async () => {
  const cases: [string, string, RegExp][] = [
    [
      "b/bad.jsonl",
      '{"text": "a", "label": 1}\n{"text": "b", label: 2}\n',
      /bad\.jsonl: line 2: not valid JSON/,
    ],
    [
      "b/bad.json",
      '[{"text": "a"},\n 3]',
      /bad\.json: line 2 \(record 1\): expected a JSON object/,
    ],
    [
      "b/bad.csv",
      "text,label\na,1\nb,2,3\n",
      /bad\.csv: line 3: expected 2 fields \(text, label\), found 3/,
    ],
    [
      "b/open.csv",
      'text,label\n"never closed,1\n',
      /open\.csv: line 2: a quoted field is never closed/,
    ],
    ["b/dup.csv", "text,text\na,b\n", /dup\.csv: line 1: the header row names column "text" twice/],
    ["b/x.xlsx", "x", /x\.xlsx: unknown data format "\.xlsx"; expected one of \.jsonl/],
  ];
  for (const [name, content, pattern] of cases) {
    await rejects(readDataFile(await write(name, content)), pattern);
  }
  await rejects(readDataFile(join(work, "b/none.csv")), /none\.csv: file not found/);
  await rejects(
    readDataFile(await write("b/x.parquet", "not parquet")),
    /x\.parquet: not a readable parquet file/,
  );
  const t = await readDataFile(await write("b/labels.csv", "text,label\na,pos\nb,neg\nc,\n"));
  throws(
    () => ownClassification(t, undefined, {}),
    /labels\.csv: line 4: column "label": label ""; expected a label/,
  );
  throws(
    () => ownClassification(t, undefined, { labelColumn: "sentiment" }),
    /labels\.csv: column "sentiment": no such column \(--label-column\); the file has text, label/,
  );
  const train = await readDataFile(await write("b/train.csv", "text,label\na,pos\nb,neg\n"));
  const dev = await readDataFile(
    await write("b/dev.jsonl", '{"text":"a","label":"pos"}\n{"text":"b","label":"meh"}\n'),
  );
  throws(
    () => ownClassification(train, dev, {}),
    /dev\.jsonl: line 2: column "label": label "meh" is not one of the training labels neg, pos/,
  );
  const mixed = await readDataFile(
    await write("b/mixed.jsonl", '{"text":"a","label":"pos"}\n{"text":"b","label":3}\n'),
  );
  throws(
    () => ownClassification(mixed, undefined, {}),
    /mixed\.jsonl: line 2: column "label": label 3 is a number/,
  );
  const badText = await readDataFile(
    await write("b/text.jsonl", '{"text":"a","label":1}\n{"text":null,"label":0}\n'),
  );
  throws(
    () => ownClassification(badText, undefined, {}),
    /text\.jsonl: line 2: column "text": expected text, found missing/,
  );
  const pq = await readDataFile(
    await write(
      "b/lab.parquet",
      parquet([
        { name: "text", data: ["a", "b", "c"], type: "STRING" },
        { name: "label", data: ["x", "y", "x"], type: "STRING" },
      ]),
    ),
  );
  const pqDev = await readDataFile(
    await write(
      "b/labdev.parquet",
      parquet([
        { name: "text", data: ["a", "b"], type: "STRING" },
        { name: "label", data: ["x", "z"], type: "STRING" },
      ]),
    ),
  );
  throws(
    () => ownClassification(pq, pqDev, {}),
    /labdev\.parquet: row 1: column "label": label "z"/,
  );
});

Deno.test("labels: strings sorted, integers sorted numerically, floats make a regression", async () => {
  const s = ownClassification(
    await readDataFile(
      await write(
        "l/s.jsonl",
        ["b", "a", "c", "a"].map((l, i) => JSON.stringify({ text: `t${i}`, label: l })).join("\n"),
      ),
    ),
    undefined,
    {},
  );
  deepEqual(s.labels, ["a", "b", "c"]);
  deepEqual(s.train.map((e) => e.label), [1, 0, 2, 0]);
  deepEqual(labelMaps(s.labels), {
    id2label: { "0": "a", "1": "b", "2": "c" },
    label2id: { a: 0, b: 1, c: 2 },
    problem_type: "single_label_classification",
  });
  const ints = ownClassification(
    await readDataFile(await write("l/i.csv", "sentence,label\nx,10\ny,2\nz,5\nw,2\n")),
    undefined,
    {},
  );
  equal(ints.problem, "classification");
  deepEqual(ints.labels, ["2", "5", "10"]);
  deepEqual(ints.train.map((e) => e.label), [2, 0, 1, 0]);
  equal(ints.columns.text, "sentence");
  const floats = ownClassification(
    await readDataFile(await write("l/f.csv", "sentence1,sentence2,score\na,b,3.8\nc,d,1\n")),
    undefined,
    { labelColumn: "score" },
  );
  equal(floats.problem, "regression");
  deepEqual(floats.train.map((e) => [e.text, e.textPair, e.label]), [["a", "b", 3.8], [
    "c",
    "d",
    1,
  ]]);
  // A parquet DOUBLE column is a regression even when its values are whole numbers.
  const pq = ownClassification(
    await readDataFile(
      await write(
        "l/d.parquet",
        parquet([
          { name: "text", data: ["a", "b"], type: "STRING" },
          { name: "label", data: [1, 2], type: "DOUBLE" },
        ]),
      ),
    ),
    undefined,
    {},
  );
  equal(pq.problem, "regression");
  const bools = ownClassification(
    await readDataFile(
      await write("l/b.jsonl", '{"text":"a","label":true}\n{"text":"b","label":false}\n'),
    ),
    undefined,
    {},
  );
  deepEqual(bools.labels, ["false", "true"]);
});

Deno.test("Hugging Face datasets folders: data/{split}-*.parquet and {split}/ sub-folders", async () => {
  const shard = (texts: string[], labels: number[]) =>
    parquet([
      { name: "text", data: texts, type: "STRING" },
      { name: "label", data: labels.map(BigInt), type: "INT64" },
    ]);
  await write("hf1/data/train-00000-of-00002.parquet", shard(["a", "b"], [0, 1]));
  await write("hf1/data/train-00001-of-00002.parquet", shard(["c"], [1]));
  await write("hf1/data/validation-00000-of-00001.parquet", shard(["d"], [0]));
  await write("hf1/README.md", "# card");
  const f = await findDatasetSplits(join(work, "hf1"));
  equal(f.splits.train?.length, 2);
  equal(f.splits.validation?.length, 1);
  const train = await readDataFiles(f.splits.train!);
  deepEqual(train.rows.map((r) => r.text), ["a", "b", "c"]);
  deepEqual(train.rows.map((r) => r.label), [0, 1, 1]); // INT64 bigints arrive as numbers
  ok(train.fileOf(2).endsWith("train-00001-of-00002.parquet"));
  equal(train.where(2), "row 0");
  await write("hf2/train/part.jsonl", '{"text":"a","label":"x"}\n');
  await write("hf2/dev/part.jsonl", '{"text":"b","label":"x"}\n');
  const g = await findDatasetSplits(join(work, "hf2"));
  ok(g.splits.train && g.splits.validation);
  await write("hf3/other.csv", "text,label\na,1\n");
  await rejects(findDatasetSplits(join(work, "hf3")), /hf3: no train split; expected files like/);
  await rejects(findDatasetSplits(join(work, "missing")), /missing: not a folder/);
});

Deno.test({
  name: "the real GLUE RTE parquet conversion reads as a datasets folder with a sentence pair",
  ignore: !hasGlueParquet,
  fn: async () => {
    const f = await findDatasetSplits(`${SHARED}glue/parquet/rte`);
    const train = await readDataFiles(f.splits.train!);
    const dev = await readDataFiles(f.splits.validation!);
    const d = ownClassification(train, dev, {});
    deepEqual(d.columns, { text: "sentence1", textPair: "sentence2", label: "label" });
    deepEqual(d.labels, ["0", "1"]);
    equal(d.train.length, 2490);
    equal(d.eval.length, 277);
  },
});

Deno.test("own data is selected by its settings, never by the task name alone", () => {
  equal(usesOwnData({ task: "sst2", data: "glue" }), false);
  // A task name alone is no signal: a mistyped task with a GLUE folder must stay an error.
  equal(usesOwnData({ task: "reviews", data: "folder" }), false);
  equal(usesOwnData({ task: "reviews", data: "folder", labelColumn: "label" }), true);
  equal(usesOwnData({ task: "x", trainFile: "a.txt", objective: "mlm" }), false);
  equal(usesOwnData({ task: "sst2", trainFile: "x.csv" }), true);
  deepEqual(ownTaskDefault({ trainFile: "data/reviews.csv" }).task, "reviews");
  deepEqual(ownTaskDefault({ data: "my_ds/", format: "alpaca" }).task, "my_ds");
  deepEqual(ownTaskDefault({ task: "x", trainFile: "a.csv" }).task, "x");
  deepEqual(ownTaskDefault({ trainFile: "glue/SST-2/train.tsv" }).task, "SST-2");
  deepEqual(ownTaskDefault({ trainFile: "ds/data/training-00000.parquet" }).task, "data");
  deepEqual(ownTaskDefault({ trainFile: "trainers.csv" }).task, "trainers");
});

// A Zephyr-style template (turn headers, the EOS token closing each turn), written as Jinja.
const ZEPHYR =
  "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

/** Runs of consecutive trained tokens, decoded. */
function trainedRuns(tok: Tokenizer, ids: Int32Array, trained: (j: number) => boolean): string[] {
  const runs: string[] = [];
  let cur: number[] = [];
  for (let j = 0; j <= ids.length; j++) {
    if (j < ids.length && trained(j)) cur.push(ids[j]);
    else if (cur.length) {
      runs.push(tok.decode(cur, false));
      cur = [];
    }
  }
  return runs;
}

Deno.test({
  name: "sharegpt and messages through a Jinja chat template: loss on every reply, token by token",
  ignore: !hasRoberta,
  fn: async () => {
    const tok = await loadTokenizer(roberta);
    const template = new ChatTemplate(ZEPHYR, { eos_token: "</s>", bos_token: "<s>" }, "zephyr");
    const share = await readDataFile(
      await write(
        "c/share.jsonl",
        JSON.stringify({
          conversations: [
            { from: "system", value: "Be brief." },
            { from: "human", value: "Hi there" },
            { from: "gpt", value: "Hello!" },
            { from: "human", value: "Name a colour" },
            { from: "gpt", value: "Blue" },
          ],
        }) + "\n",
      ),
    );
    const msgs = await readDataFile(
      await write(
        "c/msgs.json",
        JSON.stringify([{
          messages: [
            { role: "system", content: "Be brief." },
            { role: "user", content: "Hi there" },
            { role: "assistant", content: "Hello!" },
            { role: "user", content: "Name a colour" },
            { role: "assistant", content: "Blue" },
          ],
        }]),
      ),
    );
    equal(detectFormat(share.columns), "sharegpt");
    equal(detectFormat(msgs.columns), "messages");
    const a = conversations(share, "sharegpt");
    const b = conversations(msgs, "messages");
    deepEqual(a, b);
    const { examples } = encodeInstructions(tok, a, template, 512);
    const e = examples[0];
    // The whole text is the template's rendering after the tokenizer's BOS.
    if (a[0].kind !== "chat") throw new Error("expected a chat");
    const rendered = template.render(a[0].messages, false);
    equal(tok.decode([...e.ids], false), `<s>${rendered}`);
    deepEqual([...e.ids], encodeWithSpecials(tok, `<s>${rendered}`));
    // Trained tokens are exactly the two replies with their closing EOS and newline.
    const h = collate([e], tok.padId ?? 1);
    const runs = trainedRuns(tok, e.ids, (j) => h.lmLabels[j] !== -100);
    deepEqual(runs, ["Hello!</s>\n", "Blue</s>\n"]);
    ok(e.lossMask, "a multi-turn example carries a per-token mask");
    // The untrained tokens are the prompts: system, both user turns, both assistant headers.
    const prompts = trainedRuns(tok, e.ids, (j) => h.lmLabels[j] === -100);
    deepEqual(prompts, [
      "<s><|system|>\nBe brief.</s>\n<|user|>\nHi there</s>\n<|assistant|>\n",
      "<|user|>\nName a colour</s>\n<|assistant|>\n",
    ]);
    // Truncation inside the first reply keeps its first tokens and drops the rest.
    const cut = encodeInstructions(tok, a, template, e.promptTokens + 2).examples[0];
    equal(cut.ids.length, e.promptTokens + 2);
    const hc = collate([cut], 1);
    equal([...hc.lmLabels].filter((l) => l !== -100).length, 2);
    // A record whose reply starts beyond maxLength is dropped and counted.
    equal(encodeInstructions(tok, a, template, e.promptTokens).dropped, 1);
  },
});

Deno.test({
  name: "chat_template from tokenizer_config.json, and templates that are not prefix-stable fail",
  ignore: !hasRoberta,
  fn: async () => {
    const dir = join(work, "tpl");
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(
      join(dir, "tokenizer_config.json"),
      JSON.stringify({
        chat_template: [{ name: "default", template: ZEPHYR }],
        eos_token: { content: "</s>" },
      }),
    );
    const t = await loadChatTemplate(dir);
    ok(t);
    equal(t.render([{ role: "user", content: "x" }], true), "<|user|>\nx</s>\n<|assistant|>\n");
    equal(await loadChatTemplate(join(work, "nowhere")), null);
    await Deno.writeTextFile(
      join(dir, "tokenizer_config.json"),
      JSON.stringify({ chat_template: "{% for %}" }),
    );
    await rejects(
      loadChatTemplate(dir),
      /tokenizer_config\.json: chat_template is not valid Jinja/,
    );
    // A template that writes the number of messages first changes earlier text with each turn.
    const unstable = new ChatTemplate(
      "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
      {},
      "unstable",
    );
    throws(
      () =>
        segments(
          {
            kind: "chat",
            messages: [{ role: "user", content: "a" }, { role: "assistant", content: "b" }],
          },
          unstable,
          "",
        ),
      /unstable: the chat template does not render a conversation as a prefix/,
    );
  },
});

Deno.test({
  name: "alpaca without a chat template: the Alpaca prompt, loss on the output and EOS only",
  ignore: !hasStories,
  fn: async () => {
    const model = join(work, "stories");
    await convertLlama2c({
      checkpoint: `${SHARED}models/stories260K/stories260K.bin`,
      tokenizer: `${SHARED}models/stories260K/tok512.bin`,
      output: model,
    });
    const tok = await loadTokenizer(model);
    equal(await loadChatTemplate(model), null);
    const rows = [
      { instruction: "Name a pet.", input: "", output: "A cat." },
      { instruction: "Add one.", input: "2", output: "3" },
    ];
    const t = await readDataFile(
      await write("a/alpaca.jsonl", rows.map((r) => JSON.stringify(r)).join("\n")),
    );
    const convs = conversations(t, "alpaca");
    const { examples } = encodeInstructions(tok, convs, null, 512);
    rows.forEach((r, i) => {
      const prompt = trainingPrompt({ ...r, answer: "" }, "alpaca");
      const segs = segments(convs[i], null, "</s>");
      equal(segs.map((s) => s.text).join(""), `${prompt}${r.output}</s>`);
      const e = examples[i];
      // Prompt tokens: BOS + the prompt's own tokenisation, as Alpaca-LoRA counts them.
      equal(e.promptTokens, tok.encode(prompt).ids.length);
      deepEqual([...e.ids], tok.encode(`${prompt}${r.output}`).ids.concat(tok.eosId!));
      const h = collate([e], 0);
      const labels = [...h.lmLabels];
      for (let j = 0; j < e.ids.length; j++) {
        equal(labels[j], j >= e.promptTokens ? e.ids[j] : -100, `token ${j} of record ${i}`);
      }
      equal(e.ids[e.ids.length - 1], tok.eosId);
      equal(e.lossMask, undefined);
    });
    const bad = await readDataFile(
      await write("a/bad.jsonl", '{"instruction":"x","output":"y"}\n{"instruction":"x"}\n'),
    );
    throws(
      () => conversations(bad, "alpaca"),
      /bad\.jsonl: line 2: column "output": missing; alpaca records need "output"/,
    );
    const badChat = await readDataFile(
      await write(
        "a/badchat.jsonl",
        '{"messages":[{"role":"user","content":"x"},{"role":"bot","content":"y"}]}\n',
      ),
    );
    throws(
      () => conversations(badChat, "messages"),
      /badchat\.jsonl: line 1: column "messages": turn 1: role "bot"; expected system, user or assistant/,
    );
    const noReply = await readDataFile(
      await write("a/noreply.jsonl", '{"conversations":[{"from":"human","value":"x"}]}\n'),
    );
    throws(
      () => conversations(noReply, "sharegpt"),
      /noreply\.jsonl: line 1: column "conversations": no assistant turn/,
    );
    // Plain text trains on every token.
    const text = await readDataFile(await write("a/text.csv", "text\nOnce upon a time\n"));
    const plain = encodeInstructions(tok, conversations(text, "text"), null, 512).examples[0];
    equal(plain.promptTokens, 1);
    deepEqual([...plain.ids], tok.encode("Once upon a time").ids);
  },
});
