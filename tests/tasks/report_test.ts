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
import { setup } from "../helpers.ts";
import { makeRobertaFixture } from "../fixtures/make_fixtures.ts";
import { parseRunConfig } from "../../tasks/lib/train/config.ts";
import { type Summary, train } from "../../tasks/lib/train/trainer.ts";
import {
  buildReport,
  readReportCsv,
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
Deno.env.set("RUC_PEFT_CACHE", join(work, "token-cache"));
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
  name: "deno task report: flags are validated; the CLI writes the four files",
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
    for (const f of ["report.md", "report.csv", "report_pivot.csv", "report.html"]) {
      ok((await Deno.stat(join(out, f))).size > 0, `${f} written`);
    }
  },
});
