/**
 * Library side of `deno task merge`: base model + any method's output → one complete Hugging Face
 * model folder (model.safetensors with the base model's names, config.json, tokenizer files).
 *
 * What `--adapter` may name: a PEFT adapter folder (ours or PyTorch PEFT's), one of this
 * toolkit's own formats (full, GaLore, LISA, SIFT: `<method>_config.json`), a complete model
 * folder (a run's `model/`, which is already merged and is re-written as it is), or a run folder
 * (its `model/` when it has one, else its `adapter/`).
 *
 * @module
 */
import { join } from "node:path";
import { init } from "../../../ops/mod.ts";
import { loadModel } from "../../../models/load.ts";
import { openSafetensors } from "../../../models/safetensors.ts";
import { readAdapter } from "../../../methods/peft.ts";
import { loadAdapter } from "../../../methods/registry.ts";
import { GALORE_WEIGHTS } from "../../../methods/galore.ts";
import { LISA_WEIGHTS } from "../../../methods/lisa.ts";
import { SIFT_WEIGHTS } from "../../../methods/sift.ts";
import { modelReference, resolveModelDir } from "../hub/model_source.ts";
import { resolveTask } from "../data/pipeline.ts";
import { hasModelFiles, type ModelHead, writeModelFolder } from "./model_folder.ts";

/** Heads an adapter carries decide the label count of the merged model. */
const HEAD_ROWS = ["classifier.out_proj.weight", "classifier.weight", "score.weight"];

/** The weight files of the own formats (full, GaLore, LISA, SIFT), as each method names it. */
const OWN_WEIGHTS = ["model.safetensors", GALORE_WEIGHTS, LISA_WEIGHTS, SIFT_WEIGHTS];

/** What {@link mergeAdapter} wrote. */
export interface MergeResult {
  /** Tensors in the written model.safetensors. */
  tensors: number;
  /** The folder `--adapter` resolved to (a run folder resolves to its model/ or adapter/). */
  source: string;
  /** "adapter": weights were folded in; "model": the source already was a full model. */
  kind: "adapter" | "model";
}

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

/** A run folder's output (model/ first: it is already complete), or `dir` itself. */
async function outputOf(dir: string): Promise<string> {
  if (!(await Deno.stat(dir).then((s) => s.isDirectory, () => false))) {
    throw new Error(
      `--adapter ${dir}: no such folder (expected an adapter folder, a model folder or a run folder)`,
    );
  }
  if (await exists(join(dir, "summary.json")) || await exists(join(dir, "checkpoint"))) {
    for (const sub of ["model", "adapter"]) {
      if (await exists(join(dir, sub))) return join(dir, sub);
    }
    throw new Error(`${dir}: a run folder without model/ or adapter/ (did the run finish?)`);
  }
  return dir;
}

/**
 * The labels of the run that wrote `dir` (its config.json's task, one folder up), so a merged
 * classifier keeps names like negative/positive; null when no run config is there.
 */
async function runHead(dir: string): Promise<ModelHead | null> {
  try {
    const run = JSON.parse(await Deno.readTextFile(join(dir, "..", "config.json")));
    if (typeof run?.task !== "string") return null;
    const task = resolveTask(run.task);
    if (task.kind !== "glue") return null;
    return { labels: task.spec.labelNames, regression: task.spec.isRegression };
  } catch {
    // No run config beside the adapter (a PEFT download, a copied folder): generic labels.
    return null;
  }
}

/**
 * Merge the method output `adapter` into `model` (a repo id or folder) and write a complete
 * model folder to `output`, atomically.
 */
export async function mergeAdapter(
  model: string,
  adapter: string,
  output: string,
  offline = false,
): Promise<MergeResult> {
  await init();
  const source = await outputOf(adapter);
  const head = await runHead(source);
  if (await hasModelFiles(source)) {
    // Already a full model (a run's model/): load it to check it, and write it with its labels.
    const loaded = await loadModel(source, { classificationHead: head !== null });
    try {
      const tensors = await writeModelFolder(loaded, output, {
        sourceDir: source,
        head: head ?? undefined,
        label: "merge",
      });
      return { tensors, source, kind: "model" };
    } finally {
      loaded.model.dispose();
    }
  }
  const dir = await resolveModelDir(model, offline);
  const files = await readAdapterWeights(source);
  const rows = files ? HEAD_ROWS.map((n) => files.get(n)).find((s) => s) : undefined;
  const numLabels = head ? (head.regression ? 1 : head.labels.length) : rows?.[0];
  const loaded = await loadModel(dir, { numLabels, classificationHead: numLabels !== undefined });
  try {
    const isLm = await readTaskType(source) === "CAUSAL_LM";
    const a = await loadAdapter(loaded.model, source, {
      lrMultipliers: {},
      weightDecay: 0,
      taskType: isLm ? "CAUSAL_LM" : "SEQ_CLS",
      baseModel: await modelReference(model),
      seed: 0,
    });
    a.merge();
    const generic = numLabels === undefined ? undefined : {
      labels: Array.from({ length: numLabels }, (_, i) => `LABEL_${i}`),
    };
    const tensors = await writeModelFolder(loaded, output, {
      sourceDir: dir,
      head: head ?? generic,
      nameOrPath: await modelReference(model),
      label: "merge",
    });
    return { tensors, source, kind: "adapter" };
  } finally {
    loaded.model.dispose();
  }
}

/** Shapes of the tensors an adapter folder saves, by module name (PEFT prefix removed). */
async function readAdapterWeights(dir: string): Promise<Map<string, number[]> | null> {
  if (await exists(join(dir, "adapter_config.json"))) {
    const files = await readAdapter(dir);
    return new Map([...files.tensors].map(([n, t]) => [n, [...t.shape]]));
  }
  // Own formats keep the head under its own name in their one safetensors file.
  for (const f of OWN_WEIGHTS) {
    const path = join(dir, f);
    if (!(await exists(path))) continue;
    const reader = await openSafetensors(path);
    try {
      return new Map(reader.names.map((n) => [n, [...reader.info(n).shape]]));
    } finally {
      reader.close();
    }
  }
  return null;
}

/** PEFT's task_type of an adapter folder, or null for our own formats. */
async function readTaskType(dir: string): Promise<string | null> {
  try {
    return JSON.parse(await Deno.readTextFile(join(dir, "adapter_config.json"))).task_type ?? null;
  } catch {
    return null;
  }
}
