/**
 * Softmax and LayerNorm bandwidth: softmax on [4096, 768] (a classifier/FFN-sized row) and on
 * [8·12·128, 128] (attention probabilities, B 8, H 12, T 128), LayerNorm on [4096, 768].
 *
 * Each case is timed by `measure` (bench/util.ts): GPU time from timestamp queries, host time
 * where the adapter has none, printed with GB/s; `deno run -A bench/norm_bench.ts` also prints a
 * Markdown table. Bytes count the minimum traffic of each pass, whatever the kernels re-read:
 * forward = read x + write y; softmax backward = read g, y + write dx; LayerNorm backward = read
 * x, g + write dx, then read x, g again for dweight/dbias (per-row statistics and [D] vectors are
 * negligible).
 */
import { backward, init, layerNorm, noGrad, randNormal, softmax, type Tensor } from "../ops/mod.ts";
import { measure, type MeasureResult, resultsMarkdown } from "./util.ts";

await init();

type Mode = "forward" | "forward+backward";

/** One benchmarked op at one shape. */
interface Case {
  name: string;
  shape: [number, number];
  /** Elements moved per element of x, per mode (see the module comment). */
  traffic: Record<Mode, number>;
  /** Persistent inputs: x (and the LayerNorm parameters), plus an output gradient. */
  inputs(requiresGrad: boolean): Tensor[];
  run(inputs: Tensor[]): Tensor;
}

const CASES: Case[] = [
  ...([[4096, 768], [8 * 12 * 128, 128]] as [number, number][]).map((shape): Case => ({
    name: "softmax",
    shape,
    traffic: { forward: 2, "forward+backward": 5 },
    inputs: (requiresGrad) => [randNormal(shape, 0, 3, { seed: 1, requiresGrad }).keep()],
    run: ([x]) => softmax(x),
  })),
  {
    name: "layerNorm",
    shape: [4096, 768],
    traffic: { forward: 2, "forward+backward": 7 },
    inputs: (requiresGrad) => [
      randNormal([4096, 768], 0, 1, { seed: 2, requiresGrad }).keep(),
      randNormal([768], 1, 0.1, { seed: 3, requiresGrad }).keep(),
      randNormal([768], 0, 0.1, { seed: 4, requiresGrad }).keep(),
    ],
    run: ([x, w, b]) => layerNorm(x, w, b),
  },
];

function makeInputs(c: Case, mode: Mode): Tensor[] {
  const requiresGrad = mode === "forward+backward";
  const inputs = c.inputs(requiresGrad);
  return [...inputs, randNormal(c.shape, 0, 1, { seed: 9 }).keep()];
}

/** Record one call (and its backward) inside measure's scope; gradients are dropped too. */
function step(c: Case, inputs: Tensor[], mode: Mode): void {
  const params = inputs.slice(0, -1);
  const gradOut = inputs[inputs.length - 1];
  if (mode === "forward") {
    noGrad(() => c.run(params));
    return;
  }
  backward(c.run(params), gradOut);
  for (const t of params) {
    t.grad?.dispose();
    t.grad = null;
  }
}

const label = (c: Case) => `${c.name} [${c.shape.join(", ")}]`;

/** Measure one case in one mode (inputs live only for the measurement). */
async function run(c: Case, mode: Mode): Promise<MeasureResult> {
  const inputs = makeInputs(c, mode);
  try {
    return await measure({
      name: `${label(c)} ${mode}`,
      bytes: c.traffic[mode] * c.shape[0] * c.shape[1] * 4,
      iterations: 5,
    }, () => step(c, inputs, mode));
  } finally {
    for (const t of inputs) t.dispose();
  }
}

const MODES = ["forward", "forward+backward"] as const;

for (const c of CASES) {
  for (const mode of MODES) {
    Deno.bench({
      name: `${label(c)} ${mode}`,
      group: label(c),
      n: 1,
      warmup: 0,
      async fn() {
        await run(c, mode);
      },
    });
  }
}

if (import.meta.main) {
  const results: MeasureResult[] = [];
  for (const c of CASES) for (const mode of MODES) results.push(await run(c, mode));
  console.log(resultsMarkdown("Softmax and LayerNorm", results));
}
