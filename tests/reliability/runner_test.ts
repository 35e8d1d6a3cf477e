/**
 * The CLI runner's pieces as functions: flag parsing, strict numbers, "did you mean", and the
 * lock file (taken atomically, refused while held, released only by its holder).
 */
import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { join } from "node:path";
import {
  closestName,
  exitCodeOf,
  oneLine,
  parseFlags,
  parseNumberFlag,
  UsageError,
} from "../../tasks/lib/cli/runner.ts";
import { acquireLock, LockedError } from "../../tasks/lib/train/lock.ts";
import { settingsDiff } from "../../tasks/lib/train/checkpoint.ts";

const SPEC = {
  rank: { type: "string" },
  resume: { type: "boolean" },
  include: { type: "string", multiple: true },
  help: { type: "boolean", short: "h" },
} as const;

Deno.test("parseFlags: values, =value, repeated multiples, short aliases, positionals", () => {
  const r = parseFlags(
    ["--rank=8", "--resume", "--include", "a", "--include", "b", "-h", "x"],
    SPEC,
    { positionals: 1 },
  );
  deepEqual(r.values, { rank: "8", resume: true, include: ["a", "b"], help: true });
  deepEqual(r.positionals, ["x"]);
  // A value that starts with a dash is the flag's value, to be judged by its own rule.
  equal(parseFlags(["--rank", "-3"], SPEC).values.rank, "-3");
});

Deno.test("parseFlags: every misuse is a UsageError naming the flag", () => {
  throws(
    () => parseFlags(["--rnak", "3"], SPEC),
    /^UsageError: unknown flag --rnak; did you mean --rank\?$/,
  );
  throws(() => parseFlags(["--zzzzzz"], SPEC), /unknown flag --zzzzzz$/);
  throws(() => parseFlags(["-x"], SPEC), /unknown flag -x/);
  throws(() => parseFlags(["--rank"], SPEC), /--rank: expected a value/);
  throws(() => parseFlags(["--rank", "--resume"], SPEC), /--rank: expected a value/);
  throws(() => parseFlags(["--resume=no"], SPEC), /--resume is a switch/);
  throws(() => parseFlags(["--rank", "1", "--rank", "2"], SPEC), /--rank given twice/);
  throws(() => parseFlags(["a"], SPEC), /unexpected argument "a"/);
  equal(exitCodeOf(new UsageError("x")), 2);
  equal(exitCodeOf(new Error("x")), 1);
});

Deno.test("parseNumberFlag: decimal only, ranges named in the message", () => {
  equal(parseNumberFlag("lr", "2e-4", { min: 0, minExclusive: true }), 2e-4);
  equal(parseNumberFlag("seed", "-7", { integer: true }), -7);
  for (const bad of ["0x10", "1e", "", " ", "Infinity", "NaN", "1,5", "0b1", "1_000"]) {
    throws(() => parseNumberFlag("lr", bad), /--lr: expected a number, got/, bad);
  }
  throws(
    () => parseNumberFlag("top-p", "5", { min: 0, minExclusive: true, max: 1 }),
    /--top-p: expected a number in \(0, 1\], got "5"/,
  );
  throws(
    () => parseNumberFlag("rank", "2.5", { integer: true, min: 1 }),
    /--rank: expected a positive whole number, got "2.5"/,
  );
});

Deno.test("closestName and oneLine", () => {
  equal(closestName("max-lenght", ["max-length", "max-new-tokens"]), "max-length");
  equal(closestName("out", ["output", "offline"]), "output");
  equal(closestName("qqqqqqqq", ["output", "offline"]), undefined);
  equal(oneLine("a\n  b\n\nc"), "a; b; c");
});

Deno.test("settingsDiff names nested settings", () => {
  deepEqual(
    settingsDiff({ method: "lora", methodOptions: { r: 4 } }, {
      method: "lora",
      methodOptions: { r: 2 },
    }),
    [{ key: "methodOptions.r", before: 4, now: 2 }],
  );
});

Deno.test("a lock is refused while held and released only by its holder", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lock-test-" });
  try {
    const lines: string[] = [];
    // What a process killed while taking the lock leaves (pid 2^22 + 1 exceeds Linux's pid_max).
    await Deno.writeTextFile(join(dir, "x.lock.4194305-0123abcd"), "{}");
    const lock = await acquireLock(dir, "x.lock", "test", (l) => lines.push(l));
    deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["x.lock"], "leftover removed");
    const held = JSON.parse(await Deno.readTextFile(join(dir, "x.lock")));
    equal(held.pid, Deno.pid);
    equal(held.host, Deno.hostname());
    ok(held.processStart > 0);
    await rejects(acquireLock(dir, "x.lock", "test", () => {}), LockedError);
    await lock.release();
    ok(!(await Deno.stat(join(dir, "x.lock")).then(() => true, () => false)));
    // Another process's live lock (this test's parent shell stands in for it) is respected.
    const ppid = Number(
      (await Deno.readTextFile("/proc/self/stat")).split(") ")[1].split(" ")[1],
    );
    await Deno.writeTextFile(
      join(dir, "y.lock"),
      JSON.stringify({
        pid: ppid,
        host: Deno.hostname(),
        startedAt: "t",
        processStart: 0,
        what: "p",
      }),
    );
    await rejects(acquireLock(dir, "y.lock", "test", () => {}), /is in use by p process/);
    equal(lines.length, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
