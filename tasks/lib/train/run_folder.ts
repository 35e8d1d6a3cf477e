/**
 * Opening a run folder for `train`: everything decided before any model is loaded.
 *
 * - One writer: the folder's lock (lock.ts) is taken first; a second run refuses at once.
 * - Leftovers of a crash are put in order (checkpoint.ts `recoverRunFolder`).
 * - `--resume` of a folder that does not exist is an error; of a finished run, nothing to do; of a
 *   run with other settings, an error naming each differing setting, read from config.json and
 *   state.json only, so nothing is loaded into tensors of the wrong shape first.
 * - A run that fails before writing anything leaves no folder behind ({@link RunFolder.abandon}).
 *
 * @module
 */
import { join } from "node:path";
import type { RunConfig } from "./config.ts";
import {
  CHECKPOINT,
  type CheckpointState,
  configHash,
  readCheckpointState,
  recoverRunFolder,
  settingsDiff,
  trajectorySettings,
} from "./checkpoint.ts";
import { acquireLock, type FolderLock } from "./lock.ts";

/** The lock file of a run folder. */
export const RUN_LOCK = "train.lock";

/** A run folder opened by {@link openRunFolder}. */
export interface RunFolder {
  /** The folder. */
  dir: string;
  /** The checkpoint to continue from (resume only), its state read and checked. */
  checkpoint: { dir: string; state: CheckpointState } | null;
  /** summary.json of a run that already finished (resume only): nothing left to do. */
  finishedSummary: unknown | null;
  /** Release the lock. */
  close(): Promise<void>;
  /** After a failure: remove the folder if this run created it and wrote nothing in it. */
  abandon(): Promise<void>;
}

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);

function show(v: unknown): string {
  return v === undefined ? "(unset)" : JSON.stringify(v);
}

/** Open `config.output` for a run (see the module doc); throws with a message saying what to do. */
export async function openRunFolder(
  config: RunConfig,
  resume: boolean,
  log: (line: string) => void,
): Promise<RunFolder> {
  const dir = config.output;
  const existed = await exists(dir);
  if (resume && !existed) {
    throw new Error(
      `--resume: ${dir} does not exist; drop --resume to start a new run there, or check --output`,
    );
  }
  if (existed && !(await Deno.stat(dir)).isDirectory) {
    throw new Error(`--output: ${dir} is a file; expected a folder for the run's files`);
  }
  await Deno.mkdir(dir, { recursive: true });
  let lock: FolderLock;
  try {
    lock = await acquireLock(dir, RUN_LOCK, "train", log);
  } catch (e) {
    // Refused because another run holds the folder (its lock file is in it): never delete its
    // files. Only a folder this call made and that is still empty goes (non-recursive remove).
    if (!existed) await Deno.remove(dir).catch(() => {});
    throw e;
  }
  const abandon = async () => {
    await lock.release();
    if (existed) return;
    const left: string[] = [];
    for await (const e of Deno.readDir(dir)) left.push(e.name);
    if (left.length === 0) await Deno.remove(dir).catch(() => {});
  };
  try {
    for (const line of await recoverRunFolder(dir)) log(line);
    const ckptDir = join(dir, CHECKPOINT);
    const hasCheckpoint = await exists(ckptDir);
    if (!resume) {
      if (hasCheckpoint) {
        throw new Error(
          `${dir} already holds a checkpoint: pass --resume to continue it, or choose another --output`,
        );
      }
      if (await exists(join(dir, "summary.json"))) {
        // A finished run whose checkpoint was deleted: starting over would replace its results.
        throw new Error(
          `${dir} holds a finished run (summary.json): choose another --output, or delete the ` +
            `folder to train it again`,
        );
      }
      return { dir, checkpoint: null, finishedSummary: null, close: lock.release, abandon };
    }
    // Resume: compare settings before anything is loaded.
    const hash = await configHash(config);
    const configFile = join(dir, "config.json");
    const before = await Deno.readTextFile(configFile).then(
      (t) => JSON.parse(t) as RunConfig,
      () => null,
    );
    const diff = before ? settingsDiff(trajectorySettings(before), trajectorySettings(config)) : [];
    if (diff.length) {
      const list = diff.map((d) => `${d.key} was ${show(d.before)}, now ${show(d.now)}`).join("; ");
      throw new Error(
        `--resume: ${dir} was started with other settings (${list}); resume with the settings in ` +
          `${configFile}, or choose another --output`,
      );
    }
    const summaryFile = join(dir, "summary.json");
    if (await exists(summaryFile)) {
      let summary: unknown;
      try {
        summary = JSON.parse(await Deno.readTextFile(summaryFile));
      } catch (e) {
        throw new Error(`${summaryFile} is not valid JSON (${(e as Error).message})`);
      }
      return { dir, checkpoint: null, finishedSummary: summary, close: lock.release, abandon };
    }
    if (!hasCheckpoint) {
      log(`--resume: ${dir} has no checkpoint yet; starting from step 0`);
      return { dir, checkpoint: null, finishedSummary: null, close: lock.release, abandon };
    }
    const state = await readCheckpointState(ckptDir);
    if (state.configHash !== hash) {
      throw new Error(
        `--resume: ${join(ckptDir, "state.json")} was written by a run with other settings ` +
          `than this command's${before ? ` and ${configFile}'s` : ""} (the checkpoint does not ` +
          `belong to this run); choose another --output`,
      );
    }
    return {
      dir,
      checkpoint: { dir: ckptDir, state },
      finishedSummary: null,
      close: lock.release,
      abandon,
    };
  } catch (e) {
    await abandon();
    throw e;
  }
}
