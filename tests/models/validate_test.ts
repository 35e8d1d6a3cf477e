/**
 * Adapters and weights are checked against the model before use, and every failure is one line
 * naming the tensor and the file: a 5-layer adapter on a 2-layer model (the first tensor of the
 * missing layer 2), a 2-layer adapter on a 5-layer model (the first missing tensor), a wrong
 * shape, a tensor the config does not imply, NaN in an adapter, NaN or f16 overflow in model
 * weights, a model file without a tensor its config needs, and a checkpoint of another shape.
 */
import { equal, rejects } from "node:assert/strict";
import { join } from "node:path";
import { setup } from "../helpers.ts";
import { AdamW, tensor } from "../../ops/mod.ts";
import { applyMethod, loadAdapter } from "../../methods/mod.ts";
import { EncoderForSequenceClassification } from "../../models/encoder.ts";
import { loadModel } from "../../models/load.ts";
import {
  openCheckpoint,
  openSafetensors,
  SAFETENSORS_FILE,
  type SafetensorsEntry,
  writeSafetensors,
} from "../../models/safetensors.ts";
import { loadCheckpoint, saveCheckpoint } from "../../tasks/lib/train/checkpoint.ts";
import { makeRobertaFixture, SHARED_DATA_DIR } from "../fixtures/make_fixtures.ts";
import { encoderDims, encoderWeights, hostSource } from "./fixtures.ts";
import { contextBuilder, MAX_POSITIONS, randomizeLoraB, TINY_ROBERTA } from "../methods/support.ts";

await setup();

const LOAD_CTX = {
  lrMultipliers: {},
  weightDecay: 0,
  taskType: "SEQ_CLS" as const,
  baseModel: "x",
  seed: 0,
};
const context = contextBuilder({ weightDecay: 0 });

/** A tiny RoBERTa with `layers` encoder layers. */
function roberta(layers: number): EncoderForSequenceClassification {
  const dims = { ...TINY_ROBERTA, layers };
  return new EncoderForSequenceClassification(
    encoderDims(dims, MAX_POSITIONS),
    hostSource(encoderWeights(dims, MAX_POSITIONS, 3)),
  );
}

/** A trained-looking LoRA (q, v; r 4) adapter of a `layers`-layer model, saved into a temp dir. */
async function savedAdapter(layers: number): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "peft-validate-" });
  const m = roberta(layers);
  const adapter = applyMethod("lora", m, { r: 4 }, context());
  randomizeLoraB(m);
  await adapter.save(dir);
  return dir;
}

/** Rewrite a safetensors file through `edit` (entries as f32). */
async function rewrite(file: string, edit: (e: SafetensorsEntry[]) => SafetensorsEntry[]) {
  const entries: SafetensorsEntry[] = [];
  {
    using reader = await openSafetensors(file);
    for (const name of reader.names) {
      entries.push({
        name,
        dtype: "F32",
        shape: reader.info(name).shape,
        data: await reader.readF32(name),
      });
    }
  }
  await writeSafetensors(file, edit(entries), { format: "pt" });
}

/** Expect `p` to reject with one line that contains every one of `parts`. */
async function rejectsNaming(p: Promise<unknown>, parts: string[]): Promise<void> {
  await rejects(p, (e: Error) => {
    equal(e.message.includes("\n"), false, `one line: ${e.message}`);
    for (const part of parts) equal(e.message.includes(part), true, `names ${part}: ${e.message}`);
    return true;
  });
}

const weightsFile = (dir: string) => join(dir, "adapter_model.safetensors");
const q = (l: number, p: string) =>
  `base_model.model.roberta.encoder.layer.${l}.attention.self.query.${p}`;

Deno.test("a 5-layer adapter into a 2-layer model names the first tensor of a layer the model lacks", async () => {
  const dir = await savedAdapter(5);
  try {
    await rejectsNaming(loadAdapter(roberta(2), dir, LOAD_CTX), [
      weightsFile(dir),
      q(2, "lora_A.weight"),
      "roberta.encoder.layer.2, which this model does not have",
    ]);
    // The same adapter on a model of its own depth loads.
    await loadAdapter(roberta(5), dir, LOAD_CTX);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a 2-layer adapter into a 5-layer model names the first missing tensor", async () => {
  const dir = await savedAdapter(2);
  try {
    await rejectsNaming(loadAdapter(roberta(5), dir, LOAD_CTX), [
      weightsFile(dir),
      q(2, "lora_A.weight"),
      "no tensor",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("wrong shapes, tensors the config does not imply, and NaN in an adapter are errors naming the tensor", async () => {
  const dir = await savedAdapter(2);
  try {
    const configFile = join(dir, "adapter_config.json");
    const config = JSON.parse(await Deno.readTextFile(configFile));
    // r 2 in the config, r 4 in the file.
    await Deno.writeTextFile(configFile, JSON.stringify({ ...config, r: 2 }));
    await rejectsNaming(loadAdapter(roberta(2), dir, LOAD_CTX), [
      weightsFile(dir),
      q(0, "lora_A.weight"),
      "shape [4, 16]",
      "[2, 16]",
    ]);
    // Only query targeted: the value tensors are not implied by the config.
    await Deno.writeTextFile(configFile, JSON.stringify({ ...config, target_modules: ["query"] }));
    await rejectsNaming(loadAdapter(roberta(2), dir, LOAD_CTX), [
      weightsFile(dir),
      "base_model.model.roberta.encoder.layer.0.attention.self.value.lora_A.weight",
      "not implied by the adapter config",
    ]);
    await Deno.writeTextFile(configFile, JSON.stringify(config));
    await rewrite(
      weightsFile(dir),
      (entries) =>
        entries.map((e) =>
          e.name === q(1, "lora_B.weight")
            ? {
              ...e,
              data: Float32Array.from(e.data as Float32Array, (v, i) => (i === 3 ? NaN : v)),
            }
            : e
        ),
    );
    await rejectsNaming(loadAdapter(roberta(2), dir, LOAD_CTX), [
      weightsFile(dir),
      q(1, "lora_B.weight"),
      "NaN",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const hasTokenizer = await Deno.stat(join(SHARED_DATA_DIR, "tokenizers/roberta-base/vocab.json"))
  .then(() => true, () => false);

Deno.test({
  name:
    "model weights: NaN, f16 overflow and a missing tensor are errors naming the tensor and the file",
  ignore: !hasTokenizer,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "peft-validate-model-" });
    try {
      await makeRobertaFixture(dir, { layers: 2, hidden: 16, heads: 4, intermediate: 24, seed: 1 });
      const file = join(dir, SAFETENSORS_FILE);
      await loadModel(dir).then((l) => l.model.dispose());
      const target = "roberta.encoder.layer.1.attention.output.dense.weight";
      const original: SafetensorsEntry[] = [];
      {
        using reader = await openCheckpoint(dir);
        for (const name of reader.names) {
          original.push({
            name,
            dtype: "F32",
            shape: reader.info(name).shape,
            data: await reader.readF32(name),
          });
        }
      }
      const withValue = (v: number) =>
        original.map((e) =>
          e.name === target
            ? { ...e, data: Float32Array.from(e.data as Float32Array, (x, i) => (i === 5 ? v : x)) }
            : e
        );
      await writeSafetensors(file, withValue(NaN), { format: "pt" });
      await rejectsNaming(loadModel(dir), [file, target, "1 NaN/Inf value"]);
      // 1e5 is finite in f32 but not in f16: stored as f16 it would be Inf.
      await writeSafetensors(file, withValue(1e5), { format: "pt" });
      await loadModel(dir).then((l) => l.model.dispose());
      await rejectsNaming(loadModel(dir, { frozenDtype: "f16" }), [file, target, "as f16"]);
      await writeSafetensors(file, original.filter((e) => e.name !== target), { format: "pt" });
      await rejectsNaming(loadModel(dir), [file, target, "no tensor"]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("a checkpoint of another shape or with NaN is refused before anything is overwritten", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peft-validate-ckpt-" });
  try {
    const saved = tensor(new Float32Array(8).fill(0.5), [8]);
    const opt = new AdamW([{ params: [saved], lr: 1e-3, weightDecay: 0 }]);
    const state = {
      step: 1,
      metricsLines: 0,
      best: null,
      lastLoss: 1,
      trainSeconds: 0,
      tokens: 0,
      configHash: "x",
    };
    await saveCheckpoint(dir, state, [["lora.a", saved]], opt);
    const other = tensor(new Float32Array(4), [4]);
    const file = join(dir, "trainable.safetensors");
    await rejectsNaming(
      loadCheckpoint(
        dir,
        [["lora.a", other]],
        new AdamW([{ params: [other], lr: 1e-3, weightDecay: 0 }]),
      ),
      [file, "lora.a", "shape [8]", "[4]"],
    );
    equal((await other.read()).every((v) => v === 0), true, "nothing was written");
    // A checkpoint whose trainable values diverged, written whole (its recorded sizes hold).
    const diverged = tensor(new Float32Array(8).fill(Infinity), [8]);
    const bad = join(dir, "diverged");
    await saveCheckpoint(
      bad,
      state,
      [["lora.a", diverged]],
      new AdamW([{ params: [diverged], lr: 1e-3, weightDecay: 0 }]),
    );
    const same = tensor(new Float32Array(8), [8]);
    await rejectsNaming(
      loadCheckpoint(
        bad,
        [["lora.a", same]],
        new AdamW([{ params: [same], lr: 1e-3, weightDecay: 0 }]),
      ),
      [join(bad, "trainable.safetensors"), "lora.a", "8 NaN/Inf values"],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("our own formats (GaLore) are checked too: tensors of a missing layer, NaN", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peft-validate-galore-" });
  try {
    const deep = roberta(5);
    const adapter = applyMethod("galore", deep, {}, context());
    await adapter.save(dir);
    const file = join(dir, "galore_model.safetensors");
    await rejectsNaming(loadAdapter(roberta(2), dir, LOAD_CTX), [
      file,
      "roberta.encoder.layer.2.",
      "not trained by GaLore on this model",
    ]);
    const name = "roberta.encoder.layer.0.attention.self.value.weight";
    await rewrite(
      file,
      (entries) =>
        entries.map((e) =>
          e.name === name ? { ...e, data: new Float32Array(e.data.length).fill(-Infinity) } : e
        ),
    );
    await rejectsNaming(loadAdapter(roberta(5), dir, LOAD_CTX), [file, name, "NaN/Inf"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
