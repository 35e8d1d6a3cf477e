/**
 * `deno task evaluate` on commonsense sets with the real stories260K: log-likelihood predictions
 * equal an independent scoring of each candidate; generation mode reports what it extracted.
 */
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { setup } from "../helpers.ts";
import { init, logSoftmax, noGrad, scopeAsync, tensor } from "../../ops/mod.ts";
import { convertLlama2c } from "../../models/llama2c.ts";
import { loadModel } from "../../models/load.ts";
import { loadTokenizer } from "../../models/tokenizer.ts";
import {
  answerCandidates,
  evaluationPrompt,
  loadCommonsense,
  scoringContinuations,
} from "../../tasks/lib/data/commonsense.ts";
import { runEvaluation } from "../../tasks/lib/eval/run_eval.ts";

await setup();

const SHARED = new URL("../../../shared/data/", import.meta.url).pathname;
const present = await Deno.stat(`${SHARED}models/stories260K/stories260K.bin`).then(
  () => true,
  () => false,
);
const dir = await Deno.makeTempDir({ prefix: "eval-test-" });
if (present) {
  await convertLlama2c({
    checkpoint: `${SHARED}models/stories260K/stories260K.bin`,
    tokenizer: `${SHARED}models/stories260K/tok512.bin`,
    output: join(dir, "stories"),
  });
}

Deno.test({
  name: "boolq log-likelihood evaluation picks the candidate an independent scorer prefers",
  ignore: !present,
  fn: async () => {
    const model = join(dir, "stories");
    const report = await runEvaluation({
      model,
      task: "boolq",
      data: `${SHARED}commonsense`,
      limit: 4,
      evalMode: "loglik",
      batchSize: 4,
    });
    equal(report.examples, 4);
    equal(report.metrics.correct, Math.round(report.metrics.accuracy * 4));
    await init();
    const tokenizer = await loadTokenizer(model);
    const loaded = await loadModel(model);
    if (loaded.kind !== "decoder") throw new Error("expected a decoder");
    const records = (await loadCommonsense("boolq", "test", { source: `${SHARED}commonsense` }))
      .slice(0, 4);
    let correct = 0;
    for (const r of records) {
      const prompt = tokenizer.encode(evaluationPrompt(r)).ids.filter((id, i, a) =>
        !(i === a.length - 1 && id === tokenizer.eosId)
      );
      const scores = [];
      for (const cont of scoringContinuations("boolq", r)) {
        const ids = tokenizer.encode(tokenizer.decode(prompt, true) + cont).ids.filter((id) =>
          id !== tokenizer.eosId
        );
        const logp = await scopeAsync(() =>
          noGrad(() =>
            logSoftmax(
              loaded.model.logits(
                loaded.model.hidden({ ids: tensor(Int32Array.from(ids), [1, ids.length]) }),
              ),
            )
          ).read()
        );
        const v = loaded.model.dims.vocabSize;
        let s = 0;
        for (let j = prompt.length; j < ids.length; j++) s += logp[(j - 1) * v + ids[j]];
        scores.push(s);
      }
      const best = answerCandidates("boolq", r)[scores.indexOf(Math.max(...scores))];
      if (best === r.answer) correct++;
    }
    equal(report.metrics.correct, correct);
    loaded.model.dispose();
  },
});

Deno.test({
  name: "ARC-Easy generation evaluation extracts answers from real generations",
  ignore: !present,
  fn: async () => {
    const report = await runEvaluation({
      model: join(dir, "stories"),
      task: "ARC-Easy",
      data: `${SHARED}commonsense`,
      limit: 3,
      evalMode: "generate",
      maxNewTokens: 8,
      batchSize: 3,
    });
    equal(report.examples, 3);
    ok(
      report.samples && report.samples.length === 3 &&
        report.samples.every((s) => s.output.length > 0),
    );
    ok(report.main >= 0 && report.main <= 1);
  },
});

Deno.test({ name: "cleanup", fn: async () => await Deno.remove(dir, { recursive: true }) });
