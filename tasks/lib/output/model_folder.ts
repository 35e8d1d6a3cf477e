/**
 * A complete Hugging Face model folder from a model in memory: `config.json` (the base model's,
 * with the task's labels and the class transformers instantiates), `model.safetensors` with
 * transformers' parameter names, and the base model's tokenizer files. transformers'
 * `from_pretrained`, and this toolkit's `evaluate`, `generate` and `merge`, open it as it is.
 *
 * @module
 */
import { join } from "node:path";
import { writeSafetensors } from "../../../models/safetensors.ts";
import type { LoadedModel } from "../../../models/load.ts";
import { toEntries, writeTextAtomic } from "../../../methods/peft.ts";
import { writeDirAtomic } from "../train/checkpoint.ts";

/**
 * Files a Hugging Face model folder may carry for its tokenizer and generation defaults; those the
 * source folder has are copied (BERT's vocab.txt, BPE's vocab.json + merges.txt, SentencePiece's
 * tokenizer.model, the fast tokenizer.json, …).
 */
export const TOKENIZER_FILES: readonly string[] = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "added_tokens.json",
  "vocab.json",
  "merges.txt",
  "vocab.txt",
  "tokenizer.model",
  "chat_template.jinja",
  "generation_config.json",
];

/** Copy the {@link TOKENIZER_FILES} that `from` has into `to`. */
export async function copyTokenizerFiles(from: string, to: string): Promise<void> {
  for (const f of TOKENIZER_FILES) {
    await Deno.copyFile(join(from, f), join(to, f)).catch((e) => {
      if (e instanceof Deno.errors.NotFound) return;
      throw new Error(`${join(from, f)}: cannot copy (${e instanceof Error ? e.message : e})`);
    });
  }
}

/** What the task says about the head of the model being written. */
export interface ModelHead {
  /** Class names by label id (classification); empty with `regression`. */
  labels: readonly string[];
  /** One real-valued output (STS-B): problem_type "regression", one generic label. */
  regression?: boolean;
}

/** Options of {@link writeModelFolder}. */
export interface ModelFolderOptions {
  /** The base model's folder: its config.json is the template, its tokenizer files are copied. */
  sourceDir: string;
  /** The sequence-classification head's labels; absent: a causal LM (decoders) or the base head. */
  head?: ModelHead;
  /** Written as config.json's `_name_or_path` (a repo id or an absolute folder). */
  nameOrPath?: string;
  /** Name of the write's fault points (the reliability tests); default the folder's name. */
  label?: string;
}

/**
 * The transformers class of `loaded` with or without a classification head, as config.json's
 * `architectures` names it (e.g. RobertaForSequenceClassification, LlamaForCausalLM).
 */
export function architectureName(loaded: LoadedModel, classification: boolean): string {
  const family: Record<string, string> = {
    roberta: "Roberta",
    bert: "Bert",
    llama: "Llama",
    mistral: "Mistral",
  };
  const kind = family[loaded.config.model_type];
  if (!kind) {
    throw new Error(`no transformers class known for model_type ${loaded.config.model_type}`);
  }
  if (loaded.kind === "encoder") return `${kind}ForSequenceClassification`;
  return classification ? `${kind}ForSequenceClassification` : `${kind}ForCausalLM`;
}

/**
 * The label fields of config.json as transformers writes them: `id2label` with string keys,
 * `label2id`, and problem_type for regression. num_labels is not written: transformers derives
 * it from id2label, and a stale num_labels beside it is an error there.
 */
export function labelFields(head: ModelHead): Record<string, unknown> {
  const names = head.regression ? ["LABEL_0"] : head.labels.length ? head.labels : [];
  if (names.length === 0) throw new Error("a classification head needs at least one label name");
  const out: Record<string, unknown> = {
    id2label: Object.fromEntries(names.map((n, i) => [String(i), n])),
    label2id: Object.fromEntries(names.map((n, i) => [n, i])),
  };
  if (head.regression) out.problem_type = "regression";
  else if (names.length > 1) out.problem_type = "single_label_classification";
  return out;
}

/**
 * Write `loaded`'s current weights as a Hugging Face model folder at `dir`, atomically (a
 * temporary folder renamed into place, so a killed run leaves the old folder or none). Returns
 * the number of tensors written.
 */
export async function writeModelFolder(
  loaded: LoadedModel,
  dir: string,
  options: ModelFolderOptions,
): Promise<number> {
  const configFile = join(options.sourceDir, "config.json");
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(await Deno.readTextFile(configFile));
  } catch (e) {
    throw new Error(
      `${configFile}: cannot read the base config (${e instanceof Error ? e.message : e})`,
    );
  }
  const params = loaded.model.namedParameters();
  // Labels the base config carried describe another head; the task's replace them.
  for (const key of ["num_labels", "id2label", "label2id", "problem_type"]) delete config[key];
  const classification = options.head !== undefined || loaded.kind === "encoder";
  if (options.head) Object.assign(config, labelFields(options.head));
  else if (loaded.kind === "encoder") {
    const rows = params.find(([n]) =>
      n === "classifier.out_proj.weight" || n === "classifier.weight"
    );
    const n = rows?.[1].shape[0] ?? 2;
    Object.assign(
      config,
      labelFields({ labels: Array.from({ length: n }, (_, i) => `LABEL_${i}`) }),
    );
  }
  config.architectures = [architectureName(loaded, classification)];
  config.torch_dtype = "float32";
  if (options.nameOrPath) config._name_or_path = options.nameOrPath;
  const entries = await toEntries(params);
  await writeDirAtomic(dir, async (tmp) => {
    await writeSafetensors(join(tmp, "model.safetensors"), entries, { format: "pt" });
    await writeTextAtomic(join(tmp, "config.json"), JSON.stringify(config, null, 2) + "\n");
    await copyTokenizerFiles(options.sourceDir, tmp);
  }, options.label);
  return params.length;
}

/** True when `dir` holds a complete model (config.json and model.safetensors). */
export async function hasModelFiles(dir: string): Promise<boolean> {
  const has = (f: string) => Deno.stat(join(dir, f)).then((s) => s.isFile, () => false);
  return await has("config.json") && await has("model.safetensors");
}
