/**
 * `deno task generate --model DIR|REPO [--adapter DIR] --prompt TEXT --max-new-tokens N --temperature T`
 *
 * Continue a prompt with a LLaMA-family model (a Hugging Face folder or repo id), optionally with
 * an adapter folder applied. Temperature 0 is greedy decoding. Prints the prompt and its
 * continuation.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { generateText } from "./lib/eval/generate.ts";

const USAGE = `usage: deno task generate --model DIR|REPO [--adapter DIR] [--prompt TEXT]
                          [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S] [--offline]`;

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      adapter: { type: "string" },
      offline: { type: "boolean" },
      prompt: { type: "string", default: "" },
      "max-new-tokens": { type: "string", default: "200" },
      temperature: { type: "string", default: "0" },
      "top-p": { type: "string", default: "1" },
      seed: { type: "string", default: "0" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help || !values.model) {
    console.log(USAGE);
    Deno.exit(values.help ? 0 : 2);
  }
  const number = (flag: string, text: string, integer: boolean): number => {
    const v = Number(text);
    if (!Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < 0) {
      console.error(
        `--${flag}: expected a ${integer ? "non-negative integer" : "number ≥ 0"}, got "${text}"`,
      );
      Deno.exit(2);
    }
    return v;
  };
  try {
    const result = await generateText({
      model: values.model,
      adapter: values.adapter,
      offline: values.offline,
      prompt: values.prompt,
      maxNewTokens: number("max-new-tokens", values["max-new-tokens"], true),
      temperature: number("temperature", values.temperature, false),
      topP: number("top-p", values["top-p"], false),
      seed: number("seed", values.seed, true),
    });
    console.log(result.prompt + result.text);
    console.error(
      `\n[${result.tokens.length} tokens, ${
        result.tokensPerSecond.toFixed(1)
      } tokens/s on ${result.device}]`,
    );
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
