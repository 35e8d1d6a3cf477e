/**
 * Commonsense data in the LLM-Adapters format on the real files in ../shared/data/commonsense
 * (skipped only when that folder is absent), the prompt templates byte for byte, and answer
 * extraction on crafted generations. Host-only: no GPU needed.
 *
 * Prompt sources (read through the code search index, not copied):
 * - training: `generate_prompt(data_point)` in AGI-Edgerunners/LLM-Adapters `finetune.py` at commit
 *   91770aba93bbbde16f3e16d1bf395a59706fa390, identical in NVlabs/DoRA
 *   `commonsense_reasoning/finetune.py`;
 * - evaluation: `generate_prompt(instruction, input)` in NVlabs/DoRA
 *   `commonsense_reasoning/commonsense_evaluate.py` (LLM-Adapters' `commonsense_evaluate.py`).
 * Both are f-strings indented by 16 spaces inside the function body, and the indentation is part of
 * the string.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  ANSWER_PREFIX,
  answerCandidates,
  COMMONSENSE_DATASETS,
  type CommonsenseDataset,
  type CommonsenseRecord,
  evaluationPrompt,
  extractAnswer,
  loadCommonsense,
  readCommonsenseFile,
  responseText,
  scoreCommonsense,
  scoringContinuations,
  trainingPrompt,
  trainingText,
} from "../../tasks/lib/data/commonsense.ts";

const DATA = new URL("../../../shared/data/commonsense", import.meta.url).pathname;
const haveData = await Deno.stat(join(DATA, "boolq", "test.json")).then(() => true, () => false);
const ignore = !haveData; // only when ../shared/data is absent

const TEST_COUNTS: [CommonsenseDataset, number][] = [
  ["boolq", 3270],
  ["piqa", 1838],
  ["social_i_qa", 1954],
  ["winogrande", 1267],
  ["ARC-Easy", 2376],
  ["ARC-Challenge", 1172],
  ["openbookqa", 500],
];

Deno.test({
  name: "commonsense: every test set's size, and gold outputs score 100%",
  ignore,
  async fn() {
    for (const [dataset, count] of TEST_COUNTS) {
      const records = await loadCommonsense(dataset, "test", { source: DATA });
      assert.equal(records.length, count, `${dataset} test size`);
      for (const [i, r] of records.entries()) {
        assert.equal(r.output, ANSWER_PREFIX + r.answer, `${dataset}[${i}].output`);
        assert.ok(answerCandidates(dataset, r).includes(r.answer), `${dataset}[${i}] candidates`);
        assert.equal(r.input, "", `${dataset}[${i}].input`);
      }
      const score = scoreCommonsense(dataset, records, records.map((r) => r.output));
      assert.equal(score.accuracy, 1, `${dataset}: gold outputs`);
      assert.equal(score.total, count);
    }
    const trainCounts: [CommonsenseDataset, number][] = [
      ["boolq", 9427],
      ["ARC-Easy", 2251],
      ["ARC-Challenge", 1119],
      ["openbookqa", 4957],
    ];
    for (const [dataset, count] of trainCounts) {
      assert.equal((await loadCommonsense(dataset, "train", { source: DATA })).length, count);
    }
    await assert.rejects(
      () => loadCommonsense("hellaswag", "test", { source: DATA }),
      /hellaswag\/test\.json: file not found/,
    );
  },
});

Deno.test({
  name: "commonsense prompts: byte-exact LLM-Adapters training text and evaluation prompt",
  ignore,
  async fn() {
    const [first] = await loadCommonsense("boolq", "test", { source: DATA });
    assert.equal(
      first.instruction,
      "Please answer the following question with true or false, question: does ethanol take " +
        "more energy make that produces?\n\nAnswer format: true/false",
    );
    // finetune.py: two spaces after "request.", 16-space indents, and the blank line between the
    // instruction and "### Response:" holds 16 spaces.
    assert.equal(
      trainingText(first),
      "Below is an instruction that describes a task. Write a response that appropriately " +
        "completes the request.  \n\n" +
        "                ### Instruction:\n" +
        "                Please answer the following question with true or false, question: does " +
        "ethanol take more energy make that produces?\n\nAnswer format: true/false\n" +
        "                \n" +
        "                ### Response:\n" +
        "                the correct answer is false",
    );
    assert.equal(trainingText(first), trainingPrompt(first) + first.output);
    // commonsense_evaluate.py: one space after "request.", an empty blank line.
    assert.equal(
      evaluationPrompt(first),
      "Below is an instruction that describes a task. Write a response that appropriately " +
        "completes the request. \n\n" +
        "                ### Instruction:\n" +
        "                Please answer the following question with true or false, question: does " +
        "ethanol take more energy make that produces?\n\nAnswer format: true/false\n\n" +
        "                ### Response:\n" +
        "                ",
    );
  },
});

const WITH_INPUT: CommonsenseRecord = {
  instruction: "Add the numbers.",
  input: "2 and 3",
  output: "5",
  answer: "5",
};
const NO_INPUT: CommonsenseRecord = { ...WITH_INPUT, input: "" };

Deno.test("commonsense prompts: the variant with an input, and the clean Alpaca style", () => {
  const I = " ".repeat(16);
  assert.equal(
    trainingText(WITH_INPUT),
    "Below is an instruction that describes a task, paired with an input that provides further " +
      `context. Write a response that appropriately completes the request. \n\n` +
      `${I}### Instruction:\n${I}Add the numbers.\n${I}\n` +
      `${I}### Input:\n${I}2 and 3\n${I}\n` +
      `${I}### Response:\n${I}5`,
  );
  assert.equal(
    evaluationPrompt(WITH_INPUT),
    "Below is an instruction that describes a task, paired with an input that provides further " +
      `context. Write a response that appropriately completes the request.\n\n` +
      `${I}### Instruction:\n${I}Add the numbers.\n\n` +
      `${I}### Input:\n${I}2 and 3\n\n` +
      `${I}### Response:\n${I}`,
  );
  // Stanford Alpaca's template: training text = prompt + output, evaluation = the same prompt.
  const alpacaNoInput = "Below is an instruction that describes a task. Write a response that " +
    "appropriately completes the request.\n\n### Instruction:\nAdd the numbers.\n\n### Response:\n";
  assert.equal(evaluationPrompt(NO_INPUT, "alpaca"), alpacaNoInput);
  assert.equal(trainingText(NO_INPUT, "alpaca"), alpacaNoInput + "5");
  assert.equal(
    trainingPrompt(WITH_INPUT, "alpaca"),
    "Below is an instruction that describes a task, paired with an input that provides further " +
      "context. Write a response that appropriately completes the request.\n\n### Instruction:\n" +
      "Add the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n",
  );
});

Deno.test("commonsense extraction: first match wins, no match counts as wrong", () => {
  assert.equal(extractAnswer("boolq", "the correct answer is true"), "true");
  assert.equal(extractAnswer("boolq", "  false, although true is tempting"), "false");
  // Leftmost occurrence, not the first alternative of the pattern.
  assert.equal(extractAnswer("piqa", "solution2 is better than solution1"), "solution2");
  assert.equal(extractAnswer("social_i_qa", "not answer3 but answer1"), "answer3");
  assert.equal(extractAnswer("ARC-Easy", "the correct answer is answer5"), "answer5");
  assert.equal(extractAnswer("hellaswag", "ending4 then ending1"), "ending4");
  assert.equal(extractAnswer("winogrande", "option2"), "option2");
  // Case-sensitive, and no word boundaries, exactly like re.findall(r'true|false', …).
  assert.equal(extractAnswer("boolq", "True"), "");
  assert.equal(extractAnswer("boolq", "untrue"), "true");
  assert.equal(extractAnswer("openbookqa", "answer10"), "answer1");
  // Another data set's tokens do not count.
  assert.equal(extractAnswer("winogrande", "the correct answer is answer1"), "");
  assert.equal(extractAnswer("piqa", ""), "");

  const records: CommonsenseRecord[] = ["answer2", "answer1", "answer3", "answer2"].map((a) => ({
    instruction: "Q\n\nAnswer format: answer1/answer2/answer3",
    input: "",
    output: ANSWER_PREFIX + a,
    answer: a,
  }));
  const score = scoreCommonsense("social_i_qa", records, [
    "the correct answer is answer2",
    "I think answer3; the correct answer is answer1",
    "no idea",
    "answer2",
  ]);
  assert.deepEqual(score.predictions, ["answer2", "answer3", "", "answer2"]);
  assert.equal(score.correct, 2);
  assert.equal(score.accuracy, 0.5);
  assert.throws(() => scoreCommonsense("piqa", records, []), /0 generations for 4 records/);
  // @ts-expect-error: an unknown data set must fail at run time too.
  assert.throws(() => extractAnswer("siqa", "answer1"), /unknown commonsense data set "siqa"/);
});

Deno.test("commonsense: response text after the prompt, candidates and scoring continuations", () => {
  const prompt = evaluationPrompt(NO_INPUT);
  assert.equal(responseText(prompt + "the correct answer is 5 \n"), "the correct answer is 5");
  assert.equal(responseText("  answer2 "), "answer2");
  assert.deepEqual(scoringContinuations("boolq"), [
    "the correct answer is true",
    "the correct answer is false",
  ]);
  const five: CommonsenseRecord = {
    instruction: "Q\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2/answer3/answer4/" +
      "answer5",
    input: "",
    output: "the correct answer is answer5",
    answer: "answer5",
  };
  assert.deepEqual(answerCandidates("ARC-Challenge", five), [
    "answer1",
    "answer2",
    "answer3",
    "answer4",
    "answer5",
  ]);
  assert.deepEqual(answerCandidates("ARC-Challenge"), ["answer1", "answer2", "answer3", "answer4"]);
  // WinoGrande puts "Answer format:" on the options' line.
  const wino = {
    ...five,
    instruction: "S _.\n\nOption1: A Option2: B Answer format: option1/option2",
  };
  assert.deepEqual(answerCandidates("winogrande", wino), ["option1", "option2"]);
  assert.deepEqual(answerCandidates("hellaswag"), ["ending1", "ending2", "ending3", "ending4"]);
  assert.equal(COMMONSENSE_DATASETS.length, 8);
});

Deno.test("commonsense files: malformed JSON fails with the file, the record and the field", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = join(dir, "test.json");
    const good = {
      instruction: "Q",
      input: "",
      output: "the correct answer is true",
      answer: "true",
    };
    await Deno.writeTextFile(file, JSON.stringify([good, good, { ...good, answer: undefined }]));
    await assert.rejects(
      () => readCommonsenseFile(file),
      new RegExp(`^Error: ${file}: record 2: field "answer": .*expected \\{ instruction`),
    );
    await Deno.writeTextFile(file, JSON.stringify([good, { ...good, input: 3 }]));
    await assert.rejects(() => readCommonsenseFile(file), /record 1: field "input"/);
    await Deno.writeTextFile(file, JSON.stringify({ data: [good] }));
    await assert.rejects(() => readCommonsenseFile(file), /expected a JSON array of records/);
    await Deno.writeTextFile(file, "[{");
    await assert.rejects(() => readCommonsenseFile(file), new RegExp(`${file}: not valid JSON`));
    await Deno.writeTextFile(file, JSON.stringify([good]));
    assert.deepEqual(await readCommonsenseFile(file), [good]);
    await assert.rejects(
      // @ts-expect-error: a bad split must fail at run time too.
      () => loadCommonsense("boolq", "validation", { source: dir }),
      /split "validation": expected "train" or "test"/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
