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

/** One adapter tensor on the host. */
export interface HostTensor {
  /** Its shape. */
  shape: number[];
  /** Its values, widened to f32. */
  data: Float32Array;
}

/**
 * The tensors of an adapter file, remembering which ones a method asked for (`get`), so a loader
 * can refuse tensors nothing used: a 5-layer adapter on a 2-layer model is an error, not a model
 * that silently lost three layers.
 */
export class AdapterTensors extends Map<string, HostTensor> {
  /** Keys read through `get`. */
  readonly used: Set<string> = new Set();

  /** The tensor `key`, marked as used. */
  override get(key: string): HostTensor | undefined {
    this.used.add(key);
    return super.get(key);
  }

  /** Keys never read through `get`, in file order. */
  unused(): string[] {
    return [...this.keys()].filter((k) => !this.used.has(k));
  }
}

/** A PEFT adapter folder read back: its config and its tensors (host f32, by module name). */
export interface AdapterFiles {
  /** adapter_config.json as parsed JSON (PEFT's snake_case keys). */
  config: Record<string, unknown>;
  /** Tensors keyed without the `base_model.model.` prefix. */
  tensors: AdapterTensors;
  /** The weights file they came from (named in errors). */
  file: string;
}

/** Open audits of {@link auditAdapterReads}: every readAdapter result is recorded in each. */
const audits: AdapterFiles[][] = [];

/**
 * Run `load` and return every adapter folder it read through {@link readAdapter}, so the caller
 * can check that each tensor was used. Loads run one at a time in our CLIs; an audit records
 * whatever is read while it is open.
 */
export async function auditAdapterReads(load: () => Promise<void>): Promise<AdapterFiles[]> {
  const seen: AdapterFiles[] = [];
  audits.push(seen);
  try {
    await load();
  } finally {
    audits.splice(audits.indexOf(seen), 1);
  }
  return seen;
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
  const file = join(dir, ADAPTER_WEIGHTS);
  const reader = await openSafetensors(file).catch((e) => {
    throw new Error(
      e instanceof Deno.errors.NotFound
        ? `${file}: missing; an adapter folder holds ${ADAPTER_CONFIG} and ${ADAPTER_WEIGHTS}`
        : `${file}: cannot read the adapter weights (${(e as Error).message})`,
    );
  });
  const tensors = new AdapterTensors();
  try {
    for (const name of reader.names) {
      const key = name.startsWith(PEFT_PREFIX) ? name.slice(PEFT_PREFIX.length) : name;
      // PEFT versions before 0.7 kept the adapter name in keys; drop a ".default" segment.
      const clean = key.replace(/\.default(?=\.)/g, "");
      const data = await reader.readF32(name);
      // The values are on the host here already: checking them costs one pass, no GPU trip.
      const bad = data.findIndex((v) => !Number.isFinite(v));
      if (bad >= 0) {
        throw new Error(
          `${file}: tensor ${name} holds ${data[bad]} at element ${bad} (${
            data.reduce((c, v) => c + (Number.isFinite(v) ? 0 : 1), 0)
          } non-finite values); the adapter is corrupt or its training diverged`,
        );
      }
      tensors.set(clean, { shape: [...reader.info(name).shape], data });
    }
  } finally {
    reader.close();
  }
  const files = { config, tensors, file };
  for (const audit of audits) audit.push(files);
  return files;
}

/** Copy host values into an existing parameter in place (same buffer), checking the shape. */
export function loadInto(files: AdapterFiles, name: string, target: Tensor): void {
  const src = files.tensors.get(name);
  if (!src) {
    throw new Error(
      `${files.file}: adapter has no tensor ${PEFT_PREFIX}${name} (shape [${
        target.shape.join(", ")
      }]), which its adapter_config.json implies; the file is incomplete or for another config`,
    );
  }
  if (src.shape.join() !== target.shape.join()) {
    throw new Error(
      `${files.file}: tensor ${PEFT_PREFIX}${name} has shape [${
        src.shape.join(", ")
      }], the model expects [${target.shape.join(", ")}]`,
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

/**
 * Restore base-layer biases an adapter trained with PEFT's `bias` option, into the model in place:
 * "lora_only" / "vera_only" saved `<adapted module>.base_layer.bias` for the adapted layers, "all"
 * every `.bias` of the model (LayerNorms included). Our adapted layers keep their base under
 * `base_layer`, so each key names a parameter of `model` exactly. The head's own copies that
 * PEFT's modules_to_save wrapper adds under "all" (`<head>.original_module.…`, the untrained
 * original; `<head>.modules_to_save.<adapter>.…`, a copy of the saved head) are not parameters of
 * the fine-tuned model and are passed over. Returns the names written.
 */
export function loadTrainedBiases(
  model: Module,
  files: AdapterFiles,
  mode: "all" | "lora_only" | "vera_only",
): string[] {
  const params = new Map(model.namedParameters());
  const written: string[] = [];
  for (const key of files.tensors.unused()) {
    if (!key.endsWith(".bias") || /\.(lora_B|vera_lambda_b)\./.test(key)) continue;
    if (mode === "all" && /\.(original_module|modules_to_save)\./.test(key)) {
      files.tensors.get(key); // accounted for: not part of the fine-tuned model
      continue;
    }
    if (mode !== "all" && !key.endsWith(".base_layer.bias")) continue;
    const target = params.get(key);
    if (!target) continue; // left unused: the caller names it
    loadInto(files, key, target);
    written.push(key);
  }
  return written;
}
