/**
 * Models: safetensors I/O, Hugging Face config schemas, and (appended by their modules) the
 * tokenizer wrapper, the RoBERTa/BERT encoder and the LLaMA decoder.
 *
 * @example
 * ```ts
 * import { loadConfig } from "./mod.ts";
 * const config = await loadConfig("../shared/data/tokenizers/roberta-base");
 * console.log(config.model_type, config.hidden_size); // roberta 768
 * ```
 *
 * @module
 */
export * from "./safetensors.ts";
export * from "./config.ts";
export * from "./tokenizer.ts";
export * from "./llama2c.ts";
export * from "./module.ts";
export * from "./weights.ts";
export * from "./context.ts";
export * from "./encoder.ts";
export * from "./llama.ts";
export * from "./generate.ts";
export * from "./load.ts";
export * from "./validate.ts";
