/**
 * Sweep files run the same from any working directory: their paths resolve against the file's
 * own folder, a local model folder is never mistaken for a Hub repo id (and a missing one is
 * reported as a missing folder), and `--slurm` scripts call the entry point by an absolute path
 * (a checkout) or by its JSR specifier (an installed package).
 */
import { equal, match, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import {
  entrySpecifier,
  expandSweep,
  parseSweep,
  slurmScript,
  sweepCommand,
} from "../../tasks/lib/sweep/sweep.ts";
import { resolveModelDir } from "../../tasks/lib/hub/model_source.ts";

const work = await Deno.realPath(await Deno.makeTempDir({ prefix: "sweep-paths-" }));
const project = join(work, "project");
await Deno.mkdir(join(project, "sweeps"), { recursive: true });
await Deno.mkdir(join(project, "models-local", "tiny"), { recursive: true });
await Deno.mkdir(join(project, "data"), { recursive: true });
await Deno.mkdir(join(project, "sweeps", "local"), { recursive: true });
await Deno.mkdir(join(work, "elsewhere"), { recursive: true });

const SWEEP = `name: paths
output: ../runs/paths
base: { data: ../data, steps: 1 }
grid:
  model: [../models-local/tiny, FacebookAI/roberta-base, ./not-there, also/not-there, local/todo]
`;
const file = join(project, "sweeps", "paths.yaml");
await Deno.writeTextFile(file, SWEEP);

/**
 * Expand the sweep file in a child process whose working directory is `cwd`: `Deno.chdir` would
 * move the working directory of every test file running beside this one (`deno test --parallel`
 * shares one process), and a test elsewhere that names a path relative to it would then miss.
 */
async function expandFrom(cwd: string, file: string) {
  const sweep = new URL("../../tasks/lib/sweep/sweep.ts", import.meta.url).href;
  const config = new URL("../../deno.json", import.meta.url).pathname;
  const script = `
    import { expandSweep, parseSweep } from ${JSON.stringify(sweep)};
    const plan = expandSweep(parseSweep(${JSON.stringify(SWEEP)}, ${JSON.stringify(file)}));
    console.log(JSON.stringify({
      output: plan.output,
      cells: plan.cells.map((c) => ({ id: c.id, model: c.config.model, data: c.config.data,
        output: c.config.output })),
    }));`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--config", config, script],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  ok(out.success, text.decode(out.stderr));
  return JSON.parse(text.decode(out.stdout)) as {
    output: string;
    cells: { id: string; model: string; data: string; output: string }[];
  };
}

Deno.test("sweep paths resolve against the YAML's folder, whatever the working directory", async () => {
  // The file named relatively from elsewhere, as `deno task sweep ../project/sweeps/x.yaml`.
  const plan = await expandFrom(join(work, "elsewhere"), "../project/sweeps/paths.yaml");
  equal(plan.output, join(project, "runs", "paths"));
  const models = plan.cells.map((c) => c.model);
  equal(models[0], join(project, "models-local", "tiny"), "an explicit relative folder");
  equal(models[1], "FacebookAI/roberta-base", "a Hub repo id stays one");
  equal(models[2], join(project, "sweeps", "not-there"), "./x is local even when missing");
  equal(models[3], "also/not-there", "owner/name without such a folder is a repo id");
  equal(models[4], join(project, "sweeps", "local", "todo"), "a missing folder in a local parent");
  for (const c of plan.cells) {
    equal(c.data, join(project, "data"));
    equal(c.output, join(project, "runs", "paths", c.id));
  }
  // Ids hash the settings as written: the same file elsewhere gives the same ids.
  const again = await expandFrom(project, "sweeps/paths.yaml");
  equal(again.cells.map((c) => c.id).join(), plan.cells.map((c) => c.id).join());
  equal(again.cells[0].model, models[0]);
});

Deno.test("a missing local model folder is reported as a folder, not as a Hub repo", async () => {
  await rejects(
    resolveModelDir(join(project, "models-local", "missing"), true),
    (e: Error) => /no such folder/.test(e.message) && !/Hub/.test(e.message),
  );
  await rejects(
    resolveModelDir(join(project, "models-local", "tiny"), true),
    /the folder has no config\.json/,
  );
  await rejects(resolveModelDir("./models-local/missing", true), /no such folder/);
});

Deno.test("--slurm calls the sweep entry point by absolute path or by its JSR specifier", () => {
  const checkout = sweepCommand(new URL("../../tasks/lib/sweep/sweep.ts", import.meta.url).href);
  equal(checkout, `deno run -A ${new URL("../../tasks/sweep.ts", import.meta.url).pathname}`);
  equal(
    sweepCommand("https://jsr.io/@ruc/peft/0.1.0/tasks/lib/sweep/sweep.ts"),
    "deno run -A jsr:@ruc/peft@0.1.0/sweep",
  );
  equal(
    entrySpecifier(new URL("https://jsr.io/@ruc/peft/0.1.0/tasks/train.ts")),
    "jsr:@ruc/peft@0.1.0/train",
    "the sweep's cells run train.ts from the same package",
  );
  const plan = expandSweep(parseSweep(SWEEP, file));
  const script = slurmScript(plan, { shards: 2, workdir: work });
  const line = script.split("\n").find((l) => l.startsWith("deno run"));
  ok(line, script);
  match(line, new RegExp(`^${sweepCommand()} ${file} --shard \\$SLURM_ARRAY_TASK_ID/2$`));
});

globalThis.addEventListener("unload", () => {
  Deno.removeSync(work, { recursive: true });
});
