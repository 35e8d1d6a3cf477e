/**
 * Pretraining objectives for `deno task train --objective mlm|clm`: raw text files packed into
 * fixed-length blocks (Hugging Face run_mlm.py / run_clm.py's `group_texts`), streamed from an
 * on-disk token cache one batch at a time, with
 *
 * - **mlm** (RoBERTa/BERT): RobertaForMaskedLM / BertForMaskedLM, 15 % of the non-special tokens
 *   selected, 80/10/10 mask/random/keep (DataCollatorForLanguageModeling), masks drawn afresh for
 *   every micro-batch from (seed, micro-batch index) so a resumed run sees the same masks;
 * - **clm** (LLaMA family): next-token loss on every position of every block.
 *
 * Evaluation reports the held-out loss, its perplexity and the accuracy of the predicted tokens
 * (what run_mlm.py / run_clm.py's compute_metrics report); held-out blocks come from `--eval-file`
 * or, as run_mlm.py's `validation_split_percentage`, the last 5 % of the training blocks. Their
 * masks are fixed (one seed for every evaluation), so evaluations are comparable across steps.
 *
 * @module
 */
import { join, resolve } from "node:path";
import {
  argmax,
  crossEntropy,
  noGrad,
  reshape,
  scopeAsync,
  seededRandom,
  slice,
  type Tensor,
  tensor,
} from "../../../ops/mod.ts";
import { ForwardContext } from "../../../models/context.ts";
import { isEncoderConfig, loadConfig } from "../../../models/config.ts";
import { loadMaskedLM, loadModel } from "../../../models/load.ts";
import type { EncoderForMaskedLM } from "../../../models/masked_lm.ts";
import type { LlamaForCausalLM } from "../../../models/llama.ts";
import { loadTokenizer, type Tokenizer } from "../../../models/tokenizer.ts";
import type { HostBatch } from "../data/pipeline.ts";
import { causalLmLoss, shiftLabels } from "../eval/evaluate.ts";
import { resolveModelDir } from "../hub/model_source.ts";
import type { RunConfig } from "../train/config.ts";
import { maskTokens } from "./masking.ts";
import { packTokenBlocks, type TokenBlocks } from "./tokens.ts";

/** The pretraining objectives. */
export type Objective = "mlm" | "clm";

/** Batches of a run, produced on demand (never all in memory). */
export interface BatchSource {
  /** Batches in one epoch. */
  perEpoch: number;
  /** Micro-batch `k` of the run (epoch ⌊k / perEpoch⌋): a pure function of (seed, k). */
  at(k: number): HostBatch;
  /** Release files. */
  close(): void;
}

/** Which blocks of the packed files train and which evaluate. */
export interface BlockSplit {
  /** The packed token blocks the training batches come from. */
  train: TokenBlocks;
  /** How many of them train. */
  trainCount: number;
  /** Block of `train` that training block i (0 ≤ i < trainCount) reads. */
  trainBlock(i: number): number;
  /** The packed token blocks held out for evaluation. */
  eval: TokenBlocks;
  /** How many blocks evaluate. */
  evalCount: number;
  /** Block of `eval` that evaluation block j (0 ≤ j < evalCount) reads. */
  evalBlock(j: number): number;
}

/** Share of the training blocks held out when no --eval-file is given (run_mlm.py's default). */
export const VALIDATION_SPLIT_PERCENTAGE = 5;

/**
 * The held-out blocks of `count` packed blocks when no --eval-file is given: every
 * (100 / VALIDATION_SPLIT_PERCENTAGE)-th block (blocks 19, 39, … at 5 %), so a corpus made of
 * several sources is held out in proportion to each — run_mlm.py's contiguous 5 % would hold out
 * only the last file's text (here: WordNet glosses). Fewer than 20 blocks hold out the last one.
 */
export function stridedHoldout(count: number): {
  held: number;
  trainBlock(i: number): number;
  heldBlock(j: number): number;
} {
  const stride = Math.round(100 / VALIDATION_SPLIT_PERCENTAGE);
  const held = Math.floor(count / stride);
  if (held === 0) return { held: 1, trainBlock: (i) => i, heldBlock: () => count - 1 };
  return {
    held,
    trainBlock: (i) => i + Math.floor(i / (stride - 1)),
    heldBlock: (j) => j * stride + stride - 1,
  };
}

/** Every trainFile entry as a list, resolved, with a clear error when absent. */
export function trainFiles(config: RunConfig): string[] {
  const f = config.trainFile;
  if (f === undefined || (Array.isArray(f) && f.length === 0)) {
    throw new Error(
      `--objective ${config.objective} needs --train-file (one or more .txt/.jsonl text files)`,
    );
  }
  return (Array.isArray(f) ? f : [f]).map((p) => resolve(p));
}

/** The token cache folder (RUC_PEFT_CACHE, as the data pipeline's). */
function cacheDir(): string {
  const base = Deno.env.get("RUC_PEFT_CACHE") ??
    join(Deno.env.get("HOME") ?? ".", ".cache", "ruc-peft");
  return join(base, "pretrain-blocks");
}

/** Pack the run's files and split off the evaluation blocks. */
export async function splitBlocks(
  config: RunConfig,
  tokenizer: Tokenizer,
  tokenizerId: string,
  log: (s: string) => void,
): Promise<BlockSplit> {
  const options = { blockSize: config.maxLength, textColumn: config.textColumn };
  const train = await packTokenBlocks(
    trainFiles(config),
    tokenizer,
    tokenizerId,
    options,
    cacheDir(),
    log,
  );
  if (config.evalFile) {
    const evalFiles = (Array.isArray(config.evalFile) ? config.evalFile : [config.evalFile]).map(
      (p) => resolve(p),
    );
    const ev = await packTokenBlocks(evalFiles, tokenizer, tokenizerId, options, cacheDir(), log);
    const evalCount = Math.min(ev.count, config.evalLimit ?? ev.count);
    const trainCount = Math.min(train.count, config.trainLimit ?? train.count);
    return {
      train,
      trainCount,
      trainBlock: (i) => i,
      eval: ev,
      evalCount,
      evalBlock: spread(ev.count, evalCount, (j) => j),
    };
  }
  const { held, trainBlock, heldBlock } = stridedHoldout(train.count);
  if (train.count - held < 1) {
    throw new Error(
      `${trainFiles(config).join(", ")}: ${train.count} block(s) of ${config.maxLength} tokens ` +
        "leave none to train after holding out the evaluation blocks; add text, lower " +
        "--max-length, or pass --eval-file",
    );
  }
  const evalCount = Math.min(held, config.evalLimit ?? held);
  const trainCount = Math.min(train.count - held, config.trainLimit ?? train.count - held);
  return {
    train,
    trainCount,
    trainBlock,
    eval: train,
    evalCount,
    evalBlock: spread(held, evalCount, heldBlock),
  };
}

/**
 * `take` of `n` candidate blocks spread evenly over all of them (an --eval-limit scores a sample
 * of the whole held-out set, not its first blocks); block j is `at(⌊j·n / take⌋)`.
 */
function spread(n: number, take: number, at: (j: number) => number): (j: number) => number {
  return (j) => at(Math.floor((j * n) / take));
}

/** A seeded permutation of 0..n−1 (Fisher–Yates), one per epoch as a RandomSampler. */
export function epochOrder(n: number, seed: number, epoch: number): Int32Array {
  const order = Int32Array.from({ length: n }, (_, i) => i);
  const rand = seededRandom(seed * 100003 + epoch);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  return order;
}

/** Mask ids for MLM with the tokenizer's mask token and specials. */
function masker(tokenizer: Tokenizer, probability: number) {
  const maskId = tokenizer.tokenToId("<mask>") ?? tokenizer.tokenToId("[MASK]");
  if (maskId === undefined) {
    throw new Error("--objective mlm: the tokenizer has no <mask> or [MASK] token");
  }
  return (ids: Int32Array, seed: number, stream: number) =>
    maskTokens(ids, {
      maskId,
      vocabSize: tokenizer.vocabSize,
      specialIds: tokenizer.specialIds,
      probability,
      seed,
      stream,
    });
}

/** A host batch of `rows` full blocks; MLM inputs/labels when `mask` is given. */
function blockBatch(
  rows: Int32Array[],
  mask?: (ids: Int32Array) => { inputs: Int32Array; labels: Int32Array },
): HostBatch {
  const b = rows.length, t = rows[0].length;
  const ids = new Int32Array(b * t);
  rows.forEach((r, i) => ids.set(r, i * t));
  const m = mask?.(ids);
  return {
    b,
    t,
    ids: m ? m.inputs : ids,
    mask: new Float32Array(b * t).fill(1),
    labels: new Float32Array(b),
    // MLM: the original ids at selected positions; CLM: the ids themselves (shifted by the loss).
    lmLabels: m ? m.labels : ids,
    lastIndex: Array(b).fill(t - 1),
    tokens: b * t,
  };
}

/** The run's training batches over the split's training blocks. */
export function trainBatches(
  split: BlockSplit,
  config: RunConfig,
  mask?: (ids: Int32Array, seed: number, stream: number) => {
    inputs: Int32Array;
    labels: Int32Array;
  },
): BatchSource {
  const n = split.trainCount;
  const perEpoch = Math.ceil(n / config.batchSize);
  let cached: { epoch: number; order: Int32Array } | null = null;
  return {
    perEpoch,
    at(k) {
      const epoch = Math.floor(k / perEpoch);
      if (cached?.epoch !== epoch) cached = { epoch, order: epochOrder(n, config.seed, epoch) };
      const first = (k % perEpoch) * config.batchSize;
      const rows: Int32Array[] = [];
      for (let i = first; i < Math.min(n, first + config.batchSize); i++) {
        rows.push(split.train.read(split.trainBlock(cached.order[i])));
      }
      // Streams 0..2^31: the micro-batch index; evaluation masks use a seed of their own.
      return blockBatch(rows, mask && ((ids) => mask(ids, config.seed, k)));
    },
    close() {
      split.train.close();
      if (split.eval !== split.train) split.eval.close();
    },
  };
}

/** What an evaluation of a pretraining objective reports. */
export interface PretrainEval {
  /** Mean cross-entropy over the predicted tokens. */
  loss: number;
  /** exp(loss). */
  perplexity: number;
  /** Share of predicted tokens whose argmax is the target. */
  accuracy: number;
  /** Tokens scored. */
  tokens: number;
}

/**
 * Summed loss and argmax hits of logits [N, V] against targets [N] (−100 ignored), reduced on the
 * GPU: only N + 1 numbers come back, never the [N, V] logits. Call inside noGrad and a scope.
 */
function scoreLogits(
  logits: Tensor,
  targets: Int32Array,
): () => Promise<{ lossSum: number; correct: number; n: number }> {
  const loss = crossEntropy(logits, tensor(targets, [targets.length]), { reduction: "sum" });
  const predictedT = argmax(logits, 1);
  return async () => {
    const lossSum = await loss.item();
    const predicted = await predictedT.read();
    let correct = 0, n = 0;
    for (let i = 0; i < targets.length; i++) {
      if (targets[i] === -100) continue;
      n++;
      if (predicted[i] === targets[i]) correct++;
    }
    return { lossSum, correct, n };
  };
}

/** Seed of the evaluation masks: fixed, so every evaluation of a run scores the same masks. */
const EVAL_MASK_SEED = 0x5eed;

/**
 * Score the split's held-out blocks `batchSize` at a time: `logitsOf` gives a batch's logits
 * [N, V] and targets [N] (−100 ignored); loss and hits are summed over every scored token.
 */
async function evaluateBlocks(
  split: BlockSplit,
  batchSize: number,
  batchOf: (rows: Int32Array[], start: number) => HostBatch,
  logitsOf: (h: HostBatch) => { logits: Tensor; targets: Int32Array } | null,
): Promise<PretrainEval> {
  let lossSum = 0, correct = 0, n = 0;
  for (let s = 0; s < split.evalCount; s += batchSize) {
    const rows: Int32Array[] = [];
    for (let i = s; i < Math.min(split.evalCount, s + batchSize); i++) {
      rows.push(split.eval.read(split.evalBlock(i)));
    }
    const h = batchOf(rows, s);
    const r = await scopeAsync(() =>
      noGrad(() => {
        const scored = logitsOf(h);
        return scored ? scoreLogits(scored.logits, scored.targets) : () => Promise.resolve(null);
      })()
    );
    if (!r) continue;
    lossSum += r.lossSum;
    correct += r.correct;
    n += r.n;
  }
  return summarise(lossSum, correct, n);
}

/** Evaluate MLM on the held-out blocks. */
export function evaluateMaskedLM(
  model: EncoderForMaskedLM,
  split: BlockSplit,
  mask: (ids: Int32Array, seed: number, stream: number) => {
    inputs: Int32Array;
    labels: Int32Array;
  },
  batchSize: number,
): Promise<PretrainEval> {
  return evaluateBlocks(
    split,
    batchSize,
    (rows, start) => blockBatch(rows, (ids) => mask(ids, EVAL_MASK_SEED, start)),
    (h) =>
      h.lmLabels.some((y) => y !== -100)
        ? model.maskedLogits(
          { ids: tensor(h.ids, [h.b, h.t]), attentionMask: tensor(h.mask, [h.b, h.t]) },
          h.lmLabels,
        )
        : null,
  );
}

/** Evaluate CLM on the held-out blocks. */
export function evaluateCausalLM(
  model: LlamaForCausalLM,
  split: BlockSplit,
  batchSize: number,
): Promise<PretrainEval> {
  return evaluateBlocks(split, batchSize, (rows) => blockBatch(rows), (h) => {
    const hidden = model.hidden({
      ids: tensor(h.ids, [h.b, h.t]),
      keyMask: tensor(h.mask, [h.b, h.t]),
    });
    const logits = model.logits(slice(hidden, 1, 0, h.t - 1));
    return {
      logits: reshape(logits, [h.b * (h.t - 1), model.dims.vocabSize]),
      targets: shiftLabels(h),
    };
  });
}

function summarise(lossSum: number, correct: number, n: number): PretrainEval {
  if (n === 0) throw new Error("pretraining evaluation: no token to score");
  const loss = lossSum / n;
  return { loss, perplexity: Math.exp(loss), accuracy: correct / n, tokens: n };
}

/** A pretraining task ready for the training loop. */
export interface PreparedPretraining {
  /** Masked (mlm) or causal (clm) language modelling. */
  objective: Objective;
  /** The tokenizer the blocks were packed with. */
  tokenizer: Tokenizer;
  /** The model's folder. */
  modelDir: string;
  /** The tokenizer's folder (the model's unless --tokenizer named another). */
  tokenizerDir: string;
  /** The model with its language-modelling head. */
  loaded:
    | Awaited<ReturnType<typeof loadMaskedLM>>
    | Extract<Awaited<ReturnType<typeof loadModel>>, { kind: "decoder" }>;
  /** Training batches, read from the packed files on demand. */
  batches: BatchSource;
  /** The objective's loss of one batch. */
  loss: (h: HostBatch) => Tensor;
  /** Held-out loss and perplexity. */
  evaluate: () => Promise<PretrainEval>;
  /** Blocks that train / evaluate, and the tokens of the training blocks. */
  counts: { trainBlocks: number; evalBlocks: number; trainTokens: number };
}

/** Resolve the model and the text, pack the blocks, load the model with its LM head. */
export async function preparePretraining(
  config: RunConfig,
  log: (s: string) => void,
): Promise<PreparedPretraining> {
  const objective = config.objective as Objective;
  const modelDir = await resolveModelDir(config.model, config.offline);
  const tokenizerDir = config.tokenizer
    ? await resolveModelDir(config.tokenizer, config.offline)
    : modelDir;
  const tokenizer = await loadTokenizer(tokenizerDir);
  const modelConfig = await loadConfig(modelDir);
  const positions = isEncoderConfig(modelConfig)
    ? modelConfig.max_position_embeddings -
      (modelConfig.model_type === "roberta" ? (modelConfig.pad_token_id ?? 1) + 1 : 0)
    : modelConfig.max_position_embeddings;
  if (config.maxLength > positions) {
    throw new Error(
      `--max-length ${config.maxLength}: ${modelDir}/config.json allows sequences of at most ` +
        `${positions} tokens; pretraining blocks are --max-length tokens long`,
    );
  }
  const split = await splitBlocks(config, tokenizer, tokenizerDir, log);
  const counts = {
    trainBlocks: split.trainCount,
    evalBlocks: split.evalCount,
    trainTokens: split.trainCount * config.maxLength,
  };
  log(
    `${objective}: ${counts.trainBlocks.toLocaleString()} train / ${counts.evalBlocks} eval blocks ` +
      `of ${config.maxLength} tokens (${counts.trainTokens.toLocaleString()} training tokens)`,
  );
  const loadOptions = {
    frozenDtype: config.frozenDtype,
    seed: config.seed,
    fromScratch: config.fromScratch,
  };
  if (objective === "mlm") {
    const loaded = await loadMaskedLM(modelDir, loadOptions);
    const mask = masker(tokenizer, config.mlmProbability);
    const model = loaded.model;
    return {
      objective,
      tokenizer,
      modelDir,
      tokenizerDir,
      loaded,
      batches: trainBatches(split, config, mask),
      counts,
      loss: (h) =>
        model.mlmLoss(
          { ids: tensor(h.ids, [h.b, h.t]), attentionMask: tensor(h.mask, [h.b, h.t]) },
          h.lmLabels,
          ForwardContext.current(),
        ),
      evaluate: () => evaluateMaskedLM(model, split, mask, config.evalBatchSize),
    };
  }
  const loaded = await loadModel(modelDir, loadOptions);
  if (loaded.kind !== "decoder") {
    loaded.model.dispose();
    throw new Error(
      `--objective clm trains a causal LM; ${config.model} is a ${loaded.config.model_type} ` +
        "encoder (encoders use --objective mlm)",
    );
  }
  const model = loaded.model;
  return {
    objective,
    tokenizer,
    modelDir,
    tokenizerDir,
    loaded,
    batches: trainBatches(split, config),
    counts,
    loss: (h) => causalLmLoss(model, h),
    evaluate: () => evaluateCausalLM(model, split, config.evalBatchSize),
  };
}
