/**
 * The method catalogue: every method by name. Switching methods is changing one word.
 *
 * @module
 */
import { fullFineTuning } from "./full.ts";
import { adalora } from "./adalora.ts";
import { eva } from "./eva.ts";
import { pissa } from "./pissa.ts";
import { olora } from "./olora.ts";
import { loraGa } from "./loraga.ts";
import { residualMethodFromPeft } from "./residual_lora.ts";
import { galore, GALORE_WEIGHTS } from "./galore.ts";
import { lisa, LISA_WEIGHTS } from "./lisa.ts";
import { sift, SIFT_WEIGHTS } from "./sift.ts";
import { namedTrainable } from "./groups.ts";
import { join } from "node:path";
import { assertFiniteWeights } from "../models/validate.ts";
import { loraPlus } from "./loraplus.ts";
import { dora } from "./dora.ts";
import { vera } from "./vera.ts";
import { ia3 } from "./ia3.ts";
import { bitFit } from "./bitfit.ts";
import { applyLora, architectureOf, lora, LoraConfigSchema } from "./lora.ts";
import type { Adapter, Method, MethodContext } from "./types.ts";
import type { Module } from "../models/module.ts";
import { ADAPTER_WEIGHTS, auditAdapterReads, loadTrainedBiases, PEFT_PREFIX } from "./peft.ts";
import {
  checkPeftConfigFields,
  patternFromConfig,
  resolveFeedforward,
  resolveTargetModules,
  targetingFromConfig,
} from "./peft_config.ts";

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
  adalora: adalora as Method<never>,
  eva: eva as Method<never>,
  pissa: pissa as Method<never>,
  olora: olora as Method<never>,
  loraga: loraGa as Method<never>,
  galore: galore as Method<never>,
  lisa: lisa as Method<never>,
  sift: sift as Method<never>,
  loraplus: loraPlus as Method<never>,
  dora: dora as Method<never>,
  vera: vera as Method<never>,
  ia3: ia3 as Method<never>,
  bitfit: bitFit as Method<never>,
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
function methodFromPeftConfig(
  config: Record<string, unknown>,
  file: string,
): { method: string; options: Record<string, unknown> } {
  const type = config.peft_type;
  checkPeftConfigFields(config, file);
  if (type === "LORA" && config.init_lora_weights === "eva") {
    // EVA's loader reads rank_pattern / alpha_pattern itself (its ranks come from the tensors).
    const options = {
      r: config.r,
      alpha: config.lora_alpha,
      dropout: config.lora_dropout ?? 0,
      rslora: config.use_rslora === true,
    };
    return { method: "eva", options };
  }
  if (type === "ADALORA") {
    const options = {
      targetR: config.target_r,
      initR: config.init_r,
      tinit: config.tinit,
      tfinal: config.tfinal,
      deltaT: config.deltaT,
      beta1: config.beta1,
      beta2: config.beta2,
      orthRegWeight: config.orth_reg_weight,
      totalSteps: config.total_step ?? undefined,
      alpha: config.lora_alpha,
      dropout: config.lora_dropout ?? 0,
    };
    return { method: "adalora", options };
  }
  if (type === "LORA") {
    const rankPattern = patternFromConfig(config, "rank_pattern", file);
    const alphaPattern = patternFromConfig(config, "alpha_pattern", file);
    const residual = residualMethodFromPeft(config);
    if (residual) {
      const field = Object.keys(rankPattern).length
        ? "rank_pattern"
        : Object.keys(alphaPattern).length
        ? "alpha_pattern"
        : config.lora_bias === true
        ? "lora_bias"
        : null;
      if (field) {
        throw new Error(
          `${file}: field "${field}" is not supported with init_lora_weights ` +
            `${JSON.stringify(config.init_lora_weights)} (a residual start assumes one r and α)`,
        );
      }
      return residual;
    }
    return {
      method: config.use_dora === true ? "dora" : config.use_rslora ? "rslora" : "lora",
      options: {
        r: config.r ?? 8,
        alpha: config.lora_alpha ?? 8,
        dropout: config.lora_dropout ?? 0,
        rslora: config.use_rslora === true,
        rankPattern,
        alphaPattern,
        loraBias: config.lora_bias === true,
      },
    };
  }
  if (type === "IA3") {
    // feedforward_modules is resolved against the model in loadAdapter.
    return { method: "ia3", options: {} };
  }
  if (type === "VERA") {
    return {
      method: "vera",
      options: {
        r: config.r,
        dropout: config.vera_dropout ?? 0,
        dInitial: config.d_initial ?? 0.1,
        projectionPrngKey: config.projection_prng_key ?? 0,
        saveProjection: config.save_projection !== false,
      },
    };
  }
  if (type === "BITFIT") return { method: "bitfit", options: {} };
  throw new Error(
    `${file}: peft_type ${String(type)} is not supported yet; supported: LORA, IA3, VERA, BITFIT`,
  );
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
  const { file, config, method, options } = await readAdapterConfig(dir);
  const saved = Array.isArray(config.modules_to_save) ? config.modules_to_save.map(String) : [];
  const headModules = ctx.headModules ?? saved;
  let targets: string[];
  if (file.endsWith(ADAPTER_CONFIG_FILE) && PEFT_TARGETED.includes(String(config.peft_type))) {
    // PEFT's own selection (regex, all-linear, exclusions, layer indices) resolved to full
    // module names, so every method matches them exactly.
    const targeting = targetingFromConfig(config, file);
    targets = resolveTargetModules(
      model,
      { ...targeting, modulesToSave: [...new Set([...targeting.modulesToSave, ...headModules])] },
      file,
      peftDefaultTargets(String(config.peft_type), model),
    );
  } else {
    // Our own formats and BitFit (biases, not Linear layers) keep plain name/suffix lists;
    // methods that adapt whole blocks (LISA) save none.
    const listed = config.target_modules ?? [];
    if (!Array.isArray(listed) || !listed.every((t) => typeof t === "string")) {
      throw new Error(`${file}: field "target_modules" must be a list of module names`);
    }
    targets = listed;
  }
  // IA3's feed-forward modules by PEFT's own rule (plain suffix or full-match regex); null keeps
  // the architecture's default, as PEFT does.
  const resolved = config.peft_type === "IA3" && file.endsWith(ADAPTER_CONFIG_FILE) &&
      config.feedforward_modules != null
    ? { ...options, feedforward: resolveFeedforward(config.feedforward_modules, targets, file) }
    : options;
  const adapter = applyMethod(method, model, resolved, { ...ctx, targets, headModules });
  const read = await auditAdapterReads(() => adapter.load(dir));
  const bias = config.bias ?? "none";
  if (bias !== "none" && read.length > 0 && PEFT_TARGETED.includes(String(config.peft_type))) {
    // The folder's own weights (residual methods also read their initial/ adapter).
    const own = read.find((f) => f.file === join(dir, ADAPTER_WEIGHTS)) ?? read[0];
    loadTrainedBiases(model, own, bias as "all" | "lora_only" | "vera_only");
    // The restored biases live in the base model now; save() writes bias "none" and would drop
    // them, so saving this adapter again is refused rather than silently lossy.
    adapter.save = () =>
      Promise.reject(
        new Error(
          `${file}: this adapter trained base biases (bias "${bias}"), which save() does not ` +
            "write; merge it (deno task merge) to keep them",
        ),
      );
  }
  for (const files of read) rejectUnusedTensors(model, files.file, files.tensors.unused());
  // PEFT files were checked on the host as they were read; our own formats (GaLore, LISA, SIFT)
  // are checked here, on the GPU, as loaded into the model.
  if (read.length === 0) {
    const weights = OWN_WEIGHTS[method as (typeof OWN_FORMATS)[number]];
    await assertFiniteWeights(namedTrainable(adapter.groups()), weights ? join(dir, weights) : dir);
  }
  return adapter;
}

const ADAPTER_CONFIG_FILE = "adapter_config.json";
/** peft_types whose target_modules name Linear modules with PEFT's matching rules. */
const PEFT_TARGETED = ["LORA", "ADALORA", "IA3", "VERA"];

/**
 * PEFT's default target_modules for the architectures we load, used when an adapter config has
 * none (TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING).
 */
function peftDefaultTargets(peftType: string, model: Module): string[] {
  const arch = architectureOf(model);
  const llama = arch === "llama";
  if (peftType === "IA3") {
    return llama ? ["k_proj", "v_proj", "down_proj"] : ["key", "value", "output.dense"];
  }
  if (peftType === "ADALORA" && arch === "roberta") return ["query", "key", "value", "dense"];
  return llama ? ["q_proj", "v_proj"] : ["query", "value"];
}

/**
 * Refuse tensors an adapter file holds but the config did not ask for, naming the first one and,
 * when its module does not exist in the model (a layer beyond the model's depth), that module.
 */
function rejectUnusedTensors(model: Module, file: string, unused: readonly string[]): void {
  if (unused.length === 0) return;
  const modules = new Map(model.namedModules());
  // The module a tensor names is missing when the walk down its dotted path leaves the tree
  // before reaching a leaf (a layer index past the model's depth); below a leaf are parameter
  // names (lora_A.weight on an unadapted Linear), which belong to an existing module.
  const missingModule = (key: string): string | null => {
    const parts = key.split(".");
    for (let i = 1; i < parts.length; i++) {
      const prefix = parts.slice(0, i).join(".");
      const m = modules.get(prefix);
      if (!m) return prefix;
      if (m.children().length === 0) return null;
    }
    return null;
  };
  const first = unused.find((k) => missingModule(k) !== null) ?? unused[0];
  const absent = missingModule(first);
  const more = unused.length > 1 ? ` (and ${unused.length - 1} more unused tensors)` : "";
  throw new Error(
    absent
      ? `${file}: tensor ${PEFT_PREFIX}${first} belongs to ${absent}, which this model does not ` +
        `have${more}; the adapter was trained on another model`
      : `${file}: tensor ${PEFT_PREFIX}${first} is not implied by the adapter config ` +
        `(target_modules, modules_to_save, …)${more}; the config and the weights disagree`,
  );
}

/** Methods without a PEFT format keep `<method>_config.json` (see each method's file). */
const OWN_FORMATS = ["galore", "lisa", "sift"] as const;
/** The weights file of each of our own formats. */
const OWN_WEIGHTS: Record<(typeof OWN_FORMATS)[number], string> = {
  galore: GALORE_WEIGHTS,
  lisa: LISA_WEIGHTS,
  sift: SIFT_WEIGHTS,
};

/**
 * The adapter config in `dir` and the method + options it implies: PEFT's adapter_config.json,
 * or one of our own formats (`galore_config.json`, `lisa_config.json`, `sift_config.json`), whose
 * snake_case fields map onto the method's option names.
 */
async function readAdapterConfig(dir: string): Promise<{
  file: string;
  config: Record<string, unknown>;
  method: string;
  options: Record<string, unknown>;
}> {
  const read = async (file: string) => {
    try {
      return JSON.parse(await Deno.readTextFile(file)) as Record<string, unknown>;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw new Error(
        `${file}: cannot read the adapter config (${e instanceof Error ? e.message : e})`,
      );
    }
  };
  const peftFile = `${dir}/adapter_config.json`;
  const peft = await read(peftFile);
  if (peft) return { file: peftFile, config: peft, ...methodFromPeftConfig(peft, peftFile) };
  for (const name of OWN_FORMATS) {
    const file = `${dir}/${name}_config.json`;
    const config = await read(file);
    if (!config) continue;
    const shape =
      (getMethod(name).config as unknown as { shape?: Record<string, unknown> }).shape ?? {};
    const options: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(config)) {
      const camel = key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
      if (camel in shape) options[camel] = value;
    }
    return { file, config, method: name, options };
  }
  throw new Error(
    `${dir}: no adapter config found (adapter_config.json, or ${
      OWN_FORMATS.map((m) => `${m}_config.json`).join(", ")
    })`,
  );
}
