/**
 * Where a model comes from: a local folder, or a Hugging Face repo id resolved through the
 * standard HF cache (downloading on first use unless offline).
 *
 * @module
 */
import { resolve } from "node:path";
import { downloadModel } from "./hub.ts";

/** True when `path` is a folder with a config.json. */
async function isModelFolder(path: string): Promise<boolean> {
  return await Deno.stat(`${path}/config.json`).then((s) => s.isFile, () => false);
}

/**
 * The local folder of `model`: itself when it is a model folder; else the HF cache snapshot of
 * the repo id, downloaded first unless `offline`. The error says how to work offline.
 */
export async function resolveModelDir(model: string, offline: boolean): Promise<string> {
  if (await isModelFolder(model)) return model;
  const isDir = await Deno.stat(model).then((s) => s.isDirectory, () => false);
  // A path (./x, ../x, /x, C:\x) or an existing folder is local: never ask the Hub for it.
  const looksLocal = isDir || model.startsWith(".") || model.startsWith("/") ||
    model.includes("\\");
  if (looksLocal) {
    throw new Error(
      isDir
        ? `model ${model}: the folder has no config.json (not a Hugging Face model folder)`
        : `model ${model}: no such folder (${resolve(model)})`,
    );
  }
  try {
    return (await downloadModel(model, undefined, { offline })).snapshotDir;
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new Error(
      `model ${model}: no local folder ${resolve(model)}, and not available as a Hub repo ` +
        `(${why}).\n` +
        "Offline? Use a local Hugging Face folder, e.g. convert the bundled stories260K:\n" +
        "  deno task convert --checkpoint ../shared/data/models/stories260K/stories260K.bin \\\n" +
        "    --tokenizer ../shared/data/models/stories260K/tok512.bin --output models-local/stories260K\n" +
        "  deno task train --model models-local/stories260K --task sst2 --data ../shared/data/glue/tsv",
    );
  }
}

/**
 * How a saved file should name `model` (adapter_config.json's base_model_name_or_path,
 * config.json's _name_or_path): a local folder as its absolute path, so the file still points at
 * it from any working directory; anything else is a Hub repo id and stays as given.
 */
export async function modelReference(model: string): Promise<string> {
  return await isModelFolder(model) ? resolve(model) : model;
}
