/**
 * config.json schemas: the real roberta-base config (../shared/data/tokenizers/roberta-base),
 * synthetic BERT, LLaMA 2/3, TinyLlama and Mistral configs with Hugging Face's published values,
 * and errors that name the file, the field and what was expected. Host-only: no GPU needed.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  ConfigError,
  isDecoderConfig,
  isEncoderConfig,
  loadConfig,
  type ModelConfig,
  parseConfig,
} from "../../models/config.ts";

const ROBERTA_DIR = new URL("../../../shared/data/tokenizers/roberta-base", import.meta.url)
  .pathname;
const hasRoberta = await Deno.stat(join(ROBERTA_DIR, "config.json")).then(() => true, () => false);

/** Assert parsing fails with a ConfigError whose message names `file` and matches `pattern`. */
function assertConfigError(json: unknown, pattern: RegExp, file = "models/x/config.json"): void {
  assert.throws(() => parseConfig(json, file), (e: unknown) => {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${e}`);
    assert.ok(e.message.startsWith(`${file}: `), `message should name the file: ${e.message}`);
    assert.match(e.message, pattern);
    return true;
  });
}

// TinyLlama-1.1B-Chat-v1.0's config.json (values as published).
const TINYLLAMA = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: "silu",
  hidden_size: 2048,
  initializer_range: 0.02,
  intermediate_size: 5632,
  max_position_embeddings: 2048,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 22,
  num_key_value_heads: 4,
  pretraining_tp: 1,
  rms_norm_eps: 1e-05,
  rope_scaling: null,
  rope_theta: 10000.0,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  transformers_version: "4.35.0",
  use_cache: true,
  vocab_size: 32000,
};

// Llama-3.1-8B's config.json (values as published).
const LLAMA31 = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  hidden_act: "silu",
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-05,
  rope_scaling: {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 8192,
    rope_type: "llama3",
  },
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  use_cache: true,
  vocab_size: 128256,
};

// Mistral-7B-v0.3's config.json (values as published).
const MISTRAL = {
  architectures: ["MistralForCausalLM"],
  attention_dropout: 0.0,
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: "silu",
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 32768,
  model_type: "mistral",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-05,
  rope_theta: 1000000.0,
  sliding_window: null,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  vocab_size: 32768,
};

// bert-base-uncased's config.json (values as published).
const BERT = {
  architectures: ["BertForMaskedLM"],
  attention_probs_dropout_prob: 0.1,
  gradient_checkpointing: false,
  hidden_act: "gelu",
  hidden_dropout_prob: 0.1,
  hidden_size: 768,
  initializer_range: 0.02,
  intermediate_size: 3072,
  layer_norm_eps: 1e-12,
  max_position_embeddings: 512,
  model_type: "bert",
  num_attention_heads: 12,
  num_hidden_layers: 12,
  pad_token_id: 0,
  position_embedding_type: "absolute",
  transformers_version: "4.6.0.dev0",
  type_vocab_size: 2,
  use_cache: true,
  vocab_size: 30522,
};

Deno.test({
  name: "real roberta-base config.json parses as RoBERTa (model_type inferred from the folder)",
  ignore: !hasRoberta,
  async fn() {
    const config = await loadConfig(ROBERTA_DIR);
    assert.equal(config.model_type, "roberta");
    assert.ok(isEncoderConfig(config) && !isDecoderConfig(config));
    if (config.model_type !== "roberta") throw new Error("unreachable");
    assert.deepEqual(
      {
        hidden: config.hidden_size,
        heads: config.num_attention_heads,
        headDim: config.head_dim,
        layers: config.num_hidden_layers,
        ffn: config.intermediate_size,
        vocab: config.vocab_size,
        positions: config.max_position_embeddings,
        types: config.type_vocab_size,
        eps: config.layer_norm_eps,
        act: config.hidden_act,
        pad: config.pad_token_id,
        bos: config.bos_token_id,
        eos: config.eos_token_id,
        labels: config.num_labels,
      },
      {
        hidden: 768,
        heads: 12,
        headDim: 64,
        layers: 12,
        ffn: 3072,
        vocab: 50265,
        positions: 514,
        types: 1,
        eps: 1e-5,
        act: "gelu",
        pad: 1, // RoBERTa's defaults: <s>=0, <pad>=1, </s>=2
        bos: 0,
        eos: 2,
        labels: 2,
      },
    );
    assert.deepEqual(config.id2label, { 0: "LABEL_0", 1: "LABEL_1" });
    assert.deepEqual(config.label2id, { LABEL_0: 0, LABEL_1: 1 });
  },
});

Deno.test("model_type is inferred from architectures, never guessed without a hint", async () => {
  const base = { hidden_size: 8, num_attention_heads: 2, num_hidden_layers: 1 };
  const dims = { ...base, intermediate_size: 16, vocab_size: 11 };
  assert.equal(
    parseConfig({ ...dims, architectures: ["RobertaForSequenceClassification"] }, "c.json")
      .model_type,
    "roberta",
  );
  assert.equal(parseConfig({ ...dims, architectures: ["BertModel"] }, "c.json").model_type, "bert");
  // HF cache layout: the repo folder sits above snapshots/<hash>/.
  const cached = "hub/models--FacebookAI--roberta-base/snapshots/abc123/config.json";
  assert.equal(parseConfig(dims, cached).model_type, "roberta");
  assertConfigError(
    dims,
    /field "model_type": missing, .*expected one of roberta, bert, llama, mistral/,
    "config.json",
  );
  if (hasRoberta) {
    const json = JSON.parse(await Deno.readTextFile(join(ROBERTA_DIR, "config.json")));
    assertConfigError(json, /field "model_type": missing/, "config.json");
  }
});

Deno.test("BERT config: published values and BERT's own defaults", () => {
  const config = parseConfig(BERT, "bert-base-uncased/config.json");
  assert.equal(config.model_type, "bert");
  if (config.model_type !== "bert") throw new Error("unreachable");
  assert.equal(config.type_vocab_size, 2);
  assert.equal(config.layer_norm_eps, 1e-12);
  assert.equal(config.pad_token_id, 0);
  assert.equal(config.tie_word_embeddings, true);
  assert.equal(config.position_embedding_type, "absolute");
  const minimal = parseConfig({
    model_type: "bert",
    vocab_size: 7,
    hidden_size: 33,
    num_hidden_layers: 1,
    num_attention_heads: 3,
    intermediate_size: 130,
  }, "config.json");
  assert.equal(minimal.head_dim, 11);
  assert.equal(minimal.max_position_embeddings, 512);
});

Deno.test("TinyLlama config: grouped-query attention and LLaMA defaults", () => {
  const config = parseConfig(TINYLLAMA, "TinyLlama-1.1B/config.json");
  assert.ok(isDecoderConfig(config));
  if (config.model_type !== "llama") throw new Error("unreachable");
  assert.equal(config.num_key_value_heads, 4);
  assert.equal(config.num_attention_heads / config.num_key_value_heads, 8);
  assert.equal(config.head_dim, 64);
  assert.equal(config.rms_norm_eps, 1e-5);
  assert.equal(config.rope_theta, 10000);
  assert.equal(config.rope_scaling, null);
  assert.equal(config.hidden_act, "silu");
  assert.equal(config.tie_word_embeddings, false);
  assert.equal(config.attention_bias, false);
  assert.equal(config.mlp_bias, false);
  assert.equal(config.sliding_window, null);
  assert.equal(config.torch_dtype, "bfloat16");
});

Deno.test("LLaMA 2 config: key/value heads default to query heads", () => {
  const { num_key_value_heads: _, ...llama2 } = {
    ...TINYLLAMA,
    hidden_size: 4096,
    intermediate_size: 11008,
    num_attention_heads: 32,
    num_hidden_layers: 32,
    num_key_value_heads: 32,
    max_position_embeddings: 4096,
  };
  const config = parseConfig(llama2, "Llama-2-7b/config.json");
  if (config.model_type !== "llama") throw new Error("unreachable");
  assert.equal(config.num_key_value_heads, 32);
  assert.equal(config.head_dim, 128);
});

Deno.test("LLaMA 3.1 config: llama3 RoPE scaling, several eos ids, explicit head_dim", () => {
  const config = parseConfig(LLAMA31, "Llama-3.1-8B/config.json");
  if (config.model_type !== "llama") throw new Error("unreachable");
  assert.deepEqual(config.rope_scaling, {
    rope_type: "llama3",
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 8192,
  });
  assert.equal(config.rope_theta, 500000);
  assert.deepEqual(config.eos_token_id, [128001, 128008, 128009]);
  assert.equal(config.bos_token_id, 128000);
  // Llama 3.2 1B states head_dim and ties the LM head to the embedding.
  const small = parseConfig(
    { ...LLAMA31, hidden_size: 2048, head_dim: 64, tie_word_embeddings: true },
    "Llama-3.2-1B/config.json",
  );
  assert.equal(small.head_dim, 64);
  assert.equal(small.tie_word_embeddings, true);
});

Deno.test("rope_scaling: old `type` key, linear, default, transformers v5 rope_parameters", () => {
  const linear = parseConfig(
    { ...TINYLLAMA, rope_scaling: { type: "linear", factor: 4 } },
    "config.json",
  );
  if (linear.model_type !== "llama") throw new Error("unreachable");
  assert.deepEqual(linear.rope_scaling, { rope_type: "linear", factor: 4 });
  const none = parseConfig({ ...TINYLLAMA, rope_scaling: { rope_type: "default" } }, "c.json");
  if (none.model_type !== "llama") throw new Error("unreachable");
  assert.equal(none.rope_scaling, null);
  const { rope_theta: _t, rope_scaling: _s, ...v5 } = LLAMA31;
  const folded = parseConfig(
    { ...v5, rope_parameters: { ...LLAMA31.rope_scaling, rope_theta: 500000 } },
    "c.json",
  );
  if (folded.model_type !== "llama") throw new Error("unreachable");
  assert.equal(folded.rope_theta, 500000);
  assert.deepEqual(folded.rope_scaling, LLAMA31.rope_scaling);
});

Deno.test("rope_scaling: unknown types and inconsistent llama3 factors are errors", () => {
  assertConfigError(
    { ...TINYLLAMA, rope_scaling: { type: "dynamic", factor: 2 } },
    /field "rope_scaling\.rope_type": "dynamic" is not supported; expected one of "default", "linear", "llama3"/,
  );
  assertConfigError(
    { ...TINYLLAMA, rope_scaling: { rope_type: "linear" } },
    /field "rope_scaling\.factor": required, expected a number/,
  );
  assertConfigError(
    { ...LLAMA31, rope_scaling: { ...LLAMA31.rope_scaling, high_freq_factor: 1 } },
    /field "rope_scaling\.high_freq_factor": must be greater than low_freq_factor/,
  );
});

Deno.test("Mistral config: GQA with no sliding window; a short window is unsupported", () => {
  const config = parseConfig(MISTRAL, "Mistral-7B-v0.3/config.json");
  if (config.model_type !== "mistral") throw new Error("unreachable");
  assert.equal(config.num_key_value_heads, 8);
  assert.equal(config.head_dim, 128);
  assert.equal(config.sliding_window, null);
  assert.equal(config.rope_theta, 1e6);
  // A window at least as long as the context never masks anything.
  const covering = parseConfig({ ...MISTRAL, sliding_window: 32768 }, "c.json");
  assert.equal(covering.model_type === "mistral" && covering.sliding_window, 32768);
  // Mistral-7B-v0.1 attends within 4096 tokens of a 32768 context.
  assertConfigError(
    { ...MISTRAL, sliding_window: 4096 },
    /field "sliding_window": unsupported: a 4096-token sliding window is shorter than max_position_embeddings 32768/,
  );
  // Absent means Hugging Face's default window of 4096.
  const { sliding_window: _, ...noWindow } = MISTRAL;
  assertConfigError(noWindow, /field "sliding_window": unsupported/);
});

Deno.test("unsupported model_type: the error lists the supported ones", () => {
  assertConfigError(
    { ...TINYLLAMA, model_type: "gpt2" },
    /field "model_type": "gpt2" is not supported; supported model types: roberta, bert, llama, mistral/,
  );
  assertConfigError(
    { ...TINYLLAMA, model_type: 3 },
    /field "model_type": 3 is not supported/,
  );
});

Deno.test("wrong field types and values name the field and what was expected", () => {
  assertConfigError(
    { ...TINYLLAMA, hidden_size: "2048" },
    /field "hidden_size": expected a number, got "2048"/,
  );
  assertConfigError(
    { ...TINYLLAMA, num_hidden_layers: 2.5 },
    /field "num_hidden_layers": expected an integer, got 2.5/,
  );
  assertConfigError(
    { ...TINYLLAMA, vocab_size: 0 },
    /field "vocab_size": expected a value > 0, got 0/,
  );
  const { intermediate_size: _, ...missing } = TINYLLAMA;
  assertConfigError(missing, /field "intermediate_size": required, expected a number/);
  assertConfigError(
    { ...TINYLLAMA, hidden_act: "gelu" },
    /field "hidden_act": expected "silu", got "gelu" \(no other activation/,
  );
  assertConfigError(
    { ...BERT, hidden_act: "relu" },
    /field "hidden_act": expected "gelu", got "relu"/,
  );
  assertConfigError(
    { ...BERT, position_embedding_type: "relative_key" },
    /field "position_embedding_type": expected "absolute", got "relative_key"/,
  );
  assertConfigError(
    { ...LLAMA31, eos_token_id: [128001, "x"] },
    /field "eos_token_id\[1\]": expected a number, got "x"/,
  );
  assertConfigError(
    { ...LLAMA31, eos_token_id: true },
    /field "eos_token_id": expected a number or an array, got true/,
  );
  assertConfigError(
    { ...TINYLLAMA, attention_bias: "no" },
    /field "attention_bias": expected a boolean/,
  );
  // Every problem is reported at once.
  assertConfigError(
    { ...TINYLLAMA, rms_norm_eps: -1, rope_theta: null },
    /field "rms_norm_eps": expected a value > 0, got -1; field "rope_theta": expected a number, got null/,
  );
  assertConfigError([1, 2], /field "\(root\)": expected a JSON object, got an array/);
});

Deno.test("head counts must divide: heads into hidden_size, kv heads into heads", () => {
  assertConfigError(
    { ...TINYLLAMA, num_key_value_heads: 5 },
    /field "num_key_value_heads": 5 does not divide num_attention_heads 32/,
  );
  assertConfigError(
    { ...BERT, num_attention_heads: 7 },
    /field "num_attention_heads": 7 does not divide hidden_size 768/,
  );
});

Deno.test("labels: id2label defines num_labels; contradictions are errors", () => {
  const config: ModelConfig = parseConfig(
    {
      ...BERT,
      id2label: { "0": "negative", "1": "neutral", "2": "positive" },
      label2id: { negative: 0, neutral: 1, positive: 2 },
      problem_type: "single_label_classification",
    },
    "c.json",
  );
  assert.equal(config.num_labels, 3);
  assert.deepEqual(config.label2id, { negative: 0, neutral: 1, positive: 2 });
  assert.equal(config.problem_type, "single_label_classification");
  const regression = parseConfig({ ...BERT, num_labels: 1, problem_type: "regression" }, "c.json");
  assert.deepEqual(regression.id2label, { 0: "LABEL_0" });
  assertConfigError(
    { ...BERT, num_labels: 3, id2label: { "0": "a", "1": "b" } },
    /field "num_labels": is 3, but id2label has 2 labels/,
  );
  assertConfigError(
    { ...BERT, id2label: { "0": "a", x: "b" } },
    /field "id2label\.x": class ids must be the integers 0\.\.1, got "x"/,
  );
  assertConfigError(
    { ...BERT, id2label: { "0": "a", "1": "b" }, label2id: { a: 1 } },
    /field "label2id\.a": maps to 1, but id2label\[1\] is "b"/,
  );
  assertConfigError(
    { ...BERT, problem_type: "ranking" },
    /field "problem_type": expected "regression" or "single_label_classification" or "multi_label_classification", got "ranking"/,
  );
});

Deno.test("loadConfig: a missing file and invalid JSON name the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "config_test_" });
  try {
    const file = join(dir, "config.json");
    await assert.rejects(loadConfig(dir), (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, new RegExp(`^${file}: .*not found; expected a config\\.json`));
      return true;
    });
    await Deno.writeTextFile(file, "{ model_type: llama }");
    await assert.rejects(loadConfig(dir), new RegExp(`^ConfigError: ${file}: .*not valid JSON`));
    await Deno.writeTextFile(file, JSON.stringify(MISTRAL));
    assert.equal((await loadConfig(file)).model_type, "mistral");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
