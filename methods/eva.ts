/**
 * EVA, Explained Variance Adaptation (Paischer et al., 2024), as Hugging Face PEFT
 * implements it (`init_lora_weights="eva"` with an EvaConfig).
 *
 * LoRA (y = x·Wᵀ + b + s·dropout(x)·Aᵀ·Bᵀ) whose A starts at the principal directions of the
 * layer's own inputs and whose ranks are redistributed across layers by explained variance:
 * 1. Data pass before training (`beforeTraining`): every targeted Linear is wrapped by a capturing
 *    module; minibatches run forward under noGrad in evaluation mode; the captured inputs, padding
 *    positions removed (and, for language modelling with `useLabelMask`, positions without a
 *    label), feed an incremental PCA per layer. Layers that receive the same input tensor
 *    (query/key/value, q/k/v_proj) share one PCA, as PEFT's input hashing arranges.
 * 2. Incremental PCA (PEFT's IncrementalPCA, after scikit-learn): per batch X [n, d] with batch
 *    mean m, the SVD of [diag(σ)·Vᵀ ; X − m ; √(n₀n/(n₀+n))·(μ₀ − m)] gives the new top k = ⌊ρ·r⌉
 *    components (randomized SVD, q = 2k columns, 4 power iterations, like torch.svd_lowrank);
 *    the explained variance ratio of component i is σᵢ² / Σ‖x − μ‖² over all rows seen.
 * 3. Convergence: component i has converged when its cosine similarity with the previous batch's
 *    component i (signs fixed so that each component's largest entry is positive) is ≥ τ. A layer
 *    stops updating once the components its current rank needs have converged; the pass stops
 *    when every layer has, or after `maxBatches` batches (our cap: PEFT cycles until convergence;
 *    components still moving at the cap are used as they are and `stats.converged` says so).
 * 4. Ranks: all layers' explained-variance ratios (top k each) are sorted together and the
 *    budget r·L is handed out from the top, so layer l gets r_l ≤ ρ·r, Σ r_l = r·L; ties go to
 *    the earlier layer. A layer with r_l = 0 gets no adapter.
 * 5. A_l = the top r_l components [r_l, dIn] (divided by √σᵢ with `whiten`), B_l = 0, so the
 *    model starts equal to the base model. With `adjustScalingFactors`, α_l = α·r_l/r (the
 *    scaling α_l/r_l is then the same for every layer).
 * Where PEFT and this file differ: equal-input layers check convergence against the largest rank
 * of their group (PEFT swaps ranks so the group's first layer holds it), and ties in the ranking
 * are broken by layer order.
 *
 * Saved as PEFT saves EVA: a plain LoRA adapter (`base_model.model.<module>.lora_A.weight` /
 * `.lora_B.weight`) with init_lora_weights "eva", `rank_pattern` / `alpha_pattern` holding the
 * layers whose rank / alpha differ from r / α, `eva_config`, and `target_modules` listing the
 * adapted modules by full name when some layer got rank 0.
 *
 * @module
 */
import { z } from "zod";
import {
  add,
  concat,
  indexSelect,
  mean,
  mul,
  noGrad,
  randomizedSvd,
  randUniform,
  reshape,
  scope,
  sub,
  sum,
  type Tensor,
  tensor,
  transpose,
  zeros,
} from "../ops/mod.ts";
import { type LinearLike, Module } from "../models/module.ts";
import { buildGroups } from "./groups.ts";
import {
  LoraLinear,
  loraPeftConfig,
  loraScaling,
  mergeLowRank,
  targetedLinears,
  trainHead,
} from "./lora.ts";
import { loadInto, readAdapter, writeAdapter } from "./peft.ts";
import { patternValue } from "./peft_config.ts";
import type { Adapter, ConfigSchema, DataPass, Method, MethodContext, TokenMask } from "./types.ts";

/** EVA's options: LoRA's plus PEFT's EvaConfig, with PEFT's defaults. */
export const EvaConfigSchema: ConfigSchema<EvaConfig> = z.object({
  /** Average rank r; the budget is r per targeted layer. */
  r: z.number().int().positive().default(8),
  /** α: the update is scaled by α/r (α_l/r_l per layer). */
  alpha: z.number().positive().default(8),
  /** Dropout on the adapter's input. */
  dropout: z.number().min(0).lt(1).default(0),
  /** rsLoRA scaling α/√r. */
  rslora: z.boolean().default(false),
  /** ρ ≥ 1: a layer may get at most ρ·r ranks (and ρ·r components are computed). */
  rho: z.number().min(1).default(2),
  /** τ: cosine similarity at which a component counts as converged. */
  tau: z.number().min(0).max(1).default(0.99),
  /** Language modelling: use only positions that carry a label (answer tokens). */
  useLabelMask: z.boolean().default(true),
  /** Divide each component by √σ (whitening). */
  whiten: z.boolean().default(false),
  /** Scale α with the rank a layer receives (α_l = α·r_l/r). */
  adjustScalingFactors: z.boolean().default(true),
  /** Most minibatches the data pass runs before giving up on convergence. */
  maxBatches: z.number().int().positive().default(64),
}).strict();

/** Parsed EVA options. */
export interface EvaConfig {
  /** Average rank r; the budget is r per targeted layer; default 8. */
  r: number;
  /** α: the update is scaled by α/r (α_l/r_l per layer); default 8. */
  alpha: number;
  /** Dropout probability on the adapter's input, in [0, 1); default 0. */
  dropout: number;
  /** rsLoRA scaling α/√r; default false. */
  rslora: boolean;
  /** ρ ≥ 1: a layer may get at most ρ·r ranks (and ρ·r components are computed); default 2. */
  rho: number;
  /** τ in [0, 1]: cosine similarity at which a component counts as converged; default 0.99. */
  tau: number;
  /** Language modelling: use only positions that carry a label (answer tokens); default true. */
  useLabelMask: boolean;
  /** Divide each component by √σ (whitening); default false. */
  whiten: boolean;
  /** Scale α with the rank a layer receives (α_l = α·r_l/r); default true. */
  adjustScalingFactors: boolean;
  /** Most minibatches the data pass runs before giving up on convergence; default 64. */
  maxBatches: number;
}

/** What the data pass found. */
export interface EvaStats {
  /** Rank of each targeted layer (0: no adapter), in tree order. */
  ranks: Record<string, number>;
  /** Layers that share one PCA because they see the same input: member → group leader. */
  sharedInputs: Record<string, string>;
  /** Minibatches run. */
  batches: number;
  /** True when every layer's needed components converged before `maxBatches`. */
  converged: boolean;
  /** Per group leader: explained-variance ratios of its k components. */
  explainedVarianceRatio: Record<string, number[]>;
  /** Per group leader: singular values σ of its k components. */
  singularValues: Record<string, number[]>;
  /** Per group leader: which of the data pass's batches (indices into `losses(n)`) it consumed. */
  batchesUsed: Record<string, number[]>;
}

/** One targeted layer: its frozen base and, while it has a rank, its LoRA wrapper. */
interface EvaLayer {
  name: string;
  base: LinearLike;
  lora: LoraLinear | null;
  rank: number;
  alpha: number;
}

/** The incremental PCA of one layer's inputs (state on the GPU, convergence on the host). */
interface Pca {
  /** diag(σ)·Vᵀ [k, d]. */
  scaledComponents: Tensor | null;
  /** μ [d]. */
  mean: Tensor | null;
  /** Σ‖x − μ‖² over the rows seen [] (the total variance times the count). */
  totalSquares: Tensor | null;
  seen: number;
  /** Host copies after the last update: components [k][d] (signs fixed), σ [k], ratios [k]. */
  components: Float64Array[] | null;
  sigma: number[];
  ratio: number[];
  converged: boolean[];
  used: number[];
}

/** A module that records its input, then runs the wrapped layer. */
class CaptureInput extends Module implements LinearLike {
  readonly inFeatures: number;
  readonly outFeatures: number;

  constructor(readonly base: LinearLike, readonly onInput: (x: Tensor) => void) {
    super();
    this.inFeatures = base.inFeatures;
    this.outFeatures = base.outFeatures;
    this.addModule("base_layer", base);
  }

  forward(x: Tensor): Tensor {
    this.onInput(x);
    return this.base.forward(x);
  }
}

/** True when `a` and `b` are the same values in the same place (the same input tensor). */
function sameTensor(a: Tensor, b: Tensor): boolean {
  return a === b ||
    (a.sharesStorage(b) && a.offset === b.offset && a.shape.join() === b.shape.join() &&
      a.strides.join() === b.strides.join());
}

/** Rows of the flattened [b·t] positions that count for the statistics. */
function countedRows(m: TokenMask, useLabelMask: boolean): number[] {
  const rows: number[] = [];
  const labels = useLabelMask ? m.labelMask : undefined;
  for (let i = 0; i < m.b * m.t; i++) if (m.mask[i] > 0 && (!labels || labels[i] > 0)) rows.push(i);
  return rows;
}

/**
 * Hand out `budget` ranks by explained variance: every (layer, ratio) pair sorted descending
 * (stable: earlier layer, then earlier component, first), the first `budget` counted per layer.
 */
export function distributeRanks(
  ratios: readonly [string, readonly number[]][],
  budget: number,
): Record<string, number> {
  const entries = ratios.flatMap(([name, values], layer) =>
    values.map((v, i) => ({ name, v, layer, i }))
  );
  entries.sort((a, b) => b.v - a.v || a.layer - b.layer || a.i - b.i);
  const counts: Record<string, number> = Object.fromEntries(ratios.map(([n]) => [n, 0]));
  for (const e of entries.slice(0, budget)) counts[e.name]++;
  return counts;
}

/** Fix each row's sign so that its largest-magnitude entry is positive (PEFT's svd_flip). */
function signFixed(rows: Float64Array[]): Float64Array[] {
  return rows.map((row) => {
    let at = 0;
    for (let j = 1; j < row.length; j++) if (Math.abs(row[j]) > Math.abs(row[at])) at = j;
    return row[at] < 0 ? row.map((v) => -v) : row;
  });
}

function cosine(a: Float64Array, b: Float64Array): number {
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / Math.max(Math.sqrt(aa * bb), 1e-12);
}

/** What {@link applyEva} returns: an Adapter, plus what the data pass found (after it ran). */
export interface EvaAdapter extends Adapter {
  /** Null until `beforeTraining` has run. */
  readonly stats: EvaStats | null;
  /** The adapted layers now (rank-0 layers excluded). */
  loraLayers(): [string, LoraLinear][];
}

/** Apply EVA to the targeted Linear layers of `model` (LoRA until the data pass re-initialises it). */
export function applyEva(model: Module, config: EvaConfig, ctx: MethodContext): EvaAdapter {
  const targets = targetedLinears(model, ctx, "EVA");
  model.setRequiresGrad(false);
  const layers: EvaLayer[] = targets.map(([name, base]) => ({
    name,
    base,
    lora: null,
    rank: 0,
    alpha: config.alpha,
  }));

  /** (Re)build a layer's adapter with `rank` and `alpha`; A from `a` (host [rank, dIn]) or LoRA's init. */
  const install = (
    layer: EvaLayer,
    rank: number,
    alpha: number,
    a?: Float32Array,
    stream = 0,
  ): void => {
    layer.lora?.loraA.dispose();
    layer.lora?.loraB.dispose();
    layer.lora = null;
    layer.rank = rank;
    layer.alpha = alpha;
    if (rank === 0) {
      model.setModule(layer.name, layer.base);
      return;
    }
    const dIn = layer.base.inFeatures;
    const bound = 1 / Math.sqrt(dIn);
    const loraA = a
      ? tensor(a, [rank, dIn], { category: "trainable" })
      : randUniform([rank, dIn], -bound, bound, {
        seed: ctx.seed,
        stream: 7919 + stream,
        category: "trainable",
      });
    const loraB = zeros([layer.base.outFeatures, rank], { category: "trainable" });
    loraA.requiresGrad = loraB.requiresGrad = true;
    const scaling = loraScaling({ r: rank, alpha, rslora: config.rslora });
    layer.lora = new LoraLinear(layer.base, loraA, loraB, scaling, config.dropout);
    model.setModule(layer.name, layer.lora);
  };
  layers.forEach((l, i) => install(l, config.r, config.alpha, undefined, i));
  const head = trainHead(model, ctx);
  let stats: EvaStats | null = null;

  const loraLayers = (): [string, LoraLinear][] =>
    layers.filter((l) => l.lora).map((l) => [l.name, l.lora!]);
  const loraParams = (): [string, Tensor][] =>
    loraLayers().flatMap((
      [n, l],
    ) => [[`${n}.lora_A.weight`, l.loraA], [`${n}.lora_B.weight`, l.loraB]]);

  const dataPass = async (data: DataPass): Promise<void> => {
    const thunks = data.losses(config.maxBatches);
    if (thunks.length === 0) throw new Error("EVA: the data pass has no training batches");
    const masks = data.tokenMasks?.(config.maxBatches) ?? null;
    const maxComponents = layers.map((l) =>
      Math.min(Math.round(config.r * config.rho), l.base.inFeatures)
    );
    const budget = config.r * layers.length;
    // Capture inputs: the base layers alone run, as with PEFT's disabled adapters.
    let captured = new Map<string, Tensor>();
    for (const l of layers) {
      model.setModule(l.name, new CaptureInput(l.base, (x) => captured.set(l.name, x)));
    }
    const leaderOf = new Map<string, string>();
    const pcas = new Map<string, Pca>();
    let ranks = Object.fromEntries(layers.map((l, i) => [l.name, maxComponents[i]]));
    const neededRank = (leader: string) =>
      Math.max(...layers.filter((l) => leaderOf.get(l.name) === leader).map((l) => ranks[l.name]));
    const pending = () =>
      [...pcas.entries()]
        .filter(([leader, p]) => !p.converged.slice(0, neededRank(leader)).every(Boolean))
        .map(([leader]) => leader);
    let batches = 0;
    try {
      for (; batches < config.maxBatches; batches++) {
        if (batches > 0 && pending().length === 0) break;
        const k = batches % thunks.length;
        const mask = masks?.[k] ?? null;
        captured = new Map();
        const result = scope(() =>
          noGrad(() => {
            thunks[k]();
            if (batches === 0) groupByInput(captured, leaderOf, pcas, maxComponents);
            const rows = mask ? countedRows(mask, config.useLabelMask) : null;
            const index = rows ? tensor(Int32Array.from(rows), [rows.length]) : null;
            const updated: string[] = [], parts: Tensor[] = [];
            for (const leader of pending()) {
              const pca = pcas.get(leader)!;
              const x = captured.get(leader)!;
              const d = x.shape[x.rank - 1];
              if (mask && x.size !== mask.b * mask.t * d) {
                throw new Error(
                  `EVA: ${leader} received input [${
                    x.shape.join(", ")
                  }], which does not match the batch's ` +
                    `[${mask.b}, ${mask.t}] token mask`,
                );
              }
              const flat = reshape(x, [x.size / d, d]);
              const xs = index ? indexSelect(flat, 0, index) : flat;
              const kc = pca.converged.length;
              if (xs.shape[0] < kc) continue; // PEFT skips batches with fewer rows than components
              updated.push(leader);
              pca.used.push(k);
              parts.push(updatePca(pca, xs, kc));
            }
            return { updated, packed: parts.length ? concat(parts, 0) : null };
          })
        );
        if (!result.packed) continue;
        const host = Float64Array.from(await result.packed.read());
        result.packed.dispose();
        let at = 0;
        for (const leader of result.updated) {
          const pca = pcas.get(leader)!;
          const kc = pca.converged.length;
          const d = pca.scaledComponents!.shape[1];
          const sigma = Array.from(host.subarray(at, at + kc));
          const comps = signFixed(
            Array.from(
              { length: kc },
              (_, i) => host.slice(at + kc + i * d, at + kc + (i + 1) * d),
            ),
          );
          const total = host[at + kc + kc * d];
          at += kc + kc * d + 1;
          if (pca.components) {
            const previous = pca.components;
            pca.converged = comps.map((c, i) => cosine(c, previous[i]) >= config.tau);
          }
          pca.components = comps;
          pca.sigma = sigma;
          pca.ratio = sigma.map((v) => (v * v) / Math.max(total, 1e-30));
        }
        if ([...pcas.values()].every((p) => p.components)) {
          ranks = distributeRanks(
            layers.map((l) => [l.name, pcas.get(leaderOf.get(l.name)!)!.ratio]),
            budget,
          );
        }
      }
    } finally {
      for (const l of layers) model.setModule(l.name, l.lora ?? l.base);
      for (const p of pcas.values()) {
        p.scaledComponents?.dispose();
        p.mean?.dispose();
        p.totalSquares?.dispose();
      }
    }
    const missing = [...pcas.entries()].filter(([, p]) => !p.components).map(([n]) => n);
    if (missing.length) {
      throw new Error(
        `EVA: no batch gave ${missing.join(", ")} enough positions for its ` +
          `${
            pcas.get(missing[0])!.converged.length
          } components; use larger batches or a smaller r·rho`,
      );
    }
    const converged = [...pcas.entries()].every(([leader, p]) =>
      p.converged.slice(0, neededRank(leader)).every(Boolean)
    );
    layers.forEach((l, i) => {
      const pca = pcas.get(leaderOf.get(l.name)!)!;
      const rank = ranks[l.name];
      const d = l.base.inFeatures;
      const a = new Float32Array(rank * d);
      for (let c = 0; c < rank; c++) {
        const w = config.whiten ? 1 / Math.sqrt(pca.sigma[c]) : 1;
        for (let j = 0; j < d; j++) a[c * d + j] = pca.components![c][j] * w;
      }
      const alpha = config.adjustScalingFactors && rank !== config.r
        ? (config.alpha * rank) / config.r
        : config.alpha;
      install(l, rank, alpha, a, i);
    });
    stats = {
      ranks: { ...ranks },
      sharedInputs: Object.fromEntries([...leaderOf].filter(([n, leader]) => n !== leader)),
      batches,
      converged,
      explainedVarianceRatio: Object.fromEntries([...pcas].map(([n, p]) => [n, p.ratio])),
      singularValues: Object.fromEntries([...pcas].map(([n, p]) => [n, p.sigma])),
      batchesUsed: Object.fromEntries([...pcas].map(([n, p]) => [n, p.used])),
    };
  };

  /** Group layers fed the same tensor; the first in tree order holds the group's PCA. */
  function groupByInput(
    captured: Map<string, Tensor>,
    leaderOf: Map<string, string>,
    pcas: Map<string, Pca>,
    maxComponents: number[],
  ): void {
    for (const [i, l] of layers.entries()) {
      const x = captured.get(l.name);
      if (!x) throw new Error(`EVA: ${l.name} did not run during the forward pass`);
      const leader = layers.find((o) => sameTensor(captured.get(o.name)!, x))!.name;
      leaderOf.set(l.name, leader);
      if (leader !== l.name) continue;
      pcas.set(l.name, {
        scaledComponents: null,
        mean: null,
        totalSquares: null,
        seen: 0,
        components: null,
        sigma: [],
        ratio: [],
        converged: new Array<boolean>(maxComponents[i]).fill(false),
        used: [],
      });
    }
  }

  /**
   * One incremental-PCA step on rows `xs` [n, d]; returns [σ (k), Vᵀ (k·d), Σ‖x − μ‖²] packed for
   * one read-back. State tensors are kept (the caller's scope frees the rest).
   */
  function updatePca(pca: Pca, xs: Tensor, k: number): Tensor {
    const n = xs.shape[0], d = xs.shape[1];
    const batchMean = mean(xs, 0); // [d]
    const centred = sub(xs, batchMean);
    const squares = sum(mul(centred, centred));
    let stacked: Tensor, newMean: Tensor, total: Tensor;
    if (!pca.mean || !pca.scaledComponents || !pca.totalSquares) {
      stacked = centred;
      newMean = batchMean;
      total = squares;
    } else {
      const n0 = pca.seen;
      const c = Math.sqrt((n0 * n) / (n0 + n));
      const shift = sub(pca.mean, batchMean);
      stacked = concat([pca.scaledComponents, centred, reshape(mul(shift, c), [1, d])], 0);
      total = add(add(pca.totalSquares, squares), mul(sum(mul(shift, shift)), c * c));
      newMean = add(mul(pca.mean, n0 / (n0 + n)), mul(batchMean, n / (n0 + n)));
    }
    const { u, s, v } = randomizedSvd(stacked, k, {
      oversample: k,
      powerIterations: 4,
      seed: ctx.seed,
    });
    u.dispose();
    const vt = transpose(v); // [k, d]
    const next = mul(vt, reshape(s, [k, 1])).keep();
    pca.scaledComponents?.dispose();
    pca.mean?.dispose();
    pca.totalSquares?.dispose();
    pca.scaledComponents = next;
    pca.mean = newMean.keep();
    pca.totalSquares = total.keep();
    pca.seen += n;
    return concat([s, reshape(vt, [k * d]), reshape(total, [1])], 0);
  }

  const savedConfig = (): Record<string, unknown> => {
    const active = layers.filter((l) => l.rank > 0);
    const rankPattern = Object.fromEntries(
      active.filter((l) => l.rank !== config.r).map((l) => [l.name, l.rank]),
    );
    const alphaPattern = Object.fromEntries(
      active.filter((l) => l.alpha !== config.alpha).map((l) => [l.name, l.alpha]),
    );
    return {
      ...loraPeftConfig(config, ctx, "eva"),
      target_modules: active.length === layers.length ? ctx.targets : active.map((l) => l.name),
      rank_pattern: rankPattern,
      alpha_pattern: alphaPattern,
      eva_config: {
        rho: config.rho,
        tau: config.tau,
        use_label_mask: config.useLabelMask,
        label_mask_value: -100,
        whiten: config.whiten,
        adjust_scaling_factors: config.adjustScalingFactors,
      },
    };
  };

  return {
    method: "eva",
    get stats() {
      return stats;
    },
    loraLayers,
    beforeTraining: dataPass,
    groups: () => [
      ...buildGroups("eva", loraParams(), ctx.lrMultipliers, ctx.weightDecay),
      ...buildGroups("head", head, {}, ctx.weightDecay),
    ],
    merge: () => mergeLowRank(model, loraLayers()),
    save: (dir) => writeAdapter(dir, savedConfig(), [...loraParams(), ...head]),
    load: async (dir) => {
      const files = await readAdapter(dir);
      const pattern = (key: string): Record<string, number> => {
        const p = files.config[key];
        return p && typeof p === "object" ? p as Record<string, number> : {};
      };
      // PEFT's get_pattern_key: the first key, in file order, matching the module name's end.
      const find = (p: Record<string, number>, name: string) => patternValue(p, name);
      const ranks = pattern("rank_pattern"), alphas = pattern("alpha_pattern");
      layers.forEach((l, i) => {
        const a = files.tensors.get(`${l.name}.lora_A.weight`);
        const rank = a ? a.shape[0] : 0;
        const listed = find(ranks, l.name);
        if (listed !== undefined && listed !== rank) {
          throw new Error(
            `${dir}: rank_pattern gives ${l.name} rank ${listed}, its lora_A has ${rank} rows`,
          );
        }
        install(l, rank, find(alphas, l.name) ?? config.alpha, undefined, i);
        if (l.lora) {
          loadInto(files, `${l.name}.lora_A.weight`, l.lora.loraA);
          loadInto(files, `${l.name}.lora_B.weight`, l.lora.loraB);
        }
      });
      for (const [name, t] of head) loadInto(files, name, t);
    },
  };
}

/** EVA as a registry entry. */
export const eva: Method<EvaConfig> = {
  name: "eva",
  config: EvaConfigSchema,
  apply: (model, config, ctx) => applyEva(model, config, ctx),
};
