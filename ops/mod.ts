/**
 * The engine: WebGPU device, tensors, memory pool, autograd tape and WGSL kernels.
 *
 * `ops/` imports nothing from npm, so the engine, its tests and `deno bench` run with Deno alone.
 *
 * @example
 * ```ts
 * import { add, init, tensor } from "./mod.ts";
 * await init();
 * const y = add(tensor([1, 2]), tensor([3, 4]));
 * console.log(await y.toArray()); // [4, 6]
 * ```
 *
 * @module
 */
export * from "./device.ts";
export * from "./memory.ts";
export * from "./runtime.ts";
export * from "./tensor.ts";
export * from "./autograd.ts";
export * from "./random.ts";
export * from "./elementwise.ts";
export * from "./reduce.ts";
export * from "./shape.ts";
export * from "./optim.ts";
export * from "./attention.ts";
export * from "./softmax.ts";
export * from "./norm.ts";
export * from "./loss.ts";
export * from "./indexing.ts";
export * from "./dropout.ts";
export * from "./rope.ts";
export * from "./variants.ts";
export * from "./matmul.ts";
export * from "./linalg.ts";
