/**
 * Our side of the one-command GPU benchmark (`bench/gpu/run.sh`), and the report that merges it
 * with the PyTorch peer's figures.
 *
 * `deno run -A bench/gpu/run.ts ours --out DIR [--small]` measures, on whatever adapter is there:
 * matmul GFLOP/s (4096×768·768×768 and 4096×768·768×3072, every variant that supports them, so
 * the variant preferences can be tuned on what is seen), fused attention GFLOP/s forward and
 * forward + backward at T 128 (B 32) and T 512 (B 8), H 12, D 64, and a roberta-base-shaped random
 * model's LoRA r 8 q,v step and full fine-tuning step at batch 32 × seq 128 (ms/step,
 * tokens/s, dispatches/step, peak memory by category). It writes DIR/ours.json.
 * `--small` shrinks every shape (matmul 512×128·128×{128,512}, attention B 2 H 2 D 32 T 32/64,
 * the reference encoder of bench/step_bench.ts at batch 4 × seq 32) so the whole run finishes in
 * about a minute on a software adapter.
 *
 * `deno run -A bench/gpu/run.ts report --out DIR` reads DIR/ours.json and DIR/peer.json (when
 * the peer ran) and writes DIR/summary.json and DIR/summary.md with the ratios.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import {
  ATTENTION,
  backward,
  init,
  MATMUL,
  matmulKey,
  matmulRaw,
  noGrad,
  randNormal,
  rt,
  scaledDotProductAttention,
  scope,
  sum,
  withVariant,
} from "../../ops/mod.ts";
import { measure } from "../util.ts";
import {
  categoryLine,
  measureStep,
  mib,
  prepareStep,
  REFERENCE_STEP,
  ROBERTA_BASE_STEP,
  type StepMode,
  type StepShape,
} from "../step_lib.ts";

/** One kernel figure. */
interface KernelFigure {
  name: string;
  variant: string;
  ms: number;
  gflops: number;
  clock: string;
}

/** One training-step figure. */
interface StepFigure {
  mode: StepMode;
  shape: StepShape;
  /** Steps back to back, waited for once (see measureStep). */
  msPerStep: number;
  /** One step waited for alone. */
  syncedMs: number;
  tokensPerSecond: number;
  dispatchesPerStep: number;
  trainableParams: number;
  peakBytes: Record<string, number>;
}

async function matmulFigures(small: boolean): Promise<KernelFigure[]> {
  const m = small ? 512 : 4096, k = small ? 128 : 768;
  const out: KernelFigure[] = [];
  for (const n of small ? [128, 512] : [768, 3072]) {
    const a = randNormal([m, k], 0, 1, { seed: 1 }).keep();
    const b = randNormal([k, n], 0, 1, { seed: 2 }).keep();
    const shapes = { M: m, N: n, K: k, batch: 1, aMatrices: 1, bMatrices: 1 };
    const full = { ...shapes, aDtype: "f32" as const, bDtype: "f32" as const };
    for (const v of MATMUL.candidates(full)) {
      const r = await withVariant("matmul", v.name, () =>
        measure({
          name: `matmul ${m}×${k}·${k}×${n} (${v.name})`,
          flops: 2 * m * n * k,
          warmup: 1,
          iterations: 3,
          budgetMs: small ? 2000 : 5000,
        }, () => scope(() => void matmulRaw(a, b))));
      out.push({
        name: `matmul ${m}×${k}·${k}×${n}`,
        variant: v.name,
        ms: r.ms,
        gflops: r.gflops!,
        clock: r.clock,
      });
    }
    console.log(`  preferred for ${matmulKey(full)}: ${MATMUL.choose(full, matmulKey(full)).name}`);
    a.dispose();
    b.dispose();
  }
  return out;
}

async function attentionFigures(small: boolean): Promise<KernelFigure[]> {
  const out: KernelFigure[] = [];
  const cases = small
    ? [{ b: 2, h: 2, d: 32, t: 32 }, { b: 2, h: 2, d: 32, t: 64 }]
    : [{ b: 32, h: 12, d: 64, t: 128 }, { b: 8, h: 12, d: 64, t: 512 }];
  for (const { b, h, d, t } of cases) {
    const q = randNormal([b, h, t, d], 0, 1, { seed: 3 }).keep();
    const kv = randNormal([b, h, t, d], 0, 1, { seed: 4 }).keep();
    const fwdFlops = 4 * b * h * t * t * d;
    const shapes = { batch: b, queryHeads: h, kvHeads: h, queryLen: t, keyLen: t, headDim: d };
    const variant = ATTENTION.choose(shapes).name;
    const fwd = await measure({
      name: `attention B${b} H${h} T${t} D${d} forward`,
      flops: fwdFlops,
    }, () => scope(() => noGrad(() => void scaledDotProductAttention(q, kv, kv))));
    q.requiresGrad = kv.requiresGrad = true;
    const both = await measure({
      name: `attention B${b} H${h} T${t} D${d} forward+backward`,
      flops: 3.5 * fwdFlops,
    }, () =>
      scope(() => {
        backward(sum(scaledDotProductAttention(q, kv, kv)));
        for (const x of [q, kv]) {
          x.grad?.dispose();
          x.grad = null;
        }
      }));
    for (const [r, mode] of [[fwd, "forward"], [both, "forward+backward"]] as const) {
      out.push({
        name: `attention T${t} ${mode}`,
        variant,
        ms: r.ms,
        gflops: r.gflops!,
        clock: r.clock,
      });
    }
    for (const x of [q, kv]) x.dispose();
  }
  return out;
}

async function stepFigures(small: boolean): Promise<StepFigure[]> {
  const shape: StepShape = small ? { ...REFERENCE_STEP, batch: 4, seq: 32 } : ROBERTA_BASE_STEP;
  const out: StepFigure[] = [];
  for (const mode of ["lora", "full"] as StepMode[]) {
    const baseline = rt().pool.stats().live;
    const c = await prepareStep(mode, shape);
    const m = await measureStep(c, small ? 3 : 5, 2, baseline);
    const fig: StepFigure = {
      mode,
      shape,
      msPerStep: m.msPerStep,
      syncedMs: m.syncedMs,
      tokensPerSecond: (shape.batch * shape.seq) / (m.msPerStep / 1000),
      dispatchesPerStep: m.dispatches,
      trainableParams: c.trainable,
      peakBytes: m.peak,
    };
    console.log(
      `  ${mode} step: ${m.msPerStep.toFixed(1)} ms (${m.syncedMs.toFixed(1)} ms waited for ` +
        `alone), ${m.dispatches} dispatches, peak ` +
        `${mib(m.peak.total)} MiB (${categoryLine(m.peak)})`,
    );
    out.push(fig);
    c.dispose();
  }
  return out;
}

async function ours(dir: string, small: boolean): Promise<void> {
  const g = await init();
  console.log(
    `adapter: ${g.adapter.name} (${g.adapter.backend}, fallback ${g.adapter.isFallback})`,
  );
  const t0 = performance.now();
  const result = {
    adapter: g.adapter,
    small,
    deno: Deno.version.deno,
    date: new Date().toISOString(),
    matmul: await matmulFigures(small),
    attention: await attentionFigures(small),
    steps: await stepFigures(small),
    seconds: 0,
  };
  result.seconds = (performance.now() - t0) / 1000;
  await writeAtomic(join(dir, "ours.json"), JSON.stringify(result, null, 2) + "\n");
}

/** Write `text` to `path` through a temporary file and a rename (no half-written figures). */
async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, text);
  await Deno.rename(tmp, path);
}

/** What bench/gpu/peer.py writes. */
interface PeerFile {
  skipped?: string;
  device?: string;
  torch?: string;
  implementation?: string;
  matmul?: { name: string; ms: number; gflops: number }[];
  steps?: { mode: StepMode; msPerStep: number; syncedMs?: number; peakBytes: number }[];
}

async function readJson<T>(path: string): Promise<T | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as T;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}

async function report(dir: string): Promise<void> {
  const o = await readJson<Awaited<ReturnType<typeof oursShape>>>(join(dir, "ours.json"));
  if (!o) throw new Error(`${join(dir, "ours.json")} is missing: run the "ours" part first`);
  const p = await readJson<PeerFile>(join(dir, "peer.json"));
  const lines = [
    `# GPU benchmark${o.small ? " (--small)" : ""}: ${o.adapter.name}`,
    "",
    `Adapter ${o.adapter.name} (${o.adapter.backend}, fallback ${o.adapter.isFallback}), ` +
    `Deno ${o.deno}, ${o.date}; our part took ${o.seconds.toFixed(0)} s. Peer: ${
      p?.skipped
        ? `skipped (${p.skipped})`
        : p
        ? `${p.implementation} on ${p.device}, torch ${p.torch}`
        : "did not run"
    }.`,
    "",
    "## Kernels",
    "",
    "| kernel | variant | ms | GFLOP/s | clock | PyTorch GFLOP/s |",
    "| --- | --- | ---: | ---: | --- | ---: |",
  ];
  for (const k of [...o.matmul, ...o.attention]) {
    const peer = p?.matmul?.find((x) => x.name === k.name);
    lines.push(
      `| ${k.name} | ${k.variant} | ${k.ms.toFixed(3)} | ${k.gflops.toFixed(1)} | ${k.clock} | ${
        peer ? peer.gflops.toFixed(1) : "—"
      } |`,
    );
  }
  lines.push(
    "",
    "## Training steps",
    "",
    "Steps back to back, waited for once (as a training loop that reads the loss only when it " +
      "logs); in brackets one step waited for alone.",
    "",
    "| step | shape | ours ms | PyTorch ms | ratio | dispatches | ours peak MiB | PyTorch peak MiB | memory ratio |",
    "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
  );
  const steps = o.steps.map((s) => {
    const peer = p?.steps?.find((x) => x.mode === s.mode) ?? null;
    const sh = s.shape;
    lines.push(
      `| ${s.mode} | H${sh.hidden} L${sh.layers} ${sh.batch}×${sh.seq} | ${
        s.msPerStep.toFixed(1)
      } (${s.syncedMs.toFixed(1)}) | ${
        peer
          ? `${peer.msPerStep.toFixed(1)}${
            peer.syncedMs !== undefined ? ` (${peer.syncedMs.toFixed(1)})` : ""
          }`
          : "—"
      } | ${
        peer ? (s.msPerStep / peer.msPerStep).toFixed(2) + "×" : "—"
      } | ${s.dispatchesPerStep} | ${mib(s.peakBytes.total)} (${categoryLine(s.peakBytes)}) | ${
        peer ? mib(peer.peakBytes) : "—"
      } | ${peer ? (s.peakBytes.total / peer.peakBytes).toFixed(2) + "×" : "—"} |`,
    );
    return {
      ...s,
      peerMsPerStep: peer?.msPerStep ?? null,
      peerPeakBytes: peer?.peakBytes ?? null,
      ratio: peer ? s.msPerStep / peer.msPerStep : null,
      memoryRatio: peer ? s.peakBytes.total / peer.peakBytes : null,
    };
  });
  await writeAtomic(join(dir, "summary.md"), lines.join("\n") + "\n");
  await writeAtomic(
    join(dir, "summary.json"),
    JSON.stringify({ ours: o, peer: p, steps }, null, 2) + "\n",
  );
  console.log(lines.join("\n"));
}

/** The shape of ours.json (for the reader's types). */
function oursShape() {
  return Promise.resolve({
    adapter: { name: "", backend: "", isFallback: false },
    small: false,
    deno: "",
    date: "",
    seconds: 0,
    matmul: [] as KernelFigure[],
    attention: [] as KernelFigure[],
    steps: [] as StepFigure[],
  });
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { out: { type: "string" }, small: { type: "boolean", default: false } },
  });
  const part = positionals[0];
  if (!values.out) throw new Error("bench/gpu/run.ts: --out DIR is required");
  if (part === "ours") await ours(values.out, values.small!);
  else if (part === "report") await report(values.out);
  else throw new Error(`bench/gpu/run.ts: expected "ours" or "report", got ${part ?? "nothing"}`);
}

if (import.meta.main) await main();
