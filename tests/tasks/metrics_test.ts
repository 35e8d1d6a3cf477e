/**
 * Metrics against values worked out by hand (stated next to each case) or computed once with
 * NumPy using scikit-learn's and SciPy's definitions (`np.corrcoef`, average ranks for ties, the
 * multiclass MCC from the confusion matrix), plus the undefined cases: constant predictions give
 * MCC 0 (scikit-learn) and Pearson/Spearman NaN (SciPy). Host-only: no GPU needed.
 */
import assert from "node:assert/strict";
import {
  accuracy,
  averageRanks,
  f1Binary,
  GLUE_TASKS,
  glueMetrics,
  matthewsCorrelation,
  pearson,
  spearman,
} from "../../tasks/lib/mod.ts";
import { rng } from "../helpers.ts";

const TOL = 1e-12;

function close(actual: number, expected: number, what: string, tol = TOL): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: got ${actual}, expected ${expected}`);
}

// A fixed 40-point data set with ties in both arrays; expected values from NumPy.
const X40 = Array.from({ length: 40 }, (_, i) => (i * 37) % 11);
const Y40 = Array.from({ length: 40 }, (_, i) => ((i * i) % 7) + 0.5 * (i % 3));

Deno.test("accuracy: exact matches over examples, and boundary errors", () => {
  assert.equal(accuracy([0, 1, 2, 2], [0, 1, 1, 2]), 0.75);
  assert.equal(accuracy([1], [1]), 1);
  assert.equal(accuracy([0, 0, 0], [1, 1, 1]), 0);
  assert.throws(() => accuracy([1, 0], [1]), /predictions has 2 values but labels has 1/);
  assert.throws(() => accuracy([], []), /at least one example/);
  assert.throws(() => accuracy([NaN], [1]), /predictions\[0\] is NaN/);
});

Deno.test("f1Binary: 2TP/(2TP+FP+FN) for the positive class, 0 without positives", () => {
  // TP=1, FP=1, FN=1 → 2/4.
  assert.equal(f1Binary([1, 1, 0, 0], [1, 0, 1, 0]), 0.5);
  // TP=3, FP=1, FN=0 → 6/7.
  close(f1Binary([1, 1, 1, 1, 0], [1, 1, 1, 0, 0]), 6 / 7, "f1");
  // No positive prediction and no positive label: scikit-learn's zero_division gives 0.
  assert.equal(f1Binary([0, 0, 0], [0, 0, 0]), 0);
  // Only false negatives: TP=0 → 0.
  assert.equal(f1Binary([0, 0], [1, 1]), 0);
  // The positive class is a parameter: with 0 positive, TP=1 (idx 3), FP=1 (idx 1), FN=1 (idx 2).
  assert.equal(f1Binary([1, 0, 1, 0], [1, 1, 0, 0], 0), 0.5);
});

Deno.test("matthewsCorrelation: hand-computed binary and multiclass values", () => {
  // TP=2, TN=1, FP=1, FN=0 → (2·1 − 1·0)/√(3·2·2·1) = 1/√3.
  close(matthewsCorrelation([1, 0, 1, 1], [1, 0, 0, 1]), 1 / Math.sqrt(3), "binary");
  // scikit-learn's docstring example: matthews_corrcoef([+1,+1,+1,-1], [+1,-1,+1,+1]) = -1/3.
  close(matthewsCorrelation([1, -1, 1, 1], [1, 1, 1, -1]), -1 / 3, "docstring");
  // Three classes: c=5, s=6, t=(2,2,2), p=(2,3,1) → (30−12)/√((36−14)(36−12)) = 18/√528.
  close(
    matthewsCorrelation([0, 1, 1, 0, 1, 2], [0, 1, 2, 0, 1, 2]),
    18 / Math.sqrt(528),
    "multiclass",
  );
  assert.equal(matthewsCorrelation([0, 1, 0, 1], [0, 1, 0, 1]), 1);
  assert.equal(matthewsCorrelation([1, 0, 1, 0], [0, 1, 0, 1]), -1);
});

Deno.test("matthewsCorrelation: 0 when undefined (constant predictions or labels)", () => {
  assert.equal(matthewsCorrelation([1, 1, 1, 1], [1, 0, 1, 0]), 0);
  assert.equal(matthewsCorrelation([0, 0, 0], [1, 0, 1]), 0);
  assert.equal(matthewsCorrelation([1, 0, 1], [1, 1, 1]), 0);
  assert.equal(matthewsCorrelation([2, 2], [2, 2]), 0);
});

Deno.test("matthewsCorrelation equals the binary confusion-matrix formula on random data", () => {
  const r = rng(7);
  for (const n of [1, 7, 33, 130]) {
    const p = Array.from({ length: n }, () => (r() < 0.6 ? 1 : 0));
    const l = Array.from({ length: n }, (_, i) => (r() < 0.8 ? p[i] : 1 - p[i]));
    let tp = 0, tn = 0, fp = 0, fn = 0;
    for (let i = 0; i < n; i++) {
      if (p[i] === 1 && l[i] === 1) tp++;
      else if (p[i] === 0 && l[i] === 0) tn++;
      else if (p[i] === 1) fp++;
      else fn++;
    }
    const d = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn);
    const expected = d === 0 ? 0 : (tp * tn - fp * fn) / Math.sqrt(d);
    close(matthewsCorrelation(p, l), expected, `n=${n}`);
  }
});

Deno.test("pearson: known values; NaN for a constant input", () => {
  // NumPy: np.corrcoef([1,2,3],[2,4,7])[0,1].
  close(pearson([1, 2, 3], [2, 4, 7]), 0.9933992677987828, "3 points");
  close(pearson(X40, Y40), 0.25760083493381947, "40 points");
  close(pearson([1, 2, 3], [-2, -4, -6]), -1, "exact negative line");
  // Invariant to affine maps of either side.
  close(pearson(X40.map((v) => 3 * v - 2), Y40), pearson(X40, Y40), "affine invariance");
  assert.ok(Number.isNaN(pearson([1, 1, 1], [1, 2, 3])));
  assert.ok(Number.isNaN(pearson([1, 2, 3], [4, 4, 4])));
});

Deno.test("averageRanks: tied values share the mean of their ranks", () => {
  assert.deepEqual([...averageRanks([10, 20, 10, 30])], [1.5, 3, 1.5, 4]);
  assert.deepEqual([...averageRanks([5, 5, 5])], [2, 2, 2]);
  assert.deepEqual([...averageRanks([3, 1, 2])], [3, 1, 2]);
  assert.deepEqual([...averageRanks([2, 1, 2, 1, 2])], [4, 1.5, 4, 1.5, 4]);
});

Deno.test("spearman: Pearson of average ranks, ties included", () => {
  // Ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): 4.5/√(4.5·5) = 0.9486832980505138.
  close(spearman([1, 2, 2, 3], [1, 3, 2, 4]), 4.5 / Math.sqrt(22.5), "ties");
  // NumPy on average ranks of the 40-point data (SciPy's spearmanr statistic).
  close(spearman(X40, Y40), 0.24256752509642807, "40 points");
  // Monotone transforms do not change it.
  assert.equal(spearman([1, 2, 3, 4], [1, 10, 100, 1000]), 1);
  close(spearman([1, 2, 3, 4], [4, 3, 2, 1]), -1, "reversed");
  assert.ok(Number.isNaN(spearman([1, 2, 3], [7, 7, 7])));
});

Deno.test("glueMetrics: the official set and main score of each task", () => {
  const expectedSets: Record<string, string[]> = {
    cola: ["matthews_correlation"],
    sst2: ["accuracy"],
    mrpc: ["f1", "accuracy"],
    qqp: ["f1", "accuracy"],
    stsb: ["pearson", "spearmanr"],
    mnli: ["accuracy"],
    qnli: ["accuracy"],
    rte: ["accuracy"],
    wnli: ["accuracy"],
    ax: ["matthews_correlation"],
  };
  const expectedMain: Record<string, string> = {
    cola: "matthews_correlation",
    stsb: "pearson",
    ax: "matthews_correlation",
  };
  for (const task of GLUE_TASKS) {
    const scores = task === "stsb"
      ? glueMetrics(task, [0.5, 2, 4.5], [1, 2.5, 4])
      : glueMetrics(task, [1, 0, 1, 1], [1, 0, 0, 1]);
    assert.deepEqual(Object.keys(scores.metrics).sort(), expectedSets[task].sort(), task);
    assert.equal(scores.mainMetric, expectedMain[task] ?? "accuracy", task);
    assert.equal(scores.main, scores.metrics[scores.mainMetric], task);
  }
  // MRPC: TP=2, FP=1, FN=0 → F1 0.8; 3 of 4 right.
  const mrpc = glueMetrics("mrpc", [1, 1, 0, 1], [1, 0, 0, 1]);
  assert.deepEqual(mrpc.metrics, { f1: 0.8, accuracy: 0.75 });
  assert.equal(mrpc.main, 0.75);
  close(glueMetrics("cola", [1, 0, 1, 1], [1, 0, 0, 1]).main, 1 / Math.sqrt(3), "cola");
  const stsb = glueMetrics("stsb", [0.5, 2, 4.5], [1, 2.5, 4]);
  close(stsb.metrics.pearson as number, 0.9897433186107869, "stsb pearson");
  assert.equal(stsb.metrics.spearmanr, 1);
  // Constant predictions on CoLA: MCC 0, not NaN.
  assert.equal(glueMetrics("cola", [1, 1, 1], [0, 1, 1]).main, 0);
});

Deno.test("glueMetrics: rejects unlabelled (-1) rows, fractional class ids and unknown tasks", () => {
  assert.throws(() => glueMetrics("rte", [0, 1], [0, -1]), /labels\[1\] is -1.*test splits/);
  assert.throws(() => glueMetrics("stsb", [0.1, 1], [-1, 2]), /labels\[0\] is -1/);
  assert.throws(() => glueMetrics("sst2", [0.5, 1], [0, 1]), /predictions\[0\] is 0.5/);
  assert.throws(() => glueMetrics("sst2", [1], [1, 0]), /predictions has 1 values/);
  // @ts-expect-error: an unknown task name must fail at run time too.
  assert.throws(() => glueMetrics("squad", [1], [1]), /unknown task "squad"/);
});
