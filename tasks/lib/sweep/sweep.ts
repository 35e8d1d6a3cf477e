/**
 * Sweeps: a YAML grid of run settings expanded into cells (each a {@link RunConfig}), run one
 * after another or several at once, resumable after a kill, and split across GPUs or a Slurm
 * array job by `--shard i/n`.
 *
 * A sweep file:
 * ```yaml
 * name: demo
 * output: runs/demo              # each cell writes runs/demo/{cell id}
 * base: { model: FacebookAI/roberta-base, batchSize: 16 }
 * grid:                          # cartesian product; the first key varies slowest
 *   method: [lora, dora]
 *   task: [sst2, rte]
 *   seed: [0, 1, 2]
 *   targets: [[query, value], [query, key, value]]
 *   lrMultipliers: [{}, { value: 4 }]
 *   methodOptions.r: [8, 16]     # a dotted key sets one entry of a mapping field
 * tasks: { rte: { epochs: 20 } } # applied when the cell's task matches
 * methods:                       # applied when the cell's method matches (last, so they win)
 *   lora: { lr: 5e-4 }
 *   full: { lr: 2e-5, unset: [targets] } # `unset` puts settings back to their defaults
 * exclude:                       # partial assignments to skip
 *   - { method: dora, targets: [query, key, value] }
 * ```
 *
 * Settings merge in this order: base, the grid's values, `tasks[task]`, `methods[method]`. A key
 * is a RunConfig field; `field.rest` sets the entry `rest` (dots included, so module names like
 * `attention.self.value` work) of a mapping field (methodOptions, lrMultipliers). Cells that end
 * up with identical settings (an override flattening a grid axis) are run once.
 *
 * A cell's id is a readable slug plus a hash of its settings' canonical JSON
 * (`lora-sst2-s0-qv-v4-1a2b3c`): the same settings give the same id in every run and on every
 * machine, which is what makes resuming and sharding safe.
 *
 * State: every cell folder holds `sweep-cell.json` (running / failed with the error; done is the
 * presence of the trainer's summary.json, written atomically), and `{output}/sweep-state.json`
 * aggregates all cells. Since the truth lives per cell, a sweep killed with SIGKILL loses
 * nothing: finished cells are skipped, cells with a checkpoint continue from it, and shards on
 * several machines never write the same cell.
 *
 * @example
 * ```ts ignore
 * import { expandSweep, readSweep, runSweep } from "./sweep.ts";
 * const plan = expandSweep(await readSweep("sweeps/offline-stories.yaml"));
 * console.log(plan.cells.map((c) => c.id));
 * await runSweep(plan, { parallel: 1 });
 * ```
 *
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { isMap, isScalar, isSeq, LineCounter, type Node, parseDocument } from "yaml";
import { z } from "zod";
import { getMethod } from "../../../methods/registry.ts";
import { writeTextAtomic } from "../../../methods/peft.ts";
import type { ConfigSchema } from "../../../methods/types.ts";
import { type RunConfig, RunConfigSchema } from "../train/config.ts";
import { resolveTask } from "../data/pipeline.ts";
import { aliasValue, canonicalKey, suggestKey } from "../train/aliases.ts";
import { ownTaskDefault, usesOwnData } from "../data/own/own_task.ts";
import { type Summary, train } from "../train/trainer.ts";
import { acquireLock, type FolderLock, LockedError } from "../train/lock.ts";

// ---- the sweep file -------------------------------------------------------------------------------

const RUN_FIELDS = Object.keys(RunConfigSchema.shape);

/** RunConfig fields whose value is a mapping (the only ones a dotted key may reach into). */
const MAPPING_FIELDS: ReadonlySet<string> = new Set(
  RUN_FIELDS.filter((key) => {
    let s: z.ZodType = RunConfigSchema.shape[key as keyof typeof RunConfigSchema.shape];
    while (s instanceof z.ZodDefault || s instanceof z.ZodOptional) s = s.unwrap() as z.ZodType;
    return s instanceof z.ZodRecord;
  }),
);

/** Why `key` cannot name a setting in `where`, or null when it can. */
function settingKeyProblem(
  key: string,
  where: "base" | "grid" | "tasks" | "methods" | "exclude",
): string | null {
  const dot = key.indexOf(".");
  const field = dot < 0 ? key : key.slice(0, dot);
  if (!RUN_FIELDS.includes(field)) {
    const hint = suggestKey(field);
    return hint
      ? `unknown run setting "${field}"; did you mean "${hint}"?`
      : `unknown run setting "${field}"; expected one of ${RUN_FIELDS.join(", ")}`;
  }
  if (dot >= 0 && (!MAPPING_FIELDS.has(field) || dot === key.length - 1)) {
    return `a dotted key must be "field.entry" with field one of ${[...MAPPING_FIELDS].join(", ")}`;
  }
  if (field === "output" && where !== "exclude") {
    return "the sweep sets each cell's output to {output}/{cell id}; use the sweep's top-level output";
  }
  if (field === "method" && where === "methods") {
    return "a per-method override cannot change the method";
  }
  if (field === "task" && where === "tasks") return "a per-task override cannot change the task";
  return null;
}

const Settings = z.record(z.string(), z.unknown());

/** The key of a per-task or per-method override that removes settings (back to the default). */
const UNSET = "unset";

/** A validated sweep file. */
export interface SweepSpec {
  /** A short name (letters, digits, `.`, `_`, `-`): job names, log lines. */
  name: string;
  /** Root folder of the cells' run folders and of sweep-state.json. */
  output: string;
  /** Settings shared by every cell. */
  base: Record<string, unknown>;
  /** Lists of values per setting key; the cells are their cartesian product. */
  grid: Record<string, unknown[]>;
  /** Per-task overrides (settings and an optional `unset` list), when the cell's task matches. */
  tasks: Record<string, Record<string, unknown>>;
  /** Per-method overrides, applied last, when the cell's method matches. */
  methods: Record<string, Record<string, unknown>>;
  /** Partial assignments: a cell matching every key of one of them is skipped. */
  exclude: Record<string, unknown>[];
}

/** The sweep file schema (see the module documentation for the meaning of each key). */
export const SweepSchema: ConfigSchema<SweepSpec> = z.object({
  /** A short name (letters, digits, `.`, `_`, `-`): job names, log lines. */
  name: z.string().regex(
    /^[A-Za-z0-9][A-Za-z0-9._-]*$/,
    "expected a name of letters, digits, '.', '_' and '-'",
  ),
  /** Root folder of the cells' run folders and of sweep-state.json. */
  output: z.string().min(1),
  /** Settings shared by every cell. */
  base: Settings.default({}),
  /** Lists of values per setting; the cells are their cartesian product. */
  grid: z.record(z.string(), z.array(z.unknown()).min(1, "expected a non-empty list of values"))
    .default({}),
  /** Per-task overrides, applied when the cell's task matches. */
  tasks: z.record(z.string(), Settings).default({}),
  /** Per-method overrides, applied (last) when the cell's method matches. */
  methods: z.record(z.string(), Settings).default({}),
  /** Partial assignments: a cell matching every key of one of them is skipped. */
  exclude: z.array(Settings).default([]),
}).strict().superRefine((s, ctx) => {
  const check = (
    keys: string[],
    where: Parameters<typeof settingKeyProblem>[1],
    path: (string | number)[],
  ) => {
    for (const key of keys) {
      const problem = settingKeyProblem(key, where);
      if (problem) ctx.addIssue({ code: "custom", path: [...path, key], message: problem });
    }
  };
  check(Object.keys(s.base), "base", ["base"]);
  check(Object.keys(s.grid), "grid", ["grid"]);
  const overrides = (where: "tasks" | "methods", name: string, o: Record<string, unknown>) => {
    check(Object.keys(o).filter((k) => k !== UNSET), where, [where, name]);
    if (!(UNSET in o)) return;
    const list = o[UNSET];
    if (!Array.isArray(list) || !list.every((k) => typeof k === "string")) {
      ctx.addIssue({
        code: "custom",
        path: [where, name, UNSET],
        message: "expected a list of setting names to remove, e.g. [targets]",
      });
    } else check(list, where, [where, name, UNSET]);
  };
  for (const [task, o] of Object.entries(s.tasks)) overrides("tasks", task, o);
  for (const [m, o] of Object.entries(s.methods)) overrides("methods", m, o);
  s.exclude.forEach((e, i) => {
    if (Object.keys(e).length === 0) {
      ctx.addIssue({
        code: "custom",
        path: ["exclude", i],
        message: "an empty exclude skips every cell",
      });
    }
    check(Object.keys(e), "exclude", ["exclude", i]);
  });
});

/** A parsed sweep file, with what is needed to point errors at its lines. */
export interface Sweep {
  /** The file it came from (for messages and the Slurm script). */
  file: string;
  /** Its validated contents. */
  spec: SweepSpec;
  /** The line (1-based) of a path in the file, or null where the path is not written there. */
  lineOf: (path: readonly PropertyKey[]) => number | null;
}

/** Where in a parsed YAML document a path is written (the deepest node found on the way). */
function locator(
  root: unknown,
  counter: LineCounter,
): (path: readonly PropertyKey[]) => number | null {
  return (path) => {
    let node = root as Node | null | undefined;
    let offset: number | null = node?.range?.[0] ?? null;
    for (const key of path) {
      if (isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(key));
        if (!pair) break;
        const keyNode = pair.key as Node;
        offset = keyNode.range?.[0] ?? offset;
        node = pair.value as Node | null;
        if (node?.range && typeof key === "string") continue;
      } else if (isSeq(node) && typeof key === "number" && node.items[key]) {
        node = node.items[key] as Node;
        offset = node.range?.[0] ?? offset;
      } else {
        break;
      }
    }
    return offset === null ? null : counter.linePos(offset).line;
  };
}

/**
 * Parse and validate a sweep file's text. Errors name the file, the line and the field:
 * `sweeps/x.yaml:7: field "grid.seed": expected a non-empty list of values`.
 */
export function parseSweep(text: string, file: string): Sweep {
  const counter = new LineCounter();
  const doc = parseDocument(text, { lineCounter: counter, uniqueKeys: true });
  if (doc.errors.length) {
    throw new Error(
      doc.errors.map((e) => {
        const line = e.linePos?.[0].line;
        const what = e.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
        return `${file}${line ? `:${line}` : ""}: invalid YAML: ${what}`;
      }).join("\n"),
    );
  }
  const lineOf = locator(doc.contents, counter);
  const raw = doc.toJS() ?? {};
  if (typeof raw !== "object" || Array.isArray(raw)) {
    throw new Error(
      `${file}:1: expected a mapping with name, output, base, grid, methods, exclude`,
    );
  }
  const parsed = SweepSchema.safeParse(withOurKeys(raw as Record<string, unknown>, file));
  if (!parsed.success) {
    throw new Error(
      parsed.error.issues.map((issue) => {
        const keys = issue.code === "unrecognized_keys" ? issue.keys ?? [] : [];
        const path = keys.length ? [...issue.path, keys[0]] : issue.path;
        const line = lineOf(path);
        const field = issue.path.length ? issue.path.join(".") : "(top level)";
        return `${file}${line ? `:${line}` : ""}: field "${field}": ${issue.message}`;
      }).join("\n"),
    );
  }
  return { file, spec: parsed.data, lineOf };
}

/**
 * The sweep's setting keys in our spelling (Hugging Face Trainer / LLaMA-Factory names mapped, as
 * in run YAML files); unknown keys are left for the schema to report.
 */
function withOurKeys(raw: Record<string, unknown>, file: string): Record<string, unknown> {
  const rename = (o: unknown, isGrid = false): unknown => {
    if (!o || typeof o !== "object" || Array.isArray(o)) return o;
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(o)) {
      const key = k === UNSET ? null : canonicalKey(k);
      if (key === null) {
        out[k] = v;
        continue;
      }
      const value = isGrid && Array.isArray(v)
        ? v.map((x) => aliasValue(k, x, file))
        : aliasValue(k, v, file);
      if (value !== null) out[key] = value;
    }
    return out;
  };
  const byName = (o: unknown) =>
    o && typeof o === "object" && !Array.isArray(o)
      ? Object.fromEntries(Object.entries(o).map(([n, v]) => [n, rename(v)]))
      : o;
  return {
    ...raw,
    ...("base" in raw ? { base: rename(raw.base) } : {}),
    ...("grid" in raw ? { grid: rename(raw.grid, true) } : {}),
    ...("tasks" in raw ? { tasks: byName(raw.tasks) } : {}),
    ...("methods" in raw ? { methods: byName(raw.methods) } : {}),
    ...("exclude" in raw && Array.isArray(raw.exclude)
      ? { exclude: raw.exclude.map((e) => rename(e)) }
      : {}),
  };
}

/** Read and validate a sweep file. */
export async function readSweep(path: string): Promise<Sweep> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`${path}: cannot read the sweep file (${e instanceof Error ? e.message : e})`);
  }
  return parseSweep(text, path);
}

// ---- expansion into cells -------------------------------------------------------------------------

/** One run of a sweep. */
export interface SweepCell {
  /** Position in the expanded sweep; `--shard i/n` takes the cells with index ≡ i (mod n). */
  index: number;
  /** Readable slug + hash of the settings: the cell's folder name under the sweep's output. */
  id: string;
  /** The grid's values for this cell, by grid key. */
  assignment: Record<string, unknown>;
  /** The merged settings of the file (what the id hashes; output not included). */
  settings: Record<string, unknown>;
  /** The validated run configuration, output = `{sweep output}/{id}`. */
  config: RunConfig;
}

/** A sweep expanded into its cells. */
export interface SweepPlan {
  /** The sweep's name. */
  name: string;
  /** The sweep file. */
  file: string;
  /** Root folder of the cells' folders and sweep-state.json. */
  output: string;
  /** The grid's keys in file order (the first varies slowest). */
  gridKeys: string[];
  /** The cells in order. */
  cells: SweepCell[];
  /** Cells of the product skipped by `exclude`. */
  excluded: number;
  /** Cells of the product merged into an identical earlier one. */
  duplicates: number;
  /** `exclude` entries that matched no cell (likely typos), with their lines. */
  unusedExcludes: { index: number; line: number | null }[];
}

/** JSON with object keys sorted at every depth: equal settings give equal text. */
export function canonicalJson(value: unknown): string {
  const sort = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(sort);
    if (v && typeof v === "object") {
      return Object.fromEntries(
        Object.keys(v).sort().filter((k) => (v as Record<string, unknown>)[k] !== undefined)
          .map((k) => [k, sort((v as Record<string, unknown>)[k])]),
      );
    }
    return v;
  };
  return JSON.stringify(sort(value));
}

/** The value a setting key names in merged settings (dotted keys reach into mappings). */
function getSetting(settings: Record<string, unknown>, key: string): unknown {
  const dot = key.indexOf(".");
  if (dot < 0) return settings[key];
  const inner = settings[key.slice(0, dot)];
  return inner && typeof inner === "object"
    ? (inner as Record<string, unknown>)[key.slice(dot + 1)]
    : undefined;
}

/** Settings being merged, remembering which YAML path set each key (for error lines). */
class Merge {
  readonly settings: Record<string, unknown> = {};
  readonly origin = new Map<string, (string | number)[]>();

  set(key: string, value: unknown, from: (string | number)[]): void {
    const copy = structuredClone(value);
    const dot = key.indexOf(".");
    if (dot < 0) {
      this.settings[key] = copy;
      for (const k of [...this.origin.keys()]) if (k.startsWith(`${key}.`)) this.origin.delete(k);
    } else {
      const field = key.slice(0, dot);
      const prev = this.settings[field];
      const base = prev && typeof prev === "object" && !Array.isArray(prev) ? prev : {};
      this.settings[field] = { ...base, [key.slice(dot + 1)]: copy };
    }
    this.origin.set(key, from);
  }

  /** Remove a setting (a whole field, or one entry of a mapping field). */
  unset(key: string): void {
    const dot = key.indexOf(".");
    if (dot < 0) {
      delete this.settings[key];
      for (const k of [...this.origin.keys()]) {
        if (k === key || k.startsWith(`${key}.`)) this.origin.delete(k);
      }
      return;
    }
    const inner = this.settings[key.slice(0, dot)];
    if (inner && typeof inner === "object") {
      delete (inner as Record<string, unknown>)[key.slice(dot + 1)];
    }
    this.origin.delete(key);
  }

  /** Apply an override's settings, then its `unset` list. */
  setAll(values: Record<string, unknown>, from: (string | number)[]): void {
    for (const [k, v] of Object.entries(values)) if (k !== UNSET) this.set(k, v, [...from, k]);
    const unset = values[UNSET];
    if (Array.isArray(unset)) { for (const k of unset) this.unset(String(k)); }
  }

  /** The YAML path behind a RunConfig issue path. */
  yamlPath(path: readonly PropertyKey[]): (string | number)[] | null {
    const [field, entry, ...rest] = path.map(String);
    const dotted = entry !== undefined ? this.origin.get(`${field}.${entry}`) : undefined;
    if (dotted) return [...dotted, ...rest];
    const whole = this.origin.get(field);
    return whole ? [...whole, ...path.slice(1).map(String)] : null;
  }
}

function shortHash(text: string): string {
  return createHash("sha256").update(text).digest("hex").slice(0, 6);
}

/** A compact, file-name-safe rendering of a setting's value for slugs and listings. */
function compact(value: unknown, sep = ","): string {
  if (value === undefined) return "-";
  if (Array.isArray(value)) return value.map((v) => compact(v, sep)).join(sep);
  if (value && typeof value === "object") {
    if (Object.keys(value).length === 0) return "{}";
    return Object.entries(value).map(([k, v]) => `${k}=${compact(v, sep)}`).join(sep);
  }
  return String(value);
}

const SLUG_AXES = new Set(["method", "task", "seed", "targets", "lrMultipliers"]);

/** The readable part of a cell id: method, task, seed, targets' initials, multipliers, other axes. */
function cellSlug(
  config: RunConfig,
  settings: Record<string, unknown>,
  gridKeys: readonly string[],
): string {
  const parts = [config.method, config.task, `s${config.seed}`];
  if (config.targets) parts.push(config.targets.map((t) => t.split(/[._]/)[0][0] ?? "").join(""));
  for (const [module, m] of Object.entries(config.lrMultipliers)) {
    parts.push(`${module.split(".").at(-1)![0]}${m}`);
  }
  for (const key of gridKeys) {
    const value = getSetting(settings, key);
    if (SLUG_AXES.has(key.split(".")[0]) || value === undefined) continue;
    // A path says too much for a folder name; its last segment is enough (the hash tells apart).
    const shown = typeof value === "string" && value.includes("/")
      ? value.replace(/\/+$/, "").split("/").at(-1)
      : value;
    parts.push(`${key.split(".").at(-1)}${compact(shown, "")}`);
  }
  return parts.join("-").toLowerCase().replace(/[^a-z0-9.-]+/g, "").replace(/-+/g, "-").slice(
    0,
    72,
  );
}

/** A YAML path as written in messages: `grid.batchSize[1]`. */
function formatYamlPath(path: readonly (string | number)[]): string {
  return path.map((p, i) => typeof p === "number" ? `[${p}]` : i ? `.${p}` : p).join("");
}

/**
 * Invalid cells, grouped by cause: one bad value in the grid makes many cells invalid, and the
 * message should name it once, with the first cell it broke and how many.
 */
class CellProblems {
  readonly #byCause = new Map<string, { text: string; cells: number }>();

  constructor(readonly sweep: Sweep) {}

  add(
    path: readonly PropertyKey[],
    message: string,
    from: (string | number)[] | null,
    label: string,
  ): void {
    const field = path.length ? path.join(".") : "(top level)";
    const cause = `${field}\0${message}\0${from?.join("\0")}`;
    const seen = this.#byCause.get(cause);
    if (seen) {
      seen.cells++;
      return;
    }
    const line = from && this.sweep.lineOf(from);
    const where = from ? ` (set by ${formatYamlPath(from)})` : " (a default)";
    this.#byCause.set(cause, {
      text: `${this.sweep.file}${
        line ? `:${line}` : ""
      }: ${label}: field "${field}": ${message}${where}`,
      cells: 1,
    });
  }

  throwIfAny(): void {
    if (!this.#byCause.size) return;
    throw new Error(
      [...this.#byCause.values()].map((p) =>
        p.cells > 1 ? `${p.text} — and ${p.cells - 1} more cells` : p.text
      )
        .join("\n"),
    );
  }
}

/** Largest product expanded before giving up (a typo like seed: [0..99999] should not hang). */
const MAX_CELLS = 1_000_000;

/**
 * Expand a sweep into its cells: the cartesian product of the grid (first key slowest), minus
 * excluded assignments, with identical cells merged. Each cell's RunConfig is validated; errors
 * name the cell, the field and the line that set it.
 */
export function expandSweep(sweep: Sweep): SweepPlan {
  const { spec, file } = sweep;
  const gridKeys = Object.keys(spec.grid);
  const total = gridKeys.reduce((n, k) => n * spec.grid[k].length, 1);
  if (total > MAX_CELLS) {
    throw new Error(
      `${file}: the grid has ${total.toLocaleString()} cells (more than ${MAX_CELLS.toLocaleString()})`,
    );
  }
  const cells: SweepCell[] = [];
  const byId = new Map<string, string>();
  const used = new Set<number>();
  const problems = new CellProblems(sweep);
  let excluded = 0, duplicates = 0;
  for (let flat = 0; flat < total; flat++) {
    const assignment: Record<string, unknown> = {};
    const choice: Record<string, number> = {};
    let rest = flat;
    for (let k = gridKeys.length - 1; k >= 0; k--) {
      const values = spec.grid[gridKeys[k]];
      choice[gridKeys[k]] = rest % values.length;
      assignment[gridKeys[k]] = values[rest % values.length];
      rest = Math.floor(rest / values.length);
    }
    const merge = new Merge();
    merge.setAll(spec.base, ["base"]);
    for (const key of gridKeys) merge.set(key, assignment[key], ["grid", key, choice[key]]);
    const task = merge.settings.task;
    if (typeof task === "string" && spec.tasks[task]) {
      merge.setAll(spec.tasks[task], ["tasks", task]);
    }
    const method = merge.settings.method;
    if (typeof method === "string" && spec.methods[method]) {
      merge.setAll(spec.methods[method], ["methods", method]);
    }
    const settings = merge.settings;
    const hit = spec.exclude.findIndex((e) =>
      Object.entries(e).every(([key, v]) =>
        canonicalJson(key in assignment ? assignment[key] : getSetting(settings, key)) ===
          canonicalJson(v)
      )
    );
    if (hit >= 0) {
      used.add(hit);
      excluded++;
      continue;
    }
    const canonical = canonicalJson(settings);
    const parsed = RunConfigSchema.safeParse(ownTaskDefault({ ...settings, output: "-" }));
    const issues: { path: PropertyKey[]; message: string }[] = parsed.success
      ? []
      : parsed.error.issues;
    const taskName = parsed.success ? parsed.data.task : settings.task;
    const own = parsed.success && usesOwnData(parsed.data);
    if (typeof taskName === "string" && !own) {
      try {
        resolveTask(taskName);
      } catch (e) {
        issues.push({ path: ["task"], message: (e as Error).message });
      }
    }
    if (issues.length) {
      const label = `grid cell ${flat} (${
        gridKeys.map((k) => `${k}=${compact(assignment[k])}`).join(" ")
      })`;
      for (const issue of issues) {
        problems.add(issue.path, issue.message, merge.yamlPath(issue.path), label);
      }
      continue;
    }
    const config = parsed.data!;
    const id = `${cellSlug(config, settings, gridKeys)}-${shortHash(canonical)}`;
    const seen = byId.get(id);
    if (seen !== undefined) {
      if (seen !== canonical) {
        throw new Error(
          `${file}: two different cells hash to the id ${id}; rename a setting or report this`,
        );
      }
      duplicates++;
      continue;
    }
    byId.set(id, canonical);
    cells.push({
      index: cells.length,
      id,
      assignment,
      settings,
      config: { ...config, output: join(spec.output, id) },
    });
  }
  problems.throwIfAny();
  return {
    name: spec.name,
    file,
    output: spec.output,
    gridKeys,
    cells,
    excluded,
    duplicates,
    unusedExcludes: spec.exclude.map((_, i) => i).filter((i) => !used.has(i))
      .map((index) => ({ index, line: sweep.lineOf(["exclude", index]) })),
  };
}

// ---- shards and Slurm -----------------------------------------------------------------------------

/** `--shard i/n`: this process runs the cells whose index ≡ i (mod n). */
export interface Shard {
  /** i: this shard (0-based). */
  index: number;
  /** n: the number of shards. */
  count: number;
}

/** Parse `i/n` (0 ≤ i < n), with an error naming the flag. */
export function parseShard(text: string): Shard {
  const m = /^(\d+)\/(\d+)$/.exec(text.trim());
  const index = m ? Number(m[1]) : NaN, count = m ? Number(m[2]) : NaN;
  if (!m || count < 1 || index >= count) {
    throw new Error(`--shard: expected i/n with 0 ≤ i < n (e.g. 0/4), got "${text}"`);
  }
  return { index, count };
}

/** The cells of one shard (all cells without a shard), in order. */
export function shardCells(cells: readonly SweepCell[], shard?: Shard): SweepCell[] {
  return shard ? cells.filter((c) => c.index % shard.count === shard.index) : [...cells];
}

/** Options of {@link slurmScript}. */
export interface SlurmOptions {
  /** Number of shards = array tasks. */
  shards: number;
  /** The folder the jobs start in (the repository root). */
  workdir: string;
  /** Slurm partition (`#SBATCH --partition`). */
  partition?: string;
  /** Slurm time limit per array task, e.g. `24:00:00`. */
  time?: string;
  /** Cells at once inside each array task (`--parallel`). */
  parallel?: number;
}

function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(s) ? s : `'${s.replaceAll("'", `'"'"'`)}'`;
}

/**
 * A ready sbatch script: one array task per shard, one GPU each. Resubmitting it resumes, since
 * finished cells are skipped and checkpointed ones continue.
 */
export function slurmScript(plan: SweepPlan, o: SlurmOptions): string {
  if (!Number.isInteger(o.shards) || o.shards < 1) {
    throw new Error(`--slurm: expected a positive number of array tasks, got ${o.shards}`);
  }
  if (o.shards > plan.cells.length) {
    throw new Error(
      `--slurm ${o.shards}: the sweep has only ${plan.cells.length} cells; use at most that many tasks`,
    );
  }
  const per = Math.ceil(plan.cells.length / o.shards);
  const extra = o.parallel && o.parallel > 1 ? ` --parallel ${o.parallel}` : "";
  return [
    "#!/bin/bash",
    `# Sweep "${plan.name}" (${plan.file}): ${plan.cells.length} cells in ${o.shards} shards of at most ${per}.`,
    "# Each array task runs one shard on one GPU (Slurm's --gres with ConstrainDevices shows it only",
    "# that GPU). Resubmit the same script after a failure or preemption: finished cells are skipped",
    "# and checkpointed ones resume. Submit: sbatch THIS_FILE",
    `#SBATCH --job-name=${plan.name}`,
    `#SBATCH --array=0-${o.shards - 1}`,
    "#SBATCH --gres=gpu:1",
    ...(o.partition ? [`#SBATCH --partition=${o.partition}`] : []),
    ...(o.time ? [`#SBATCH --time=${o.time}`] : []),
    `#SBATCH --chdir=${o.workdir}`,
    "#SBATCH --output=%x-%A_%a.out",
    "set -euo pipefail",
    "# Deno's WebGPU wants a runtime folder; batch jobs often have none.",
    'export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"',
    `deno task sweep ${shellQuote(plan.file)} --shard $SLURM_ARRAY_TASK_ID/${o.shards}${extra}`,
    "",
  ].join("\n");
}

// ---- state ----------------------------------------------------------------------------------------

/** Where a cell stands. */
export type CellStatus = "done" | "failed" | "running" | "pending";

/** One cell's record in sweep-state.json (and, but for `index`, in its sweep-cell.json). */
export interface CellRecord {
  /** The cell's index in the sweep. */
  index: number;
  /** Where the cell stands. */
  status: CellStatus;
  /** The failure's message (failed cells). */
  error?: string;
  /** How many times the sweep started this cell. */
  attempts: number;
  /** Process running the cell, and its host (running cells). */
  pid?: number;
  /** Host name of the machine running it. */
  host?: string;
  /** ISO time of the last start. */
  startedAt?: string;
  /** ISO time of the last end (done or failed). */
  finishedAt?: string;
  /** Wall seconds of the last attempt, process start and evaluation included. */
  seconds?: number;
  /** Wall seconds of every attempt this sweep timed (a killed sweep's attempt is not timed). */
  totalSeconds?: number;
  /** The trainer's wall seconds of the run, summed over every process that trained it. */
  runWallSeconds?: number;
  /** Peak GPU memory of the run in bytes, the maximum over every process that trained it. */
  peakBytes?: number;
  /** The final value of the task's main metric (done cells). */
  main?: number;
  /** The name of that metric (accuracy, matthews, …). */
  mainMetric?: string;
}

/** What `{output}/sweep-state.json` holds. */
export interface SweepState {
  /** The sweep's name. */
  name: string;
  /** The sweep file. */
  file: string;
  /** ISO time of this write. */
  updatedAt: string;
  /** Cells per status. */
  counts: Record<CellStatus, number>;
  /** Every cell of the sweep by id, in index order. */
  cells: Record<string, CellRecord>;
}

/** The file name of a cell's own status record. */
export const CELL_FILE = "sweep-cell.json";
/** The lock file of a cell folder, held by the sweep running the cell. */
export const CELL_LOCK = "sweep-cell.lock";
/** The file name of the aggregated state under the sweep's output. */
export const STATE_FILE = "sweep-state.json";

const exists = (path: string): Promise<boolean> => Deno.stat(path).then(() => true, () => false);

async function readJson<T>(path: string): Promise<T | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as T;
  } catch {
    return null;
  }
}

/** A cell's status as its folder tells it: summary.json means done, else its sweep-cell.json. */
export async function readCellRecord(cell: SweepCell): Promise<CellRecord> {
  const own = await readJson<Omit<CellRecord, "index">>(join(cell.config.output, CELL_FILE));
  const record: CellRecord = {
    attempts: 0,
    ...own,
    index: cell.index,
    status: own?.status ?? "pending",
  };
  if (record.status !== "done" && await exists(join(cell.config.output, "summary.json"))) {
    const summary = await readJson<Summary>(join(cell.config.output, "summary.json"));
    record.status = "done";
    delete record.error;
    if (summary?.final && summary.mainMetric in summary.final) {
      record.mainMetric = summary.mainMetric;
      record.main = summary.final[summary.mainMetric];
    }
  }
  return record;
}

/** Read `{output}/sweep-state.json` (null when the sweep has not started). */
export function readSweepState(output: string): Promise<SweepState | null> {
  return readJson<SweepState>(join(output, STATE_FILE));
}

/** How often a sharded sweep re-reads the other shards' cells for the aggregate (ms). */
const OTHERS_REFRESH_MS = 30_000;

class StateStore {
  readonly records = new Map<string, CellRecord>();
  /** Cells this invocation has run or runs: their records here are the latest. */
  readonly active = new Set<string>();
  #writing: Promise<void> = Promise.resolve();
  #othersReadAt = 0;

  constructor(readonly plan: SweepPlan, readonly mine: ReadonlySet<string>) {}

  async load(): Promise<void> {
    await Promise.all(
      this.plan.cells.map(async (c) => this.records.set(c.id, await readCellRecord(c))),
    );
    this.#othersReadAt = Date.now();
  }

  /** Record a cell's new status in its folder, then rewrite the aggregate. */
  async set(cell: SweepCell, record: CellRecord): Promise<void> {
    this.active.add(cell.id);
    this.records.set(cell.id, record);
    const { index: _index, ...own } = record;
    await Deno.mkdir(cell.config.output, { recursive: true });
    await writeTextAtomic(join(cell.config.output, CELL_FILE), JSON.stringify(own, null, 2) + "\n");
    await this.write();
  }

  /** Rewrite sweep-state.json (serialised: parallel cells finish at the same time). */
  write(): Promise<void> {
    this.#writing = this.#writing.then(async () => {
      if (
        this.mine.size < this.plan.cells.length &&
        Date.now() - this.#othersReadAt > OTHERS_REFRESH_MS
      ) {
        const others = this.plan.cells.filter((c) => !this.mine.has(c.id));
        for (const c of others) this.records.set(c.id, await readCellRecord(c));
        this.#othersReadAt = Date.now();
      }
      // Another sweep on the same folder may have run some of this shard's cells meanwhile:
      // their own sweep-cell.json files are the truth, not this process's view at start.
      for (const c of this.plan.cells) {
        if (this.mine.has(c.id) && !this.active.has(c.id)) {
          this.records.set(c.id, await readCellRecord(c));
        }
      }
      const counts: Record<CellStatus, number> = { done: 0, failed: 0, running: 0, pending: 0 };
      const cells: Record<string, CellRecord> = {};
      for (const c of this.plan.cells) {
        const r = this.records.get(c.id)!;
        counts[r.status]++;
        cells[c.id] = r;
      }
      const state: SweepState = {
        name: this.plan.name,
        file: this.plan.file,
        updatedAt: new Date().toISOString(),
        counts,
        cells,
      };
      await Deno.mkdir(this.plan.output, { recursive: true });
      await writeTextAtomic(
        join(this.plan.output, STATE_FILE),
        JSON.stringify(state, null, 2) + "\n",
      );
    });
    return this.#writing;
  }
}

/**
 * Whether the process recorded as running a cell is still at it on this machine: a sweep killed
 * with SIGKILL alone can leave its cell processes behind, and running the cell again beside them
 * would write one folder twice. Linux only (/proc); elsewhere the owner is taken as gone.
 */
async function ownerAlive(cell: SweepCell, record: CellRecord): Promise<boolean> {
  if (record.status !== "running" || !record.pid || record.host !== Deno.hostname()) return false;
  if (record.pid === Deno.pid) return false;
  try {
    const cmdline = await Deno.readTextFile(`/proc/${record.pid}/cmdline`);
    return cmdline.includes(cell.config.output);
  } catch {
    return false;
  }
}

// ---- running ----------------------------------------------------------------------------------------

/** Options of {@link runSweep}. */
export interface RunSweepOptions {
  /** Cells at once, each in its own `deno run tasks/train.ts` process. Default 1. */
  parallel?: number;
  /** Run cells inside this process instead of a subprocess each (requires parallel 1). */
  inProcess?: boolean;
  /** Only this shard's cells. */
  shard?: Shard;
  /** Stops the sweep: running cells are terminated (they resume from their checkpoint later). */
  signal?: AbortSignal;
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
  /** The training entry point for subprocesses (default: tasks/train.ts of this toolkit). */
  trainScript?: string;
}

/** What a sweep invocation did. */
export interface SweepResult {
  /** Cells finished by this invocation. */
  done: string[];
  /** Cells that failed in this invocation, with the error. */
  failed: { id: string; error: string }[];
  /** Cells already finished before (skipped). */
  skipped: string[];
  /** Cells left alone because a live process from an earlier sweep still runs them. */
  busy: string[];
  /** Stopped by the abort signal before every cell ran. */
  interrupted: boolean;
  /** Path of sweep-state.json. */
  statePath: string;
}

/** Result of one cell attempt. */
type Outcome = { ok: true; summary: Summary } | { ok: false; error: string };

const DEFAULT_TRAIN_SCRIPT = new URL("../../train.ts", import.meta.url);

function scriptArg(script: string | URL): string {
  const url = script instanceof URL ? script : null;
  return url?.protocol === "file:" ? decodeURIComponent(url.pathname) : String(script);
}

/** The last "error: …" block of a train.ts log, else its tail. */
function errorFromOutput(tail: string, code: number, signal: string | null): string {
  const at = tail.lastIndexOf("error: ");
  const text = at >= 0 ? tail.slice(at + "error: ".length) : tail.split("\n").slice(-6).join("\n");
  const how = signal ? `killed by ${signal}` : `exit code ${code}`;
  return `${text.trim().slice(0, 2000) || "(no output)"} [train.ts ${how}]`;
}

/** Write every byte (a write may take only part of the buffer). */
function writeAllSync(file: Deno.FsFile, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length;) done += file.writeSync(bytes.subarray(done));
}

async function runInProcess(
  config: RunConfig,
  logFile: Deno.FsFile,
  signal: AbortSignal | undefined,
): Promise<Outcome> {
  const encoder = new TextEncoder();
  try {
    const summary = await train(config, {
      resume: true,
      progress: false,
      log: (line) => writeAllSync(logFile, encoder.encode(line + "\n")),
      // Stops after the current step with a checkpoint there, so no step is trained twice.
      signal,
    });
    return { ok: true, summary };
  } catch (e) {
    const error = e instanceof Error ? e.message : String(e);
    writeAllSync(logFile, encoder.encode(`error: ${error}\n`));
    return { ok: false, error };
  }
}

async function runSubprocess(
  cell: SweepCell,
  script: string,
  logFile: Deno.FsFile,
  signal: AbortSignal | undefined,
  started: (pid: number) => Promise<void>,
): Promise<Outcome> {
  const configPath = join(cell.config.output, "cell-config.json");
  await writeTextAtomic(configPath, JSON.stringify(cell.config, null, 2) + "\n");
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, "--config", configPath, "--resume"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const onAbort = () => {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
  };
  signal?.addEventListener("abort", onAbort);
  let tail = "";
  // Both streams go to the cell's train.log; the tail is kept for the error message.
  const copy = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      writeAllSync(logFile, chunk);
      tail = (tail + decoder.decode(chunk, { stream: true })).slice(-8000);
    }
  };
  try {
    await started(child.pid);
    const [status] = await Promise.all([child.status, copy(child.stdout), copy(child.stderr)]);
    if (status.success) {
      const summary = await readJson<Summary>(join(cell.config.output, "summary.json"));
      if (summary) return { ok: true, summary };
      return { ok: false, error: "train.ts exited without writing summary.json" };
    }
    return { ok: false, error: errorFromOutput(tail, status.code, status.signal) };
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
}

/**
 * Run a sweep's cells (one shard's, with `shard`): finished cells are skipped, cells with a
 * checkpoint resume, a failing cell is recorded with its error and the sweep goes on. Each cell
 * logs into `{cell}/train.log`; statuses go to `{cell}/sweep-cell.json` and
 * `{output}/sweep-state.json`.
 */
export async function runSweep(
  plan: SweepPlan,
  options: RunSweepOptions = {},
): Promise<SweepResult> {
  const log = options.log ?? ((s: string) => console.error(s));
  const parallel = options.parallel ?? 1;
  if (!Number.isInteger(parallel) || parallel < 1) {
    throw new Error(`--parallel: expected a positive whole number, got ${parallel}`);
  }
  if (options.inProcess && parallel > 1) {
    throw new Error("--in-process runs one cell at a time; drop it to use --parallel");
  }
  const script = scriptArg(options.trainScript ?? DEFAULT_TRAIN_SCRIPT);
  const cells = shardCells(plan.cells, options.shard);
  const store = new StateStore(plan, new Set(cells.map((c) => c.id)));
  await store.load();
  const result: SweepResult = {
    done: [],
    failed: [],
    skipped: [],
    busy: [],
    interrupted: false,
    statePath: join(plan.output, STATE_FILE),
  };
  const queue: SweepCell[] = [];
  for (const cell of cells) {
    const record = store.records.get(cell.id)!;
    if (record.status === "done") result.skipped.push(cell.id);
    else if (await ownerAlive(cell, record)) {
      result.busy.push(cell.id);
      log(
        `${cell.id}: still running in process ${record.pid} (left by a killed sweep?); not started again`,
      );
    } else queue.push(cell);
  }
  await store.write();
  const shardText = options.shard ? ` (shard ${options.shard.index}/${options.shard.count})` : "";
  log(
    `sweep ${plan.name}${shardText}: ${cells.length} cells, ${result.skipped.length} already done, ` +
      `${queue.length} to run${parallel > 1 ? `, ${parallel} at once` : ""}`,
  );
  const runOne = async (cell: SweepCell, position: string) => {
    await Deno.mkdir(cell.config.output, { recursive: true });
    let lock: FolderLock;
    try {
      lock = await acquireLock(cell.config.output, CELL_LOCK, "sweep", log);
    } catch (e) {
      if (!(e instanceof LockedError)) throw e;
      result.busy.push(cell.id);
      log(`${position} ${cell.id}: not started — ${e.message}`);
      return;
    }
    try {
      // Another sweep may have finished it between this sweep's start and now.
      const now = await readCellRecord(cell);
      if (now.status === "done") {
        store.records.set(cell.id, now);
        result.skipped.push(cell.id);
        log(`${position} ${cell.id}: finished meanwhile by another sweep; skipped`);
        return;
      }
      store.records.set(cell.id, {
        ...now,
        attempts: Math.max(now.attempts, store.records.get(cell.id)!.attempts),
      });
      await runLocked(cell, position);
    } finally {
      await lock.release();
    }
  };
  const runLocked = async (cell: SweepCell, position: string) => {
    const previous = store.records.get(cell.id)!;
    const attempts = previous.attempts + 1;
    const secondsBefore = previous.totalSeconds ?? 0;
    const startedAt = new Date().toISOString();
    const t0 = performance.now();
    const ended = (status: CellStatus, extra: Partial<CellRecord> = {}): CellRecord => {
      const seconds = (performance.now() - t0) / 1000;
      return {
        index: cell.index,
        status,
        attempts,
        startedAt,
        finishedAt: new Date().toISOString(),
        seconds,
        totalSeconds: secondsBefore + seconds,
        ...extra,
      };
    };
    try {
      getMethod(cell.config.method);
    } catch (e) {
      const error = (e as Error).message;
      await store.set(cell, ended("failed", { error }));
      result.failed.push({ id: cell.id, error });
      log(`${position} ${cell.id}: failed — ${error}`);
      return;
    }
    const resumes = await exists(join(cell.config.output, "checkpoint", "state.json"));
    log(`${position} ${cell.id}: ${resumes ? "resuming from its checkpoint" : "started"}`);
    const running = (pid: number) =>
      store.set(cell, {
        index: cell.index,
        status: "running",
        attempts,
        pid,
        host: Deno.hostname(),
        startedAt,
        totalSeconds: secondsBefore,
      });
    const logFile = await Deno.open(join(cell.config.output, "train.log"), {
      create: true,
      append: true,
    });
    let outcome: Outcome;
    try {
      writeAllSync(
        logFile,
        new TextEncoder().encode(`=== ${startedAt} sweep ${plan.name}, attempt ${attempts}\n`),
      );
      if (options.inProcess) {
        await running(Deno.pid);
        outcome = await runInProcess(cell.config, logFile, options.signal);
      } else {
        outcome = await runSubprocess(cell, script, logFile, options.signal, running);
      }
    } finally {
      logFile.close();
    }
    if (options.signal?.aborted && !outcome.ok) {
      await store.set(cell, {
        index: cell.index,
        status: "pending",
        attempts,
        totalSeconds: secondsBefore + (performance.now() - t0) / 1000,
      });
      log(`${position} ${cell.id}: stopped; it resumes from its last checkpoint next time`);
    } else if (outcome.ok) {
      const s = outcome.summary;
      const main = s.final[s.mainMetric];
      const record = ended("done", {
        main,
        mainMetric: s.mainMetric,
        runWallSeconds: s.wallSeconds,
        peakBytes: s.memory?.peakTotal,
      });
      await store.set(cell, record);
      result.done.push(cell.id);
      log(
        `${position} ${cell.id}: done in ${record.seconds!.toFixed(1)} s — ${s.mainMetric} ${
          main?.toFixed(4)
        }`,
      );
    } else {
      const record = ended("failed", { error: outcome.error });
      await store.set(cell, record);
      result.failed.push({ id: cell.id, error: outcome.error });
      log(
        `${position} ${cell.id}: failed after ${record.seconds!.toFixed(1)} s — ${
          outcome.error.split("\n")[0]
        }`,
      );
    }
  };
  let next = 0;
  const worker = async () => {
    while (next < queue.length && !options.signal?.aborted) {
      const cell = queue[next++];
      await runOne(cell, `[${next}/${queue.length}]`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, queue.length) }, worker));
  result.interrupted = options.signal?.aborted === true &&
    result.done.length + result.failed.length < queue.length;
  await store.write();
  return result;
}

// ---- listing ------------------------------------------------------------------------------------------

/** A cell's status for listings: a pending cell with a checkpoint shows as "resume". */
export async function cellListingStatus(cell: SweepCell): Promise<string> {
  const record = await readCellRecord(cell);
  if (record.status !== "pending") return record.status;
  return await exists(join(cell.config.output, "checkpoint", "state.json")) ? "resume" : "new";
}

/**
 * The `--dry-run` listing: a header, one line per cell (index, id, method, task, seed, status, the
 * learning rate and every other grid axis) and warnings (unknown methods, unused excludes).
 */
export async function dryRunListing(plan: SweepPlan, shard?: Shard): Promise<string> {
  const cells = shardCells(plan.cells, shard);
  const notes = [
    plan.excluded ? `${plan.excluded} excluded` : "",
    plan.duplicates ? `${plan.duplicates} duplicates merged` : "",
  ].filter(Boolean).join(", ");
  const lines = [
    `sweep ${plan.name} (${plan.file}): ${plan.cells.length} cells${
      notes ? ` (${notes})` : ""
    } → ${plan.output}`,
  ];
  if (shard) lines.push(`shard ${shard.index}/${shard.count}: ${cells.length} cells`);
  const axes = plan.gridKeys.filter((k) => !["method", "task", "seed"].includes(k));
  const rows = await Promise.all(cells.map(async (c) => [
    String(c.index),
    c.id,
    c.config.method,
    c.config.task,
    String(c.config.seed),
    await cellListingStatus(c),
    [
      `lr=${c.config.lr}`,
      ...axes.filter((k) => k !== "lr").map((k) => `${k}=${compact(getSetting(c.settings, k))}`),
    ]
      .join(" "),
  ]));
  const header = ["#", "id", "method", "task", "seed", "status", "settings"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  for (const row of [header, ...rows]) {
    lines.push(
      row.map((v, i) => i === row.length - 1 ? v : v.padEnd(widths[i])).join("  ").trimEnd(),
    );
  }
  const unknown = new Map<string, number>();
  for (const c of cells) {
    try {
      getMethod(c.config.method);
    } catch {
      unknown.set(c.config.method, (unknown.get(c.config.method) ?? 0) + 1);
    }
  }
  for (const [method, n] of unknown) {
    lines.push(`warning: method "${method}" is not in the registry yet; its ${n} cells would fail`);
  }
  for (const { index, line } of plan.unusedExcludes) {
    lines.push(`warning: exclude[${index}]${line ? ` (line ${line})` : ""} matches no cell`);
  }
  return lines.join("\n");
}
