/**
 * The bad-input catalogue: every entry point run as a subprocess with something wrong in its
 * flags, files or environment. Each case asserts the exit code (2 bad usage, 1 user error), that
 * stderr has exactly one `error:` line, that the line names the flag, field or file (and what
 * was expected), that no stack trace is printed, and that no partial file is left where a final
 * one belongs.
 *
 * Tiny models from tests/fixtures, real SST-2 sentences and GLUE parquet from ../shared/data.
 */
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import {
  copyDir,
  exists,
  GLUE_PARQUET,
  listDir,
  pool,
  present,
  runCli,
  type Workspace,
  workspace,
} from "./support.ts";
import { openSafetensors, writeSafetensors } from "../../models/safetensors.ts";

/** One bad input. */
interface Case {
  /** What is wrong. */
  name: string;
  /** The entry point (tasks/<cli>.ts). */
  cli: string;
  /** Its arguments; `dir` is this case's own folder. */
  args: (dir: string) => string[];
  /** Extra environment. */
  env?: Record<string, string>;
  /** Prepare files in `dir` first. */
  setup?: (dir: string) => Promise<void>;
  /** Expected exit code. */
  code: 1 | 2;
  /** The one error line must match this (it names the flag/field/file). */
  message: RegExp;
  /** Paths (relative to `dir`) that must not exist afterwards. */
  absent?: string[];
  /** Further checks of `dir` afterwards; returns a problem or null. */
  after?: (dir: string) => Promise<string | null>;
}

const ws: Workspace = await workspace("reliability-bad-");

/** Train flags as a map, so a case can replace or drop one (a flag given twice is an error). */
function trainArgs(out: string, change: Record<string, string | null> = {}): string[] {
  const base: Record<string, string | null> = {
    model: ws.roberta,
    task: "sst2",
    data: ws.data,
    method: "lora",
    rank: "4",
    steps: "8",
    "batch-size": "4",
    "max-length": "16",
    "eval-limit": "8",
    "eval-interval": "4",
    "save-interval": "2",
    "log-interval": "2",
    output: out,
    ...change,
  };
  const args = ["--offline"];
  for (const [k, v] of Object.entries(base)) if (v !== null) args.push(`--${k}`, v);
  return args;
}

const evalArgs = (change: Record<string, string | null> = {}) => {
  const base: Record<string, string | null> = {
    model: ws.roberta,
    task: "sst2",
    data: ws.data,
    limit: "8",
    ...change,
  };
  const args = ["--offline"];
  for (const [k, v] of Object.entries(base)) if (v !== null) args.push(`--${k}`, v);
  return args;
};

// A run killed after its checkpoint at step 6, and an adapter; copied by the cases that use them.
const prepared = join(ws.dir, "prepared");
const adapterDir = join(ws.dir, "adapter");
if (present) {
  const r = await runCli(ws, "train", trainArgs(prepared), { RUC_PEFT_FAULT: "kill@step:6" });
  equal(r.signal, "SIGKILL", r.stderr);
  await copyDir(join(prepared, "best"), adapterDir);
}

/** Copy the prepared run into `dir/out`. */
const withRun = (dir: string) => copyDir(prepared, join(dir, "out"));

/** A copy of safetensors `from` without the first tensor whose name matches `drop`. */
async function dropTensor(from: string, to: string, drop = /./): Promise<void> {
  const r = await openSafetensors(from);
  const entries = [];
  const gone = r.names.find((n) => drop.test(n));
  for (const n of r.names.filter((n) => n !== gone)) {
    entries.push({
      name: n,
      dtype: "F32" as const,
      shape: [...r.info(n).shape],
      data: await r.readF32(n),
    });
  }
  r.close();
  await writeSafetensors(to, entries);
}

const noTmp = async (dir: string) => {
  const left = (await listDir(join(dir, "out"))).filter((n) => /\.tmp-/.test(n));
  return left.length ? `leftover ${left.join(", ")}` : null;
};

const CASES: Case[] = [
  // ---- train: flags (exit 2) --------------------------------------------------------------
  {
    name: "unknown flag, close to a real one",
    cli: "train",
    args: (d) => [...trainArgs(join(d, "out")), "--rnak", "4"],
    code: 2,
    message: /unknown flag --rnak; did you mean --rank\?/,
    absent: ["out"],
  },
  {
    name: "unknown flag, nothing close",
    cli: "train",
    args: () => ["--frobnicate"],
    code: 2,
    message: /unknown flag --frobnicate \(see deno task train --help\)$/,
  },
  {
    name: "negative rank",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { rank: "-3" }),
    code: 2,
    message: /--rank: expected a positive whole number, got "-3"/,
    absent: ["out"],
  },
  {
    name: "hex learning rate",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { lr: "0x10" }),
    code: 2,
    message: /--lr: expected a positive number, got "0x10"/,
  },
  {
    name: "learning rate that is not a number",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { lr: "fast" }),
    code: 2,
    message: /--lr: expected a positive number, got "fast"/,
  },
  {
    name: "learning rate Infinity",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { lr: "Infinity" }),
    code: 2,
    message: /--lr: expected a positive number, got "Infinity"/,
  },
  {
    name: "flag without its value at the end",
    cli: "train",
    args: (d) => [...trainArgs(join(d, "out")), "--lr"],
    code: 2,
    message: /--lr: expected a value/,
  },
  {
    name: "flag followed by another flag instead of a value",
    cli: "train",
    args: (d) => ["--seed", "--offline", ...trainArgs(join(d, "out"))],
    code: 2,
    message: /--seed: expected a value/,
  },
  {
    name: "--max-length 1",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { "max-length": "1" }),
    code: 2,
    message: /--max-length: expected a whole number ≥ 8, got "1"/,
  },
  {
    name: "fractional step count",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { steps: "2.5" }),
    code: 2,
    message: /--steps: expected a positive whole number, got "2.5"/,
  },
  {
    name: "batch size 0",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { "batch-size": "0" }),
    code: 2,
    message: /--batch-size: expected a positive whole number, got "0"/,
  },
  {
    name: "warm-up ratio above 1",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { "warmup-ratio": "1.5" }),
    code: 2,
    message: /--warmup-ratio: expected a number in \[0, 1\], got "1.5"/,
  },
  {
    name: "dropout 1",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { "lora-dropout": "1" }),
    code: 2,
    message: /--lora-dropout: expected a number in \[0, 0.99\], got "1"/,
  },
  {
    name: "a value on a switch",
    cli: "train",
    args: (d) => [...trainArgs(join(d, "out")), "--resume=yes"],
    code: 2,
    message: /--resume is a switch and takes no value \(got "yes"\)/,
  },
  {
    name: "a stray positional argument",
    cli: "train",
    args: (d) => [...trainArgs(join(d, "out")), "sst2"],
    code: 2,
    message: /unexpected argument "sst2"; every option is a --flag/,
  },
  {
    name: "--method-options that is not JSON",
    cli: "train",
    args: (d) => [...trainArgs(join(d, "out")), "--method-options", "{r: 8"],
    code: 2,
    message: /--method-options: expected a JSON object/,
  },
  {
    name: "--method-options that is a JSON array",
    cli: "train",
    args: (d) => [...trainArgs(join(d, "out")), "--method-options", "[8]"],
    code: 2,
    message: /--method-options: expected a JSON object/,
  },
  {
    name: "--lr-multipliers without a value",
    cli: "train",
    args: (d) => [...trainArgs(join(d, "out")), "--lr-multipliers", "value"],
    code: 2,
    message: /--lr-multipliers: expected module=multiplier pairs like "value=4", got "value"/,
  },
  {
    name: "a flag given twice",
    cli: "train",
    args: (d) => [...trainArgs(join(d, "out")), "--steps", "4"],
    code: 2,
    message: /--steps given twice/,
  },
  {
    name: "unknown schedule",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { schedule: "step" }),
    code: 2,
    message: /field "schedule": Invalid option/,
  },
  {
    name: "empty --targets",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { targets: "," }),
    code: 2,
    message: /--targets: expected module names/,
  },
  // ---- train: files and settings (exit 1) ---------------------------------------------------
  {
    name: "--config file that does not exist",
    cli: "train",
    args: (d) => ["--config", join(d, "run.yaml")],
    code: 1,
    message: /run\.yaml: cannot read/,
  },
  {
    name: "--config file with invalid YAML",
    cli: "train",
    setup: (d) => Deno.writeTextFile(join(d, "run.yaml"), "lr: [1e-3\n"),
    args: (d) => ["--config", join(d, "run.yaml")],
    code: 1,
    message: /run\.yaml: invalid YAML/,
  },
  {
    name: "--config file with an unknown key",
    cli: "train",
    setup: (d) => Deno.writeTextFile(join(d, "run.yaml"), "lr: 1e-3\nepoch: 3\n"),
    args: (d) => ["--config", join(d, "run.yaml")],
    code: 1,
    message: /run\.yaml: unknown key "epoch"; did you mean "epochs"\?/,
  },
  {
    name: "--config file with a negative batch size",
    cli: "train",
    setup: (d) => Deno.writeTextFile(join(d, "run.yaml"), "batchSize: -1\n"),
    args: (d) => ["--config", join(d, "run.yaml")],
    code: 1,
    message: /run\.yaml \+ flags: field "batchSize"/,
  },
  {
    name: "unknown method",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { method: "nosuch" }),
    code: 1,
    message: /unknown method "nosuch"; available: /,
    absent: ["out"],
  },
  {
    name: "model folder that does not exist",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { model: join(d, "no-model") }),
    code: 1,
    message: /no-model/,
    absent: ["out"],
  },
  {
    name: "rank larger than the layer",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { rank: "100" }),
    code: 1,
    message:
      /--rank \(methodOptions\.r\) is 100, larger than layer .*\[32, 32\] allows \(at most 32\)/,
    absent: ["out"],
  },
  {
    name: "warm-up longer than the run",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { "warmup-steps": "100" }),
    code: 1,
    message: /warmupSteps \(--warmup-steps\) is 100, longer than the run's 8 steps/,
    absent: ["out"],
  },
  {
    name: "--max-length beyond the encoder's position table",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { "max-length": "600" }),
    code: 1,
    message:
      /maxLength \(--max-length\) is 600, more than .*roberta-tiny can hold: 512 positions \(max_position_embeddings 514/,
    absent: ["out"],
  },
  {
    name: "--resume of a folder that does not exist",
    cli: "train",
    args: (d) => [...trainArgs(join(d, "out")), "--resume"],
    code: 1,
    message: /--resume: .*out does not exist; drop --resume/,
    absent: ["out"],
  },
  {
    name: "data folder that does not exist",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { data: join(d, "no-data") }),
    code: 1,
    message: /no-data/,
    absent: ["out"],
  },
  {
    name: "unknown task",
    cli: "train",
    args: (d) => trainArgs(join(d, "out"), { task: "nosuchtask" }),
    code: 1,
    message: /nosuchtask/,
    absent: ["out"],
  },
  {
    name: "--output is a file",
    cli: "train",
    setup: (d) => Deno.writeTextFile(join(d, "out"), "x"),
    args: (d) => trainArgs(join(d, "out")),
    code: 1,
    message: /--output: .*out is a file; expected a folder/,
  },
  {
    name: "--resume with another method: compared before loading",
    cli: "train",
    setup: withRun,
    args: (d) => [...trainArgs(join(d, "out"), { method: "dora" }), "--resume"],
    code: 1,
    message: /--resume: .* was started with other settings \(method was "lora", now "dora"/,
  },
  {
    name: "--resume with another rank: names the setting",
    cli: "train",
    setup: withRun,
    args: (d) => [...trainArgs(join(d, "out"), { rank: "2" }), "--resume"],
    code: 1,
    message: /other settings \(methodOptions\.r was 4, now 2\)/,
  },
  {
    name: "a new run into a folder with a checkpoint",
    cli: "train",
    setup: withRun,
    args: (d) => trainArgs(join(d, "out")),
    code: 1,
    message: /already holds a checkpoint: pass --resume/,
    absent: ["out/summary.json"],
  },
  {
    name: "a new run into a finished run's folder whose checkpoint was deleted",
    cli: "train",
    setup: async (d) => {
      await withRun(d);
      await Deno.remove(join(d, "out", "checkpoint"), { recursive: true });
      await Deno.writeTextFile(join(d, "out", "summary.json"), "{}\n");
    },
    args: (d) => trainArgs(join(d, "out")),
    code: 1,
    message: /out holds a finished run \(summary\.json\): choose another --output/,
    after: async (d) =>
      (await Deno.readTextFile(join(d, "out", "summary.json"))) === "{}\n"
        ? null
        : "summary.json was replaced",
  },
  {
    name: "corrupt state.json",
    cli: "train",
    setup: async (d) => {
      await withRun(d);
      await Deno.writeTextFile(join(d, "out", "checkpoint", "state.json"), '{"step": 6,');
    },
    args: (d) => [...trainArgs(join(d, "out")), "--resume"],
    code: 1,
    message: /checkpoint\/state\.json is not valid JSON/,
    absent: ["out/summary.json"],
  },
  {
    name: "checkpoint without its optimizer file",
    cli: "train",
    setup: async (d) => {
      await withRun(d);
      await Deno.remove(join(d, "out", "checkpoint", "optimizer.safetensors"));
    },
    args: (d) => [...trainArgs(join(d, "out")), "--resume"],
    code: 1,
    message: /checkpoint\/optimizer\.safetensors: missing \(incomplete checkpoint\)/,
    absent: ["out/summary.json"],
  },
  {
    name: "checkpoint with a truncated tensor file",
    cli: "train",
    setup: async (d) => {
      await withRun(d);
      const f = join(d, "out", "checkpoint", "trainable.safetensors");
      await Deno.truncate(f, 40);
    },
    args: (d) => [...trainArgs(join(d, "out")), "--resume"],
    code: 1,
    message: /checkpoint\/trainable\.safetensors: 40 bytes, state\.json recorded \d+/,
  },
  {
    name: "a diverging run (loss explodes): not exit 0, names a checkpoint that exists",
    cli: "train",
    args: (d) =>
      trainArgs(join(d, "out"), { lr: "1e6", "save-interval": "2", "log-interval": "2" }),
    code: 1,
    message:
      /loss became .* by step \d+; stopped\. (The last good checkpoint is .*checkpoint \(step \d+\)|No checkpoint was written before it)/,
    absent: ["out/summary.json"],
    after: async (d) => {
      const line = await Deno.readTextFile(join(d, "stderr.txt"));
      const m = /The last good checkpoint is (\S+) \(step/.exec(line);
      return m && !(await exists(join(m[1], "state.json"))) ? `${m[1]} does not exist` : null;
    },
  },
  {
    name: "disk full while writing the first checkpoint's optimizer file",
    cli: "train",
    env: { RUC_PEFT_FAULT: "enospc@checkpoint:optimizer.safetensors" },
    args: (d) => trainArgs(join(d, "out")),
    code: 1,
    message:
      /checkpoint\.tmp-[0-9a-f]{8}\/optimizer\.safetensors: cannot write \(No space left on device.*no checkpoint kept\. Free space, then continue with --resume/,
    absent: ["out/summary.json", "out/checkpoint"],
    after: noTmp,
  },
  {
    name: "disk full while writing the second checkpoint's state.json: the first stays",
    cli: "train",
    env: { RUC_PEFT_FAULT: "enospc@checkpoint:state.json#2" },
    args: (d) => trainArgs(join(d, "out")),
    code: 1,
    message:
      /state\.json: cannot write \(No space left on device.*the previous checkpoint .*checkpoint \(step 2\) is intact/,
    absent: ["out/summary.json"],
    after: noTmp,
  },
  {
    name: "corrupt parquet page",
    cli: "train",
    setup: async (d) => {
      const bytes = await Deno.readFile(join(GLUE_PARQUET, "rte", "validation", "0000.parquet"));
      for (let i = 0; i < 64; i++) bytes[Math.floor(bytes.length / 3) + i] ^= 0xff;
      await Deno.mkdir(join(d, "glue", "rte", "validation"), { recursive: true });
      await Deno.mkdir(join(d, "glue", "rte", "train"), { recursive: true });
      await Deno.writeFile(join(d, "glue", "rte", "validation", "0000.parquet"), bytes);
      await Deno.copyFile(
        join(GLUE_PARQUET, "rte", "train", "0000.parquet"),
        join(d, "glue", "rte", "train", "0000.parquet"),
      );
    },
    args: (d) => trainArgs(join(d, "out"), { task: "rte", data: join(d, "glue") }),
    code: 1,
    message:
      /rte\/validation\/0000\.parquet: corrupt parquet data \(.*\); download the split again/,
    absent: ["out"],
  },
  // ---- evaluate ------------------------------------------------------------------------------
  {
    name: "evaluate: unknown flag",
    cli: "evaluate",
    args: () => [...evalArgs(), "--adaptor", "x"],
    code: 2,
    message: /unknown flag --adaptor; did you mean --adapter\?/,
  },
  {
    name: "evaluate: missing --task",
    cli: "evaluate",
    args: () => evalArgs({ task: null }),
    code: 2,
    message: /missing --task/,
  },
  {
    name: "evaluate: --limit 0",
    cli: "evaluate",
    args: () => evalArgs({ limit: "0" }),
    code: 2,
    message: /--limit: expected a positive whole number, got "0"/,
  },
  {
    name: "evaluate: --max-length 1",
    cli: "evaluate",
    args: () => [...evalArgs(), "--max-length", "1"],
    code: 2,
    message: /--max-length: expected a whole number ≥ 8, got "1"/,
  },
  {
    name: "evaluate: unknown --eval-mode",
    cli: "evaluate",
    args: () => [...evalArgs(), "--eval-mode", "fast"],
    code: 2,
    message: /--eval-mode: expected one of generate, loglik, got "fast"/,
  },
  {
    name: "evaluate: unknown --frozen-dtype",
    cli: "evaluate",
    args: () => [...evalArgs(), "--frozen-dtype", "f8"],
    code: 2,
    message: /--frozen-dtype: expected one of f32, f16, got "f8"/,
  },
  {
    name: "evaluate: adapter folder that does not exist",
    cli: "evaluate",
    args: (d) => [...evalArgs(), "--adapter", join(d, "none")],
    code: 1,
    message: /none: no adapter config found/,
  },
  {
    name: "evaluate: adapter folder without its weights file",
    cli: "evaluate",
    setup: async (d) => {
      await Deno.mkdir(join(d, "ad"));
      await Deno.copyFile(
        join(adapterDir, "adapter_config.json"),
        join(d, "ad", "adapter_config.json"),
      );
    },
    args: (d) => [...evalArgs(), "--adapter", join(d, "ad")],
    code: 1,
    message: /ad\/adapter_model\.safetensors: missing; an adapter folder holds/,
  },
  {
    name: "evaluate: adapter missing a tensor",
    cli: "evaluate",
    setup: async (d) => {
      await Deno.mkdir(join(d, "ad"));
      await Deno.copyFile(
        join(adapterDir, "adapter_config.json"),
        join(d, "ad", "adapter_config.json"),
      );
      await dropTensor(
        join(adapterDir, "adapter_model.safetensors"),
        join(d, "ad", "adapter_model.safetensors"),
      );
    },
    args: (d) => [...evalArgs(), "--adapter", join(d, "ad")],
    code: 1,
    message:
      /ad\/adapter_model\.safetensors: (adapter has )?no tensor base_model\.model\.\S+ \(shape \[\d+(, \d+)*\]\)/,
  },
  {
    name: "evaluate: model file without a tensor the config needs",
    cli: "evaluate",
    setup: async (d) => {
      await copyDir(ws.roberta, join(d, "model"));
      await dropTensor(
        join(ws.roberta, "model.safetensors"),
        join(d, "model", "model.safetensors"),
        /encoder\.layer\.1\.attention\.self\.query\.weight/,
      );
    },
    args: (d) => evalArgs({ model: join(d, "model") }),
    code: 1,
    message:
      /model\.safetensors: checkpoint has no tensor \S+ \(expected shape \[\d+(, \d+)*\]\), which the model's config\.json implies/,
  },
  {
    name: "evaluate: model folder without config.json",
    cli: "evaluate",
    setup: (d) => Deno.mkdir(join(d, "model")),
    args: (d) => evalArgs({ model: join(d, "model") }),
    code: 1,
    message: /model/,
  },
  {
    name: "evaluate: --output into a folder that does not exist",
    cli: "evaluate",
    args: (d) => [...evalArgs(), "--output", join(d, "no", "report.json")],
    code: 1,
    message: /no\/report\.json: cannot write/,
    absent: ["no"],
  },
  // ---- generate ------------------------------------------------------------------------------
  {
    name: "generate: --top-p 5",
    cli: "generate",
    args: () => ["--model", ws.llama, "--top-p", "5"],
    code: 2,
    message: /--top-p: expected a number in \(0, 1\], got "5"/,
  },
  {
    name: "generate: --top-p 0",
    cli: "generate",
    args: () => ["--model", ws.llama, "--top-p", "0"],
    code: 2,
    message: /--top-p: expected a number in \(0, 1\], got "0"/,
  },
  {
    name: "generate: negative temperature",
    cli: "generate",
    args: () => ["--model", ws.llama, "--temperature", "-1"],
    code: 2,
    message: /--temperature: expected a non-negative number, got "-1"/,
  },
  {
    name: "generate: --max-new-tokens 0",
    cli: "generate",
    args: () => ["--model", ws.llama, "--max-new-tokens", "0"],
    code: 2,
    message: /--max-new-tokens: expected a positive whole number, got "0"/,
  },
  {
    name: "generate: fractional seed",
    cli: "generate",
    args: () => ["--model", ws.llama, "--seed", "1.5"],
    code: 2,
    message: /--seed: expected a non-negative whole number, got "1.5"/,
  },
  {
    name: "generate: misspelt --model",
    cli: "generate",
    args: () => ["--modle", ws.llama],
    code: 2,
    message: /unknown flag --modle; did you mean --model\?/,
  },
  {
    name: "generate: missing --model",
    cli: "generate",
    args: () => ["--prompt", "Once"],
    code: 2,
    message: /missing --model/,
  },
  {
    name: "generate: an encoder model",
    cli: "generate",
    args: () => ["--model", ws.roberta, "--max-new-tokens", "2"],
    code: 1,
    message: /roberta-tiny: generation needs a decoder/,
  },
  // ---- merge ---------------------------------------------------------------------------------
  {
    name: "merge: missing --output",
    cli: "merge",
    args: () => ["--model", ws.roberta, "--adapter", adapterDir],
    code: 2,
    message: /missing --output/,
  },
  {
    name: "merge: unknown flag",
    cli: "merge",
    args: (d) => ["--model", ws.roberta, "--adapter", adapterDir, "--out", join(d, "m")],
    code: 2,
    message: /unknown flag --out; did you mean --output\?/,
    absent: ["m"],
  },
  {
    name: "merge: adapter folder that does not exist",
    cli: "merge",
    args: (d) => ["--model", ws.roberta, "--adapter", join(d, "none"), "--output", join(d, "m")],
    code: 1,
    message: /none\/adapter_config\.json: cannot read the adapter config/,
    absent: ["m"],
  },
  {
    name: "merge: model folder that does not exist",
    cli: "merge",
    args: (d) => ["--model", join(d, "nomodel"), "--adapter", adapterDir, "--output", join(d, "m")],
    code: 1,
    message: /nomodel/,
    absent: ["m"],
  },
  {
    name: "merge: disk full while writing the merged model leaves no partial folder",
    cli: "merge",
    env: { RUC_PEFT_FAULT: "enospc@merge:written" },
    args: (d) => ["--model", ws.roberta, "--adapter", adapterDir, "--output", join(d, "m")],
    code: 1,
    message: /m\.tmp-[0-9a-f]{8}: cannot write|No space left on device .*m\.tmp-/,
    absent: ["m"],
    after: async (d) => {
      const left = (await listDir(d)).filter((n) => n.startsWith("m."));
      return left.length ? `leftover ${left.join(", ")}` : null;
    },
  },
  // ---- convert -------------------------------------------------------------------------------
  {
    name: "convert: missing --tokenizer",
    cli: "convert",
    args: (d) => ["--checkpoint", join(d, "x.bin"), "--output", join(d, "o")],
    code: 2,
    message: /missing --tokenizer/,
  },
  {
    name: "convert: checkpoint that does not exist",
    cli: "convert",
    args: (d) => [
      "--checkpoint",
      join(d, "x.bin"),
      "--tokenizer",
      join(d, "t.bin"),
      "--output",
      join(d, "o"),
    ],
    code: 1,
    message: /x\.bin/,
    absent: ["o"],
  },
  {
    name: "convert: truncated checkpoint",
    cli: "convert",
    setup: (d) => Deno.writeFile(join(d, "x.bin"), new Uint8Array(12)),
    args: (d) => [
      "--checkpoint",
      join(d, "x.bin"),
      "--tokenizer",
      join(d, "x.bin"),
      "--output",
      join(d, "o"),
    ],
    code: 1,
    message: /x\.bin/,
    absent: ["o"],
  },
  // ---- download ------------------------------------------------------------------------------
  {
    name: "download: unknown flag",
    cli: "download",
    args: () => ["--modle", "org/name"],
    code: 2,
    message: /unknown flag --modle; did you mean --model\?/,
  },
  {
    name: "download: glue without --config",
    cli: "download",
    args: () => ["--dataset", "glue"],
    code: 2,
    message: /--dataset glue: missing --config TASK/,
  },
  {
    name: "download: nothing to download",
    cli: "download",
    args: () => [],
    code: 2,
    message: /nothing to download: give --model and\/or --dataset/,
  },
  {
    name: "download: a repo id that is not org/name",
    cli: "download",
    args: (d) => ["--model", "not a repo", "--cache-dir", join(d, "cache")],
    code: 1,
    message: /repo id: expected "org\/name"/,
  },
  {
    name: "download without network: names the repo and URL, fails at once",
    cli: "download",
    env: { HF_ENDPOINT: "http://127.0.0.1:1" },
    args: (d) => ["--model", "org/some-model", "--cache-dir", join(d, "cache"), "--quiet"],
    code: 1,
    message:
      /org\/some-model@main: .*cannot connect to http:\/\/127\.0\.0\.1:1\/api\/models\/org\/some-model/,
  },
  // ---- sweep ---------------------------------------------------------------------------------
  {
    name: "sweep: no sweep file",
    cli: "sweep",
    args: () => [],
    code: 2,
    message: /expected one sweep file, got none/,
  },
  {
    name: "sweep: --parallel 0",
    cli: "sweep",
    args: () => ["a.yaml", "--parallel", "0"],
    code: 2,
    message: /--parallel: expected a positive whole number, got "0"/,
  },
  {
    name: "sweep: two sweep files",
    cli: "sweep",
    args: () => ["a.yaml", "b.yaml"],
    code: 2,
    message: /unexpected argument "b\.yaml"/,
  },
  {
    name: "sweep: a file that does not exist",
    cli: "sweep",
    args: (d) => [join(d, "none.yaml"), "--dry-run"],
    code: 1,
    message: /none\.yaml/,
  },
  {
    name: "sweep: invalid YAML names the line",
    cli: "sweep",
    setup: (d) => Deno.writeTextFile(join(d, "s.yaml"), "name: x\ngrid:\n  lr: [1e-3\n"),
    args: (d) => [join(d, "s.yaml"), "--dry-run"],
    code: 1,
    message: /s\.yaml:\d+: invalid YAML/,
  },
  // ---- report --------------------------------------------------------------------------------
  {
    name: "report: no RUNS_DIR",
    cli: "report",
    args: () => [],
    code: 2,
    message: /expected one RUNS_DIR, got 0/,
  },
  {
    name: "report: --digits two",
    cli: "report",
    args: (d) => [d, "--digits", "two"],
    code: 2,
    message: /--digits: expected a whole number in \[0, 4\], got "two"/,
  },
  {
    name: "report: --score median",
    cli: "report",
    args: (d) => [d, "--score", "median"],
    code: 2,
    message: /field "score"/,
  },
  {
    name: "report: RUNS_DIR that does not exist",
    cli: "report",
    args: (d) => [join(d, "no-runs")],
    code: 1,
    message: /no-runs/,
  },
];

Deno.test({
  name:
    `bad-input catalogue: ${CASES.length} cases across the CLIs, each exit code + one line naming the culprit`,
  ignore: !present,
  fn: async () => {
    ok(CASES.length >= 60, `${CASES.length} cases`);
    const problems: string[] = [];
    await pool(
      3,
      CASES.map((c, i) => async () => {
        const dir = join(ws.dir, `case-${i}`);
        await Deno.mkdir(dir);
        await c.setup?.(dir);
        const r = await runCli(ws, c.cli, c.args(dir), c.env);
        await Deno.writeTextFile(join(dir, "stderr.txt"), r.stderr);
        const tag = `[${c.cli}] ${c.name}`;
        const errors = r.stderr.split("\n").filter((l) => l.startsWith("error: "));
        if (r.code !== c.code) problems.push(`${tag}: exit ${r.code}, expected ${c.code}`);
        if (errors.length !== 1) {
          problems.push(`${tag}: ${errors.length} error lines in: ${r.stderr.slice(-500)}`);
        } else if (!c.message.test(errors[0])) {
          problems.push(`${tag}: "${errors[0]}" does not match ${c.message}`);
        }
        if (/^\s+at .*:\d+:\d+\)?$/m.test(r.stderr)) problems.push(`${tag}: printed a stack trace`);
        for (const p of c.absent ?? []) {
          if (await exists(join(dir, p))) problems.push(`${tag}: ${p} exists`);
        }
        const extra = await c.after?.(dir);
        if (extra) problems.push(`${tag}: ${extra}`);
      }),
    );
    equal(problems.length, 0, problems.join("\n"));
  },
});

Deno.test({
  name: "with RUC_PEFT_DEBUG=1 a user error also prints its stack",
  fn: async () => {
    const r = await runCli(ws, "train", ["--config", join(ws.dir, "missing.yaml")], {
      RUC_PEFT_DEBUG: "1",
    });
    equal(r.code, 1);
    ok(/^error: .*missing\.yaml: cannot read/m.test(r.stderr), r.stderr);
    ok(/^\s+at /m.test(r.stderr), "stack printed");
  },
});

Deno.test({
  name: "cleanup of the bad-input workspace",
  fn: async () => {
    await Deno.remove(ws.dir, { recursive: true });
  },
});
