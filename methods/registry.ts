/**
 * The method catalogue: every method by name. Switching methods is changing one word.
 *
 * @module
 */
import { full } from "./full.ts";
import { applyLora, lora, LoraConfigSchema } from "./lora.ts";
import type { Adapter, Method, MethodContext } from "./types.ts";
import type { Module } from "../models/module.ts";

/** rsLoRA: LoRA scaled by α/√r. */
const rslora: Method<ReturnType<typeof LoraConfigSchema.parse>> = {
  name: "rslora",
  config: LoraConfigSchema.extend({ rslora: LoraConfigSchema.shape.rslora.default(true) }),
  apply: (model, config, ctx) => applyLora(model, { ...config, rslora: true }, ctx, "rslora"),
};

/** Every registered method. */
export const METHODS: Readonly<Record<string, Method<never>>> = {
  full: full as Method<never>,
  lora: lora as Method<never>,
  rslora: rslora as Method<never>,
};

/** The method called `name`, or an error listing the available ones. */
export function getMethod(name: string): Method<unknown> {
  const m = METHODS[name];
  if (!m) {
    throw new Error(`unknown method "${name}"; available: ${Object.keys(METHODS).join(", ")}`);
  }
  return m as unknown as Method<unknown>;
}

/**
 * Parse `options` with the method's schema (errors name the method and field) and apply it.
 */
export function applyMethod(
  name: string,
  model: Module,
  options: Record<string, unknown>,
  ctx: MethodContext,
): Adapter {
  const method = getMethod(name);
  const parsed = method.config.safeParse(options);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) =>
      `${i.path.join(".") || "(options)"}: ${i.message}`
    );
    throw new Error(`method ${name}: invalid options — ${issues.join("; ")}`);
  }
  return method.apply(model, parsed.data, ctx);
}
