/**
 * `deno task train` end to end on tiny models and real SST-2 sentences: a random RoBERTa learns a
 * GLUE subset; a run killed with SIGKILL and resumed ends with the same final loss as an
 * uninterrupted one; divergence stops with a clear error; bad configs name the field.
 */
import { equal, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import { setup, useTestTokenCache } from "../helpers.ts";
import { makeRobertaFixture } from "../fixtures/make_fixtures.ts";
import { parseRunConfig } from "../../tasks/lib/train/config.ts";
import { DivergedError, type Summary, train } from "../../tasks/lib/train/trainer.ts";
import { configFromArgs } from "../../tasks/train.ts";

await setup();

const SST2 = new URL("../../../shared/data/glue/tsv/SST-2/", import.meta.url).pathname;
const present = await Deno.stat(`${SST2}train.tsv`).then(() => true, () => false);
const work = await Deno.makeTempDir({ prefix: "train-test-" });
useTestTokenCache();

/** A GLUE TSV folder whose dev set is the train set: dev accuracy then measures fitting. */
async function sst2Subset(n: number): Promise<string> {
  const lines = (await Deno.readTextFile(`${SST2}train.tsv`)).split("\n");
  const rows = lines.slice(1).filter((l) => l.split("\t")[0].split(" ").length <= 12).slice(0, n);
  const dir = join(work, `sst2-${n}`);
  await Deno.mkdir(join(dir, "SST-2"), { recursive: true });
  const text = [lines[0], ...rows].join("\n") + "\n";
  await Deno.writeTextFile(join(dir, "SST-2", "train.tsv"), text);
  await Deno.writeTextFile(join(dir, "SST-2", "dev.tsv"), text);
  return dir;
}

const model = join(work, "roberta-tiny");
if (present) await makeRobertaFixture(model, { seed: 1, initializerRange: 0.1 });

function baseConfig(data: string, output: string, extra: Record<string, unknown> = {}) {
  return parseRunConfig({
    model,
    task: "sst2",
    data,
    method: "full",
    lr: 2e-3,
    batchSize: 8,
    maxLength: 24,
    warmupRatio: 0,
    weightDecay: 0,
    logInterval: 4,
    output,
    offline: true,
    ...extra,
  });
}

Deno.test({
  name:
    "a small random RoBERTa learns a 32-sentence SST-2 subset (full FT and LoRA); run files are complete",
  ignore: !present,
  fn: async () => {
    const data = await sst2Subset(32);
    const full = await train(baseConfig(data, join(work, "learn-full"), { steps: 60, seed: 3 }), {
      progress: false,
      log: () => {},
    });
    ok(full.final.accuracy >= 0.9, `full FT fits the subset: accuracy ${full.final.accuracy}`);
    const lora = await train(
      baseConfig(data, join(work, "learn-lora"), {
        method: "lora",
        methodOptions: { r: 8, alpha: 16 },
        lr: 1e-2,
        steps: 60,
        seed: 3,
      }),
      { progress: false, log: () => {} },
    );
    ok(lora.final.accuracy >= 0.75, `LoRA fits the subset: accuracy ${lora.final.accuracy}`);
    ok(lora.trainableParams < full.trainableParams / 10);
    const out = join(work, "learn-lora");
    const summary: Summary = JSON.parse(await Deno.readTextFile(join(out, "summary.json")));
    for (
      const key of [
        "final",
        "best",
        "trainableParams",
        "totalParams",
        "memory",
        "tokensPerSecond",
        "wallSeconds",
        "device",
        "versions",
        "seed",
        "finalLoss",
      ]
    ) {
      ok(key in summary, `summary.json has ${key}`);
    }
    ok(
      summary.memory.peak.trainable > 0 && summary.memory.peak.weights > 0 &&
        summary.memory.peak.optimizer > 0,
    );
    // Two f32 moments per trainable value, plus the clipper's [norm, coefficient] pair.
    equal(
      summary.memory.peak.optimizer,
      2 * 4 * summary.trainableParams + 8,
      "AdamW optimizer memory",
    );
    const lines = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n").map((
      l,
    ) => JSON.parse(l));
    equal(lines.filter((l) => "loss" in l).length, 15);
    ok(lines.some((l) => "eval" in l));
    for (
      const f of [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "best/adapter_model.safetensors",
        "checkpoint/state.json",
        "config.json",
      ]
    ) {
      ok(await Deno.stat(join(out, f)).then(() => true, () => false), `${f} exists`);
    }
  },
});

Deno.test({
  name: "fromScratch fine-tunes the architecture from a fresh initialisation, not the checkpoint",
  ignore: !present,
  fn: async () => {
    const data = await sst2Subset(32);
    const run = (fromScratch: boolean) =>
      train(
        baseConfig(data, join(work, `scratch-${fromScratch}`), { steps: 4, seed: 3, fromScratch }),
        { progress: false, log: () => {} },
      );
    const pretrained = await run(false), scratch = await run(true);
    ok(
      !pretrained.newlyInitialized.some((n) => n.includes("attention")),
      "the checkpoint's encoder weights are loaded",
    );
    ok(
      scratch.newlyInitialized.some((n) => n.includes("attention.self.query")),
      `every weight is initialised from scratch: ${scratch.newlyInitialized.slice(0, 3)}`,
    );
    ok(pretrained.finalLoss !== scratch.finalLoss, "different weights, different losses");
  },
});

async function waitFor(
  path: string,
  minStep: number,
  child: Deno.ChildProcess,
  timeoutMs: number,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    try {
      const s = JSON.parse(await Deno.readTextFile(path));
      if (s.step >= minStep) return;
    } catch { /* not written yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill("SIGKILL");
  throw new Error(`no checkpoint at step ≥ ${minStep} within ${timeoutMs} ms`);
}

Deno.test({
  name:
    "kill -9 in the middle of a run, then --resume: the same final loss as an uninterrupted run",
  ignore: !present,
  fn: async () => {
    const data = await sst2Subset(48);
    const args = (out: string) => [
      "run",
      "-A",
      new URL("../../tasks/train.ts", import.meta.url).pathname,
      "--model",
      model,
      "--task",
      "sst2",
      "--data",
      data,
      "--method",
      "lora",
      "--rank",
      "4",
      "--lora-dropout",
      "0.1",
      "--steps",
      "16",
      "--batch-size",
      "8",
      "--max-length",
      "24",
      "--lr",
      "5e-3",
      "--save-interval",
      "2",
      "--log-interval",
      "4",
      "--seed",
      "5",
      "--offline",
      "--output",
      out,
    ];
    const env = { XDG_RUNTIME_DIR: "/tmp", RUC_PEFT_CACHE: join(work, "token-cache") };
    const whole = await new Deno.Command(Deno.execPath(), {
      args: args(join(work, "whole")),
      env,
      stdout: "null",
      stderr: "piped",
    }).output();
    equal(whole.code, 0, new TextDecoder().decode(whole.stderr));
    const killedOut = join(work, "killed");
    const child = new Deno.Command(Deno.execPath(), {
      args: args(killedOut),
      env,
      stdout: "null",
      stderr: "null",
    }).spawn();
    await waitFor(join(killedOut, "checkpoint", "state.json"), 6, child, 240_000);
    child.kill("SIGKILL");
    const status = await child.status;
    equal(status.signal, "SIGKILL");
    ok(
      !(await Deno.stat(join(killedOut, "summary.json")).then(() => true, () => false)),
      "killed before the end",
    );
    const resumed = await new Deno.Command(Deno.execPath(), {
      args: [...args(killedOut), "--resume"],
      env,
      stdout: "null",
      stderr: "piped",
    }).output();
    equal(resumed.code, 0, new TextDecoder().decode(resumed.stderr));
    const a: Summary = JSON.parse(await Deno.readTextFile(join(work, "whole", "summary.json")));
    const b: Summary = JSON.parse(await Deno.readTextFile(join(killedOut, "summary.json")));
    ok(
      b.resumedFrom !== null && b.resumedFrom >= 6 && b.resumedFrom < 16,
      `resumed from ${b.resumedFrom}`,
    );
    equal(b.finalLoss, a.finalLoss, "final loss identical");
    equal(b.final.accuracy, a.final.accuracy);
    const losses = async (dir: string) =>
      (await Deno.readTextFile(join(dir, "metrics.jsonl"))).trim().split("\n").map((l) =>
        JSON.parse(l)
      ).filter((l) => "loss" in l).map((l) => l.loss);
    equal(
      JSON.stringify(await losses(killedOut)),
      JSON.stringify(await losses(join(work, "whole"))),
      "every logged loss identical",
    );
  },
});

Deno.test({
  name: "a diverging run stops with a clear error and keeps the last good checkpoint",
  ignore: !present,
  fn: async () => {
    const data = await sst2Subset(16);
    const out = join(work, "diverge");
    await rejects(
      train(
        baseConfig(data, out, {
          steps: 8,
          lr: 1e30,
          maxGradNorm: null,
          saveInterval: 1,
          logInterval: 1,
        }),
        { progress: false, log: () => {} },
      ),
      (e: unknown) =>
        e instanceof DivergedError &&
        /loss became (NaN|Infinity|-Infinity) by step \d+; stopped\. The last good checkpoint/.test(
          e.message,
        ),
    );
    const state = JSON.parse(await Deno.readTextFile(join(out, "checkpoint", "state.json")));
    ok(Number.isFinite(state.lastLoss) || state.step === 0);
  },
});

Deno.test("run config errors name the field and what was expected", async () => {
  await rejects(
    configFromArgs(["--batch-size", "0"]),
    /--batch-size: expected a positive whole number, got "0"/,
  );
  await rejects(configFromArgs(["--lr", "fast"]), /--lr: expected a positive number, got "fast"/);
  await rejects(
    configFromArgs(["--lr-multipliers", "value"]),
    /--lr-multipliers: expected module=multiplier pairs/,
  );
  await rejects(configFromArgs(["--schedule", "step"]), /field "schedule"/);
  const yaml = join(work, "bad.yaml");
  await Deno.writeTextFile(yaml, "lr: 1e-3\nepoch: 3\n");
  await rejects(
    configFromArgs(["--config", yaml]),
    new RegExp(`${yaml}: unknown key "epoch"; did you mean "epochs"\\?`),
  );
  const good = await configFromArgs([
    "--task",
    "rte",
    "--lr-multipliers",
    "value=4",
    "--rank",
    "16",
    "--targets",
    "query,key,value",
  ]);
  equal(good.config.task, "rte");
  equal(good.config.lrMultipliers.value, 4);
  equal(good.config.methodOptions.r, 16);
  equal(good.config.targets!.join(), "query,key,value");
});

Deno.test({
  name: "cleanup of the temporary work folder",
  fn: async () => {
    await Deno.remove(work, { recursive: true });
  },
  sanitizeResources: false,
});
