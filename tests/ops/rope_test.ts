/**
 * RoPE against a plain-TS reference of Hugging Face LLaMA's rotate-half formula (f32 inv_freq and
 * f32 angle, as PyTorch computes them; cos/sin and the rotation in float64): positions [T] and
 * [B, T], positions up to 5000, two thetas, f16 and strided inputs; the backward rule by finite
 * differences; argument errors; and the cos/sin tables stored in the real stories260K checkpoint.
 */
import assert from "node:assert/strict";
import { rope, ropeInvFreq, scope, scopeAsync, tensor, transpose } from "../../ops/mod.ts";
import { assertClose, checkGradients, randomArray, rng, setup } from "../helpers.ts";

await setup();

/** HF LLaMA RoPE on row-major x [B, H, T, Dh]; positions are [T] or [B, T] (row-major). */
function ropeRef(
  x: ArrayLike<number>,
  [b, h, t, dh]: readonly number[],
  positions: ArrayLike<number>,
  theta: number,
): Float64Array {
  const half = dh / 2;
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    invFreq[i] = Math.fround(1 / Math.fround(theta ** Math.fround((2 * i) / dh)));
  }
  const perBatch = positions.length === b * t && b > 1;
  const out = new Float64Array(b * h * t * dh);
  for (let bi = 0; bi < b; bi++) {
    for (let hi = 0; hi < h; hi++) {
      for (let ti = 0; ti < t; ti++) {
        const pos = positions[perBatch ? bi * t + ti : ti];
        const row = ((bi * h + hi) * t + ti) * dh;
        for (let i = 0; i < half; i++) {
          const angle = Math.fround(pos * invFreq[i]);
          const c = Math.cos(angle), s = Math.sin(angle);
          const x1 = x[row + i], x2 = x[row + i + half];
          out[row + i] = x1 * c - x2 * s;
          out[row + i + half] = x2 * c + x1 * s;
        }
      }
    }
  }
  return out;
}

function randomPositions(n: number, max: number, seed: number): Int32Array {
  const r = rng(seed);
  return Int32Array.from({ length: n }, () => Math.floor(r() * max));
}

Deno.test("ropeInvFreq is HF's f32 inv_freq", () => {
  const f = ropeInvFreq(8, 10000);
  assert.deepEqual([...f], [1, 0.10000000149011612, 0.009999999776482582, 0.0010000000474974513]);
  const g = ropeInvFreq(128, 500000);
  for (let i = 0; i < 64; i++) {
    assertClose([g[i]], [500000 ** (-(2 * i) / 128)], { atol: 0, rtol: 2e-7 }, `inv_freq[${i}]`);
  }
});

Deno.test("rope matches HF's rotate-half formula", async () => {
  const cases: { shape: number[]; perBatch: boolean; theta: number; maxPos?: number }[] = [
    { shape: [1, 1, 1, 2], perBatch: false, theta: 10000 },
    { shape: [2, 3, 7, 8], perBatch: false, theta: 10000 },
    { shape: [2, 3, 7, 34], perBatch: true, theta: 10000 },
    { shape: [3, 1, 33, 130], perBatch: true, theta: 500000 },
    // Angles up to 2e5 rad: the in-kernel reduction to [-pi, pi] runs with k ≈ 32k turns.
    { shape: [1, 2, 9, 16], perBatch: false, theta: 10000, maxPos: 200000 },
  ];
  for (const [c, { shape, perBatch, theta, maxPos = 5000 }] of cases.entries()) {
    await scopeAsync(async () => {
      const [b, , t] = shape;
      const n = shape.reduce((p, d) => p * d, 1);
      const x = Float32Array.from(randomArray(n, c + 1));
      const pos = randomPositions(perBatch ? b * t : t, maxPos, c + 11);
      const y = rope(tensor(x, shape), tensor(pos, perBatch ? [b, t] : [t]), { theta });
      assert.deepEqual(y.shape, shape);
      assertClose(
        await y.read(),
        ropeRef(x, shape, pos, theta),
        { atol: 2e-6, rtol: 1e-5 },
        `[${shape.join(", ")}]`,
      );
    });
  }
});

Deno.test("rope reads a transposed [B, T, H, Dh] view and f16 inputs", async () => {
  await scopeAsync(async () => {
    const [b, t, h, dh] = [2, 7, 3, 10];
    const base = Float32Array.from(randomArray(b * t * h * dh, 21));
    const bhtd = new Float32Array(base.length);
    for (let bi = 0; bi < b; bi++) {
      for (let ti = 0; ti < t; ti++) {
        for (let hi = 0; hi < h; hi++) {
          for (let d = 0; d < dh; d++) {
            bhtd[((bi * h + hi) * t + ti) * dh + d] = base[((bi * t + ti) * h + hi) * dh + d];
          }
        }
      }
    }
    const pos = randomPositions(t, 100, 22);
    const viewed = transpose(tensor(base, [b, t, h, dh]), 1, 2);
    const y = rope(viewed, tensor(pos));
    assertClose(await y.read(), ropeRef(bhtd, [b, h, t, dh], pos, 10000), {
      atol: 2e-6,
      rtol: 1e-5,
    }, "strided");
    const half = await rope(tensor(bhtd, [b, h, t, dh], { dtype: "f16" }), tensor(pos)).read();
    const rounded = await tensor(bhtd, [b, h, t, dh], { dtype: "f16" }).read();
    assertClose(half, ropeRef(rounded, [b, h, t, dh], pos, 10000), { atol: 2e-6, rtol: 1e-5 });
  });
});

Deno.test("rope backward matches finite differences", async () => {
  const shape = [2, 2, 5, 6];
  const n = shape.reduce((p, d) => p * d, 1);
  const shared = randomPositions(5, 3000, 31);
  await checkGradients(
    ([x]) => rope(x, tensor(shared)),
    ([x]) => ropeRef(x, shape, shared, 10000),
    [{ shape, values: randomArray(n, 32) }],
  );
  const perBatch = randomPositions(10, 3000, 33);
  // Through a transposed view: x is [B, T, H, Dh] and rope sees [B, H, T, Dh].
  await checkGradients(
    ([x]) => rope(transpose(x, 1, 2), tensor(perBatch, [2, 5])),
    ([x]) => {
      const bhtd = new Float64Array(n);
      for (let b = 0; b < 2; b++) {
        for (let t = 0; t < 5; t++) {
          for (let h = 0; h < 2; h++) {
            for (let d = 0; d < 6; d++) {
              bhtd[((b * 2 + h) * 5 + t) * 6 + d] = x[((b * 5 + t) * 2 + h) * 6 + d];
            }
          }
        }
      }
      return ropeRef(bhtd, shape, perBatch, 10000);
    },
    [{ shape: [2, 5, 2, 6], values: randomArray(n, 34) }],
  );
});

Deno.test("rope rejects odd Dh, wrong ranks and mismatched positions", () => {
  scope(() => {
    const pos = tensor(new Int32Array([0, 1, 2]));
    assert.throws(
      () => rope(tensor(new Float32Array(3 * 7), [1, 1, 3, 7]), pos),
      /head dimension Dh .* must be even, got 7/,
    );
    assert.throws(
      () => rope(tensor(new Float32Array(12), [1, 3, 4]), pos),
      /must be \[B, H, T, Dh\]/,
    );
    const x = tensor(new Float32Array(2 * 3 * 4), [2, 1, 3, 4]);
    assert.throws(() => rope(x, tensor(new Int32Array(4))), /positions .* must be \[T\] = \[3\]/);
    assert.throws(() => rope(x, tensor(new Int32Array(3), [1, 3])), /\[B, T\] = \[2, 3\]/);
    assert.throws(() => rope(x, tensor([0, 1, 2])), /positions .* must be i32/);
  });
});

const STORIES = new URL("../../../shared/data/models/stories260K/stories260K.bin", import.meta.url);
const haveStories = (() => {
  try {
    return Deno.statSync(STORIES).isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "rope reproduces the cos/sin tables of the real stories260K checkpoint",
  ignore: !haveStories, // only when /work/shared/data is absent
  fn: async () => {
    // llama2.c v0 header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    // the f32 arrays end with freq_cis_real and freq_cis_imag, each [seq_len, head_size / 2].
    const bytes = await Deno.readFile(STORIES);
    const [dim, , , heads, , , seqLen] = new Int32Array(bytes.buffer, 0, 7);
    const headDim = dim / heads;
    const half = headDim / 2;
    const floats = new Float32Array(bytes.buffer, 28);
    const cosTable = floats.subarray(
      floats.length - 2 * seqLen * half,
      floats.length - seqLen * half,
    );
    const sinTable = floats.subarray(floats.length - seqLen * half);
    await scopeAsync(async () => {
      // x = [1…1, 0…0] per position, so out = [cos(angle_i)…, sin(angle_i)…].
      const x = new Float32Array(seqLen * headDim);
      for (let t = 0; t < seqLen; t++) x.fill(1, t * headDim, t * headDim + half);
      const positions = Int32Array.from({ length: seqLen }, (_, t) => t);
      const y = await rope(tensor(x, [1, 1, seqLen, headDim]), tensor(positions)).read();
      const gotCos = new Float32Array(seqLen * half), gotSin = new Float32Array(seqLen * half);
      for (let t = 0; t < seqLen; t++) {
        for (let i = 0; i < half; i++) {
          gotCos[t * half + i] = y[t * headDim + i];
          gotSin[t * half + i] = y[t * headDim + half + i];
        }
      }
      assertClose(gotCos, cosTable, { atol: 1e-6, rtol: 0 }, "cos table");
      assertClose(gotSin, sinTable, { atol: 1e-6, rtol: 0 }, "sin table");
    });
  },
});
