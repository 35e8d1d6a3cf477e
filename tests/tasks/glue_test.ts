/**
 * GLUE readers on the real data in ../shared/data/glue (tsv/: the original GLUE TSVs; parquet/: the
 * Hugging Face nyu-mll/glue conversion), plus small crafted files in a temp folder for layouts the
 * shared copy lacks (MNLI, test TSVs, several shards) and for malformed input. Tests that need the
 * shared data are skipped only when that folder is absent. Host-only: no GPU needed.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  GLUE_TASK_SPECS,
  GLUE_TASKS,
  GlueDataError,
  glueEvalSplits,
  type GlueExample,
  type GlueTask,
  glueTaskSpec,
  loadGlue,
  locateGlue,
  readGlueTsv,
  resolveGlueSplit,
} from "../../tasks/lib/data/glue.ts";

const GLUE = new URL("../../../shared/data/glue", import.meta.url).pathname;
const haveGlue = await Deno.stat(join(GLUE, "tsv", "SST-2", "train.tsv")).then(
  () => true,
  () => false,
);
const ignore = !haveGlue; // only when ../shared/data is absent

/** Asserts `fn` rejects with a GlueDataError whose message matches every pattern. */
async function assertDataError(fn: () => Promise<unknown>, ...patterns: RegExp[]): Promise<void> {
  await assert.rejects(fn, (e: unknown) => {
    assert.ok(e instanceof GlueDataError, `expected a GlueDataError, got ${e}`);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
}

Deno.test("GLUE specs: label names as the Hugging Face features define them", () => {
  const labels = (t: GlueTask) => [...glueTaskSpec(t).labelNames];
  assert.deepEqual(labels("cola"), ["unacceptable", "acceptable"]);
  assert.deepEqual(labels("sst2"), ["negative", "positive"]);
  assert.deepEqual(labels("mrpc"), ["not_equivalent", "equivalent"]);
  assert.deepEqual(labels("qqp"), ["not_duplicate", "duplicate"]);
  assert.deepEqual(labels("mnli"), ["entailment", "neutral", "contradiction"]);
  assert.deepEqual(labels("ax"), ["entailment", "neutral", "contradiction"]);
  assert.deepEqual(labels("qnli"), ["entailment", "not_entailment"]);
  assert.deepEqual(labels("rte"), ["entailment", "not_entailment"]);
  assert.deepEqual(labels("wnli"), ["not_entailment", "entailment"]);
  assert.deepEqual(labels("stsb"), []);
  assert.equal(glueTaskSpec("stsb").isRegression, true);
  assert.equal(glueTaskSpec("stsb").numLabels, 1);
  assert.equal(glueTaskSpec("mnli").numLabels, 3);
  assert.deepEqual(glueTaskSpec("qnli").textFields, ["question", "sentence"]);
  assert.deepEqual(glueTaskSpec("qqp").textFields, ["question1", "question2"]);
  assert.deepEqual(glueTaskSpec("mnli").textFields, ["premise", "hypothesis"]);
  assert.deepEqual(glueTaskSpec("sst2").textFields, ["sentence"]);
  for (const task of GLUE_TASKS) {
    const spec = GLUE_TASK_SPECS[task];
    assert.ok(spec.metrics.includes(spec.mainMetric), `${task}: main metric is one of its metrics`);
    for (const split of spec.splits) assert.ok(spec.tsv.files[split], `${task}/${split} TSV file`);
  }
  assert.throws(() => glueTaskSpec("squad"), /unknown GLUE task "squad"; expected one of cola/);
});

Deno.test("GLUE splits: GLUE's dev names map to Hugging Face's, MNLI has two of each", () => {
  assert.equal(resolveGlueSplit("sst2", "dev"), "validation");
  assert.equal(resolveGlueSplit("sst2", "validation"), "validation");
  assert.equal(resolveGlueSplit("mnli", "dev_matched"), "validation_matched");
  assert.equal(resolveGlueSplit("mnli", "test_mismatched"), "test_mismatched");
  assert.deepEqual(glueEvalSplits("mnli"), ["validation_matched", "validation_mismatched"]);
  assert.deepEqual(glueEvalSplits("rte"), ["validation"]);
  assert.deepEqual(glueEvalSplits("ax"), []);
  assert.throws(
    () => resolveGlueSplit("mnli", "validation"),
    /no split "validation"; expected one of train, validation_matched, validation_mismatched/,
  );
  assert.throws(() => resolveGlueSplit("ax", "train"), /GLUE task "ax" has no split "train"/);
  assert.equal(GLUE_TASK_SPECS.mnli.tsv.files.validation_mismatched, "MNLI/dev_mismatched.tsv");
  assert.equal(GLUE_TASK_SPECS.cola.tsv.files.validation, "CoLA/dev.tsv");
});

Deno.test({
  name: "GLUE SST-2: 67,349 train and 872 dev sentences",
  ignore,
  async fn() {
    const train = await loadGlue("sst2", "train", { source: GLUE, format: "tsv" });
    assert.equal(train.length, 67349);
    assert.deepEqual(train[0], {
      idx: 0,
      text: "hide new secretions from the parental units ",
      label: 0,
    });
    assert.equal(train[66].idx, 66);
    const devTsv = await loadGlue("sst2", "dev", { source: join(GLUE, "tsv") });
    const devParquet = await loadGlue("sst2", "validation", { source: join(GLUE, "parquet") });
    assert.equal(devTsv.length, 872);
    assert.deepEqual(devParquet, devTsv);
    assert.equal(
      train.filter((e) => e.label === 1).length + train.filter((e) => e.label === 0).length,
      67349,
    );
  },
});

/** Compares two loads record by record: same texts and labels (and idx where `sameIdx`). */
function assertSameRecords(
  tsv: GlueExample[],
  parquet: GlueExample[],
  what: string,
  opts: { sameIdx: boolean; float32Labels?: boolean },
): void {
  assert.equal(tsv.length, parquet.length, `${what}: row count`);
  for (let i = 0; i < tsv.length; i++) {
    const a = tsv[i], b = parquet[i];
    assert.equal(a.text, b.text, `${what}[${i}].text`);
    assert.equal(a.textPair, b.textPair, `${what}[${i}].textPair`);
    // Hugging Face stores STS-B scores as float32; the TSV has up to 15 decimals.
    const la = opts.float32Labels ? Math.fround(a.label) : a.label;
    const lb = opts.float32Labels ? Math.fround(b.label) : b.label;
    assert.equal(la, lb, `${what}[${i}].label`);
    if (opts.sameIdx) assert.equal(a.idx, b.idx, `${what}[${i}].idx`);
  }
}

Deno.test({
  name: "GLUE dev sets: TSV and parquet give the same records (CoLA, MRPC, RTE, STS-B, …)",
  ignore,
  async fn() {
    const cases: [GlueTask, number][] = [
      ["cola", 1043],
      ["mrpc", 408],
      ["rte", 277],
      ["stsb", 1500],
      ["wnli", 71],
      ["qnli", 5463],
    ];
    for (const [task, rows] of cases) {
      const tsv = await loadGlue(task, "validation", { source: GLUE, format: "tsv" });
      const parquet = await loadGlue(task, "validation", { source: GLUE, format: "parquet" });
      assert.equal(tsv.length, rows, `${task} dev rows`);
      // MRPC's parquet idx numbers rows of Microsoft's original file, not of GLUE's dev.tsv.
      assertSameRecords(tsv, parquet, task, {
        sameIdx: task !== "mrpc",
        float32Labels: task === "stsb",
      });
      // Both label classes occur (a reader mapping every label to one id would fail here).
      if (task !== "stsb") assert.equal(new Set(tsv.map((e) => e.label)).size, 2, task);
    }
    // RTE's TSV writes label names: the first dev pair is "not_entailment", Hugging Face id 1.
    const rte = await loadGlue("rte", "validation", { source: GLUE, format: "tsv" });
    assert.equal(rte[0].label, 1);
    assert.equal(rte[0].textPair, "Christopher Reeve had an accident.");
    // STS-B keeps the TSV's decimals; parquet's float32 3.8 comes back as 3.8 too.
    const stsb = await loadGlue("stsb", "validation", { source: GLUE, format: "parquet" });
    assert.deepEqual(stsb.slice(0, 2).map((e) => e.label), [5, 4.75]);
    assert.ok(stsb.some((e) => e.label === 3.8), "STS-B float32 scores read back as decimals");
  },
});

Deno.test({
  name: "GLUE train sets: TSV and parquet agree where both exist (CoLA, RTE, STS-B, WNLI)",
  ignore,
  async fn() {
    for (const task of ["cola", "rte", "stsb", "wnli"] as const) {
      const tsv = await loadGlue(task, "train", { source: GLUE, format: "tsv" });
      const parquet = await loadGlue(task, "train", { source: GLUE, format: "parquet" });
      assertSameRecords(tsv, parquet, `${task} train`, {
        sameIdx: true,
        float32Labels: task === "stsb",
      });
    }
  },
});

Deno.test({
  name: "GLUE parquet test splits: label -1 on every row",
  ignore,
  async fn() {
    const cases: [GlueTask, number][] = [["cola", 1063], ["stsb", 1379], ["ax", 1104], [
      "qnli",
      5463,
    ]];
    for (const [task, rows] of cases) {
      const test = await loadGlue(task, "test", { source: GLUE });
      assert.equal(test.length, rows, `${task} test rows`);
      assert.ok(test.every((e) => e.label === -1), `${task}: all labels -1`);
    }
    const ax = await loadGlue("ax", "test", { source: GLUE });
    assert.deepEqual(ax[0], {
      idx: 0,
      text: "The cat sat on the mat.",
      textPair: "The cat did not sit on the mat.",
      label: -1,
    });
  },
});

Deno.test({
  name: "GLUE auto-detect: parquet first, TSV fallback, and an error listing the paths tried",
  ignore,
  async fn() {
    assert.equal((await locateGlue("cola", "validation", { source: GLUE })).format, "parquet");
    // SST-2 train exists only as TSV in the shared copy.
    const sst2 = await locateGlue("sst2", "train", { source: GLUE });
    assert.deepEqual(sst2, { format: "tsv", files: [join(GLUE, "tsv", "SST-2", "train.tsv")] });
    assert.equal((await locateGlue("rte", "dev", { source: join(GLUE, "tsv") })).format, "tsv");
    await assert.rejects(
      () => loadGlue("mnli", "train", { source: GLUE }),
      /no parquet or TSV data for GLUE mnli\/train .*mnli\/train\/\*\.parquet.*MNLI\/train\.tsv/,
    );
    await assert.rejects(
      () => loadGlue("qnli", "train", { source: GLUE, format: "parquet" }),
      /no parquet data for GLUE qnli\/train/,
    );
    await assert.rejects(
      // @ts-expect-error: a bad format must be caught at run time too.
      () => loadGlue("rte", "train", { source: GLUE, format: "csv" }),
      /loadGlue options: field "format"/,
    );
  },
});

Deno.test({
  name: "GLUE parquet: shards are read in order and concatenated; wrong columns name the file",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const real = join(GLUE, "parquet", "cola", "validation", "0000.parquet");
      await Deno.mkdir(join(dir, "cola", "validation"), { recursive: true });
      await Deno.symlink(real, join(dir, "cola", "validation", "0001.parquet"));
      await Deno.symlink(real, join(dir, "cola", "validation", "0000.parquet"));
      const both = await loadGlue("cola", "validation", { source: dir });
      assert.equal(both.length, 2 * 1043);
      assert.deepEqual(both[1043], both[0]);

      // CoLA's shard where RTE's is expected: no sentence1 column.
      const wrong = join(dir, "rte", "validation", "0000.parquet");
      await Deno.mkdir(join(dir, "rte", "validation"), { recursive: true });
      await Deno.symlink(real, wrong);
      await assertDataError(
        () => loadGlue("rte", "validation", { source: dir }),
        new RegExp(`^${wrong}: field "sentence1": missing column`),
      );
      // Not a parquet file at all.
      const junk = join(dir, "wnli", "validation", "0000.parquet");
      await Deno.mkdir(join(dir, "wnli", "validation"), { recursive: true });
      await Deno.writeTextFile(junk, "index\tsentence1\n");
      await assertDataError(
        () => loadGlue("wnli", "validation", { source: dir }),
        /not a readable parquet/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("GLUE TSV: MNLI's columns, test files without labels, CoLA test with a header", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // MNLI's real header (dev files have label1..label5 and gold_label; test files have neither).
    const head = [
      "index",
      "promptID",
      "pairID",
      "genre",
      "sentence1_binary_parse",
      "sentence2_binary_parse",
      "sentence1_parse",
      "sentence2_parse",
      "sentence1",
      "sentence2",
    ];
    const dev = [
      [...head, "label1", "label2", "label3", "label4", "label5", "gold_label"].join("\t"),
      ["0", "1", "1e", "slate", "(", "(", "(", "(", "A man sleeps.", "A man rests.", "entailment"]
        .concat(["entailment", "entailment", "neutral", "entailment", "entailment"]).join("\t"),
      ["1", "2", "2n", "fiction", "(", "(", "(", "(", "It rains.", "It is sunny.", "contradiction"]
        .concat(["contradiction", "contradiction", "contradiction", "neutral", "contradiction"])
        .join("\t"),
      ["2", "3", "3n", "travel", "(", "(", "(", "(", "He went.", "He went by bus.", "neutral"]
        .concat(["neutral", "neutral", "neutral", "neutral", "neutral"]).join("\t"),
    ].join("\n") + "\n";
    await Deno.mkdir(join(dir, "MNLI"));
    await Deno.writeTextFile(join(dir, "MNLI", "dev_mismatched.tsv"), dev);
    const mm = await loadGlue("mnli", "validation_mismatched", { source: dir });
    assert.deepEqual(mm.map((e) => e.label), [0, 2, 1]);
    assert.deepEqual(mm[1], { idx: 1, text: "It rains.", textPair: "It is sunny.", label: 2 });

    const test = [
      head.join("\t"),
      ["0", "9", "9e", "slate", "(", "(", "(", "(", "P.", "H."]
        .join("\t"),
    ].join("\r\n") + "\r\n";
    await Deno.writeTextFile(join(dir, "MNLI", "test_matched.tsv"), test);
    assert.deepEqual(await loadGlue("mnli", "test_matched", { source: dir }), [
      { idx: 0, text: "P.", textPair: "H.", label: -1 },
    ]);

    await Deno.mkdir(join(dir, "CoLA"));
    await Deno.writeTextFile(join(dir, "CoLA", "test.tsv"), "index\tsentence\n0\tBill left.\n");
    assert.deepEqual(await loadGlue("cola", "test", { source: dir, format: "tsv" }), [
      { idx: 0, text: "Bill left.", label: -1 },
    ]);
    // CoLA's labelled files have no header: the first line is data.
    await Deno.writeTextFile(join(dir, "CoLA", "dev.tsv"), "gj04\t0\t*\tBill left the.\n");
    assert.deepEqual(await readGlueTsv(join(dir, "CoLA", "dev.tsv"), "cola", "dev"), [
      { idx: 0, text: "Bill left the.", label: 0 },
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GLUE TSV: malformed files fail with the file, the line and the field", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = join(dir, "RTE", "dev.tsv");
    await Deno.mkdir(join(dir, "RTE"));
    const header = "index\tsentence1\tsentence2\tlabel";
    // Line 3 lost its label column.
    await Deno.writeTextFile(file, `${header}\n0\tA.\tB.\tentailment\n1\tC.\tD.\n`);
    await assertDataError(
      () => loadGlue("rte", "validation", { source: dir }),
      new RegExp(`^${file}: line 3: field "label": expected 4 tab-separated fields`),
      /found 3/,
    );
    // …unless asked to skip such rows, as the Hugging Face builder did.
    assert.equal((await loadGlue("rte", "dev", { source: dir, skipMalformed: true })).length, 1);

    // A label that is not one of RTE's names.
    await Deno.writeTextFile(file, `${header}\n0\tA.\tB.\tentailment\n1\tC.\tD.\tneutral\n`);
    await assertDataError(
      () => loadGlue("rte", "validation", { source: dir }),
      new RegExp(`^${file}: line 3: field "label": label "neutral"; expected one of entailment`),
    );
    // A header without the label column.
    await Deno.writeTextFile(file, "index\tsentence1\tsentence2\n0\tA.\tB.\n");
    await assertDataError(
      () => loadGlue("rte", "validation", { source: dir }),
      /line 1: field "label": missing column in the header/,
    );
    // Class ids out of range, STS-B scores out of 0..5, and invalid UTF-8.
    const wnli = join(dir, "wnli.tsv");
    await Deno.writeTextFile(wnli, `${header}\n0\tA.\tB.\t2\n`);
    await assertDataError(
      () => readGlueTsv(wnli, "wnli", "train"),
      /line 2: field "label": label "2"/,
    );
    const stsb = join(dir, "stsb.tsv");
    await Deno.writeTextFile(stsb, "sentence1\tsentence2\tscore\nA.\tB.\t5.5\n");
    await assertDataError(() => readGlueTsv(stsb, "stsb", "train"), /score in 0\.\.5/);
    const latin1 = join(dir, "latin1.tsv");
    await Deno.writeFile(latin1, new Uint8Array([0x73, 0x65, 0x6e, 0x74, 0xe9, 0x0a]));
    await assertDataError(() => readGlueTsv(latin1, "sst2", "train"), /not valid UTF-8/);
    await assertDataError(() => readGlueTsv(join(dir, "none.tsv"), "sst2", "train"), /not found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
