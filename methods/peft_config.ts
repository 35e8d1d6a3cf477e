/**
 * PEFT's adapter_config.json semantics: which modules an adapter targets and with which rank and
 * alpha, exactly as Hugging Face PEFT resolves them, and an explicit table of every field PEFT's
 * LoraConfig writes with what this toolkit does with it. A field whose non-default value we do
 * not honour is refused with one line naming the file and the field — an imported adapter never
 * silently becomes a different model.
 *
 * Targeting (PEFT `check_target_module_exists` and `_maybe_include_all_linear_layers`):
 * - `exclude_modules` first: a string is a regex that must match the whole module name; a list
 *   matches a name exactly or as a dotted suffix.
 * - Modules inside `modules_to_save` (the task head) are never adapted.
 * - `target_modules` as a string: a regex that must match the whole name (re.fullmatch); the
 *   string "all-linear" (any case) means every Linear except the output layer (`lm_head`) and,
 *   for SEQ_CLS, the classification head.
 * - `target_modules` as a list: an exact name always matches; a dotted suffix matches, and then
 *   `layers_to_transform` (an int or a list) keeps only modules whose layer index is listed. The
 *   index is the first number segment after `<layers_pattern>.` (any segment when the pattern is
 *   empty): `re.match(r".*?\.[^.]*\.(\d+)\.", name)`.
 * - null: the architecture's default (PEFT's per-model table).
 *
 * rank_pattern / alpha_pattern (PEFT `get_pattern_key`): the first key, in file order, for which
 * `re.match(rf"(.*\.)?({key})$", name)` matches gives that module its r / lora_alpha.
 *
 * @module
 */
import { allLinears, type Module } from "../models/module.ts";

/** What we do with one adapter_config.json field. */
export type FieldUse =
  /** Read and applied with PEFT's semantics. */
  | "honoured"
  /** Describes the adapter (provenance, training mode); it does not change the model. */
  | "metadata"
  /** PEFT itself ignores it in the situations we accept (noted in `why`). */
  | "no effect"
  /** Only its default value is accepted; anything else is refused naming the field. */
  | "default only";

/** One row of a PEFT config table. */
export interface FieldRule {
  /** PEFT's default (missing keys take it). */
  readonly default: unknown;
  /** What we do with it. */
  readonly use: FieldUse;
  /** Why, in a few words (also the text of a refusal). */
  readonly why: string;
}

const honoured = (d: unknown, why: string): FieldRule => ({ default: d, use: "honoured", why });
const metadata = (d: unknown, why: string): FieldRule => ({ default: d, use: "metadata", why });
const noEffect = (d: unknown, why: string): FieldRule => ({ default: d, use: "no effect", why });
const defaultOnly = (d: unknown, why: string): FieldRule => ({
  default: d,
  use: "default only",
  why,
});

/** Fields every PeftConfig has (PeftConfigMixin + PeftConfig). */
const BASE_FIELDS: Record<string, FieldRule> = {
  peft_type: honoured(null, "selects the method"),
  task_type: honoured(null, "SEQ_CLS keeps the head out of all-linear"),
  base_model_name_or_path: metadata(null, "the model it was trained on"),
  revision: metadata(null, "the model revision it was trained on"),
  peft_version: metadata(null, "the PEFT version that wrote it"),
  inference_mode: metadata(false, "whether PEFT loads it frozen"),
  auto_mapping: metadata(null, "PEFT's class mapping for custom models"),
  modules_to_save: honoured(null, "trained whole, saved under their own names"),
};

/**
 * Every field PEFT's LoraConfig writes (PEFT 0.19–0.20), and what loading an adapter does with
 * it. `runtime_config` is not written (to_dict drops it).
 */
export const LORA_CONFIG_FIELDS: Readonly<Record<string, FieldRule>> = {
  ...BASE_FIELDS,
  r: honoured(8, "rank of every module without a rank_pattern entry"),
  lora_alpha: honoured(8, "alpha of every module without an alpha_pattern entry"),
  lora_dropout: honoured(0, "dropout on the adapter input while training"),
  use_rslora: honoured(false, "scaling α/√r instead of α/r"),
  use_dora: honoured(false, "DoRA's magnitude vector"),
  target_modules: honoured(null, "list, full-match regex or all-linear, as PEFT"),
  exclude_modules: honoured(null, "list (exact or suffix) or full-match regex"),
  layers_to_transform: honoured(null, "layer indices kept among suffix matches"),
  layers_pattern: honoured(null, "the module list holding the layer index"),
  rank_pattern: honoured({}, "per-module r by PEFT's get_pattern_key"),
  alpha_pattern: honoured({}, "per-module lora_alpha by PEFT's get_pattern_key"),
  lora_bias: honoured(false, "a bias on lora_B, scaled with the update"),
  init_lora_weights: honoured(true, "selects the start (PiSSA, OLoRA, LoRA-GA, EVA)"),
  fan_in_fan_out: noEffect(
    false,
    "PEFT resets it to false for nn.Linear, the only layer type adapted here",
  ),
  bias: honoured("none", 'trained base biases ("all", "lora_only") restored into the model'),
  eva_config: noEffect(null, "EVA's data pass settings; the saved adapter holds its result"),
  lora_ga_config: honoured(null, "LoRA-GA's direction, scale and gamma"),
  corda_config: noEffect(null, "used only with init_lora_weights corda, which is refused"),
  loftq_config: noEffect({}, "used only with init_lora_weights loftq, which is refused"),
  megatron_core: noEffect("megatron.core", "used only with megatron_config"),
  qalora_group_size: noEffect(16, "used only with use_qalora"),
  ensure_weight_tying: defaultOnly(false, "tied adapters on embeddings are not supported"),
  megatron_config: defaultOnly(null, "Megatron parallel layers are not supported"),
  layer_replication: defaultOnly(null, "layer replication is not supported"),
  trainable_token_indices: defaultOnly(null, "trainable token embeddings are not supported"),
  target_parameters: defaultOnly(null, "adapting bare parameters (MoE experts) is not supported"),
  alora_invocation_tokens: defaultOnly(null, "activated LoRA (aLoRA) is not supported"),
  use_qalora: defaultOnly(false, "QALoRA (quantized bases) is not supported"),
  use_bdlora: defaultOnly(null, "block-diagonal LoRA is not supported"),
  arrow_config: defaultOnly(null, "Arrow routing is not supported"),
  velora_config: defaultOnly(null, "VeLoRA is not supported"),
  monteclora_config: defaultOnly(null, "MonteCLoRA is not supported"),
  kasa_config: defaultOnly(null, "KaSA is not supported"),
};

/** AdaLoraConfig: LoraConfig's fields as AdaLoRA's layers use them, plus its schedule. */
export const ADALORA_CONFIG_FIELDS: Readonly<Record<string, FieldRule>> = {
  ...LORA_CONFIG_FIELDS,
  r: noEffect(8, "PEFT ignores r for AdaLoRA (init_r is the rank)"),
  use_rslora: noEffect(false, "AdaLoRA's layers scale by lora_alpha / ranknum"),
  alpha_pattern: noEffect({}, "AdaLoRA's layers take lora_alpha only"),
  lora_bias: noEffect(false, "AdaLoRA's layers have no lora_B bias"),
  use_dora: defaultOnly(false, "PEFT refuses DoRA with AdaLoRA"),
  rank_pattern: honoured({}, "the budget mask of kept singular triplets"),
  init_lora_weights: noEffect(true, "the loaded tensors replace the start"),
  target_r: honoured(8, "the final average rank"),
  init_r: honoured(12, "the initial rank"),
  tinit: honoured(0, "warm-up steps before budgeting"),
  tfinal: honoured(0, "final fine-tuning steps"),
  deltaT: honoured(1, "steps between budget allocations"),
  beta1: honoured(0.85, "sensitivity EMA"),
  beta2: honoured(0.85, "uncertainty EMA"),
  orth_reg_weight: honoured(0.5, "orthogonality regulariser weight"),
  total_step: honoured(null, "the schedule's length"),
};

/** IA3Config. */
export const IA3_CONFIG_FIELDS: Readonly<Record<string, FieldRule>> = {
  ...BASE_FIELDS,
  target_modules: honoured(null, "list, full-match regex or all-linear, as PEFT"),
  exclude_modules: honoured(null, "list (exact or suffix) or full-match regex"),
  feedforward_modules: honoured(null, "scaled on the input instead of the output"),
  fan_in_fan_out: noEffect(false, "PEFT resets it to false for nn.Linear"),
  init_ia3_weights: noEffect(true, "the loaded vectors replace the start"),
};

/** VeraConfig. */
export const VERA_CONFIG_FIELDS: Readonly<Record<string, FieldRule>> = {
  ...BASE_FIELDS,
  r: honoured(256, "rank of the shared projections"),
  target_modules: honoured(null, "list, full-match regex or all-linear, as PEFT"),
  layers_to_transform: honoured(null, "layer indices kept among suffix matches"),
  layers_pattern: honoured(null, "the module list holding the layer index"),
  projection_prng_key: honoured(0, "seed of the shared projections"),
  save_projection: honoured(true, "whether the projections are in the file"),
  vera_dropout: honoured(0, "dropout on the adapter input while training"),
  d_initial: honoured(0.1, "start of the d vectors"),
  fan_in_fan_out: noEffect(false, "PEFT resets it to false for nn.Linear"),
  init_weights: noEffect(true, "the loaded vectors replace the start"),
  bias: honoured("none", 'trained base biases ("all", "vera_only") restored into the model'),
};

/** The field table of each peft_type we load. */
export const PEFT_CONFIG_FIELDS: Readonly<Record<string, Readonly<Record<string, FieldRule>>>> = {
  LORA: LORA_CONFIG_FIELDS,
  ADALORA: ADALORA_CONFIG_FIELDS,
  IA3: IA3_CONFIG_FIELDS,
  VERA: VERA_CONFIG_FIELDS,
};

/** init_lora_weights values that mean the plain LoRA start (the loaded tensors replace it). */
const PLAIN_INITS: readonly unknown[] = [true, false, "gaussian"];
/** init_lora_weights values handled by another of our methods. */
const METHOD_INITS = /^(eva|olora|lora_ga|pissa|pissa_niter_\d+)$/;

/** Equal as JSON values, with a missing value equal to null. */
function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}

/** A short rendering of a config value for messages. */
function show(v: unknown): string {
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/**
 * Check an adapter_config.json against its peft_type's table ({@link PEFT_CONFIG_FIELDS}): every
 * field is known, and each one we do not honour has its default. An unknown field with a
 * non-empty value is refused too (PEFT drops it with a warning; we cannot know what a newer PEFT
 * meant by it). LoRA's init_lora_weights must name a start we implement.
 */
export function checkPeftConfigFields(config: Record<string, unknown>, file: string): void {
  const table = PEFT_CONFIG_FIELDS[String(config.peft_type)];
  if (!table) return;
  for (const [key, value] of Object.entries(config)) {
    const rule = table[key];
    if (!rule) {
      const empty = value === null || value === false ||
        (typeof value === "object" && Object.keys(value as object).length === 0);
      if (empty || key === "runtime_config") continue;
      throw new Error(
        `${file}: field "${key}" = ${show(value)} is unknown to this loader (written by a newer ` +
          "PEFT?); remove it if it has no effect on the weights",
      );
    }
    if (rule.use === "default only" && !sameJson(value, rule.default)) {
      throw new Error(
        `${file}: field "${key}" = ${show(value)} is not supported (${rule.why}); ` +
          `only ${show(rule.default)} is`,
      );
    }
  }
  const biasModes = config.peft_type === "VERA"
    ? ["none", "all", "vera_only"]
    : ["none", "all", "lora_only"];
  if (config.peft_type !== "IA3" && !biasModes.includes(String(config.bias ?? "none"))) {
    throw new Error(
      `${file}: field "bias" = ${show(config.bias)} is not one of ${
        biasModes.map((m) => `"${m}"`).join(", ")
      }`,
    );
  }
  if (config.peft_type !== "LORA") return;
  const init = config.init_lora_weights ?? true;
  if (!PLAIN_INITS.includes(init) && !(typeof init === "string" && METHOD_INITS.test(init))) {
    throw new Error(
      `${file}: field "init_lora_weights" = ${show(init)} is not supported; supported: true, ` +
        'false, "gaussian", "eva", "pissa", "pissa_niter_K", "olora", "lora_ga"',
    );
  }
  if (config.lora_bias === true && typeof init === "string") {
    throw new Error(
      `${file}: field "lora_bias" cannot be true with init_lora_weights ${show(init)} ` +
        "(PEFT allows it only with true or false)",
    );
  }
  if (config.lora_bias === true && config.use_dora === true) {
    throw new Error(
      `${file}: field "lora_bias" cannot be true with use_dora (PEFT refuses it too)`,
    );
  }
}

/** How an adapter chooses its modules: PEFT's targeting fields, validated. */
export interface PeftTargeting {
  /** A list of names/suffixes, a full-match regex, "all-linear", or null (architecture default). */
  targetModules: string[] | string | null;
  /** A list of names/suffixes, or a full-match regex; null: nothing excluded. */
  excludeModules: string[] | string | null;
  /** Layer indices kept among suffix matches; null: every layer. */
  layersToTransform: number[] | number | null;
  /** Names of the module list holding the layer index; null: any. */
  layersPattern: string[] | string | null;
  /** The head modules, never adapted. */
  modulesToSave: string[];
  /** PEFT's task type. */
  taskType: string | null;
}

function stringListOrString(
  config: Record<string, unknown>,
  key: string,
  file: string,
): string[] | string | null {
  const v = config[key] ?? null;
  if (v === null || typeof v === "string") return v;
  if (Array.isArray(v) && v.every((x) => typeof x === "string")) return v as string[];
  throw new Error(`${file}: field "${key}" must be a list of module names, a regex string or null`);
}

/** Read PEFT's targeting fields of `config` (any peft_type), with PEFT's own consistency rules. */
export function targetingFromConfig(config: Record<string, unknown>, file: string): PeftTargeting {
  const targetModules = stringListOrString(config, "target_modules", file);
  const excludeModules = stringListOrString(config, "exclude_modules", file);
  const layersPattern = stringListOrString(config, "layers_pattern", file);
  const layers = config.layers_to_transform ?? null;
  const isIndex = (x: unknown) => Number.isInteger(x) && (x as number) >= 0;
  if (layers !== null && !isIndex(layers) && !(Array.isArray(layers) && layers.every(isIndex))) {
    throw new Error(
      `${file}: field "layers_to_transform" must be a layer index, a list of indices or null`,
    );
  }
  const saved = config.modules_to_save ?? null;
  if (saved !== null && !(Array.isArray(saved) && saved.every((x) => typeof x === "string"))) {
    throw new Error(`${file}: field "modules_to_save" must be a list of module names or null`);
  }
  if (typeof targetModules === "string" && layers !== null) {
    throw new Error(
      `${file}: field "layers_to_transform" cannot be used when target_modules is a string ` +
        "(PEFT refuses it too)",
    );
  }
  if (typeof targetModules === "string" && layersPattern !== null) {
    throw new Error(
      `${file}: field "layers_pattern" cannot be used when target_modules is a string ` +
        "(PEFT refuses it too)",
    );
  }
  if (layersPattern !== null && layersPattern.length > 0 && layers === null) {
    throw new Error(`${file}: field "layers_pattern" needs layers_to_transform (PEFT's rule)`);
  }
  const type = config.task_type;
  return {
    targetModules,
    excludeModules,
    layersToTransform: layers as number[] | number | null,
    layersPattern,
    modulesToSave: (saved as string[] | null) ?? [],
    taskType: typeof type === "string" ? type : null,
  };
}

/** A JS regex for a Python pattern, or an error naming the field. */
function pythonRegex(source: string, file: string, field: string): RegExp {
  try {
    return new RegExp(source);
  } catch (e) {
    throw new Error(
      `${file}: field "${field}" holds a regex this loader cannot compile (${
        e instanceof Error ? e.message : e
      })`,
    );
  }
}

/** `name` equals one of `keys` or ends with `.key` (PEFT's list matching). */
function listMatches(keys: readonly string[], name: string): boolean {
  return keys.some((k) => name === k || name.endsWith(`.${k}`));
}

/** The layer index PEFT reads from `name` (see the module comment), or null. */
export function layerIndexOf(name: string, layersPattern: string[] | string | null): number | null {
  const patterns = layersPattern === null || layersPattern.length === 0
    ? null
    : typeof layersPattern === "string"
    ? [layersPattern]
    : layersPattern;
  const regexes = patterns === null
    ? [/^.*?\.[^.]*\.(\d+)\./]
    : patterns.map((p) => new RegExp(`^.*?\\.${p}\\.(\\d+)\\.`));
  for (const re of regexes) {
    const m = re.exec(name);
    if (m) return Number(m[1]);
  }
  return null;
}

/** Default target_modules per architecture when an adapter's config has none (PEFT's table). */
const DEFAULT_TARGETS: Record<string, readonly string[]> = {
  LORA: ["query", "value", "q_proj", "v_proj"],
};

/**
 * The full names of the Linear modules `targeting` selects in `model`, in tree order, as PEFT
 * selects them. Errors name the file and field when a target is not a Linear or nothing matches.
 */
export function resolveTargetModules(
  model: Module,
  targeting: PeftTargeting,
  file: string,
  defaults: readonly string[] = DEFAULT_TARGETS.LORA,
): string[] {
  const linears = new Set(allLinears(model).map(([n]) => n));
  const t = targeting;
  let target = t.targetModules ?? [...defaults];
  if (typeof target === "string" && target.toLowerCase() === "all-linear") {
    // Every Linear but the output layer, and for SEQ_CLS the classifier head (PEFT's rule).
    const head = t.taskType === "SEQ_CLS"
      ? ["score", "classifier"].find((h) =>
        [...linears].some((n) => n === h || n.startsWith(`${h}.`))
      )
      : undefined;
    target = [...linears].filter((n) =>
      n !== "lm_head" && !(head && (n === head || n.startsWith(`${head}.`)))
    );
  }
  const fullMatch = typeof target === "string"
    ? pythonRegex(`^(?:${target})$`, file, "target_modules")
    : null;
  const excludeRe = typeof t.excludeModules === "string"
    ? pythonRegex(`^(?:${t.excludeModules})$`, file, "exclude_modules")
    : null;
  const layers = t.layersToTransform;
  const usesLayers = layers !== null && (Array.isArray(layers) ? layers.length > 0 : true);
  if (t.layersPattern !== null) {
    for (const p of typeof t.layersPattern === "string" ? [t.layersPattern] : t.layersPattern) {
      pythonRegex(p, file, "layers_pattern");
    }
  }
  const inHead = (name: string) =>
    t.modulesToSave.some((m) => new RegExp(`(^|.*\\.)${m}($|\\..*)`).test(name));
  const chosen: string[] = [];
  for (const [name] of model.namedModules()) {
    if (!name) continue;
    const excluded = excludeRe
      ? excludeRe.test(name)
      : listMatches((t.excludeModules as string[] | null) ?? [], name);
    if (excluded) continue;
    if (inHead(name)) continue;
    let found: boolean;
    if (fullMatch) found = fullMatch.test(name);
    else if ((target as string[]).includes(name)) found = true;
    else {
      found = (target as string[]).some((k) => name.endsWith(`.${k}`));
      if (found && usesLayers) {
        const index = layerIndexOf(name, t.layersPattern);
        found = index !== null &&
          (Array.isArray(layers) ? layers.includes(index) : layers === index);
      }
    }
    if (!found) continue;
    if (!linears.has(name)) {
      // PEFT raises for a matched module it cannot adapt; so do we, rather than skip it.
      throw new Error(
        `${file}: field "target_modules" matches ${name}, which is not a Linear layer; ` +
          "only Linear layers can be adapted",
      );
    }
    chosen.push(name);
  }
  if (chosen.length === 0) {
    throw new Error(
      `${file}: field "target_modules" = ${show(t.targetModules)} matches no Linear module of ` +
        `the model (after exclude_modules/layers_to_transform); its Linear modules end in ${
          [...new Set([...linears].map((n) => n.split(".").pop()))].join(", ")
        }`,
    );
  }
  return chosen;
}

/** A rank_pattern / alpha_pattern: module pattern → value. */
export type ModulePattern = Readonly<Record<string, number>>;

/**
 * The value `pattern` gives module `name` (PEFT's get_pattern_key: the first key in order whose
 * `(.*\.)?(key)$` matches the whole name from its start), or undefined.
 */
export function patternValue(pattern: ModulePattern, name: string): number | undefined {
  for (const [key, value] of Object.entries(pattern)) {
    if (new RegExp(`^(.*\\.)?(${key})$`).test(name)) return value;
  }
  return undefined;
}

/**
 * Read a rank_pattern / alpha_pattern field: an object of positive numbers (ranks: integers)
 * whose keys compile as regexes; errors name the file and field.
 */
export function patternFromConfig(
  config: Record<string, unknown>,
  key: "rank_pattern" | "alpha_pattern",
  file: string,
): Record<string, number> {
  const v = config[key] ?? {};
  if (typeof v !== "object" || Array.isArray(v)) {
    throw new Error(`${file}: field "${key}" must be an object of module pattern → number`);
  }
  const out: Record<string, number> = {};
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    const ok = typeof x === "number" && x > 0 && (key === "alpha_pattern" || Number.isInteger(x));
    if (!ok) {
      throw new Error(
        `${file}: field "${key}" entry "${k}" must be a positive ${
          key === "rank_pattern" ? "integer" : "number"
        }, got ${show(x)}`,
      );
    }
    pythonRegex(`(${k})`, file, key);
    out[k] = x as number;
  }
  return out;
}

/**
 * IA3's feed-forward modules among the resolved `targets`, by PEFT's rule: a string is a
 * full-match regex; a list entry matches a name ending in it (plain suffix, no dot required).
 */
export function resolveFeedforward(
  feedforward: unknown,
  targets: readonly string[],
  file: string,
): string[] {
  if (feedforward === null || feedforward === undefined) return [];
  if (typeof feedforward === "string") {
    const re = pythonRegex(`^(?:${feedforward})$`, file, "feedforward_modules");
    return targets.filter((t) => re.test(t));
  }
  if (!Array.isArray(feedforward) || !feedforward.every((f) => typeof f === "string")) {
    throw new Error(
      `${file}: field "feedforward_modules" must be a list of module names or a regex`,
    );
  }
  return targets.filter((t) => feedforward.some((f: string) => t.endsWith(f)));
}

/**
 * A run's `--targets` with PEFT's "all-linear" shorthand expanded: `["all-linear"]` (any case)
 * becomes the full names of every Linear but `lm_head` and the head modules, as PEFT selects
 * them; any other list is returned as given. Saved adapters then list those names, which PEFT
 * reads back as the same modules.
 */
export function expandAllLinear(
  model: Module,
  targets: readonly string[],
  headModules: readonly string[],
  taskType: string | null,
): string[] {
  if (targets.length !== 1 || targets[0].toLowerCase() !== "all-linear") return [...targets];
  return resolveTargetModules(
    model,
    {
      targetModules: "all-linear",
      excludeModules: null,
      layersToTransform: null,
      layersPattern: null,
      modulesToSave: [...headModules],
      taskType,
    },
    "--targets",
  );
}
