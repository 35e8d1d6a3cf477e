/**
 * Activation memory of an encoder training step: with LoRA on query,value (dropout everywhere),
 * the forward pass leaves exactly the tensors backward reads (every other intermediate is released
 * as soon as the forward has used it), and backward frees each of them once the rule that reads it
 * has run. The saved set is written out below term by term, so a tensor kept longer than needed
 * (or one freed too early: backward would throw on the disposed tensor) fails the test.
 */
import { equal, ok } from "node:assert/strict";
import { setup } from "../helpers.ts";
import { backward, crossEntropy, rt, scope, tensor } from "../../ops/mod.ts";
import { EncoderForSequenceClassification } from "../../models/encoder.ts";
import { ForwardContext } from "../../models/context.ts";
import { lora } from "../../methods/lora.ts";
import { encoderDims, encoderWeights, hostSource, SMALL_ROBERTA } from "./fixtures.ts";

await setup();

const REF = SMALL_ROBERTA;
const B = 2, T = 6, R = 4;

Deno.test("LoRA training step: the forward keeps only what backward reads, backward frees it", async () => {
  const dims = { ...encoderDims(REF, 12), hiddenDropout: 0.1, attentionDropout: 0.1 };
  const model = new EncoderForSequenceClassification(dims, hostSource(encoderWeights(REF, 12, 3)));
  const adapter = lora.apply(model, { r: R, alpha: 8, dropout: 0.1, rslora: false }, {
    targets: ["query", "value"],
    lrMultipliers: {},
    weightDecay: 0,
    headModules: model.headModules,
    taskType: "SEQ_CLS",
    baseModel: "random-roberta",
    seed: 0,
  });
  const ids = tensor(Int32Array.from([0, 5, 9, 4, 7, 2, 0, 7, 3, 2, 1, 1]), [B, T]);
  const mask = tensor(Float32Array.from([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]), [B, T]);
  const labels = tensor(Int32Array.from([0, 1]), [B]);
  const f = 4, n = B * T, h = REF.hidden;
  // Per layer: the layer input x, which LoRA's fused input dropout re-masks in backward for dA
  // (one tensor shared by q and v: no dropped copies are stored), the q/k/v projections and the
  // attention output (attention's rule reads them), the inputs of both LayerNorms (a1 and o), all
  // [n, h]; LoRA's
  // hᵀ = A·xdᵀ [r, n] (q, v); intermediate.dense's output (output.dense reads GELU of it in
  // its pack and GELU′ of it in dx's epilogue) [n, inter]; attention's
  // log-sum-exp [B, heads, T] (the f32 padding mask is read in place: no keep flags); both
  // LayerNorms' mean and 1/σ [n].
  const perLayer = f * (7 * n * h + 2 * n * R + n * REF.inter + B * REF.heads * T + 4 * n);
  // The last layer runs what follows its attention on the [CLS] rows alone (the head reads
  // nothing else): its attention part as above (x, q, k, v, the attention output, hᵀ, the
  // log-sum-exp), then a1 and o [B, h], the FFN activation [B, inter] and the statistics [B].
  const lastLayer = f *
    (5 * n * h + 2 * n * R + B * REF.heads * T + 2 * B * h + B * REF.inter + 4 * B);
  // Head: the dropped [CLS] row (dense's input), tanh's output, its dropped copy (out_proj's
  // input), [B, h] each, and the logits.
  const head = f * (3 * B * h + B * REF.labels);
  // Released during backward: every tensor a rule held (the projections and attention output,
  // the LayerNorm inputs and statistics, the FFN activation); views the products keep of LoRA's
  // inputs stay until the step's scope ends.
  const freedPerLayer = f * (6 * n * h + n * REF.inter + 4 * n);
  const freedLast = f * (4 * n * h + 2 * B * h + B * REF.inter + 4 * B);
  const layersBefore = REF.layers - 1;
  const s0 = rt().pool.stats().live.activations;
  let afterForward = 0, afterBackward = 0;
  scope(() => {
    const ctx = new ForwardContext(true, 5, 0);
    const logits = ctx.run(() => model.forward({ ids, attentionMask: mask }, ctx));
    afterForward = rt().pool.stats().live.activations - s0;
    const loss = crossEntropy(logits, labels);
    backward(loss);
    afterBackward = rt().pool.stats().live.activations - s0;
  });
  equal(
    afterForward,
    layersBefore * perLayer + lastLayer + head,
    "activation bytes after the forward",
  );
  const freed = layersBefore * freedPerLayer + freedLast;
  ok(
    afterBackward <= afterForward - freed + f * 4,
    `after backward ${afterBackward} bytes are live, expected at most ${
      afterForward - freed + f * 4
    }`,
  );
  equal(rt().pool.stats().live.activations, s0, "the scope frees the rest");
  // The gradients reached the adapter.
  for (const g of adapter.groups()) {
    for (const p of g.params) ok(p.grad, `${p.name} has a gradient`);
  }
  let nonZero = 0;
  for (const g of adapter.groups()) {
    for (const p of g.params) nonZero += (await p.grad!.read()).some((v) => v !== 0) ? 1 : 0;
  }
  ok(nonZero > 0);
  for (const t of [ids, mask, labels]) t.dispose();
  model.dispose();
});
