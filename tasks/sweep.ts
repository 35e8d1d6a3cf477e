/**
 * `deno task sweep FILE.yaml [options]` — run a grid of fine-tuning runs (methods × tasks × seeds ×
 * settings) described by a YAML file, resumably; see tasks/lib/sweep/sweep.ts for the file format.
 *
 * @module
 */
import { parseFlags, parseNumberFlag, runCli, UsageError } from "./lib/cli/runner.ts";
import {
  dryRunListing,
  expandSweep,
  parseShard,
  readSweep,
  runSweep,
  type Shard,
  slurmScript,
  type SweepResult,
} from "./lib/sweep/sweep.ts";

const USAGE = `usage: deno task sweep FILE.yaml [options]

Expands the YAML grid into cells (one training run each, in {output}/{cell id}) and runs them.
Finished cells (summary.json present) are skipped and cells with a checkpoint resume, so running
the same command again after a crash or kill -9 continues where the sweep stopped. Progress is
in {output}/sweep-state.json; each cell's log is {output}/{cell id}/train.log.

  --dry-run             list the cells (index, id, method, task, seed, status, settings); run nothing
  --parallel N          N cells at once, each in its own \`deno run tasks/train.ts\` process with its
                        own GPU device (default 1: one subprocess at a time). On a single GPU this
                        helps only small models (stories260K, tiny test models) that leave the GPU
                        idle between kernels; for roberta-base and larger run one cell per GPU and
                        split the sweep with --shard or --slurm instead.
  --in-process          run cells inside this process (no process start per cell; a cell that
                        crashes the GPU device takes the sweep with it). Not with --parallel.
  --shard i/n           only the cells whose index ≡ i (mod n): n machines or GPUs, one shard each
  --slurm N             print an sbatch script for a Slurm array of N tasks (one shard and one GPU
                        each) and exit; Slurm schedules the machines, this tool does not
  --slurm-partition P   #SBATCH --partition for --slurm
  --slurm-time T        #SBATCH --time for --slurm (e.g. 24:00:00)
  --help`;

/** Parsed command line of `deno task sweep`. */
export interface SweepArgs {
  /** The sweep file. */
  file: string;
  /** `--dry-run`: list, do not run. */
  dryRun: boolean;
  /** `--parallel N`. */
  parallel: number;
  /** `--in-process`. */
  inProcess: boolean;
  /** `--shard i/n`. */
  shard?: Shard;
  /** `--slurm N` with its partition and time limit. */
  slurm?: { shards: number; partition?: string; time?: string };
  /** `--help`. */
  help: boolean;
}

function positiveInt(flag: string, text: string): number {
  return parseNumberFlag(flag, text, { integer: true, min: 1 });
}

/** Parse `deno task sweep` arguments, with errors naming the flag. */
export function parseSweepArgs(args: readonly string[]): SweepArgs {
  const { values, positionals } = parseFlags(
    args,
    {
      "dry-run": { type: "boolean" },
      parallel: { type: "string" },
      "in-process": { type: "boolean" },
      shard: { type: "string" },
      slurm: { type: "string" },
      "slurm-partition": { type: "string" },
      "slurm-time": { type: "string" },
      help: { type: "boolean", short: "h" },
    } as const,
    { command: "sweep", positionals: 1 },
  );
  const help = values.help === true;
  if (!help && positionals.length !== 1) {
    throw new UsageError("expected one sweep file, got none (see deno task sweep --help)");
  }
  if ((values["slurm-partition"] || values["slurm-time"]) && values.slurm === undefined) {
    throw new UsageError("--slurm-partition and --slurm-time go with --slurm N");
  }
  return {
    file: positionals[0] ?? "",
    dryRun: values["dry-run"] === true,
    parallel: values.parallel === undefined ? 1 : positiveInt("parallel", values.parallel),
    inProcess: values["in-process"] === true,
    shard: values.shard === undefined ? undefined : parseShard(values.shard),
    slurm: values.slurm === undefined ? undefined : {
      shards: positiveInt("slurm", values.slurm),
      partition: values["slurm-partition"],
      time: values["slurm-time"],
    },
    help,
  };
}

/** One-paragraph account of a finished invocation. */
export function formatSweepResult(result: SweepResult): string {
  const lines = [
    `${result.done.length} cells done now, ${result.skipped.length} done before, ` +
    `${result.failed.length} failed${
      result.busy.length ? `, ${result.busy.length} still running elsewhere` : ""
    }` +
    `${result.interrupted ? " (interrupted)" : ""}; state: ${result.statePath}`,
  ];
  for (const f of result.failed) lines.push(`  failed ${f.id}: ${f.error.split("\n")[0]}`);
  return lines.join("\n");
}

/** Run `deno task sweep` with these arguments; returns the process exit code. */
export async function sweepCli(args: readonly string[]): Promise<number> {
  const a = parseSweepArgs(args);
  if (a.help) {
    console.log(USAGE);
    return 0;
  }
  const plan = expandSweep(await readSweep(a.file));
  if (a.slurm) {
    console.log(slurmScript(plan, { ...a.slurm, workdir: Deno.cwd(), parallel: a.parallel }));
    return 0;
  }
  if (a.dryRun) {
    console.log(await dryRunListing(plan, a.shard));
    return 0;
  }
  const controller = new AbortController();
  const stop = () => controller.abort();
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, stop);
  try {
    const result = await runSweep(plan, {
      parallel: a.parallel,
      inProcess: a.inProcess,
      shard: a.shard,
      signal: controller.signal,
    });
    console.error(formatSweepResult(result));
    if (result.interrupted) return 130;
    // Cells left to another live process are not done by this invocation: not a success.
    return result.failed.length || result.busy.length ? 1 : 0;
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, stop);
  }
}

if (import.meta.main) await runCli(() => sweepCli(Deno.args));
