/**
 * `deno task convert --checkpoint stories260K.bin --tokenizer tok512.bin --output DIR`: convert a
 * llama2.c checkpoint and tokenizer into a Hugging Face LLaMA folder (models/llama2c.ts).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { convertLlama2c, type ConvertLlama2cResult } from "../models/llama2c.ts";

const USAGE =
  "usage: deno task convert --checkpoint MODEL.bin --tokenizer TOKENIZER.bin --output DIR";

/** Parse the flags, convert, and return a one-line summary; throws with a usage hint on bad flags. */
export async function convertCli(args: readonly string[]): Promise<string> {
  let values: { checkpoint?: string; tokenizer?: string; output?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: [...args],
      options: {
        checkpoint: { type: "string" },
        tokenizer: { type: "string" },
        output: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new Error(`${e instanceof Error ? e.message : e}\n${USAGE}`);
  }
  if (values.help) return USAGE;
  const missing = (["checkpoint", "tokenizer", "output"] as const).filter((k) => !values[k]);
  if (missing.length > 0) {
    throw new Error(`missing ${missing.map((k) => `--${k}`).join(", ")}\n${USAGE}`);
  }
  const result: ConvertLlama2cResult = await convertLlama2c({
    checkpoint: values.checkpoint!,
    tokenizer: values.tokenizer!,
    output: values.output!,
  });
  const c = result.config;
  return `wrote ${values.output}: ${result.files.join(", ")} — LLaMA dim ${c.dim}, ` +
    `${c.nLayers} layers, ${c.nHeads}/${c.nKvHeads} heads, vocab ${c.vocabSize}, ` +
    `${result.parameters} parameters in ${result.tensors} tensors, ` +
    `${result.tied ? "tied" : "untied"} LM head`;
}

if (import.meta.main) {
  try {
    console.log(await convertCli(Deno.args));
  } catch (e) {
    console.error(`convert: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
