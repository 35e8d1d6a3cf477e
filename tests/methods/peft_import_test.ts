/**
 * Adapters written by hand in Hugging Face PEFT's format (every field PEFT 0.19 writes, tensors
 * under `base_model.model.`) load into a model whose forward equals an explicit reference: the
 * plain model with W' = W + s·B·A (and b' = b + s·b_B under lora_bias) folded in on the host, for
 * exactly the modules, ranks and scalings PEFT's rules give — spelled out per test, not computed
 * by the loader's code. Covers rank_pattern and alpha_pattern (first matching key wins),
 * lora_bias, regex target_modules (full match), "all-linear", layers_to_transform with and
 * without layers_pattern, exclude_modules as a list and as a regex. Every field we do not honour
 * is refused naming the file and the field.
 */
import { equal, rejects } from "node:assert/strict";
import { join } from "node:path";
import { assertClose, randomArray, setup } from "../helpers.ts";
import { loadAdapter, LORA_CONFIG_FIELDS } from "../../methods/mod.ts";
import { writeSafetensors } from "../../models/safetensors.ts";
import { EncoderForSequenceClassification } from "../../models/encoder.ts";
import { encoderDims, hostSource } from "../models/fixtures.ts";
import type { HostWeights } from "../models/reference.ts";
import { evalLogits, MAX_POSITIONS, TINY_ROBERTA, tinyRoberta } from "./support.ts";

await setup();

const { weights, model } = tinyRoberta(21);
const H = TINY_ROBERTA.hidden, INTER = TINY_ROBERTA.inter;
const LOAD_CTX = {
  lrMultipliers: {},
  weightDecay: 0,
  taskType: "SEQ_CLS" as const,
  baseModel: "x",
  seed: 0,
};

/** [dOut, dIn] of each adaptable module kind of the tiny RoBERTa. */
const SHAPES: Record<string, [number, number]> = {
  "attention.self.query": [H, H],
  "attention.self.key": [H, H],
  "attention.self.value": [H, H],
  "attention.output.dense": [H, H],
  "intermediate.dense": [INTER, H],
  "output.dense": [H, INTER],
};

const layerModule = (l: number, kind: string) => `roberta.encoder.layer.${l}.${kind}`;

/** A config as PEFT 0.19.1 writes it (all fields, defaults), with `over` applied. */
function peftConfig(over: Record<string, unknown>): Record<string, unknown> {
  return {
    alora_invocation_tokens: null,
    alpha_pattern: {},
    arrow_config: null,
    auto_mapping: null,
    base_model_name_or_path: "tiny-roberta",
    bias: "none",
    corda_config: null,
    ensure_weight_tying: false,
    eva_config: null,
    exclude_modules: null,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: 8,
    lora_bias: false,
    lora_dropout: 0.0,
    lora_ga_config: null,
    megatron_config: null,
    megatron_core: "megatron.core",
    modules_to_save: ["classifier", "score"],
    peft_type: "LORA",
    peft_version: "0.19.1",
    qalora_group_size: 16,
    r: 4,
    rank_pattern: {},
    revision: null,
    target_modules: ["query", "value"],
    target_parameters: null,
    task_type: "SEQ_CLS",
    trainable_token_indices: null,
    use_bdlora: null,
    use_dora: false,
    use_qalora: false,
    use_rslora: false,
    ...over,
  };
}

/** One adapted module of the expected model: its rank, scaling and whether B has a bias. */
interface Expected {
  module: string;
  r: number;
  scaling: number;
  bias?: boolean;
}

/** Seeded adapter tensors for `expected` plus a trained head, keyed as in PEFT's file. */
function adapterTensors(
  expected: Expected[],
  seed: number,
): Map<string, { shape: number[]; data: Float32Array }> {
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  let s = seed;
  const put = (name: string, shape: number[], scale = 0.3) =>
    out.set(name, {
      shape,
      data: Float32Array.from(randomArray(shape.reduce((p, d) => p * d, 1), s++, -scale, scale)),
    });
  for (const e of expected) {
    const kind = Object.keys(SHAPES).find((k) => e.module.endsWith(k))!;
    const [dOut, dIn] = SHAPES[kind];
    put(`${e.module}.lora_A.weight`, [e.r, dIn]);
    put(`${e.module}.lora_B.weight`, [dOut, e.r]);
    if (e.bias) put(`${e.module}.lora_B.bias`, [dOut]);
  }
  put("classifier.dense.weight", [H, H]);
  put("classifier.dense.bias", [H], 0.1);
  put("classifier.out_proj.weight", [TINY_ROBERTA.labels, H]);
  put("classifier.out_proj.bias", [TINY_ROBERTA.labels], 0.1);
  return out;
}

/** Write a PEFT adapter folder: adapter_config.json + adapter_model.safetensors. */
async function writePeft(
  dir: string,
  config: Record<string, unknown>,
  tensors: Map<string, { shape: number[]; data: Float32Array }>,
): Promise<void> {
  await Deno.writeTextFile(join(dir, "adapter_config.json"), JSON.stringify(config, null, 2));
  await writeSafetensors(
    join(dir, "adapter_model.safetensors"),
    [...tensors].map(([name, t]) => ({
      name: `base_model.model.${name}`,
      dtype: "F32" as const,
      shape: t.shape,
      data: t.data,
    })),
    { format: "pt" },
  );
}

/** The base weights with every expected update folded in (float64, on the host). */
function mergedWeights(
  expected: Expected[],
  tensors: Map<string, { shape: number[]; data: Float32Array }>,
): HostWeights {
  const w: HostWeights = new Map([...weights].map(([k, v]) => [k, Float64Array.from(v)]));
  for (const e of expected) {
    const a = tensors.get(`${e.module}.lora_A.weight`)!,
      b = tensors.get(`${e.module}.lora_B.weight`)!;
    const [dOut, r] = b.shape, dIn = a.shape[1];
    const wt = w.get(`${e.module}.weight`)!;
    for (let o = 0; o < dOut; o++) {
      for (let i = 0; i < dIn; i++) {
        let acc = 0;
        for (let k = 0; k < r; k++) acc += b.data[o * r + k] * a.data[k * dIn + i];
        wt[o * dIn + i] += e.scaling * acc;
      }
    }
    if (e.bias) {
      const bb = tensors.get(`${e.module}.lora_B.bias`)!.data, bias = w.get(`${e.module}.bias`)!;
      for (let o = 0; o < dOut; o++) bias[o] += e.scaling * bb[o];
    }
  }
  for (const [name, t] of tensors) {
    if (name.startsWith("classifier.")) w.set(name, Float64Array.from(t.data));
  }
  return w;
}

/** Write the adapter, load it through loadAdapter, compare with the host-merged reference. */
async function expectImport(config: Record<string, unknown>, expected: Expected[], seed: number) {
  const dir = await Deno.makeTempDir();
  try {
    const tensors = adapterTensors(expected, seed);
    await writePeft(dir, peftConfig(config), tensors);
    const loaded = model();
    await loadAdapter(loaded, dir, LOAD_CTX);
    const reference = new EncoderForSequenceClassification(
      encoderDims(TINY_ROBERTA, MAX_POSITIONS),
      hostSource(mergedWeights(expected, tensors)),
    );
    const got = await evalLogits(loaded), want = await evalLogits(reference);
    assertClose(got, want, { atol: 2e-5, rtol: 1e-4 }, JSON.stringify(config));
    // The adapter really changes the model, so a loader that ignored it would fail above.
    const base = await evalLogits(model());
    const differs = want.some((v, i) => Math.abs(v - base[i]) > 1e-3);
    equal(differs, true, "the reference differs from the base model");
    return { loaded, dir };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const both = (kinds: string[], s: (l: number, kind: string) => Omit<Expected, "module">) =>
  [0, 1].flatMap((l) => kinds.map((k) => ({ module: layerModule(l, k), ...s(l, k) })));

Deno.test("rank_pattern and alpha_pattern give modules their own r and α; the first matching key wins", async () => {
  await expectImport(
    {
      r: 4,
      lora_alpha: 8,
      rank_pattern: { "layer.0.attention.self.query": 2 },
      // Key order matters: layer 1's value matches the regex first, layer 0's only "value".
      alpha_pattern: { "layer\\.1\\.attention\\.self\\.value": 2, "value": 32 },
    },
    [
      { module: layerModule(0, "attention.self.query"), r: 2, scaling: 8 / 2 },
      { module: layerModule(0, "attention.self.value"), r: 4, scaling: 32 / 4 },
      { module: layerModule(1, "attention.self.query"), r: 4, scaling: 8 / 4 },
      { module: layerModule(1, "attention.self.value"), r: 4, scaling: 2 / 4 },
    ],
    1,
  );
  // rsLoRA with patterns: α/√r per module.
  await expectImport(
    {
      use_rslora: true,
      r: 4,
      lora_alpha: 6,
      rank_pattern: { "query": 1 },
      alpha_pattern: { "value": 3 },
    },
    both(
      ["attention.self.query", "attention.self.value"],
      (_, k) => k.endsWith("query") ? { r: 1, scaling: 6 / 1 } : { r: 4, scaling: 3 / 2 },
    ),
    2,
  );
});

Deno.test("lora_bias: lora_B's bias is loaded and scaled with the update", async () => {
  await expectImport(
    { lora_bias: true, target_modules: ["query", "intermediate.dense"], lora_alpha: 12 },
    both(["attention.self.query", "intermediate.dense"], () => ({ r: 4, scaling: 3, bias: true })),
    3,
  );
});

Deno.test("target_modules as a string is a full-match regex; all-linear adapts every Linear but the head", async () => {
  await expectImport(
    { target_modules: "roberta\\.encoder\\.layer\\.1\\.attention\\.self\\.(query|key)" },
    [
      { module: layerModule(1, "attention.self.query"), r: 4, scaling: 2 },
      { module: layerModule(1, "attention.self.key"), r: 4, scaling: 2 },
    ],
    4,
  );
  // ".*dense" matches attention.output.dense, intermediate.dense and output.dense, but the
  // classifier's dense belongs to modules_to_save and is never adapted.
  await expectImport(
    { target_modules: ".*dense" },
    both(
      ["attention.output.dense", "intermediate.dense", "output.dense"],
      () => ({ r: 4, scaling: 2 }),
    ),
    5,
  );
  await expectImport(
    { target_modules: "all-linear" },
    both(Object.keys(SHAPES), () => ({ r: 4, scaling: 2 })),
    6,
  );
});

Deno.test("layers_to_transform keeps only the listed layers (with and without layers_pattern)", async () => {
  const layer1 = [
    { module: layerModule(1, "attention.self.query"), r: 4, scaling: 2 },
    { module: layerModule(1, "attention.self.value"), r: 4, scaling: 2 },
  ];
  await expectImport({ layers_to_transform: [1] }, layer1, 7);
  await expectImport({ layers_to_transform: 1, layers_pattern: "layer" }, layer1, 8);
  await expectImport(
    { layers_to_transform: [0], layers_pattern: ["layers", "layer"], target_modules: ["dense"] },
    ["attention.output.dense", "intermediate.dense", "output.dense"].map((k) => ({
      module: layerModule(0, k),
      r: 4,
      scaling: 2,
    })),
    9,
  );
  // An exact module name matches regardless of layers_to_transform (PEFT checks it first).
  await expectImport(
    { layers_to_transform: [0], target_modules: [layerModule(1, "attention.self.key"), "value"] },
    [
      { module: layerModule(0, "attention.self.value"), r: 4, scaling: 2 },
      { module: layerModule(1, "attention.self.key"), r: 4, scaling: 2 },
    ],
    10,
  );
});

Deno.test("exclude_modules as a list (exact or suffix) and as a full-match regex", async () => {
  await expectImport(
    { exclude_modules: [layerModule(0, "attention.self.value"), "layer.1.attention.self.query"] },
    [
      { module: layerModule(0, "attention.self.query"), r: 4, scaling: 2 },
      { module: layerModule(1, "attention.self.value"), r: 4, scaling: 2 },
    ],
    11,
  );
  await expectImport(
    { target_modules: "all-linear", exclude_modules: ".*\\.(intermediate|output)\\.dense" },
    both(["attention.self.query", "attention.self.key", "attention.self.value"], () => ({
      r: 4,
      scaling: 2,
    })),
    12,
  );
});

/** Write `config` with plain query/value tensors and expect loadAdapter to refuse it with `message`. */
async function expectRefused(config: Record<string, unknown>, message: RegExp): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await writePeft(
      dir,
      peftConfig(config),
      adapterTensors(
        both(["attention.self.query", "attention.self.value"], () => ({ r: 4, scaling: 2 })),
        30,
      ),
    );
    await rejects(loadAdapter(model(), dir, LOAD_CTX), (e: Error) => {
      const file = join(dir, "adapter_config.json");
      equal(e.message.includes(file), true, `names ${file}: ${e.message}`);
      equal(e.message.includes("\n"), false, "one line");
      equal(message.test(e.message), true, `${message} in: ${e.message}`);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A non-default value for each field only whose default we accept. */
const NON_DEFAULT: Record<string, unknown> = {
  bias: "all",
  ensure_weight_tying: true,
  megatron_config: { tensor_model_parallel_size: 2 },
  layer_replication: [[0, 2], [1, 2]],
  trainable_token_indices: [1, 2],
  target_parameters: ["mlp.experts.down_proj"],
  alora_invocation_tokens: [5, 6],
  use_qalora: true,
  use_bdlora: { nblocks: 2 },
  arrow_config: { top_k: 3 },
  velora_config: { rank: 4 },
  monteclora_config: { n: 2 },
  kasa_config: { r: 2 },
};

Deno.test("every field we do not honour is refused, naming the file and the field", async () => {
  const refusedFields = Object.entries(LORA_CONFIG_FIELDS)
    .filter(([, rule]) => rule.use === "default only")
    .map(([k]) => k);
  for (const field of refusedFields) {
    equal(field in NON_DEFAULT, true, `a non-default value for ${field}`);
    await expectRefused({ [field]: NON_DEFAULT[field] }, new RegExp(`field "${field}"`));
  }
  for (const field of Object.keys(NON_DEFAULT)) {
    equal(refusedFields.includes(field), true, `${field} is listed as refused`);
  }
  await expectRefused({ init_lora_weights: "loftq" }, /field "init_lora_weights"/);
  await expectRefused({ init_lora_weights: "corda" }, /field "init_lora_weights"/);
  await expectRefused({ some_future_option: 3 }, /field "some_future_option"/);
  await expectRefused({ target_modules: "query" }, /field "target_modules".*matches no Linear/);
  await expectRefused(
    { target_modules: ".*attention" },
    /field "target_modules" matches .*attention, which is not a Linear/,
  );
  await expectRefused(
    { target_modules: "all-linear", layers_to_transform: [0] },
    /field "layers_to_transform"/,
  );
  await expectRefused(
    { layers_pattern: "layer" },
    /field "layers_pattern" needs layers_to_transform/,
  );
  await expectRefused({ layers_to_transform: ["0"] }, /field "layers_to_transform"/);
  await expectRefused({ rank_pattern: { query: 0 } }, /field "rank_pattern" entry "query"/);
  await expectRefused({ alpha_pattern: { "(?P<x>query)": 4 } }, /field "alpha_pattern"/);
  await expectRefused({ use_dora: true, lora_bias: true }, /field "lora_bias"/);
  await expectRefused(
    { init_lora_weights: "olora", rank_pattern: { query: 2 } },
    /field "rank_pattern"/,
  );
  await expectRefused({ target_modules: 3 }, /field "target_modules"/);
});
