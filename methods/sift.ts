/**
 * SIFT, sparse increment fine-tuning (Song et al., 2024, "Sparse is Enough in Fine-tuning
 * Pre-trained Large Language Models").
 *
 * Before training, the gradient of every targeted Linear weight W [dOut, dIn] is computed on the
 * first training batch(es) (`selectionBatches`, summed); the k entries of largest |gradient| are
 * selected, and from then on only those entries train: each layer holds fixed flat indices
 * [k] (i32, ascending) and trainable values [k] (zeros at the start), and computes
 *   y = x·(W + scatter(indices, values))ᵀ + b,
 * so the gradient of `values` is the dense weight gradient gathered at `indices`, and AdamW's state
 * is 2·k floats per matrix. The task head trains whole; biases and everything else stay frozen.
 *
 * Default targets are the reference scripts': query, key, value, attention.output.dense on
 * RoBERTa/BERT (its GLUE recipe) and every Linear of a LLaMA block (its Alpaca recipe).
 * k per matrix follows the reference implementation: k = min(⌊density·n⌋ + 1, n) for a matrix of
 * n entries. With `global: true` the same total K = Σ k is instead chosen as the top-K |gradient|
 * over all targeted matrices together (ties go to earlier matrices, then lower indices), so
 * matrices with larger gradients get more entries; a matrix that gets none stays a plain Linear.
 *
 * The schedule is the reference's (song-wx/SIFT with Hugging Face's Trainer): its first backward
 * pass only selects the entries, so optimizer step 0 leaves the increments untouched while the
 * task head trains as usual. Here the selection is a pass over the first batch before training
 * (`beforeTraining`; the weights are those of step 0, so its gradient is step 0's), and at step 0
 * the increments' gradients are dropped before the update (`beforeStep`): they get no update and
 * no AdamW state, and their first bias-corrected step is step 1, as in the reference.
 * Weight decay: the reference adds its increment into W and zeroes it after every update, so the
 * decoupled decay AdamW applies to it acts on zeros and does nothing; the increments here train
 * without weight decay for the same result. `incrementDecay: true` applies the run's decay to
 * them (pulling W back towards W₀ at the selected entries). The head decays as usual.
 * Not reproduced: the reference applies each update inside the next backward hook, so its forward
 * sees an update one step late; here the update is in effect from the next forward, as in the
 * paper's algorithm. Its module match is by substring, so the targeted modules' biases are made
 * sparse too (k = ⌊density·dOut⌋ + 1 entries each); here biases stay frozen.
 *
 * Saved format (no PEFT equivalent): a folder with
 *   - `sift_config.json`: `{ "method": "sift", "density", "global", "selection_batches",
 *     "increment_decay", "base_model", "target_modules", "modules_to_save",
 *     "layers": { "<module>": { "k", "shape" } } }`
 *   - `sift_model.safetensors`: per adapted module `<module>.sift.indices` (I32 [k], flat
 *     row-major indices into W) and `<module>.sift.values` (F32 [k]), and the head's parameters
 *     under their own names (F32).
 * `merge()` adds the scattered values into each W and puts the plain Linear back.
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import {
  backward,
  cast,
  defineKernel,
  grid1d,
  indexSelect,
  type Kernel,
  linear,
  linearIndex,
  map,
  noGrad,
  record,
  reshape,
  rt,
  scope,
  type Tensor,
  tensor,
  zeros,
} from "../ops/mod.ts";
import { Linear, type LinearLike, Module, ParamModule } from "../models/module.ts";
import { openSafetensors, type SafetensorsEntry, writeSafetensors } from "../models/safetensors.ts";
import { buildGroups } from "./groups.ts";
import { architectureOf, targetedLinears, trainHead } from "./lora.ts";
import { toEntries, writeInto, writeTextAtomic } from "./peft.ts";
import type { Adapter, ConfigSchema, DataPass, Method, MethodContext } from "./types.ts";

/** SIFT's options. */
export const SiftConfigSchema: ConfigSchema<SiftConfig> = z.object({
  /** Fraction of each targeted matrix that trains: k = ⌊density·n⌋ + 1 entries. */
  density: z.number().gt(0).max(1).default(0.01),
  /** Choose the top-K entries over all targeted matrices together instead of per matrix. */
  global: z.boolean().default(false),
  /** Training batches whose summed gradient ranks the entries. */
  selectionBatches: z.number().int().positive().default(1),
  /** Apply the run's weight decay to the increments (the reference's decay does nothing). */
  incrementDecay: z.boolean().default(false),
}).strict();

/** Parsed SIFT options. */
export interface SiftConfig {
  /** Fraction in (0, 1] of each targeted matrix that trains (k = ⌊density·n⌋ + 1); default 0.01. */
  density: number;
  /** Choose the top-K entries over all targeted matrices together, not per matrix; default false. */
  global: boolean;
  /** Training batches whose summed gradient ranks the entries; default 1. */
  selectionBatches: number;
  /**
   * Apply the run's weight decay to the increments, pulling W back towards W₀ at the selected
   * entries; default false (the reference zeroes its increment after each update, so its decay
   * has no effect).
   */
  incrementDecay: boolean;
}

/** The config file SIFT writes next to its weights. */
export const SIFT_CONFIG = "sift_config.json";
/** The weights file SIFT writes. */
export const SIFT_WEIGHTS = "sift_model.safetensors";

const WG = 256;

/**
 * out[off + index[j]] += values[j] for j < k. The indices of one layer are distinct, so threads
 * never write the same element and no atomics are needed.
 *
 * Layout: one thread per selected entry, 256 per workgroup, grid split by `grid1d`.
 */
const SCATTER_DISTINCT: Kernel = defineKernel({
  name: "sift_scatter",
  bindings: [
    { name: "index", type: "i32", access: "read" },
    { name: "values", type: "f32", access: "read" },
    { name: "out", type: "f32", access: "read_write" },
  ],
  params: [["k", "u32"], ["index_off", "u32"], ["values_off", "u32"], ["out_off", "u32"]],
  source: `
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = ${linearIndex(WG)};
  if (j >= params.k) { return; }
  let o = params.out_off + u32(index[params.index_off + j]);
  out[o] = out[o] + values[params.values_off + j];
}`,
});

/**
 * W + scatter(indices, values) as a new f32 tensor [dOut, dIn]; differentiable in `values` (its
 * gradient is the output gradient gathered at `indices`). `indices` must be distinct, i32, with
 * their host copy (as built by `tensor(Int32Array)`).
 */
export function sparseDelta(weight: Tensor, indices: Tensor, values: Tensor): Tensor {
  if (indices.size !== values.size || values.rank !== 1) {
    throw new Error(
      `sparseDelta: values ${values} must be 1-D with one value per index of ${indices}`,
    );
  }
  const out = map([weight], "a");
  if (values.size > 0) {
    rt().dispatch(SCATTER_DISTINCT, [indices, values, out], {
      k: values.size,
      index_off: indices.offset,
      values_off: values.offset,
      out_off: out.offset,
    }, grid1d(Math.ceil(values.size / WG)));
  }
  return record("sparseDelta", out, [weight, values], (g) => {
    const flat = reshape(g, [g.size]);
    const gv = values.requiresGrad ? indexSelect(flat, 0, indices) : null;
    flat.dispose();
    return [weight.requiresGrad ? map([g], "a") : null, gv];
  });
}

/** A Linear whose weight trains only at fixed entries: W + scatter(indices, values). */
export class SiftLinear extends Module implements LinearLike {
  /** dIn of the base layer. */
  readonly inFeatures: number;
  /** dOut of the base layer. */
  readonly outFeatures: number;

  /** `indices` [k]: distinct flat indices into W (i32, host copy kept); `values` [k]: trainable. */
  constructor(readonly base: Linear, readonly indices: Tensor, values: Tensor) {
    super();
    this.inFeatures = base.inFeatures;
    this.outFeatures = base.outFeatures;
    indices.keep();
    this.addModule("base_layer", base);
    this.addModule("sift", new ParamModule({ values }));
  }

  /** The trainable values [k]. */
  get values(): Tensor {
    return (this.getModule("sift") as ParamModule).get("values");
  }

  /** The effective weight W + scatter(indices, values) [dOut, dIn] (f32). */
  effectiveWeight(): Tensor {
    return sparseDelta(this.base.weight, this.indices, this.values);
  }

  /** x·(W + ΔW)ᵀ + b. */
  forward(x: Tensor): Tensor {
    return linear(x, this.effectiveWeight(), this.base.bias ?? undefined);
  }
}

/**
 * The flat indices of the k largest |values| in ascending index order (ties: lower index first).
 * NaN never wins.
 */
export function topKIndices(values: ArrayLike<number>, k: number): Int32Array {
  return topKAcross([values], k)[0];
}

/**
 * The K largest |values| over several arrays taken together (ties: earlier array, then lower
 * index), returned per array as ascending flat indices.
 */
function topKAcross(arrays: readonly ArrayLike<number>[], k: number): Int32Array[] {
  const total = arrays.reduce((s, a) => s + a.length, 0);
  if (k > total) throw new Error(`SIFT: cannot select ${k} of ${total} entries`);
  const mags = new Float32Array(total);
  let at = 0;
  for (const a of arrays) {
    for (let i = 0; i < a.length; i++) {
      const m = Math.abs(a[i]);
      mags[at++] = Number.isNaN(m) ? -1 : m;
    }
  }
  const sorted = mags.slice().sort();
  const threshold = k === 0 ? Infinity : sorted[total - k];
  let above = 0;
  for (let i = 0; i < total; i++) if (mags[i] > threshold) above++;
  let ties = k - above;
  const out: Int32Array[] = [];
  at = 0;
  for (const a of arrays) {
    const picked: number[] = [];
    for (let i = 0; i < a.length; i++, at++) {
      const m = mags[at];
      if (m > threshold) picked.push(i);
      else if (m === threshold && ties > 0) {
        picked.push(i);
        ties--;
      }
    }
    out.push(Int32Array.from(picked));
  }
  return out;
}

/** k = min(⌊density·n⌋ + 1, n), the reference implementation's count. */
export function siftCount(n: number, density: number): number {
  return Math.min(Math.floor(density * n) + 1, n);
}

/** SIFT's adapter: an {@link Adapter} that also exposes its sparse layers. */
export interface SiftAdapter extends Adapter {
  /** The sparse layers by module name (empty until the selection or a load). */
  layers(): [string, SiftLinear][];
}

/** Apply SIFT to the targeted Linear layers of `model` (selection happens in beforeTraining). */
export function applySift(model: Module, config: SiftConfig, ctx: MethodContext): SiftAdapter {
  const targets = targetedLinears(model, ctx, "SIFT");
  const bases: [string, Linear][] = targets.map(([name, l]) => {
    if (!(l instanceof Linear)) {
      throw new Error(`SIFT: ${name} is already adapted; SIFT needs a plain Linear`);
    }
    return [name, l];
  });
  model.setRequiresGrad(false);
  const head = trainHead(model, ctx);
  let layers: [string, SiftLinear][] = [];

  /** Swap in sparse layers with the given indices (values zero, or given). */
  const install = (chosen: Map<string, Int32Array>, values?: Map<string, Float32Array>) => {
    for (const [name, layer] of layers) {
      layer.indices.dispose();
      layer.values.dispose();
      model.setModule(name, layer.base);
    }
    layers = [];
    for (const [name, base] of bases) {
      const idx = chosen.get(name);
      if (!idx || idx.length === 0) continue;
      const v = values?.get(name);
      const vals = v
        ? tensor(v, [idx.length], { category: "trainable" })
        : zeros([idx.length], { category: "trainable" });
      vals.requiresGrad = true;
      const layer = new SiftLinear(base, tensor(idx, [idx.length], { category: "weights" }), vals);
      model.setModule(name, layer);
      layers.push([name, layer]);
    }
  };

  const select = async (data: DataPass) => {
    const weights = bases.map(([, b]) => b.weight);
    const trainable = model.namedParameters().filter(([, t]) => t.requiresGrad).map(([, t]) => t);
    for (const w of weights) w.requiresGrad = true;
    let grads: Float32Array[];
    try {
      for (const loss of data.losses(config.selectionBatches)) scope(() => backward(loss()));
      grads = await Promise.all(weights.map(async (w, i) => {
        if (!w.grad) {
          throw new Error(`SIFT: ${bases[i][0]} got no gradient from the selection pass`);
        }
        return (await w.grad.read()) as Float32Array;
      }));
    } finally {
      for (const t of [...weights, ...trainable]) {
        t.grad?.dispose();
        t.grad = null;
      }
      for (const w of weights) w.requiresGrad = false;
    }
    const counts = bases.map(([, b]) => siftCount(b.weight.size, config.density));
    const chosen = config.global
      ? topKAcross(grads, counts.reduce((a, b) => a + b, 0))
      : grads.map((g, i) => topKIndices(g, counts[i]));
    install(new Map(bases.map(([n], i) => [n, chosen[i]])));
  };

  const sparseParams = (): [string, Tensor][] =>
    layers.map(([n, l]) => [`${n}.sift.values`, l.values]);
  return {
    method: "sift",
    layers: () => [...layers],
    beforeTraining: select,
    groups: () => {
      if (layers.length === 0) {
        throw new Error(
          "SIFT chooses its entries from the first batch's gradient: run beforeTraining (or load) before asking for groups",
        );
      }
      return [
        ...buildGroups(
          "sift",
          sparseParams(),
          ctx.lrMultipliers,
          config.incrementDecay ? ctx.weightDecay : 0,
        ),
        ...buildGroups("head", head, {}, ctx.weightDecay),
      ];
    },
    beforeStep: (step) => {
      if (step !== 0) return;
      // Step 0's gradient was the selection's: the increments sit this update out.
      for (const [, l] of layers) {
        l.values.grad?.dispose();
        l.values.grad = null;
      }
    },
    merge: () => {
      noGrad(() => {
        for (const [name, layer] of layers) {
          const w = layer.base.weight;
          const sum = layer.effectiveWeight();
          const merged = w.dtype === "f16" ? cast(sum, "f16") : sum;
          if (merged !== sum) sum.dispose();
          merged.setCategory(w.category);
          layer.base.setParameter("weight", merged);
          layer.indices.dispose();
          layer.values.dispose();
          model.setModule(name, layer.base);
        }
      });
      layers = [];
    },
    save: async (dir) => {
      await Deno.mkdir(dir, { recursive: true });
      const entries: SafetensorsEntry[] = [];
      for (const [name, layer] of layers) {
        entries.push({
          name: `${name}.sift.indices`,
          dtype: "I32",
          shape: [layer.indices.size],
          data: (await layer.indices.read()) as Int32Array,
        });
      }
      entries.push(...await toEntries([...sparseParams(), ...head]));
      await writeSafetensors(join(dir, SIFT_WEIGHTS), entries, { format: "pt" });
      const summary = Object.fromEntries(
        layers.map(([n, l]) => [n, { k: l.indices.size, shape: [l.outFeatures, l.inFeatures] }]),
      );
      await writeTextAtomic(
        join(dir, SIFT_CONFIG),
        JSON.stringify(
          {
            method: "sift",
            density: config.density,
            global: config.global,
            selection_batches: config.selectionBatches,
            increment_decay: config.incrementDecay,
            base_model: ctx.baseModel,
            target_modules: ctx.targets,
            modules_to_save: ctx.headModules,
            layers: summary,
          },
          null,
          2,
        ) + "\n",
      );
    },
    load: async (dir) => {
      const file = join(dir, SIFT_WEIGHTS);
      const reader = await openSafetensors(file);
      try {
        const chosen = new Map<string, Int32Array>();
        const values = new Map<string, Float32Array>();
        for (const [name, base] of bases) {
          const key = `${name}.sift.indices`;
          if (!reader.has(key)) continue;
          const idx = await reader.readI32(key);
          const n = base.weight.size;
          const bad = idx.findIndex((v, i) => v < 0 || v >= n || (i > 0 && v <= idx[i - 1]));
          if (bad >= 0) {
            throw new Error(
              `${file}: ${key}[${bad}] = ${
                idx[bad]
              } is not an ascending index into the ${n} entries of ${name}`,
            );
          }
          const vals = await reader.readF32(`${name}.sift.values`);
          if (vals.length !== idx.length) {
            throw new Error(
              `${file}: ${name}.sift.values has ${vals.length} values for ${idx.length} indices`,
            );
          }
          chosen.set(name, idx);
          values.set(name, vals);
        }
        const unknown = reader.names.filter((n) =>
          n.endsWith(".sift.indices") && !chosen.has(n.slice(0, -".sift.indices".length))
        );
        if (unknown.length) {
          throw new Error(`${file}: ${unknown[0]} belongs to no targeted Linear of this model`);
        }
        if (chosen.size === 0) {
          throw new Error(`${file}: no sparse deltas for targets [${ctx.targets.join(", ")}]`);
        }
        install(chosen, values);
        for (const [name, t] of head) {
          if (!reader.has(name)) throw new Error(`${file}: missing head tensor ${name}`);
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
  };
}

/** The reference scripts' sparse modules: its GLUE recipe on encoders, its Alpaca one on LLaMA. */
export function siftDefaultTargets(model: Module): string[] {
  return architectureOf(model) === "llama"
    ? ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    : ["query", "key", "value", "attention.output.dense"];
}

/** SIFT as a registry entry. */
export const sift: Method<SiftConfig> = {
  name: "sift",
  changesBaseWeights: true,
  config: SiftConfigSchema,
  defaultTargets: siftDefaultTargets,
  apply: (model, config, ctx) => applySift(model, config, ctx),
};
