/**
 * The method catalogue: every method by name. Switching methods is changing one word.
 *
 * @module
 */
import { fullFineTuning } from "./full.ts";
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
  full: fullFineTuning as Method<never>,
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

/** PEFT's peft_type → our method name and options (for adapters written by PEFT or by us). */
function methodFromPeftConfig(config: Record<string, unknown>, file: string): { method: string; options: Record<string, unknown> } {
  const type = config.peft_type;
  if (type === "LORA") {
    if (config.use_dora) throw new Error(`${file}: DoRA adapters (use_dora) are not supported yet`);
    return {
      method: config.use_rslora ? "rslora" : "lora",
      options: {
        r: config.r,
        alpha: config.lora_alpha,
        dropout: config.lora_dropout ?? 0,
        rslora: config.use_rslora === true,
      },
    };
  }
  throw new Error(`${file}: peft_type ${String(type)} is not supported yet; supported: LORA`);
}

/**
 * Apply the adapter stored in `dir` (adapter_config.json + adapter_model.safetensors, written by
 * this toolkit or by Hugging Face PEFT) to `model` and load its weights.
 */
export async function loadAdapter(
  model: Module,
  dir: string,
  ctx: Omit<MethodContext, "targets" | "headModules"> & { headModules?: string[] },
): Promise<Adapter> {
  const file = `${dir}/adapter_config.json`;
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(await Deno.readTextFile(file));
  } catch (e) {
    throw new Error(`${file}: cannot read the adapter config (${e instanceof Error ? e.message : e})`);
  }
  const { method, options } = methodFromPeftConfig(config, file);
  const targets = config.target_modules;
  if (!Array.isArray(targets) || !targets.every((t) => typeof t === "string")) {
    throw new Error(`${file}: target_modules must be a list of module names (regex strings are not supported)`);
  }
  const saved = Array.isArray(config.modules_to_save) ? config.modules_to_save.map(String) : [];
  const adapter = applyMethod(method, model, options, {
    ...ctx,
    targets,
    headModules: ctx.headModules ?? saved,
  });
  await adapter.load(dir);
  return adapter;
}
