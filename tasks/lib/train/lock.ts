/**
 * One writer per folder: a lock file holding the writer's pid, host, process start time and
 * command. Taking it is atomic (the complete file is hard-linked into place, which fails when one
 * exists), so two runs started at the same instant cannot both win. A lock whose process is gone
 * (same host, pid dead or reused by another process) is stale and taken over with a message; a
 * lock held on another host cannot be checked and is never taken over.
 *
 * @module
 */
import { join } from "node:path";

/** What a lock file records about its holder. */
export interface LockHolder {
  /** Process id of the holder. */
  pid: number;
  /** Host name of the holder's machine. */
  host: string;
  /** ISO time the lock was taken. */
  startedAt: string;
  /** The holder's start time in clock ticks since boot (/proc/PID/stat field 22; 0 elsewhere). */
  processStart: number;
  /** What holds it (e.g. "train", "sweep"). */
  what: string;
}

/** Thrown when a live process holds the lock. */
export class LockedError extends Error {
  /** `message` names the holder and how to proceed. */
  constructor(message: string, readonly holder: LockHolder | null) {
    super(message);
    this.name = "LockedError";
  }
}

/** A lock this process holds. */
export interface FolderLock {
  /** The lock file. */
  readonly path: string;
  /** Remove the lock file (only if it is still this process's). */
  release(): Promise<void>;
}

/** Start time of a process in clock ticks since boot, or null when it is not running. */
async function processStart(pid: number): Promise<number | null> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // A zombie (killed, not yet reaped: common in containers whose init does not reap) is gone.
    if (fields[0] === "Z" || fields[0] === "X") return null;
    return Number(fields[19]);
  } catch {
    return null;
  }
}

const onLinux = await Deno.stat("/proc/self/stat").then(() => true, () => false);

/** Whether the holder recorded in a lock is still running (always true for another host). */
export async function holderAlive(holder: LockHolder): Promise<boolean> {
  if (holder.host !== Deno.hostname()) return true;
  if (holder.pid === Deno.pid) return true;
  if (!onLinux) {
    try {
      Deno.kill(holder.pid, "SIGCONT"); // harmless probe: fails for a dead pid
      return true;
    } catch {
      return false;
    }
  }
  const start = await processStart(holder.pid);
  return start !== null && (holder.processStart === 0 || start === holder.processStart);
}

async function readHolder(path: string): Promise<LockHolder | null> {
  try {
    const h = JSON.parse(await Deno.readTextFile(path));
    return typeof h?.pid === "number" && typeof h?.host === "string" ? h as LockHolder : null;
  } catch {
    return null;
  }
}

function describe(h: LockHolder): string {
  return `${h.what} process ${h.pid} on ${h.host} (since ${h.startedAt})`;
}

/** Remove `name.PID-*` and `name.stale-*` files a killed process left while taking the lock. */
async function removeLeftovers(dir: string, name: string): Promise<void> {
  try {
    for await (const e of Deno.readDir(dir)) {
      const m = new RegExp(`^${name.replace(/\./g, "\\.")}\\.(?:(\\d+)-|stale-)[0-9a-f]{8}$`).exec(
        e.name,
      );
      if (!m) continue;
      const pid = m[1] === undefined ? null : Number(m[1]);
      if (pid === Deno.pid) continue;
      if (pid !== null && (await processStart(pid)) !== null) continue;
      await Deno.remove(join(dir, e.name)).catch(() => {});
    }
  } catch { /* the folder is gone: nothing to tidy */ }
}

/**
 * Take the lock file `name` in `dir` for this process, or throw {@link LockedError} naming the
 * holder. A stale lock is taken over and `log` says so.
 */
export async function acquireLock(
  dir: string,
  name: string,
  what: string,
  log: (line: string) => void,
): Promise<FolderLock> {
  const path = join(dir, name);
  const me: LockHolder = {
    pid: Deno.pid,
    host: Deno.hostname(),
    startedAt: new Date().toISOString(),
    processStart: (await processStart(Deno.pid)) ?? 0,
    what,
  };
  const text = JSON.stringify(me) + "\n";
  const tmp = `${path}.${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.writeTextFile(tmp, text);
  try {
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await Deno.link(tmp, path);
        await removeLeftovers(dir, name);
        return {
          path,
          release: async () => {
            const h = await readHolder(path);
            if (h?.pid === me.pid && h.host === me.host) await Deno.remove(path).catch(() => {});
          },
        };
      } catch (e) {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
      }
      const holder = await readHolder(path);
      if (holder === null) {
        // Unreadable: written by something else, or a crash mid-write by an older version.
        const age = await Deno.stat(path).then(
          (s) => Date.now() - (s.mtime?.getTime() ?? 0),
          () => 0,
        );
        if (age < 10_000) {
          await new Promise((r) => setTimeout(r, 200));
          continue;
        }
        log(`${path}: unreadable lock file older than 10 s; taking it over`);
      } else if (holder.pid === me.pid && holder.host === me.host) {
        throw new LockedError(`${path}: this process already holds this lock`, holder);
      } else if (await holderAlive(holder)) {
        const other = holder.host !== me.host;
        throw new LockedError(
          `${dir} is in use by ${
            describe(holder)
          }; wait for it to finish or choose another folder` +
            (other ? ` (if that process is gone, delete ${path})` : ""),
          holder,
        );
      } else {
        log(
          `${path}: taking over the stale lock of ${describe(holder)}, which is no longer running`,
        );
      }
      // Move the stale lock aside, then check that what moved is the lock judged stale: another
      // process may have taken it over in between, and its live lock goes back.
      const aside = `${path}.stale-${crypto.randomUUID().slice(0, 8)}`;
      try {
        await Deno.rename(path, aside);
      } catch {
        continue; // someone else moved it first
      }
      const moved = await readHolder(aside);
      if (
        holder !== null && moved !== null &&
        (moved.pid !== holder.pid || moved.startedAt !== holder.startedAt)
      ) {
        await Deno.link(aside, path).catch(() => {});
      }
      await Deno.remove(aside).catch(() => {});
    }
    throw new LockedError(`${path}: could not take the lock (contended); try again`, null);
  } finally {
    await Deno.remove(tmp).catch(() => {});
  }
}
