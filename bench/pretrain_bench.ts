/**
 * The MLM pretraining step of recipes/pretrain-roberta-small.yaml, timed on this engine: a
 * randomly initialised RobertaForMaskedLM (tied decoder), full training with AdamW, dropout on,
 * one batch whose every 7th position is masked (≈ 14 %, close to the recipe's 15 %).
 *
 * `deno task bench:pretrain` prints ms/step (median of the timed steps, each synced), tokens/s,
 * dispatches/step, peak memory by category and, with --profile, the GPU time per kernel name of
 * one step.
 *
 * Flags: --batch N (32), --seq N (128), --layers N (4), --hidden N (128), --heads N (4), --ffn N
 * (512), --vocab N (50265), --steps N timed (3), --warmup N (2), --profile, --json FILE.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  AdamW,
  backward,
  init,
  randNormal,
  rt,
  scope,
  type Tensor,
  tensor,
  withCategory,
  zeros,
} from "../ops/mod.ts";
import { EncoderForMaskedLM } from "../models/masked_lm.ts";
import { ForwardContext } from "../models/context.ts";
import type { WeightSource } from "../models/weights.ts";
import { categoryLine, median, mib } from "./step_lib.ts";

/** The benchmark's flags, validated. */
interface Flags {
  batch: number;
  seq: number;
  layers: number;
  hidden: number;
  heads: number;
  ffn: number;
  vocab: number;
  steps: number;
  warmup: number;
  profile: boolean;
  json?: string;
}

function parseFlags(): Flags {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      batch: { type: "string", default: "32" },
      seq: { type: "string", default: "128" },
      layers: { type: "string", default: "4" },
      hidden: { type: "string", default: "128" },
      heads: { type: "string", default: "4" },
      ffn: { type: "string", default: "512" },
      vocab: { type: "string", default: "50265" },
      steps: { type: "string", default: "3" },
      warmup: { type: "string", default: "2" },
      profile: { type: "boolean", default: false },
      json: { type: "string" },
    },
  });
  const int = (name: keyof typeof values, min: number): number => {
    const v = values[name];
    const n = Number(v);
    if (typeof v !== "string" || !Number.isInteger(n) || n < min) {
      throw new Error(`pretrain_bench: --${name} must be an integer ≥ ${min}, got ${v}`);
    }
    return n;
  };
  const f: Flags = {
    batch: int("batch", 1),
    seq: int("seq", 2),
    layers: int("layers", 1),
    hidden: int("hidden", 4),
    heads: int("heads", 1),
    ffn: int("ffn", 1),
    vocab: int("vocab", 8),
    steps: int("steps", 1),
    warmup: int("warmup", 0),
    profile: values.profile!,
    json: values.json,
  };
  if (f.hidden % f.heads) {
    throw new Error(
      `pretrain_bench: --hidden ${f.hidden} must be a multiple of --heads ${f.heads}`,
    );
  }
  return f;
}

/** Hugging Face's RoBERTa init: N(0, 0.02²), LayerNorm 1/0, biases 0 (a seeded stream each). */
function randomWeights(): WeightSource {
  let stream = 0;
  const make = (name: string, shape: readonly number[]): Tensor => {
    if (/(LayerNorm|layer_norm)\.weight$/.test(name)) {
      return tensor(new Float32Array(shape[0]).fill(1));
    }
    if (name.endsWith(".bias")) return zeros(shape);
    return randNormal(shape, 0, 0.02, { seed: 0, stream: stream++ });
  };
  return {
    get: (n, s) => withCategory("weights", () => make(n, s)),
    init: (n, s) => withCategory("weights", () => make(n, s)),
  };
}

async function main(): Promise<void> {
  const f = parseFlags();
  await init();
  const model = new EncoderForMaskedLM({
    kind: "roberta",
    vocabSize: f.vocab,
    hiddenSize: f.hidden,
    intermediateSize: f.ffn,
    numLayers: f.layers,
    numHeads: f.heads,
    maxPositions: f.seq + 2,
    typeVocabSize: 1,
    layerNormEps: 1e-5,
    hiddenDropout: 0.1,
    attentionDropout: 0.1,
    padTokenId: 1,
    numLabels: 2,
  }, randomWeights());
  const params = model.namedParameters().map(([, p]) => p);
  let trainable = 0;
  for (const p of params) {
    p.requiresGrad = true;
    p.setCategory("trainable");
    trainable += p.size;
  }
  const opt = new AdamW([{ params, lr: 1e-3, weightDecay: 0.01 }]);
  const n = f.batch * f.seq;
  const ids = new Int32Array(n).map((_, i) => 3 + ((i * 7919) % (f.vocab - 3)));
  const labels = new Int32Array(n).fill(-100);
  for (let i = 0; i < n; i += 7) labels[i] = ids[i];
  const masked = labels.filter((l) => l !== -100).length;
  const idsT = tensor(ids, [f.batch, f.seq]).keep();
  const maskT = tensor(new Float32Array(n).fill(1), [f.batch, f.seq]).keep();
  let step = 0;
  const run = () => {
    const c = new ForwardContext(true, 0, step++);
    scope(() => {
      backward(c.run(() => model.mlmLoss({ ids: idsT, attentionMask: maskT }, labels, c)));
    });
    opt.step();
    opt.zeroGrad();
  };
  for (let i = 0; i < f.warmup; i++) {
    run();
    await rt().sync();
  }
  rt().pool.resetPeak();
  const d0 = rt().dispatchCount;
  const stepsMs: number[] = [];
  for (let i = 0; i < f.steps; i++) {
    const t0 = performance.now();
    run();
    await rt().sync();
    stepsMs.push(performance.now() - t0);
  }
  const dispatches = (rt().dispatchCount - d0) / f.steps;
  const stats = rt().pool.stats();
  const ms = median(stepsMs);
  const shape = `${f.layers} layers, hidden ${f.hidden}, ${f.heads} heads, FFN ${f.ffn}, ` +
    `vocab ${f.vocab}, batch ${f.batch} × ${f.seq}, ${masked} masked rows`;
  console.log(`MLM pretraining step (${shape}), ${trainable.toLocaleString("en")} trainable`);
  console.log(
    `ms/step ${ms.toFixed(0)} (steps ${stepsMs.map((s) => s.toFixed(0)).join(", ")}), ` +
      `tokens/s ${(n / ms * 1000).toFixed(0)}, dispatches/step ${dispatches.toFixed(0)}`,
  );
  console.log(`peak MiB ${mib(stats.peakTotal)}: ${categoryLine(stats.peak)}`);
  let profile: [string, { ms: number; count: number }][] | null = null;
  if (f.profile) {
    profile = await rt().profile(() => run(), 2048);
    if (!profile) console.log("profile: this adapter has no timestamp queries");
    else {
      const total = profile.reduce((a, [, e]) => a + e.ms, 0);
      console.log(`GPU time of one step: ${total.toFixed(0)} ms`);
      console.log("      ms    n  kernel");
      for (const [name, e] of profile.slice(0, 30)) {
        console.log(`${e.ms.toFixed(1).padStart(8)} ${String(e.count).padStart(4)}  ${name}`);
      }
    }
  }
  if (f.json) {
    const out = {
      shape: f,
      masked,
      trainable,
      msPerStep: ms,
      stepsMs,
      tokensPerSecond: n / ms * 1000,
      dispatches,
      peak: { ...stats.peak, total: stats.peakTotal },
      profile,
    };
    await Deno.writeTextFile(`${f.json}.tmp`, JSON.stringify(out, null, 2) + "\n");
    await Deno.rename(`${f.json}.tmp`, f.json);
  }
  idsT.dispose();
  maskT.dispose();
}

if (import.meta.main) await main();
