/**
 * RobertaForMaskedLM / BertForMaskedLM against an independent float64 PyTorch implementation
 * (tests/reference/mlm_reference.py): the loss over the masked positions, the logits there, and
 * the gradient of the tied word embeddings (which sums the input and the decoder paths).
 */
import { equal, match, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import { backward, reshape, scopeAsync, tensor } from "../../ops/mod.ts";
import { loadMaskedLM, loadModel } from "../../models/load.ts";
import { maskedLmHeadNames } from "../../models/masked_lm.ts";
import { assertClose, setup } from "../helpers.ts";

await setup();

const FIXTURES = new URL("../reference/fixtures/mlm/", import.meta.url).pathname;

interface Expected {
  kind: "roberta" | "bert";
  ids: number[];
  labels: number[];
  b: number;
  t: number;
  loss: number;
  maskedLogits: number[];
  grads: Record<string, number[]>;
}

for (const kind of ["roberta", "bert"] as const) {
  Deno.test(`${kind} masked LM: loss, masked logits and tied-embedding gradient match PyTorch`, async () => {
    const ex: Expected = JSON.parse(await Deno.readTextFile(join(FIXTURES, `${kind}.json`)));
    const loaded = await loadMaskedLM(join(FIXTURES, kind));
    const model = loaded.model;
    equal(loaded.newlyInitialized.length, 0, `every head tensor comes from the file`);
    equal(loaded.unused.length, 0);
    const named = model.namedParameters();
    for (const [, t] of named) t.requiresGrad = true;
    const mask = Float32Array.from(ex.ids, (id) => (id === loaded.config.pad_token_id ? 0 : 1));
    const inputs = () => ({
      ids: tensor(Int32Array.from(ex.ids), [ex.b, ex.t]),
      attentionMask: tensor(mask, [ex.b, ex.t]),
    });
    const loss = await scopeAsync(async () => {
      const l = model.mlmLoss(inputs(), Int32Array.from(ex.labels));
      backward(l);
      return await l.item();
    });
    assertClose([loss], [ex.loss], { rtol: 1e-5 });
    const byName = new Map(named);
    for (const [name, want] of Object.entries(ex.grads)) {
      const g = byName.get(name)?.grad;
      ok(g, `${name} has a gradient`);
      assertClose(await g.read(), want, { atol: 2e-6, rtol: 1e-4 });
    }
    const logits = await scopeAsync(async () => {
      const all = reshape(model.forward(inputs()), [ex.b * ex.t, -1]);
      return await all.read();
    });
    const v = loaded.config.vocab_size;
    const rows = ex.labels.flatMap((y, i) => (y === -100 ? [] : [i]));
    const picked = rows.flatMap((r) => Array.from(logits.subarray(r * v, (r + 1) * v)));
    assertClose(picked, ex.maskedLogits, { atol: 1e-5, rtol: 1e-5 });
    model.dispose();
  });
}

Deno.test("a wrong head (its decoder bias dropped) would fail the comparison", async () => {
  const ex: Expected = JSON.parse(await Deno.readTextFile(join(FIXTURES, "roberta.json")));
  const loaded = await loadMaskedLM(join(FIXTURES, "roberta"));
  // Replace the head's bias by zeros: the loss must then differ from the reference.
  const root = maskedLmHeadNames("roberta").root;
  const bias = loaded.model.namedParameters().find(([n]) => n === `${root}.bias`)![1];
  const zeros = tensor(new Float32Array(bias.size), bias.shape, { category: "weights" });
  (loaded.model.getModule(root) as unknown as { setParameter(n: string, t: unknown): void })
    .setParameter("bias", zeros);
  const mask = Float32Array.from(ex.ids, (id) => (id === 1 ? 0 : 1));
  const loss = await scopeAsync(async () =>
    await loaded.model.mlmLoss({
      ids: tensor(Int32Array.from(ex.ids), [ex.b, ex.t]),
      attentionMask: tensor(mask, [ex.b, ex.t]),
    }, Int32Array.from(ex.labels)).item()
  );
  ok(Math.abs(loss - ex.loss) / ex.loss > 1e-3, `loss ${loss} vs reference ${ex.loss}`);
  loaded.model.dispose();
});

Deno.test("an MLM checkpoint loads for classification: lm_head dropped, a classifier initialised", async () => {
  const loaded = await loadModel(join(FIXTURES, "roberta"), { numLabels: 2 });
  equal(loaded.kind, "encoder");
  ok(loaded.unused.every((n) => n.startsWith("lm_head.")), loaded.unused.join());
  equal(loaded.unused.length, 5); // dense ×2, layer_norm ×2, bias
  ok(loaded.newlyInitialized.includes("classifier.out_proj.weight"));
  loaded.model.dispose();
});

Deno.test("from scratch: every tensor initialised as HF's _init_weights, no weights file needed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mlm-scratch-" });
  await Deno.copyFile(join(FIXTURES, "roberta", "config.json"), join(dir, "config.json"));
  await rejects(() => loadMaskedLM(dir), /safetensors|model/i);
  const loaded = await loadMaskedLM(dir, { fromScratch: true, seed: 3 });
  const p = new Map(loaded.model.namedParameters());
  const ln = await p.get("roberta.embeddings.LayerNorm.weight")!.read();
  ok(ln.every((x) => x === 1), "LayerNorm weights start at 1");
  const bias = await p.get("lm_head.bias")!.read();
  ok(bias.every((x) => x === 0), "biases start at 0");
  const emb = await p.get("roberta.embeddings.word_embeddings.weight")!.read();
  const h = 16;
  ok(emb.subarray(h, 2 * h).every((x) => x === 0), "the padding row (id 1) is zero");
  let sq = 0;
  for (let i = 2 * h; i < emb.length; i++) sq += emb[i] * emb[i];
  const std = Math.sqrt(sq / (emb.length - 2 * h));
  ok(Math.abs(std - 0.02) < 0.004, `std ${std} ≈ initializer_range 0.02`);
  loaded.model.dispose();
  await rejects(
    async () => {
      const d2 = await Deno.makeTempDir();
      await Deno.writeTextFile(
        join(d2, "config.json"),
        JSON.stringify({
          model_type: "llama",
          vocab_size: 8,
          hidden_size: 8,
          intermediate_size: 8,
          num_hidden_layers: 1,
          num_attention_heads: 1,
        }),
      );
      await loadMaskedLM(d2, { fromScratch: true });
    },
    (e: Error) => {
      match(e.message, /no masked-LM head.*--objective clm/);
      return true;
    },
  );
});
