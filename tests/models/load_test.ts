/**
 * loadModel on checkpoints in exact Hugging Face layout, written by tests/fixtures/make_fixtures.ts
 * into temporary folders: a small randomly initialised RoBERTa with the REAL roberta-base tokenizer
 * (no pretrained encoder weights are reachable offline) and a small LLaMA with the real
 * stories260K tokenizer. Forward passes are compared with the float64 references of
 * tests/models/reference.ts on the weights read back from the written safetensors files.
 *
 * Needs ../shared/data (tokenizers/roberta-base, models/stories260K); without it every test here
 * is reported as ignored, with the reason printed once.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { rt, scopeAsync, type Tensor, tensor } from "../../ops/mod.ts";
import { robertaPositionIds } from "../../models/encoder.ts";
import type { LlamaForCausalLM } from "../../models/llama.ts";
import { type LoadedModel, loadModel, type LoadOptions } from "../../models/load.ts";
import {
  openCheckpoint,
  SAFETENSORS_FILE,
  SAFETENSORS_INDEX_FILE,
  type SafetensorsEntry,
  writeSafetensors,
} from "../../models/safetensors.ts";
import { loadTokenizer } from "../../models/tokenizer.ts";
import {
  type LlamaFixtureOptions,
  makeLlamaFixture,
  makeRobertaFixture,
  type RobertaFixtureOptions,
  SHARED_DATA_DIR,
} from "../fixtures/make_fixtures.ts";
import { assertClose, setup } from "../helpers.ts";
import { encoderWeights, llamaWeights } from "./fixtures.ts";
import {
  encoderRef,
  type HostWeights,
  llamaRef,
  type RefEncoderDims,
  type RefLlamaDims,
} from "./reference.ts";

const NEEDED = ["tokenizers/roberta-base/vocab.json", "models/stories260K/tok512.bin"];
const missing = [];
for (const f of NEEDED) {
  if (!(await Deno.stat(join(SHARED_DATA_DIR, f)).then(() => true, () => false))) missing.push(f);
}
const ignore = missing.length > 0;
if (ignore) console.warn(`load_test: ignored, ${SHARED_DATA_DIR} lacks ${missing.join(", ")}`);
else await setup();

/**
 * Small shapes; RoBERTa's vocabulary is the real 50,265 whatever the width. Weights are drawn
 * with std 0.2 instead of Hugging Face's 0.02: at 0.02 the attention scores are ≈ 0, attention
 * averages uniformly, and a loader that swapped query and key (or broke RoPE) would go unnoticed.
 */
const ROBERTA: RobertaFixtureOptions = {
  layers: 2,
  hidden: 16,
  heads: 4,
  intermediate: 24,
  numLabels: 3,
  seed: 7,
  initializerRange: 0.2,
};
const LLAMA: LlamaFixtureOptions = {
  layers: 2,
  hidden: 32,
  heads: 4,
  kvHeads: 2,
  intermediate: 48,
  initializerRange: 0.2,
};

/** Forward tolerances of the f32 engine against the float64 reference. */
const F32_TOL = { atol: 2e-5, rtol: 1e-4 };

function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore, fn });
}

/** A temporary folder for one test, removed afterwards. */
async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "peft-load-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Every tensor of the checkpoint in `dir`, widened to float64, by name. */
async function hostWeights(dir: string): Promise<HostWeights> {
  using reader = await openCheckpoint(dir);
  const w: HostWeights = new Map();
  for (const name of reader.names) w.set(name, Float64Array.from(await reader.readF32(name)));
  return w;
}

/** Rewrite `model.safetensors` in `dir` through `edit` (renamed, dropped or reshaped tensors). */
async function rewriteCheckpoint(
  dir: string,
  edit: (entries: SafetensorsEntry[]) => SafetensorsEntry[],
): Promise<void> {
  const entries: SafetensorsEntry[] = [];
  {
    using reader = await openCheckpoint(dir);
    for (const name of reader.names) {
      const info = reader.info(name);
      entries.push({ name, dtype: "F32", shape: info.shape, data: await reader.readF32(name) });
    }
  }
  await writeSafetensors(join(dir, SAFETENSORS_FILE), edit(entries), { format: "pt" });
}

function liveWeightBytes(): number {
  return rt().pool.stats().live.weights;
}

// ---- RoBERTa ------------------------------------------------------------------------------------

/** Two real sentences through the fixture's tokenizer, right-padded with <pad> (id 1). */
async function robertaBatch(dir: string): Promise<{ ids: number[][]; mask: number[][] }> {
  const tok = await loadTokenizer(dir);
  const batch = tok.encodeBatch(["Hello world", "The quick brown fox jumps over the lazy dog."], {
    padding: "longest",
  });
  assert.ok(batch.inputIds[0].includes(1), "row 0 is padded");
  return { ids: batch.inputIds, mask: batch.attentionMask };
}

async function encoderLogits(
  loaded: LoadedModel,
  batch: { ids: number[][]; mask: number[][] },
): Promise<number[]> {
  assert.equal(loaded.kind, "encoder");
  if (loaded.kind !== "encoder") throw new Error("unreachable");
  const [b, t] = [batch.ids.length, batch.ids[0].length];
  return Array.from(
    await scopeAsync(() =>
      loaded.model.forward({
        ids: tensor(Int32Array.from(batch.ids.flat()), [b, t]),
        attentionMask: tensor(Float32Array.from(batch.mask.flat()), [b, t]),
      }).read()
    ),
  );
}

async function encoderHidden(
  loaded: LoadedModel,
  batch: { ids: number[][]; mask: number[][] },
): Promise<number[]> {
  if (loaded.kind !== "encoder") throw new Error(`expected an encoder, got ${loaded.kind}`);
  const [b, t] = [batch.ids.length, batch.ids[0].length];
  return Array.from(
    await scopeAsync(() =>
      loaded.model.hidden({
        ids: tensor(Int32Array.from(batch.ids.flat()), [b, t]),
        attentionMask: tensor(Float32Array.from(batch.mask.flat()), [b, t]),
      }).read()
    ),
  );
}

function robertaReference(
  w: HostWeights,
  options: RobertaFixtureOptions,
  batch: { ids: number[][]; mask: number[][] },
): Float64Array {
  const dims: RefEncoderDims = {
    kind: "roberta",
    vocab: 50265,
    hidden: options.hidden!,
    inter: options.intermediate!,
    layers: options.layers!,
    heads: options.heads!,
    eps: 1e-5,
    pad: 1,
    labels: options.numLabels!,
  };
  const t = batch.ids[0].length;
  const positions = batch.ids.map((row) => Array.from(robertaPositionIds(row, 1, t, 1)));
  const keep = batch.mask.map((row) => row.map((m) => m === 1));
  const types = batch.ids.map((row) => row.map(() => 0));
  return encoderRef(w, dims, batch.ids, keep, positions, types);
}

test("RoBERTa fixture is written in Hugging Face layout and initialised as HF does", async () => {
  await withTempDir(async (dir) => {
    const fixture = await makeRobertaFixture(dir, { ...ROBERTA, initializerRange: 0.02 });
    assert.deepEqual(fixture.files, [
      "config.json",
      "merges.txt",
      "model.safetensors",
      "tokenizer_config.json",
      "vocab.json",
    ]);
    const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
    assert.deepEqual(config.architectures, ["RobertaForSequenceClassification"]);
    assert.equal(config.model_type, "roberta");
    assert.deepEqual(Object.keys(config), Object.keys(config).sort(), "keys sorted as HF writes");
    assert.deepEqual(config.id2label, { 0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2" });
    // The key set the engine's own test helper builds from the HF module tree (independent code).
    const expected = encoderWeights(
      {
        kind: "roberta",
        vocab: 1,
        hidden: 1,
        inter: 1,
        layers: 2,
        heads: 1,
        eps: 0,
        pad: 1,
        labels: 1,
      },
      1,
      0,
    );
    assert.deepEqual(fixture.tensorNames, [...expected.keys()].sort());
    const w = await hostWeights(dir);
    const emb = w.get("roberta.embeddings.word_embeddings.weight")!;
    assert.equal(emb.length, 50265 * 16);
    const std = Math.sqrt(emb.reduce((s, x) => s + x * x, 0) / emb.length);
    assert.ok(Math.abs(std - 0.02) < 0.001, `embedding std ${std}, expected ≈ 0.02`);
    assert.ok(emb.subarray(16, 32).every((x) => x === 0), "padding row (id 1) is zero");
    assert.ok(w.get("roberta.embeddings.LayerNorm.weight")!.every((x) => x === 1));
    assert.ok(w.get("roberta.encoder.layer.1.output.LayerNorm.bias")!.every((x) => x === 0));
    assert.ok(w.get("classifier.out_proj.bias")!.every((x) => x === 0));
    // Same seed, same bytes; another seed, other weights.
    const again = join(dir, "again");
    await makeRobertaFixture(again, { ...ROBERTA, initializerRange: 0.02 });
    assert.deepEqual(
      await Deno.readFile(join(again, SAFETENSORS_FILE)),
      await Deno.readFile(join(dir, SAFETENSORS_FILE)),
    );
    const other = join(dir, "other");
    await makeRobertaFixture(other, { ...ROBERTA, initializerRange: 0.02, seed: 8 });
    assert.notDeepEqual(
      (await hostWeights(other)).get("classifier.dense.weight"),
      w.get("classifier.dense.weight"),
    );
  });
});

test("the real roberta-base tokenizer in the fixture folder: Hello world → [0, 31414, 232, 2]", async () => {
  await withTempDir(async (dir) => {
    await makeRobertaFixture(dir, ROBERTA);
    const tok = await loadTokenizer(dir);
    assert.deepEqual(tok.encode("Hello world").ids, [0, 31414, 232, 2]);
  });
});

test("RoBERTa: loadModel logits match the float64 reference on the file's weights", async () => {
  await withTempDir(async (dir) => {
    await makeRobertaFixture(dir, ROBERTA);
    const loaded = await loadModel(dir);
    assert.deepEqual(loaded.newlyInitialized, []);
    assert.deepEqual(loaded.unused, []);
    const batch = await robertaBatch(dir);
    const got = await encoderLogits(loaded, batch);
    const want = robertaReference(await hostWeights(dir), ROBERTA, batch);
    assertClose(got, want, F32_TOL, "RoBERTa logits");
    loaded.model.dispose();
  });
});

test("RoBERTa base checkpoint without classifier.*: a new head, listed in newlyInitialized", async () => {
  await withTempDir(async (dir) => {
    // Hugging Face's own std here: the loader initialises new heads with 0.02 by default.
    await makeRobertaFixture(dir, { ...ROBERTA, withHead: false, initializerRange: 0.02 });
    const loaded = await loadModel(dir, { numLabels: 3, seed: 5 });
    const head = [
      "classifier.dense.weight",
      "classifier.dense.bias",
      "classifier.out_proj.weight",
      "classifier.out_proj.bias",
    ];
    assert.deepEqual([...loaded.newlyInitialized].sort(), [...head].sort());
    // roberta-base's pooler and MLM head are not part of a sequence classifier.
    assert.deepEqual([...loaded.unused].sort(), [
      "lm_head.bias",
      "lm_head.dense.bias",
      "lm_head.dense.weight",
      "lm_head.layer_norm.bias",
      "lm_head.layer_norm.weight",
      "roberta.pooler.dense.bias",
      "roberta.pooler.dense.weight",
    ]);
    const params = new Map(loaded.model.namedParameters());
    const w = await hostWeights(dir);
    for (const name of head) {
      const values = Array.from(await params.get(name)!.read());
      if (name.endsWith("bias")) {
        assert.ok(values.every((x) => x === 0), `${name} is zero`);
      } else {
        const std = Math.sqrt(values.reduce((s, x) => s + x * x, 0) / values.length);
        assert.ok(std > 0.01 && std < 0.03, `${name} std ${std}, expected ≈ 0.02`);
      }
      w.set(name, Float64Array.from(values));
    }
    assert.equal(params.get("classifier.out_proj.weight")!.shape.join(), "3,16");
    const batch = await robertaBatch(dir);
    assertClose(
      await encoderLogits(loaded, batch),
      robertaReference(w, ROBERTA, batch),
      F32_TOL,
      "logits with the new head",
    );
    loaded.model.dispose();
  });
});

test("RoBERTa saved without the roberta. prefix (RobertaModel style) still loads", async () => {
  await withTempDir(async (dir) => {
    const prefixed = join(dir, "prefixed"), bare = join(dir, "bare");
    await makeRobertaFixture(prefixed, ROBERTA);
    await makeRobertaFixture(bare, { ...ROBERTA, withHead: false });
    await rewriteCheckpoint(bare, (entries) =>
      entries
        .filter((e) => e.name.startsWith("roberta.") && !e.name.includes("pooler"))
        .map((e) => ({ ...e, name: e.name.slice("roberta.".length) })));
    const configPath = join(bare, "config.json");
    const config = JSON.parse(await Deno.readTextFile(configPath));
    await Deno.writeTextFile(
      configPath,
      JSON.stringify({ ...config, architectures: ["RobertaModel"] }),
    );
    using reader = await openCheckpoint(bare);
    assert.ok(reader.has("embeddings.word_embeddings.weight"));
    assert.ok(!reader.names.some((n) => n.startsWith("roberta.")));

    const a = await loadModel(prefixed), b = await loadModel(bare);
    assert.deepEqual(b.unused, []);
    assert.equal(b.newlyInitialized.length, 4);
    const batch = await robertaBatch(prefixed);
    // Same backbone weights (same seed) → the same hidden states.
    assertClose(await encoderHidden(b, batch), await encoderHidden(a, batch), { atol: 0, rtol: 0 });
    a.model.dispose();
    b.model.dispose();
  });
});

test("RoBERTa with old gamma/beta LayerNorm names loads to the same logits", async () => {
  await withTempDir(async (dir) => {
    await makeRobertaFixture(dir, ROBERTA);
    const batch = await robertaBatch(dir);
    const before = await loadModel(dir);
    const want = await encoderLogits(before, batch);
    before.model.dispose();
    let renamed = 0;
    await rewriteCheckpoint(dir, (entries) =>
      entries.map((e) => {
        const name = e.name.replace(/LayerNorm\.weight$/, "LayerNorm.gamma")
          .replace(/LayerNorm\.bias$/, "LayerNorm.beta");
        if (name !== e.name) renamed++;
        return { ...e, name };
      }));
    assert.equal(renamed, 2 * (1 + 2 * ROBERTA.layers!));
    const after = await loadModel(dir);
    assert.deepEqual(after.unused, []);
    assert.deepEqual(after.newlyInitialized, []);
    assertClose(await encoderLogits(after, batch), want, { atol: 0, rtol: 0 }, "gamma/beta logits");
    after.model.dispose();
  });
});

test("a checkpoint missing a tensor fails naming it, and frees what it uploaded", async () => {
  await withTempDir(async (dir) => {
    const folder = join(dir, "model");
    const cases: [() => Promise<unknown>, string][] = [
      [
        () => makeRobertaFixture(folder, ROBERTA),
        "roberta.encoder.layer.1.attention.self.key.weight",
      ],
      [() => makeLlamaFixture(folder, LLAMA), "lm_head.weight"],
      [() => makeLlamaFixture(folder, LLAMA), "model.layers.0.post_attention_layernorm.weight"],
    ];
    for (const [make, name] of cases) {
      await Deno.remove(folder, { recursive: true }).catch(() => {});
      await make();
      await rewriteCheckpoint(folder, (entries) => entries.filter((e) => e.name !== name));
      await rt().sync();
      const live = liveWeightBytes();
      await assert.rejects(
        () => loadModel(folder),
        (e: Error) => e.message.includes(name),
        `error names ${name}`,
      );
      await rt().sync();
      assert.equal(liveWeightBytes(), live, `no weight memory left behind after ${name}`);
    }
  });
});

test("a shape mismatch fails naming the tensor and both shapes", async () => {
  await withTempDir(async (dir) => {
    await makeRobertaFixture(dir, ROBERTA);
    const name = "roberta.encoder.layer.0.intermediate.dense.weight";
    await rewriteCheckpoint(
      dir,
      (entries) => entries.map((e) => e.name === name ? { ...e, shape: [16, 24] } : e),
    );
    await assert.rejects(() => loadModel(dir), (e: Error) => {
      assert.ok(e.message.includes(name), e.message);
      assert.match(e.message, /\[16, ?24\]/, "the checkpoint's shape");
      assert.match(e.message, /\[24, ?16\]/, "the shape the config implies");
      return true;
    });
  });
});

// ---- LLaMA --------------------------------------------------------------------------------------

/** Two stories prompts, left-padded (LLaMA's padding side) with id 0. */
async function llamaBatch(
  dir: string,
): Promise<{ ids: number[][]; keep: boolean[][]; positions: number[][] }> {
  const tok = await loadTokenizer(dir);
  const batch = tok.encodeBatch(["Once upon a time, there was a little girl", "Lily"], {
    padding: "longest",
    paddingSide: "left",
    padId: 0,
  });
  const keep = batch.attentionMask.map((row) => row.map((m) => m === 1));
  assert.equal(batch.inputIds[0][0], 1, "BOS first");
  assert.ok(!keep[1][0], "row 1 is left-padded");
  const positions = keep.map((row) => {
    let p = -1;
    return row.map((k) => (k ? ++p : 0));
  });
  return { ids: batch.inputIds, keep, positions };
}

async function decoderLogits(
  model: LlamaForCausalLM,
  batch: { ids: number[][]; keep: boolean[][]; positions: number[][] },
): Promise<number[]> {
  const [b, t] = [batch.ids.length, batch.ids[0].length];
  return Array.from(
    await scopeAsync(() =>
      model.logits(model.hidden({
        ids: tensor(Int32Array.from(batch.ids.flat()), [b, t]),
        positions: tensor(Int32Array.from(batch.positions.flat()), [b, t]),
        keyMask: tensor(Float32Array.from(batch.keep.flat().map(Number)), [b, t]),
      })).read()
    ),
  );
}

function refLlamaDims(options: LlamaFixtureOptions): RefLlamaDims {
  return {
    vocab: 512,
    hidden: options.hidden!,
    inter: options.intermediate!,
    layers: options.layers!,
    heads: options.heads!,
    kvHeads: options.kvHeads!,
    eps: 1e-6,
    theta: 10000,
    tied: options.tied ?? false,
  };
}

/** Rows of real (non-padding) tokens only: padded query rows attend to nothing valid. */
function realRows(values: ArrayLike<number>, keep: boolean[][], width: number): number[] {
  const out: number[] = [];
  keep.flat().forEach((k, r) => {
    if (k) { for (let i = 0; i < width; i++) out.push(values[r * width + i]); }
  });
  return out;
}

for (const tied of [false, true]) {
  test(`LLaMA (${tied ? "tied" : "untied"} head, GQA): loadModel logits match the float64 reference`, async () => {
    await withTempDir(async (dir) => {
      const options = { ...LLAMA, tied, seed: tied ? 3 : 4 };
      const fixture = await makeLlamaFixture(dir, options);
      const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
      assert.deepEqual(config.architectures, ["LlamaForCausalLM"]);
      assert.equal(config.tie_word_embeddings, tied);
      const expected = llamaWeights({ ...refLlamaDims(options), vocab: 1 }, 0);
      assert.deepEqual(fixture.tensorNames, [...expected.keys()].sort());
      const loaded = await loadModel(dir);
      if (loaded.kind !== "decoder") throw new Error(`expected a decoder, got ${loaded.kind}`);
      assert.deepEqual(loaded.unused, []);
      assert.deepEqual(loaded.newlyInitialized, []);
      const batch = await llamaBatch(dir);
      const got = await decoderLogits(loaded.model, batch);
      const want = llamaRef(
        await hostWeights(dir),
        refLlamaDims(options),
        batch.ids,
        batch.keep,
        batch.positions,
      );
      assertClose(
        realRows(got, batch.keep, 512),
        realRows(want, batch.keep, 512),
        F32_TOL,
        "logits",
      );
      loaded.model.dispose();
    });
  });
}

test("a sharded checkpoint (two shards + index) loads to the same logits as one file", async () => {
  await withTempDir(async (dir) => {
    const single = join(dir, "single"), sharded = join(dir, "sharded");
    await makeLlamaFixture(single, LLAMA);
    const fixture = await makeLlamaFixture(sharded, { ...LLAMA, shards: 2 });
    const shardFiles = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    assert.ok(!fixture.files.includes(SAFETENSORS_FILE));
    for (const f of [...shardFiles, SAFETENSORS_INDEX_FILE]) {
      assert.ok(fixture.files.includes(f), f);
    }
    const index = JSON.parse(await Deno.readTextFile(join(sharded, SAFETENSORS_INDEX_FILE)));
    assert.deepEqual(Object.keys(index.weight_map).sort(), fixture.tensorNames);
    assert.deepEqual([...new Set(Object.values(index.weight_map))].sort(), shardFiles);
    assert.equal(index.metadata.total_size, fixture.parameters * 4);

    const a = await loadModel(single), b = await loadModel(sharded);
    if (a.kind !== "decoder" || b.kind !== "decoder") throw new Error("expected decoders");
    const batch = await llamaBatch(single);
    assertClose(
      await decoderLogits(b.model, batch),
      await decoderLogits(a.model, batch),
      { atol: 0, rtol: 0 },
      "sharded vs single-file logits",
    );
    a.model.dispose();
    b.model.dispose();
  });
});

test("the LLaMA fixture's stories260K tokenizer encodes with BOS and round-trips", async () => {
  await withTempDir(async (dir) => {
    await makeLlamaFixture(dir, LLAMA);
    const tok = await loadTokenizer(dir);
    const ids = tok.encode("Once upon a time").ids;
    assert.equal(ids[0], 1);
    assert.ok(ids.every((id) => id >= 0 && id < 512));
    assert.equal(tok.decode(ids, true), "Once upon a time");
  });
});

// ---- f16 storage --------------------------------------------------------------------------------

/** Bytes of the model's parameters split by rank: matrices (2-D) and vectors. */
/** The task head (classifier, score): trained by every method, so always loaded as f32. */
const isHead = (name: string) => /^(classifier|score)\./.test(name);

function parameterBytes(params: [string, Tensor][]): { matrices: number; vectors: number } {
  let matrices = 0, vectors = 0;
  for (const [name, t] of params) {
    const bytes = t.size * (t.dtype === "f16" ? 2 : 4);
    if (t.shape.length === 2 && !isHead(name)) matrices += bytes;
    else vectors += bytes;
  }
  return { matrices, vectors };
}

/** Load with `options`, returning the model and how many weight bytes loading added. */
async function loadMeasured(
  dir: string,
  options: LoadOptions,
): Promise<{ loaded: LoadedModel; bytes: number }> {
  await rt().sync();
  const before = liveWeightBytes();
  const loaded = await loadModel(dir, options);
  await rt().sync();
  return { loaded, bytes: liveWeightBytes() - before };
}

test('frozenDtype "f16": f16 matrices, half their bytes, outputs within tolerance of f32', async () => {
  await withTempDir(async (dir) => {
    const roberta = join(dir, "roberta"), llama = join(dir, "llama");
    await makeRobertaFixture(roberta, ROBERTA);
    await makeLlamaFixture(llama, LLAMA);
    for (const folder of [roberta, llama]) {
      const full = await loadMeasured(folder, {});
      const half = await loadMeasured(folder, { frozenDtype: "f16" });
      const fullParams = full.loaded.model.namedParameters();
      const halfParams = half.loaded.model.namedParameters();
      for (const [name, t] of halfParams) {
        assert.equal(
          t.dtype,
          t.shape.length === 2 && !isHead(name) ? "f16" : "f32",
          `${name} dtype`,
        );
      }
      const f = parameterBytes(fullParams), h = parameterBytes(halfParams);
      assert.equal(h.matrices * 2, f.matrices, "matrix bytes halve");
      assert.equal(h.vectors, f.vectors, "norms, biases and the head stay f32");
      // The memory report's "weights" category sees exactly the parameters, nothing else.
      assert.equal(full.bytes, f.matrices + f.vectors, "f32 weights category bytes");
      assert.equal(half.bytes, h.matrices + h.vectors, "f16 weights category bytes");

      // f16 keeps 11 significant bits (relative rounding ≤ 2⁻¹¹ per weight). Measured worst
      // change of a logit: 0.05 % (RoBERTa) and 0.12 % (LLaMA) of the largest |logit|; 0.5 % is
      // allowed.
      if (full.loaded.kind === "encoder") {
        const batch = await robertaBatch(folder);
        const a = await encoderLogits(full.loaded, batch),
          b = await encoderLogits(half.loaded, batch);
        const scale = Math.max(...a.map(Math.abs));
        assertClose(b, a, { atol: 5e-3 * scale, rtol: 0 }, "RoBERTa f16 vs f32 logits");
      } else if (full.loaded.kind === "decoder" && half.loaded.kind === "decoder") {
        const batch = await llamaBatch(folder);
        const a = realRows(await decoderLogits(full.loaded.model, batch), batch.keep, 512);
        const b = realRows(await decoderLogits(half.loaded.model, batch), batch.keep, 512);
        const scale = Math.max(...a.map(Math.abs));
        assertClose(b, a, { atol: 5e-3 * scale, rtol: 0 }, "LLaMA f16 vs f32 logits");
      }
      full.loaded.model.dispose();
      half.loaded.model.dispose();
    }
  });
});

test("new heads are initialised with config.json's initializer_range, as Hugging Face does", async () => {
  await withTempDir(async (dir) => {
    await makeRobertaFixture(dir, { ...ROBERTA, withHead: false, initializerRange: 0.3 });
    const loaded = await loadModel(dir, { numLabels: 2, seed: 11 });
    assert.equal(loaded.config.initializer_range, 0.3);
    const weight = new Map(loaded.model.namedParameters()).get("classifier.dense.weight")!;
    const values = Array.from(await weight.read());
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    const std = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
    // The sample std of n normal draws has standard error σ/√(2n): allow 5 of them. That still
    // tells 0.3 apart from the 0.02 a fixed default would give.
    const bound = 5 * 0.3 / Math.sqrt(2 * values.length);
    assert.ok(Math.abs(std - 0.3) < bound, `std ${std} (n ${values.length}, bound ±${bound})`);
    loaded.model.dispose();
  });
});
