/**
 * The method catalogue: one file per method, each an Adapter over named Linear layers.
 *
 * @module
 */
export * from "./types.ts";
export * from "./groups.ts";
export * from "./peft.ts";
export * from "./full.ts";
export * from "./lora.ts";
export * from "./registry.ts";
