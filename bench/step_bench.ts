/**
 * The reference encoder training step (see ./step_lib.ts), timed on this engine and, side by side,
 * in PyTorch (bench/peers/enc_step.py under /usr/bin/python3, 2 threads).
 *
 * `deno task bench:step` runs `--rounds` rounds; each round times our LoRA step, PyTorch's LoRA
 * step, our full step and PyTorch's full step (A/B/A/B, so a change in machine load hits both
 * sides alike), then prints per mode: median ms/step over the rounds, dispatches/step, peak memory
 * by category, and the ratio ours / PyTorch. Our ms/step is a round's steps recorded back to back
 * and waited for once, as `train()` runs them (see {@link measureStep}); the latency of one step
 * waited for alone is printed beside it. Without torch the peer is skipped with a message.
 *
 * Flags: --mode lora|full|both (default both), --rounds N (3), --steps N per round (5),
 * --warmup N (2), --no-peer, --python PATH (/usr/bin/python3), --json FILE (write the figures),
 * --profile (after the rounds, GPU time per kernel name of one step of each mode; --profile-shapes:
 * per kernel, grid and product shape), --matmul
 * (GFLOP/s of the encoder's narrow linear shapes, see {@link narrowMatmul}; --matmul-only: those
 * alone, no step), --attention-dropout P
 * (0.1; the peer always applies 0.1, so 0 only for comparing with engines that lack it),
 * --all-rows (the last layer computes every row past its attention, as PyTorch/Hugging Face do;
 * by default only the [CLS] rows the head reads, with the same values: see
 * `EncoderForSequenceClassification.firstTokenOnly`).
 *
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import {
  defineKernel,
  empty,
  init,
  matmulRaw,
  noGrad,
  randNormal,
  rt,
  scope,
  setPackByCopy,
  tensor,
  transpose,
} from "../ops/mod.ts";
import {
  categoryLine,
  measureStep,
  median,
  mib,
  prepareStep,
  REFERENCE_STEP,
  type StepCase,
  type StepMeasure,
  type StepMode,
} from "./step_lib.ts";

/** What the PyTorch peer printed. */
interface PeerResult {
  medianMs: number;
  stepsMs: number[];
  peak: Record<string, number>;
  torch: string;
  threads: number;
}

const PEER = new URL("./peers/enc_step.py", import.meta.url).pathname;

/** Run the peer once; null (with the reason) when it cannot run. */
async function runPeer(
  python: string,
  mode: StepMode,
  steps: number,
  warmup: number,
): Promise<PeerResult | string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(python, {
      args: [PEER, "--mode", mode, "--steps", String(steps), "--warmup", String(warmup)],
      env: { OMP_NUM_THREADS: "2" },
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    return `cannot start ${python}: ${(e as Error).message}`;
  }
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    return `${python} ${PEER} failed: ${new TextDecoder().decode(out.stderr).slice(-400)}`;
  }
  const parsed = JSON.parse(text.split("\n").at(-1) ?? "{}");
  if (parsed.skipped) return parsed.skipped;
  return parsed as PeerResult;
}

const USAGE = `deno task bench:step [flags]: the reference encoder step, ours and PyTorch's, A/B/A/B
  --mode lora|full|both   which steps (both)
  --rounds N              rounds of each side (3)
  --steps N               timed steps per round (5)
  --warmup N              untimed steps first (2)
  --no-peer               skip PyTorch
  --python PATH           the peer's interpreter (/usr/bin/python3)
  --json FILE             also write the figures as JSON
  --profile               GPU time per kernel of one step of each mode (--profile-shapes: per
                          kernel, grid and product shape)
  --matmul                GFLOP/s of the encoder's narrow products (--matmul-only: those alone)
  --attention-dropout P   attention-probability dropout of our step (0.1, as the peer's)
  --all-rows              our last layer computes every row, as Hugging Face does (default: the
                          [CLS] rows the head reads, the same values)`;

function parseFlags() {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      mode: { type: "string", default: "both" },
      rounds: { type: "string", default: "3" },
      steps: { type: "string", default: "5" },
      warmup: { type: "string", default: "2" },
      "no-peer": { type: "boolean", default: false },
      python: { type: "string", default: "/usr/bin/python3" },
      json: { type: "string" },
      profile: { type: "boolean", default: false },
      "profile-shapes": { type: "boolean", default: false },
      matmul: { type: "boolean", default: false },
      "matmul-only": { type: "boolean", default: false },
      "attention-dropout": { type: "string", default: "0.1" },
      "all-rows": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const int = (name: string, v: string | undefined, min: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) {
      throw new Error(`step_bench: --${name} must be an integer ≥ ${min}, got ${v}`);
    }
    return n;
  };
  if (!["lora", "full", "both"].includes(values.mode!)) {
    throw new Error(`step_bench: --mode must be lora, full or both, got ${values.mode}`);
  }
  return {
    modes: (values.mode === "both" ? ["lora", "full"] : [values.mode]) as StepMode[],
    rounds: int("rounds", values.rounds, 1),
    steps: int("steps", values.steps, 1),
    warmup: int("warmup", values.warmup, 0),
    peer: !values["no-peer"],
    python: values.python!,
    json: values.json,
    profile: values.profile! || values["profile-shapes"]!,
    profileShapes: values["profile-shapes"]!,
    matmul: values.matmul!,
    matmulOnly: values["matmul-only"]!,
    allRows: values["all-rows"]!,
    attentionDropout: (() => {
      const p = Number(values["attention-dropout"]);
      if (!(p >= 0 && p < 1)) {
        throw new Error(
          `step_bench: --attention-dropout must be in [0, 1), got ${values["attention-dropout"]}`,
        );
      }
      return p;
    })(),
  };
}

/** Per-mode results gathered over the rounds. */
interface ModeResult {
  ours: StepMeasure[];
  peer: PeerResult[];
  trainable: number;
  /** Peak memory of this mode alone (first round). */
  memory?: StepMeasure["peak"];
}

/** Load average (1/5/15 min) of a shared machine, printed with every figure. */
function loadAverage(): string {
  try {
    return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  } catch {
    return "—";
  }
}

/** One product of {@link narrowMatmul}: its label, FLOPs and a call that records it. */
interface NarrowCase {
  label: string;
  /** The product kernel's name (its packs are timed apart). */
  kernel: string;
  flop: number;
  call: () => void;
  /** Recorded before each timing, untimed: leaves the packs the call expects. */
  prepare?: () => void;
  /** Rewrite the input from the host (its pack is then made again by the next call). */
  rewrite?: () => void;
  dispose: () => void;
}

/**
 * The reference encoder's narrow products with a frozen W [n, k] (x 1024×128 with a 128×128 W;
 * x 1024×512 with a 128×512 W), as forward and backward run them: y = x·Wᵀ
 * (`matmul_texture_tB`, x's pack reused), dx = g·W (`matmul_texture`) and dW = gᵀ·x
 * (`matmul_texture_tA`, g's pack left by dx), plus the 1024³ y = x·Wᵀ for reference.
 */
function narrowCases(): NarrowCase[] {
  const cases: NarrowCase[] = [];
  const rnd = (shape: number[], seed: number, weights = false) =>
    randNormal(shape, 0, 0.5, { seed, category: weights ? "weights" : undefined }).keep();
  for (const [m, k, n] of [[1024, 128, 128], [1024, 512, 128], [1024, 1024, 1024]]) {
    const host = Float32Array.from({ length: m * k }, (_, i) => Math.sin(i));
    const x = tensor(host, [m, k]).keep();
    const w = rnd([n, k], 2, true), g = rnd([m, n], 3);
    const wT = transpose(w).keep(), gT = transpose(g).keep();
    const flop = 2 * m * n * k;
    const dispose = () => [x, w, g, wT, gT].forEach((t) => t.dispose());
    cases.push({
      label: `y = x·Wᵀ, ${m}×${k}·(${n}×${k})ᵀ`,
      kernel: "matmul_texture_tB",
      flop,
      call: () => void matmulRaw(x, wT, { reuseA: true }),
      rewrite: () => rt().write(x.buffer, 0, host),
      dispose: () => {},
    });
    if (m === k) {
      cases.at(-1)!.dispose = dispose;
      continue;
    }
    cases.push({
      label: `dx = g·W, ${m}×${n}·${n}×${k}`,
      kernel: "matmul_texture",
      flop,
      call: () => void matmulRaw(g, w, { reuseA: true }),
      dispose: () => {},
    });
    cases.push({
      label: `dW = gᵀ·x, ${n}×${m}·${m}×${k}`,
      kernel: "matmul_texture_tA",
      flop,
      // g's pack as dx leaves it (the product reads Aᵀ's texels from it); the other cases'
      // layer inputs may have evicted it since.
      prepare: () => matmulRaw(g, w, { reuseA: true }).dispose(),
      call: () => void matmulRaw(gT, x),
      dispose,
    });
  }
  return cases;
}

/**
 * GFLOP/s of the encoder's narrow products (see {@link narrowCases}), medians of 7 repeats with
 * the cases interleaved (A/B/A/B, so load changes hit all alike): "kernel" is the product kernel
 * alone in its timed pass (from a per-dispatch profile), "call in a batch" is 8 calls recorded in
 * one pass divided by 8 (pack kernels included, the fixed per-pass cost shared; timestamps do not
 * see the driver's copies), the host-timed figures come from n and 8n calls in one submit, no
 * timestamps: the per-call difference, and the fixed submit-and-wait cost left over; "with the
 * input's pack" rewrites x from the host before each forward call, its pack made by the pack
 * kernel and by the driver's copy ({@link setPackByCopy}), A/B. Before them, the fixed cost of an
 * empty dispatch: alone in its pass, and per dispatch in a pass of 100; after them the adapter's
 * present ceilings ({@link machineCeiling}).
 */
async function narrowMatmul(): Promise<string[]> {
  const med = (xs: number[]) => median(xs.filter(Number.isFinite));
  const reps = 7, batch = 8;
  const sink = empty([64]).keep();
  const nothing = defineKernel({
    name: "empty",
    bindings: [{ name: "o", type: "f32", access: "read_write" }],
    source: `@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) { if (gid.x == 0u) { o[0] = 1.0; } }`,
  });
  const alone: number[] = [], inHundred: number[] = [];
  for (let r = 0; r < reps; r++) {
    alone.push((await rt().timeGpu(() => rt().dispatch(nothing, [sink], {}, [1]))) ?? NaN);
    const t = await rt().timeGpu(() => {
      for (let i = 0; i < 100; i++) rt().dispatch(nothing, [sink], {}, [1]);
    });
    inHundred.push((t ?? NaN) / 100);
  }
  sink.dispose();
  const lines = [
    `empty dispatch: ${med(alone).toFixed(3)} ms alone in its pass, ${
      med(inHundred).toFixed(4)
    } ms each in a pass of 100 (load ${loadAverage()})`,
    "",
    "| product | kernel | kernel ms (GFLOP/s) | call in a batch of 8, ms (GFLOP/s) | " +
    "host-timed call, ms (GFLOP/s) | host fixed cost ms | with the input's pack by the " +
    "pack kernel, host-timed ms, CPU ms | with the input's pack by the driver's copy, " +
    "host-timed ms, CPU ms | load |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
  ];
  const cases = narrowCases();
  const run = (f: () => void) => scope(() => noGrad(f));
  for (const c of cases) for (let i = 0; i < 2; i++) run(c.call); // compile, fill the caches
  await rt().sync();
  const kernel = cases.map((): number[] => []);
  const batched = cases.map((): number[] => []);
  const fresh = cases.map(() => ({
    kernel: { wall: [] as number[], cpu: [] as number[] },
    copy: { wall: [] as number[], cpu: [] as number[] },
  }));
  const host = cases.map((): { per: number[]; fixed: number[] } => ({ per: [], fixed: [] }));
  // Host wall time of n calls, waited for: no timestamps at all (the driver's copies, outside
  // compute passes, escape those). With `rewrite` each call first rewrites x from the host, so
  // its pack is made again (each write also submits what was recorded before it).
  const hostMs = async (c: NarrowCase, n: number, rewrite = false) => {
    if (c.prepare) run(c.prepare);
    await rt().sync();
    const t0 = performance.now(), cpu0 = process.cpuUsage();
    run(() => {
      for (let j = 0; j < n; j++) {
        if (rewrite) c.rewrite!();
        c.call();
      }
    });
    await rt().sync();
    const cpu = process.cpuUsage(cpu0);
    return { wall: performance.now() - t0, cpu: (cpu.user + cpu.system) / 1000 };
  };
  // Per call from n and 8n calls, n making the smaller batch ≈ 25 ms: the difference over 7n
  // calls is the per-call cost without the fixed submit-and-wait cost, which the rest is.
  const perCall = async (c: NarrowCase, i: number, rewrite = false) => {
    const n = Math.max(1, Math.round(25 / (med(kernel[i]) || 25)));
    const few = await hostMs(c, n, rewrite), many = await hostMs(c, 8 * n, rewrite);
    const per = (many.wall - few.wall) / (7 * n);
    return { per, fixed: few.wall - n * per, cpu: (many.cpu - few.cpu) / (7 * n) };
  };
  for (let r = 0; r < reps; r++) {
    for (const [i, c] of cases.entries()) {
      if (c.prepare) run(c.prepare);
      const prof = await rt().profile(() => run(c.call));
      const e = prof?.find(([name]) => name === c.kernel)?.[1];
      kernel[i].push(e ? e.ms / e.count : NaN);
      if (c.prepare) run(c.prepare);
      const t = await rt().timeGpu(() =>
        run(() => {
          for (let j = 0; j < batch; j++) c.call();
        })
      );
      batched[i].push((t ?? NaN) / batch);
      const { per, fixed } = await perCall(c, i);
      host[i].per.push(per);
      host[i].fixed.push(fixed);
      if (c.rewrite) {
        // The input's pack by the pack kernel and by the driver's copy, A/B in every repeat.
        for (const byCopy of [false, true]) {
          setPackByCopy(byCopy);
          const f = fresh[i][byCopy ? "copy" : "kernel"], t = await perCall(c, i, true);
          f.wall.push(t.per);
          f.cpu.push(t.cpu);
        }
        setPackByCopy(true);
      }
    }
  }
  const cell = (flop: number, ms: number) =>
    Number.isFinite(ms) ? `${ms.toFixed(2)} (${(flop / ms / 1e6).toFixed(1)})` : "—";
  // Wall ms (GFLOP/s) and the process's CPU ms per call (all its threads: robust to load).
  const packCell = (t: { wall: number[]; cpu: number[] }) =>
    t.wall.length ? `${med(t.wall).toFixed(2)}, CPU ${med(t.cpu).toFixed(2)}` : "—";
  for (const [i, c] of cases.entries()) {
    lines.push(
      `| ${c.label} | ${c.kernel} | ${cell(c.flop, med(kernel[i]))} | ` +
        `${cell(c.flop, med(batched[i]))} | ${cell(c.flop, med(host[i].per))} | ` +
        `${med(host[i].fixed).toFixed(1)} | ` +
        `${packCell(fresh[i].kernel)} | ${packCell(fresh[i].copy)} | ${loadAverage()} |`,
    );
    c.dispose();
  }
  return [...lines, "", ...(await machineCeiling())];
}

/**
 * What the adapter does now without a product's mix: FMA throughput with the accumulators in
 * registers (8 vec4 per thread) and spilled (32, as the 8×16 texture tile holds), and the rate of
 * rgba32float storage-texture loads (per lane). A product's per-k step costs its texel loads
 * plus its FMAs at these rates, so they bound what any tile can reach on this machine at this
 * load.
 */
async function machineCeiling(): Promise<string[]> {
  const out = empty([64 * 64 * 4]).keep();
  const tex = rt().textures.acquire(32, 1024);
  const reps = 7, iters = 1024, threads = 64 * 64;
  const fmaKernel = (acc: number) =>
    defineKernel({
      name: `ceiling_fma${acc}`,
      bindings: [{ name: "o", type: "vec4f", access: "read_write" }],
      params: [["iters", "u32"], ["s", "f32"], ["t", "f32"]],
      source: `@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
${Array.from({ length: acc }, (_, i) => `  var a${i} = vec4f(f32(gid.x + ${i}u));`).join("\n")}
  for (var i = 0u; i < params.iters; i++) {
${Array.from({ length: acc }, (_, i) => `    a${i} = a${i} * params.s + params.t;`).join("\n")}
  }
  o[gid.x] = ${Array.from({ length: acc }, (_, i) => `a${i}`).join(" + ")};
}`,
    });
  const loads = 16;
  const loadKernel = defineKernel({
    name: "ceiling_texel_loads",
    bindings: [
      { name: "T", texture: "rgba32float", access: "read" },
      { name: "o", type: "vec4f", access: "read_write" },
    ],
    params: [["iters", "u32"]],
    source: `@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  var s = vec4f(0.0);
  for (var i = 0u; i < params.iters; i++) {
${
      Array.from(
        { length: loads },
        (_, j) => `    s += textureLoad(T, vec2u(i % 32u, (4u * gid.x + ${j}u) % 1024u));`,
      ).join("\n")
    }
  }
  o[gid.x] = s;
}`,
  });
  // The three kernels interleaved, medians of `reps`.
  const fma = [8, 32].map((acc) => ({ acc, k: fmaKernel(acc), ms: [] as number[] }));
  const loadMs: number[] = [];
  for (let r = 0; r < reps; r++) {
    for (const f of fma) {
      const t = await rt().timeGpu(() =>
        rt().dispatch(f.k, [out], { iters, s: 0.999, t: 1e-3 }, [64])
      );
      f.ms.push(t ?? NaN);
    }
    loadMs.push(
      (await rt().timeGpu(() => rt().dispatch(loadKernel, [tex, out], { iters }, [64]))) ?? NaN,
    );
  }
  const lines = fma.map((f) =>
    `FMA ceiling, ${f.acc} vec4 accumulators per thread: ${
      (threads * iters * f.acc * 8 / median(f.ms) / 1e6).toFixed(1)
    } GFLOP/s`
  );
  lines.push(
    `texel loads (rgba32float storage texture): ${
      (threads * iters * loads / median(loadMs) / 1e6).toFixed(2)
    } G per second per lane (load ${loadAverage()})`,
  );
  rt().textures.release(tex);
  out.dispose();
  return lines;
}

async function main(): Promise<void> {
  let f: ReturnType<typeof parseFlags>;
  try {
    f = parseFlags();
  } catch (e) {
    // A bad flag is one line, not a stack trace.
    console.error(`bench:step: ${(e as Error).message} (see deno task bench:step --help)`);
    Deno.exit(2);
  }
  await init();
  if (f.matmulOnly) {
    console.log((await narrowMatmul()).join("\n"));
    return;
  }
  const cases = new Map<StepMode, StepCase>();
  const results = new Map<StepMode, ModeResult>(
    f.modes.map((m) => [m, { ours: [], peer: [], trainable: 0 }]),
  );
  let peerSkip: string | null = f.peer ? null : "--no-peer";
  for (let r = 0; r < f.rounds; r++) {
    for (const m of f.modes) {
      const res = results.get(m)!;
      // Each mode is built in the first round, after the previous one has run its steps, so its
      // memory is measured above everything the earlier mode keeps (its model and moments);
      // warm-up only then, since pipelines compile once.
      let baseline = {};
      if (r === 0) {
        baseline = rt().pool.stats().live;
        cases.set(
          m,
          await prepareStep(m, REFERENCE_STEP, 0, f.attentionDropout, !f.allRows),
        );
        res.trainable = cases.get(m)!.trainable;
      }
      const ours = await measureStep(cases.get(m)!, f.steps, r === 0 ? f.warmup : 0, baseline);
      if (r === 0) res.memory = ours.peak;
      res.ours.push(ours);
      let line = `round ${r + 1} ${m}: ours ${ours.msPerStep.toFixed(1)} ms (${
        ours.syncedMs.toFixed(1)
      } waited for alone)`;
      if (!peerSkip) {
        const p = await runPeer(f.python, m, f.steps, f.warmup);
        if (typeof p === "string") peerSkip = p;
        else {
          res.peer.push(p);
          line += `, PyTorch ${p.medianMs.toFixed(1)} ms`;
        }
      }
      console.error(line);
    }
  }
  if (peerSkip) console.log(`PyTorch peer skipped: ${peerSkip}`);
  const s = REFERENCE_STEP;
  console.log(
    `\nreference encoder step: hidden ${s.hidden}, ${s.layers} layers, ${s.heads} heads, FFN ` +
      `${s.ffn}, vocab ${s.vocab}, batch ${s.batch} × seq ${s.seq}, dropout 0.1, AdamW; ` +
      `${f.rounds} rounds × ${f.steps} steps, adapter ${rt().gpu.adapter.name}; ours ${
        f.allRows ? "computing every row of the last layer" : "computing the last layer's " +
          "rows past attention for [CLS] only (--all-rows: every row)"
      }\n`,
  );
  // Ours per round: the round's steps back to back, waited for once (as train() runs them);
  // PyTorch's (synchronous on the CPU): the median of its round's steps. The machine is shared:
  // besides the medians over the rounds, the quietest round of each side (the lowest) approximates
  // the figures of an idle machine. "waited for alone" is our median step submitted and waited
  // for by itself: the GPU's completion latency (~11 ms on llvmpipe) on top of the cost.
  console.log(
    "| mode | ours ms/step | PyTorch ms/step | ratio | quietest rounds, ours / PyTorch | " +
      "ours, each step waited for alone | dispatches/step | ours peak MiB | PyTorch peak MiB | " +
      "memory ratio |",
  );
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |");
  const json: Record<string, unknown> = {};
  for (const [m, res] of results) {
    const ours = median(res.ours.map((o) => o.msPerStep));
    const synced = median(res.ours.flatMap((o) => o.stepsMs));
    const peerMs = res.peer.length ? median(res.peer.flatMap((p) => p.stepsMs)) : null;
    const last = { dispatches: res.ours.at(-1)!.dispatches, peak: res.memory! };
    const pk = res.peer.at(-1)?.peak ?? null;
    const ratio = peerMs ? (ours / peerMs).toFixed(2) + "×" : "—";
    const oursBest = Math.min(...res.ours.map((o) => o.msPerStep));
    const peerBest = res.peer.length ? Math.min(...res.peer.map((p) => p.medianMs)) : null;
    const quiet = peerBest
      ? `${oursBest.toFixed(1)} / ${peerBest.toFixed(1)} = ${(oursBest / peerBest).toFixed(2)}×`
      : `${oursBest.toFixed(1)} / —`;
    const memRatio = pk ? (last.peak.total / pk.total).toFixed(2) + "×" : "—";
    console.log(
      `| ${m} | ${ours.toFixed(1)} | ${peerMs?.toFixed(1) ?? "—"} | ${ratio} | ${quiet} | ` +
        `${synced.toFixed(1)} | ${last.dispatches} | ${mib(last.peak.total)} (${
          categoryLine(last.peak)
        }) | ` +
        `${pk ? `${mib(pk.total)} (${categoryLine(pk)})` : "—"} | ${memRatio} |`,
    );
    json[m] = {
      oursMedianMs: ours,
      oursSyncedMedianMs: synced,
      peerMedianMs: peerMs,
      ratio: peerMs ? ours / peerMs : null,
      quietestRoundRatio: peerBest ? oursBest / peerBest : null,
      dispatchesPerStep: last.dispatches,
      oursPeak: last.peak,
      peerPeak: pk,
      trainable: res.trainable,
      oursRounds: res.ours.map((o) => o.msPerStep),
      peerRounds: res.peer.map((p) => p.medianMs),
    };
  }
  if (f.profile) {
    for (const [m, c] of cases) {
      const prof = await rt().profile(() => c.run(), 2048, f.profileShapes);
      if (!prof) {
        console.log("\n--profile: this adapter has no timestamp queries");
        break;
      }
      const total = prof.reduce((n, [, e]) => n + e.ms, 0);
      console.log(
        `\n${m}: ${total.toFixed(1)} ms GPU time over ${
          prof.reduce((n, [, e]) => n + e.count, 0)
        } dispatches`,
      );
      for (const [name, e] of prof.slice(0, f.profileShapes ? 40 : 25)) {
        console.log(
          `  ${e.ms.toFixed(2).padStart(8)} ms ${(100 * e.ms / total).toFixed(1).padStart(5)} % ` +
            `${String(e.count).padStart(4)}× ${name}`,
        );
      }
    }
  }
  if (f.matmul) console.log("\n" + (await narrowMatmul()).join("\n"));
  if (f.json) await Deno.writeTextFile(f.json, JSON.stringify(json, null, 2) + "\n");
  for (const c of cases.values()) c.dispose();
}

if (import.meta.main) await main();
