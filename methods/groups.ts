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

/** Every trainable tensor of `groups` with its full name, in group order. */
export function namedTrainable(groups: readonly ParamGroupSpec[]): [string, Tensor][] {
  return groups.flatMap((g) => g.names.map((n, i): [string, Tensor] => [n, g.params[i]]));
}
