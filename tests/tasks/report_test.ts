/**
 * `deno task report` on real run folders: a tiny random RoBERTa (the real roberta-base tokenizer)
 * is trained here for a few steps with full fine-tuning and LoRA on an SST-2 subset and on STS-B
 * (../shared/data/glue/tsv; its Pearson correlation is continuous, so cells rarely tie), two seeds
 * each, plus one LoRA variant (query,key,value targets and a value lr multiplier) with one seed.
 * The classification heads are newly initialised from each run's seed, so seeds differ. The report's numbers are checked against values
 * computed directly from those summary.json and metrics.jsonl files.
 */
import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { join } from "node:path";
import { setup, useTestTokenCache } from "../helpers.ts";
import { makeRobertaFixture } from "../fixtures/make_fixtures.ts";
import { parseRunConfig } from "../../tasks/lib/train/config.ts";
import { type Summary, train } from "../../tasks/lib/train/trainer.ts";
import {
  buildReport,
  latexEscape,
  METHOD_COLORS,
  readReportCsv,
  renderChartSvg,
  renderReportLatex,
  renderReportMarkdown,
  reportCharts,
  writeReport,
} from "../../tasks/lib/report/report.ts";
import { reportOptionsFromArgs } from "../../tasks/report.ts";

await setup();

const GLUE_TSV = new URL("../../../shared/data/glue/tsv/", import.meta.url).pathname;
const present = await Promise.all(
  ["SST-2/train.tsv", "STS-B/train.tsv", "STS-B/dev.tsv"].map((f) =>
    Deno.stat(join(GLUE_TSV, f)).then(() => true, () => false)
  ),
).then((all) => all.every(Boolean));
const work = await Deno.makeTempDir({ prefix: "report-test-" });
useTestTokenCache();
const MIB = 2 ** 20;

/** A GLUE TSV folder with n short SST-2 sentences whose dev set is the train set. */
async function sst2Subset(n: number): Promise<string> {
  const lines = (await Deno.readTextFile(join(GLUE_TSV, "SST-2", "train.tsv"))).split("\n");
  const rows = lines.slice(1).filter((l) => l.split("\t")[0].split(" ").length <= 12).slice(0, n);
  const dir = join(work, `sst2-${n}`);
  await Deno.mkdir(join(dir, "SST-2"), { recursive: true });
  const text = [lines[0], ...rows].join("\n") + "\n";
  await Deno.writeTextFile(join(dir, "SST-2", "train.tsv"), text);
  await Deno.writeTextFile(join(dir, "SST-2", "dev.tsv"), text);
  return dir;
}

/** A run made for the report, with the pivot row it must land in. */
interface MadeRun {
  dir: string;
  row: string;
  task: string;
}

const LORA_QV = "lora (targets=query,value · value lr ×1)";
const LORA_QKV = "lora (targets=query,key,value · value lr ×4)";

async function makeRuns(): Promise<MadeRun[]> {
  const model = join(work, "roberta-tiny");
  await makeRobertaFixture(model, { seed: 1, initializerRange: 0.1, withHead: false });
  const sst2 = await sst2Subset(16);
  const tasks = {
    // Settings that differ only between tasks (data, maxLength, limits) must not split rows.
    sst2: { data: sst2, maxLength: 24 },
    stsb: { data: GLUE_TSV, maxLength: 32, trainLimit: 16, evalLimit: 16 },
  };
  const methods = {
    full: { method: "full", lr: 2e-3 },
    lora: { method: "lora", lr: 1e-2, methodOptions: { r: 4, alpha: 8 } },
  };
  const made: MadeRun[] = [];
  const run = async (
    task: "sst2" | "stsb",
    name: string,
    row: string,
    seed: number,
    extra: Record<string, unknown>,
  ) => {
    const dir = join(work, "runs", task, name, `seed${seed}`);
    await train(
      parseRunConfig({
        model,
        task,
        batchSize: 8,
        steps: 3,
        logInterval: 1,
        warmupRatio: 0,
        seed,
        output: dir,
        offline: true,
        ...tasks[task],
        ...extra,
      }),
      { progress: false, log: () => {} },
    );
    made.push({ dir, row, task });
  };
  for (const task of ["sst2", "stsb"] as const) {
    for (const seed of [1, 2]) {
      await run(task, "full", "full", seed, methods.full);
      await run(task, "lora", LORA_QV, seed, methods.lora);
    }
  }
  await run("sst2", "lora-qkv", LORA_QKV, 1, {
    ...methods.lora,
    targets: ["query", "key", "value"],
    lrMultipliers: { value: 4 },
  });
  return made;
}

let runsPromise: Promise<MadeRun[]> | null = null;
const runs = (): Promise<MadeRun[]> => runsPromise ??= makeRuns();

const readSummary = async (dir: string): Promise<Summary> =>
  JSON.parse(await Deno.readTextFile(join(dir, "summary.json")));

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
function sampleStd(xs: number[]): number | null {
  if (xs.length < 2) return null;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (xs.length - 1));
}

function close(actual: number | null | undefined, expected: number | null, what: string): void {
  if (expected === null) {
    equal(actual ?? null, null, what);
    return;
  }
  ok(
    typeof actual === "number" &&
      Math.abs(actual - expected) <= 1e-9 * Math.max(1, Math.abs(expected)),
    `${what}: ${actual} vs ${expected}`,
  );
}

/** Expected pivot cells and row aggregates, computed from the summary files alone. */
async function expected(made: MadeRun[]) {
  const byRow = new Map<string, { task: string; s: Summary }[]>();
  for (const m of made) {
    byRow.set(m.row, [...(byRow.get(m.row) ?? []), { task: m.task, s: await readSummary(m.dir) }]);
  }
  return [...byRow].map(([row, list]) => {
    const cells: Record<string, { mean: number; std: number | null; n: number }> = {};
    for (const task of ["sst2", "stsb"]) {
      const scores = list.filter((x) => x.task === task).map((x) =>
        100 * x.s.final[x.s.mainMetric]
      );
      if (scores.length) {
        cells[task] = { mean: mean(scores), std: sampleStd(scores), n: scores.length };
      }
    }
    const all = list.map((x) => x.s);
    const memory: Record<string, number> = {};
    for (const c of Object.keys(all[0].memory.peak)) {
      memory[c] = Math.max(...all.map((s) => s.memory.peak[c] / MIB));
    }
    return {
      row,
      cells,
      avg: cells.sst2 && cells.stsb ? (cells.sst2.mean + cells.stsb.mean) / 2 : null,
      trainable: mean(all.map((s) => s.trainableParams)),
      percent: (100 * mean(all.map((s) => s.trainableParams))) /
        mean(all.map((s) => s.totalParams)),
      memory,
      peakTotal: Math.max(...all.map((s) => s.memory.peakTotal / MIB)),
      tokens: mean(all.map((s) => s.tokensPerSecond)),
      runs: all.length,
    };
  });
}

Deno.test({
  name:
    "pivot: variants split rows; cells are mean ± sample std of the summaries; Avg, params, memory",
  ignore: !present,
  fn: async () => {
    const made = await runs();
    const report = await buildReport({ runsDir: join(work, "runs") });
    deepEqual(report.warnings, []);
    equal(report.runs.length, 9);
    deepEqual(report.pivot.tasks, ["sst2", "stsb"], "GLUE order");
    deepEqual(report.pivot.mainMetrics, { sst2: "accuracy", stsb: "pearson" });
    deepEqual(report.pivot.rows.map((r) => r.label).sort(), ["full", LORA_QKV, LORA_QV].sort());
    equal(
      report.pivot.rows[0].label,
      "full",
      "rows ordered by trainable parameters, largest first",
    );
    equal(report.pivot.uniformN, null, "seeds per cell differ (2 and 1)");
    const want = await expected(made);
    for (const w of want) {
      const row = report.pivot.rows.find((r) => r.label === w.row)!;
      deepEqual(Object.keys(row.cells).sort(), Object.keys(w.cells).sort(), `${w.row}: tasks`);
      for (const [task, c] of Object.entries(w.cells)) {
        close(row.cells[task].mean, c.mean, `${w.row}/${task} mean`);
        close(row.cells[task].std, c.std, `${w.row}/${task} std`);
        equal(row.cells[task].n, c.n, `${w.row}/${task} n`);
      }
      close(row.avg, w.avg, `${w.row} Avg`);
      close(row.trainableParams, w.trainable, `${w.row} trainable params`);
      close(row.trainablePercent, w.percent, `${w.row} % trainable`);
      for (const [c, v] of Object.entries(w.memory)) {
        close(row.memoryMiB[c], v, `${w.row} peak ${c} MiB`);
      }
      close(row.peakTotalMiB, w.peakTotal, `${w.row} peak total MiB`);
      close(row.tokensPerSecond, w.tokens, `${w.row} tokens/s`);
      equal(row.runs, w.runs);
    }
    const full = report.pivot.rows.find((r) => r.label === "full")!;
    const lora = report.pivot.rows.find((r) => r.label === LORA_QV)!;
    ok(lora.trainableParams < full.trainableParams / 100, "LoRA trains far fewer parameters");
    ok(
      full.memoryMiB.optimizer > 10 * lora.memoryMiB.optimizer,
      "and keeps far less optimizer state",
    );
    equal(full.trainablePercent, 100);
  },
});

Deno.test({
  name: "loss curves are the mean over seeds of metrics.jsonl, per task and row",
  ignore: !present,
  fn: async () => {
    const made = await runs();
    const report = await buildReport({ runsDir: join(work, "runs") });
    const values = (reportCharts(report).loss.data as {
      values: { task: string; label: string; step: number; loss: number }[];
    }).values;
    for (const task of ["sst2", "stsb"]) {
      for (const row of [...new Set(made.filter((m) => m.task === task).map((m) => m.row))]) {
        const perSeed = await Promise.all(
          made.filter((m) => m.task === task && m.row === row).map(async (m) =>
            (await Deno.readTextFile(join(m.dir, "metrics.jsonl"))).trim().split("\n").map((l) =>
              JSON.parse(l)
            )
              .filter((l) => typeof l.loss === "number")
          ),
        );
        const got = values.filter((v) =>
          v.task === (task === "sst2" ? "SST-2" : "STS-B") && v.label === row
        );
        deepEqual(got.map((v) => v.step), [1, 2, 3], `${task}/${row} steps`);
        for (const v of got) {
          const losses = perSeed.map((lines) => lines.find((l) => l.step === v.step).loss);
          close(v.loss, mean(losses), `${task}/${row} loss at step ${v.step}`);
        }
      }
    }
  },
});

Deno.test({
  name:
    "report files: Markdown bolds the best and shows n, CSVs round-trip through arquero, HTML has 3 SVG charts",
  ignore: !present,
  fn: async () => {
    await runs();
    const out = join(work, "report-out");
    const { report, files } = await writeReport({ runsDir: join(work, "runs"), out });
    const { pivot } = report;

    // Markdown: the main table, parsed back.
    const md = await Deno.readTextFile(files.markdown);
    equal(md, renderReportMarkdown(report));
    const tableLines = md.split("\n").filter((l) => l.startsWith("| "));
    const header = tableLines[0].slice(2, -2).split(" | ");
    deepEqual(header.slice(0, 4), ["Method", "SST-2 (Acc)", "STS-B (Pearson)", "Avg"]);
    let notBest = 0;
    for (const r of pivot.rows) {
      const line = tableLines.find((l) =>
        l.startsWith(`| ${r.label} |`) || l.startsWith(`| **${r.label}** |`)
      );
      ok(line, `a table line for ${r.label}`);
      const cells = line.slice(2, -2).split(" | ");
      for (const [i, task] of ["sst2", "stsb"].entries()) {
        const c = r.cells[task];
        const text = cells[1 + i];
        if (!c) {
          equal(text, "—");
          continue;
        }
        const column = pivot.rows.map((x) => x.cells[task]?.mean).filter((v): v is number =>
          v !== undefined
        );
        const best = c.mean >= Math.max(...column) - 1e-9;
        equal(text.startsWith("**"), best, `${r.label}/${task}: bold iff best (${text})`);
        if (!best) notBest++;
        const plain = text.replace(/\*\*/g, "");
        const std = c.std === null ? "" : ` ± ${c.std.toFixed(1)}`;
        equal(plain, `${c.mean.toFixed(1)}${std} (n=${c.n})`, "mean ± std (n) with n shown");
      }
      equal(cells[3].replace(/\*\*/g, ""), r.avg === null ? "—" : r.avg.toFixed(1));
    }
    ok(
      notBest > 0,
      "some cells are not the best (Pearson correlations differ), so bold is selective",
    );
    const avgs = pivot.rows.map((r) => r.avg).filter((v): v is number => v !== null);
    const bestAvg = pivot.rows.find((r) => r.avg === Math.max(...avgs))!;
    ok(
      tableLines.some((l) =>
        l.startsWith(`| ${bestAvg.label} |`) && l.includes(`**${bestAvg.avg!.toFixed(1)}**`)
      ),
    );
    ok(
      md.includes("## Peak memory by category (MiB)") &&
        md.includes("| Method | weights | trainable | grads | optimizer | activations |"),
    );
    ok(md.includes("- 9 runs: 3 method/variant rows × 2 tasks (SST-2, STS-B), seeds 1, 2"));
    // The two LoRA rows differ in targets and in the value lr together: no run pairs with
    // another on one setting alone, so no paired effect is claimed.
    ok(!md.includes("## Paired effects"), "confounded settings make no pairs");

    // CSV: the flat table and the pivot survive a round trip through arquero.
    const flat = readReportCsv(await Deno.readTextFile(files.csv));
    deepEqual(flat.objects(), report.table.objects());
    equal(flat.numRows(), 9);
    for (
      const col of [
        "dir",
        "task",
        "method",
        "variant",
        "seed",
        "score",
        "final_accuracy",
        "trainableParams",
        "mem_optimizer_mib",
        "mem_total_mib",
        "tokensPerSecond",
        "wallSeconds",
      ]
    ) {
      ok(flat.columnNames().includes(col), `report.csv has ${col}`);
    }
    const pivotCsv = readReportCsv(await Deno.readTextFile(files.pivotCsv));
    const rows = pivotCsv.objects() as Record<string, string | number | null>[];
    equal(rows.length, pivot.rows.length);
    for (const r of pivot.rows) {
      const back = rows.find((x) => x.label === r.label)!;
      equal(back.sst2_mean, r.cells.sst2.mean);
      equal(back.sst2_std, r.cells.sst2.std);
      equal(back.avg, r.avg);
      equal(back.trainableParams, r.trainableParams);
      equal(back.mem_total_mib, r.peakTotalMiB);
    }

    // HTML: one self-contained page with the three charts rendered at build time.
    const html = await Deno.readTextFile(files.html);
    equal(html.match(/<svg\b/g)?.length, 3, "three SVG charts");
    ok(!/<script|<link|<img|\ssrc=|@import/i.test(html), "no external resources or scripts");
    const count = (role: string) => html.split(`aria-roledescription="${role}"`).length - 1;
    // One line per row with a loss curve on each task: 3 rows on SST-2, 2 on STS-B.
    equal(count("line mark"), 5, "loss lines");
    equal(count("point"), 5, "one point per row and task");
    const bars = pivot.rows.reduce(
      (n, r) => n + pivot.categories.filter((c) => r.memoryMiB[c] > 0).length,
      0,
    );
    equal(count("bar"), bars, "one stacked segment per row and memory category");
    ok(bars >= 3 * 5, "every row uses at least five categories");
    for (const r of pivot.rows) {
      ok(html.includes(r.label.replace(/&/g, "&amp;")), `the page names ${r.label}`);
    }
    ok(html.includes("<strong>"), "bold best in the HTML table");
  },
});

Deno.test("LaTeX cells escape TeX's special characters and typeset ±, ×, minus signs", () => {
  equal(
    latexEscape("a_b & 5% #1 {x} ~^ \\"),
    "a\\_b \\& 5\\% \\#1 \\{x\\} \\textasciitilde{}\\textasciicircum{} \\textbackslash{}",
  );
  equal(latexEscape("-9.6 ± 1.0"), "$-$9.6 $\\pm$ 1.0");
  equal(latexEscape("lora (value lr ×4 · r=8)"), "lora (value lr $\\times$4 $\\cdot$ r=8)");
  equal(latexEscape("pre-trained 2.1K–2.2K"), "pre-trained 2.1K--2.2K", "a hyphen in a word stays");
});

Deno.test({
  name: "report.tex: a booktabs table with the pivot's rows, mean ± std cells and the best in bold",
  ignore: !present,
  fn: async () => {
    await runs();
    const out = join(work, "report-tex");
    const { report, files } = await writeReport({ runsDir: join(work, "runs"), out });
    const tex = await Deno.readTextFile(files.latex);
    equal(tex, renderReportLatex(report));
    const lines = tex.split("\n");
    const at = (rule: string) => lines.indexOf(rule);
    ok(at("\\toprule") < at("\\midrule") && at("\\midrule") < at("\\bottomrule"));
    ok(lines.includes("\\begin{tabular}{lrrrrrrr}"), "one l column, then right-aligned numbers");
    equal(
      lines[at("\\toprule") + 1],
      "Method & SST-2 (Acc) & STS-B (Pearson) & Avg & Trainable params & \\% of total & Peak MiB & Tokens/s \\\\",
    );
    const body = lines.slice(at("\\midrule") + 1, at("\\bottomrule"));
    equal(body.length, report.pivot.rows.length);
    const strip = (c: string) => c.replace(/^\\textbf\{(.*)\}$/, "$1");
    let bold = 0;
    for (const [i, r] of report.pivot.rows.entries()) {
      const cells = body[i].replace(/ \\\\$/, "").split(" & ");
      equal(cells[0], latexEscape(r.label));
      for (const [k, t] of report.pivot.tasks.entries()) {
        const c = r.cells[t];
        if (!c) {
          equal(cells[1 + k], "---", `${r.label} has no ${t} runs: an em dash`);
          continue;
        }
        const std = c.std === null ? "" : ` $\\pm$ ${c.std.toFixed(1)}`;
        // Seed counts differ between cells here (one LoRA variant has one seed): n is shown.
        const n = report.pivot.uniformN === null ? ` (n=${c.n})` : "";
        equal(
          strip(cells[1 + k]),
          `${latexEscape(c.mean.toFixed(1))}${std}${n}`,
          `${r.label} / ${t}`,
        );
        if (cells[1 + k].startsWith("\\textbf{")) {
          bold++;
          const means = report.pivot.rows.filter((x) => x.cells[t]).map((x) => x.cells[t].mean);
          equal(c.mean, Math.max(...means), "bold = best");
        }
      }
    }
    ok(bold >= report.pivot.tasks.length, "each task column has its best in bold");
    ok(
      /\\caption\{Scores: the final evaluation's main metric \$\\times\$ 100, mean \$\\pm\$ sample std/
        .test(tex),
    );
  },
});

Deno.test({
  name:
    "charts: loss panels with their own step range, distinct colours, ±std bars, per-category memory panels",
  ignore: !present,
  fn: async () => {
    await runs();
    const report = await buildReport({ runsDir: join(work, "runs") });
    const charts = reportCharts(report);
    const resolve = (spec: unknown) =>
      (spec as { resolve: { scale: Record<string, string> } }).resolve.scale;
    deepEqual(resolve(charts.loss), { x: "independent", y: "independent" });
    deepEqual(resolve(charts.memory), { x: "independent" });
    // SST-2 runs took 3 steps, so did STS-B here: each panel's range is its own data's.
    const range = (charts.loss.data as { values: { task: string; step: number }[] }).values;
    for (const task of ["SST-2", "STS-B"]) {
      const steps = range.filter((v) => v.task === task).map((v) => v.step);
      equal(Math.min(...steps), 1);
      equal(Math.max(...steps), 3);
    }
    equal(new Set(METHOD_COLORS).size, METHOD_COLORS.length, "no colour twice");
    // Each row's line is drawn in its own colour of the palette.
    const svg = (await renderChartSvg(charts.loss)).toLowerCase();
    const rows = report.pivot.rows.length;
    const points = (charts.scoreVsParams.data as {
      values: { label: string; task: string; score: number; low: number; high: number }[];
    }).values;
    for (const p of points) {
      const row = report.pivot.rows.find((r) => r.label === p.label)!;
      const cell = row.cells[p.task === "SST-2" ? "sst2" : "stsb"];
      close(p.high - p.score, cell.std ?? 0, `${p.label} ${p.task} +std`);
      close(p.score - p.low, cell.std ?? 0, `${p.label} ${p.task} −std`);
    }
    ok(points.some((p) => p.high > p.low), "some cells have a spread");
    for (const c of METHOD_COLORS.slice(0, rows)) {
      ok(svg.includes(`stroke="${c.toLowerCase()}"`), `colour ${c} drawn`);
    }
    ok(!svg.includes(`stroke="${METHOD_COLORS[rows].toLowerCase()}"`), "and no other row's");
    const categories =
      (charts.memory as { facet: { column: { sort: string[] } } }).facet.column.sort;
    deepEqual(categories, report.pivot.categories);
  },
});

Deno.test({
  name: "a task is one column under one name however its runs spelled it (BoolQ, boolq)",
  ignore: !present,
  fn: async () => {
    const made = await runs();
    const dir = join(work, "spelled");
    for (const [i, spelling] of ["BoolQ", "boolq"].entries()) {
      const to = join(dir, `r${i}`);
      await Deno.mkdir(to, { recursive: true });
      const o = JSON.parse(await Deno.readTextFile(join(made[i * 2].dir, "summary.json")));
      o.task = spelling;
      o.seed = i;
      await Deno.writeTextFile(join(to, "summary.json"), JSON.stringify(o));
    }
    const { report, files } = await writeReport({ runsDir: dir });
    deepEqual(report.pivot.tasks, ["boolq"]);
    ok((await Deno.readTextFile(files.markdown)).includes("| BoolQ (Acc) |"));
    ok((await Deno.readTextFile(files.latex)).includes("Method & BoolQ (Acc) &"));
  },
});

Deno.test({
  name:
    "malformed summary.json and metrics.jsonl lines give warnings naming the file and are skipped",
  ignore: !present,
  fn: async () => {
    const made = await runs();
    const dir = join(work, "broken");
    // Two real runs copied as they are, then real files damaged in three ways.
    const copy = async (from: string, to: string, edit?: (text: string) => string) => {
      await Deno.mkdir(to, { recursive: true });
      for (const f of ["summary.json", "metrics.jsonl"]) {
        const text = await Deno.readTextFile(join(from, f));
        await Deno.writeTextFile(join(to, f), edit && f === "summary.json" ? edit(text) : text);
      }
    };
    await copy(made[0].dir, join(dir, "ok-a"));
    await copy(made[1].dir, join(dir, "deep", "ok-b"));
    await copy(made[2].dir, join(dir, "truncated"), (t) => t.slice(0, t.length >> 1));
    await copy(made[3].dir, join(dir, "no-memory"), (t) => {
      const o = JSON.parse(t);
      delete o.memory;
      return JSON.stringify(o);
    });
    await copy(made[0].dir, join(dir, "no-main"), (t) => {
      const o = JSON.parse(t);
      o.final = {};
      return JSON.stringify(o);
    });
    await Deno.writeTextFile(join(dir, "ok-a", "metrics.jsonl"), '{"step": 9, "loss": 0.5\n', {
      append: true,
    });
    const { report, warnings } = await writeReport({ runsDir: dir });
    equal(report.runs.length, 2);
    deepEqual(report.runs.map((r) => r.dir).sort(), ["deep/ok-b", "ok-a"]);
    equal(warnings.length, 4, warnings.join("\n"));
    ok(
      warnings.some((w) =>
        w.startsWith(join(dir, "truncated", "summary.json")) && /not valid JSON/.test(w)
      ),
    );
    ok(
      warnings.some((w) =>
        w.startsWith(join(dir, "no-memory", "summary.json")) && /field "memory"/.test(w)
      ),
    );
    ok(
      warnings.some((w) =>
        w.startsWith(join(dir, "no-main", "summary.json")) && /field "final\.accuracy"/.test(w)
      ),
    );
    ok(
      warnings.some((w) =>
        w.startsWith(`${join(dir, "ok-a", "metrics.jsonl")}:`) && /not a JSON line/.test(w)
      ),
    );
    equal(report.curves.filter((p) => p.step === 9).length, 0);
    ok((await Deno.readTextFile(join(dir, "report.md"))).includes("## Warnings"));
    await rejects(
      writeReport({ runsDir: join(dir, "deep", "nothing") }),
      /deep\/nothing: expected a folder of runs/,
    );
  },
});

Deno.test({
  name: "deno task report: flags are validated; the CLI writes the five files",
  ignore: !present,
  fn: async () => {
    throws(() => reportOptionsFromArgs([]), /expected one RUNS_DIR, got 0/);
    throws(() => reportOptionsFromArgs(["runs", "--score", "median"]), /field "score"/);
    throws(
      () => reportOptionsFromArgs(["runs", "--digits", "two"]),
      /--digits: expected a whole number in \[0, 4\], got "two"/,
    );
    deepEqual(reportOptionsFromArgs(["runs", "--out", "o", "--score", "best"]), {
      runsDir: "runs",
      out: "o",
      score: "best",
      digits: 1,
    });
    await runs();
    const out = join(work, "cli-out");
    const r = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../../tasks/report.ts", import.meta.url).pathname,
        join(work, "runs"),
        "--out",
        out,
      ],
      env: { XDG_RUNTIME_DIR: "/tmp" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    equal(r.code, 0, new TextDecoder().decode(r.stderr));
    ok(new TextDecoder().decode(r.stdout).includes("9 runs → 3 rows × 2 tasks"));
    for (const f of ["report.md", "report.tex", "report.csv", "report_pivot.csv", "report.html"]) {
      ok((await Deno.stat(join(out, f))).size > 0, `${f} written`);
    }
  },
});
