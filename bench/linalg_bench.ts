/**
 * GPU linear algebra times per kernel variant ("thread": a thread per column, "workgroup": a
 * workgroup per column; see ops/linalg.ts): thin QR and full SVD of 256×256 and 768×768 (a
 * BERT-base projection), and randomized SVD of rank 16 (10 oversampled columns, 2 power
 * iterations) of 768×768 and 4096×768. Times are medians of GPU time (timestamp queries) over up
 * to 3 calls after the kernels are compiled on a small matrix.
 *
 * A case whose estimated time (from the same op and variant on the previous, smaller case, scaled
 * by its flop count) exceeds {@link CASE_BUDGET_MS} is skipped and listed as such; set
 * PEFT_BENCH_BUDGET_MS to change the budget. Set PEFT_BENCH_WRITE=1 to (re)write the table to
 * bench/results/<adapter>-linalg.md after every case.
 *
 * Run: `deno task bench` or `XDG_RUNTIME_DIR=/tmp deno bench -A bench/linalg_bench.ts`.
 */
import {
  init,
  LINALG,
  qr,
  randNormal,
  randomizedSvd,
  rt,
  svd,
  type Tensor,
  withVariant,
} from "../ops/mod.ts";
import { adapterSlug, measure, type MeasureResult, resultsMarkdown } from "./util.ts";

await init();

/** Longest a single call may be expected to take before a case is skipped. */
const CASE_BUDGET_MS = Number(Deno.env.get("PEFT_BENCH_BUDGET_MS") ?? 60_000);

type Op = "qr" | "svd" | "randomizedSvd";

interface Case {
  op: Op;
  m: number;
  n: number;
  /** Leading triplets (randomizedSvd only). */
  rank?: number;
}

const RANK = 16, OVERSAMPLE = 10, POWER_ITERATIONS = 2;

const CASES: Case[] = [
  { op: "qr", m: 256, n: 256 },
  { op: "qr", m: 768, n: 768 },
  { op: "svd", m: 256, n: 256 },
  { op: "svd", m: 768, n: 768 },
  { op: "randomizedSvd", m: 768, n: 768, rank: RANK },
  { op: "randomizedSvd", m: 4096, n: 768, rank: RANK },
];

/**
 * Flops of one call, for scaling estimates between sizes (not reported as a rate): Householder
 * QR with Q formed ≈ 4mn² − 4n³/3; one-sided Jacobi ≈ 8 sweeps of 4·M·N² + 2·N³ plus the QR of
 * U; randomized SVD ≈ 2(q + 1) products with A and as many QRs of [·, l], plus the small SVD.
 */
function flops(c: Case): number {
  const M = Math.max(c.m, c.n), N = Math.min(c.m, c.n);
  const qrFlops = (m: number, n: number) => 4 * m * n * n - (4 / 3) * n ** 3;
  if (c.op === "qr") return qrFlops(c.m, c.n);
  if (c.op === "svd") return 8 * (4 * M * N * N + 2 * N ** 3) + qrFlops(M, N);
  const l = Math.min(N, (c.rank ?? 1) + OVERSAMPLE);
  const passes = 2 * (POWER_ITERATIONS + 1);
  return passes * (2 * c.m * c.n * l + qrFlops(M, l)) +
    8 * (4 * N * l * l + 2 * l ** 3);
}

function label(c: Case): string {
  return c.op === "randomizedSvd"
    ? `${c.op} rank ${c.rank} of ${c.m}×${c.n}`
    : `${c.op} ${c.m}×${c.n}`;
}

/** Record one call of the case's op on `a` (its results are disposed by measure's scope). */
function call(c: Case, a: Tensor): void {
  if (c.op === "qr") qr(a);
  else if (c.op === "svd") svd(a);
  else {
    randomizedSvd(a, c.rank!, {
      oversample: OVERSAMPLE,
      powerIterations: POWER_ITERATIONS,
      seed: 1,
    });
  }
}

const results: MeasureResult[] = [];
const skipped: string[] = [];
/** Milliseconds per flop of the last measured case, per op and variant. */
const msPerFlop = new Map<string, number>();
const compiled = new Set<string>();

/** Compile a variant's kernels on a small matrix so the first timed call does not pay for it. */
async function compile(variant: string): Promise<void> {
  if (compiled.has(variant)) return;
  compiled.add(variant);
  const a = randNormal([40, 24], 0, 1, { seed: 3 });
  withVariant("linalg", variant, () => {
    for (const op of ["qr", "svd", "randomizedSvd"] as Op[]) call({ op, m: 40, n: 24, rank: 4 }, a);
  });
  await rt().sync();
  a.dispose();
}

for (const c of CASES) {
  for (const variant of LINALG.variantNames()) {
    const name = `${variant} ${label(c)}`;
    let done = false;
    Deno.bench({ name, group: label(c), n: 1, warmup: 0 }, async () => {
      // deno bench may call a case more than once; measure() already repeats.
      if (done) return;
      done = true;
      const key = `${variant}|${c.op}`;
      const known = msPerFlop.get(key);
      const estimateMs = known ? known * flops(c) : 0;
      if (estimateMs > CASE_BUDGET_MS) {
        const line = `${name}: skipped (about ${(estimateMs / 1000).toFixed(0)} s per call)`;
        console.log(line);
        skipped.push(line);
        await writeResults();
        return;
      }
      await compile(variant);
      const a = randNormal([c.m, c.n], 0, 1, { seed: 2 });
      try {
        const r = await withVariant("linalg", variant, () =>
          measure(
            { name, warmup: 0, iterations: 3, budgetMs: CASE_BUDGET_MS },
            () => call(c, a),
          ));
        results.push(r);
        msPerFlop.set(key, r.ms / flops(c));
        await writeResults();
      } finally {
        a.dispose();
      }
    });
  }
}

/** Rewrite the results file (after every case, so an interrupted run keeps what it measured). */
async function writeResults(): Promise<void> {
  if (Deno.env.get("PEFT_BENCH_WRITE") !== "1") return;
  const dir = new URL("./results/", import.meta.url);
  await Deno.mkdir(dir, { recursive: true });
  const path = new URL(`${adapterSlug()}-linalg.md`, dir);
  // Software adapters share the CPU with everything else: record how busy it was.
  const load = await Deno.readTextFile("/proc/loadavg").catch(() => "");
  const body = resultsMarkdown("linalg", results) +
    (skipped.length ? `\nSkipped:\n${skipped.map((s) => `- ${s}`).join("\n")}\n` : "") +
    (load
      ? `\nLoad average after the last case (1/5/15 min): ${
        load.split(" ").slice(0, 3).join(" ")
      } on ${navigator.hardwareConcurrency} CPUs.\n`
      : "");
  await Deno.writeTextFile(path, body);
}
