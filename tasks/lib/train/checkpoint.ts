/**
 * Checkpoints of a run: the trainable tensors, the optimizer state and the loop's counters.
 *
 * Crash safety: a checkpoint is written completely into `checkpoint.tmp-*` (state.json last,
 * recording the byte size of every file), then swapped in with two renames (`checkpoint` →
 * `checkpoint.old`, tmp → `checkpoint`). A kill can stop this anywhere, so before a run uses its
 * folder {@link recoverRunFolder} looks at what is on disk: the newest complete copy (a finished
 * tmp, `checkpoint`, or `.old`) ends up as `checkpoint`; leftovers are removed, each with a
 * message. A write that fails (disk full) removes its tmp folder and names
 * the file; the previous checkpoint stays as it was.
 *
 * @module
 */
import { basename, dirname, join } from "node:path";
import type { Optimizer, Tensor } from "../../../ops/mod.ts";
import { openSafetensors, writeSafetensors } from "../../../models/safetensors.ts";
import { toEntries, writeInto, writeTextAtomic } from "../../../methods/peft.ts";
import type { RunConfig } from "./config.ts";
import { assertFiniteWeights, assertShape } from "../../../models/validate.ts";
import type { Scores } from "./prepare.ts";
import { faultPoint } from "./faults.ts";

/** The checkpoint folder's name inside a run folder. */
export const CHECKPOINT = "checkpoint";

/** The files of a checkpoint folder; state.json is written last. */
const FILES = ["trainable.safetensors", "optimizer.safetensors"] as const;

/** What state.json of a checkpoint holds besides the optimizer's metadata. */
export interface CheckpointState {
  /** Optimizer steps done. */
  step: number;
  /** Rows of metrics.jsonl that belong to those steps (later rows are dropped on resume). */
  metricsLines: number;
  /** The best evaluation so far (its adapter is in best/). */
  best: { main: number; step: number; scores: Scores } | null;
  /** Mean loss of the last logged window. */
  lastLoss: number;
  /** Seconds in training steps, summed over processes. */
  trainSeconds: number;
  /** Non-padding training tokens seen. */
  tokens: number;
  /** {@link configHash} of the run's settings. */
  configHash: string;
  /**
   * Early stopping's counter: evaluations in a row without enough improvement, and the step the
   * run stopped at (null while it goes on). Absent without early stopping.
   */
  earlyStopping?: { bad: number; stoppedAt: number | null };
  /** Mean loss of the first logged window (the divergence test compares against it). */
  firstLoss?: number;
  /** Wall seconds of every process of this run up to this checkpoint. */
  wallSeconds?: number;
  /** Peak bytes per memory category, the maximum over every process of this run. */
  peak?: Record<string, number>;
  /** Peak total bytes, the maximum over every process of this run. */
  peakTotal?: number;
  /** Set by the checkpoint after the final evaluation: the run needs only its output files. */
  final?: { scores: Scores; main: number; mainMetric: string };
  /** Byte size of each file of the checkpoint (a folder whose files differ is incomplete). */
  files?: Record<string, number>;
}

/** The settings that change a run's trajectory (paths and logging intervals do not). */
export function trajectorySettings(config: RunConfig): Record<string, unknown> {
  const {
    output: _o,
    logInterval: _l,
    offline: _off,
    evalInterval: _e,
    saveInterval: _s,
    // config.json also holds own data's label maps: read from the data, not settings.
    id2label: _id2label,
    label2id: _label2id,
    problem_type: _problemType,
    ...rest
  } = config as RunConfig & { id2label?: unknown; label2id?: unknown; problem_type?: unknown };
  return rest;
}

/** A short hash of the settings that change a run's trajectory. */
export async function configHash(config: RunConfig): Promise<string> {
  const rest = trajectorySettings(config);
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify(rest)));
  return [...new Uint8Array(d)].slice(0, 8).map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Settings (dotted paths) whose values differ between two trajectory setting objects. */
export function settingsDiff(
  before: Record<string, unknown>,
  now: Record<string, unknown>,
  prefix = "",
): { key: string; before: unknown; now: unknown }[] {
  const out: { key: string; before: unknown; now: unknown }[] = [];
  for (const key of [...new Set([...Object.keys(before), ...Object.keys(now)])].sort()) {
    const a = before[key], b = now[key];
    const plain = (v: unknown): v is Record<string, unknown> =>
      v !== null && typeof v === "object" && !Array.isArray(v);
    if (plain(a) && plain(b)) out.push(...settingsDiff(a, b, `${prefix}${key}.`));
    else if (JSON.stringify(a) !== JSON.stringify(b)) {
      out.push({ key: prefix + key, before: a, now: b });
    }
  }
  return out;
}

/** "write X" errors name the file and keep the OS reason. */
function writeError(file: string, e: unknown): Error {
  return new Error(`${file}: cannot write (${e instanceof Error ? e.message : e})`);
}

/**
 * Replace `dir` by a folder written through `write(tmp)` (two renames; see the module doc for
 * what a kill in between leaves and how it is recovered). A failing `write` removes its tmp folder.
 * `label` names the fault points of this write (tests only).
 */
export async function writeDirAtomic(
  dir: string,
  write: (tmp: string) => Promise<void>,
  label = basename(dir),
): Promise<void> {
  const tmp = `${dir}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.mkdir(tmp, { recursive: true });
    await write(tmp);
    faultPoint(`${label}:written`, tmp);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
  const old = `${dir}.old`;
  await Deno.remove(old, { recursive: true }).catch(() => {});
  const had = await Deno.stat(dir).then(() => true, () => false);
  if (had) await Deno.rename(dir, old);
  faultPoint(`${label}:moved-old`);
  await Deno.rename(tmp, dir);
  faultPoint(`${label}:renamed`);
  if (had) await Deno.remove(old, { recursive: true });
}

/** Write the trainable tensors, the optimizer state and `state` into `dir`, atomically. */
export async function saveCheckpoint(
  dir: string,
  state: CheckpointState,
  named: readonly [string, Tensor][],
  optimizer: Optimizer,
): Promise<void> {
  const opt = await optimizer.saveState();
  const entries = await toEntries(named);
  try {
    await writeDirAtomic(dir, async (tmp) => {
      const files: Record<string, number> = {};
      const put = async (name: string, write: (file: string) => Promise<void>) => {
        const file = join(tmp, name);
        try {
          faultPoint(`checkpoint:${name}`, file);
          await write(file);
        } catch (e) {
          throw writeError(file, e);
        }
        files[name] = (await Deno.stat(file)).size;
      };
      await put(FILES[0], (f) => writeSafetensors(f, entries));
      await put(
        FILES[1],
        (f) =>
          writeSafetensors(
            f,
            Object.entries(opt.arrays).map(([name, data]) => ({
              name,
              dtype: "F32" as const,
              shape: [data.length],
              data,
            })),
          ),
      );
      const stateFile = join(tmp, "state.json");
      try {
        faultPoint("checkpoint:state.json", stateFile);
        await Deno.writeTextFile(
          stateFile,
          JSON.stringify({ ...state, files, optimizer: opt.meta }, null, 2),
        );
      } catch (e) {
        throw writeError(stateFile, e);
      }
    }, "checkpoint");
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    const kept = await readStateIfValid(dir);
    throw new Error(
      `${message}; ${
        kept ? `the previous checkpoint ${dir} (step ${kept.step}) is intact` : "no checkpoint kept"
      }. Free space, then continue with --resume`,
    );
  }
}

/** A parsed state.json, or an error message naming the file and what is wrong. */
async function readState(dir: string): Promise<CheckpointState | string> {
  const file = join(dir, "state.json");
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    return e instanceof Deno.errors.NotFound
      ? `${file} is missing`
      : `${file}: ${(e as Error).message}`;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    return `${file} is not valid JSON (${(e as Error).message})`;
  }
  const s = raw as Partial<CheckpointState> & { optimizer?: unknown };
  if (
    typeof s !== "object" || s === null || !Number.isInteger(s.step) ||
    !Number.isInteger(s.metricsLines) || typeof s.configHash !== "string" || !s.optimizer
  ) {
    return `${file}: expected a checkpoint state (step, metricsLines, configHash, optimizer)`;
  }
  for (const [name, size] of Object.entries(s.files ?? {})) {
    const actual = await Deno.stat(join(dir, name)).then((st) => st.size, () => -1);
    if (actual !== size) {
      return `${join(dir, name)}: ${
        actual < 0 ? "missing" : `${actual} bytes, state.json recorded ${size}`
      } (incomplete checkpoint)`;
    }
  }
  return s as CheckpointState;
}

async function readStateIfValid(dir: string): Promise<CheckpointState | null> {
  const s = await readState(dir);
  return typeof s === "string" ? null : s;
}

/** The state.json of a complete checkpoint folder; throws naming the file when it is not. */
export async function readCheckpointState(dir: string): Promise<CheckpointState> {
  const s = await readState(dir);
  if (typeof s === "string") {
    throw new Error(`${s}; remove ${dir} to start over, or choose another --output`);
  }
  return s;
}

/**
 * Put a run folder in order after a crash: the best complete checkpoint copy ends up at
 * `checkpoint/`, `best/` and `adapter/` are restored from a complete `.old` when a swap was cut
 * short, and temporary leftovers (`*.tmp-*`, `*.old`) are removed. Returns the messages of what
 * it did. Call it only while holding the folder's lock.
 */
export async function recoverRunFolder(out: string): Promise<string[]> {
  const said: string[] = [];
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(out)) names.push(e.name);
  } catch {
    return said;
  }
  const ckpt = join(out, CHECKPOINT);
  const has = (n: string) => names.includes(n);
  const tmps = (base: string) => names.filter((n) => n.startsWith(`${base}.tmp-`));
  // Checkpoint: the newest complete copy wins (a finished tmp is newer than `checkpoint`, which
  // is newer than `.old`), so no step already saved is trained again.
  const current = has(CHECKPOINT) ? await readState(ckpt) : null;
  const candidates: { name: string; state: CheckpointState }[] = [];
  if (current !== null && typeof current !== "string") {
    candidates.push({ name: CHECKPOINT, state: current });
  }
  for (const n of [...tmps(CHECKPOINT), `${CHECKPOINT}.old`]) {
    if (!has(n)) continue;
    const s = await readState(join(out, n));
    if (typeof s !== "string") candidates.push({ name: n, state: s });
  }
  candidates.sort((a, b) => b.state.step - a.state.step);
  const pick = candidates[0];
  if (pick && pick.name !== CHECKPOINT) {
    if (has(CHECKPOINT)) {
      said.push(
        typeof current === "string"
          ? `${ckpt} is incomplete (${current}); replaced by ${join(out, pick.name)}`
          : `${join(out, pick.name)} (step ${pick.state.step}) is newer than ${ckpt}; using it`,
      );
      await Deno.remove(ckpt, { recursive: true });
    } else {
      said.push(`recovered the checkpoint of step ${pick.state.step} from ${join(out, pick.name)}`);
    }
    await Deno.rename(join(out, pick.name), ckpt);
    names.splice(names.indexOf(pick.name), 1);
  }
  // best/ and adapter/: a cut swap leaves only the complete `.old`; put it back.
  for (const base of ["best", "adapter"]) {
    if (!has(base) && has(`${base}.old`)) {
      await Deno.rename(join(out, `${base}.old`), join(out, base));
      names.splice(names.indexOf(`${base}.old`), 1);
      said.push(`restored ${join(out, base)} from ${base}.old`);
    }
  }
  for (const n of names) {
    // Only what the trainer writes: a sweep may be writing its own tmp files in a cell folder.
    if (
      /^(checkpoint|best|adapter|metrics\.jsonl|summary\.json|config\.json)\.tmp-[0-9a-f]{8}$/
        .test(n) || /^(checkpoint|best|adapter)\.old$/.test(n)
    ) {
      await Deno.remove(join(out, n), { recursive: true }).catch(() => {});
      said.push(`removed the leftover ${join(out, n)}`);
    }
  }
  return said;
}

/** Read a checkpoint written by {@link saveCheckpoint} into `named` and `optimizer`. */
export async function loadCheckpoint(
  dir: string,
  named: readonly [string, Tensor][],
  optimizer: Optimizer,
): Promise<CheckpointState> {
  const state = await readCheckpointState(dir);
  const open = async (name: string) => {
    const file = join(dir, name);
    try {
      return await openSafetensors(file);
    } catch (e) {
      throw new Error(
        `${file}: cannot read the checkpoint (${(e as Error).message}); ` +
          `remove ${dir} to start over, or choose another --output`,
      );
    }
  };
  const params = await open(FILES[0]);
  try {
    for (const [name, t] of named) {
      if (!params.has(name)) {
        throw new Error(
          `${
            join(dir, FILES[0])
          }: checkpoint has no tensor ${name}; was it written by another method?`,
        );
      }
      // A checkpoint of other settings (e.g. another rank) must not be written into these tensors.
      assertShape(name, params.info(name).shape, t.shape, params.path);
      writeInto(t, await params.readF32(name));
    }
    await assertFiniteWeights(named, params.path);
  } finally {
    params.close();
  }
  const moments = await open(FILES[1]);
  try {
    const arrays: Record<string, Float32Array> = {};
    for (const name of moments.names) arrays[name] = await moments.readF32(name);
    try {
      optimizer.loadState({ meta: (state as unknown as { optimizer: unknown }).optimizer, arrays });
    } catch (e) {
      throw new Error(`${join(dir, FILES[1])}: ${(e as Error).message}`);
    }
  } finally {
    moments.close();
  }
  return state;
}

/** Keep the first `keep` lines of `file` (metrics rows written after a checkpoint). */
export async function truncateLines(file: string, keep: number): Promise<void> {
  const text = await Deno.readTextFile(file).catch(() => "");
  const lines = text.split("\n").filter(Boolean).slice(0, keep);
  if (lines.length < keep) {
    throw new Error(
      `${file}: has ${lines.length} rows, the checkpoint in ${dirname(file)} recorded ${keep}`,
    );
  }
  await writeTextAtomic(file, lines.map((l) => l + "\n").join(""));
}
