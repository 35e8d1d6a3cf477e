/**
 * Paired effects (tasks/lib/report/paired.ts): differences are taken only between runs equal in
 * task, seed and every other setting; the base is the smallest number or the first string; pooled
 * "all" rows appear when two methods contribute; the Markdown shows signed means and W/T/L.
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import {
  type PairableRun,
  pairedEffects,
  renderPairedMarkdown,
} from "../../tasks/lib/report/paired.ts";

function run(
  method: string,
  task: string,
  seed: number,
  targets: string,
  ratio: number,
  score: number,
): PairableRun {
  return {
    method,
    task,
    seed,
    score,
    settings: { targets, wvLrRatio: String(ratio), lr: "0.001" },
  };
}

const QV = "query,value", QKV = "query,key,value";

Deno.test("paired effects: pairs match task, seed and every other setting", () => {
  const runs: PairableRun[] = [];
  // lora: QV beats QKV by 1 on sst2 and loses by 3 on rte; ratio 4 adds +2 / −2 by seed.
  for (const seed of [0, 1]) {
    for (const [task, qvGain] of [["sst2", 1], ["rte", -3]] as const) {
      for (const ratio of [1, 4]) {
        const base = 70 + seed + (ratio === 4 ? (seed === 0 ? 2 : -2) : 0);
        runs.push(run("lora", task, seed, QKV, ratio, base));
        runs.push(run("lora", task, seed, QV, ratio, base + qvGain));
      }
    }
  }
  // A run with no partner (a seed only one placement has) never pairs.
  runs.push(run("lora", "sst2", 7, QV, 1, 0));
  const effects = pairedEffects(runs);
  const targets = effects.find((e) => e.setting === "targets")!;
  equal(targets.value, QV);
  equal(targets.base, QKV);
  equal(targets.pairs, 8);
  equal(targets.mean, -1);
  equal(targets.wins, 4);
  equal(targets.losses, 4);
  deepEqual(targets.byTask, [
    { task: "sst2", pairs: 4, mean: 1 },
    { task: "rte", pairs: 4, mean: -3 },
  ]);
  // Sample std of four +1 and four −3: mean −1, deviations ±2 → √(8·4/7).
  ok(Math.abs(targets.std - Math.sqrt(32 / 7)) < 1e-12);
  const ratio = effects.find((e) => e.setting === "wvLrRatio")!;
  equal(ratio.base, "1");
  equal(ratio.value, "4");
  equal(ratio.pairs, 8);
  equal(ratio.mean, 0);
  equal(ratio.wins, 4);
  equal(ratio.losses, 4);
  // lr never varies: no effect for it; one method: no pooled row.
  ok(!effects.some((e) => e.setting === "lr" || e.method === "all"));
});

Deno.test("paired effects: numeric values order numerically and two methods pool into 'all'", () => {
  const runs: PairableRun[] = [];
  for (const method of ["lora", "dora"]) {
    for (const ratio of [1, 2, 8, 16]) {
      runs.push(run(method, "mrpc", 0, QV, ratio, 60 + ratio + (method === "dora" ? 1 : 0)));
    }
  }
  const effects = pairedEffects(runs);
  deepEqual(
    effects.filter((e) => e.method === "lora").map((e) => [e.base, e.value, e.mean]),
    [["1", "2", 1], ["1", "8", 7], ["1", "16", 15]],
  );
  const pooled = effects.filter((e) => e.method === "all");
  deepEqual(pooled.map((e) => [e.value, e.pairs, e.mean, e.std]), [
    ["2", 2, 1, 0],
    ["8", 2, 7, 0],
    ["16", 2, 15, 0],
  ]);
  const md = renderPairedMarkdown(effects, (t) => t.toUpperCase());
  ok(md.includes("| lora | wvLrRatio | 16 − 1 | 1 | +15.00 ± 0.00 | 1 / 0 / 0 | +15.00 |"), md);
  ok(md.split("\n")[0].includes("| MRPC |"), md);
});
