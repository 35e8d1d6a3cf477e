/**
 * One writer per run folder and per sweep cell: two `train` runs on one --output (one refuses at
 * once, naming the holder), a stale lock of a dead process (taken over with a message), a lock
 * of another host (never taken over), two sweeps on one folder (no cell runs twice, none is
 * recorded as failed), and a resumed run's wall time and peak memory covering both processes.
 */
import { equal, match, ok } from "node:assert/strict";
import { join } from "node:path";
import { exists, metricsRows, present, quickTrain, runCli, workspace } from "./support.ts";

const ws = await workspace("reliability-writers-");

Deno.test({
  name: "two train runs on one --output: one trains, the other refuses at once naming it",
  ignore: !present,
  fn: async () => {
    const out = join(ws.dir, "shared-out");
    const t0 = performance.now();
    const [a, b] = await Promise.all([
      runCli(ws, "train", quickTrain(ws, out)),
      runCli(ws, "train", quickTrain(ws, out)),
    ]);
    const codes = [a.code, b.code].sort();
    equal(codes.join(), "0,1", `${a.stderr}\n---\n${b.stderr}`);
    const loser = a.code === 1 ? a : b;
    match(
      loser.stderr,
      /^error: .*shared-out is in use by train process \d+ on \S+ \(since [^)]+\); wait for it to finish/m,
    );
    ok(performance.now() - t0 < 120_000);
    const rows = await metricsRows(out);
    equal(rows.filter((r) => "loss" in r).length, 4, "4 loss rows, not doubled");
    equal(rows.filter((r) => "eval" in r).length, 2, "2 evaluations, not doubled");
    ok(!(await exists(join(out, "train.lock"))), "lock released");
  },
});

Deno.test({
  name: "a stale lock (dead pid on this host) is taken over with a message",
  ignore: !present,
  fn: async () => {
    const out = join(ws.dir, "stale");
    await Deno.mkdir(out);
    const gone = new Deno.Command("true").spawn();
    await gone.status;
    const holder = {
      pid: gone.pid,
      host: Deno.hostname(),
      startedAt: new Date(Date.now() - 60_000).toISOString(),
      processStart: 1,
      what: "train",
    };
    await Deno.writeTextFile(join(out, "train.lock"), JSON.stringify(holder));
    const r = await runCli(ws, "train", quickTrain(ws, out));
    equal(r.code, 0, r.stderr);
    match(r.stderr, new RegExp(`taking over the stale lock of train process ${gone.pid} on `));
    ok(await exists(join(out, "summary.json")));
  },
});

Deno.test({
  name: "a lock held on another host is never taken over; the message says how to proceed",
  fn: async () => {
    const out = join(ws.dir, "remote");
    await Deno.mkdir(out);
    const holder = {
      pid: 4242,
      host: "some-other-node",
      startedAt: new Date().toISOString(),
      processStart: 7,
      what: "train",
    };
    await Deno.writeTextFile(join(out, "train.lock"), JSON.stringify(holder));
    const r = await runCli(ws, "train", quickTrain(ws, out));
    equal(r.code, 1, r.stderr);
    match(
      r.stderr,
      /^error: .*remote is in use by train process 4242 on some-other-node .*if that process is gone, delete .*train\.lock\)$/m,
    );
    ok(await exists(join(out, "train.lock")), "the other host's lock is left alone");
  },
});

Deno.test({
  name: "a resumed run's wall time and peak memory cover every process that trained it",
  ignore: !present,
  fn: async () => {
    const out = join(ws.dir, "resumed");
    const killed = await runCli(ws, "train", quickTrain(ws, out), {
      RUC_PEFT_FAULT: "kill@step:6",
    });
    equal(killed.signal, "SIGKILL");
    const state = JSON.parse(await Deno.readTextFile(join(out, "checkpoint", "state.json")));
    ok(state.wallSeconds > 0 && state.peakTotal > 0);
    const t0 = performance.now();
    const resumed = await runCli(ws, "train", [...quickTrain(ws, out), "--resume"]);
    const secondProcess = (performance.now() - t0) / 1000;
    equal(resumed.code, 0, resumed.stderr);
    const summary = JSON.parse(await Deno.readTextFile(join(out, "summary.json")));
    equal(summary.resumedFrom, 6);
    ok(summary.wallSeconds > state.wallSeconds, "the first process's time is counted");
    ok(
      summary.wallSeconds - state.wallSeconds <= secondProcess + 0.5,
      "the second process adds at most its own time",
    );
    ok(summary.memory.peakTotal >= state.peakTotal, "peak is the maximum over both");
  },
});

Deno.test({
  name: "two sweeps on one folder: every cell runs once, none is recorded as failed",
  ignore: !present,
  fn: async () => {
    const yaml = join(ws.dir, "two.yaml");
    const output = join(ws.dir, "two-sweeps");
    await Deno.writeTextFile(
      yaml,
      `name: two
output: ${output}
base:
  model: ${ws.roberta}
  task: sst2
  data: ${ws.data}
  offline: true
  steps: 4
  batchSize: 4
  maxLength: 16
  evalLimit: 8
  logInterval: 2
  saveInterval: 2
grid:
  method: [lora, bitfit]
  seed: [0, 1]
`,
    );
    const sweep = () => runCli(ws, "sweep", [yaml]);
    const [a, b] = await Promise.all([sweep(), sweep()]);
    ok(a.code <= 1 && b.code <= 1, `${a.stderr}\n---\n${b.stderr}`);
    const state = JSON.parse(await Deno.readTextFile(join(output, "sweep-state.json")));
    equal(state.counts.done, 4, JSON.stringify(state.counts));
    equal(state.counts.failed, 0);
    for (const [id, record] of Object.entries(state.cells) as [string, Record<string, number>][]) {
      const log = await Deno.readTextFile(join(output, id, "train.log"));
      equal(log.match(/^=== /gm)?.length, 1, `${id} started once`);
      ok(record.runWallSeconds > 0 && record.peakBytes > 0, `${id}: wall time and peak recorded`);
      const rows = await metricsRows(join(output, id));
      equal(rows.filter((r) => "loss" in r).length, 2, `${id}: metrics not doubled`);
    }
  },
});

Deno.test({
  name: "cleanup of the writers workspace",
  fn: async () => {
    await Deno.remove(ws.dir, { recursive: true });
  },
});
