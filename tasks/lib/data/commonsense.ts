/**
 * Commonsense reasoning in the LLM-Adapters format, the benchmark of the DoRA paper: eight data sets
 * (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA) whose records are
 * `{ instruction, input, output: "the correct answer is X", answer: "X" }`.
 *
 * Prompts are byte-exact copies of the two templates LLM-Adapters (and DoRA's
 * `commonsense_reasoning/`) actually use, whitespace included: `finetune.py`'s `generate_prompt`
 * for training — its f-string is indented, so every line after the first starts with 16 spaces and
 * the first line ends in spaces — and `commonsense_evaluate.py`'s `generate_prompt` for generation,
 * which differs from the training one in those spaces. The clean Stanford Alpaca template is
 * available as the `alpaca` style. Answers are extracted from a generation as
 * `commonsense_evaluate.py`'s `extract_answer` does: the first match of the data set's answer
 * pattern, "" (counted wrong) when there is none.
 *
 * @example
 * ```ts
 * import { evaluationPrompt, extractAnswer, loadCommonsense } from "./commonsense.ts";
 * const test = await loadCommonsense("boolq", "test", { source: "../shared/data/commonsense" });
 * const prompt = evaluationPrompt(test[0]); // what the model continues
 * console.log(extractAnswer("boolq", "the correct answer is false"), test[0].answer); // false false
 * ```
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";

/** The commonsense data sets, by LLM-Adapters' folder names. */
export const COMMONSENSE_DATASETS = [
  "boolq",
  "piqa",
  "social_i_qa",
  "hellaswag",
  "winogrande",
  "ARC-Easy",
  "ARC-Challenge",
  "openbookqa",
] as const;

/** A commonsense data set name. */
export type CommonsenseDataset = typeof COMMONSENSE_DATASETS[number];

/** One record of the LLM-Adapters JSON format. */
export interface CommonsenseRecord {
  /** The question with its options and the "Answer format: …" line. */
  instruction: string;
  /** Extra context; empty in all eight data sets. */
  input: string;
  /** The training target, "the correct answer is X". */
  output: string;
  /** The answer token X ("true", "solution2", "answer3", "option1", …). */
  answer: string;
}

/**
 * The answer tokens `extract_answer` searches a generation for, in its pattern's order. SIQA, ARC
 * and OBQA share one pattern up to answer5, whatever the number of options.
 */
export const ANSWER_PATTERNS: Readonly<Record<CommonsenseDataset, readonly string[]>> = {
  boolq: ["true", "false"],
  piqa: ["solution1", "solution2"],
  social_i_qa: ["answer1", "answer2", "answer3", "answer4", "answer5"],
  "ARC-Challenge": ["answer1", "answer2", "answer3", "answer4", "answer5"],
  "ARC-Easy": ["answer1", "answer2", "answer3", "answer4", "answer5"],
  openbookqa: ["answer1", "answer2", "answer3", "answer4", "answer5"],
  hellaswag: ["ending1", "ending2", "ending3", "ending4"],
  winogrande: ["option1", "option2"],
};

/** The options a record usually offers, for when its instruction does not list them. */
const DEFAULT_CANDIDATES: Readonly<Record<CommonsenseDataset, readonly string[]>> = {
  ...ANSWER_PATTERNS,
  social_i_qa: ["answer1", "answer2", "answer3"],
  "ARC-Challenge": ["answer1", "answer2", "answer3", "answer4"],
  "ARC-Easy": ["answer1", "answer2", "answer3", "answer4"],
  openbookqa: ["answer1", "answer2", "answer3", "answer4"],
};

/** What every `output` says before the answer token. */
export const ANSWER_PREFIX = "the correct answer is ";

/** Throws naming the valid data sets unless `name` is one. */
function checkDataset(name: string): CommonsenseDataset {
  if (!(COMMONSENSE_DATASETS as readonly string[]).includes(name)) {
    throw new Error(
      `unknown commonsense data set "${name}"; expected one of ${COMMONSENSE_DATASETS.join(", ")}`,
    );
  }
  return name as CommonsenseDataset;
}

/**
 * The answer tokens a record offers, for log-likelihood scoring: read from its instruction's
 * "Answer format: a/b/c" line (ARC has questions with 3 and 5 options), else the data set's usual
 * options.
 *
 * @example
 * ```ts
 * import { answerCandidates } from "./commonsense.ts";
 * const record = { instruction: "…\n\nAnswer format: answer1/answer2/answer3", input: "",
 *   output: "the correct answer is answer2", answer: "answer2" };
 * console.log(answerCandidates("social_i_qa", record)); // ["answer1", "answer2", "answer3"]
 * ```
 */
export function answerCandidates(
  dataset: CommonsenseDataset,
  record?: CommonsenseRecord,
): string[] {
  checkDataset(dataset);
  const format = record?.instruction.match(
    /Answer format: ([A-Za-z0-9_]+(?:\/[A-Za-z0-9_]+)+)\s*$/,
  );
  return format ? format[1].split("/") : [...DEFAULT_CANDIDATES[dataset]];
}

/**
 * The continuations a log-likelihood evaluator scores after the evaluation prompt, one per answer
 * candidate, each written the way training targets are ("the correct answer is answer2").
 *
 * @example
 * ```ts
 * import { scoringContinuations } from "./commonsense.ts";
 * console.log(scoringContinuations("boolq")); // ["the correct answer is true", "the correct answer is false"]
 * ```
 */
export function scoringContinuations(
  dataset: CommonsenseDataset,
  record?: CommonsenseRecord,
): string[] {
  return answerCandidates(dataset, record).map((c) => ANSWER_PREFIX + c);
}

/** How the template lays out the text around the instruction, input and response. */
interface TemplateLayout {
  /** Spaces the source's f-string puts before every line after the first. */
  indent: string;
  /** What separates a section's text from the next heading (the source's blank line). */
  gap: string;
  /** Spaces after "completes the request." in the variant without / with an input. */
  trailingNoInput: string;
  trailingWithInput: string;
}

const PREAMBLE_NO_INPUT =
  "Below is an instruction that describes a task. Write a response that appropriately completes " +
  "the request.";
const PREAMBLE_WITH_INPUT =
  "Below is an instruction that describes a task, paired with an input that provides further " +
  "context. Write a response that appropriately completes the request.";

const SOURCE_INDENT = " ".repeat(16);

/** Prompt templates: how training text and evaluation prompts are written. */
export type PromptStyle = "llm-adapters" | "alpaca";

const LAYOUTS: Record<PromptStyle, { train: TemplateLayout; eval: TemplateLayout }> = {
  "llm-adapters": {
    // finetune.py: the blank lines inside the indented f-string keep their 16 spaces.
    train: {
      indent: SOURCE_INDENT,
      gap: `\n${SOURCE_INDENT}\n`,
      trailingNoInput: "  ",
      trailingWithInput: " ",
    },
    // commonsense_evaluate.py: truly empty blank lines, other trailing spaces.
    eval: { indent: SOURCE_INDENT, gap: "\n\n", trailingNoInput: " ", trailingWithInput: "" },
  },
  alpaca: {
    train: { indent: "", gap: "\n\n", trailingNoInput: "", trailingWithInput: "" },
    eval: { indent: "", gap: "\n\n", trailingNoInput: "", trailingWithInput: "" },
  },
};

/** Renders the template up to and including the response heading (and its indent). */
function renderPrompt(layout: TemplateLayout, instruction: string, input: string): string {
  const { indent: i, gap } = layout;
  const head = input
    ? `${PREAMBLE_WITH_INPUT}${layout.trailingWithInput}`
    : `${PREAMBLE_NO_INPUT}${layout.trailingNoInput}`;
  const inputSection = input ? `${i}### Input:\n${i}${input}${gap}` : "";
  return `${head}\n\n${i}### Instruction:\n${i}${instruction}${gap}${inputSection}` +
    `${i}### Response:\n${i}`;
}

/**
 * The training prompt of a record, without its output: LLM-Adapters' `finetune.py` template with an
 * empty output (what it tokenizes to mask the prompt when `train_on_inputs` is off).
 *
 * @example
 * ```ts
 * import { trainingPrompt } from "./commonsense.ts";
 * const p = trainingPrompt({ instruction: "Q?", input: "", output: "the correct answer is true",
 *   answer: "true" }, "alpaca");
 * console.log(JSON.stringify(p)); // "Below is … the request.\n\n### Instruction:\nQ?\n\n### Response:\n"
 * ```
 */
export function trainingPrompt(
  record: CommonsenseRecord,
  style: PromptStyle = "llm-adapters",
): string {
  return renderPrompt(LAYOUTS[style].train, record.instruction, record.input);
}

/**
 * The full training sequence of a record: {@link trainingPrompt} followed by its output. The loss
 * covers the whole sequence (LLM-Adapters' default `train_on_inputs=True`); the tokenizer appends
 * EOS.
 *
 * @example
 * ```ts
 * import { trainingText } from "./commonsense.ts";
 * const r = { instruction: "Q?", input: "", output: "the correct answer is true", answer: "true" };
 * console.log(trainingText(r).endsWith("### Response:\n                the correct answer is true")); // true
 * ```
 */
export function trainingText(
  record: CommonsenseRecord,
  style: PromptStyle = "llm-adapters",
): string {
  return trainingPrompt(record, style) + record.output;
}

/**
 * The prompt a model continues at evaluation: LLM-Adapters' `commonsense_evaluate.py` template.
 * (That script never passes the record's input; every record's input is empty, so both agree.)
 *
 * @example
 * ```ts
 * import { evaluationPrompt } from "./commonsense.ts";
 * const r = { instruction: "Q?", input: "", output: "the correct answer is true", answer: "true" };
 * console.log(evaluationPrompt(r).startsWith("Below is an instruction that describes a task.")); // true
 * ```
 */
export function evaluationPrompt(
  record: CommonsenseRecord,
  style: PromptStyle = "llm-adapters",
): string {
  return renderPrompt(LAYOUTS[style].eval, record.instruction, record.input);
}

/**
 * The response part of a decoded generation that may still contain the prompt: the text after the
 * last "### Response:", trimmed (as DoRA's evaluation splits it).
 *
 * @example
 * ```ts
 * import { responseText } from "./commonsense.ts";
 * console.log(responseText("… ### Response:\n   the correct answer is true ")); // "the correct answer is true"
 * ```
 */
export function responseText(decoded: string): string {
  const parts = decoded.split("### Response:");
  return parts[parts.length - 1].trim();
}

const PATTERN_REGEXES = new Map<CommonsenseDataset, RegExp>();

/**
 * The predicted answer token in a generated response: the first (leftmost) occurrence of any of the
 * data set's {@link ANSWER_PATTERNS}, case-sensitive and without word boundaries exactly like
 * `re.findall(r'answer1|…|answer5', text)[0]`; "" when nothing matches, which never equals an
 * answer and so counts as wrong.
 *
 * @example
 * ```ts
 * import { extractAnswer } from "./commonsense.ts";
 * console.log(extractAnswer("piqa", "solution2, not solution1")); // "solution2"
 * ```
 */
export function extractAnswer(dataset: CommonsenseDataset, generated: string): string {
  checkDataset(dataset);
  let regex = PATTERN_REGEXES.get(dataset);
  if (!regex) {
    regex = new RegExp(ANSWER_PATTERNS[dataset].join("|"));
    PATTERN_REGEXES.set(dataset, regex);
  }
  return generated.trim().match(regex)?.[0] ?? "";
}

/** Accuracy of a batch of generations, with each prediction for inspection. */
export interface CommonsenseScore {
  /** Extracted answer per record ("" where none was found). */
  predictions: string[];
  /** Number of records whose extracted answer equals `answer`. */
  correct: number;
  /** Number of records. */
  total: number;
  /** `correct / total`. */
  accuracy: number;
}

/**
 * Scores generated responses against records: accuracy = extracted answer == `answer`.
 *
 * @example
 * ```ts
 * import { scoreCommonsense } from "./commonsense.ts";
 * const r = { instruction: "Q?", input: "", output: "the correct answer is true", answer: "true" };
 * console.log(scoreCommonsense("boolq", [r, r], ["true", "no idea"]).accuracy); // 0.5
 * ```
 */
export function scoreCommonsense(
  dataset: CommonsenseDataset,
  records: readonly CommonsenseRecord[],
  generations: readonly string[],
): CommonsenseScore {
  if (records.length !== generations.length) {
    throw new Error(
      `scoreCommonsense(${dataset}): ${generations.length} generations for ${records.length} ` +
        `records; expected one per record`,
    );
  }
  if (records.length === 0) throw new Error(`scoreCommonsense(${dataset}): no records to score`);
  const predictions = generations.map((g) => extractAnswer(dataset, g));
  const correct = predictions.filter((p, i) => p === records[i].answer).length;
  return { predictions, correct, total: records.length, accuracy: correct / records.length };
}

const RecordSchema = z.object({
  instruction: z.string(),
  input: z.string(),
  output: z.string(),
  answer: z.string(),
});

/**
 * Reads and validates an LLM-Adapters JSON file (an array of records, e.g. `commonsense_170k.json`);
 * errors name the file, the record's index and the field.
 *
 * @example
 * ```ts
 * import { readCommonsenseFile } from "./commonsense.ts";
 * const records = await readCommonsenseFile("../shared/data/commonsense/piqa/test.json");
 * console.log(records.length); // 1838
 * ```
 */
export async function readCommonsenseFile(file: string): Promise<CommonsenseRecord[]> {
  let data: unknown;
  try {
    data = JSON.parse(await Deno.readTextFile(file));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${file}: file not found`);
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(data)) {
    throw new Error(`${file}: expected a JSON array of records, found ${typeof data}`);
  }
  return data.map((item, i) => {
    const parsed = RecordSchema.safeParse(item);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const field = issue.path.length > 0 ? `field "${issue.path.join(".")}": ` : "";
      throw new Error(
        `${file}: record ${i}: ${field}${issue.message}; expected { instruction, input, output, ` +
          `answer } strings`,
      );
    }
    return parsed.data;
  });
}

/**
 * Loads `{source}/{dataset}/{split}.json` (LLM-Adapters' `dataset/` layout).
 *
 * @example
 * ```ts
 * import { loadCommonsense } from "./commonsense.ts";
 * const test = await loadCommonsense("winogrande", "test", { source: "../shared/data/commonsense" });
 * console.log(test.length); // 1267
 * ```
 */
export async function loadCommonsense(
  dataset: CommonsenseDataset,
  split: "train" | "test",
  options: { source: string },
): Promise<CommonsenseRecord[]> {
  checkDataset(dataset);
  if (split !== "train" && split !== "test") {
    throw new Error(`commonsense split "${split}": expected "train" or "test"`);
  }
  return await readCommonsenseFile(join(options.source, dataset, `${split}.json`));
}
