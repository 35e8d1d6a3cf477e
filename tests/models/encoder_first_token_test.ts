/**
 * The classification encoder's last layer computes only the [CLS] rows after its attention when
 * training (`firstTokenOnly`): with dropout everywhere (each gathered row draws the mask of its
 * row in the whole tensor) and LoRA on every Linear (so adapters and their dropout run inside
 * the shortcut), the loss and every gradient equal the all-rows computation's — bit for bit when
 * a gradient sums at most four rows, to float rounding otherwise (a weight gradient then sums
 * the B rows in another grouping than the B·T rows, most of them zero).
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import { assertClose, bitsOf, setup } from "../helpers.ts";
import { backward, crossEntropy, scope, scopeAsync, tensor } from "../../ops/mod.ts";
import { writeInto } from "../../methods/peft.ts";
import { EncoderForSequenceClassification } from "../../models/encoder.ts";
import { ForwardContext } from "../../models/context.ts";
import { lora } from "../../methods/lora.ts";
import { encoderDims, encoderWeights, hostSource, SMALL_ROBERTA } from "./fixtures.ts";

await setup();

const REF = { ...SMALL_ROBERTA, labels: 3 };

// LoRA on every Linear: the adapters' dropout and the composed residual run in the shortcut;
// on query,value: the plain Linears' fused epilogues (dropout, residual, GELU) do.
const ALL = ["query", "key", "value", "dense"], QV = ["query", "value"];
for (const [b, targets] of [[2, ALL], [6, ALL], [6, QV]] as const) {
  Deno.test(`[CLS]-only last layer: the loss and gradients of every row (batch ${b}, dropout, LoRA on ${targets})`, async () => {
    const t = 7;
    const ids = tensor(Int32Array.from({ length: b * t }, (_, i) => (i * 7 + 3) % 37 + 3), [b, t]);
    const mask = tensor(
      Float32Array.from({ length: b * t }, (_, i) => (i % t) < t - (i % 3) ? 1 : 0),
      [b, t],
    );
    const labels = tensor(Int32Array.from({ length: b }, (_, i) => i % REF.labels), [b]);
    const run = async (firstOnly: boolean) => {
      const dims = { ...encoderDims(REF, 12), hiddenDropout: 0.2, attentionDropout: 0.1 };
      const model = new EncoderForSequenceClassification(
        dims,
        hostSource(encoderWeights(REF, 12, 5)),
      );
      model.firstTokenOnly = firstOnly;
      const adapter = lora.apply(model, { r: 4, alpha: 8, dropout: 0.3, rslora: false }, {
        targets: [...targets],
        lrMultipliers: {},
        weightDecay: 0,
        headModules: model.headModules,
        taskType: "SEQ_CLS",
        baseModel: "random-roberta",
        seed: 0,
      });
      // LoRA's B starts at zero: give it values, so the adapters change the outputs.
      const trained = model.namedParameters().filter(([, p]) => p.requiresGrad);
      for (const [name, p] of trained) {
        if (name.includes("lora_B")) {
          writeInto(p, Float32Array.from({ length: p.size }, (_, i) => Math.sin(i + p.size) * 0.3));
        }
      }
      let loss: number[] = [];
      const grads = new Map<string, number[]>();
      await scopeAsync(async () => {
        const ctx = new ForwardContext(true, 11, 3);
        const l = scope(() => {
          const logits = ctx.run(() => model.forward({ ids, attentionMask: mask }, ctx));
          const out = crossEntropy(logits, labels).keep();
          backward(out);
          return out;
        });
        loss = await bitsOf(l);
        l.dispose();
      });
      for (const [name, p] of trained) grads.set(name, p.grad ? await bitsOf(p.grad) : []);
      ok(adapter.groups().length > 0);
      model.dispose();
      return { loss, grads };
    };
    const all = await run(false), first = await run(true);
    deepEqual(first.loss, all.loss, "the loss");
    equal(first.grads.size, all.grads.size);
    const f32 = (bits: number[]) => new Float32Array(Uint32Array.from(bits).buffer);
    let inShortcut = 0;
    for (const [name, g] of all.grads) {
      const mine = first.grads.get(name)!;
      ok(g.length > 0, `${name} has a gradient`);
      // Layer 1's attention.output, intermediate and output run on the [CLS] rows alone.
      const shortcut = /layer\.1\.(attention\.output|intermediate|output)\./.test(name);
      if (shortcut) inShortcut++;
      if (!shortcut || b <= 4) deepEqual(mine, g, name);
      else assertClose(f32(mine), f32(g), { atol: 1e-6, rtol: 1e-5 }, name);
    }
    if (targets === ALL) ok(inShortcut > 0, "adapters inside the shortcut were checked");
    for (const x of [ids, mask, labels]) x.dispose();
  });
}
