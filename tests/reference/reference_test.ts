/**
 * Every method of the registry, trained through the real trainer (`train()` of
 * tasks/lib/train/trainer.ts, as `deno task train` runs it: the model folder, the GLUE TSV data,
 * tokenisation, batching, the method, the optimizer, the schedule, clipping, checkpoints), against
 * an independent float64 PyTorch implementation (./reference.py, written from METHODS.md, the
 * papers and the reference code; run by hand, its outputs committed in ./fixtures/).
 *
 * Per method: the loss of each of the 20 steps agrees to ≤ 1e-5 relative, the final trainable
 * tensors agree, the method's schedule decisions agree (EVA's ranks, AdaLoRA's final mask,
 * SIFT's selected entries, LISA's blocks), and the fixture's deliberately wrong variant (e.g. the
 * squared AdaLoRA norm) fails the same loss assertion — so the test can tell right from wrong.
 * Regenerate the fixtures with `/usr/bin/python3 tests/reference/reference.py` after a deliberate
 * change of a method, and say why in the commit.
 */
import { AssertionError, deepStrictEqual, ok, throws } from "node:assert/strict";
import { join } from "node:path";
import { setup, useTestTokenCache } from "../helpers.ts";
import { parseRunConfig } from "../../tasks/lib/train/config.ts";
import { train } from "../../tasks/lib/train/trainer.ts";
import { epochBatches } from "../../tasks/lib/data/pipeline.ts";
import { METHODS } from "../../methods/registry.ts";
import { openSafetensors } from "../../models/safetensors.ts";

await setup();

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;
const MODEL = join(FIXTURES, "model");
const DATA = join(FIXTURES, "data");
const work = await Deno.makeTempDir({ prefix: "reference-test-" });
useTestTokenCache();

/** Per-step loss agreement: |ours − reference| ≤ this × |reference|. */
const LOSS_RTOL = 1e-5;
/** Final tensors: ‖ours − reference‖ ≤ this × ‖reference‖ per tensor (and entrywise, see below). */
const TENSOR_RTOL = 1e-4;

/** What reference.py writes per method. */
interface Fixture {
  method: string;
  reference: string;
  run: Record<string, unknown>;
  batches: number[][];
  losses: number[];
  wrong: { what: string; losses: number[] };
  stats: Record<string, unknown>;
}

const names = [...Deno.readDirSync(FIXTURES)]
  .filter((e) => e.isFile && e.name.endsWith(".json"))
  .map((e) => e.name.slice(0, -".json".length))
  .sort();
const fixtures = new Map<string, Fixture>(
  names.map((n) => [n, JSON.parse(Deno.readTextFileSync(join(FIXTURES, `${n}.json`)))]),
);

/** The largest relative loss difference over the steps. */
function worstLossDiff(ours: number[], reference: number[]): number {
  return Math.max(...ours.map((l, i) => Math.abs(l - reference[i]) / Math.abs(reference[i])));
}

/** Set REFERENCE_VERBOSE=1 to print each method's measured agreement. */
const verbose = Deno.env.get("REFERENCE_VERBOSE") === "1";

/** Throws unless every step's loss agrees within LOSS_RTOL; the message names the worst step. */
function assertLossesAgree(ours: number[], reference: number[], what: string): void {
  if (ours.length !== reference.length) {
    throw new AssertionError({
      message: `${what}: ${ours.length} steps, the reference has ${reference.length}`,
    });
  }
  let worst = 0, at = -1;
  for (let i = 0; i < ours.length; i++) {
    const rel = Math.abs(ours[i] - reference[i]) / Math.abs(reference[i]);
    if (!(rel <= worst)) [worst, at] = [Number.isNaN(rel) ? Infinity : rel, i];
  }
  if (!(worst <= LOSS_RTOL)) {
    throw new AssertionError({
      message: `${what}: step ${at} loss ${ours[at]} vs reference ${reference[at]} ` +
        `(relative ${worst.toExponential(2)} > ${LOSS_RTOL})`,
    });
  }
}

/** Read every F32 tensor (and I32 indices) of a safetensors file. */
async function readAll(path: string): Promise<Map<string, { shape: number[]; data: number[] }>> {
  const reader = await openSafetensors(path);
  try {
    const out = new Map<string, { shape: number[]; data: number[] }>();
    for (const name of reader.names) {
      const info = reader.info(name);
      const data = info.dtype === "I32" ? await reader.readI32(name) : await reader.readF32(name);
      out.set(name, { shape: [...info.shape], data: Array.from(data) });
    }
    return out;
  } finally {
    reader.close();
  }
}

/**
 * PiSSA's singular vectors come with arbitrary signs (ours from a Jacobi SVD, the reference's from
 * LAPACK); flipping a rank component's row of A and column of B together is an exact symmetry of
 * training, so align ours to the reference's signs before comparing.
 */
function alignSigns(
  ours: Map<string, { shape: number[]; data: number[] }>,
  reference: Map<string, { shape: number[]; data: number[] }>,
): void {
  for (const [name, a] of ours) {
    if (!name.endsWith(".lora_A.weight")) continue;
    const b = ours.get(name.replace(".lora_A.", ".lora_B."))!;
    const ref = reference.get(name)!;
    const [r, dIn] = a.shape, dOut = b.shape[0];
    for (let i = 0; i < r; i++) {
      let dot = 0;
      for (let j = 0; j < dIn; j++) dot += a.data[i * dIn + j] * ref.data[i * dIn + j];
      if (dot >= 0) continue;
      for (let j = 0; j < dIn; j++) a.data[i * dIn + j] *= -1;
      for (let o = 0; o < dOut; o++) b.data[o * r + i] *= -1;
    }
  }
}

/**
 * Tensors whose gradient is identically zero: a key bias adds q·b to every score of a query's
 * row, which softmax ignores. Round-off (f32 here, f64 in the reference) leaves ~1e-9 noise in
 * place of the zero, and Adam's normalised step turns noise into ±lr steps of arbitrary sign, so
 * both sides drift randomly (as they do in PyTorch); they cannot change the loss, which is checked.
 */
const ZERO_GRADIENT = /\.attention\.self\.key\.bias$/;

/** Final tensors agree: same names and shapes, and per tensor a small relative error. */
function assertTensorsAgree(
  ours: Map<string, { shape: number[]; data: number[] }>,
  reference: Map<string, { shape: number[]; data: number[] }>,
  what: string,
): number {
  deepStrictEqual([...ours.keys()].sort(), [...reference.keys()].sort(), `${what}: tensor names`);
  let worst = 0;
  for (const [name, ref] of reference) {
    const got = ours.get(name)!;
    deepStrictEqual(got.shape, ref.shape, `${what}: shape of ${name}`);
    if (ZERO_GRADIENT.test(name)) continue;
    let diff = 0, norm = 0, maxRef = 0, maxDiff = 0;
    for (let i = 0; i < ref.data.length; i++) {
      diff += (got.data[i] - ref.data[i]) ** 2;
      norm += ref.data[i] ** 2;
      maxRef = Math.max(maxRef, Math.abs(ref.data[i]));
      maxDiff = Math.max(maxDiff, Math.abs(got.data[i] - ref.data[i]));
    }
    const rel = Math.sqrt(diff) / Math.max(Math.sqrt(norm), 1e-12);
    // Entrywise too: no single entry may be off by more than the tolerance of the largest one.
    const entry = maxDiff / Math.max(maxRef, 1e-12);
    worst = Math.max(worst, rel, entry);
    ok(
      rel <= TENSOR_RTOL && entry <= 10 * TENSOR_RTOL,
      `${what}: ${name} differs from the reference by ${rel.toExponential(2)} (norm) and ` +
        `${entry.toExponential(2)} (largest entry, relative to the largest value)`,
    );
  }
  return worst;
}

/** The per-step losses a run logged (logInterval 1). */
async function loggedLosses(out: string): Promise<number[]> {
  const lines = (await Deno.readTextFile(join(out, "metrics.jsonl"))).split("\n").filter(Boolean);
  return lines.map((l) => JSON.parse(l)).filter((r) => "loss" in r).map((r) => r.loss);
}

/** Train `fixture`'s run through `train()`; returns the run folder. */
async function runFixture(name: string, fixture: Fixture, extra: Record<string, unknown> = {}) {
  const output = join(work, name);
  const config = parseRunConfig({
    ...fixture.run,
    model: MODEL,
    data: DATA,
    output,
    offline: true,
    logInterval: 1,
    evalBatchSize: 8,
    ...extra,
  }, `${name}.json`);
  await train(config, { progress: false, log: () => {} });
  return output;
}

Deno.test("every method of the registry has a reference fixture", () => {
  const covered = new Set([...fixtures.values()].map((f) => f.method));
  deepStrictEqual(
    Object.keys(METHODS).filter((m) => !covered.has(m)),
    [],
    "methods without a fixture in tests/reference/fixtures",
  );
});

Deno.test("the fixtures' batches are the trainer's (epochBatches over the tokenised train.tsv)", async () => {
  const lines = (await Deno.readTextFile(join(DATA, "SST-2", "train.tsv"))).trim().split("\n");
  // <s> + one id per word + </s> (the fixture's word-level tokenizer).
  const lengths = lines.slice(1).map((l) => l.split("\t")[0].split(" ").length + 2);
  const { batches, run } = fixtures.get("lora")!;
  const batchSize = run.batchSize as number;
  const perEpoch = Math.ceil(lengths.length / batchSize);
  const expected = batches.map((_, k) =>
    epochBatches(lengths, batchSize, run.seed as number, Math.floor(k / perEpoch))[k % perEpoch]
  );
  deepStrictEqual(batches, expected);
  for (const f of fixtures.values()) deepStrictEqual(f.batches, batches, "one data order for all");
});

for (const [name, fixture] of fixtures) {
  Deno.test(`${name} matches its reference (${fixture.reference})`, async () => {
    const out = await runFixture(name, fixture);
    const losses = await loggedLosses(out);
    assertLossesAgree(losses, fixture.losses, name);
    throws(
      () => assertLossesAgree(losses, fixture.wrong.losses, `${name} (wrong)`),
      AssertionError,
      `the wrong variant (${fixture.wrong.what}) would pass the loss check`,
    );
    const ours = await readAll(join(out, "checkpoint", "trainable.safetensors"));
    const reference = await readAll(join(FIXTURES, `${name}.safetensors`));
    if (fixture.method === "pissa") alignSigns(ours, reference);
    const tensors = assertTensorsAgree(ours, reference, name);
    await checkSchedule(fixture, out);
    if (verbose) {
      console.log(
        `${name}: loss ≤ ${worstLossDiff(losses, fixture.losses).toExponential(1)} relative, ` +
          `tensors ≤ ${tensors.toExponential(1)}; wrong variant (${fixture.wrong.what}) ` +
          `${worstLossDiff(losses, fixture.wrong.losses).toExponential(1)}`,
      );
    }
  });
}

/** The method's own decisions: EVA's ranks, AdaLoRA's final mask, SIFT's entries, LISA's blocks. */
async function checkSchedule(fixture: Fixture, out: string): Promise<void> {
  const stats = fixture.stats;
  if (fixture.method === "adalora") {
    const config = JSON.parse(await Deno.readTextFile(join(out, "adapter", "adapter_config.json")));
    deepStrictEqual(config.rank_pattern, stats.rankPattern, "AdaLoRA's final rank pattern");
  }
  if (fixture.method === "sift") {
    const saved = await readAll(join(out, "adapter", "sift_model.safetensors"));
    const indices = stats.indices as Record<string, number[]>;
    for (const [module, idx] of Object.entries(indices)) {
      deepStrictEqual(saved.get(`${module}.sift.indices`)?.data, idx, `SIFT entries of ${module}`);
    }
  }
  if (fixture.method === "lisa") {
    const config = JSON.parse(await Deno.readTextFile(join(out, "adapter", "lisa_config.json")));
    const sampled = [...new Set((stats.activeBlocks as number[][]).flat())].sort();
    deepStrictEqual(config.trained_blocks, sampled, "LISA's sampled blocks");
  }
  if (fixture.method === "eva") {
    const config = JSON.parse(await Deno.readTextFile(join(out, "adapter", "adapter_config.json")));
    const ranks = stats.ranks as Record<string, number>;
    const r = (fixture.run.methodOptions as { r: number }).r;
    const expected = Object.fromEntries(Object.entries(ranks).filter(([, k]) => k !== r && k > 0));
    deepStrictEqual(config.rank_pattern, expected, "EVA's ranks");
  }
}

Deno.test("--frozen-dtype f16 trains a checkpoint that already holds its classifier head", async () => {
  const fixture = fixtures.get("lora")!;
  const out = await runFixture("lora-f16", fixture, { frozenDtype: "f16" });
  const losses = await loggedLosses(out);
  // f16 storage rounds the frozen weights (~5e-4 relative); the run follows the f32 one closely.
  for (const [i, l] of losses.entries()) {
    ok(Math.abs(l - fixture.losses[i]) <= 1e-2 * fixture.losses[i], `step ${i}: ${l}`);
  }
  const head = await readAll(join(out, "checkpoint", "trainable.safetensors"));
  ok(head.has("classifier.out_proj.bias"), "the head trained");
});

globalThis.addEventListener("unload", () => {
  Deno.removeSync(work, { recursive: true });
});
