/**
 * Library side of `deno task merge`: base model + adapter → one full Hugging Face checkpoint
 * (model.safetensors with the base model's names, config.json, tokenizer files).
 *
 * @module
 */
import { join } from "node:path";
import { writeDirAtomic } from "../train/checkpoint.ts";
import { init } from "../../../ops/mod.ts";
import { loadModel } from "../../../models/load.ts";
import { writeSafetensors } from "../../../models/safetensors.ts";
import { readAdapter, toEntries, writeTextAtomic } from "../../../methods/peft.ts";
import { loadAdapter } from "../../../methods/registry.ts";
import { resolveModelDir } from "../hub/model_source.ts";

const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "vocab.json",
  "merges.txt",
  "special_tokens_map.json",
  "generation_config.json",
];

/** Heads an adapter carries decide the label count of the merged model. */
const HEAD_ROWS = ["classifier.out_proj.weight", "classifier.weight", "score.weight"];

/** Merge `adapter` into `model` and write the result to `output`. Returns the tensor count. */
export async function mergeAdapter(
  model: string,
  adapter: string,
  output: string,
  offline = false,
): Promise<number> {
  await init();
  const dir = await resolveModelDir(model, offline);
  const files = await readAdapter(adapter);
  const head = HEAD_ROWS.map((n) => files.tensors.get(n)).find((t) => t);
  const numLabels = head?.shape[0];
  const loaded = await loadModel(dir, { numLabels, classificationHead: numLabels !== undefined });
  const taskType = files.config.task_type === "CAUSAL_LM" ? "CAUSAL_LM" : "SEQ_CLS";
  const a = await loadAdapter(loaded.model, adapter, {
    lrMultipliers: {},
    weightDecay: 0,
    taskType,
    baseModel: model,
    seed: 0,
  });
  a.merge();
  // Written into a temporary folder and renamed: a failure or kill never leaves a partial model.
  const params = loaded.model.namedParameters();
  await writeDirAtomic(output, async (tmp) => {
    await writeSafetensors(join(tmp, "model.safetensors"), await toEntries(params), {
      format: "pt",
    });
    const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
    if (numLabels !== undefined) {
      config.num_labels = numLabels;
      config.id2label = Object.fromEntries(
        [...Array(numLabels).keys()].map((i) => [String(i), `LABEL_${i}`]),
      );
      config.label2id = Object.fromEntries(
        [...Array(numLabels).keys()].map((i) => [`LABEL_${i}`, i]),
      );
      const kind = loaded.kind === "encoder"
        ? (loaded.config.model_type === "bert" ? "Bert" : "Roberta")
        : "Llama";
      config.architectures = [`${kind}ForSequenceClassification`];
    }
    await writeTextAtomic(join(tmp, "config.json"), JSON.stringify(config, null, 2) + "\n");
    for (const f of TOKENIZER_FILES) {
      await Deno.copyFile(join(dir, f), join(tmp, f)).catch(() => {});
    }
  }, "merge");
  loaded.model.dispose();
  return params.length;
}
