/**
 * Fault injection for the reliability tests: `RUC_PEFT_FAULT=kill@NAME` makes the process
 * SIGKILL itself the first time it reaches the point NAME (`kill@NAME#3`: the third time), and
 * `enospc@NAME` makes that point fail as a full disk would. Kills at exact points (between the two
 * renames of a checkpoint swap, say) cannot be hit reliably from outside by timing alone.
 *
 * Unset (the normal case) every point is a no-op.
 *
 * @module
 */

const reached = new Map<string, number>();

/** Parsed `RUC_PEFT_FAULT`, or null when unset. */
function plan(): { action: "kill" | "enospc"; point: string; nth: number } | null {
  const text = Deno.env.get("RUC_PEFT_FAULT");
  if (!text) return null;
  const m = /^(kill|enospc)@([^#]+)(?:#(\d+))?$/.exec(text);
  if (!m) {
    throw new Error(`RUC_PEFT_FAULT: expected kill@POINT[#N] or enospc@POINT[#N], got "${text}"`);
  }
  return { action: m[1] as "kill" | "enospc", point: m[2], nth: Number(m[3] ?? 1) };
}

/**
 * A named point where a test may kill the process or fail a write. `file` is the file being
 * written there (the simulated disk-full error names it, as the OS error would be reported).
 */
export function faultPoint(name: string, file?: string): void {
  const p = plan();
  if (!p || p.point !== name) return;
  const count = (reached.get(name) ?? 0) + 1;
  reached.set(name, count);
  if (count !== p.nth) return;
  if (p.action === "kill") Deno.kill(Deno.pid, "SIGKILL");
  throw new Error(
    `No space left on device (os error 28), writing ${file ?? name} (simulated: RUC_PEFT_FAULT)`,
  );
}
