/**
 * Matmul throughput per kernel variant: square 256³…2048³ and the two BERT-base-sized products of
 * a 4096-token batch (4096×768·768×768 and 4096×768·768×3072, the latter also as x·Wᵀ with W
 * stored [dOut, dIn] as nn.Linear keeps it). Reports GFLOP/s from GPU timestamps when the adapter
 * has them.
 *
 * A case whose estimated time per call (from the variant's rate on the previous case) exceeds
 * {@link CASE_BUDGET_MS} is skipped and listed as such, so a slow variant on a software adapter
 * does not stall the run. Set PEFT_BENCH_WRITE=1 to (re)write the table to
 * bench/results/<adapter>-matmul.md after every case.
 *
 * Run: `deno task bench` or `XDG_RUNTIME_DIR=/tmp deno bench -A bench/matmul_bench.ts`. The
 * figures are the printed lines; deno bench's own table times the (memoised) case functions.
 */
import {
  gpu,
  init,
  MATMUL,
  matmul,
  randUniform,
  type Tensor,
  transpose,
  withVariant,
} from "../ops/mod.ts";
import { adapterSlug, measure, type MeasureResult, resultsMarkdown } from "./util.ts";

await init();

/** Longest a single call may be expected to take before a case is skipped. */
const CASE_BUDGET_MS = 10_000;

interface Case {
  label: string;
  M: number;
  K: number;
  N: number;
  /** Store B as [N, K] and multiply by its transposed view (the linear layout). */
  transposedB?: boolean;
}

const cases: Case[] = [
  { label: "256³", M: 256, K: 256, N: 256 },
  { label: "512³", M: 512, K: 512, N: 512 },
  { label: "1024³", M: 1024, K: 1024, N: 1024 },
  { label: "2048³", M: 2048, K: 2048, N: 2048 },
  { label: "4096×768·768×768", M: 4096, K: 768, N: 768 },
  { label: "4096×768·768×3072", M: 4096, K: 768, N: 3072 },
  { label: "4096×768·(3072×768)ᵀ", M: 4096, K: 768, N: 3072, transposedB: true },
];

const results: MeasureResult[] = [];
const skipped: string[] = [];
const rate = new Map<string, number>(); // last GFLOP/s per variant
const g = gpu();

for (const c of cases) {
  const flops = 2 * c.M * c.N * c.K;
  for (const variant of MATMUL.variantNames()) {
    const name = `${variant} ${c.label}`;
    let done = false;
    Deno.bench({ name, group: c.label, n: 1, warmup: 0 }, async () => {
      // deno bench may call a case more than once; measure() already repeats and warms up.
      if (done) return;
      done = true;
      const shapes = {
        M: c.M,
        N: c.N,
        K: c.K,
        batch: 1,
        aMatrices: 1,
        bMatrices: 1,
        aDtype: "f32" as const,
        bDtype: "f32" as const,
      };
      if (!MATMUL.variant(variant).supports(g, shapes)) {
        skipped.push(`${name}: not supported on this adapter`);
        return;
      }
      const known = rate.get(variant);
      const estimateMs = known ? flops / known / 1e6 : 0;
      if (estimateMs > CASE_BUDGET_MS) {
        const line = `${name}: skipped (about ${(estimateMs / 1000).toFixed(0)} s per call at ${
          known!.toFixed(2)
        } GFLOP/s)`;
        console.log(line);
        skipped.push(line);
        await writeResults();
        return;
      }
      const a = randUniform([c.M, c.K], -1, 1, { seed: 1 });
      const bStored = randUniform(c.transposedB ? [c.N, c.K] : [c.K, c.N], -1, 1, { seed: 2 });
      let b: Tensor = bStored;
      if (c.transposedB) b = transpose(bStored);
      try {
        const r = await withVariant("matmul", variant, () =>
          measure({
            name,
            flops,
            warmup: 1,
            iterations: 3,
            budgetMs: CASE_BUDGET_MS,
          }, () => void matmul(a, b)));
        results.push(r);
        rate.set(variant, r.gflops!);
        await writeResults();
      } finally {
        for (const t of [a, bStored, b]) t.dispose();
      }
    });
  }
}

/** Rewrite the results file (after every case, so an interrupted run keeps what it measured). */
async function writeResults(): Promise<void> {
  if (Deno.env.get("PEFT_BENCH_WRITE") !== "1") return;
  const dir = new URL("./results/", import.meta.url);
  await Deno.mkdir(dir, { recursive: true });
  const path = new URL(`${adapterSlug()}-matmul.md`, dir);
  // Software adapters share the CPU with everything else: record how busy it was.
  const load = await Deno.readTextFile("/proc/loadavg").catch(() => "");
  const body = resultsMarkdown("matmul", results) +
    (skipped.length ? `\nSkipped:\n${skipped.map((s) => `- ${s}`).join("\n")}\n` : "") +
    (load
      ? `\nLoad average after the last case (1/5/15 min): ${
        load.split(" ").slice(0, 3).join(" ")
      } on ${navigator.hardwareConcurrency} CPUs.\n`
      : "");
  await Deno.writeTextFile(path, body);
}
