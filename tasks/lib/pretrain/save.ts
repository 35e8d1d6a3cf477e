/**
 * The output of a pretraining run: a complete Hugging Face model folder (`model/`), so
 * `RobertaForMaskedLM.from_pretrained(...)` / `LlamaForCausalLM.from_pretrained(...)` open it and
 * our own `train --model run/model` fine-tunes it (the MLM head is dropped and a classifier added,
 * as transformers does).
 *
 * config.json is the base folder's, with `architectures` naming the LM class; model.safetensors
 * holds every parameter under its Hugging Face name (the tied decoder weight is not written, as
 * transformers' safetensors serialisation drops tied duplicates); the tokenizer files are copied.
 *
 * @module
 */
import { join } from "node:path";
import { writeSafetensors } from "../../../models/safetensors.ts";
import type { Module } from "../../../models/module.ts";
import type { ModelConfig } from "../../../models/config.ts";
import { toEntries } from "../../../methods/peft.ts";
import { copyTokenizerFiles } from "../output/model_folder.ts";

/** The transformers class that opens a pretrained model of this type. */
export function lmArchitecture(modelType: string): string {
  switch (modelType) {
    case "roberta":
      return "RobertaForMaskedLM";
    case "bert":
      return "BertForMaskedLM";
    case "llama":
      return "LlamaForCausalLM";
    case "mistral":
      return "MistralForCausalLM";
  }
  throw new Error(`no language-model architecture for model_type "${modelType}"`);
}

/**
 * Write `model` as a Hugging Face model folder into `dir` (which must not exist or be empty),
 * taking config.json from `baseDir` and the tokenizer files from `tokenizerDir`.
 */
export async function writePretrainedModel(
  dir: string,
  loaded: { model: Module; config: ModelConfig },
  baseDir: string,
  tokenizerDir: string = baseDir,
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const raw = JSON.parse(await Deno.readTextFile(join(baseDir, "config.json")));
  raw.architectures = [lmArchitecture(loaded.config.model_type)];
  raw.model_type = loaded.config.model_type;
  // Our f32 weights; from_pretrained casts to torch_dtype when it is set.
  raw.torch_dtype = "float32";
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(raw, null, 2) + "\n");
  const params = loaded.model.namedParameters();
  const seen = new Set<unknown>();
  const unique = params.filter(([, t]) => !seen.has(t) && seen.add(t));
  await writeSafetensors(join(dir, "model.safetensors"), await toEntries(unique), {
    format: "pt",
  });
  await copyTokenizerFiles(tokenizerDir, dir);
}
