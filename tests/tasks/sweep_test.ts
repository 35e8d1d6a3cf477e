/**
 * `deno task sweep`: grid expansion (order, stable ids, overrides, dotted keys, exclude, unset),
 * errors with line numbers, shards, the Slurm script, the dry-run listing, failures recorded
 * while the sweep goes on, and a real kill -9 of a sweep and its cell processes followed by a
 * resume that loses and repeats nothing. Training cells use a tiny random LLaMA (real stories260K
 * tokenizer) on real SST-2 sentences from ../shared/data/glue/tsv.
 */
import { deepEqual, equal, match, notEqual, ok, throws } from "node:assert/strict";
import { createHash } from "node:crypto";
import { join, resolve } from "node:path";
import { setup, useTestTokenCache } from "../helpers.ts";
import { makeLlamaFixture } from "../fixtures/make_fixtures.ts";
import {
  canonicalJson,
  dryRunListing,
  expandSweep,
  parseShard,
  parseSweep,
  readCellRecord,
  runSweep,
  shardCells,
  slurmScript,
  sweepCommand,
  type SweepState,
} from "../../tasks/lib/sweep/sweep.ts";
import { parseSweepArgs } from "../../tasks/sweep.ts";

const SST2 = new URL("../../../shared/data/glue/tsv/SST-2/", import.meta.url).pathname;
const present = await Deno.stat(`${SST2}train.tsv`).then(() => true, () => false);
const work = await Deno.makeTempDir({ prefix: "sweep-test-" });
useTestTokenCache();
const SWEEP_SCRIPT = new URL("../../tasks/sweep.ts", import.meta.url).pathname;

const GRID = `name: demo
output: out/demo
base:
  model: m
  methodOptions: { alpha: 16 }
grid:
  method: [lora, full]
  task: [sst2, rte]
  seed: [0, 1]
  targets: [[query, value], [query, key, value]]
  lrMultipliers: [{}, { value: 4 }]
  methodOptions.r: [4, 8]
tasks:
  rte: { epochs: 10 }
methods:
  full: { lr: 2.0e-5, methodOptions: {}, unset: [targets] }
exclude:
  - { method: lora, task: rte, targets: [query, key, value] }
  - { method: dora }
`;

Deno.test("expansion: cartesian order, per-task/per-method overrides, dotted keys, exclude, merged duplicates", () => {
  const plan = expandSweep(parseSweep(GRID, "demo.yaml"));
  // lora: 2 tasks × 2 seeds × 2 targets × 2 ratios × 2 ranks = 32, minus rte × qkv (8) = 24;
  // full: its overrides drop targets and the rank, so 32 grid cells collapse into 8.
  equal(plan.cells.length, 24 + 8);
  equal(plan.excluded, 8);
  equal(plan.duplicates, 24);
  deepEqual(plan.unusedExcludes, [{ index: 1, line: 19 }]);
  deepEqual(plan.cells.map((c) => c.index), plan.cells.map((_, i) => i));
  // The first grid key varies slowest, the last fastest.
  deepEqual(plan.cells.slice(0, 3).map((c) => c.assignment), [
    {
      method: "lora",
      task: "sst2",
      seed: 0,
      targets: ["query", "value"],
      lrMultipliers: {},
      "methodOptions.r": 4,
    },
    {
      method: "lora",
      task: "sst2",
      seed: 0,
      targets: ["query", "value"],
      lrMultipliers: {},
      "methodOptions.r": 8,
    },
    {
      method: "lora",
      task: "sst2",
      seed: 0,
      targets: ["query", "value"],
      lrMultipliers: { value: 4 },
      "methodOptions.r": 4,
    },
  ]);
  const first = plan.cells[0].config;
  deepEqual(first.methodOptions, { alpha: 16, r: 4 }, "a dotted key merges into base's mapping");
  equal(first.lr, 5e-4, "RunConfig default");
  // Relative to the sweep file (demo.yaml in the working directory here).
  equal(first.output, resolve("out/demo", plan.cells[0].id));
  ok(
    plan.cells.every((c) =>
      !(c.config.method === "lora" && c.config.task === "rte" && c.config.targets!.length === 3)
    ),
  );
  const rte = plan.cells.find((c) => c.config.task === "rte")!;
  equal(rte.config.epochs, 10, "per-task override");
  const full = plan.cells.filter((c) => c.config.method === "full");
  ok(full.every((c) => c.config.lr === 2e-5 && c.config.targets === undefined));
  ok(
    full.every((c) => canonicalJson(c.config.methodOptions) === "{}"),
    "method override wins over the grid",
  );
  deepEqual(
    full.map((c) => `${c.config.task}-${c.config.seed}-${canonicalJson(c.config.lrMultipliers)}`),
    [
      "sst2-0-{}",
      'sst2-0-{"value":4}',
      "sst2-1-{}",
      'sst2-1-{"value":4}',
      "rte-0-{}",
      'rte-0-{"value":4}',
      "rte-1-{}",
      'rte-1-{"value":4}',
    ],
  );
  equal(new Set(plan.cells.map((c) => c.id)).size, plan.cells.length, "ids are unique");
});

Deno.test("cell ids: readable slug + hash of the canonical settings, the same in every run and key order", () => {
  const plan = expandSweep(parseSweep(GRID, "demo.yaml"));
  const cell = plan.cells[2];
  const settings = {
    lrMultipliers: { value: 4 },
    method: "lora",
    methodOptions: { alpha: 16, r: 4 },
    model: "m",
    seed: 0,
    targets: ["query", "value"],
    task: "sst2",
  };
  equal(canonicalJson(cell.settings), JSON.stringify(settings));
  const hash = createHash("sha256").update(JSON.stringify(settings)).digest("hex").slice(0, 6);
  equal(cell.id, `lora-sst2-s0-qv-v4-r4-${hash}`);
  // Pinned: ids must not change between versions, or finished cells would run again.
  equal(cell.id, "lora-sst2-s0-qv-v4-r4-c45606");
  match(plan.cells.find((c) => c.config.method === "full")!.id, /^full-sst2-s0-[0-9a-f]{6}$/);
  // The same grid written in another key order: other cell order, same ids.
  const reordered = GRID.replace("  method: [lora, full]\n", "").replace(
    "  methodOptions.r: [4, 8]\n",
    "  methodOptions.r: [4, 8]\n  method: [lora, full]\n",
  );
  const again = expandSweep(parseSweep(reordered, "demo.yaml"));
  notEqual(again.cells[1].id, plan.cells[1].id);
  deepEqual(again.cells.map((c) => c.id).sort(), plan.cells.map((c) => c.id).sort());
  deepEqual(
    expandSweep(parseSweep(GRID, "demo.yaml")).cells.map((c) => c.id),
    plan.cells.map((c) => c.id),
  );
});

Deno.test("errors name the file, the line and the field", () => {
  const bad = (text: string, re: RegExp) =>
    throws(() => expandSweep(parseSweep(text, "s.yaml")), (e: Error) => {
      match(e.message, re);
      return true;
    });
  bad(
    "name: x\noutput: o\ngrid:\n  seed: []\n",
    /^s\.yaml:4: field "grid\.seed": expected a non-empty list of values$/,
  );
  bad(
    "name: x\noutput: o\nbase:\n  lr: 1\n  epoch: 3\n",
    /^s\.yaml:5: field "base\.epoch": unknown run setting "epoch"/,
  );
  bad(
    "name: x\noutput: o\ngrids:\n  seed: [1]\n",
    /^s\.yaml:3: field "\(top level\)": Unrecognized key: "grids"/,
  );
  bad(
    "name: x\noutput: o\ngrid:\n  lr.x: [1]\n",
    /^s\.yaml:4: field "grid\.lr\.x": a dotted key must be "field\.entry"/,
  );
  bad(
    "name: x\noutput: o\nbase: { output: elsewhere }\n",
    /^s\.yaml:3: field "base\.output": the sweep sets each cell's output/,
  );
  bad(
    "name: x\noutput: o\nmethods:\n  lora:\n    method: full\n",
    /^s\.yaml:5: field "methods\.lora\.method": a per-method override cannot change the method/,
  );
  bad(
    "name: x\noutput: o\nmethods:\n  full:\n    unset: targets\n",
    /^s\.yaml:5: field "methods\.full\.unset": expected a list/,
  );
  bad("name: x y\noutput: o\n", /^s\.yaml:1: field "name": expected a name of letters/);
  bad("name: x\noutput: o\ngrid:\n  seed: [0, 1\n", /^s\.yaml:5: invalid YAML: /);
  bad("name: x\nname: y\noutput: o\n", /^s\.yaml:2: invalid YAML: Map keys must be unique/);
  // Cell errors: the cell, the field, and the line that set the value (once per cause).
  const cells =
    "name: x\noutput: o\ngrid:\n  task: [sst2, rtx]\n  batchSize: [16, 0]\nmethods:\n  full:\n    lr: -1\n" +
    "base:\n  method: full\n";
  bad(
    cells,
    /^s\.yaml:5: grid cell 1 \(task=sst2 batchSize=0\): field "batchSize": Too small: expected number to be >0 \(set by grid\.batchSize\[1\]\) — and 1 more cells$/m,
  );
  bad(
    cells,
    /^s\.yaml:4: grid cell 2 \(task=rtx batchSize=16\): field "task": unknown task "rtx"; GLUE: cola, sst2/m,
  );
  bad(
    cells,
    /^s\.yaml:8: grid cell 0 \(task=sst2 batchSize=16\): field "lr": Too small: expected number to be >0 \(set by methods\.full\.lr\) — and 3 more cells$/m,
  );
});

Deno.test("shards partition the cells: disjoint, covering, index ≡ i (mod n)", () => {
  const plan = expandSweep(parseSweep(GRID, "demo.yaml"));
  for (const n of [1, 2, 3, 5, 32, 40]) {
    const shards = Array.from(
      { length: n },
      (_, i) => shardCells(plan.cells, { index: i, count: n }),
    );
    const ids = shards.flat().map((c) => c.id);
    equal(ids.length, plan.cells.length, `n=${n}: every cell once`);
    equal(new Set(ids).size, plan.cells.length, `n=${n}: disjoint`);
    shards.forEach((s, i) => ok(s.every((c) => c.index % n === i)));
    ok(
      Math.max(...shards.map((s) => s.length)) - Math.min(...shards.map((s) => s.length)) <= 1,
      "balanced",
    );
  }
  deepEqual(parseShard("2/4"), { index: 2, count: 4 });
  throws(() => parseShard("4/4"), /--shard: expected i\/n with 0 ≤ i < n/);
  throws(() => parseShard("1"), /--shard: expected i\/n/);
  throws(
    () => parseSweepArgs(["a.yaml", "--parallel", "0"]),
    /--parallel: expected a positive whole number, got "0"/,
  );
  throws(() => parseSweepArgs([]), /expected one sweep file, got none/);
  throws(() => parseSweepArgs(["a.yaml", "--slurm-time", "1:00:00"]), /go with --slurm N/);
});

Deno.test("--slurm prints a ready array script, one shard and one GPU per task", () => {
  const plan = expandSweep(parseSweep(GRID, "sweeps/demo.yaml"));
  const script = slurmScript(plan, {
    shards: 4,
    workdir: "/repo",
    partition: "gpu",
    time: "12:00:00",
  });
  const lines = script.split("\n");
  equal(lines[0], "#!/bin/bash");
  for (
    const l of [
      "#SBATCH --job-name=demo",
      "#SBATCH --array=0-3",
      "#SBATCH --gres=gpu:1",
      "#SBATCH --partition=gpu",
      "#SBATCH --time=12:00:00",
      "#SBATCH --chdir=/repo",
      `${sweepCommand()} ${resolve("sweeps/demo.yaml")} --shard $SLURM_ARRAY_TASK_ID/4`,
    ]
  ) ok(lines.includes(l), `has ${l}`);
  ok(
    lines.findIndex((l) => l.startsWith("deno run")) >
      lines.findLastIndex((l) => l.startsWith("#SBATCH")),
  );
  match(script, /32 cells in 4 shards of at most 8/);
  const bare = slurmScript(plan, { shards: 2, workdir: "/repo", parallel: 3 });
  ok(!bare.includes("--partition") && !bare.includes("--time"));
  ok(bare.includes(`demo.yaml --shard $SLURM_ARRAY_TASK_ID/2 --parallel 3`));
  throws(() => slurmScript(plan, { shards: 33, workdir: "/repo" }), /the sweep has only 32 cells/);
});

Deno.test("--dry-run lists id, method, task, seed, status and settings of a shard's cells", async () => {
  const dir = join(work, "dry");
  const text = GRID.replace("output: out/demo", `output: ${dir}`);
  const plan = expandSweep(parseSweep(text, "demo.yaml"));
  const [done, resume] = plan.cells;
  await Deno.mkdir(join(done.config.output), { recursive: true });
  await Deno.writeTextFile(join(done.config.output, "summary.json"), "{}");
  await Deno.mkdir(join(resume.config.output, "checkpoint"), { recursive: true });
  await Deno.writeTextFile(join(resume.config.output, "checkpoint", "state.json"), "{}");
  const listing = (await dryRunListing(plan, { index: 0, count: 2 })).split("\n");
  equal(listing[0], `sweep demo (demo.yaml): 32 cells (8 excluded, 24 duplicates merged) → ${dir}`);
  equal(listing[1], "shard 0/2: 16 cells");
  match(listing[2], /^#\s+id\s+method\s+task\s+seed\s+status\s+settings$/);
  match(
    listing[3],
    new RegExp(
      `^0\\s+${done.id}\\s+lora\\s+sst2\\s+0\\s+done\\s+lr=0\\.0005 targets=query,value lrMultipliers=\\{\\} methodOptions\\.r=4$`,
    ),
  );
  match(
    listing[4],
    new RegExp(`^2\\s+${plan.cells[2].id}\\s+lora\\s+sst2\\s+0\\s+new\\s+.*lrMultipliers=value=4`),
  );
  equal(listing.filter((l) => /^\d/.test(l)).length, 16);
  equal(listing.at(-1), "warning: exclude[1] (line 19) matches no cell");
  const other = (await dryRunListing(plan, { index: 1, count: 2 })).split("\n");
  match(other[3], new RegExp(`^1\\s+${resume.id}\\s+.*\\sresume\\s`));
  // The command line: same listing, nothing run.
  const yaml = join(work, "dry.yaml");
  await Deno.writeTextFile(yaml, text.replace("[lora, full]", "[lora, full, nosuch]"));
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SWEEP_SCRIPT, yaml, "--dry-run", "--shard", "1/2"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const printed = new TextDecoder().decode(out.stdout);
  match(printed, /^sweep demo \(.*dry\.yaml\): 64 cells/);
  match(printed, /warning: method "nosuch" is not in the registry yet; its 16 cells would fail/);
  ok(
    !(await Deno.stat(join(dir, "sweep-state.json")).then(() => true, () => false)),
    "a dry run writes nothing",
  );
});

/** A GLUE TSV folder of `n` short SST-2 sentences (train = dev). */
async function sst2Subset(n: number): Promise<string> {
  const lines = (await Deno.readTextFile(`${SST2}train.tsv`)).split("\n");
  const rows = lines.slice(1).filter((l) => l.split("\t")[0].split(" ").length <= 10).slice(0, n);
  const dir = join(work, `sst2-${n}`);
  await Deno.mkdir(join(dir, "SST-2"), { recursive: true });
  const text = [lines[0], ...rows].join("\n") + "\n";
  await Deno.writeTextFile(join(dir, "SST-2", "train.tsv"), text);
  await Deno.writeTextFile(join(dir, "SST-2", "dev.tsv"), text);
  return dir;
}

const model = join(work, "llama-tiny");
if (present) {
  await setup();
  await makeLlamaFixture(model, {
    layers: 1,
    hidden: 32,
    heads: 2,
    kvHeads: 1,
    intermediate: 64,
    tied: true,
  });
}

function tinySweep(name: string, data: string, grid: string): string {
  return `name: ${name}
output: ${join(work, name)}
base:
  model: ${model}
  task: sst2
  data: ${data}
  offline: true
  steps: 6
  batchSize: 8
  maxLength: 24
  lr: 5.0e-3
  logInterval: 3
  saveInterval: 2
grid:
${grid}`;
}

Deno.test({
  name: "a failing cell is recorded with its error and the sweep goes on; a rerun retries only it",
  ignore: !present,
  fn: async () => {
    const data = await sst2Subset(16);
    const text = tinySweep(
      "fails",
      data,
      `  method: [lora, nosuch]\n  data: [${data}, ${join(work, "missing")}]\n`,
    );
    const plan = expandSweep(parseSweep(text, "fails.yaml"));
    equal(plan.cells.length, 4);
    const lines: string[] = [];
    const result = await runSweep(plan, { inProcess: true, log: (l) => lines.push(l) });
    deepEqual(result.done, [plan.cells[0].id]);
    deepEqual(result.failed.map((f) => f.id), plan.cells.slice(1).map((c) => c.id));
    match(result.failed[0].error, /--data .*missing: not a folder/);
    match(result.failed[1].error, /unknown method "nosuch"; available: full, lora/);
    const state: SweepState = JSON.parse(
      await Deno.readTextFile(join(work, "fails", "sweep-state.json")),
    );
    deepEqual(state.counts, { done: 1, failed: 3, running: 0, pending: 0 });
    equal(state.cells[plan.cells[1].id].status, "failed");
    match(state.cells[plan.cells[1].id].error!, /not a folder/);
    equal(state.cells[plan.cells[0].id].mainMetric, "accuracy");
    ok(lines.some((l) => l.includes("failed") && l.includes(plan.cells[3].id)));
    const again = await runSweep(plan, { inProcess: true, log: () => {} });
    deepEqual(again.skipped, [plan.cells[0].id]);
    equal(again.failed.length, 3);
    const after: SweepState = JSON.parse(
      await Deno.readTextFile(join(work, "fails", "sweep-state.json")),
    );
    equal(after.cells[plan.cells[0].id].attempts, 1);
    equal(after.cells[plan.cells[1].id].attempts, 2);
  },
});

Deno.test({
  name: "a cell still running in a live process left by a killed sweep is not started twice",
  ignore: !present,
  fn: async () => {
    const data = await sst2Subset(16);
    const plan = expandSweep(parseSweep(tinySweep("busy", data, "  seed: [0]\n"), "busy.yaml"));
    const cell = plan.cells[0];
    await Deno.mkdir(cell.config.output, { recursive: true });
    // A stand-in for an orphaned train.ts: a live process whose command line names the cell.
    const orphan = new Deno.Command("sh", { args: ["-c", "sleep 30", cell.config.output] }).spawn();
    try {
      const record = { status: "running", attempts: 1, pid: orphan.pid, host: Deno.hostname() };
      await Deno.writeTextFile(join(cell.config.output, "sweep-cell.json"), JSON.stringify(record));
      const result = await runSweep(plan, { inProcess: true, log: () => {} });
      deepEqual(result.busy, [cell.id]);
      equal(result.done.length + result.failed.length, 0);
    } finally {
      orphan.kill("SIGKILL");
      await orphan.status;
    }
  },
});

async function readState(path: string): Promise<SweepState | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch {
    return null;
  }
}

/** Child processes of `pid` (Linux /proc). */
async function childrenOf(pid: number): Promise<number[]> {
  const out: number[] = [];
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const stat = await Deno.readTextFile(`/proc/${e.name}/stat`).catch(() => "");
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    if (ppid === pid) out.push(Number(e.name));
  }
  return out;
}

Deno.test({
  name:
    "kill -9 of a sweep and its cell processes, then the same command: no cell lost or repeated",
  ignore: !present,
  fn: async () => {
    const data = await sst2Subset(24);
    const yaml = join(work, "killed.yaml");
    await Deno.writeTextFile(
      yaml,
      tinySweep("killed", data, "  method: [full, lora]\n  seed: [0, 1]\n"),
    );
    const plan = expandSweep(parseSweep(await Deno.readTextFile(yaml), yaml));
    const statePath = join(work, "killed", "sweep-state.json");
    const sweep = (stderr: "null" | "piped") =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", SWEEP_SCRIPT, yaml, "--parallel", "2"],
        stdout: "null",
        stderr,
      });
    const first = sweep("null").spawn();
    const end = Date.now() + 240_000;
    let state = await readState(statePath);
    while (!state || state.counts.done < 1) {
      if (Date.now() > end) {
        first.kill("SIGKILL");
        throw new Error("no cell finished within 240 s");
      }
      await new Promise((r) => setTimeout(r, 100));
      state = await readState(statePath);
    }
    // Freeze the sweep so it starts nothing new, then kill -9 its children and itself.
    Deno.kill(first.pid, "SIGSTOP");
    const children = await childrenOf(first.pid);
    for (const pid of children) Deno.kill(pid, "SIGKILL");
    Deno.kill(first.pid, "SIGKILL");
    equal((await first.status).signal, "SIGKILL");
    // Each cell's own sweep-cell.json is its record: the aggregate may lag it by one write when
    // the kill lands between the two.
    const before = new Map<string, number>();
    for (const c of plan.cells) before.set(c.id, (await readCellRecord(c)).attempts);
    // Done is what the disk says: a cell may have written summary.json just before the kill.
    const finished: typeof plan.cells = [];
    for (const c of plan.cells) {
      if (await Deno.stat(join(c.config.output, "summary.json")).then(() => true, () => false)) {
        finished.push(c);
      }
    }
    ok(finished.length >= 1 && finished.length < 4, `killed midway: ${finished.length} of 4 done`);
    ok(children.length >= 1, "a cell process was running");
    const stamps = new Map<string, [number, string]>();
    for (const c of finished) {
      const file = join(c.config.output, "summary.json");
      stamps.set(c.id, [(await Deno.stat(file)).mtime!.getTime(), await Deno.readTextFile(file)]);
    }
    const second = await sweep("piped").output();
    const log = new TextDecoder().decode(second.stderr);
    equal(second.code, 0, log);
    match(
      log,
      new RegExp(`4 cells, ${finished.length} already done, ${4 - finished.length} to run`),
    );
    const after = (await readState(statePath))!;
    deepEqual(after.counts, { done: 4, failed: 0, running: 0, pending: 0 });
    for (const c of plan.cells) {
      const names: string[] = [];
      for await (const e of Deno.readDir(c.config.output)) names.push(e.name);
      equal(names.filter((n) => n.startsWith("summary")).length, 1, `${c.id}: one summary.json`);
      const summary = JSON.parse(await Deno.readTextFile(join(c.config.output, "summary.json")));
      equal(summary.steps, 6);
      const stamp = stamps.get(c.id);
      if (stamp) {
        equal(
          (await Deno.stat(join(c.config.output, "summary.json"))).mtime!.getTime(),
          stamp[0],
          `${c.id} not re-run`,
        );
        equal(await Deno.readTextFile(join(c.config.output, "summary.json")), stamp[1]);
        equal(after.cells[c.id].attempts, 1);
        const attempts =
          (await Deno.readTextFile(join(c.config.output, "train.log"))).match(/^=== /gm)!.length;
        equal(attempts, 1, `${c.id} started once`);
      } else {
        equal(after.cells[c.id].attempts, before.get(c.id)! + 1);
      }
    }
  },
});

Deno.test({
  name: "cleanup of the temporary work folder",
  fn: async () => {
    await Deno.remove(work, { recursive: true });
  },
  sanitizeResources: false,
});
