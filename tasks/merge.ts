/**
 * `deno task merge --model BASE --adapter DIR --output DIR` — fold any method's output (a PEFT
 * adapter, ours or PyTorch PEFT's; a full/GaLore/LISA/SIFT output; a run folder) into the base
 * weights and write a complete Hugging Face model folder.
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
    const r = await mergeAdapter(values.model, values.adapter, values.output, values.offline);
    const what = r.kind === "adapter"
      ? `${r.source} merged`
      : `${r.source} was a full model already`;
    console.log(`wrote ${values.output}: ${r.tensors} tensors (${what})`);
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
