/**
 * VeRA (Kopiczko, Blankevoort and Asano, 2024): vector-based random matrix adaptation, as Hugging
 * Face PEFT implements it.
 *
 * One pair of frozen random matrices is shared by every adapted layer: A [r, maxDin] and
 * B [maxDout, r], sized for the largest targeted layer. Each layer slices what it needs and learns
 * only two vectors, λ_d [r] and λ_b [dOut]:
 *   y = x·Wᵀ + b + λ_b ⊙ ((λ_d ⊙ dropout(x)·A_sᵀ)·B_sᵀ),   A_s = A[:, :dIn], B_s = B[:dOut, :],
 * i.e. ΔW = diag(λ_b)·B_s·diag(λ_d)·A_s. Initialisation as PEFT: λ_d = d_initial (0.1), λ_b = 0
 * (the adapted model starts equal to the base), A and B kaiming-uniform with gain √2 on their
 * fan-in: A ~ U(±√(6/maxDin)), B ~ U(±√(6/r)). Defaults are PEFT's VeraConfig: r = 256,
 * projection_prng_key = 0, save_projection = true, no dropout.
 *
 * Where we differ from PEFT: A and B are drawn from this toolkit's counter-based generator seeded by
 * projection_prng_key, not from torch.Generator, so the same key gives other numbers than PyTorch.
 * With save_projection (the default) the matrices travel in the file and nothing depends on the
 * generator; an adapter saved without them loads exactly only into this toolkit.
 *
 * Saved in PEFT's format: `base_model.model.<module>.vera_lambda_b` / `.vera_lambda_d` per layer,
 * the shared `base_model.vera_A` / `base_model.vera_B` when save_projection is set, peft_type
 * "VERA". A and B are frozen (category "weights") and not counted as trainable; they are not
 * parameters of any layer (PEFT keeps them on the model, outside the layers' state), so they belong
 * to the adapter, and merge() frees them.
 *
 * @module
 */
import { join } from "node:path";
import { z } from "zod";
import {
  add,
  full,
  linear,
  matmul,
  mul,
  noGrad,
  randUniform,
  reshape,
  scope,
  slice,
  type Tensor,
  zeros,
} from "../ops/mod.ts";
import { ForwardContext } from "../models/context.ts";
import { type LinearLike, Module } from "../models/module.ts";
import { writeSafetensors } from "../models/safetensors.ts";
import { buildGroups } from "./groups.ts";
import { mergeLowRank, targetedLinears, trainHead } from "./lora.ts";
import {
  ADAPTER_CONFIG,
  ADAPTER_WEIGHTS,
  loadInto,
  PEFT_PREFIX,
  readAdapter,
  toEntries,
  writeInto,
  writeTextAtomic,
} from "./peft.ts";
import type { ConfigSchema, Method } from "./types.ts";

/** VeRA's options, with PEFT's defaults. */
export const VeraConfigSchema: ConfigSchema<VeraConfig> = z.object({
  /** Rank of the shared random projections. */
  r: z.number().int().positive().default(256),
  /** Dropout on the adapter's input. */
  dropout: z.number().min(0).lt(1).default(0),
  /** Initial value of every λ_d entry. */
  dInitial: z.number().default(0.1),
  /** Seed of the shared A and B (PEFT's projection_prng_key). */
  projectionPrngKey: z.number().int().min(0).default(0),
  /** Store A and B in the adapter file (PEFT's save_projection). */
  saveProjection: z.boolean().default(true),
}).strict();

/** Parsed VeRA options. */
export interface VeraConfig {
  /** Rank of the shared random projections; default 256. */
  r: number;
  /** Dropout probability on the adapter's input, in [0, 1); default 0. */
  dropout: number;
  /** Initial value of every λ_d entry; default 0.1. */
  dInitial: number;
  /** Seed of the shared A and B (PEFT's projection_prng_key); default 0. */
  projectionPrngKey: number;
  /** Store A and B in the adapter file (PEFT's save_projection); default true. */
  saveProjection: boolean;
}

/** PEFT's key of the shared A (not under `base_model.model.`). */
export const VERA_A_KEY = "base_model.vera_A";
/** PEFT's key of the shared B. */
export const VERA_B_KEY = "base_model.vera_B";

/** A Linear plus λ_b ⊙ B_s·(λ_d ⊙ A_s·x); `base_layer` keeps the frozen original. */
export class VeraLinear extends Module implements LinearLike {
  /** dIn of the base layer. */
  readonly inFeatures: number;
  /** dOut of the base layer. */
  readonly outFeatures: number;

  /** Wrap `base`; `lambdaB` [dOut] and `lambdaD` [r] train, the shared A and B do not. */
  constructor(
    readonly base: LinearLike,
    /** The shared A [r, maxDin] (frozen, not a parameter of this layer). */
    readonly veraA: Tensor,
    /** The shared B [maxDout, r] (frozen, not a parameter of this layer). */
    readonly veraB: Tensor,
    lambdaB: Tensor,
    lambdaD: Tensor,
    readonly dropout: number,
  ) {
    super();
    this.inFeatures = base.inFeatures;
    this.outFeatures = base.outFeatures;
    const [r, maxDin] = veraA.shape;
    if (maxDin < this.inFeatures || veraB.shape[0] < this.outFeatures || veraB.shape[1] !== r) {
      throw new Error(
        `VeRA projections A [${veraA.shape}] and B [${veraB.shape}] cannot serve a layer ` +
          `[${this.outFeatures}, ${this.inFeatures}]`,
      );
    }
    this.addModule("base_layer", base);
    this.addParameter("vera_lambda_b", lambdaB);
    this.addParameter("vera_lambda_d", lambdaD);
  }

  /** λ_b [dOut]. */
  get lambdaB(): Tensor {
    return this.param("vera_lambda_b");
  }

  /** λ_d [r]. */
  get lambdaD(): Tensor {
    return this.param("vera_lambda_d");
  }

  /** A_s [r, dIn] and B_s [dOut, r]: views of the shared matrices. */
  #sliced(): [Tensor, Tensor] {
    return [slice(this.veraA, 1, 0, this.inFeatures), slice(this.veraB, 0, 0, this.outFeatures)];
  }

  /** base(x) + λ_b ⊙ ((λ_d ⊙ dropout(x)·A_sᵀ)·B_sᵀ). */
  forward(x: Tensor): Tensor {
    const y = this.base.forward(x);
    const xd = ForwardContext.current().dropout(x, this.dropout);
    const [a, b] = this.#sliced();
    const down = mul(linear(xd, a), this.lambdaD);
    return add(y, mul(linear(down, b), this.lambdaB));
  }

  /** ΔW = (λ_b ⊙ B_s)·(λ_d ⊙ A_s) [dOut, dIn]. */
  deltaWeight(): Tensor {
    return noGrad(() =>
      scope(() => {
        const [a, b] = this.#sliced();
        const r = a.shape[0];
        return matmul(
          mul(b, reshape(this.lambdaB, [this.outFeatures, 1])),
          mul(a, reshape(this.lambdaD, [r, 1])),
        );
      })
    );
  }
}

/** The shared projections, kaiming-uniform (gain √2, fan-in) as PEFT's `_kaiming_init`. */
function projections(r: number, maxDin: number, maxDout: number, key: number): [Tensor, Tensor] {
  const opts = (stream: number) => ({ seed: key, stream, category: "weights" as const });
  const boundA = Math.sqrt(6 / maxDin), boundB = Math.sqrt(6 / r);
  const a = randUniform([r, maxDin], -boundA, boundA, opts(0)).keep();
  const b = randUniform([maxDout, r], -boundB, boundB, opts(1)).keep();
  return [a, b];
}

/** VeRA as a registry entry. */
export const vera: Method<VeraConfig> = {
  name: "vera",
  config: VeraConfigSchema,
  apply(model, config, ctx) {
    const targets = targetedLinears(model, ctx, "VeRA");
    model.setRequiresGrad(false);
    const maxDin = Math.max(...targets.map(([, l]) => l.inFeatures));
    const maxDout = Math.max(...targets.map(([, l]) => l.outFeatures));
    const [veraA, veraB] = projections(config.r, maxDin, maxDout, config.projectionPrngKey);
    const layers: [string, VeraLinear][] = targets.map(([name, base]) => {
      const lambdaB = zeros([base.outFeatures], { category: "trainable" });
      const lambdaD = full([config.r], config.dInitial, { category: "trainable" });
      lambdaB.requiresGrad = lambdaD.requiresGrad = true;
      const layer = new VeraLinear(base, veraA, veraB, lambdaB, lambdaD, config.dropout);
      model.setModule(name, layer);
      return [name, layer];
    });
    const head = trainHead(model, ctx);
    const lambdas = (): [string, Tensor][] =>
      layers.flatMap((
        [n, l],
      ) => [[`${n}.vera_lambda_b`, l.lambdaB], [`${n}.vera_lambda_d`, l.lambdaD]]);
    return {
      method: "vera",
      groups: () => [
        ...buildGroups("vera", lambdas(), ctx.lrMultipliers, ctx.weightDecay),
        ...buildGroups("head", head, {}, ctx.weightDecay),
      ],
      merge: () => {
        mergeLowRank(model, layers);
        veraA.dispose();
        veraB.dispose();
      },
      async save(dir) {
        await Deno.mkdir(dir, { recursive: true });
        const named: [string, Tensor][] = [...lambdas(), ...head].map((
          [n, t],
        ) => [`${PEFT_PREFIX}${n}`, t]);
        if (config.saveProjection) named.push([VERA_A_KEY, veraA], [VERA_B_KEY, veraB]);
        await writeSafetensors(join(dir, ADAPTER_WEIGHTS), await toEntries(named), {
          format: "pt",
        });
        const peftConfig = {
          peft_type: "VERA",
          task_type: ctx.taskType,
          base_model_name_or_path: ctx.baseModel,
          r: config.r,
          target_modules: ctx.targets,
          projection_prng_key: config.projectionPrngKey,
          save_projection: config.saveProjection,
          vera_dropout: config.dropout,
          d_initial: config.dInitial,
          fan_in_fan_out: false,
          bias: "none",
          modules_to_save: ctx.headModules.length ? ctx.headModules : null,
          init_weights: true,
          layers_to_transform: null,
          layers_pattern: null,
          inference_mode: true,
          revision: null,
        };
        await writeTextAtomic(
          join(dir, ADAPTER_CONFIG),
          JSON.stringify(peftConfig, null, 2) + "\n",
        );
      },
      async load(dir) {
        const files = await readAdapter(dir);
        for (const [name, t] of [...lambdas(), ...head]) loadInto(files, name, t);
        const hasA = files.tensors.has(VERA_A_KEY), hasB = files.tensors.has(VERA_B_KEY);
        if (hasA !== hasB) {
          throw new Error(
            `${dir}/${ADAPTER_WEIGHTS}: has only one of ${VERA_A_KEY}, ${VERA_B_KEY}`,
          );
        }
        if (hasA) {
          for (const [key, t] of [[VERA_A_KEY, veraA], [VERA_B_KEY, veraB]] as const) {
            const src = files.tensors.get(key)!;
            if (src.shape.join() !== t.shape.join()) {
              throw new Error(
                `${dir}/${ADAPTER_WEIGHTS}: ${key} has shape [${src.shape}], but r and the targeted ` +
                  `layers here need [${t.shape}]`,
              );
            }
            writeInto(t, src.data);
          }
        } else if (files.config.save_projection !== false) {
          throw new Error(
            `${dir}/${ADAPTER_WEIGHTS}: save_projection is set but ${VERA_A_KEY} / ${VERA_B_KEY} are missing`,
          );
        }
      },
    };
  },
};
