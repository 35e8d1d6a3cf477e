/**
 * The kill matrix: `train` is killed with SIGKILL at 26 points (between steps, after a metrics
 * append, and inside every checkpoint, best-adapter and final-adapter write, between their two
 * renames included — forced with RUC_PEFT_FAULT=kill@POINT), then `--resume` runs it to the end.
 * Every resumed run must end with the adapter bytes, metrics rows (timings aside) and final
 * scores of an uninterrupted run, and leave no temporary folder or lock behind.
 *
 * The run: roberta-tiny + LoRA (dropout 0.1) on 32 real SST-2 sentences, 8 steps, checkpoints at
 * steps 2, 4 (with an evaluation), 6 and 8 (after the final evaluation).
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import {
  exists,
  listDir,
  metricsRows,
  pool,
  present,
  quickTrain,
  runCli,
  workspace,
} from "./support.ts";

/**
 * Kill points and the step the resumed run must continue from: the newest checkpoint that was
 * complete on disk (null: none yet, it starts over; "finished": summary.json was written).
 * Checkpoint writes are numbered: #1 step 2, #2 step 4, #3 step 6, #4 step 8 (final).
 */
const POINTS: [string, number | null | "finished"][] = [
  ["step:1", null],
  ["step:3", 2],
  ["step:5", 4],
  ["step:7", 6],
  ["step:8", 6],
  ["metrics:appended#1", null],
  ["metrics:appended#3", 4],
  ["checkpoint:trainable.safetensors#1", null],
  ["checkpoint:optimizer.safetensors#2", 2],
  ["checkpoint:state.json#2", 2],
  ["checkpoint:written#1", 2],
  ["checkpoint:moved-old#2", 4],
  ["checkpoint:renamed#2", 4],
  ["checkpoint:written#3", 6],
  ["checkpoint:moved-old#3", 6],
  ["checkpoint:renamed#3", 6],
  ["best:written#1", 2],
  ["best:moved-old#1", 2],
  ["best:renamed#1", 2],
  ["checkpoint:written#4", 8],
  ["checkpoint:moved-old#4", 8],
  ["checkpoint:renamed#4", 8],
  ["adapter:written#1", 8],
  ["adapter:moved-old#1", 8],
  ["adapter:renamed#1", 8],
  ["summary:written", "finished"],
];

Deno.test({
  name:
    `kill -9 at ${POINTS.length} points, then --resume: adapter bytes and metrics rows equal an uninterrupted run's`,
  ignore: !present,
  fn: async () => {
    const ws = await workspace("reliability-kill-");
    try {
      const whole = join(ws.dir, "whole");
      const ref = await runCli(ws, "train", quickTrain(ws, whole));
      equal(ref.code, 0, ref.stderr);
      const refAdapter = await Deno.readFile(join(whole, "adapter", "adapter_model.safetensors"));
      const refBest = await Deno.readFile(join(whole, "best", "adapter_model.safetensors"));
      const refRows = await metricsRows(whole);
      const refSummary = JSON.parse(await Deno.readTextFile(join(whole, "summary.json")));
      ok(refRows.some((r) => "eval" in r) && refRows.some((r) => "loss" in r));

      const failures: string[] = [];
      await pool(
        3,
        POINTS.map(([point, from], i) => async () => {
          const out = join(ws.dir, `kill-${i}`);
          const killed = await runCli(ws, "train", quickTrain(ws, out), {
            RUC_PEFT_FAULT: `kill@${point}`,
          });
          if (killed.signal !== "SIGKILL") {
            failures.push(
              `${point}: not killed (exit ${killed.code}) ${killed.stderr.slice(-300)}`,
            );
            return;
          }
          const resumed = await runCli(ws, "train", [...quickTrain(ws, out), "--resume"]);
          if (resumed.code !== 0) {
            failures.push(`${point}: resume exit ${resumed.code}: ${resumed.stderr.slice(-400)}`);
            return;
          }
          const resumedFrom = JSON.parse(await Deno.readTextFile(join(out, "summary.json")))
            .resumedFrom;
          if (from === "finished") {
            if (!/finished already/.test(resumed.stderr)) failures.push(`${point}: not finished`);
          } else if (resumedFrom !== from) {
            // Equal bytes alone would hide a resume that silently started over.
            failures.push(`${point}: resumed from ${resumedFrom}, expected ${from}`);
          }
          const adapter = await Deno.readFile(join(out, "adapter", "adapter_model.safetensors"));
          const same = (x: Uint8Array, y: Uint8Array) =>
            x.length === y.length && x.every((b, k) => b === y[k]);
          if (!same(adapter, refAdapter)) failures.push(`${point}: adapter bytes differ`);
          const best = await Deno.readFile(join(out, "best", "adapter_model.safetensors"));
          if (!same(best, refBest)) failures.push(`${point}: best/ adapter bytes differ`);
          try {
            deepEqual(await metricsRows(out), refRows);
          } catch {
            failures.push(
              `${point}: metrics rows differ: ${JSON.stringify(await metricsRows(out))}`,
            );
          }
          const summary = JSON.parse(await Deno.readTextFile(join(out, "summary.json")));
          if (summary.finalLoss !== refSummary.finalLoss) {
            failures.push(`${point}: final loss ${summary.finalLoss} ≠ ${refSummary.finalLoss}`);
          }
          if (JSON.stringify(summary.final) !== JSON.stringify(refSummary.final)) {
            failures.push(`${point}: final scores differ`);
          }
          const left = (await listDir(out)).filter((n) => /\.tmp-|\.old$|\.lock$/.test(n));
          if (left.length) failures.push(`${point}: leftovers ${left.join(", ")}`);
          // A second --resume of the finished run appends nothing.
          const before = await Deno.readTextFile(join(out, "metrics.jsonl"));
          const again = await runCli(ws, "train", [...quickTrain(ws, out), "--resume"]);
          if (again.code !== 0 || await Deno.readTextFile(join(out, "metrics.jsonl")) !== before) {
            failures.push(`${point}: a second --resume changed metrics.jsonl or failed`);
          }
        }),
      );
      deepEqual(failures, []);
      ok(await exists(join(whole, "summary.json")));
    } finally {
      await Deno.remove(ws.dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "SIGTERM stops train after the current step with a checkpoint (exit 130); --resume ends identical",
  ignore: !present,
  fn: async () => {
    const ws = await workspace("reliability-term-");
    try {
      const args = (out: string) =>
        quickTrain(ws, out).map((a, i, all) => (all[i - 1] === "--steps" ? "24" : a));
      const whole = join(ws.dir, "whole");
      equal((await runCli(ws, "train", args(whole))).code, 0);
      const out = join(ws.dir, "term");
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("../../tasks/train.ts", import.meta.url).pathname,
          ...args(out),
        ],
        env: ws.env,
        stdout: "null",
        stderr: "piped",
      }).spawn();
      const end = Date.now() + 120_000;
      while (Date.now() < end) {
        const s = await Deno.readTextFile(join(out, "checkpoint", "state.json")).catch(() => "");
        if (s && JSON.parse(s).step >= 2) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      child.kill("SIGTERM");
      const done = await child.output();
      const stderr = new TextDecoder().decode(done.stderr);
      equal(done.code, 130, stderr);
      const m =
        /^error: interrupted after step (\d+) of 24; saved a checkpoint there\. Continue with the same command and --resume$/m
          .exec(stderr);
      ok(m, stderr);
      const state = JSON.parse(await Deno.readTextFile(join(out, "checkpoint", "state.json")));
      equal(state.step, Number(m![1]), "the checkpoint is at the step the message names");
      ok(!(await exists(join(out, "train.lock"))), "lock released");
      const resumed = await runCli(ws, "train", [...args(out), "--resume"]);
      equal(resumed.code, 0, resumed.stderr);
      deepEqual(await metricsRows(out), await metricsRows(whole));
      deepEqual(
        await Deno.readFile(join(out, "adapter", "adapter_model.safetensors")),
        await Deno.readFile(join(whole, "adapter", "adapter_model.safetensors")),
      );
    } finally {
      await Deno.remove(ws.dir, { recursive: true });
    }
  },
});
