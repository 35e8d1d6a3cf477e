/**
 * Adapters written by hand in Hugging Face PEFT's format (every field PEFT 0.19 writes, tensors
 * under `base_model.model.`) load into a model whose forward equals an explicit reference: the
 * plain model with W' = W + s·B·A (and b' = b + s·b_B under lora_bias) folded in on the host, for
 * exactly the modules, ranks and scalings PEFT's rules give — spelled out per test, not computed
 * by the loader's code. Covers rank_pattern and alpha_pattern (first matching key wins),
 * lora_bias, regex target_modules (full match), "all-linear", layers_to_transform with and
 * without layers_pattern, exclude_modules as a list and as a regex. Every field we do not honour
 * is refused naming the file and the field; lora_bias merges as PEFT does; IA3's feed-forward
 * modules follow PEFT's rule.
 */
import { equal, rejects, throws } from "node:assert/strict";
import { join } from "node:path";
import { assertClose, randomArray, setup } from "../helpers.ts";
import { backward, noGrad, scope, scopeAsync, tensor } from "../../ops/mod.ts";
import {
  applyMethod,
  expandAllLinear,
  loadAdapter,
  LORA_CONFIG_FIELDS,
  namedTrainable,
  writeInto,
} from "../../methods/mod.ts";
import { LlamaForCausalLM } from "../../models/llama.ts";
import { openSafetensors, writeSafetensors } from "../../models/safetensors.ts";
import { EncoderForSequenceClassification } from "../../models/encoder.ts";
import { encoderDims, hostSource, llamaDims, llamaWeights } from "../models/fixtures.ts";
import type { HostWeights } from "../models/reference.ts";
import {
  evalLogits,
  fixedBatchLoss,
  MAX_POSITIONS,
  TINY_ROBERTA,
  tinyLlama,
  tinyLlamaDims,
  tinyRoberta,
} from "./support.ts";

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
  await expectRefused({ init_lora_weights: "eva", lora_bias: true }, /field "lora_bias"/);
  await expectRefused(
    { init_lora_weights: "olora", rank_pattern: { query: 2 } },
    /field "rank_pattern"/,
  );
  await expectRefused({ target_modules: 3 }, /field "target_modules"/);
});

Deno.test("a lora_bias adapter merges into the base bias with unchanged outputs; without a base bias merge is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const expected = both(["attention.self.value"], () => ({ r: 4, scaling: 2, bias: true }));
    await writePeft(
      dir,
      peftConfig({ lora_bias: true, target_modules: ["value"] }),
      adapterTensors(expected, 40),
    );
    const m = model();
    const adapter = await loadAdapter(m, dir, LOAD_CTX);
    const before = await evalLogits(m);
    adapter.merge();
    assertClose(await evalLogits(m), before, { atol: 2e-5, rtol: 1e-4 }, "merged");
    equal(m.namedParameters().some(([n]) => n.includes("lora_")), false, "plain model after merge");
    // LLaMA's projections have no bias: PEFT cannot merge lora_bias there, neither do we.
    const llama = tinyLlama({ layers: 1, seed: 2 });
    const q = "model.layers.0.self_attn.q_proj";
    const llamaDir = await Deno.makeTempDir();
    try {
      const t = new Map([
        [`${q}.lora_A.weight`, { shape: [2, 8], data: new Float32Array(16).fill(0.1) }],
        [`${q}.lora_B.weight`, { shape: [8, 2], data: new Float32Array(16).fill(0.1) }],
        [`${q}.lora_B.bias`, { shape: [8], data: new Float32Array(8).fill(0.1) }],
      ]);
      await writePeft(
        llamaDir,
        peftConfig({
          r: 2,
          lora_bias: true,
          target_modules: ["q_proj"],
          task_type: "CAUSAL_LM",
          modules_to_save: null,
        }),
        t,
      );
      const loaded = await loadAdapter(llama.model(), llamaDir, {
        ...LOAD_CTX,
        taskType: "CAUSAL_LM",
      });
      throws(() => loaded.merge(), /q_proj: cannot merge lora_bias into a layer without a bias/);
    } finally {
      await Deno.remove(llamaDir, { recursive: true });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("all-linear on a causal LM adapts every projection but lm_head", async () => {
  const dims = { ...tinyLlamaDims(2), tied: false };
  const weights = llamaWeights(dims, 8);
  const build = (w: HostWeights) => new LlamaForCausalLM(llamaDims(dims), hostSource(w));
  const hd = dims.hidden / dims.heads, kv = dims.kvHeads * hd;
  const shapes: Record<string, [number, number]> = {
    "self_attn.q_proj": [dims.hidden, dims.hidden],
    "self_attn.k_proj": [kv, dims.hidden],
    "self_attn.v_proj": [kv, dims.hidden],
    "self_attn.o_proj": [dims.hidden, dims.hidden],
    "mlp.gate_proj": [dims.inter, dims.hidden],
    "mlp.up_proj": [dims.inter, dims.hidden],
    "mlp.down_proj": [dims.hidden, dims.inter],
  };
  const r = 2, scaling = 8 / 2;
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  const merged: HostWeights = new Map([...weights].map(([k, v]) => [k, Float64Array.from(v)]));
  let seed = 50;
  for (let l = 0; l < dims.layers; l++) {
    for (const [kind, [dOut, dIn]] of Object.entries(shapes)) {
      const name = `model.layers.${l}.${kind}`;
      const a = Float32Array.from(randomArray(r * dIn, seed++, -0.3, 0.3));
      const b = Float32Array.from(randomArray(dOut * r, seed++, -0.3, 0.3));
      tensors.set(`${name}.lora_A.weight`, { shape: [r, dIn], data: a });
      tensors.set(`${name}.lora_B.weight`, { shape: [dOut, r], data: b });
      const w = merged.get(`${name}.weight`)!;
      for (let o = 0; o < dOut; o++) {
        for (let i = 0; i < dIn; i++) {
          let acc = 0;
          for (let k = 0; k < r; k++) acc += b[o * r + k] * a[k * dIn + i];
          w[o * dIn + i] += scaling * acc;
        }
      }
    }
  }
  const dir = await Deno.makeTempDir();
  try {
    await writePeft(
      dir,
      peftConfig({
        r,
        target_modules: "all-linear",
        task_type: "CAUSAL_LM",
        modules_to_save: null,
      }),
      tensors,
    );
    const loaded = build(weights);
    await loadAdapter(loaded, dir, { ...LOAD_CTX, taskType: "CAUSAL_LM" });
    const logits = (m: LlamaForCausalLM) =>
      scopeAsync(() =>
        noGrad(() =>
          m.logits(m.hidden({ ids: tensor(Int32Array.from([1, 4, 7, 2, 9, 3]), [2, 3]) }))
        ).read()
      );
    const want = await logits(build(merged));
    assertClose(await logits(loaded), want, { atol: 2e-5, rtol: 1e-4 }, "all-linear LLaMA");
    equal(
      loaded.namedParameters().some(([n]) => n.startsWith("lm_head.lora")),
      false,
      "lm_head untouched",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("IA3 feedforward_modules: a regex string or a plain-suffix list selects the same modules", async () => {
  const source = model();
  const ia3 = applyMethod("ia3", source, { feedforward: ["intermediate.dense"] }, {
    ...LOAD_CTX,
    targets: ["key", "value", "intermediate.dense"],
    headModules: ["classifier"],
  });
  for (
    const [, t] of ia3.groups().flatMap((g) => g.names.map((n, i) => [n, g.params[i]] as const))
  ) {
    writeInto(t, Float32Array.from(randomArray(t.size, t.size, 0.5, 1.5)));
  }
  const want = await evalLogits(source);
  const dir = await Deno.makeTempDir();
  try {
    await ia3.save(dir);
    const file = join(dir, "adapter_config.json");
    const saved = JSON.parse(await Deno.readTextFile(file));
    // A regex (full match), a dotted name, and a plain suffix ("dense", matching without a dot
    // as PEFT's endswith does) all select intermediate.dense among the targets.
    for (const ff of [".*\\.intermediate\\.dense", ["intermediate.dense"], ["dense"], []]) {
      await Deno.writeTextFile(file, JSON.stringify({ ...saved, feedforward_modules: ff }));
      const m = model();
      if (Array.isArray(ff) && ff.length === 0) {
        // No feed-forward module: intermediate.dense would scale its output, another model,
        // and the saved vector's shape says so.
        await rejects(loadAdapter(m, dir, LOAD_CTX), /intermediate\.dense\.ia3_l has shape/);
        continue;
      }
      await loadAdapter(m, dir, LOAD_CTX);
      assertClose(await evalLogits(m), want, { atol: 1e-5, rtol: 1e-5 }, JSON.stringify(ff));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("AdaLoRA, IA3 and VeRA configs: fields we do not honour are refused by name", async () => {
  for (
    const [type, field, value] of [
      ["VERA", "bias", "vera_and_more"],
      ["ADALORA", "use_dora", true],
      ["IA3", "some_future_option", { a: 1 }],
    ] as const
  ) {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeTextFile(
        join(dir, "adapter_config.json"),
        JSON.stringify({ peft_type: type, target_modules: ["query"], [field]: value }),
      );
      await writeSafetensors(join(dir, "adapter_model.safetensors"), [], { format: "pt" });
      await rejects(
        loadAdapter(model(), dir, LOAD_CTX),
        new RegExp(`adapter_config.json: field "${field}"`),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test('bias "lora_only" and "all": trained base biases are restored; PEFT\'s head copies are passed over', async () => {
  const expected = both(
    ["attention.self.query", "attention.self.value"],
    () => ({ r: 4, scaling: 2 }),
  );
  for (const mode of ["lora_only", "all"] as const) {
    const dir = await Deno.makeTempDir();
    try {
      const tensors = adapterTensors(expected, 60);
      const reference = mergedWeights(expected, tensors);
      let seed = 70;
      const trained = (name: string, as: string) => {
        const data = Float32Array.from(randomArray(weights.get(name)!.length, seed++, -0.2, 0.2));
        tensors.set(as, { shape: [data.length], data });
        reference.set(name, Float64Array.from(data));
      };
      for (const e of expected) trained(`${e.module}.bias`, `${e.module}.base_layer.bias`);
      if (mode === "all") {
        for (const name of weights.keys()) {
          if (!name.endsWith(".bias") || name.startsWith("classifier.")) continue;
          if (expected.some((e) => name === `${e.module}.bias`)) continue;
          trained(name, name); // unadapted Linears and every LayerNorm
        }
        // The modules_to_save wrapper's own entries: the untouched original and the trained copy.
        for (const p of ["dense", "out_proj"]) {
          const head = tensors.get(`classifier.${p}.bias`)!;
          tensors.set(`classifier.original_module.${p}.bias`, {
            shape: head.shape,
            data: Float32Array.from(weights.get(`classifier.${p}.bias`)!),
          });
          tensors.set(`classifier.modules_to_save.default.${p}.bias`, head);
        }
      }
      await writePeft(dir, peftConfig({ bias: mode }), tensors);
      const loaded = model();
      const adapter = await loadAdapter(loaded, dir, LOAD_CTX);
      const want = await evalLogits(
        new EncoderForSequenceClassification(
          encoderDims(TINY_ROBERTA, MAX_POSITIONS),
          hostSource(reference),
        ),
      );
      assertClose(await evalLogits(loaded), want, { atol: 2e-5, rtol: 1e-4 }, mode);
      await rejects(adapter.save(dir), /trained base biases.*merge it/);
      // A bias for a module the model lacks is still an unused tensor, named.
      tensors.set("roberta.encoder.layer.7.output.dense.bias", {
        shape: [H],
        data: new Float32Array(H),
      });
      await writePeft(dir, peftConfig({ bias: mode }), tensors);
      await rejects(
        loadAdapter(model(), dir, LOAD_CTX),
        /layer\.7\.output\.dense\.bias belongs to roberta\.encoder\.layer\.7/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("DoRA (use_dora) takes the per-module r and α of rank_pattern / alpha_pattern", async () => {
  const expected: Expected[] = [
    { module: layerModule(0, "attention.self.query"), r: 2, scaling: 16 / 2 },
    { module: layerModule(0, "attention.self.value"), r: 4, scaling: 8 / 4 },
    { module: layerModule(1, "attention.self.query"), r: 2, scaling: 16 / 2 },
    { module: layerModule(1, "attention.self.value"), r: 4, scaling: 8 / 4 },
  ];
  const tensors = adapterTensors(expected, 80);
  // The reference: W' = diag(m / ‖W + s·B·A‖_row)·(W + s·B·A), formed on the host.
  const reference = mergedWeights(expected, tensors);
  for (const [i, e] of expected.entries()) {
    const w = reference.get(`${e.module}.weight`)!;
    const m = Float32Array.from(randomArray(H, 90 + i, 0.5, 1.5));
    tensors.set(`${e.module}.lora_magnitude_vector`, { shape: [H], data: m });
    for (let o = 0; o < H; o++) {
      let norm = 0;
      for (let k = 0; k < H; k++) norm += w[o * H + k] ** 2;
      const f = m[o] / Math.sqrt(norm);
      for (let k = 0; k < H; k++) w[o * H + k] *= f;
    }
  }
  const dir = await Deno.makeTempDir();
  try {
    await writePeft(
      dir,
      peftConfig({ use_dora: true, rank_pattern: { query: 2 }, alpha_pattern: { query: 16 } }),
      tensors,
    );
    const loaded = model();
    await loadAdapter(loaded, dir, LOAD_CTX);
    const want = await evalLogits(
      new EncoderForSequenceClassification(
        encoderDims(TINY_ROBERTA, MAX_POSITIONS),
        hostSource(reference),
      ),
    );
    assertClose(await evalLogits(loaded), want, { atol: 2e-5, rtol: 1e-4 }, "DoRA with patterns");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("training with --targets all-linear adapts what PEFT would, and saves names PEFT reads back", async () => {
  const m = model();
  const targets = expandAllLinear(m, ["All-Linear"], ["classifier"], "SEQ_CLS");
  equal(targets.length, 2 * Object.keys(SHAPES).length);
  equal(
    targets.some((t) => t.startsWith("classifier")),
    false,
    "the head is trained whole, not adapted",
  );
  equal(expandAllLinear(m, ["query", "value"], ["classifier"], "SEQ_CLS").join(), "query,value");
  const llama = new LlamaForCausalLM(
    llamaDims({ ...tinyLlamaDims(1), tied: false }),
    hostSource(llamaWeights({ ...tinyLlamaDims(1), tied: false }, 3)),
  );
  const names = expandAllLinear(llama, ["all-linear"], [], null);
  equal(names.length, 7);
  equal(names.includes("lm_head"), false, "the output layer is left alone");
  // Saved with the resolved names, the adapter loads back into the same modules.
  const adapter = applyMethod("lora", m, { r: 2 }, {
    ...LOAD_CTX,
    targets,
    headModules: ["classifier"],
  });
  for (const g of adapter.groups()) {
    for (const t of g.params) {
      writeInto(t, Float32Array.from(randomArray(t.size, t.size, -0.2, 0.2)));
    }
  }
  const dir = await Deno.makeTempDir();
  try {
    await adapter.save(dir);
    const fresh = model();
    await loadAdapter(fresh, dir, LOAD_CTX);
    assertClose(
      await evalLogits(fresh),
      await evalLogits(m),
      { atol: 1e-6, rtol: 1e-6 },
      "round trip",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loraBias trains: lora_B.bias is a trainable parameter with a gradient and is saved as PEFT names it", async () => {
  const m = model();
  const adapter = applyMethod("lora", m, { r: 2, loraBias: true }, {
    ...LOAD_CTX,
    targets: ["value"],
    headModules: ["classifier"],
  });
  const named = namedTrainable(adapter.groups());
  const biases = named.filter(([n]) => n.endsWith("lora_B.bias"));
  equal(biases.length, 2);
  scope(() => backward(fixedBatchLoss(m)));
  for (const [n, t] of biases) {
    const g = await t.grad!.read();
    equal(g.some((v) => v !== 0), true, `${n} has a gradient`);
  }
  const dir = await Deno.makeTempDir();
  try {
    await adapter.save(dir);
    const config = JSON.parse(await Deno.readTextFile(join(dir, "adapter_config.json")));
    equal(config.lora_bias, true);
    using reader = await openSafetensors(join(dir, "adapter_model.safetensors"));
    equal(
      reader.has(`base_model.model.${layerModule(1, "attention.self.value")}.lora_B.bias`),
      true,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
