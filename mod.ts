/**
 * @ruc/peft — parameter-efficient fine-tuning and benchmarking on WebGPU, in Deno.
 *
 * The engine (`ops/`), models (`models/`), methods (`methods/`) and the library behind the
 * command-line tasks (`tasks/lib/`), re-exported.
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
export * from "./models/mod.ts";
export * from "./methods/mod.ts";
export * from "./tasks/lib/mod.ts";
