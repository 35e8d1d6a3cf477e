/**
 * LoRA's options as a zod object, for the methods that extend them (PiSSA, LoRA-GA, LoRA+,
 * rsLoRA). Not part of the public API, which names {@link ConfigSchema} instead of zod's types;
 * `LoraConfigSchema` in lora.ts is this object seen through that interface.
 *
 * @module
 */
import { z } from "zod";
import type { ConfigSchema } from "./types.ts";
import type { LoraConfig } from "./lora.ts";

/** LoRA's options, with PEFT's defaults. */
export const loraOptions = z.object({
  /** Rank r of the update. */
  r: z.number().int().positive().default(8),
  /** α: the update is scaled by α/r (or α/√r with rsLoRA). */
  alpha: z.number().positive().default(8),
  /** Dropout on the adapter's input. */
  dropout: z.number().min(0).lt(1).default(0),
  /** rsLoRA: scale by α/√r, which keeps the update's magnitude stable as r grows. */
  rslora: z.boolean().default(false),
  /** Per-module rank by module pattern (PEFT's rank_pattern), e.g. { "layer.0.attention.self.query": 16 }. */
  rankPattern: z.record(z.string(), z.number().int().positive()).default({}),
  /** Per-module α by module pattern (PEFT's alpha_pattern). */
  alphaPattern: z.record(z.string(), z.number().positive()).default({}),
  /** A trainable bias on lora_B (PEFT's lora_bias). */
  loraBias: z.boolean().default(false),
}).strict() satisfies ConfigSchema<LoraConfig>;
