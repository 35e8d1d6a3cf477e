/**
 * The one way every entry point in tasks/*.ts reads its flags and ends its process.
 *
 * - Flags are declared as data ({@link FlagSpec}); anything else is a {@link UsageError} naming the
 *   flag, with a "did you mean" when a declared flag is close. A value that starts with a dash
 *   (`--rank -3`) is taken as the value, so the message is about the value, not parseArgs'
 *   "ambiguous" text.
 * - Numbers are read strictly ({@link parseNumberFlag}): decimal only, so `--lr 0x10` or `--lr 1e`
 *   is an error instead of 16 or NaN.
 * - {@link runCli} maps the outcome to the exit code (0 success, 1 user error, 2 bad usage), prints
 *   one line (the stack only with `RUC_PEFT_DEBUG=1`) and drains the GPU queue before exiting:
 *   exiting while lavapipe's threads are still inside submitted work can crash the process in
 *   native code (exit 134/139) instead of returning the code we chose.
 *
 * @module
 */
import { gpu } from "../../../ops/mod.ts";

/** Bad usage of a command (unknown flag, missing or malformed value): exit code 2. */
export class UsageError extends Error {
  /** `message` names the flag and what was expected. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** One declared flag. */
export interface FlagDef {
  /** A boolean switch or a flag taking a value. */
  type: "string" | "boolean";
  /** May be given more than once (values are collected in order). */
  multiple?: boolean;
  /** A one-letter alias (`-h`). */
  short?: string;
}

/** Declared flags by their long name (without the dashes). */
export type FlagSpec = Record<string, FlagDef>;

/** The parsed value of one declared flag: a boolean for a switch, else its text(s). */
export type FlagValue<D extends FlagDef> = D["type"] extends "boolean" ? boolean
  : D["multiple"] extends true ? string[]
  : string;

/** The parsed values of a {@link FlagSpec}: absent flags are undefined. */
export type FlagValues<S extends FlagSpec> = { [K in keyof S]?: FlagValue<S[K]> };

/** Options of {@link parseFlags}. */
export interface ParseFlagsOptions {
  /** How many positional arguments are allowed (default 0). */
  positionals?: number;
  /** The command, for "see deno task X --help" hints. */
  command?: string;
}

/** Edit distance of two short strings (for "did you mean"). */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const keep = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = keep;
    }
  }
  return row[b.length];
}

/** The declared name closest to `name`, when close enough to be a typo. */
export function closestName(name: string, names: readonly string[]): string | undefined {
  let best: string | undefined, bestD = Infinity;
  for (const n of names) {
    const d = n.startsWith(name) || name.startsWith(n) ? 1 : distance(name, n);
    if (d < bestD) [best, bestD] = [n, d];
  }
  return bestD <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

const NUMERIC = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/**
 * Parse `args` against `spec`. Throws {@link UsageError} for an unknown flag, a flag given twice,
 * a missing value, a value on a switch, or too many positionals.
 *
 * @example
 * ```ts
 * import { parseFlags } from "./runner.ts";
 * const { values } = parseFlags(["--rank", "8"], { rank: { type: "string" } });
 * console.log(values.rank); // "8"
 * ```
 */
export function parseFlags<S extends FlagSpec>(
  args: readonly string[],
  spec: S,
  options: ParseFlagsOptions = {},
): { values: FlagValues<S>; positionals: string[] } {
  const hint = options.command ? ` (see deno task ${options.command} --help)` : "";
  const values: Record<string, string | boolean | string[]> = {};
  const positionals: string[] = [];
  const names = Object.keys(spec);
  const shorts = new Map(
    Object.entries(spec).filter(([, d]) => d.short).map(([n, d]) => [d.short!, n]),
  );
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    let name: string | undefined, inline: string | undefined, shown = arg;
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      inline = eq < 0 ? undefined : arg.slice(eq + 1);
      shown = `--${name}`;
      if (!(name in spec)) {
        const near = closestName(name, names);
        throw new UsageError(
          `unknown flag --${name}${near ? `; did you mean --${near}?` : ""}${hint}`,
        );
      }
    } else if (arg.startsWith("-") && arg.length > 1 && !NUMERIC.test(arg)) {
      name = shorts.get(arg.slice(1));
      if (name === undefined) throw new UsageError(`unknown flag ${arg}${hint}`);
    } else {
      positionals.push(arg);
      continue;
    }
    const def = spec[name];
    if (def.type === "boolean") {
      if (inline !== undefined) {
        throw new UsageError(`${shown} is a switch and takes no value (got "${inline}")${hint}`);
      }
      if (name in values) throw new UsageError(`${shown} given twice${hint}`);
      values[name] = true;
      continue;
    }
    let value = inline;
    if (value === undefined) {
      const next = args[i + 1];
      // A following "--flag" means the value was forgotten; "-3" is a (bad) value to report.
      if (next === undefined || next.startsWith("--")) {
        throw new UsageError(`${shown}: expected a value${hint}`);
      }
      value = next;
      i++;
    }
    if (def.multiple) {
      values[name] = [...((values[name] as string[] | undefined) ?? []), value];
    } else {
      if (name in values) throw new UsageError(`${shown} given twice${hint}`);
      values[name] = value;
    }
  }
  const allowed = options.positionals ?? 0;
  if (positionals.length > allowed) {
    throw new UsageError(
      `unexpected argument "${positionals[allowed]}"${
        allowed === 0 ? "; every option is a --flag" : ""
      }${hint}`,
    );
  }
  return { values: values as FlagValues<S>, positionals };
}

/** Constraints of {@link parseNumberFlag}. */
export interface NumberRule {
  /** Whole numbers only. */
  integer?: boolean;
  /** Smallest allowed value (inclusive unless `minExclusive`). */
  min?: number;
  /** `min` itself is not allowed. */
  minExclusive?: boolean;
  /** Largest allowed value (inclusive). */
  max?: number;
}

/** "a positive whole number", "a number in (0, 1]", … */
export function describeRule(rule: NumberRule): string {
  const kind = rule.integer ? "whole number" : "number";
  const { min, max, minExclusive } = rule;
  if (min !== undefined && max !== undefined) {
    return `a ${kind} in ${minExclusive ? "(" : "["}${min}, ${max}]`;
  }
  if (min === 1 && rule.integer && !minExclusive) return "a positive whole number";
  if (min === 0) return minExclusive ? `a positive ${kind}` : `a non-negative ${kind}`;
  if (min !== undefined) return `a ${kind} ${minExclusive ? ">" : "≥"} ${min}`;
  if (max !== undefined) return `a ${kind} ≤ ${max}`;
  return `a ${kind}`;
}

/**
 * A flag's text as a number, strictly: decimal notation only (no hex, no "Infinity", no empty
 * string), checked against `rule`. Throws {@link UsageError} naming the flag and the range.
 *
 * @example
 * ```ts
 * import { parseNumberFlag } from "./runner.ts";
 * console.log(parseNumberFlag("lr", "2e-4", { min: 0, minExclusive: true })); // 0.0002
 * ```
 */
export function parseNumberFlag(flag: string, text: string, rule: NumberRule = {}): number {
  const n = NUMERIC.test(text.trim()) ? Number(text) : NaN;
  const ok = Number.isFinite(n) && (!rule.integer || Number.isInteger(n)) &&
    (rule.min === undefined || (rule.minExclusive ? n > rule.min : n >= rule.min)) &&
    (rule.max === undefined || n <= rule.max);
  if (!ok) throw new UsageError(`--${flag}: expected ${describeRule(rule)}, got "${text}"`);
  return n;
}

/** `--flag` must be one of `allowed`. */
export function parseChoiceFlag<T extends string>(
  flag: string,
  text: string,
  allowed: readonly T[],
): T {
  if (!allowed.includes(text as T)) {
    throw new UsageError(`--${flag}: expected one of ${allowed.join(", ")}, got "${text}"`);
  }
  return text as T;
}

/** Throw a {@link UsageError} naming each required flag that is absent. */
export function requireFlags(
  values: Record<string, unknown>,
  required: readonly string[],
  command: string,
): void {
  const missing = required.filter((k) => values[k] === undefined || values[k] === "");
  if (missing.length) {
    throw new UsageError(
      `missing ${missing.map((k) => `--${k}`).join(", ")} (see deno task ${command} --help)`,
    );
  }
}

/** An error's message as one line (multi-issue messages joined with "; "). */
export function oneLine(message: string): string {
  return message.split("\n").map((s) => s.trim()).filter(Boolean).join("; ");
}

/**
 * Wait until the GPU has finished all submitted work, if a device was ever created. Bounded, so
 * a lost device cannot hang the exit.
 */
export async function drainGpu(timeoutMs = 10_000): Promise<void> {
  let device: GPUDevice;
  try {
    device = gpu().device;
  } catch {
    return; // never initialised: nothing in flight
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      device.queue.onSubmittedWorkDone(),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
    ]);
  } catch {
    /* device lost: nothing left to wait for */
  } finally {
    clearTimeout(timer);
  }
}

/** The exit code of an error: 2 for bad usage, its own `exitCode` if it has one, else 1. */
export function exitCodeOf(error: unknown): number {
  if (error instanceof UsageError) return 2;
  // An error may carry its own code (an interrupted run: 130, as a shell reports Ctrl-C).
  const own = (error as { exitCode?: unknown } | null)?.exitCode;
  return typeof own === "number" && Number.isInteger(own) && own > 0 ? own : 1;
}

/**
 * Run an entry point's `main` and exit: its returned code (default 0), or 1 for an error and 2
 * for a {@link UsageError}, after printing `error: <one line>` (and the stack when
 * `RUC_PEFT_DEBUG=1`). The GPU queue is drained first on every path.
 */
export async function runCli(main: () => Promise<number | void>): Promise<never> {
  let code: number;
  try {
    code = (await main()) ?? 0;
  } catch (e) {
    code = exitCodeOf(e);
    const message = e instanceof Error ? e.message : String(e);
    console.error(`error: ${oneLine(message) || String(e)}`);
    if (Deno.env.get("RUC_PEFT_DEBUG") === "1" && e instanceof Error && e.stack) {
      console.error(e.stack);
    }
  }
  await drainGpu();
  Deno.exit(code);
}
