/**
 * Paired effects of a sweep's settings: for each method and each setting that takes several values
 * among its runs (targets, wvLrRatio, methodOptions.r, …), the score difference of runs that agree
 * on everything else — task, seed and every other setting — so the spread shown is that of the
 * effect itself, not of tasks or seeds. This is how an ablation claim ("W_q,W_v beats W_q,W_k,W_v
 * at equal rank", "λ > 1 helps") is checked against a sweep: mean ± sample std of the paired
 * differences, their count, and how many pairs went each way.
 *
 * @example
 * ```ts
 * import { pairedEffects } from "./paired.ts";
 * const run = (seed: number, targets: string, score: number) => ({
 *   method: "lora", task: "sst2", seed, score, settings: { targets },
 * });
 * const effects = pairedEffects([
 *   run(0, "query,value", 80), run(0, "query,key,value", 78),
 *   run(1, "query,value", 81), run(1, "query,key,value", 82),
 * ]);
 * console.log(effects[0].value, effects[0].base, effects[0].mean); // query,value query,key,value 0.5
 * ```
 *
 * @module
 */

/** What a paired comparison needs of a run. */
export interface PairableRun {
  /** Method name (effects are per method, and pooled over methods). */
  method: string;
  /** Task name. */
  task: string;
  /** Seed. */
  seed: number;
  /** The main metric × 100. */
  score: number;
  /** Flattened settings (as the report's variant labels use them). */
  settings: Record<string, string>;
}

/** The paired effect of one setting value against the setting's base value. */
export interface PairedEffect {
  /** The method, or "all" for the pairs of every method pooled. */
  method: string;
  /** The setting (`targets`, `wvLrRatio`, `methodOptions.r`, …). */
  setting: string;
  /** The value compared. */
  value: string;
  /** The value it is compared with (the smallest number, else the first in sort order). */
  base: string;
  /** Pairs: runs with `value` and with `base` equal in everything else. */
  pairs: number;
  /** Mean of score(value) − score(base) over the pairs. */
  mean: number;
  /** Sample standard deviation of the differences (0 for one pair). */
  std: number;
  /** Pairs where `value` scored higher / equal / lower. */
  wins: number;
  /** Pairs with equal scores. */
  ties: number;
  /** Pairs where `value` scored lower. */
  losses: number;
  /** Mean difference per task, in task order of first appearance. */
  byTask: { task: string; mean: number; pairs: number }[];
}

/** Settings that identify a cell rather than configure it. */
const IDENTITY = new Set(["model"]);

/** Values ordered numerically when they all are numbers, else as strings. */
function orderValues(values: Iterable<string>): string[] {
  const list = [...new Set(values)];
  const numeric = list.every((v) => v.trim() !== "" && Number.isFinite(Number(v)));
  return numeric ? list.sort((a, b) => Number(a) - Number(b)) : list.sort();
}

function meanStd(xs: readonly number[]): { mean: number; std: number } {
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  const v = xs.length > 1 ? xs.reduce((s, x) => s + (x - mean) ** 2, 0) / (xs.length - 1) : 0;
  return { mean, std: Math.sqrt(v) };
}

/**
 * Every paired effect in `runs`: per method (and pooled over methods as "all" when more than one
 * method has pairs for the setting), per setting that varies within one (method, task), per value
 * other than the base. Runs missing a setting count it as "default". Settings are compared as the
 * report formats them, so `targets` "query,value" and "query,key,value" are two values.
 */
export function pairedEffects(runs: readonly PairableRun[]): PairedEffect[] {
  const setting = (r: PairableRun, k: string) => r.settings[k] ?? "default";
  const methods = [...new Set(runs.map((r) => r.method))];
  const out: PairedEffect[] = [];
  const pooled = new Map<
    string,
    { diffs: number[]; tasks: Map<string, number[]>; methods: number }
  >();
  const keysInOrder: string[] = [];
  for (const method of methods) {
    const mine = runs.filter((r) => r.method === method);
    const keys = [...new Set(mine.flatMap((r) => Object.keys(r.settings)))]
      .filter((k) => !IDENTITY.has(k))
      .filter((k) =>
        [...new Set(mine.map((r) => r.task))].some((t) =>
          new Set(mine.filter((r) => r.task === t).map((r) => setting(r, k))).size > 1
        )
      )
      .sort();
    for (const key of keys) {
      const values = orderValues(mine.map((r) => setting(r, key)));
      const base = values[0];
      // Cells that agree on everything but `key`: task, seed and every other setting.
      const others = (r: PairableRun) =>
        JSON.stringify([
          r.task,
          r.seed,
          ...Object.keys(r.settings).filter((k) => k !== key).sort().map((k) => [k, setting(r, k)]),
        ]);
      const groups = new Map<string, Map<string, PairableRun>>();
      for (const r of mine) {
        const id = others(r);
        const g = groups.get(id) ?? new Map<string, PairableRun>();
        g.set(setting(r, key), r);
        groups.set(id, g);
      }
      for (const value of values.slice(1)) {
        const diffs: number[] = [];
        const tasks = new Map<string, number[]>();
        for (const g of groups.values()) {
          const a = g.get(value), b = g.get(base);
          if (!a || !b) continue;
          const d = a.score - b.score;
          diffs.push(d);
          tasks.set(a.task, [...(tasks.get(a.task) ?? []), d]);
        }
        if (!diffs.length) continue;
        out.push(effect(method, key, value, base, diffs, tasks));
        const id = JSON.stringify([key, value, base]);
        if (!pooled.has(id)) {
          pooled.set(id, { diffs: [], tasks: new Map(), methods: 0 });
          keysInOrder.push(id);
        }
        const p = pooled.get(id)!;
        p.methods++;
        p.diffs.push(...diffs);
        for (const [t, ds] of tasks) p.tasks.set(t, [...(p.tasks.get(t) ?? []), ...ds]);
      }
    }
  }
  for (const id of keysInOrder) {
    const p = pooled.get(id)!;
    if (p.methods < 2) continue;
    const [key, value, base] = JSON.parse(id) as [string, string, string];
    out.push(effect("all", key, value, base, p.diffs, p.tasks));
  }
  return out;
}

function effect(
  method: string,
  setting: string,
  value: string,
  base: string,
  diffs: number[],
  tasks: Map<string, number[]>,
): PairedEffect {
  const { mean, std } = meanStd(diffs);
  return {
    method,
    setting,
    value,
    base,
    pairs: diffs.length,
    mean,
    std,
    wins: diffs.filter((d) => d > 0).length,
    ties: diffs.filter((d) => d === 0).length,
    losses: diffs.filter((d) => d < 0).length,
    byTask: [...tasks].map(([task, ds]) => ({ task, pairs: ds.length, mean: meanStd(ds).mean })),
  };
}

/** A signed number with `digits` decimals (`+0.42`, `−1.10`). */
function signed(x: number, digits: number): string {
  const s = Math.abs(x).toFixed(digits);
  return x > 0 && Number(s) !== 0 ? `+${s}` : x < 0 && Number(s) !== 0 ? `−${s}` : s;
}

/**
 * The effects as a Markdown table: one row per (method, setting, value), the mean ± std of the
 * paired differences in score points, wins/ties/losses, and the mean difference per task.
 */
export function renderPairedMarkdown(
  effects: readonly PairedEffect[],
  taskName: (t: string) => string = (t) => t,
  digits = 2,
): string {
  const tasks = [...new Set(effects.flatMap((e) => e.byTask.map((t) => t.task)))];
  const header = [
    "Method",
    "Setting",
    "Value − base",
    "Pairs",
    "Δ mean ± std",
    "W / T / L",
    ...tasks.map(taskName),
  ];
  const esc = (s: string) => s.replaceAll("|", "\\|");
  const rows = effects.map((e) => [
    e.method,
    e.setting,
    `${e.value} − ${e.base}`,
    String(e.pairs),
    `${signed(e.mean, digits)} ± ${e.std.toFixed(digits)}`,
    `${e.wins} / ${e.ties} / ${e.losses}`,
    ...tasks.map((t) => {
      const x = e.byTask.find((b) => b.task === t);
      return x ? signed(x.mean, digits) : "–";
    }),
  ]);
  const line = (cells: string[]) => `| ${cells.map(esc).join(" | ")} |`;
  const align = header.map((_, i) => i < 3 ? ":---" : "---:");
  return [line(header), `| ${align.join(" | ")} |`, ...rows.map(line)].join("\n");
}
