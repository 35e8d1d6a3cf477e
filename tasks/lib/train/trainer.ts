/**
 * The training loop of `deno task train`.
 *
 * Flow: resolve model and data (local folders or the Hugging Face cache) → tokenise (cached) →
 * load the model (frozen) → apply the method → AdamW over the method's parameter groups → steps of
 * forward/backward/update in a memory scope each → evaluation at intervals and at the end →
 * checkpoints → metrics.jsonl, summary.json, adapter/.
 *
 * Resumability: batches are a pure function of (seed, epoch), dropout masks of (seed, step, call),
 * kernels are deterministic (no float atomics), and a checkpoint holds the trainable tensors and
 * the optimizer state exactly, so `--resume` after a kill -9 continues the same trajectory and
 * ends with the same final loss. Checkpoints are written to a temporary folder and renamed.
 *
 * @module
 */
import { join } from "node:path";
import {
  AdamW,
  type AdapterDescription,
  add,
  addInto,
  backward,
  constantSchedule,
  cosineSchedule,
  gpu,
  init,
  linearSchedule,
  mul,
  noGrad,
  type Optimizer,
  reshape,
  rt,
  type Schedule,
  scope,
  tensor,
  zeros,
} from "../../../ops/mod.ts";
import { ForwardContext } from "../../../models/context.ts";
import type { Module } from "../../../models/module.ts";
import { applyMethod, getMethod } from "../../../methods/registry.ts";
import type { Adapter, ParamGroupSpec } from "../../../methods/types.ts";
import { applyValueLrRatio, namedTrainable } from "../../../methods/groups.ts";
import { writeTextAtomic } from "../../../methods/peft.ts";
import { expandAllLinear } from "../../../methods/peft_config.ts";
import { defaultTargets, type RunConfig } from "./config.ts";
import { collate, epochBatches, type HostBatch } from "../data/pipeline.ts";
import { prepare, type Scores } from "./prepare.ts";
import type { LabelMaps } from "../data/own/classification.ts";
import {
  CHECKPOINT,
  type CheckpointState,
  configHash,
  loadCheckpoint,
  saveCheckpoint,
  truncateLines,
  writeDirAtomic,
} from "./checkpoint.ts";
import { openRunFolder } from "./run_folder.ts";
import { faultPoint } from "./faults.ts";
import { checkRunPlan } from "./validate.ts";
import { Progress } from "../cli/progress.ts";
import { VERSION } from "../version.ts";

export type { Scores } from "./prepare.ts";

/**
 * A mean loss this many times the first logged one (and above 100) is divergence: cross-entropy
 * that high means probabilities of e^-100, and regression losses start at the targets' scale.
 */
const EXPLODED_FACTOR = 100;

/** Thrown when {@link TrainOptions.signal} stops a run (after a checkpoint at that step). */
export class InterruptedError extends Error {
  /** A shell's code for a run stopped by a signal (128 + SIGINT). */
  readonly exitCode = 130;
  /** `message` says at which step the run stopped and that a checkpoint was saved there. */
  constructor(message: string) {
    super(message);
    this.name = "InterruptedError";
  }
}

/** Thrown when the loss becomes NaN, infinite, or explodes (see EXPLODED_FACTOR). */
export class DivergedError extends Error {
  /** `message` says at which step and where the last good checkpoint is. */
  constructor(message: string) {
    super(message);
    this.name = "DivergedError";
  }
}

/** What summary.json holds. */
export interface Summary {
  /** "@ruc/peft" and its version. */
  toolkit: string;
  /** The run's model (repo id or folder, as given). */
  model: string;
  /** The task's canonical name. */
  task: string;
  /** The method's registry name. */
  method: string;
  /** The run's seed. */
  seed: number;
  /** The whole validated run configuration. */
  config: RunConfig;
  /** Optimizer steps taken in total (including those before a resume). */
  steps: number;
  /** Epochs that many steps cover (fractional). */
  epochs: number;
  /** Mean training loss over the last logged window of steps. */
  finalLoss: number;
  /** Scores of the evaluation after the last step. */
  final: Scores;
  /** Scores of the evaluation with the highest main metric (its adapter is in `best/`). */
  best: Scores;
  /** The step of `best`. */
  bestStep: number;
  /** Key of the task's main metric in the scores (e.g. "accuracy", "matthews_correlation"). */
  mainMetric: string;
  /** Elements of the tensors the optimizer updates (method parameters and the head). */
  trainableParams: number;
  /** Elements of every parameter of the adapted model, trainable or frozen. */
  totalParams: number;
  /** Peak bytes per memory category and total, from the engine's pool (maximum over resumes). */
  memory: { peak: Record<string, number>; peakTotal: number; reservedBytes: number };
  /** Non-padding training tokens per second of `trainSeconds`. */
  tokensPerSecond: number;
  /** Seconds in training steps (no loading, evaluation or checkpoints), summed over resumes. */
  trainSeconds: number;
  /**
   * Wall seconds of the run: this process's `train` call plus those of the earlier processes up
   * to the checkpoint each left (time after a kill's last checkpoint is not known).
   */
  wallSeconds: number;
  /** Own classification data: the head's label maps, as Hugging Face config.json writes them. */
  labels?: LabelMaps;
  /** Early stopping's settings and outcome (absent when it was off). */
  earlyStopping?: {
    patience: number;
    threshold: number;
    /** The step training stopped at, or null when it ran to the end. */
    stoppedAt: number | null;
  };
  /** The WebGPU adapter the run used. */
  device: AdapterDescription;
  /** Versions of the toolkit and the runtime. */
  versions: { toolkit: string; deno: string; v8: string; typescript: string };
  /** Parameters the checkpoint lacked and that were initialised (e.g. a new classifier head). */
  newlyInitialized: string[];
  /** The step this run resumed from, or null when it started fresh. */
  resumedFrom: number | null;
}

/** Options of {@link train} beyond the run config. */
export interface TrainOptions {
  /** Continue from `output/checkpoint` when it exists. */
  resume?: boolean;
  /** Show progress (default true: a bar on a terminal, a line per 10 % elsewhere). */
  progress?: boolean;
  /** Called after every optimizer step (tests use it to stop a run midway). */
  onStep?: (step: number) => void;
  /** Stops the run after the current step, with a checkpoint there (Ctrl-C, SIGTERM). */
  signal?: AbortSignal;
  /** Log lines (default: stderr). */
  log?: (line: string) => void;
}

/**
 * The run's learning-rate schedule over `total` steps. A warm-up ratio becomes
 * ⌈ratio × total⌉ steps, as Hugging Face's `TrainingArguments.get_warmup_steps`.
 */
function scheduleOf(config: RunConfig, total: number): Schedule {
  const warmupSteps = config.warmupSteps ?? Math.ceil(config.warmupRatio * total);
  if (config.schedule === "constant") return constantSchedule({ warmupSteps });
  if (config.schedule === "cosine") return cosineSchedule({ warmupSteps, totalSteps: total });
  return linearSchedule({ warmupSteps, totalSteps: total });
}

/** Parameters of a model: trainable (in groups) and total. */
function countParams(
  loaded: { model: Module },
  groups: readonly ParamGroupSpec[],
): { trainable: number; total: number } {
  const all = new Set(loaded.model.namedParameters().map(([, t]) => t));
  let trainable = 0;
  for (const g of groups) for (const p of g.params) trainable += p.size;
  let total = 0;
  for (const t of all) total += t.size;
  return { trainable, total };
}

/**
 * Train (and evaluate) as `config` says, writing run files into `config.output`.
 *
 * @example
 * ```ts ignore
 * const summary = await train(parseRunConfig({ model: "stories-hf", task: "sst2", data: "glue/tsv" }));
 * ```
 */
export async function train(config: RunConfig, options: TrainOptions = {}): Promise<Summary> {
  const log = options.log ?? ((s: string) => console.error(s));
  const folder = await openRunFolder(config, options.resume === true, log);
  if (folder.finishedSummary) {
    await folder.close();
    log(`${config.output} finished already (summary.json); nothing to do`);
    return folder.finishedSummary as Summary;
  }
  try {
    return await trainInFolder(config, options, log, folder.checkpoint !== null);
  } catch (e) {
    await folder.abandon();
    throw e;
  } finally {
    await folder.close();
  }
}

async function trainInFolder(
  config: RunConfig,
  options: TrainOptions,
  log: (line: string) => void,
  resumable: boolean,
): Promise<Summary> {
  const started = performance.now();
  await init();
  const out = config.output;
  const ckptDir = join(out, CHECKPOINT);
  const metricsFile = join(out, "metrics.jsonl");
  const hash = await configHash(config);
  rt().pool.resetPeak();
  const p = await prepare(config, log);
  const { loaded } = p;
  const modelType = loaded.config.model_type;
  const headModules = p.sequenceClassification
    ? (loaded.kind === "encoder" ? ["classifier"] : ["score"])
    : [];
  const batchesPerEpoch = p.batches?.perEpoch ?? Math.ceil(p.train.length / config.batchSize);
  if (batchesPerEpoch === 0) throw new Error(`${config.task}: no training examples`);
  const stepsPerEpoch = Math.max(1, Math.floor(batchesPerEpoch / config.gradAccum));
  const total = config.steps ?? Math.max(1, Math.round(config.epochs * stepsPerEpoch));
  // A model folder is written only when the method kept the model's own parameter names (full
  // fine-tuning, GaLore, LISA, BitFit): adapter methods' output is adapter/, merged on demand.
  const baseNames = loaded.model.namedParameters().map(([n]) => n).join("\n");
  const targets = expandAllLinear(
    loaded.model,
    config.targets ?? getMethod(config.method).defaultTargets?.(loaded.model) ??
      defaultTargets(modelType),
    headModules,
    p.task.kind === "glue" ? "SEQ_CLS" : null,
  );
  checkRunPlan(config, loaded.model, targets, total, loaded.config);
  const adapter: Adapter = applyMethod(config.method, loaded.model, config.methodOptions, {
    targets,
    lrMultipliers: config.lrMultipliers,
    weightDecay: config.weightDecay,
    headModules,
    taskType: p.sequenceClassification
      ? "SEQ_CLS"
      : p.task.kind === "pretrain" && p.task.name === "mlm"
      ? null
      : "CAUSAL_LM",
    baseModel: config.model,
    seed: config.seed,
    totalSteps: total,
  });
  // Peaks describe training: loading moved weights between categories (frozen → trainable).
  rt().pool.resetPeak();
  let epochCache: { epoch: number; batches: number[][] } | null = null;
  const lengths = p.train.map((e) => e.ids.length);
  const batchAt = (k: number): HostBatch => {
    if (p.batches) return p.batches.at(k);
    const epoch = Math.floor(k / batchesPerEpoch);
    if (epochCache?.epoch !== epoch) {
      epochCache = { epoch, batches: epochBatches(lengths, config.batchSize, config.seed, epoch) };
    }
    const idx = epochCache.batches[k % batchesPerEpoch];
    return collate(idx.map((i) => p.train[i]), p.padId, p.padSide);
  };
  if (adapter.beforeTraining) {
    const t0 = performance.now();
    await adapter.beforeTraining({
      losses: (n) =>
        Array.from({ length: Math.min(n, batchesPerEpoch) }, (_, k) => () => p.loss(batchAt(k))),
      tokenMasks: (n) =>
        Array.from({ length: Math.min(n, batchesPerEpoch) }, (_, k) => {
          const h = batchAt(k);
          const labelMask = p.sequenceClassification
            ? undefined
            : Float32Array.from(h.lmLabels, (l) => (l === -100 ? 0 : 1));
          return { b: h.b, t: h.t, mask: h.mask, labelMask };
        }),
    });
    log(
      `${config.method}: data pass before training took ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s`,
    );
  }
  const groups = applyValueLrRatio(adapter.groups(), config.wvLrRatio ?? 1);
  const named = namedTrainable(groups);
  for (const [n, t] of named) t.name = n;
  const counts = countParams(loaded, groups);
  const schedule = scheduleOf(config, total);
  const paramGroups = groups.map((g) => ({
    params: g.params,
    lr: config.lr * g.lrMultiplier,
    weightDecay: g.weightDecay,
  }));
  const optimizerOptions = { schedule, maxGradNorm: config.maxGradNorm ?? undefined };
  const optimizer: Optimizer = adapter.createOptimizer?.(paramGroups, optimizerOptions) ??
    new AdamW(paramGroups, optimizerOptions);
  log(
    `${config.method} on ${config.model} (${modelType}): ${counts.trainable.toLocaleString()} trainable of ` +
      `${counts.total.toLocaleString()} parameters (${
        ((100 * counts.trainable) / counts.total).toFixed(3)
      } %); ` +
      `${total} steps; device ${gpu().adapter.name}`,
  );

  let start = 0;
  let state: CheckpointState = {
    step: 0,
    metricsLines: 0,
    best: null,
    lastLoss: NaN,
    trainSeconds: 0,
    tokens: 0,
    configHash: hash,
    ...(config.earlyStoppingPatience ? { earlyStopping: { bad: 0, stoppedAt: null } } : {}),
  };
  if (resumable) {
    state = await loadCheckpoint(ckptDir, named, optimizer);
    start = state.step;
    await truncateLines(metricsFile, state.metricsLines);
    log(`resumed from ${ckptDir} at step ${start}`);
  } else {
    await writeTextAtomic(metricsFile, "");
    // Own classification data: the label maps beside the settings, named as in HF config.json.
    const saved = { ...config, ...(p.labelMaps ?? {}) };
    await writeTextAtomic(join(out, "config.json"), JSON.stringify(saved, null, 2) + "\n");
  }
  const metricsLog: string[] = [];
  const flushMetrics = async () => {
    if (!metricsLog.length) return;
    faultPoint("metrics:append", metricsFile);
    await Deno.writeTextFile(metricsFile, metricsLog.join(""), { append: true });
    state.metricsLines += metricsLog.length;
    metricsLog.length = 0;
    faultPoint("metrics:appended");
  };
  const record = (obj: Record<string, unknown>) => metricsLog.push(JSON.stringify(obj) + "\n");

  // Loss of the steps since the last read-back, accumulated on the GPU (no read per step).
  const lossSum = zeros([], { category: "scratch" }).keep();
  let lossSteps = 0;
  const readLoss = async (step: number): Promise<number> => {
    const total = (await lossSum.read())[0];
    const mean = total / Math.max(1, lossSteps);
    noGrad(() => addInto(lossSum, tensor(-total)));
    if (lossSteps === 0) return mean;
    const limit = EXPLODED_FACTOR * Math.max(1, state.firstLoss ?? mean);
    if (!Number.isFinite(mean) || mean > limit) {
      const kept = await Deno.stat(join(ckptDir, "state.json")).then(() => true, () => false);
      const where = kept
        ? `The last good checkpoint is ${ckptDir} (step ${state.step})`
        : `No checkpoint was written before it${
          config.saveInterval > 0 ? ` (the first save was due at step ${config.saveInterval})` : ""
        }`;
      throw new DivergedError(
        `loss became ${mean}${
          Number.isFinite(mean)
            ? ` (over ${EXPLODED_FACTOR}× the first logged loss ${state.firstLoss?.toPrecision(4)})`
            : ""
        } by step ${step}; stopped. ${where}; lower --lr or set --max-grad-norm`,
      );
    }
    state.firstLoss ??= mean;
    lossSteps = 0;
    return mean;
  };

  const progress = new Progress(total, Deno.stderr.isTerminal(), options.progress !== false);

  const interactive = Deno.stderr.isTerminal();
  // Whether early stopping ended training in this process (its evaluation is then the final).
  let stoppedHere = false;
  const evaluate = async (step: number) => {
    const t0 = performance.now();
    let bar: Progress | null = null;
    const r = await p.evaluate((done, n) => {
      bar ??= new Progress(n, interactive, options.progress !== false, {
        label: "eval",
        every: 0.25,
        start: t0,
      });
      bar.count(done);
    });
    (bar as Progress | null)?.clear();
    record({ step, eval: r.scores, main: r.main, seconds: (performance.now() - t0) / 1000 });
    const previous = state.best;
    if (!state.best || r.main > state.best.main) {
      state.best = { main: r.main, step, scores: r.scores };
      await writeDirAtomic(join(out, "best"), (tmp) => adapter.save(tmp));
    }
    const es = state.earlyStopping;
    let stopNote = "";
    if (es && config.earlyStoppingPatience) {
      // HF's EarlyStoppingCallback: an improvement beats the best before it by > threshold.
      const threshold = config.earlyStoppingThreshold ?? 0;
      const improved = !previous || r.main - previous.main > threshold;
      es.bad = improved ? 0 : es.bad + 1;
      if (es.bad >= config.earlyStoppingPatience && step < total) {
        es.stoppedAt = step;
        // This evaluation is the final one; the checkpoint after it keeps it for a resume.
        state.final = { scores: r.scores, main: r.main, mainMetric: r.mainMetric };
        stopNote = `; no improvement in ${es.bad} evaluations: early stopping`;
      }
    }
    progress.print(
      `step ${step}: ${
        Object.entries(r.scores).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(", ")
      }${stopNote}`,
      log,
    );
    stoppedHere ||= stopNote !== "";
    return r;
  };
  // Wall time and peaks of the processes before this one (a resumed run sums / maxes them).
  const wallBefore = state.wallSeconds ?? 0;
  const peakBefore = { peak: state.peak ?? {}, total: state.peakTotal ?? 0 };
  const runPeaks = () => {
    const stats = rt().pool.stats();
    const peak: Record<string, number> = { ...peakBefore.peak };
    for (const [k, v] of Object.entries(stats.peak)) peak[k] = Math.max(peak[k] ?? 0, v);
    return { peak, peakTotal: Math.max(peakBefore.total, stats.peakTotal) };
  };
  const checkpoint = async (step: number) => {
    if (lossSteps > 0) state.lastLoss = await readLoss(step);
    await flushMetrics();
    state.step = step;
    state.wallSeconds = wallBefore + (performance.now() - started) / 1000;
    Object.assign(state, runPeaks());
    await saveCheckpoint(ckptDir, state, named, optimizer);
  };

  let trainSeconds = state.trainSeconds, tokens = state.tokens;
  let windowStart = performance.now(), windowTokens = 0;
  for (let step = start; step < total && state.earlyStopping?.stoppedAt == null; step++) {
    const t0 = performance.now();
    let stepTokens = 0;
    for (let m = 0; m < config.gradAccum; m++) {
      const h = batchAt(step * config.gradAccum + m);
      stepTokens += h.tokens;
      const ctx = new ForwardContext(true, config.seed, step * config.gradAccum + m);
      scope(() => {
        const taskLoss = ctx.run(() => p.loss(h));
        const extra = adapter.extraLoss?.(step) ?? null;
        const loss = extra ? add(taskLoss, extra) : taskLoss;
        // Accumulated micro-batches average: each contributes loss / gradAccum.
        backward(config.gradAccum > 1 ? mul(loss, 1 / config.gradAccum) : loss);
        const part = config.gradAccum > 1 ? mul(loss, 1 / config.gradAccum) : loss;
        noGrad(() => addInto(lossSum, reshape(part, [])));
      });
    }
    lossSteps++;
    adapter.beforeStep?.(step);
    optimizer.step();
    optimizer.zeroGrad();
    adapter.afterStep?.(step + 1, optimizer);
    tokens += stepTokens;
    windowTokens += stepTokens;
    const done = step + 1;
    const logNow = done % config.logInterval === 0 || done === total;
    if (logNow) {
      const loss = await readLoss(done);
      state.lastLoss = loss;
      const seconds = (performance.now() - windowStart) / 1000;
      const tps = windowTokens / Math.max(1e-9, seconds);
      record({
        step: done,
        epoch: (done * config.gradAccum) / batchesPerEpoch,
        loss,
        lr: optimizer.lr(0),
        tokensPerSecond: tps,
      });
      progress.update(done, { loss, lr: optimizer.lr(0), tokensPerSecond: tps });
      windowStart = performance.now();
      windowTokens = 0;
    }
    trainSeconds += (performance.now() - t0) / 1000;
    state.trainSeconds = trainSeconds;
    state.tokens = tokens;
    const evalNow = config.evalInterval > 0 && done % config.evalInterval === 0 && done < total;
    if (evalNow) await evaluate(done);
    if (evalNow || (config.saveInterval > 0 && done % config.saveInterval === 0 && done < total)) {
      await checkpoint(done);
    }
    options.onStep?.(done);
    if (options.signal?.aborted && done < total) {
      await checkpoint(done);
      throw new InterruptedError(
        `interrupted after step ${done} of ${total}; saved a checkpoint there. ` +
          `Continue with the same command and --resume`,
      );
    }
    faultPoint(`step:${done}`);
  }
  progress.finish();
  // Early stopping ends at its evaluation's step; that evaluation is the final one.
  const end = state.earlyStopping?.stoppedAt ?? total;
  // A run killed after its final checkpoint has its final scores there: evaluating again
  // would append a second final row.
  let final = state.final;
  if (!final) {
    const r = await evaluate(end);
    final = { scores: r.scores, main: r.main, mainMetric: r.mainMetric };
    state.final = final;
    await checkpoint(end);
  } else if (!stoppedHere) {
    log(`the final evaluation (step ${end}) is in the checkpoint; writing the run's files`);
  }
  await writeDirAtomic(join(out, "adapter"), (tmp) => adapter.save(tmp));
  if (p.saveModel) {
    const sameNames = loaded.model.namedParameters().map(([n]) => n).join("\n") === baseNames;
    if (sameNames) await writeDirAtomic(join(out, "model"), (tmp) => p.saveModel!(tmp));
    else {log(
        `${config.method} keeps its weights in ${
          join(out, "adapter")
        }; merge them with deno task merge`,
      );}
  }
  p.batches?.close();
  const stats = rt().pool.stats();
  const peaks = runPeaks();
  const summary: Summary = {
    toolkit: `@ruc/peft ${VERSION}`,
    model: config.model,
    task: config.objective ?? config.task,
    method: config.method,
    seed: config.seed,
    config,
    steps: end,
    epochs: (end * config.gradAccum) / batchesPerEpoch,
    finalLoss: state.lastLoss,
    final: final.scores,
    best: state.best!.scores,
    bestStep: state.best!.step,
    mainMetric: final.mainMetric,
    trainableParams: counts.trainable,
    totalParams: counts.total,
    memory: { peak: peaks.peak, peakTotal: peaks.peakTotal, reservedBytes: stats.reservedBytes },
    tokensPerSecond: tokens / Math.max(1e-9, trainSeconds),
    trainSeconds,
    wallSeconds: wallBefore + (performance.now() - started) / 1000,
    ...(p.labelMaps ? { labels: p.labelMaps } : {}),
    ...(config.earlyStoppingPatience
      ? {
        earlyStopping: {
          patience: config.earlyStoppingPatience,
          threshold: config.earlyStoppingThreshold ?? 0,
          stoppedAt: state.earlyStopping?.stoppedAt ?? null,
        },
      }
      : {}),
    device: gpu().adapter,
    versions: {
      toolkit: VERSION,
      deno: Deno.version.deno,
      v8: Deno.version.v8,
      typescript: Deno.version.typescript,
    },
    newlyInitialized: loaded.newlyInitialized,
    resumedFrom: resumable ? start : null,
  };
  await flushMetrics();
  await writeTextAtomic(join(out, "summary.json"), JSON.stringify(summary, null, 2) + "\n");
  faultPoint("summary:written");
  optimizer.dispose();
  lossSum.dispose();
  loaded.model.dispose();
  return summary;
}
