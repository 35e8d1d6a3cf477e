/**
 * Checkpoints of a run: the trainable tensors, the optimizer state and the loop's counters,
 * written into a temporary folder and renamed into place.
 *
 * @module
 */
import { join } from "node:path";
import type { Optimizer, Tensor } from "../../../ops/mod.ts";
import { openSafetensors, writeSafetensors } from "../../../models/safetensors.ts";
import { toEntries, writeInto, writeTextAtomic } from "../../../methods/peft.ts";
import type { RunConfig } from "./config.ts";
import { assertFiniteWeights, assertShape } from "../../../models/validate.ts";
import type { Scores } from "./prepare.ts";

/** The checkpoint folder's name inside a run folder. */
export const CHECKPOINT = "checkpoint";

/** What state.json of a checkpoint holds besides the optimizer's metadata. */
export interface CheckpointState {
  step: number;
  metricsLines: number;
  best: { main: number; step: number; scores: Scores } | null;
  lastLoss: number;
  trainSeconds: number;
  tokens: number;
  configHash: string;
}

/** A short hash of the settings that change a run's trajectory. */
export async function configHash(config: RunConfig): Promise<string> {
  // Settings that change the trajectory; output paths and intervals of logging do not.
  const {
    output: _o,
    logInterval: _l,
    offline: _off,
    evalInterval: _e,
    saveInterval: _s,
    ...rest
  } = config;
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify(rest)));
  return [...new Uint8Array(d)].slice(0, 8).map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Replace `dir` by a folder written through `write(tmp)`, atomically (rename). */
export async function writeDirAtomic(
  dir: string,
  write: (tmp: string) => Promise<void>,
): Promise<void> {
  const tmp = `${dir}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(tmp, { recursive: true });
  await write(tmp);
  const old = `${dir}.old`;
  await Deno.remove(old, { recursive: true }).catch(() => {});
  const had = await Deno.stat(dir).then(() => true, () => false);
  if (had) await Deno.rename(dir, old);
  await Deno.rename(tmp, dir);
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
  await writeDirAtomic(dir, async (tmp) => {
    await writeSafetensors(join(tmp, "trainable.safetensors"), await toEntries(named));
    await writeSafetensors(
      join(tmp, "optimizer.safetensors"),
      Object.entries(opt.arrays).map(([name, data]) => ({
        name,
        dtype: "F32" as const,
        shape: [data.length],
        data,
      })),
    );
    await Deno.writeTextFile(
      join(tmp, "state.json"),
      JSON.stringify({ ...state, optimizer: opt.meta }, null, 2),
    );
  });
}

/** Read a checkpoint written by {@link saveCheckpoint} into `named` and `optimizer`. */
export async function loadCheckpoint(
  dir: string,
  named: readonly [string, Tensor][],
  optimizer: Optimizer,
): Promise<CheckpointState> {
  const raw = JSON.parse(await Deno.readTextFile(join(dir, "state.json")));
  const params = await openSafetensors(join(dir, "trainable.safetensors"));
  try {
    for (const [name, t] of named) {
      if (!params.has(name)) {
        throw new Error(
          `${dir}: checkpoint has no tensor ${name}; was it written by another method?`,
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
  const moments = await openSafetensors(join(dir, "optimizer.safetensors"));
  try {
    const arrays: Record<string, Float32Array> = {};
    for (const name of moments.names) arrays[name] = await moments.readF32(name);
    optimizer.loadState({ meta: raw.optimizer, arrays });
  } finally {
    moments.close();
  }
  return raw as CheckpointState;
}

/** Keep the first `keep` lines of `file` (metrics rows written after a checkpoint). */
export async function truncateLines(file: string, keep: number): Promise<void> {
  const text = await Deno.readTextFile(file).catch(() => "");
  const lines = text.split("\n").filter(Boolean).slice(0, keep);
  await writeTextAtomic(file, lines.map((l) => l + "\n").join(""));
}
