/**
 * The finite check that guards every model load (`countNonFinite`, ops/reduce.ts): f32 and f16
 * weights of 16 Mi elements (64 MiB in f32: within a software adapter's 128 MiB binding limit),
 * and a model-like list of 200 matrices of 1 Mi elements (one dispatch each, one read-back in
 * real use).
 *
 * Each case is timed by `measure` (bench/util.ts); bytes = the tensors' size (each is read once).
 * `deno run -A bench/reduce_bench.ts` also prints a Markdown table.
 */
import { init, randNormal, recordNonFiniteCounts, type Tensor } from "../ops/mod.ts";
import { measure, type MeasureResult, resultsMarkdown } from "./util.ts";

await init();

interface Case {
  name: string;
  inputs(): Tensor[];
}

const M = 1024 * 1024;
const CASES: Case[] = [
  { name: "f32 [16 Mi]", inputs: () => [randNormal([16 * M], 0, 1, { seed: 1 }).keep()] },
  {
    name: "f16 [16 Mi]",
    inputs: () => [randNormal([16 * M], 0, 1, { seed: 2, dtype: "f16" }).keep()],
  },
  {
    name: "200 × f32 [1 Mi]",
    inputs: () =>
      Array.from({ length: 200 }, (_, i) => randNormal([M], 0, 1, { seed: 10 + i }).keep()),
  },
];

async function run(c: Case): Promise<MeasureResult> {
  const inputs = c.inputs();
  try {
    const bytes = inputs.reduce((s, t) => s + t.size * (t.dtype === "f16" ? 2 : 4), 0);
    return await measure(
      { name: `countNonFinite ${c.name}`, bytes, iterations: 5 },
      () => void recordNonFiniteCounts(inputs),
    );
  } finally {
    for (const t of inputs) t.dispose();
  }
}

for (const c of CASES) {
  Deno.bench({
    name: `countNonFinite ${c.name}`,
    n: 1,
    warmup: 0,
    async fn() {
      await run(c);
    },
  });
}

if (import.meta.main) {
  const results: MeasureResult[] = [];
  for (const c of CASES) results.push(await run(c));
  console.log(resultsMarkdown("Finite check (countNonFinite)", results));
}
