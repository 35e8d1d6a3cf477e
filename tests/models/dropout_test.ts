/**
 * Training-mode dropout of the models, against float64 references that apply explicit masks at
 * Hugging Face's sites: RoBERTa/BERT hidden dropout (embeddings, attention and FFN outputs before
 * their residuals), attention-probability dropout, the head's dropout (classifier_dropout when
 * set), LLaMA's attention_dropout; evaluation stays deterministic; a model called without a
 * context inside a training context (the trainer's loss) drops out; the backward regenerates the
 * masks (finite differences through a whole encoder in training mode).
 */
import { equal, notDeepStrictEqual, ok } from "node:assert/strict";
import { assertClose, setup } from "../helpers.ts";
import {
  attentionDropoutKeep,
  backward,
  dropoutThreshold,
  mul,
  rngU32,
  scopeAsync,
  seedU32,
  sum,
  tensor,
} from "../../ops/mod.ts";
import { dropoutCallStream, ForwardContext } from "../../models/context.ts";
import {
  type EncoderDims,
  EncoderForSequenceClassification,
  robertaPositionIds,
} from "../../models/encoder.ts";
import { LlamaForCausalLM } from "../../models/llama.ts";
import { encoderDimsFromConfig, llamaDimsFromConfig } from "../../models/load.ts";
import { parseConfig } from "../../models/config.ts";
import { encoderDims, encoderWeights, hostSource, llamaDims, llamaWeights } from "./fixtures.ts";
import {
  encoderRef,
  type HostWeights,
  llamaRef,
  type RefDropout,
  type RefEncoderDims,
  type RefLlamaDims,
} from "./reference.ts";

await setup();

/** The reference's masks: the host twins of the kernels' rules, numbered as ForwardContext does. */
function refDropout(
  seed: number,
  step: number,
  p: { hidden: number; attention: number; classifier: number },
): RefDropout & { calls: () => number } {
  let call = 0;
  return {
    ...p,
    calls: () => call,
    mask(q: number) {
      const s = dropoutCallStream(seed, step, call++);
      const threshold = dropoutThreshold(q);
      return (i) => (rngU32(seedU32(s.seed), s.stream, i) >= threshold ? 1 / (1 - q) : 0);
    },
    probs(q: number) {
      const d = { p: q, ...dropoutCallStream(seed, step, call++) };
      return (bh, i, j) => (attentionDropoutKeep(d, bh, i, j) ? 1 / (1 - q) : 0);
    },
  };
}

const TOL = { atol: 2e-4, rtol: 1e-3 };

function encoderCase(kind: "roberta" | "bert") {
  const ref: RefEncoderDims = {
    kind,
    vocab: 13,
    hidden: 16,
    inter: 32,
    layers: 2,
    heads: 4,
    eps: 1e-5,
    pad: 1,
    labels: 3,
  };
  const maxPos = 12;
  const ids = [[0, 5, 9, 4, 2], [0, 7, 2, 1, 1]];
  const keep = ids.map((r) => r.map((x, j) => !(j >= 3 && x === 1)));
  const types = kind === "bert"
    ? [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]]
    : ids.map((r) => r.map(() => 0));
  const positions = kind === "roberta"
    ? ids.map((r) => Array.from(robertaPositionIds(r, 1, r.length, 1)))
    : ids.map((r) => r.map((_, j) => j));
  const inputs = () => ({
    ids: tensor(Int32Array.from(ids.flat()), [2, 5]),
    attentionMask: tensor(Float32Array.from(keep.flat().map(Number)), [2, 5]),
    tokenTypeIds: tensor(Int32Array.from(types.flat()), [2, 5]),
  });
  const refLogits = (w: HostWeights, drop?: RefDropout) =>
    encoderRef(w, ref, ids, keep, positions, types, drop);
  return { ref, maxPos, inputs, refLogits };
}

function dimsWith(
  base: EncoderDims,
  p: { hidden: number; attention: number; classifier?: number | null },
): EncoderDims {
  return {
    ...base,
    hiddenDropout: p.hidden,
    attentionDropout: p.attention,
    classifierDropout: p.classifier ?? null,
  };
}

for (const kind of ["roberta", "bert"] as const) {
  Deno.test(`${kind}: training applies dropout at Hugging Face's sites (explicit-mask reference)`, async () => {
    const c = encoderCase(kind);
    const w = encoderWeights(c.ref, c.maxPos, 21);
    const p = { hidden: 0.2, attention: 0.3, classifier: 0.2 };
    const model = new EncoderForSequenceClassification(
      dimsWith(encoderDims(c.ref, c.maxPos), p),
      hostSource(w),
    );
    const ctx = new ForwardContext(true, 5, 3);
    const train = await scopeAsync(() => model.forward(c.inputs(), ctx).read());
    const drop = refDropout(5, 3, p);
    assertClose(train, c.refLogits(w, drop), TOL, `${kind} training logits`);
    // embeddings + 3 sites per layer + the head's (2 for RoBERTa, 1 for BERT).
    equal(ctx.calls, 1 + 3 * c.ref.layers + (kind === "roberta" ? 2 : 1));
    equal(drop.calls(), ctx.calls, "the reference and the model number their calls alike");
    // A reference that left out one site (the head's) does not match: the check can fail.
    const noHead = c.refLogits(w, refDropout(5, 3, { ...p, classifier: 0 }));
    ok(train.some((x, i) => Math.abs(x - noHead[i]) > 1e-2), "the head's dropout matters");
    const noProbs = c.refLogits(w, refDropout(5, 3, { ...p, attention: 0 }));
    ok(train.some((x, i) => Math.abs(x - noProbs[i]) > 1e-2), "attention dropout matters");

    // Evaluation: no dropout, deterministic, and the default outside any context.
    const evalA = await scopeAsync(() => model.forward(c.inputs(), ForwardContext.eval()).read());
    const evalB = await scopeAsync(() => model.forward(c.inputs()).read());
    assertClose(evalA, c.refLogits(w), TOL, `${kind} eval logits`);
    equal(JSON.stringify(Array.from(evalB)), JSON.stringify(Array.from(evalA)));
    ok(train.some((x, i) => Math.abs(x - evalA[i]) > 1e-2), "training differs from evaluation");
    model.dispose();
  });
}

Deno.test("dropout masks are a function of (seed, step): same pair same logits, another differs", async () => {
  const c = encoderCase("roberta");
  const w = encoderWeights(c.ref, c.maxPos, 22);
  const model = new EncoderForSequenceClassification(
    dimsWith(encoderDims(c.ref, c.maxPos), { hidden: 0.1, attention: 0.1 }),
    hostSource(w),
  );
  const at = (seed: number, step: number) =>
    scopeAsync(() => model.forward(c.inputs(), new ForwardContext(true, seed, step)).read());
  const a = await at(9, 4);
  equal(JSON.stringify(Array.from(await at(9, 4))), JSON.stringify(Array.from(a)));
  notDeepStrictEqual(Array.from(await at(9, 5)), Array.from(a));
  notDeepStrictEqual(Array.from(await at(10, 4)), Array.from(a));
  model.dispose();
});

Deno.test("a model called without a context inside a training context drops out (the trainer's loss)", async () => {
  const c = encoderCase("roberta");
  const w = encoderWeights(c.ref, c.maxPos, 23);
  const model = new EncoderForSequenceClassification(
    dimsWith(encoderDims(c.ref, c.maxPos), { hidden: 0.1, attention: 0.1 }),
    hostSource(w),
  );
  // The trainer runs its loss function inside ctx.run; the loss calls model.forward(inputs).
  const implicit = await scopeAsync(() =>
    new ForwardContext(true, 2, 7).run(() => model.forward(c.inputs())).read()
  );
  const explicit = await scopeAsync(() =>
    model.forward(c.inputs(), new ForwardContext(true, 2, 7)).read()
  );
  equal(JSON.stringify(Array.from(implicit)), JSON.stringify(Array.from(explicit)));
  assertClose(
    implicit,
    c.refLogits(w, refDropout(2, 7, { hidden: 0.1, attention: 0.1, classifier: 0.1 })),
    TOL,
    "implicit training context",
  );
  model.dispose();
});

Deno.test("classifier_dropout is the head's rate when set; hidden_dropout_prob otherwise", async () => {
  const c = encoderCase("roberta");
  const w = encoderWeights(c.ref, c.maxPos, 24);
  for (const classifier of [0, 0.5, null]) {
    const model = new EncoderForSequenceClassification(
      dimsWith(encoderDims(c.ref, c.maxPos), { hidden: 0.1, attention: 0, classifier }),
      hostSource(w),
    );
    const got = await scopeAsync(() =>
      model.forward(c.inputs(), new ForwardContext(true, 1, 0)).read()
    );
    const want = c.refLogits(
      w,
      refDropout(1, 0, { hidden: 0.1, attention: 0, classifier: classifier ?? 0.1 }),
    );
    assertClose(got, want, TOL, `classifier_dropout ${classifier}`);
    model.dispose();
  }
  // And config.json's fields reach the model's dimensions.
  const config = parseConfig({
    model_type: "roberta",
    vocab_size: 13,
    hidden_size: 16,
    intermediate_size: 32,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    max_position_embeddings: 12,
    hidden_dropout_prob: 0.15,
    attention_probs_dropout_prob: 0.05,
    classifier_dropout: 0.3,
  }, "config.json");
  const dims = encoderDimsFromConfig(config, 2);
  equal(dims.hiddenDropout, 0.15);
  equal(dims.attentionDropout, 0.05);
  equal(dims.classifierDropout, 0.3);
});

Deno.test("the backward regenerates the masks: encoder gradient in training mode by finite differences", async () => {
  const c = encoderCase("roberta");
  const w = encoderWeights(c.ref, c.maxPos, 25);
  const p = { hidden: 0.2, attention: 0.3, classifier: 0.2 };
  const name = "roberta.encoder.layer.0.attention.self.query.weight";
  const model = new EncoderForSequenceClassification(
    dimsWith(encoderDims(c.ref, c.maxPos), p),
    hostSource(w),
  );
  const weight = model.namedParameters().find(([n]) => n === name)![1];
  weight.requiresGrad = true;
  const coef = Float32Array.from({ length: 2 * 3 }, (_, i) => ((i * 7) % 5) - 2);
  const grad = await scopeAsync(async () => {
    const logits = model.forward(c.inputs(), new ForwardContext(true, 4, 11));
    backward(sum(mul(logits, tensor(coef, [2, 3]))));
    return await weight.grad!.read();
  });
  const values = w.get(name)!;
  const refLoss = () => {
    const y = c.refLogits(w, refDropout(4, 11, p));
    return y.reduce((s, v, i) => s + v * coef[i], 0);
  };
  const eps = 1e-5;
  const picked: number[] = [], numeric: number[] = [];
  for (const i of [0, 17, 40, 99, 128, 255]) {
    const saved = values[i];
    values[i] = saved + eps;
    const up = refLoss();
    values[i] = saved - eps;
    const down = refLoss();
    values[i] = saved;
    picked.push(grad[i]);
    numeric.push((up - down) / (2 * eps));
  }
  ok(numeric.some((g) => Math.abs(g) > 1e-3), "the checked gradient is not trivially 0");
  assertClose(picked, numeric, { atol: 5e-5, rtol: 5e-3 }, `d loss / d ${name}`);
  model.dispose();
});

const LLAMA: RefLlamaDims = {
  vocab: 11,
  hidden: 16,
  inter: 24,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  eps: 1e-5,
  theta: 10000,
  tied: false,
};
const IDS = [[1, 4, 7, 2, 9], [3, 3, 3, 5, 8]];
const KEEP = IDS.map((r) => r.map(() => true));
const POS = IDS.map((r) => r.map((_, j) => j));
const llamaInputs = () => ({
  ids: tensor(Int32Array.from(IDS.flat()), [2, 5]),
  keyMask: tensor(Float32Array.from(KEEP.flat().map(Number)), [2, 5]),
});

Deno.test("LLaMA: attention_dropout applies in training only; 0 (the default) is no dropout at all", async () => {
  const w = llamaWeights(LLAMA, 31);
  const logits = (model: LlamaForCausalLM, ctx: ForwardContext) =>
    scopeAsync(() => model.logits(model.hidden(llamaInputs(), ctx)).read());
  const dropping = new LlamaForCausalLM(
    { ...llamaDims(LLAMA), attentionDropout: 0.25 },
    hostSource(w),
  );
  const ctx = new ForwardContext(true, 8, 2);
  const train = await logits(dropping, ctx);
  equal(ctx.calls, LLAMA.layers, "one attention dropout call per layer");
  const drop = refDropout(8, 2, { hidden: 0, attention: 0.25, classifier: 0 });
  assertClose(train, llamaRef(w, LLAMA, IDS, KEEP, POS, drop), TOL, "LLaMA training logits");
  const evalLogits = await logits(dropping, ForwardContext.eval());
  assertClose(evalLogits, llamaRef(w, LLAMA, IDS, KEEP, POS), TOL, "LLaMA eval logits");
  ok(train.some((x, i) => Math.abs(x - evalLogits[i]) > 1e-2), "training differs from eval");
  dropping.dispose();
  const plain = new LlamaForCausalLM(llamaDims(LLAMA), hostSource(w));
  const noDrop = new ForwardContext(true, 8, 2);
  equal(
    JSON.stringify(Array.from(await logits(plain, noDrop))),
    JSON.stringify(Array.from(await logits(plain, ForwardContext.eval()))),
  );
  equal(noDrop.calls, 0, "no dropout call without attention_dropout");
  plain.dispose();
  // config.json's attention_dropout reaches the dimensions.
  const config = parseConfig({
    model_type: "llama",
    vocab_size: 11,
    hidden_size: 16,
    intermediate_size: 24,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    attention_dropout: 0.1,
  }, "config.json");
  equal(llamaDimsFromConfig(config).attentionDropout, 0.1);
});

Deno.test("dropout streams: distinct for every (step, call), apart from init's, bounded calls", async () => {
  const seen = new Set<string>();
  for (let step = 0; step < 500; step++) {
    for (let call = 0; call < 12; call++) {
      const s = dropoutCallStream(3, step, call);
      seen.add(`${s.seed}:${s.stream}`);
    }
  }
  equal(seen.size, 500 * 12);
  // Past 2³² stream indices (2²⁰ micro-steps) the seed changes, so step 2²⁰ does not replay step 0.
  const first = dropoutCallStream(3, 0, 0), wrapped = dropoutCallStream(3, 2 ** 20, 0);
  equal(wrapped.stream, first.stream);
  ok(wrapped.seed !== first.seed, "the high bits of the stream index pick another seed");
  // Initial weights draw streams 0, 1, … of the plain seed; dropout masks never do.
  ok(first.seed !== seedU32(3), "dropout's seed is salted apart from initialisation's");
  let threw = false;
  try {
    dropoutCallStream(3, 0, 4096);
  } catch (e) {
    threw = /more than 4096 dropout calls/.test(String(e));
  }
  ok(threw, "a forward pass with too many dropout calls is refused with a clear error");
  // Evaluation contexts take no stream at all.
  const ctx = ForwardContext.eval();
  await scopeAsync(() => ctx.dropout(tensor([1, 2, 3]), 0.5).read());
  equal(ctx.calls, 0);
  equal(ctx.attentionDropout(0.5), undefined);
});
