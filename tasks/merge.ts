/**
 * `deno task merge --model BASE --adapter DIR --output DIR` — fold an adapter (ours or PEFT's)
 * into the base weights and write a full Hugging Face checkpoint.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { mergeAdapter } from "./lib/output/merge.ts";

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      adapter: { type: "string" },
      output: { type: "string" },
      offline: { type: "boolean" },
      help: { type: "boolean" },
    },
  });
  if (values.help || !values.model || !values.adapter || !values.output) {
    console.log("usage: deno task merge --model BASE --adapter DIR --output DIR [--offline]");
    Deno.exit(values.help ? 0 : 2);
  }
  try {
    const n = await mergeAdapter(values.model, values.adapter, values.output, values.offline);
    console.log(`wrote ${values.output}: ${n} tensors (adapter merged)`);
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
