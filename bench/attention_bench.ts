/**
 * Fused attention throughput at BERT/LLaMA-like sizes (B 8, H 12, D 64, T = S = 128 and 512).
 *
 * `deno bench` reports wall time per call; `deno run -A bench/attention_bench.ts` prints GPU time
 * (timestamp queries, host time where the adapter has none) and GFLOP/s. FLOPs follow the
 * FlashAttention convention: the forward counts 4·B·H·T·S·D (two matmuls), forward + backward
 * counts 3.5× that (the backward as 2.5 forwards), whatever the kernels recompute.
 */
import {
  backward,
  init,
  noGrad,
  randNormal,
  rt,
  scaledDotProductAttention,
  scope,
  type Tensor,
} from "../ops/mod.ts";

await init();

/** One benchmarked size. */
interface Size {
  B: number;
  H: number;
  T: number;
  D: number;
}

type Mode = "forward" | "forward+backward";

const SIZES: Size[] = [
  { B: 8, H: 12, T: 128, D: 64 },
  { B: 8, H: 12, T: 512, D: 64 },
];

function flops({ B, H, T, D }: Size, mode: Mode): number {
  const forward = 4 * B * H * T * T * D;
  return mode === "forward" ? forward : 3.5 * forward;
}

/** Inputs that live for the whole benchmark; q/k/v require grad for the backward mode. */
function makeInputs({ B, H, T, D }: Size, mode: Mode): Tensor[] {
  const requiresGrad = mode === "forward+backward";
  const q = randNormal([B, H, T, D], 0, 1, { seed: 1, requiresGrad }).keep();
  const k = randNormal([B, H, T, D], 0, 1, { seed: 2, requiresGrad }).keep();
  const v = randNormal([B, H, T, D], 0, 1, { seed: 3, requiresGrad }).keep();
  const gradOut = randNormal([B, H, T, D], 0, 1, { seed: 4 }).keep();
  return [q, k, v, gradOut];
}

/** Record one call (and its backward); gradients are dropped so each call starts fresh. */
function step([q, k, v, gradOut]: Tensor[], mode: Mode): void {
  scope(() => {
    if (mode === "forward") {
      noGrad(() => scaledDotProductAttention(q, k, v));
      return;
    }
    backward(scaledDotProductAttention(q, k, v), gradOut);
    for (const t of [q, k, v]) {
      t.grad?.dispose();
      t.grad = null;
    }
  });
}

/** Median milliseconds of `reps` calls, from GPU timestamps where available. */
async function timeMs(inputs: Tensor[], mode: Mode, reps: number): Promise<number> {
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const start = performance.now();
    const gpuMs = await rt().timeGpu(() => step(inputs, mode));
    times.push(gpuMs ?? performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

for (const size of SIZES) {
  for (const mode of ["forward", "forward+backward"] as const) {
    let inputs: Tensor[] | null = null;
    Deno.bench({
      name: `attention ${mode} B${size.B} H${size.H} T${size.T} D${size.D}`,
      group: `attention T${size.T}`,
      n: 3,
      warmup: 1,
      async fn(b) {
        inputs ??= makeInputs(size, mode);
        b.start();
        step(inputs, mode);
        await rt().sync();
        b.end();
      },
    });
  }
}

if (import.meta.main) {
  console.log(`adapter: ${rt().gpu.adapter.name}`);
  console.log("| size | mode | ms | GFLOP/s |\n| --- | --- | --- | --- |");
  for (const size of SIZES) {
    for (const mode of ["forward", "forward+backward"] as const) {
      const inputs = makeInputs(size, mode);
      await timeMs(inputs, mode, 1); // compiles the pipelines
      const ms = await timeMs(inputs, mode, 3);
      const rate = flops(size, mode) / (ms * 1e6);
      const label = `B${size.B} H${size.H} T${size.T} D${size.D}`;
      console.log(`| ${label} | ${mode} | ${ms.toFixed(1)} | ${rate.toFixed(1)} |`);
      for (const t of inputs) t.dispose();
    }
  }
}
