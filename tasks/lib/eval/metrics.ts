/**
 * Evaluation metrics as pure functions over plain arrays, with the conventions of the libraries the
 * published numbers come from: scikit-learn for accuracy, binary F1 and the Matthews correlation,
 * SciPy for the Pearson and Spearman correlations. {@link glueMetrics} returns the official metric
 * set of a GLUE task and the score that PEFT papers report as its main number.
 *
 * All arithmetic is float64 on the host; these run once per evaluation, not per step.
 *
 * @example
 * ```ts
 * import { glueMetrics, matthewsCorrelation } from "./metrics.ts";
 * console.log(matthewsCorrelation([1, 0, 1, 1], [1, 0, 0, 1])); // 0.5773502691896258
 * const { metrics, main } = glueMetrics("mrpc", [1, 1, 0, 1], [1, 0, 0, 1]);
 * console.log(metrics.f1, metrics.accuracy, main); // 0.8 0.75 0.75
 * ```
 *
 * @module
 */
import { GLUE_TASKS, type GlueMetricName, type GlueTask, glueTaskSpec } from "../data/glue.ts";

/** Values a metric compares: predictions or references, one number per example. */
export type Values = ArrayLike<number>;

/** Throws unless both arrays are non-empty, equally long and finite; names the offender. */
function checkPair(what: string, predictions: Values, labels: Values): void {
  if (predictions.length !== labels.length) {
    throw new Error(
      `${what}: predictions has ${predictions.length} values but labels has ${labels.length}; ` +
        `expected one prediction per label`,
    );
  }
  if (predictions.length === 0) throw new Error(`${what}: expected at least one example, got 0`);
  for (const [name, values] of [["predictions", predictions], ["labels", labels]] as const) {
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i])) {
        throw new Error(`${what}: ${name}[${i}] is ${values[i]}; expected a finite number`);
      }
    }
  }
}

/**
 * Fraction of exact matches between predictions and labels (scikit-learn's `accuracy_score`).
 *
 * @example
 * ```ts
 * import { accuracy } from "./metrics.ts";
 * console.log(accuracy([0, 1, 2, 2], [0, 1, 1, 2])); // 0.75
 * ```
 */
export function accuracy(predictions: Values, labels: Values): number {
  checkPair("accuracy", predictions, labels);
  let correct = 0;
  for (let i = 0; i < labels.length; i++) if (predictions[i] === labels[i]) correct++;
  return correct / labels.length;
}

/**
 * Binary F1 of the positive class (scikit-learn's `f1_score(average="binary")`):
 * 2·TP / (2·TP + FP + FN), and 0 when there is no positive prediction or label at all (its
 * `zero_division` default).
 *
 * @example
 * ```ts
 * import { f1Binary } from "./metrics.ts";
 * console.log(f1Binary([1, 1, 0, 0], [1, 0, 1, 0])); // 0.5
 * ```
 */
export function f1Binary(predictions: Values, labels: Values, positive = 1): number {
  checkPair("f1", predictions, labels);
  let tp = 0, fp = 0, fn = 0;
  for (let i = 0; i < labels.length; i++) {
    const p = predictions[i] === positive, t = labels[i] === positive;
    if (p && t) tp++;
    else if (p) fp++;
    else if (t) fn++;
  }
  const denominator = 2 * tp + fp + fn;
  return denominator === 0 ? 0 : (2 * tp) / denominator;
}

/**
 * Matthews correlation coefficient with scikit-learn's multiclass formula (Gorodkin's R_K, which is
 * the usual MCC for two classes): (c·s − Σ t_k·p_k) / √((s² − Σ p_k²)(s² − Σ t_k²)) with c correct
 * predictions, s examples, t_k and p_k the true and predicted counts of class k. Returns 0 when it
 * is undefined (all predictions or all labels in one class), as scikit-learn does.
 *
 * @example
 * ```ts
 * import { matthewsCorrelation } from "./metrics.ts";
 * console.log(matthewsCorrelation([1, 1, 1, 1], [1, 0, 1, 0])); // 0
 * ```
 */
export function matthewsCorrelation(predictions: Values, labels: Values): number {
  checkPair("matthews_correlation", predictions, labels);
  const trueCounts = new Map<number, number>();
  const predCounts = new Map<number, number>();
  let correct = 0;
  for (let i = 0; i < labels.length; i++) {
    trueCounts.set(labels[i], (trueCounts.get(labels[i]) ?? 0) + 1);
    predCounts.set(predictions[i], (predCounts.get(predictions[i]) ?? 0) + 1);
    if (predictions[i] === labels[i]) correct++;
  }
  const s = labels.length;
  let tDotP = 0, pDotP = 0, tDotT = 0;
  for (const [k, t] of trueCounts) tDotP += t * (predCounts.get(k) ?? 0);
  for (const p of predCounts.values()) pDotP += p * p;
  for (const t of trueCounts.values()) tDotT += t * t;
  const covYtYp = correct * s - tDotP;
  const covYpYp = s * s - pDotP;
  const covYtYt = s * s - tDotT;
  if (covYpYp === 0 || covYtYt === 0) return 0;
  return covYtYp / Math.sqrt(covYtYt * covYpYp);
}

/** Pearson correlation of two float64 arrays, two-pass (mean first) for accuracy. */
function pearsonOf(x: Values, y: Values): number {
  const n = x.length;
  let mx = 0, my = 0;
  for (let i = 0; i < n; i++) {
    mx += x[i];
    my += y[i];
  }
  mx /= n;
  my /= n;
  let sxy = 0, sxx = 0, syy = 0;
  for (let i = 0; i < n; i++) {
    const dx = x[i] - mx, dy = y[i] - my;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  if (sxx === 0 || syy === 0) return NaN;
  // Rounding can push |r| a hair past 1; SciPy clips the same way.
  return Math.max(-1, Math.min(1, sxy / Math.sqrt(sxx * syy)));
}

/**
 * Pearson correlation coefficient (SciPy's `pearsonr` statistic). NaN when either input is
 * constant, as SciPy returns: the correlation is undefined there, and 0 would read as a real score.
 *
 * @example
 * ```ts
 * import { pearson } from "./metrics.ts";
 * console.log(pearson([1, 2, 3], [2, 4, 7])); // 0.9933992677987828
 * ```
 */
export function pearson(predictions: Values, labels: Values): number {
  checkPair("pearson", predictions, labels);
  return pearsonOf(predictions, labels);
}

/**
 * Ranks 1..n of `values`, tied values sharing the average of their ranks (SciPy's
 * `rankdata(method="average")`).
 *
 * @example
 * ```ts
 * import { averageRanks } from "./metrics.ts";
 * console.log(averageRanks([10, 20, 10, 30])); // Float64Array [1.5, 3, 1.5, 4]
 * ```
 */
export function averageRanks(values: Values): Float64Array {
  const order = Array.from({ length: values.length }, (_, i) => i);
  order.sort((a, b) => values[a] - values[b]);
  const ranks = new Float64Array(values.length);
  for (let start = 0; start < order.length;) {
    let end = start + 1;
    while (end < order.length && values[order[end]] === values[order[start]]) end++;
    // Positions start..end-1 hold one tie group; ranks are 1-based.
    const rank = (start + 1 + end) / 2;
    for (let j = start; j < end; j++) ranks[order[j]] = rank;
    start = end;
  }
  return ranks;
}

/**
 * Spearman rank correlation (SciPy's `spearmanr` statistic): the Pearson correlation of the average
 * ranks, so ties are handled the way SciPy handles them. NaN when either input is constant.
 *
 * @example
 * ```ts
 * import { spearman } from "./metrics.ts";
 * console.log(spearman([1, 2, 2, 3], [1, 3, 2, 4]).toFixed(4)); // "0.9487"
 * ```
 */
export function spearman(predictions: Values, labels: Values): number {
  checkPair("spearmanr", predictions, labels);
  return pearsonOf(averageRanks(predictions), averageRanks(labels));
}

/** The official metrics of one GLUE evaluation and the main score. */
export interface GlueScores {
  /** The task's official metrics by their Hugging Face `evaluate` names. */
  metrics: Partial<Record<GlueMetricName, number>>;
  /** Which metric is the main score. */
  mainMetric: GlueMetricName;
  /** The main score (the value of `metrics[mainMetric]`). */
  main: number;
}

const METRIC_FUNCTIONS: Record<GlueMetricName, (p: Values, l: Values) => number> = {
  accuracy,
  f1: (p, l) => f1Binary(p, l, 1),
  matthews_correlation: matthewsCorrelation,
  pearson,
  spearmanr: spearman,
};

/**
 * The official GLUE metrics of `task` (CoLA: Matthews correlation; SST-2, QNLI, RTE, WNLI, MNLI:
 * accuracy; MRPC, QQP: F1 and accuracy; STS-B: Pearson and Spearman; AX: Matthews correlation) and
 * the main score PEFT papers report (MRPC/QQP accuracy, STS-B Pearson; see {@link glueTaskSpec}).
 * Classification predictions are class ids; STS-B predictions are scores. Labels of −1 (unlabelled
 * test rows) are rejected rather than scored.
 *
 * @example
 * ```ts
 * import { glueMetrics } from "./metrics.ts";
 * const { metrics, main } = glueMetrics("stsb", [0.5, 2, 4.5], [1, 2.5, 4]);
 * console.log(metrics.pearson === main, metrics.spearmanr); // true 1
 * ```
 */
export function glueMetrics(task: GlueTask, predictions: Values, labels: Values): GlueScores {
  if (!(GLUE_TASKS as readonly string[]).includes(task)) {
    throw new Error(
      `glueMetrics: unknown task "${task}"; expected one of ${GLUE_TASKS.join(", ")}`,
    );
  }
  const spec = glueTaskSpec(task);
  checkPair(`glueMetrics(${task})`, predictions, labels);
  for (let i = 0; i < labels.length; i++) {
    if (!spec.isRegression && !Number.isInteger(predictions[i])) {
      throw new Error(
        `glueMetrics(${task}): predictions[${i}] is ${predictions[i]}; expected a class id`,
      );
    }
    if (labels[i] < 0 || (!spec.isRegression && !Number.isInteger(labels[i]))) {
      const expected = spec.isRegression
        ? "a similarity score in 0..5"
        : `a class id in 0..${spec.numLabels - 1}`;
      throw new Error(
        `glueMetrics(${task}): labels[${i}] is ${labels[i]}; expected ${expected} ` +
          `(test splits carry the label -1: they have no labels to score against)`,
      );
    }
  }
  const metrics: Partial<Record<GlueMetricName, number>> = {};
  for (const name of spec.metrics) metrics[name] = METRIC_FUNCTIONS[name](predictions, labels);
  return { metrics, mainMetric: spec.mainMetric, main: metrics[spec.mainMetric] as number };
}

/**
 * Metrics of an own classification or regression data set: accuracy (and binary F1 of class 1
 * for two classes) with accuracy as the main score; for regression the mean squared error and the
 * Pearson and Spearman correlations, Pearson the main score (higher is better, like the others).
 *
 * @example
 * ```ts
 * import { ownMetrics } from "./metrics.ts";
 * console.log(ownMetrics("regression")([1, 2, 3], [1, 2, 4]).metrics.mse.toFixed(4)); // "0.3333"
 * ```
 */
export function ownMetrics(
  problem: "classification" | "regression",
  numLabels = 2,
): (predictions: Values, labels: Values) => { metrics: Record<string, number>; main: number } {
  return (predictions, labels) => {
    if (problem === "regression") {
      checkPair("mse", predictions, labels);
      let se = 0;
      for (let i = 0; i < labels.length; i++) se += (predictions[i] - labels[i]) ** 2;
      const metrics = {
        mse: se / labels.length,
        pearson: pearson(predictions, labels),
        spearmanr: spearman(predictions, labels),
      };
      return { metrics, main: metrics.pearson };
    }
    const acc = accuracy(predictions, labels);
    const metrics: Record<string, number> = { accuracy: acc };
    if (numLabels === 2) metrics.f1 = f1Binary(predictions, labels);
    return { metrics, main: acc };
  };
}
