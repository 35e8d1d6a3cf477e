/**
 * `deno task convert --checkpoint stories260K.bin --tokenizer tok512.bin --output DIR`: convert a
 * llama2.c checkpoint and tokenizer into a Hugging Face LLaMA folder (models/llama2c.ts).
 *
 * @module
 */
import { parseFlags, requireFlags, runCli } from "./lib/cli/runner.ts";
import { writeDirAtomic } from "./lib/train/checkpoint.ts";
import { convertLlama2c, type ConvertLlama2cResult } from "../models/llama2c.ts";

const USAGE =
  "usage: deno task convert --checkpoint MODEL.bin --tokenizer TOKENIZER.bin --output DIR";

/** Parse the flags, convert, and return a one-line summary; throws UsageError on bad flags. */
export async function convertCli(args: readonly string[]): Promise<string> {
  const { values } = parseFlags(
    args,
    {
      checkpoint: { type: "string" },
      tokenizer: { type: "string" },
      output: { type: "string" },
      help: { type: "boolean", short: "h" },
    } as const,
    { command: "convert" },
  );
  if (values.help) return USAGE;
  requireFlags(values, ["checkpoint", "tokenizer", "output"], "convert");
  let result: ConvertLlama2cResult | undefined;
  // Into a temporary folder, renamed when complete: a failure or kill leaves no partial model.
  await writeDirAtomic(values.output!, async (tmp) => {
    result = await convertLlama2c({
      checkpoint: values.checkpoint!,
      tokenizer: values.tokenizer!,
      output: tmp,
    });
  }, "convert");
  if (!result) throw new Error("convert: the conversion returned nothing");
  const c = result.config;
  return `wrote ${values.output}: ${result.files.join(", ")} — LLaMA dim ${c.dim}, ` +
    `${c.nLayers} layers, ${c.nHeads}/${c.nKvHeads} heads, vocab ${c.vocabSize}, ` +
    `${result.parameters} parameters in ${result.tensors} tensors, ` +
    `${result.tied ? "tied" : "untied"} LM head`;
}

if (import.meta.main) {
  await runCli(async () => {
    console.log(await convertCli(Deno.args));
  });
}
