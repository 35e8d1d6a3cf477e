/**
 * LISA, Layerwise Importance Sampled AdamW (Pan et al., 2024).
 *
 * Everything outside the transformer blocks always trains (the embeddings, the final norm and the
 * task head, as LMFlow's reference callback leaves them trainable); of the L blocks, γ (`layers`)
 * are sampled uniformly without replacement every K (`interval`) steps, including step 0 (LMFlow's
 * callback switches at `on_step_begin` when global_step % K == 0), and train with AdamW while
 * the other L − γ are frozen. Freezing a block also frees its AdamW moments
 * (`optimizer.releaseState`), so optimizer memory only ever holds γ blocks + the always-trained
 * parameters; a re-sampled block starts from fresh moments, as after PyTorch deletes its state.
 * That is METHODS.md's advice for the paper's memory claim; LMFlow's callback frees nothing, so
 * there a re-sampled block resumes its old moments (torch's AdamW skips parameters without a
 * gradient but keeps their state): `keepMoments: true` does that.
 *
 * Steps s of interval ⌊s / K⌋ use the sample drawn from (seed, ⌊s / K⌋) alone: a resumed run
 * (the optimizer reports its step on `loadState`) re-activates exactly the blocks of the step it
 * resumes at. Parameters of the active blocks are in memory category "trainable", frozen blocks in
 * "weights", so the memory report shows what trains at a time. An unused LM head (classification
 * with an untied `lm_head`) is left frozen.
 *
 * Module targeting does not apply — LISA samples whole blocks — so any targets other than the
 * run's default are an error; per-module learning-rate multipliers do apply (e.g. `value: 4`).
 *
 * Saved format (no PEFT equivalent): a folder with
 *   - `lisa_config.json`: `{ "method": "lisa", "layers", "interval", "keep_moments", "seed",
 *     "base_model", "step", "trained_blocks": [indices], "block_prefix" }`
 *   - `lisa_model.safetensors`: every changed tensor (always-trained parameters and the
 *     parameters of every block sampled so far) in F32 under the model's own Hugging Face names.
 * `merge()` is a no-op: the weights are the model's own.
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import {
  AdamW,
  type AdamWOptions,
  type Optimizer,
  type OptimizerState,
  type ParamGroup,
  rngU32,
  seedU32,
  type Tensor,
} from "../ops/mod.ts";
import type { Module } from "../models/module.ts";
import { openSafetensors, writeSafetensors } from "../models/safetensors.ts";
import { buildGroups } from "./groups.ts";
import { trainHead } from "./lora.ts";
import { toEntries, writeInto, writeTextAtomic } from "./peft.ts";
import type { Adapter, ConfigSchema, Method, MethodContext } from "./types.ts";

/** LISA's options, with the paper's defaults. */
export const LisaConfigSchema: ConfigSchema<LisaConfig> = z.object({
  /** γ: blocks trained at a time. */
  layers: z.number().int().positive().default(2),
  /** K: optimizer steps between re-samplings. */
  interval: z.number().int().positive().default(20),
  /** Keep a frozen block's AdamW moments for when it is sampled again (LMFlow's behaviour). */
  keepMoments: z.boolean().default(false),
}).strict();

/** Parsed LISA options. */
export interface LisaConfig {
  /** γ: blocks trained at a time; default 2. */
  layers: number;
  /** K: optimizer steps between re-samplings; default 20. */
  interval: number;
  /**
   * Keep a frozen block's AdamW moments (and step count) for when it is sampled again, as
   * LMFlow's callback does; default false: free them at the switch (the paper's memory claim).
   */
  keepMoments: boolean;
}

/** The config file LISA writes next to its weights. */
export const LISA_CONFIG = "lisa_config.json";
/** The weights file LISA writes. */
export const LISA_WEIGHTS = "lisa_model.safetensors";

/** The run's default targets (tasks/lib/train/config.ts): the only ones LISA accepts. */
const DEFAULT_TARGETS = [["query", "value"], ["q_proj", "v_proj"]];

/** Mixed into the run's seed so LISA's draws are independent of dropout's streams. */
const LISA_SEED_SALT = 0x4c495341;

/**
 * The γ blocks (sorted) of `numBlocks` that train during `interval`: a partial Fisher–Yates
 * shuffle driven by the counter-based RNG at (seed, interval), so any interval's sample is
 * computable on its own.
 *
 * @example
 * ```ts
 * import { lisaSample } from "./lisa.ts";
 * console.log(lisaSample(0, 3, 12, 2)); // two distinct block indices in [0, 12)
 * ```
 */
export function lisaSample(
  seed: number,
  interval: number,
  numBlocks: number,
  layers: number,
): number[] {
  if (!Number.isInteger(interval) || interval < 0) {
    throw new Error(`lisaSample: interval must be an integer ≥ 0, got ${interval}`);
  }
  if (!(layers >= 1 && layers <= numBlocks)) {
    throw new Error(`lisaSample: cannot sample ${layers} of ${numBlocks} blocks`);
  }
  const order = Array.from({ length: numBlocks }, (_, i) => i);
  const s = (seedU32(seed) ^ LISA_SEED_SALT) >>> 0;
  for (let i = 0; i < layers; i++) {
    const j = i + (rngU32(s, interval, i) % (numBlocks - i));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order.slice(0, layers).sort((a, b) => a - b);
}

/** The transformer blocks: the one container whose children are named 0, 1, …, L−1. */
export function findBlocks(model: Module): { prefix: string; blocks: Module[] } {
  const found = model.namedModules().filter(([, m]) => {
    const kids = m.children();
    return kids.length > 0 && kids.every(([n], i) => n === String(i));
  });
  if (found.length !== 1) {
    throw new Error(
      `LISA: expected one list of transformer blocks (children named 0, 1, …), found ${found.length}` +
        (found.length ? ` (${found.map(([n]) => n).join(", ")})` : ""),
    );
  }
  const [prefix, list] = found[0];
  return { prefix, blocks: list.children().map(([, m]) => m) };
}

function isDefaultTargets(targets: readonly string[]): boolean {
  const key = [...targets].sort().join(",");
  return targets.length === 0 || DEFAULT_TARGETS.some((d) => d.join(",") === key);
}

/** LISA's adapter: an {@link Adapter} that also tells which blocks train now. */
export interface LisaAdapter extends Adapter {
  /** Indices of the blocks training in the current interval (sorted). */
  readonly activeBlocks: number[];
}

/** Apply LISA to `model`. */
export function applyLisa(model: Module, config: LisaConfig, ctx: MethodContext): LisaAdapter {
  if (!isDefaultTargets(ctx.targets)) {
    throw new Error(
      `LISA samples whole transformer blocks, so module targeting does not apply; got targets ` +
        `[${ctx.targets.join(", ")}] — leave --targets unset (per-module lr multipliers do apply)`,
    );
  }
  const { prefix, blocks } = findBlocks(model);
  if (config.layers > blocks.length) {
    throw new Error(
      `LISA layers: ${config.layers} blocks per interval, but the model has ${blocks.length}`,
    );
  }
  const blockParams = blocks.map((b, i) => b.namedParameters(`${prefix}.${i}`));
  const inBlocks = new Set(blockParams.flat().map(([, t]) => t));
  const head = trainHead(model, ctx);
  const headSet = new Set(head.map(([, t]) => t));
  const unusedLmHead = (n: string) => ctx.taskType === "SEQ_CLS" && /(^|\.)lm_head\./.test(n);
  const always = model.namedParameters().filter(([n, t]) =>
    !inBlocks.has(t) && !headSet.has(t) && !unusedLmHead(n)
  );
  for (const [name, t] of [...always, ...blockParams.flat()]) {
    if (t.dtype !== "f32") {
      throw new Error(
        `LISA trains every block in turn in f32, but ${name} is stored as ${t.dtype}: load the model with frozenDtype f32`,
      );
    }
  }
  model.setRequiresGrad(false);
  for (const [, t] of [...always, ...head]) {
    t.requiresGrad = true;
    t.setCategory("trainable");
  }
  let interval = -1;
  let active: number[] = [];
  let steps = 0;
  const activate = (next: number, optimizer: Optimizer | null) => {
    const sample = lisaSample(ctx.seed, next, blocks.length, config.layers);
    // Freeze before unfreezing, so the memory report never counts γ + 1 blocks as trainable.
    for (const on of [false, true]) {
      blockParams.forEach((params, b) => {
        if (sample.includes(b) !== on) return;
        for (const [, t] of params) {
          if (!on && !config.keepMoments) optimizer?.releaseState(t);
          if (t.requiresGrad === on) continue;
          t.requiresGrad = on;
          t.grad?.dispose();
          t.grad = null;
          t.setCategory(on ? "trainable" : "weights");
        }
      });
    }
    interval = next;
    active = sample;
  };
  activate(0, null);
  const named = (): [string, Tensor][] => [...always, ...blockParams.flat()];
  /** Blocks sampled in intervals 0 … current: the ones whose weights may have changed. */
  const trainedBlocks = () => {
    const set = new Set<number>();
    for (let i = 0; i <= interval; i++) {
      for (const b of lisaSample(ctx.seed, i, blocks.length, config.layers)) {
        set.add(b);
      }
    }
    return [...set].sort((a, b) => a - b);
  };
  return {
    method: "lisa",
    groups: () => [
      ...buildGroups("lisa", named(), ctx.lrMultipliers, ctx.weightDecay),
      ...buildGroups("head", head, {}, ctx.weightDecay),
    ],
    afterStep: (step, optimizer) => {
      steps = step;
      if (step % config.interval === 0) activate(step / config.interval, optimizer);
    },
    createOptimizer: (groups: ParamGroup[], options: AdamWOptions): Optimizer =>
      new LisaAdamW(groups, options, (resumed, opt) => {
        steps = resumed;
        activate(Math.floor(resumed / config.interval), opt);
      }),
    merge: () => {},
    save: async (dir) => {
      await Deno.mkdir(dir, { recursive: true });
      const trained = trainedBlocks();
      const tensors = [...always, ...head, ...trained.flatMap((b) => blockParams[b])];
      await writeSafetensors(join(dir, LISA_WEIGHTS), await toEntries(tensors), { format: "pt" });
      await writeTextAtomic(
        join(dir, LISA_CONFIG),
        JSON.stringify(
          {
            method: "lisa",
            layers: config.layers,
            interval: config.interval,
            keep_moments: config.keepMoments,
            seed: ctx.seed,
            base_model: ctx.baseModel,
            step: steps,
            block_prefix: prefix,
            trained_blocks: trained,
            modules_to_save: ctx.headModules,
          },
          null,
          2,
        ) + "\n",
      );
    },
    load: async (dir) => {
      const file = join(dir, LISA_WEIGHTS);
      const reader = await openSafetensors(file);
      try {
        const byName = new Map(model.namedParameters());
        for (const [name] of [...always, ...head]) {
          if (!reader.has(name)) {
            throw new Error(`${file}: missing tensor ${name} (always trained by LISA)`);
          }
        }
        for (const name of reader.names) {
          const t = byName.get(name);
          if (!t) throw new Error(`${file}: tensor ${name} is not a parameter of this model`);
          const shape = reader.info(name).shape;
          if (shape.join() !== t.shape.join()) {
            throw new Error(
              `${file}: ${name} has shape [${shape}], the model expects [${t.shape}]`,
            );
          }
          writeInto(t, await reader.readF32(name));
        }
      } finally {
        reader.close();
      }
    },
    get activeBlocks(): number[] {
      return [...active];
    },
  };
}

/**
 * AdamW that tells LISA the step it resumes at: after `loadState`, the blocks of that step's
 * interval are activated (and any other block's state released) before the next forward.
 */
class LisaAdamW extends AdamW {
  constructor(
    groups: readonly ParamGroup[],
    options: AdamWOptions,
    private readonly onResume: (steps: number, optimizer: Optimizer) => void,
  ) {
    super(groups, options);
  }

  override loadState(state: OptimizerState): void {
    super.loadState(state);
    this.onResume(this.stepCount, this);
  }
}

/** LISA as a registry entry. */
export const lisa: Method<LisaConfig> = {
  name: "lisa",
  changesBaseWeights: true,
  config: LisaConfigSchema,
  apply: (model, config, ctx) => applyLisa(model, config, ctx),
};
