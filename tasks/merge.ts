/**
 * `deno task merge --model BASE --adapter DIR --output DIR` — fold an adapter (ours or PEFT's)
 * into the base weights and write a full Hugging Face checkpoint.
 *
 * @module
 */
import { parseFlags, requireFlags, runCli } from "./lib/cli/runner.ts";
import { mergeAdapter } from "./lib/output/merge.ts";

const USAGE = "usage: deno task merge --model BASE --adapter DIR --output DIR [--offline]";

const FLAGS = {
  model: { type: "string" },
  adapter: { type: "string" },
  output: { type: "string" },
  offline: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

/** Run `deno task merge` with these arguments; returns the exit code (errors throw). */
export async function mergeCli(args: readonly string[]): Promise<number> {
  const { values } = parseFlags(args, FLAGS, { command: "merge" });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  requireFlags(values, ["model", "adapter", "output"], "merge");
  const n = await mergeAdapter(values.model!, values.adapter!, values.output!, values.offline);
  console.log(`wrote ${values.output}: ${n} tensors (adapter merged)`);
  return 0;
}

if (import.meta.main) await runCli(() => mergeCli(Deno.args));
