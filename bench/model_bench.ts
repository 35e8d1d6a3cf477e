/**
 * Whole-model throughput in tokens/s: forward, and forward + backward, for three real-layout
 * models loaded through loadModel:
 * - stories260K, the real pretrained llama2.c checkpoint (../shared/data/models/stories260K),
 *   converted to a Hugging Face folder in a temporary directory at setup;
 * - roberta-tiny and llama-tiny from tests/fixtures/make_fixtures.ts (random weights, real
 *   tokenizers), also written to the temporary directory.
 *
 * Each step is one batch of 8 × 64 tokens (random ids from a seeded host RNG). "forward" computes
 * the outputs without a tape (classification logits; LM logits for every position).
 * "forward+backward" is full fine-tuning: every parameter requires grad, the loss is
 * cross-entropy (sequence labels; next-token for the decoders) and backward fills every weight
 * gradient, which is dropped after the step. Times are host wall clock around the recorded step
 * and `rt().sync()`, so submission and pipeline overheads count, as in a training loop.
 *
 * `deno bench` reports time per step (tokens/s = 512 / step time); `deno run -A
 * bench/model_bench.ts` prints a Markdown table of tokens/s with GPU time (timestamp queries)
 * next to the wall time.
 */
import { join } from "node:path";
import {
  backward,
  crossEntropy,
  init,
  noGrad,
  rt,
  scope,
  type Tensor,
  tensor,
} from "../ops/mod.ts";
import { convertLlama2c } from "../models/llama2c.ts";
import { type LoadedModel, loadModel } from "../models/load.ts";
import {
  makeLlamaFixture,
  makeRobertaFixture,
  SHARED_DATA_DIR,
} from "../tests/fixtures/make_fixtures.ts";
import { rng } from "../tests/helpers.ts";

await init();

const BATCH = 8, SEQ = 64;
type Mode = "forward" | "forward+backward";
const MODES: Mode[] = ["forward", "forward+backward"];

/** One benchmarked model with its inputs for one batch. */
interface Case {
  name: string;
  loaded: LoadedModel;
  ids: Tensor;
  /** Encoder: one class per row [B]; decoder: the ids themselves (next-token targets). */
  labels: Tensor;
  attentionMask: Tensor;
}

const tmp = await Deno.makeTempDir({ prefix: "peft-model-bench-" });
globalThis.addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));

async function prepare(): Promise<Case[]> {
  const stories = join(SHARED_DATA_DIR, "models/stories260K");
  const dirs: [string, string][] = [];
  if (await Deno.stat(join(stories, "stories260K.bin")).then(() => true, () => false)) {
    const output = join(tmp, "stories260K");
    await convertLlama2c({
      checkpoint: join(stories, "stories260K.bin"),
      tokenizer: join(stories, "tok512.bin"),
      output,
    });
    dirs.push(["stories260K", output]);
  } else {
    console.warn(`model_bench: ${stories} is absent; stories260K is not benchmarked`);
  }
  await makeRobertaFixture(join(tmp, "roberta-tiny"));
  await makeLlamaFixture(join(tmp, "llama-tiny"));
  dirs.push(["roberta-tiny", join(tmp, "roberta-tiny")], ["llama-tiny", join(tmp, "llama-tiny")]);

  const cases: Case[] = [];
  for (const [name, dir] of dirs) {
    const loaded = await loadModel(dir);
    loaded.model.setRequiresGrad(false);
    const random = rng(17);
    const vocab = loaded.config.vocab_size;
    const ids = new Int32Array(BATCH * SEQ);
    let labels: Int32Array;
    if (loaded.kind === "encoder") {
      // <s> … </s> around ids that avoid the specials, so no position counts as padding.
      for (let i = 0; i < ids.length; i++) ids[i] = 3 + Math.floor(random() * (vocab - 3));
      for (let b = 0; b < BATCH; b++) {
        ids[b * SEQ] = 0;
        ids[b * SEQ + SEQ - 1] = 2;
      }
      const numLabels = loaded.model.dims.numLabels;
      labels = Int32Array.from({ length: BATCH }, () => Math.floor(random() * numLabels));
    } else {
      for (let i = 0; i < ids.length; i++) ids[i] = 3 + Math.floor(random() * (vocab - 3));
      labels = ids;
    }
    cases.push({
      name,
      loaded,
      ids: tensor(ids, [BATCH, SEQ]).keep(),
      labels: tensor(labels, loaded.kind === "encoder" ? [BATCH] : [BATCH, SEQ]).keep(),
      attentionMask: tensor(new Float32Array(BATCH * SEQ).fill(1), [BATCH, SEQ]).keep(),
    });
  }
  return cases;
}

/** Record one step; gradients are dropped afterwards so every step starts alike. */
function step(c: Case, mode: Mode): void {
  const { loaded } = c;
  scope(() => {
    if (mode === "forward") {
      noGrad(() => {
        if (loaded.kind === "encoder") {
          loaded.model.forward({ ids: c.ids, attentionMask: c.attentionMask });
        } else {
          loaded.model.logits(loaded.model.hidden({ ids: c.ids, keyMask: c.attentionMask }));
        }
      });
      return;
    }
    const loss = loaded.kind === "encoder"
      ? crossEntropy(
        loaded.model.forward({ ids: c.ids, attentionMask: c.attentionMask }),
        c.labels,
      )
      : loaded.model.causalLmLoss({ ids: c.ids, keyMask: c.attentionMask }, c.labels);
    backward(loss);
  });
  if (mode === "forward+backward") {
    for (const [, p] of loaded.model.namedParameters()) {
      p.grad?.dispose();
      p.grad = null;
    }
  }
}

function setMode(c: Case, mode: Mode): void {
  c.loaded.model.setRequiresGrad(mode === "forward+backward");
}

const cases = await prepare();

for (const c of cases) {
  for (const mode of MODES) {
    Deno.bench({
      name: `${c.name} ${mode} B${BATCH}×T${SEQ}`,
      group: c.name,
      n: 5,
      warmup: 2,
      async fn(b) {
        setMode(c, mode);
        await rt().sync();
        b.start();
        step(c, mode);
        await rt().sync();
        b.end();
      },
    });
  }
}

if (import.meta.main) {
  const reps = 5;
  console.log(`adapter: ${rt().gpu.adapter.name}; batch ${BATCH} × seq ${SEQ}; median of ${reps}`);
  console.log("| model | params | mode | wall ms | tokens/s | GPU ms |");
  console.log("| --- | ---: | --- | ---: | ---: | ---: |");
  for (const c of cases) {
    const params = c.loaded.model.namedParameters().reduce((s, [, t]) => s + t.size, 0);
    for (const mode of MODES) {
      setMode(c, mode);
      step(c, mode); // compiles the pipelines, fills the pools
      await rt().sync();
      const wall: number[] = [], gpuMs: number[] = [];
      for (let r = 0; r < reps; r++) {
        await rt().sync();
        const t0 = performance.now();
        step(c, mode);
        await rt().sync();
        wall.push(performance.now() - t0);
        const g = await rt().timeGpu(() => step(c, mode));
        if (g !== null) gpuMs.push(g);
      }
      const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
      const ms = median(wall);
      const tokens = (BATCH * SEQ) / (ms / 1000);
      const g = gpuMs.length ? median(gpuMs).toFixed(1) : "n/a";
      console.log(
        `| ${c.name} | ${params} | ${mode} | ${ms.toFixed(1)} | ${tokens.toFixed(0)} | ${g} |`,
      );
    }
  }
}
