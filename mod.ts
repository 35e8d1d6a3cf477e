/**
 * @ruc/peft — parameter-efficient fine-tuning and benchmarking on WebGPU, in Deno.
 *
 * @example
 * ```ts
 * import { init, tensor } from "@ruc/peft";
 * await init();
 * console.log(await tensor([1, 2, 3]).toArray());
 * ```
 *
 * @module
 */
export * from "./ops/mod.ts";
