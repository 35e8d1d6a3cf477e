/**
 * A model's chat template: the Jinja `chat_template` of its tokenizer_config.json, rendered with
 * Hugging Face's own JavaScript Jinja (`@huggingface/jinja`, what transformers.js uses), with the
 * variables `apply_chat_template` passes: `messages`, `add_generation_prompt`, `bos_token`,
 * `eos_token` (and the other special-token strings of the config).
 *
 * @example
 * ```ts
 * import { ChatTemplate } from "./chat_template.ts";
 * const t = new ChatTemplate(
 *   "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}" +
 *     "{% if add_generation_prompt %}<|assistant|>{% endif %}",
 *   {},
 *   "inline",
 * );
 * console.log(t.render([{ role: "user", content: "hi" }], true)); // <|user|>hi<|assistant|>
 * ```
 *
 * @module
 */
import { join } from "node:path";
import { Template } from "@huggingface/jinja";

/** One turn of a conversation, as chat templates read it. */
export interface ChatMessage {
  /** "system", "user" or "assistant". */
  role: "system" | "user" | "assistant";
  /** The turn's text. */
  content: string;
}

/** A compiled chat template with the special-token strings it may refer to. */
export class ChatTemplate {
  readonly #template: Template;
  /** Variables besides the messages: bos_token, eos_token, … (strings). */
  readonly tokens: Readonly<Record<string, string>>;
  /** Where the template came from (for errors). */
  readonly source: string;

  /** Compile `template`; a syntax error names `source`. */
  constructor(template: string, tokens: Record<string, string>, source: string) {
    try {
      this.#template = new Template(template);
    } catch (e) {
      throw new Error(`${source}: chat_template is not valid Jinja (${(e as Error).message})`);
    }
    this.tokens = tokens;
    this.source = source;
  }

  /** The text of `messages`; with `addGenerationPrompt`, followed by the assistant's header. */
  render(messages: readonly ChatMessage[], addGenerationPrompt: boolean): string {
    try {
      return this.#template.render({
        ...this.tokens,
        messages: messages.map((m) => ({ role: m.role, content: m.content })),
        add_generation_prompt: addGenerationPrompt,
      });
    } catch (e) {
      throw new Error(`${this.source}: chat_template failed to render (${(e as Error).message})`);
    }
  }
}

function tokenText(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  return null;
}

/**
 * The chat template of a model folder's tokenizer_config.json, or null when it has none. A list of
 * named templates (`[{ name, template }]`) gives the one named "default".
 */
export async function loadChatTemplate(modelDir: string): Promise<ChatTemplate | null> {
  const file = join(modelDir, "tokenizer_config.json");
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(await Deno.readTextFile(file));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`);
  }
  let template = config.chat_template;
  if (Array.isArray(template)) {
    const named = template.find((t) => t && (t as { name?: unknown }).name === "default");
    template = named ? (named as { template?: unknown }).template : undefined;
    if (template === undefined) {
      throw new Error(`${file}: chat_template is a list without a template named "default"`);
    }
  }
  if (template === undefined || template === null) return null;
  if (typeof template !== "string") {
    throw new Error(`${file}: chat_template must be a string (a Jinja template)`);
  }
  const tokens: Record<string, string> = {};
  for (
    const key of ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token"]
  ) {
    const t = tokenText(config[key]);
    if (t !== null) tokens[key] = t;
  }
  return new ChatTemplate(template, tokens, file);
}
