/**
 * Shared pieces of the reliability tests: tiny models (tests/fixtures), a small real SST-2 subset
 * (../shared/data), running an entry point as a subprocess, and a pool that runs several at once.
 */
import { join } from "node:path";
import { makeLlamaFixture, makeRobertaFixture } from "../fixtures/make_fixtures.ts";

/** Real SST-2 sentences (../shared/data). */
export const SST2_DIR: string = new URL("../../../shared/data/glue/tsv/SST-2/", import.meta.url)
  .pathname;
/** The real GLUE parquet conversion (../shared/data). */
export const GLUE_PARQUET: string = new URL("../../../shared/data/glue/parquet/", import.meta.url)
  .pathname;
/** Whether the shared data is here (tests that need it are skipped, visibly, when it is not). */
export const present: boolean = await Deno.stat(join(SST2_DIR, "train.tsv")).then(
  () => true,
  () => false,
);

/** Path of an entry point in tasks/. */
export function script(name: string): string {
  return new URL(`../../tasks/${name}.ts`, import.meta.url).pathname;
}

/** What a finished subprocess left. */
export interface Ran {
  /** Exit code (for a signal: 128 + its number, as a shell reports it). */
  code: number;
  /** The signal that ended it, if any. */
  signal: Deno.Signal | null;
  /** Standard error, decoded. */
  stderr: string;
  /** Standard output, decoded. */
  stdout: string;
}

/** The work folder of a test file, with the fixtures it needs. */
export interface Workspace {
  /** The temporary root. */
  dir: string;
  /** roberta-tiny (a classification encoder). */
  roberta: string;
  /** llama-tiny (a decoder). */
  llama: string;
  /** A GLUE TSV root with a 32-sentence SST-2 whose dev set is its train set. */
  data: string;
  /** Environment of every subprocess (token cache inside the workspace). */
  env: Record<string, string>;
}

/** Create a workspace with the tiny models and data. */
export async function workspace(prefix: string): Promise<Workspace> {
  const dir = await Deno.makeTempDir({ prefix });
  const roberta = join(dir, "roberta-tiny");
  const llama = join(dir, "llama-tiny");
  await makeRobertaFixture(roberta, { seed: 1, initializerRange: 0.1 });
  await makeLlamaFixture(llama);
  const data = join(dir, "sst2");
  if (present) {
    const lines = (await Deno.readTextFile(join(SST2_DIR, "train.tsv"))).split("\n");
    const rows = lines.slice(1).filter((l) => l.split("\t")[0].split(" ").length <= 10).slice(
      0,
      32,
    );
    const text = [lines[0], ...rows].join("\n") + "\n";
    await Deno.mkdir(join(data, "SST-2"), { recursive: true });
    await Deno.writeTextFile(join(data, "SST-2", "train.tsv"), text);
    await Deno.writeTextFile(join(data, "SST-2", "dev.tsv"), text);
  }
  return {
    dir,
    roberta,
    llama,
    data,
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1", RUC_PEFT_CACHE: join(dir, "token-cache") },
  };
}

const SIGNALS: Record<string, number> = { SIGKILL: 9, SIGTERM: 15, SIGABRT: 6, SIGSEGV: 11 };

/** Run `deno run -A tasks/<cli>.ts ...args` and collect what it left. */
export async function runCli(
  ws: Workspace,
  cli: string,
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<Ran> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script(cli), ...args],
    env: { ...ws.env, ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const signal = out.signal as Deno.Signal | null;
  return {
    code: signal ? 128 + (SIGNALS[signal] ?? 0) : out.code,
    signal,
    stderr: new TextDecoder().decode(out.stderr),
    stdout: new TextDecoder().decode(out.stdout),
  };
}

/** Run `jobs` with at most `width` at once; results in input order. */
export async function pool<T>(width: number, jobs: (() => Promise<T>)[]): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, jobs.length) }, worker));
  return results;
}

/** Whether `path` exists. */
export function exists(path: string): Promise<boolean> {
  return Deno.stat(path).then(() => true, () => false);
}

/** Names in a folder (empty when it does not exist). */
export async function listDir(path: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(path)) names.push(e.name);
  } catch { /* absent */ }
  return names.sort();
}

/** Copy a folder tree. */
export async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (e.isDirectory) await copyDir(join(from, e.name), join(to, e.name));
    else await Deno.copyFile(join(from, e.name), join(to, e.name));
  }
}

/** Metrics rows of a run folder without the timing fields (which differ run to run). */
export async function metricsRows(dir: string): Promise<Record<string, unknown>[]> {
  const text = await Deno.readTextFile(join(dir, "metrics.jsonl"));
  return text.split("\n").filter(Boolean).map((l) => {
    const { seconds: _s, tokensPerSecond: _t, ...rest } = JSON.parse(l);
    return rest;
  });
}

/** The train flags of a quick run of roberta-tiny + LoRA on the workspace's SST-2 subset. */
export function quickTrain(ws: Workspace, output: string, extra: readonly string[] = []): string[] {
  return [
    "--model",
    ws.roberta,
    "--task",
    "sst2",
    "--data",
    ws.data,
    "--method",
    "lora",
    "--rank",
    "4",
    "--lora-dropout",
    "0.1",
    "--steps",
    "8",
    "--batch-size",
    "4",
    "--max-length",
    "16",
    "--lr",
    "5e-3",
    "--eval-interval",
    "4",
    "--save-interval",
    "2",
    "--log-interval",
    "2",
    "--eval-limit",
    "16",
    "--seed",
    "3",
    "--offline",
    "--output",
    output,
    ...extra,
  ];
}
