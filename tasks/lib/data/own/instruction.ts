/**
 * Instruction tuning on a user's own records for decoders: Alpaca (instruction / input / output),
 * ShareGPT (`conversations` of { from, value }), OpenAI-style `messages` ({ role, content }) or
 * plain `text`. A record becomes a conversation, the conversation becomes text through the model's
 * chat template (or, without one, the Alpaca prompt), and the loss covers the assistant's replies
 * only (plain text trains on every token).
 *
 * Masking rule (as Alpaca-LoRA / LLM-Adapters with `train_on_inputs=False`, turn by turn): the
 * full text is tokenised once; the tokens of a reply are those after the tokenisation of the text
 * before the reply and up to the tokenisation of the text through its end. With special tokens
 * around the turns (ChatML, Llama 3) these boundaries are exact.
 *
 * @module
 */
import type { Tokenizer } from "../../../../models/tokenizer.ts";
import type { Encoded } from "../pipeline.ts";
import type { ChatMessage, ChatTemplate } from "./chat_template.ts";
import { DataFileError, type DataTable } from "./readers.ts";

/** The instruction formats. */
export const INSTRUCTION_FORMATS = ["alpaca", "sharegpt", "messages", "text"] as const;

/** One of {@link INSTRUCTION_FORMATS}. */
export type InstructionFormat = typeof INSTRUCTION_FORMATS[number];

/** A record as a conversation (plain text: one unmasked piece in `text`). */
export type Conversation =
  | { kind: "chat"; messages: ChatMessage[]; input?: string }
  | { kind: "text"; text: string };

/**
 * The format a table's columns suggest: `messages`, `conversations` (ShareGPT), instruction +
 * output (Alpaca), or null (not instruction data).
 */
export function detectFormat(columns: readonly string[]): InstructionFormat | null {
  if (columns.includes("messages")) return "messages";
  if (columns.includes("conversations")) return "sharegpt";
  if (columns.includes("instruction") && columns.includes("output")) return "alpaca";
  return null;
}

const SHAREGPT_ROLES: Record<string, ChatMessage["role"]> = {
  human: "user",
  user: "user",
  gpt: "assistant",
  assistant: "assistant",
  model: "assistant",
  system: "system",
};

/** The conversation of row `i` of `t` in `format`; errors name file, line and column. */
export function conversationOf(
  t: DataTable,
  i: number,
  format: InstructionFormat,
  textColumn = "text",
): Conversation {
  const row = t.rows[i];
  const fail = (column: string, problem: string): never => {
    throw new DataFileError(t.fileOf(i), problem, t.where(i), column);
  };
  const str = (column: string, required: boolean): string | undefined => {
    const v = row[column];
    if (v === undefined || v === null) {
      return required ? fail(column, `missing; ${format} records need "${column}"`) : undefined;
    }
    if (typeof v !== "string") return fail(column, `expected a string, found ${typeof v}`);
    return v;
  };
  if (format === "text") return { kind: "text", text: str(textColumn, true)! };
  if (format === "alpaca") {
    const instruction = str("instruction", true)!;
    const input = str("input", false) ?? "";
    const output = str("output", true)!;
    const system = str("system", false);
    const messages: ChatMessage[] = system ? [{ role: "system", content: system }] : [];
    const history = row.history;
    if (history !== undefined && history !== null) {
      if (!Array.isArray(history)) fail("history", "expected a list of [instruction, response]");
      (history as unknown[]).forEach((pair, k) => {
        if (
          !Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== "string" ||
          typeof pair[1] !== "string"
        ) fail("history", `entry ${k}: expected [instruction, response] strings`);
        const [u, a] = pair as [string, string];
        messages.push({ role: "user", content: u }, { role: "assistant", content: a });
      });
    }
    // Chat templates see the input after the instruction (LLaMA-Factory joins them with "\n");
    // the Alpaca prompt gives it its own "### Input:" section.
    messages.push(
      { role: "user", content: input ? `${instruction}\n${input}` : instruction },
      { role: "assistant", content: output },
    );
    return input ? { kind: "chat", messages, input } : { kind: "chat", messages };
  }
  const column = format === "sharegpt" ? "conversations" : "messages";
  const list = row[column];
  if (!Array.isArray(list)) fail(column, "expected a list of turns");
  const messages: ChatMessage[] = [];
  const system = format === "sharegpt" ? str("system", false) : undefined;
  if (system) messages.push({ role: "system", content: system });
  (list as unknown[]).forEach((turn, k) => {
    if (!turn || typeof turn !== "object") fail(column, `turn ${k}: expected an object`);
    const o = turn as Record<string, unknown>;
    const [roleKey, textKey] = format === "sharegpt" ? ["from", "value"] : ["role", "content"];
    const role = format === "sharegpt"
      ? SHAREGPT_ROLES[String(o[roleKey])]
      : (["system", "user", "assistant"].includes(String(o[roleKey]))
        ? o[roleKey] as ChatMessage["role"]
        : undefined);
    if (!role) {
      fail(
        column,
        `turn ${k}: ${roleKey} ${JSON.stringify(o[roleKey])}; expected ${
          format === "sharegpt" ? "human, gpt or system" : "system, user or assistant"
        }`,
      );
    }
    if (typeof o[textKey] !== "string") fail(column, `turn ${k}: "${textKey}" must be a string`);
    messages.push({ role: role!, content: o[textKey] as string });
  });
  if (!messages.some((m) => m.role === "assistant")) {
    fail(column, "no assistant turn; there is nothing to learn from this record");
  }
  if (messages[messages.length - 1].role !== "assistant") {
    fail(column, "the last turn must be the assistant's (its reply is what trains)");
  }
  return { kind: "chat", messages };
}

/** A piece of the rendered text and whether its tokens train. */
export interface Segment {
  /** The text. */
  text: string;
  /** True for an assistant reply (or plain text). */
  train: boolean;
}

const ALPACA_PREAMBLE =
  "Below is an instruction that describes a task. Write a response that appropriately completes " +
  "the request.";
const ALPACA_PREAMBLE_INPUT =
  "Below is an instruction that describes a task, paired with an input that provides further " +
  "context. Write a response that appropriately completes the request.";

/**
 * The text pieces of a conversation. With a chat template: the difference between renderings of
 * ever longer prefixes (a reply is what `messages[..k+1]` adds to `messages[..k]` with the
 * generation prompt). Without one: the Alpaca prompt (the system turn, if any, replaces its
 * preamble), each reply followed by the EOS token's text.
 */
export function segments(
  c: Conversation,
  template: ChatTemplate | null,
  eosText: string,
): Segment[] {
  if (c.kind === "text") return [{ text: c.text, train: true }];
  const out: Segment[] = [];
  const m = c.messages;
  if (template) {
    let done = "";
    for (let k = 0; k < m.length; k++) {
      if (m[k].role !== "assistant") continue;
      const prompt = template.render(m.slice(0, k), true);
      const full = template.render(m.slice(0, k + 1), false);
      if (!prompt.startsWith(done) || !full.startsWith(prompt)) {
        throw new Error(
          `${template.source}: the chat template does not render a conversation as a prefix of ` +
            "the same conversation with one more turn; cannot tell replies from prompts",
        );
      }
      if (prompt.length > done.length) out.push({ text: prompt.slice(done.length), train: false });
      out.push({ text: full.slice(prompt.length), train: true });
      done = full;
    }
    const whole = template.render(m, false);
    if (whole.length > done.length && whole.startsWith(done)) {
      out.push({ text: whole.slice(done.length), train: false });
    }
    return out;
  }
  const system = m[0]?.role === "system" ? m[0].content : undefined;
  const turns = system === undefined ? m : m.slice(1);
  let first = true;
  for (let k = 0; k < turns.length; k++) {
    const t = turns[k];
    if (t.role === "assistant") {
      out.push({ text: t.content + eosText, train: true });
      continue;
    }
    // The Alpaca record's input has its own section; its user turn is the bare instruction then.
    const isLast = turns.slice(k + 1).every((u) => u.role === "assistant");
    const input = isLast && c.input ? c.input : "";
    const instruction = input ? t.content.slice(0, t.content.length - input.length - 1) : t.content;
    const head = first
      ? `${system ?? (input ? ALPACA_PREAMBLE_INPUT : ALPACA_PREAMBLE)}\n\n`
      : "\n\n";
    const inputSection = input ? `### Input:\n${input}\n\n` : "";
    out.push({
      text: `${head}### Instruction:\n${instruction}\n\n${inputSection}### Response:\n`,
      train: false,
    });
    first = false;
  }
  return out;
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

type Splitter = { byText: Map<string, number>; pattern: RegExp } | null;
// Built once per tokenizer: Llama 3 has 256 special tokens, and every boundary re-encodes.
const SPLITTERS = new WeakMap<Tokenizer, Splitter>();

/** The special-token strings of a tokenizer (longest first, so `<|a|>` wins over `<|`). */
function splitterOf(tokenizer: Tokenizer): Splitter {
  if (SPLITTERS.has(tokenizer)) return SPLITTERS.get(tokenizer)!;
  const specials = [...tokenizer.specialIds]
    .map((id) => [tokenizer.idToToken(id), id] as const)
    .filter((e): e is readonly [string, number] => typeof e[0] === "string" && e[0].length > 0)
    .sort((a, b) => b[0].length - a[0].length);
  const split = specials.length
    ? {
      byText: new Map(specials),
      pattern: new RegExp(`(${specials.map(([s]) => escapeRegex(s)).join("|")})`),
    }
    : null;
  SPLITTERS.set(tokenizer, split);
  return split;
}

/**
 * Token ids of text that may contain special-token strings (`<s>`, `<|im_end|>`): those become
 * their ids, the text between them is tokenised without special tokens (as Hugging Face splits
 * added tokens out before the model runs).
 */
export function encodeWithSpecials(tokenizer: Tokenizer, text: string): number[] {
  const split = splitterOf(tokenizer);
  if (!split) return tokenizer.tokenize(text);
  const { byText, pattern } = split;
  const ids: number[] = [];
  for (const part of text.split(pattern)) {
    if (!part) continue;
    const id = byText.get(part);
    if (id !== undefined) ids.push(id);
    else ids.push(...tokenizer.tokenize(part));
  }
  return ids;
}

/** What encoding a set of instruction records produced. */
export interface EncodedInstructions {
  /** Examples with at least one trained token. */
  examples: Encoded[];
  /** Records dropped because truncation to `maxLength` left no reply token. */
  dropped: number;
}

/**
 * Tokenise conversations for causal-LM training with reply-only loss. BOS is prepended when the
 * tokenizer has one and the template did not write it; sequences are cut to `maxLength`.
 */
export function encodeInstructions(
  tokenizer: Tokenizer,
  conversations: readonly Conversation[],
  template: ChatTemplate | null,
  maxLength: number,
): EncodedInstructions {
  const bosText = tokenizer.bosId === null ? "" : tokenizer.idToToken(tokenizer.bosId) ?? "";
  const eosText = tokenizer.eosId === null ? "" : tokenizer.idToToken(tokenizer.eosId) ?? "";
  const examples: Encoded[] = [];
  let dropped = 0;
  for (const c of conversations) {
    const segs = segments(c, template, eosText);
    let text = segs.map((s) => s.text).join("");
    let offset = 0;
    if (bosText && !text.startsWith(bosText)) {
      text = bosText + text;
      offset = bosText.length;
    }
    const ids = encodeWithSpecials(tokenizer, text);
    const mask = new Uint8Array(ids.length);
    let pos = offset;
    // Token boundaries of each segment from the tokenisation of the text before it.
    const boundary = (chars: number) =>
      chars >= text.length
        ? ids.length
        : encodeWithSpecials(tokenizer, text.slice(0, chars)).length;
    for (const s of segs) {
      const start = boundary(pos);
      pos += s.text.length;
      if (s.train) mask.fill(1, start, boundary(pos));
    }
    const n = Math.min(ids.length, maxLength);
    const cut = mask.subarray(0, n);
    const firstTrained = cut.indexOf(1);
    if (firstTrained < 0) {
      dropped++;
      continue;
    }
    const multi = cut.subarray(firstTrained).includes(0);
    examples.push({
      ids: Int32Array.from(ids.slice(0, n)),
      label: 0,
      promptTokens: firstTrained,
      ...(multi ? { lossMask: Uint8Array.from(cut) } : {}),
    });
  }
  return { examples, dropped };
}

/** Every row of a table as a conversation. */
export function conversations(
  t: DataTable,
  format: InstructionFormat,
  textColumn?: string,
): Conversation[] {
  if (format === "text" && !t.columns.includes(textColumn ?? "text")) {
    throw new DataFileError(
      t.file,
      `no such column (--text-column); the file has ${t.columns.join(", ")}`,
      undefined,
      textColumn ?? "text",
    );
  }
  return t.rows.map((_, i) => conversationOf(t, i, format, textColumn));
}
