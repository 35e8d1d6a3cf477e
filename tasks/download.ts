/**
 * `deno task download`: models and data sets from the Hugging Face Hub into the standard Hugging
 * Face cache (tasks/lib/hub/hub.ts), printing the local paths at the end.
 *
 * ```
 * deno task download --model FacebookAI/roberta-base
 * deno task download --dataset glue --config sst2
 * deno task download --dataset commonsense commonsense_170k
 * deno task download --dataset org/name --include "*.json"
 * ```
 *
 * @module
 */
import { parseFlags, runCli, UsageError } from "./lib/cli/runner.ts";
import {
  downloadCommonsense,
  downloadGlue,
  downloadModel,
  fetchSnapshot,
  GLUE_CONFIGS,
  type HubOptions,
  type SnapshotResult,
} from "./lib/hub/hub.ts";

const USAGE = `usage: deno task download [--model REPO]... [--revision REV]
       [--dataset glue --config TASK] [--dataset commonsense NAME] [--dataset ORG/NAME [--include GLOB]...]
       [--offline] [--cache-dir DIR] [--quiet]
  --model REPO        config.json, tokenizer files and *.safetensors (never .bin/.pt/.h5 weights)
  --dataset glue      nyu-mll/glue's parquet conversion (refs/convert/parquet), --config one of
                      ${GLUE_CONFIGS.join(", ")}
  --dataset commonsense NAME   LLM-Adapters' JSON (commonsense_170k from the Hub; test sets by hand)
  --offline           resolve from the cache only (also HF_HUB_OFFLINE=1)
environment: HF_HUB_CACHE / HF_HOME (cache), HF_ENDPOINT, HF_TOKEN`;

interface DownloadFlags {
  model?: string[];
  dataset?: string;
  config?: string;
  revision?: string;
  include?: string[];
  offline?: boolean;
  "cache-dir"?: string;
  quiet?: boolean;
  help?: boolean;
}

/** Parse the flags, download, and return the report listing every local path; throws UsageError on bad flags. */
export async function downloadCli(
  args: readonly string[],
  options: HubOptions = {},
): Promise<string> {
  const { values, positionals }: { values: DownloadFlags; positionals: string[] } = parseFlags(
    args,
    {
      model: { type: "string", multiple: true },
      dataset: { type: "string" },
      config: { type: "string" },
      revision: { type: "string" },
      include: { type: "string", multiple: true },
      offline: { type: "boolean" },
      "cache-dir": { type: "string" },
      quiet: { type: "boolean", short: "q" },
      help: { type: "boolean", short: "h" },
    } as const,
    { command: "download", positionals: 1 },
  );
  if (values.help) return USAGE;
  const models = values.model ?? [];
  if (models.length === 0 && values.dataset === undefined) {
    throw new UsageError(
      `nothing to download: give --model and/or --dataset (see deno task download --help)`,
    );
  }
  const isCommonsense = values.dataset === "commonsense";
  if (positionals.length > (isCommonsense ? 1 : 0)) {
    throw new UsageError(
      `unexpected argument "${positionals.at(-1)}" (see deno task download --help)`,
    );
  }
  if (values.config !== undefined && values.dataset !== "glue") {
    throw new UsageError(`--config: only used with --dataset glue (see deno task download --help)`);
  }
  // Every usage check before the first download, so a typo costs no transfer.
  if (values.dataset === "glue" && values.config === undefined) {
    throw new UsageError(`--dataset glue: missing --config TASK (see deno task download --help)`);
  }
  if (isCommonsense && positionals[0] === undefined) {
    throw new UsageError(`--dataset commonsense: missing NAME (see deno task download --help)`);
  }
  if (
    values.dataset !== undefined && values.dataset !== "glue" && !isCommonsense &&
    !values.dataset.includes("/")
  ) {
    throw new UsageError(
      `--dataset: expected glue, commonsense or a Hub id "org/name", got "${values.dataset}"`,
    );
  }
  const hubOptions: HubOptions = {
    ...options,
    ...(values.offline ? { offline: true } : {}),
    ...(values["cache-dir"] !== undefined ? { cacheDir: values["cache-dir"] } : {}),
    ...(values.quiet ? { progress: false } : {}),
  };

  const results: { kind: string; result: SnapshotResult }[] = [];
  for (const repo of models) {
    results.push({ kind: "model", result: await downloadModel(repo, values.revision, hubOptions) });
  }
  if (values.dataset === "glue") {
    if (values.config === undefined) {
      throw new UsageError(`--dataset glue: missing --config TASK (see deno task download --help)`);
    }
    results.push({
      kind: `glue/${values.config}`,
      result: await downloadGlue(values.config, hubOptions),
    });
  } else if (isCommonsense) {
    const name = positionals[0];
    if (name === undefined) {
      throw new UsageError(`--dataset commonsense: missing NAME (see deno task download --help)`);
    }
    results.push({
      kind: `commonsense/${name}`,
      result: await downloadCommonsense(name, hubOptions),
    });
  } else if (values.dataset !== undefined) {
    if (!values.dataset.includes("/")) {
      throw new UsageError(
        `--dataset: expected glue, commonsense or a Hub id "org/name", got "${values.dataset}"`,
      );
    }
    results.push({
      kind: "dataset",
      result: await fetchSnapshot({
        repoId: values.dataset,
        repoType: "dataset",
        revision: values.revision,
        allowPatterns: values.include,
      }, hubOptions),
    });
  }
  return results.map(({ kind, result }) =>
    [
      `${kind} ${result.repoId}@${result.revision} (commit ${
        result.commit.slice(0, 12)
      }): ${result.snapshotDir}`,
      ...result.files.map((f) => `  ${result.snapshotDir}/${f}`),
    ].join("\n")
  ).join("\n");
}

if (import.meta.main) {
  await runCli(async () => {
    console.log(await downloadCli(Deno.args));
  });
}
