/**
 * `deno task generate --model DIR --prompt TEXT --max-new-tokens N --temperature T`
 *
 * Continue a prompt with a LLaMA-family model folder (Hugging Face layout). Temperature 0 is
 * greedy decoding. Prints the prompt and its continuation.
 *
 * @module
 */
import { parseFlags, parseNumberFlag, requireFlags, runCli } from "./lib/cli/runner.ts";
import { generateText } from "./lib/eval/generate.ts";

const USAGE = `usage: deno task generate --model DIR [--prompt TEXT] [--max-new-tokens N]
                          [--temperature T] [--top-p P] [--seed S]`;

const FLAGS = {
  model: { type: "string" },
  prompt: { type: "string" },
  "max-new-tokens": { type: "string" },
  temperature: { type: "string" },
  "top-p": { type: "string" },
  seed: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** Run `deno task generate` with these arguments; returns the exit code (errors throw). */
export async function generateCli(args: readonly string[]): Promise<number> {
  const { values } = parseFlags(args, FLAGS, { command: "generate" });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  requireFlags(values, ["model"], "generate");
  const result = await generateText({
    model: values.model!,
    prompt: values.prompt ?? "",
    maxNewTokens: parseNumberFlag("max-new-tokens", values["max-new-tokens"] ?? "200", {
      integer: true,
      min: 1,
    }),
    temperature: parseNumberFlag("temperature", values.temperature ?? "0", { min: 0 }),
    // A nucleus is a probability mass: (0, 1].
    topP: parseNumberFlag("top-p", values["top-p"] ?? "1", { min: 0, minExclusive: true, max: 1 }),
    seed: parseNumberFlag("seed", values.seed ?? "0", { integer: true, min: 0 }),
  });
  console.log(result.prompt + result.text);
  console.error(
    `\n[${result.tokens.length} tokens, ${
      result.tokensPerSecond.toFixed(1)
    } tokens/s on ${result.device}]`,
  );
  return 0;
}

if (import.meta.main) await runCli(() => generateCli(Deno.args));
