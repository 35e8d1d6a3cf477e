/**
 * Library side of `deno task generate`: load a decoder folder and its tokenizer, generate.
 *
 * @module
 */
import { gpu, init } from "../../../ops/mod.ts";
import { generate } from "../../../models/generate.ts";
import { loadModel } from "../../../models/load.ts";
import { loadTokenizer } from "../../../models/tokenizer.ts";
import { loadAdapter } from "../../../methods/registry.ts";
import { modelReference, resolveModelDir } from "../hub/model_source.ts";

/** Options of {@link generateText}. */
export interface GenerateTextOptions {
  /** A Hugging Face model folder (config.json, model.safetensors, tokenizer.json) or repo id. */
  model: string;
  /**
   * An adapter folder applied before generating: a PEFT adapter (ours or PyTorch PEFT's) or one
   * of this toolkit's own formats. A run's `model/` is a complete model: pass it as `model`.
   */
  adapter?: string;
  /** Never touch the network (a repo id must be in the Hugging Face cache); default false. */
  offline?: boolean;
  /** Prompt text; empty means the BOS token alone. */
  prompt: string;
  /** Most tokens to generate (fewer when EOS comes first). */
  maxNewTokens: number;
  /** Sampling temperature; 0 (default) is greedy decoding. */
  temperature?: number;
  /** Nucleus sampling: keep the fewest tokens whose probability reaches topP; default 1. */
  topP?: number;
  /** Seed of the sampling generator; default 0. */
  seed?: number;
}

/** What {@link generateText} produced. */
export interface GenerateTextResult {
  /** The prompt as the tokenizer decodes it (special tokens skipped). */
  prompt: string;
  /** The decoded continuation. */
  text: string;
  /** The new token ids. */
  tokens: number[];
  /** New tokens per second of generation (model loading excluded). */
  tokensPerSecond: number;
  /** Name of the WebGPU adapter. */
  device: string;
}

/**
 * Generate a continuation of `prompt`. Stops at the tokenizer's EOS; for llama2.c-converted
 * tokenizers also at BOS, which is where llama2.c's own `run` stops (stories are BOS-separated).
 */
export async function generateText(options: GenerateTextOptions): Promise<GenerateTextResult> {
  await init();
  const dir = await resolveModelDir(options.model, options.offline ?? false);
  const tokenizer = await loadTokenizer(dir);
  const loaded = await loadModel(dir);
  if (loaded.kind !== "decoder") {
    loaded.model.dispose();
    throw new Error(
      `${options.model}: generation needs a decoder (LLaMA-family), got ${loaded.config.model_type}`,
    );
  }
  if (options.adapter) {
    try {
      const a = await loadAdapter(loaded.model, options.adapter, {
        lrMultipliers: {},
        weightDecay: 0,
        taskType: "CAUSAL_LM",
        baseModel: await modelReference(options.model),
        seed: 0,
      });
      // Merged weights generate faster than the adapted layers and give the same logits.
      a.merge();
    } catch (e) {
      loaded.model.dispose();
      throw e;
    }
  }
  const ids = tokenizer.encode(options.prompt).ids;
  const prompt = ids.length > 0 ? ids : tokenizer.bosId !== null ? [tokenizer.bosId] : [];
  if (prompt.length === 0) throw new Error("empty prompt and the tokenizer has no BOS token");
  const stopTokens = [tokenizer.eosId, tokenizer.kind === "llama2c" ? tokenizer.bosId : null]
    .filter((t): t is number => t !== null);
  const started = performance.now();
  const [tokens] = await generate(loaded.model, [prompt], {
    maxNewTokens: options.maxNewTokens,
    temperature: options.temperature ?? 0,
    topP: options.topP ?? 1,
    seed: options.seed ?? 0,
    stopTokens,
    padTokenId: tokenizer.padId ?? 0,
  });
  const seconds = (performance.now() - started) / 1000;
  const text = tokenizer.decode([...prompt, ...tokens], true);
  const promptText = tokenizer.decode(prompt, true);
  loaded.model.dispose();
  return {
    prompt: promptText,
    text: text.slice(promptText.length),
    tokens,
    tokensPerSecond: tokens.length / seconds,
    device: gpu().adapter.name,
  };
}
