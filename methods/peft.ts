/**
 * The Hugging Face PEFT file format: `adapter_config.json` + `adapter_model.safetensors`, tensor
 * keys `base_model.model.<module>.<param>` (adapter name "default" stripped, as PEFT's
 * get_peft_model_state_dict does), task-head modules saved whole under their own names
 * (modules_to_save).
 *
 * @module
 */
import { join } from "node:path";
import { f32ToF16, rt, type Tensor } from "../ops/mod.ts";
import { openSafetensors, type SafetensorsEntry, writeSafetensors } from "../models/safetensors.ts";
import type { Module } from "../models/module.ts";

/** File names PEFT uses. */
export const ADAPTER_CONFIG = "adapter_config.json";
/** File names PEFT uses. */
export const ADAPTER_WEIGHTS = "adapter_model.safetensors";
/** The key prefix of every PEFT tensor. */
export const PEFT_PREFIX = "base_model.model.";

/** Write text atomically (temp file in the same folder, then rename). */
export async function writeTextAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.writeTextFile(tmp, text);
    await Deno.rename(tmp, path);
  } catch (e) {
    // A full disk must not leave the half-written tmp behind; the message names the file.
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`${path}: cannot write (${e instanceof Error ? e.message : e})`);
  }
}

/** Host copies of tensors, keyed by their file names, ready for writeSafetensors. */
export async function toEntries(
  tensors: readonly [string, Tensor][],
  dtype: "F32" | "F16" = "F32",
): Promise<SafetensorsEntry[]> {
  const out: SafetensorsEntry[] = [];
  for (const [name, t] of tensors) {
    const values = (await t.read()) as Float32Array;
    out.push({
      name,
      dtype,
      shape: [...t.shape],
      data: dtype === "F16" ? f32ToF16(values) : values,
    } as SafetensorsEntry);
  }
  return out;
}

/** Write a PEFT adapter folder. */
export async function writeAdapter(
  dir: string,
  config: Record<string, unknown>,
  tensors: readonly [string, Tensor][],
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const entries = await toEntries(tensors.map(([n, t]) => [`${PEFT_PREFIX}${n}`, t]));
  await writeSafetensors(join(dir, ADAPTER_WEIGHTS), entries, { format: "pt" });
  await writeTextAtomic(join(dir, ADAPTER_CONFIG), JSON.stringify(config, null, 2) + "\n");
}

/** A PEFT adapter folder read back: its config and its tensors (host f32, by module name). */
export interface AdapterFiles {
  /** adapter_config.json as parsed JSON (PEFT's snake_case keys). */
  config: Record<string, unknown>;
  /** Tensors keyed without the `base_model.model.` prefix. */
  tensors: Map<string, { shape: number[]; data: Float32Array }>;
}

/** Read a PEFT adapter folder (written by this toolkit or by PEFT). */
export async function readAdapter(dir: string): Promise<AdapterFiles> {
  const configPath = join(dir, ADAPTER_CONFIG);
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(await Deno.readTextFile(configPath));
  } catch (e) {
    throw new Error(
      `${configPath}: cannot read the adapter config (${e instanceof Error ? e.message : e})`,
    );
  }
  if (!config || typeof config !== "object" || typeof config.peft_type !== "string") {
    throw new Error(`${configPath}: expected a PEFT adapter config with a "peft_type" field`);
  }
  const weightsPath = join(dir, ADAPTER_WEIGHTS);
  const reader = await openSafetensors(weightsPath).catch((e) => {
    throw new Error(
      e instanceof Deno.errors.NotFound
        ? `${weightsPath}: missing; an adapter folder holds ${ADAPTER_CONFIG} and ${ADAPTER_WEIGHTS}`
        : `${weightsPath}: cannot read the adapter weights (${(e as Error).message})`,
    );
  });
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  try {
    for (const name of reader.names) {
      const key = name.startsWith(PEFT_PREFIX) ? name.slice(PEFT_PREFIX.length) : name;
      // PEFT versions before 0.7 kept the adapter name in keys; drop a ".default" segment.
      const clean = key.replace(/\.default(?=\.)/g, "");
      tensors.set(clean, { shape: [...reader.info(name).shape], data: await reader.readF32(name) });
    }
  } finally {
    reader.close();
  }
  return { config, tensors };
}

/** Copy host values into an existing parameter in place (same buffer), checking the shape. */
export function loadInto(files: AdapterFiles, name: string, target: Tensor): void {
  const src = files.tensors.get(name);
  if (!src) throw new Error(`adapter has no tensor ${PEFT_PREFIX}${name}`);
  if (src.shape.join() !== target.shape.join()) {
    throw new Error(
      `adapter tensor ${PEFT_PREFIX}${name} has shape [${src.shape}], the model expects [${target.shape}]`,
    );
  }
  writeInto(target, src.data);
}

/** Overwrite a contiguous float tensor's values from the host. */
export function writeInto(target: Tensor, values: Float32Array): void {
  if (!target.isContiguous) throw new Error(`writeInto: ${target} is not contiguous`);
  if (target.dtype === "f16") rt().write(target.buffer, target.offset * 2, f32ToF16(values));
  else if (target.dtype === "f32") rt().write(target.buffer, target.offset * 4, values);
  else throw new Error(`writeInto: ${target} is not a float tensor`);
}

/** Named parameters of the head modules (modules_to_save), with full names. */
export function headParameters(model: Module, heads: readonly string[]): [string, Tensor][] {
  const out: [string, Tensor][] = [];
  for (const h of heads) {
    let m: Module;
    try {
      m = model.getModule(h);
    } catch {
      continue; // e.g. "score" on an encoder: PEFT lists both and keeps those present
    }
    out.push(...m.namedParameters(h));
  }
  return out;
}
