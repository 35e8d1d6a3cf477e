/**
 * One-line progress bars on stderr: training (step, loss, learning rate, tokens/s, ETA) and
 * evaluation (examples, examples/s, ETA). On a terminal a bar redraws in place and a log line
 * printed through {@link Progress.print} goes above it on its own line; elsewhere a bar prints a
 * line at most every `every` of the way (10 % by default) so logs stay readable.
 *
 * @module
 */

/** Values shown next to a training bar. */
export interface ProgressValues {
  /** Mean training loss since the previous update. */
  loss: number;
  /** Current learning rate (of the first parameter group). */
  lr: number;
  /** Non-padding training tokens per second since the previous update. */
  tokensPerSecond: number;
}

/** Options of a {@link Progress} bar. */
export interface ProgressOptions {
  /** Text before the bar (e.g. "eval"); default none. */
  label?: string;
  /** Off a terminal: print a line each time this fraction more is done; default 0.1. */
  every?: number;
  /** When the work began (`performance.now()`), if before the bar was made; default now. */
  start?: number;
  /** Where a terminal bar's bytes go; default stderr (tests capture them). */
  out?: (text: string) => void;
}

/** A progress bar for `total` steps (or examples). */
export class Progress {
  #start = performance.now();
  #lastPrinted = -1;
  #line = "";
  readonly #out: (text: string) => void;
  readonly #label: string;
  readonly #every: number;

  /** `interactive`: redraw in place (a terminal); `enabled` false makes every call a no-op. */
  constructor(
    readonly total: number,
    readonly interactive: boolean,
    readonly enabled = true,
    options: ProgressOptions = {},
  ) {
    this.#label = options.label ? `${options.label} ` : "";
    this.#every = options.every ?? 0.1;
    this.#start = options.start ?? this.#start;
    const encoder = new TextEncoder();
    this.#out = options.out ?? ((text) => Deno.stderr.writeSync(encoder.encode(text)));
  }

  #bar(done: number): { text: string; eta: number; elapsed: number; frac: number } {
    const frac = this.total > 0 ? Math.min(1, done / this.total) : 1;
    const elapsed = (performance.now() - this.#start) / 1000;
    const eta = frac > 0 ? elapsed * (1 / frac - 1) : 0;
    const width = 24;
    const filled = Math.round(frac * width);
    const text = `${this.#label}${"█".repeat(filled)}${
      "░".repeat(width - filled)
    } ${done}/${this.total}`;
    return { text, eta, elapsed, frac };
  }

  #show(line: string, frac: number): void {
    if (this.interactive) {
      this.#line = line;
      this.#out(`\r${line}\x1b[K`);
      return;
    }
    const slot = Math.floor(frac / this.#every + 1e-9);
    if (slot !== this.#lastPrinted) {
      this.#lastPrinted = slot;
      console.error(line);
    }
  }

  /** Show training progress after `done` steps. */
  update(done: number, v: ProgressValues): void {
    if (!this.enabled) return;
    const b = this.#bar(done);
    this.#show(
      `${b.text} loss ${v.loss.toFixed(4)} lr ${v.lr.toExponential(2)} ` +
        `${Math.round(v.tokensPerSecond)} tok/s ETA ${formatSeconds(b.eta)}`,
      b.frac,
    );
  }

  /** Show counting progress (`done` of `total` units, their rate and the ETA). */
  count(done: number, unit = "examples"): void {
    if (!this.enabled) return;
    const b = this.#bar(done);
    const rate = done / Math.max(1e-9, b.elapsed);
    this.#show(`${b.text} ${unit} ${rate.toFixed(1)}/s ETA ${formatSeconds(b.eta)}`, b.frac);
  }

  /**
   * Print `line` on its own line: on a terminal the bar is cleared first and drawn again below,
   * so a log line never lands on the bar's line.
   */
  print(line: string, write: (s: string) => void = (s) => console.error(s)): void {
    if (this.enabled && this.interactive && this.#line) {
      this.#out("\r\x1b[K");
      write(line);
      this.#out(`${this.#line}\x1b[K`);
      return;
    }
    write(line);
  }

  /** Remove the bar from a terminal's line (it is drawn again by the next update). */
  clear(): void {
    if (this.enabled && this.interactive && this.#line) {
      this.#out("\r\x1b[K");
      this.#line = "";
    }
  }

  /** End the bar's line. */
  finish(): void {
    if (this.enabled && this.interactive && this.#line) {
      this.#out("\n");
      this.#line = "";
    }
  }
}

/** 75 → "1m15s"; under 10 s with one decimal (2.4 → "2.4s"). */
export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 10) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${Math.round(s % 60).toString().padStart(2, "0")}s` : `${Math.round(s)}s`;
}
