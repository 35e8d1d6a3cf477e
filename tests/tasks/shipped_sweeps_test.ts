/**
 * The sweep files the project ships parse and expand (a typo in one would otherwise surface only
 * when someone runs it for hours), and the seed experiment's follow-up sweeps hold every setting
 * of the main sweep's cells they are compared with, except the ones they vary.
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { expandSweep, readSweep, type SweepPlan } from "../../tasks/lib/sweep/sweep.ts";

const SWEEPS = fileURLToPath(new URL("../../sweeps/", import.meta.url));

async function plan(name: string): Promise<SweepPlan> {
  return expandSweep(await readSweep(`${SWEEPS}${name}`));
}

Deno.test("every shipped sweep file expands into cells with unique ids", async () => {
  const names: string[] = [];
  for await (const e of Deno.readDir(SWEEPS)) if (e.name.endsWith(".yaml")) names.push(e.name);
  ok(names.length >= 5, `only ${names.length} sweep files in ${SWEEPS}`);
  for (const name of names.sort()) {
    const p = await plan(name);
    ok(p.cells.length > 0, `${name}: no cells`);
    equal(new Set(p.cells.map((c) => c.id)).size, p.cells.length, `${name}: repeated cell ids`);
  }
});

Deno.test("the seed experiment's sweeps have the sizes their files and results state", async () => {
  equal((await plan("seed-small-encoder.yaml")).cells.length, 600);
  equal((await plan("seed-small-encoder-lr.yaml")).cells.length, 36);
  equal((await plan("seed-small-encoder-diagnostics.yaml")).cells.length, 12);
});

/** A cell's settings without the run-specific ones (output folder) and the ones named in `drop`. */
function settings(config: object, drop: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = { ...config };
  for (const key of ["output", ...drop]) delete out[key];
  return out;
}

Deno.test("the lower-rate sweep differs from the main sweep's LoRA W_q,W_v SST-2 cells only in lr", async () => {
  const main = (await plan("seed-small-encoder.yaml")).cells.filter((c) =>
    c.config.task === "sst2" && c.config.method === "lora" &&
    (c.config.targets ?? []).join(",") === "query,value"
  );
  const lower = (await plan("seed-small-encoder-lr.yaml")).cells;
  equal(main.length, 12);
  for (const cell of lower) {
    const twin = main.find((m) =>
      m.config.seed === cell.config.seed && m.config.wvLrRatio === cell.config.wvLrRatio
    );
    ok(twin, `${cell.id}: no main-sweep cell with its seed and wvLrRatio`);
    deepEqual(settings(cell.config, ["lr"]), settings(twin.config, ["lr"]), cell.id);
    ok(
      (cell.config.lr ?? 0) < (twin.config.lr ?? 0),
      `${cell.id}: lr is not below the main sweep's`,
    );
  }
  // Its design: at three (η, λ) pairs W_v gets the main sweep's rate while W_q stays lower.
  const mainLr = main[0].config.lr ?? 0;
  const atMainRate = new Set(
    lower.filter((c) => Math.abs((c.config.lr ?? 0) * (c.config.wvLrRatio ?? 1) - mainLr) < 1e-12)
      .map((c) => c.config.wvLrRatio),
  );
  deepEqual([...atMainRate].sort(), [2, 4, 8]);
});
