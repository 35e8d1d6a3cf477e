/**
 * Progress bars: on a terminal a log line printed during a bar lands on its own line with the
 * bar drawn again below it; off a terminal a bar prints at most once per `every` of the way;
 * evaluation bars count examples.
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import { formatSeconds, Progress } from "../../tasks/lib/cli/progress.ts";

Deno.test("a log line during a terminal bar goes on its own line, the bar below it", () => {
  const out: string[] = [];
  const logged: string[] = [];
  const p = new Progress(10, true, true, { out: (s) => out.push(s) });
  p.update(4, { loss: 0.5, lr: 1e-3, tokensPerSecond: 100 });
  const bar = out[0];
  ok(bar.startsWith("\r██████████░░░░░░░░░░░░░░ 4/10 loss 0.5000"), bar);
  p.print("step 4: accuracy 0.9000", (s) => {
    out.push(`[log] ${s}`);
    logged.push(s);
  });
  // Clear the bar's line, write the log line (its own line), draw the bar again.
  deepEqual(out.slice(1), ["\r\x1b[K", "[log] step 4: accuracy 0.9000", bar.slice(1)]);
  deepEqual(logged, ["step 4: accuracy 0.9000"]);
  p.finish();
  equal(out[out.length - 1], "\n");
  // Without a bar on the line, a log line is just written.
  const q = new Progress(3, true, true, { out: (s) => out.push(s) });
  const n = out.length;
  q.print("hello", (s) => out.push(s));
  deepEqual(out.slice(n), ["hello"]);
});

Deno.test("an evaluation bar counts examples and is cleared after it", () => {
  const out: string[] = [];
  const p = new Progress(200, true, true, {
    label: "eval",
    out: (s) => out.push(s),
    start: performance.now() - 2000,
  });
  p.count(100);
  ok(/^\reval █{12}░{12} 100\/200 examples \d+\.\d\/s ETA \d/.test(out[0]), out[0]);
  p.clear();
  equal(out[1], "\r\x1b[K");
  p.clear(); // nothing drawn any more: no output
  equal(out.length, 2);
});

Deno.test("off a terminal a bar prints once per `every` of the way", () => {
  const lines: string[] = [];
  const original = console.error;
  console.error = (s: string) => lines.push(s);
  try {
    const p = new Progress(8, false, true, { label: "eval", every: 0.25 });
    for (let done = 1; done <= 8; done++) p.count(done);
  } finally {
    console.error = original;
  }
  deepEqual(lines.map((l) => l.split(" ")[2]), ["1/8", "2/8", "4/8", "6/8", "8/8"]);
  equal(formatSeconds(2.44), "2.4s");
  equal(formatSeconds(75), "1m15s");
});
