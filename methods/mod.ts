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
export * from "./lisa.ts";
export * from "./sift.ts";
export * from "./residual_lora.ts";
export * from "./pissa.ts";
export * from "./olora.ts";
export * from "./loraga.ts";
export * from "./loraplus.ts";
export * from "./dora.ts";
export * from "./vera.ts";
export * from "./ia3.ts";
export * from "./bitfit.ts";
export * from "./adalora.ts";
export * from "./eva.ts";
export * from "./galore.ts";
export * from "./signs.ts";
export * from "./peft_config.ts";
