/**
 * Parameter groups from named trainable tensors: per-module learning-rate multipliers (matched on
 * any ancestor module of a parameter, by name or suffix) and weight decay that skips biases and
 * normalisation weights, as Hugging Face's Trainer does.
 *
 * @module
 */
import type { Tensor } from "../ops/mod.ts";
import { matchesTarget } from "../models/module.ts";
import type { ParamGroupSpec } from "./types.ts";

/** True for parameters the Trainer exempts from weight decay. */
export function isNoDecay(name: string): boolean {
  return /(^|\.)bias$/.test(name) || /layernorm|layer_norm|(^|\.)norm(\.|$)|_norm\./i.test(name);
}

/** The multiplier for `name`: the one whose key matches an ancestor module (1 when none). */
export function lrMultiplierFor(name: string, multipliers: Record<string, number>): number {
  const parts = name.split(".");
  let found: [string, number] | null = null;
  for (let i = parts.length - 1; i >= 1; i--) {
    const ancestor = parts.slice(0, i).join(".");
    for (const [key, m] of Object.entries(multipliers)) {
      if (matchesTarget(ancestor, key)) {
        if (found && found[0] !== key && found[1] !== m) {
          throw new Error(
            `learning-rate multipliers "${found[0]}" and "${key}" both match parameter ${name}`,
          );
        }
        found ??= [key, m];
      }
    }
  }
  return found ? found[1] : 1;
}

/**
 * Group named trainable tensors by (lr multiplier, decay). Every multiplier key must match at
 * least one parameter, so a typo is an error rather than a silent no-op.
 */
export function buildGroups(
  label: string,
  named: readonly [string, Tensor][],
  multipliers: Record<string, number>,
  weightDecay: number,
): ParamGroupSpec[] {
  const groups = new Map<string, ParamGroupSpec>();
  const usedKeys = new Set<string>();
  for (const [name, t] of named) {
    const m = lrMultiplierFor(name, multipliers);
    for (const key of Object.keys(multipliers)) {
      if (name.split(".").some((_, i, parts) => matchesTarget(parts.slice(0, i).join("."), key))) {
        usedKeys.add(key);
      }
    }
    const wd = isNoDecay(name) ? 0 : weightDecay;
    const id = `${m}|${wd}`;
    let g = groups.get(id);
    if (!g) {
      g = {
        label: `${label}${m !== 1 ? ` ×${m}` : ""}${
          wd === 0 && weightDecay !== 0 ? " (no decay)" : ""
        }`,
        names: [],
        params: [],
        lrMultiplier: m,
        weightDecay: wd,
      };
      groups.set(id, g);
    }
    g.names.push(name);
    g.params.push(t);
  }
  const unused = Object.keys(multipliers).filter((k) => !usedKeys.has(k));
  if (unused.length) {
    throw new Error(
      `learning-rate multiplier for "${unused.join('", "')}" matches no trainable parameter ` +
        `(trainable modules look like ${named.slice(0, 3).map(([n]) => n).join(", ")})`,
    );
  }
  return [...groups.values()];
}

/** Modules the seed paper's W_v rule speeds up: RoBERTa/BERT's `value`, LLaMA's `v_proj`. */
const VALUE_MODULES = ["value", "v_proj"];

/**
 * True when the W_v rule of Yao et al. (2410.02247) gives `name` the λ rate: a parameter of a value
 * projection (any tensor below a module named `value` / `v_proj`, the adapter's A and B included)
 * or any trainable vector (a 1-D tensor: biases, LayerNorm weights, DoRA magnitudes, VeRA's λ
 * vectors). SIFT's sparse values are 1-D only in storage (they are entries of a matrix), so they
 * follow their module's name alone.
 */
export function takesValueRate(name: string, t: Tensor): boolean {
  const parts = name.split(".");
  const inValue = parts.some((_, i) =>
    i > 0 && VALUE_MODULES.some((v) => matchesTarget(parts.slice(0, i).join("."), v))
  );
  const vector = t.rank === 1 && !/(^|\.)sift\.values$/.test(name);
  return inValue || vector;
}

/**
 * The seed paper's W_v learning-rate rule as the official code (EfficientFT / LightweightAtt,
 * `create_my_optimizer`) applies it: every tensor {@link takesValueRate} selects trains at
 * λ × its group's rate, everything else at the group's rate. Groups are split where needed;
 * weight decay is unchanged (biases and norm weights stay exempt). λ composes multiplicatively
 * with `lrMultipliers` and with LoRA+'s ratio. λ = 1 returns the groups unchanged.
 *
 * @example
 * ```ts
 * import { init, zeros } from "../ops/mod.ts";
 * import { applyValueLrRatio } from "./groups.ts";
 * await init();
 * const w = zeros([2, 2]), b = zeros([2]);
 * const groups = applyValueLrRatio([{
 *   label: "lora", names: ["q.lora_A.weight", "q.bias"], params: [w, b],
 *   lrMultiplier: 1, weightDecay: 0,
 * }], 4);
 * console.log(groups.map((g) => g.lrMultiplier)); // [1, 4]
 * ```
 */
export function applyValueLrRatio(
  groups: readonly ParamGroupSpec[],
  ratio: number,
): ParamGroupSpec[] {
  if (!(ratio > 0) || !Number.isFinite(ratio)) {
    throw new Error(`wvLrRatio: expected a positive number, got ${ratio}`);
  }
  if (ratio === 1) return [...groups];
  const out: ParamGroupSpec[] = [];
  for (const g of groups) {
    const fast = g.names.map((n, i) => takesValueRate(n, g.params[i]));
    const part = (want: boolean) => ({
      names: g.names.filter((_, i) => fast[i] === want),
      params: g.params.filter((_, i) => fast[i] === want),
    });
    const slow = part(false), quick = part(true);
    if (slow.names.length) out.push({ ...g, ...slow });
    if (quick.names.length) {
      out.push({
        ...g,
        ...quick,
        label: `${g.label} (W_v rule ×${ratio})`,
        lrMultiplier: g.lrMultiplier * ratio,
      });
    }
  }
  return out;
}

/** Every trainable tensor of `groups` with its full name, in group order. */
export function namedTrainable(groups: readonly ParamGroupSpec[]): [string, Tensor][] {
  return groups.flatMap((g) => g.names.map((n, i): [string, Tensor] => [n, g.params[i]]));
}
