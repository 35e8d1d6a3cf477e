/**
 * A one-line progress bar on stderr (step, loss, learning rate, tokens/s, ETA). On a terminal it
 * redraws in place; elsewhere it prints a line at most every 10 % so logs stay readable.
 *
 * Hand-written rather than `cli-progress`: that library draws through Node's TTY stream API and,
 * off a terminal, prints nothing by default (`noTTYOutput: true` gives a line every 2 s, by
 * time rather than progress), while Slurm and sweep logs want a line per 10 %; the bar itself is
 * a few lines here.
 *
 * @module
 */

/** Values shown next to the bar. */
export interface ProgressValues {
  /** Mean training loss since the previous update. */
  loss: number;
  /** Current learning rate (of the first parameter group). */
  lr: number;
  /** Non-padding training tokens per second since the previous update. */
  tokensPerSecond: number;
}

/** A progress bar for `total` steps. */
export class Progress {
  #start = performance.now();
  #lastDecile = -1;
  readonly #encoder = new TextEncoder();

  /** `interactive`: redraw in place (a terminal); `enabled` false makes every call a no-op. */
  constructor(readonly total: number, readonly interactive: boolean, readonly enabled = true) {}

  /** Show progress after `done` steps. */
  update(done: number, v: ProgressValues): void {
    if (!this.enabled) return;
    const frac = done / this.total;
    const elapsed = (performance.now() - this.#start) / 1000;
    const eta = frac > 0 ? elapsed * (1 / frac - 1) : 0;
    const width = 24;
    const filled = Math.round(frac * width);
    const bar = "█".repeat(filled) + "░".repeat(width - filled);
    const line =
      `${bar} ${done}/${this.total} loss ${v.loss.toFixed(4)} lr ${v.lr.toExponential(2)} ` +
      `${Math.round(v.tokensPerSecond)} tok/s ETA ${formatSeconds(eta)}`;
    if (this.interactive) {
      Deno.stderr.writeSync(this.#encoder.encode(`\r${line}\x1b[K`));
    } else {
      const decile = Math.floor(frac * 10);
      if (decile !== this.#lastDecile) {
        this.#lastDecile = decile;
        console.error(line);
      }
    }
  }

  /** End the bar's line. */
  finish(): void {
    if (this.enabled && this.interactive) Deno.stderr.writeSync(this.#encoder.encode("\n"));
  }
}

/** 75 → "1m15s". */
export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${Math.round(s % 60).toString().padStart(2, "0")}s` : `${Math.round(s)}s`;
}
