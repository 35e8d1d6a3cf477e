/**
 * Fused attention throughput at BERT-base-like sizes: B 8, H 12, D 64, T = S = 128 and 512.
 *
 * Each case is timed by `measure` (bench/util.ts): GPU time from timestamp queries, host time
 * where the adapter has none, printed with GFLOP/s; `deno run -A bench/attention_bench.ts` also
 * prints a Markdown table. FLOPs follow the FlashAttention convention whatever the kernels
 * recompute: the forward counts 4·B·H·T·S·D (the two products), forward + backward 3.5 times that
 * (the backward as 2.5 forwards). The adapter's preferred variant runs every size; the other
 * variants of the "attention" family run at T 128 only, to compare them without minutes per call
 * on a software adapter, and so does the preferred variant with attention-probability dropout
 * (p 0.1), whose cost over the plain call is the per-probability mask hash.
 */
import {
  ATTENTION,
  type AttentionShapes,
  backward,
  init,
  noGrad,
  randNormal,
  scaledDotProductAttention,
  type Tensor,
  withVariant,
} from "../ops/mod.ts";
import { measure, type MeasureResult, resultsMarkdown } from "./util.ts";

await init();

type Mode = "forward" | "forward+backward";

const MODES: readonly Mode[] = ["forward", "forward+backward"];

const SIZES: AttentionShapes[] = [128, 512].map((t) => ({
  batch: 8,
  queryHeads: 12,
  kvHeads: 12,
  queryLen: t,
  keyLen: t,
  headDim: 64,
}));

/** One timed case: a size, a mode and a variant of the attention family. */
interface Case {
  size: AttentionShapes;
  mode: Mode;
  variant: string;
  /** Attention-probability dropout p (0: none). */
  dropout: number;
}

function cases(): Case[] {
  const out: Case[] = [];
  for (const size of SIZES) {
    const preferred = ATTENTION.choose(size).name;
    const variants = size.queryLen <= 128
      ? ATTENTION.candidates(size).map((v) => v.name)
      : [preferred];
    for (const variant of variants) {
      for (const mode of MODES) out.push({ size, mode, variant, dropout: 0 });
    }
    if (size.queryLen <= 128) {
      for (const mode of MODES) out.push({ size, mode, variant: preferred, dropout: 0.1 });
    }
  }
  return out;
}

function flops({ batch, queryHeads, queryLen, keyLen, headDim }: AttentionShapes, mode: Mode) {
  const forward = 4 * batch * queryHeads * queryLen * keyLen * headDim;
  return mode === "forward" ? forward : 3.5 * forward;
}

const label = (c: Case) =>
  `attention B${c.size.batch} H${c.size.queryHeads} T${c.size.queryLen} D${c.size.headDim} ${c.mode} [${c.variant}]${
    c.dropout > 0 ? ` dropout ${c.dropout}` : ""
  }`;

/** Record one call (and its backward) inside measure's scope; gradients are dropped too. */
function step([q, k, v, gradOut]: Tensor[], mode: Mode, p: number): void {
  const options = p > 0 ? { dropout: { p, seed: 1, stream: 0 } } : {};
  if (mode === "forward") {
    noGrad(() => scaledDotProductAttention(q, k, v, options));
    return;
  }
  backward(scaledDotProductAttention(q, k, v, options), gradOut);
  for (const t of [q, k, v]) {
    t.grad?.dispose();
    t.grad = null;
  }
}

/** Measure one case (inputs live only for the measurement). */
async function run(c: Case): Promise<MeasureResult> {
  const { batch, queryHeads, queryLen, headDim } = c.size;
  const shape = [batch, queryHeads, queryLen, headDim];
  const requiresGrad = c.mode === "forward+backward";
  const inputs = [1, 2, 3, 4].map((seed) =>
    randNormal(shape, 0, 1, { seed, requiresGrad: requiresGrad && seed < 4 }).keep()
  );
  try {
    return await withVariant("attention", c.variant, () =>
      measure(
        { name: label(c), flops: flops(c.size, c.mode), iterations: 3 },
        () => step(inputs, c.mode, c.dropout),
      ));
  } finally {
    for (const t of inputs) t.dispose();
  }
}

for (const c of cases()) {
  Deno.bench({
    name: label(c),
    group: `attention T${c.size.queryLen}`,
    n: 1,
    warmup: 0,
    async fn() {
      await run(c);
    },
  });
}

if (import.meta.main) {
  const results: MeasureResult[] = [];
  for (const c of cases()) results.push(await run(c));
  console.log(resultsMarkdown("Fused scaled dot-product attention", results));
}
