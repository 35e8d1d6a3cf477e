/**
 * A shared helper for kernel benchmarks: warm up, time on the GPU (timestamp queries) or, without
 * them, on the host around a full sync, and turn the time into GFLOP/s or GB/s.
 *
 * `deno bench` times whole host iterations, which for GPU work mostly measures submission and
 * read-back latency; these helpers time the recorded dispatches themselves. Use them inside a
 * `Deno.bench` with `n: 1, warmup: 0` so the work runs once per bench case.
 *
 * @module
 */
import { gpu, init, rt, scope } from "../ops/mod.ts";

/** What to measure. */
export interface MeasureOptions {
  /** Shown in the printed line and kept in the result. */
  name: string;
  /** Floating-point operations of one call of `record` (gives GFLOP/s). */
  flops?: number;
  /** Bytes one call of `record` moves (gives GB/s). */
  bytes?: number;
  /** Untimed calls first (compiles pipelines, fills pools). Default 1. */
  warmup?: number;
  /** Timed calls; the median is reported. Default 3. */
  iterations?: number;
  /** Stop adding iterations once this much time has been measured (ms). Default 2000. */
  budgetMs?: number;
  /** Print one line to stdout. Default true. */
  print?: boolean;
}

/** One measurement. */
export interface MeasureResult {
  /** The measured case, as given. */
  name: string;
  /** Median milliseconds per call. */
  ms: number;
  /** Every timed call, in milliseconds. */
  samples: number[];
  /** Throughput when `flops` was given. */
  gflops?: number;
  /** Throughput when `bytes` was given. */
  gbps?: number;
  /** "gpu": timestamp queries; "host": wall time around submit and sync. */
  clock: "gpu" | "host";
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Time one call of `record` (every tensor it creates is disposed afterwards). */
async function timeOnce(record: () => void): Promise<{ ms: number; clock: "gpu" | "host" }> {
  await rt().sync();
  if (gpu().hasTimestamps) {
    const ms = await rt().timeGpu(() => scope(() => void record()));
    if (ms !== null) return { ms, clock: "gpu" };
  }
  const t0 = performance.now();
  scope(() => void record());
  await rt().sync();
  return { ms: performance.now() - t0, clock: "host" };
}

/**
 * Measure `record`, a function that records dispatches (it need not sync). Returns the median
 * time per call with the throughput implied by `flops` or `bytes`.
 *
 * @example
 * ```ts
 * import { measure } from "./util.ts";
 * import { empty, matmul } from "../ops/mod.ts";
 * const a = empty([256, 256]), b = empty([256, 256]);
 * await measure({ name: "matmul 256³", flops: 2 * 256 ** 3 }, () => void matmul(a, b));
 * ```
 */
export async function measure(
  options: MeasureOptions,
  record: () => void,
): Promise<MeasureResult> {
  await init();
  const warmup = options.warmup ?? 1, iterations = options.iterations ?? 3;
  const budget = options.budgetMs ?? 2000;
  for (let i = 0; i < warmup; i++) await timeOnce(record);
  const samples: number[] = [];
  let clock: "gpu" | "host" = "host";
  let spent = 0;
  while (samples.length < iterations && (samples.length === 0 || spent < budget)) {
    const t = await timeOnce(record);
    samples.push(t.ms);
    clock = t.clock;
    spent += t.ms;
  }
  const ms = median(samples);
  const result: MeasureResult = { name: options.name, ms, samples, clock };
  if (options.flops !== undefined) result.gflops = options.flops / ms / 1e6;
  if (options.bytes !== undefined) result.gbps = options.bytes / ms / 1e6;
  if (options.print ?? true) console.log(formatResult(result));
  return result;
}

/** One line: name, time, throughput and clock. */
export function formatResult(r: MeasureResult): string {
  const rate = r.gflops !== undefined
    ? `${r.gflops.toFixed(2)} GFLOP/s`
    : r.gbps !== undefined
    ? `${r.gbps.toFixed(2)} GB/s`
    : "";
  return `${r.name.padEnd(44)} ${r.ms.toFixed(2).padStart(10)} ms  ${
    rate.padStart(16)
  }  (${r.clock})`;
}

/** A Markdown table of results under a heading naming the adapter. */
export function resultsMarkdown(title: string, results: readonly MeasureResult[]): string {
  const g = gpu();
  const lines = [
    `# ${title}`,
    "",
    `Adapter: ${g.adapter.name} (${g.adapter.backend}${
      g.adapter.isFallback ? ", software fallback" : ""
    }); Deno ${Deno.version.deno}; ${new Date().toISOString().slice(0, 10)}.`,
    "",
    "| case | ms (median) | throughput | clock |",
    "| --- | ---: | ---: | --- |",
  ];
  for (const r of results) {
    const rate = r.gflops !== undefined
      ? `${r.gflops.toFixed(2)} GFLOP/s`
      : r.gbps !== undefined
      ? `${r.gbps.toFixed(2)} GB/s`
      : "";
    lines.push(`| ${r.name} | ${r.ms.toFixed(2)} | ${rate} | ${r.clock} |`);
  }
  return lines.join("\n") + "\n";
}

/** A file-name-safe slug of the adapter name (e.g. "llvmpipe", "nvidia-h100"). */
export function adapterSlug(): string {
  const name = gpu().adapter.name.toLowerCase();
  if (name.includes("llvmpipe")) return "llvmpipe";
  return name.replace(/\(.*?\)/g, "").trim().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
}
