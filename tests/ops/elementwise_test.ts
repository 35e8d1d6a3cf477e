/**
 * Elementwise ops against plain-TS float64 references: every op of the UNARY and BINARY tables on
 * awkward shapes, broadcasting, strided (transposed, sliced) inputs, writes into views, the scalar
 * variants, `where`, casts, creation functions, and every backward rule by finite differences.
 */
import assert from "node:assert/strict";
import {
  add,
  addInto,
  addN,
  arange,
  assign,
  backward,
  BINARY,
  binary,
  type BinaryOp,
  cast,
  clearPackCache,
  div,
  f16ToF32,
  f32ToF16,
  fillInto,
  full,
  gelu,
  linear,
  map,
  MATMUL,
  matmulRaw,
  maximum,
  minimum,
  mul,
  ones,
  packCacheBytes,
  pow,
  powScalar,
  rt,
  scope,
  scopeAsync,
  slice,
  sub,
  sum,
  type Tensor,
  tensor,
  transpose,
  UNARY,
  unary,
  type UnaryOp,
  where,
  withVariant,
  zeros,
} from "../../ops/mod.ts";
import { assertClose, checkGradients, expectTensor, randomArray, setup } from "../helpers.ts";

await setup();

// ---- host references ----------------------------------------------------------------------------

/** erf by its Taylor series (float64; |x| ≤ 5 keeps the cancellation below 1e-9). */
function erf(x: number): number {
  if (Math.abs(x) > 5) return Math.sign(x);
  let term = x, s = x;
  for (let n = 1; n < 200; n++) {
    term *= -x * x / n;
    const inc = term / (2 * n + 1);
    s += inc;
    if (Math.abs(inc) < 1e-17) break;
  }
  return (2 / Math.sqrt(Math.PI)) * s;
}

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

/** float64 forward of every unary op; a missing entry would make the coverage test fail. */
const UNARY_REF: Record<UnaryOp, (a: number) => number> = {
  neg: (a) => -a,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (a) => 1 / Math.sqrt(a),
  abs: Math.abs,
  square: (a) => a * a,
  reciprocal: (a) => 1 / a,
  sin: Math.sin,
  cos: Math.cos,
  tanh: Math.tanh,
  sigmoid,
  relu: (a) => Math.max(a, 0),
  silu: (a) => a * sigmoid(a),
  gelu: (a) => 0.5 * a * (1 + erf(a / Math.SQRT2)),
};

/** Ops defined only for positive inputs, tested on [0.1, 3]. */
const POSITIVE_DOMAIN = new Set<UnaryOp>(["log", "sqrt", "rsqrt", "reciprocal"]);

/** PyTorch's pow: negative bases only with integral exponents. */
function powRef(a: number, b: number): number {
  if (b === 0) return 1;
  if (a < 0 && Math.floor(b) !== b) return NaN;
  return Math.pow(a, b);
}

const BINARY_REF: Record<BinaryOp, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  pow: powRef,
  maximum: Math.max,
  minimum: Math.min,
  eq: (a, b) => Number(a === b),
  ne: (a, b) => Number(a !== b),
  lt: (a, b) => Number(a < b),
  le: (a, b) => Number(a <= b),
  gt: (a, b) => Number(a > b),
  ge: (a, b) => Number(a >= b),
};

const COMPARISONS = new Set<BinaryOp>(["eq", "ne", "lt", "le", "gt", "ge"]);

function contiguousStrides(shape: readonly number[]): number[] {
  const s: number[] = [];
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

function numel(shape: readonly number[]): number {
  return shape.reduce((p, d) => p * d, 1);
}

/** Read `shape` elements out of flat `data` through `strides`/`offset` (a host-side view). */
function gather(
  data: ArrayLike<number>,
  shape: readonly number[],
  strides: readonly number[],
  offset = 0,
): Float64Array {
  const out = new Float64Array(numel(shape));
  const cs = contiguousStrides(shape);
  for (let i = 0; i < out.length; i++) {
    let rest = i, idx = offset;
    for (let d = 0; d < shape.length; d++) {
      const c = Math.floor(rest / cs[d]);
      rest -= c * cs[d];
      idx += c * strides[d];
    }
    out[i] = data[idx];
  }
  return out;
}

/** A host operand: contiguous values of `shape`. */
interface HostOperand {
  data: ArrayLike<number>;
  shape: readonly number[];
}

/** NumPy broadcasting on the host, written independently of the kernel's stride trick. */
function broadcastEval(
  outShape: readonly number[],
  operands: HostOperand[],
  f: (...v: number[]) => number,
): Float64Array {
  const out = new Float64Array(numel(outShape));
  const cs = contiguousStrides(outShape);
  const coords = new Array<number>(outShape.length);
  const args = new Array<number>(operands.length);
  for (let i = 0; i < out.length; i++) {
    let rest = i;
    for (let d = 0; d < outShape.length; d++) {
      coords[d] = Math.floor(rest / cs[d]);
      rest -= coords[d] * cs[d];
    }
    operands.forEach((op, k) => {
      const lead = outShape.length - op.shape.length;
      let idx = 0, acc = 1;
      for (let d = op.shape.length - 1; d >= 0; d--) {
        const c = op.shape[d] === 1 ? 0 : coords[d + lead];
        idx += c * acc;
        acc *= op.shape[d];
      }
      args[k] = op.data[idx];
    });
    out[i] = f(...args);
  }
  return out;
}

/** Random f32-representable values in [lo, hi), as float64 for the reference. */
function f32Values(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  return Float64Array.from(Float32Array.from(randomArray(n, seed, lo, hi)));
}

/** Values in [lo, hi) with |v| ≥ gap, so kinks at 0 (abs, relu) never sit inside a difference. */
function awayFromZero(n: number, seed: number, lo: number, hi: number, gap = 0.05): Float64Array {
  return f32Values(n, seed, lo, hi).map((v) => (Math.abs(v) < gap ? (v < 0 ? -gap : gap) : v));
}

function domainOf(op: UnaryOp, n: number, seed: number): Float64Array {
  return POSITIVE_DOMAIN.has(op) ? f32Values(n, seed, 0.1, 3) : awayFromZero(n, seed, -3, 3);
}

const SHAPES: number[][] = [[1], [7], [33], [130], [7, 33], [3, 1, 5, 7]];

// ---- unary ops ----------------------------------------------------------------------------------

Deno.test("every UNARY op has a host reference and a gradient rule", () => {
  for (const op of Object.keys(UNARY) as UnaryOp[]) {
    assert.ok(UNARY_REF[op], `no reference for unary op ${op}`);
    assert.ok((UNARY[op] as { grad?: string }).grad, `unary op ${op} has no gradient`);
  }
});

Deno.test("unary ops match float64 references on awkward shapes", async (t) => {
  for (const op of Object.keys(UNARY) as UnaryOp[]) {
    await t.step(op, async () => {
      for (const [k, shape] of SHAPES.entries()) {
        const x = domainOf(op, numel(shape), 100 + k);
        const expected = x.map(UNARY_REF[op]);
        const y = scope(() => unary(op, tensor(Float32Array.from(x), shape)));
        assert.deepEqual(y.shape, shape);
        await expectTensor(y, expected, { atol: 2e-6, rtol: 2e-6 });
        y.dispose();
      }
    });
  }
});

Deno.test("unary ops read transposed and sliced views in place", async () => {
  // A [33, 7] base read as its transpose [7, 33], and every other row of a [14, 5] base.
  const base = f32Values(33 * 7, 5, -2, 2);
  const rows = f32Values(14 * 5, 6, -2, 2);
  const xt = tensor(Float32Array.from(base), [33, 7]);
  const xs = tensor(Float32Array.from(rows), [14, 5]);
  for (const op of ["exp", "tanh", "gelu", "neg"] as UnaryOp[]) {
    const vt = transpose(xt);
    assert.ok(!vt.isContiguous && vt.sharesStorage(xt));
    const yt = unary(op, vt);
    await expectTensor(
      yt,
      gather(base, [7, 33], [1, 7]).map(UNARY_REF[op]),
      { atol: 2e-6, rtol: 2e-6 },
      [7, 33],
    );
    const vs = slice(xs, 0, 1, 14, 2);
    const ys = unary(op, vs);
    await expectTensor(
      ys,
      gather(rows, [7, 5], [10, 1], 5).map(UNARY_REF[op]),
      { atol: 2e-6, rtol: 2e-6 },
      [7, 5],
    );
    for (const v of [vt, yt, vs, ys]) v.dispose();
  }
  xt.dispose();
  xs.dispose();
});

Deno.test("unary gradients match finite differences", async (t) => {
  for (const op of Object.keys(UNARY) as UnaryOp[]) {
    await t.step(op, async () => {
      const values = domainOf(op, 35, 200);
      await checkGradients(
        ([x]) => unary(op, x),
        ([x]) => x.map(UNARY_REF[op]),
        [{ shape: [7, 5], values }],
      );
    });
  }
});

// ---- binary ops ---------------------------------------------------------------------------------

/** Operand values for `op`: positive bases for pow, nonzero divisors, ties for comparisons. */
function binaryOperands(op: BinaryOp, na: number, nb: number, seed: number): [
  Float64Array,
  Float64Array,
] {
  if (op === "pow") return [f32Values(na, seed, 0.2, 3), f32Values(nb, seed + 1, -2, 2)];
  if (op === "div") return [f32Values(na, seed, -2, 2), awayFromZero(nb, seed + 1, -2, 2, 0.5)];
  if (COMPARISONS.has(op)) {
    // Small integers make equal pairs common, so == and the ≤/≥ edges are exercised.
    const ints = (n: number, s: number) => f32Values(n, s, 0, 3).map(Math.floor);
    return [ints(na, seed), ints(nb, seed + 1)];
  }
  return [f32Values(na, seed, -2, 2), f32Values(nb, seed + 1, -2, 2)];
}

/** [shape of a, shape of b]: equal shapes, scalars, broadcasting both ways and across ranks. */
const BINARY_SHAPES: [number[], number[]][] = [
  [[1], [1]],
  [[130], [130]],
  [[7, 33], [7, 33]],
  [[130], [1]],
  [[], [7, 5]],
  [[7, 1, 33], [5, 1]],
  [[33], [3, 7, 33]],
  [[3, 1, 5, 1], [1, 7, 1, 2]],
];

Deno.test("every BINARY op has a host reference", () => {
  for (const op of Object.keys(BINARY) as BinaryOp[]) {
    assert.ok(BINARY_REF[op], `no reference for binary op ${op}`);
  }
});

Deno.test("binary ops match float64 references with broadcasting", async (t) => {
  for (const op of Object.keys(BINARY) as BinaryOp[]) {
    await t.step(op, async () => {
      for (const [k, [sa, sb]] of BINARY_SHAPES.entries()) {
        const [a, b] = binaryOperands(op, numel(sa), numel(sb), 300 + 2 * k);
        const outShape = broadcastShape(sa, sb);
        const expected = broadcastEval(
          outShape,
          [{ data: a, shape: sa }, { data: b, shape: sb }],
          BINARY_REF[op],
        );
        const y = scope(() =>
          binary(op, tensor(Float32Array.from(a), sa), tensor(Float32Array.from(b), sb))
        );
        await expectTensor(y, expected, { atol: 1e-6, rtol: 2e-6 }, outShape);
        y.dispose();
      }
    });
  }
});

function broadcastShape(a: readonly number[], b: readonly number[]): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const da = a[i - (rank - a.length)] ?? 1, db = b[i - (rank - b.length)] ?? 1;
    out.push(da === 1 ? db : da);
  }
  return out;
}

Deno.test("binary ops mix transposed, sliced and broadcast operands", async () => {
  // a: the transpose of a [33, 7] tensor; b: columns 2, 5, 8, … of a [33, 101] tensor, so b's
  // view has a row stride of 101, a column stride of 3 and an offset of 2.
  const baseA = f32Values(33 * 7, 11, -2, 2);
  const baseB = awayFromZero(33 * 101, 12, -2, 2, 0.5);
  const ta = tensor(Float32Array.from(baseA), [33, 7]);
  const tb = tensor(Float32Array.from(baseB), [33, 101]);
  const at = transpose(ta); // [7, 33]
  const bs = transpose(slice(tb, 1, 2, 23, 3)); // [7, 33]
  assert.deepEqual(bs.shape, [7, 33]);
  const hostA = gather(baseA, [7, 33], [1, 7]);
  const hostB = gather(baseB, [7, 33], [3, 101], 2);
  for (const op of ["add", "mul", "div", "maximum", "lt"] as BinaryOp[]) {
    const y = binary(op, at, bs);
    await expectTensor(
      y,
      hostA.map((v, i) => BINARY_REF[op](v, hostB[i])),
      { atol: 1e-6, rtol: 2e-6 },
      [7, 33],
    );
    y.dispose();
  }
  // A strided view broadcast against a row: [7, 33] − [33].
  const row = f32Values(33, 13);
  const y = sub(at, tensor(Float32Array.from(row), [33]));
  await expectTensor(y, hostA.map((v, i) => v - row[i % 33]), { atol: 1e-6 });
  for (const v of [ta, tb, at, bs, y]) v.dispose();
});

Deno.test("broadcasting errors name both shapes", () => {
  assert.throws(() => add(zeros([3, 4]), zeros([5])), /\[3, 4\] and \[5\] do not broadcast/);
});

/** The binary ops with a gradient rule. */
const DIFFERENTIABLE: BinaryOp[] = ["add", "sub", "mul", "div", "pow", "maximum", "minimum"];

Deno.test("binary gradients match finite differences, broadcast operands included", async (t) => {
  for (const op of Object.keys(BINARY) as BinaryOp[]) {
    const hasGrad = (BINARY[op] as { gradA?: string }).gradA !== undefined;
    assert.equal(hasGrad, DIFFERENTIABLE.includes(op), `${op}: gradient rule presence`);
  }
  for (const op of DIFFERENTIABLE) {
    await t.step(op, async () => {
      for (const [sa, sb] of [[[7, 5], [7, 5]], [[7, 5], [5]], [[1, 5], [7, 1]]]) {
        let [a, b] = binaryOperands(op, numel(sa), numel(sb), 400);
        if (op === "maximum" || op === "minimum") {
          // |a| ≥ 0.3 and |b| ≤ 0.2 keep every pair 0.1 apart: no difference crosses a tie.
          a = awayFromZero(numel(sa), 401, -1, 1, 0.3);
          b = f32Values(numel(sb), 402, -0.2, 0.2);
        }
        await checkGradients(
          ([x, y]) => binary(op, x, y),
          ([x, y]) =>
            broadcastEval(broadcastShape(sa, sb), [{ data: x, shape: sa }, {
              data: y,
              shape: sb,
            }], BINARY_REF[op]),
          [{ shape: sa, values: a }, { shape: sb, values: b }],
        );
      }
    });
  }
});

// ---- scalar operands ----------------------------------------------------------------------------

Deno.test("scalar operands on either side", async () => {
  const x = f32Values(33, 20, 0.5, 2);
  const t = tensor(Float32Array.from(x), [33]);
  const cases: [string, Tensor, (v: number) => number][] = [
    ["add(x, 2)", add(t, 2), (v) => v + 2],
    ["sub(2, x)", sub(2, t), (v) => 2 - v],
    ["sub(x, 2)", sub(t, 2), (v) => v - 2],
    ["mul(-1.5, x)", mul(-1.5, t), (v) => -1.5 * v],
    ["div(1, x)", div(1, t), (v) => 1 / v],
    ["div(x, 4)", div(t, 4), (v) => v / 4],
    ["pow(x, 3)", pow(t, 3), (v) => v ** 3],
    ["pow(2, x)", pow(2, t), (v) => 2 ** v],
    ["powScalar(x, 0.5)", powScalar(t, 0.5), Math.sqrt],
    ["maximum(x, 1)", maximum(t, 1), (v) => Math.max(v, 1)],
    ["minimum(1, x)", minimum(1, t), (v) => Math.min(1, v)],
  ];
  for (const [what, y, f] of cases) {
    assertClose(await y.read(), x.map(f), { atol: 1e-6, rtol: 2e-6 }, what);
    y.dispose();
  }
  t.dispose();
  assert.throws(() => add(1 as unknown as Tensor, 2), /at least one operand must be a tensor/);
});

Deno.test("pow follows PyTorch for negative bases", async () => {
  const x = tensor([-2, -1.5, -0.5, 0, 0.5, 2]);
  await expectTensor(pow(x, 3), [-8, -3.375, -0.125, 0, 0.125, 8]);
  await expectTensor(pow(x, 2), [4, 2.25, 0.25, 0, 0.25, 4]);
  await expectTensor(pow(x, 0), [1, 1, 1, 1, 1, 1]);
  await expectTensor(pow(x, 0.5), [NaN, NaN, NaN, 0, Math.SQRT1_2, Math.SQRT2], { atol: 1e-6 });
});

Deno.test("scalar-operand gradients match finite differences", async (t) => {
  const x = f32Values(33, 21, 0.5, 2);
  const cases: [string, (t: Tensor) => Tensor, (v: number) => number][] = [
    ["add(x, 2)", (t) => add(t, 2), (v) => v + 2],
    ["sub(2, x)", (t) => sub(2, t), (v) => 2 - v],
    ["mul(x, -1.5)", (t) => mul(t, -1.5), (v) => -1.5 * v],
    ["div(2, x)", (t) => div(2, t), (v) => 2 / v],
    ["div(x, 4)", (t) => div(t, 4), (v) => v / 4],
    ["pow(x, 3)", (t) => pow(t, 3), (v) => v ** 3],
    ["pow(1.7, x)", (t) => pow(1.7, t), (v) => 1.7 ** v],
    ["maximum(x, 1.23)", (t) => maximum(t, 1.23), (v) => Math.max(v, 1.23)],
    ["minimum(1.23, x)", (t) => minimum(1.23, t), (v) => Math.min(1.23, v)],
  ];
  for (const [what, op, f] of cases) {
    await t.step(what, async () => {
      const values = x.map((v) => (Math.abs(v - 1.23) < 0.01 ? v + 0.05 : v));
      await checkGradients(([a]) => op(a), ([a]) => a.map(f), [{ shape: [33], values }]);
    });
  }
});

// ---- where, cast, creation ----------------------------------------------------------------------

Deno.test("where selects with broadcasting and routes gradients", async () => {
  const c = f32Values(7 * 5, 30, 0, 2).map(Math.floor); // 0/1 conditions
  const a = f32Values(7 * 5, 31);
  const b = f32Values(5, 32);
  const cond = tensor(Float32Array.from(c), [7, 5]);
  const y = where(cond, tensor(Float32Array.from(a), [7, 5]), tensor(Float32Array.from(b), [5]));
  await expectTensor(y, c.map((v, i) => (v !== 0 ? a[i] : b[i % 5])), { atol: 0 }, [7, 5]);
  await checkGradients(
    ([x, z]) => where(cond, x, z),
    ([x, z]) => c.map((v, i) => (v !== 0 ? x[i] : z[i % 5])),
    [{ shape: [7, 5], values: a }, { shape: [5], values: b }],
  );
  cond.dispose();
});

Deno.test("cast f32 → f16 → f32 rounds like the host f32ToF16/f16ToF32", async () => {
  // Magnitudes from f16 subnormals (2^-24) to near its maximum, plus exact ties that must round
  // to even. Values beyond 65504 are left out: WGSL leaves out-of-range conversions undefined.
  const r = randomArray(4096, 40);
  const values: number[] = Array.from(r, (u, i) => {
    const mag = 2 ** (-26 + 41.9 * Math.abs(u));
    return i % 2 ? -mag : mag;
  });
  values.push(0, -0, 1, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -25, 3 * 2 ** -25, 65504, 65519);
  const x = tensor(Float32Array.from(values));
  const h = cast(x, "f16");
  assert.equal(h.dtype, "f16");
  assert.equal(h.bytes, values.length * 2);
  const back = cast(h, "f32");
  const got = new Uint32Array((await back.read()).buffer);
  const expected = new Uint32Array(f16ToF32(f32ToF16(values)).buffer);
  for (let i = 0; i < values.length; i++) {
    assert.equal(got[i], expected[i], `cast of ${values[i]}: bits ${got[i]} vs ${expected[i]}`);
  }
  // Reading an f16 tensor widens on the host, and agrees with the round trip.
  assertClose(await h.read(), f16ToF32(f32ToF16(values)), { atol: 0, rtol: 0 }, "f16 read");
  for (const t of [x, h, back]) t.dispose();
});

Deno.test("cast to integers truncates, and float casts are differentiable", async () => {
  const x = tensor([-2.7, -0.5, 0, 0.5, 3.9, 130.2]);
  const i = cast(x, "i32");
  assert.equal(i.dtype, "i32");
  assert.deepEqual(Array.from(await i.read()), [-2, 0, 0, 0, 3, 130]);
  const f = cast(i, "f32");
  await expectTensor(f, [-2, 0, 0, 0, 3, 130], { atol: 0 });
  const values = f32Values(7, 41, -4, 4);
  await checkGradients(([t]) => cast(cast(t, "f16"), "f32"), ([t]) => t, [{
    shape: [7],
    values,
  }], { atol: 2e-3, rtol: 0 });
  for (const t of [x, i, f]) t.dispose();
});

Deno.test("creation: zeros, ones, full, arange", async () => {
  for (const n of [1, 7, 33, 130]) {
    await expectTensor(zeros([n]), new Array(n).fill(0), { atol: 0 }, [n]);
    await expectTensor(ones([n, 1]), new Array(n).fill(1), { atol: 0 }, [n, 1]);
    await expectTensor(full([2, n], -3.25), new Array(2 * n).fill(-3.25), { atol: 0 });
    await expectTensor(
      arange(n, 1.5, 0.25),
      Array.from({ length: n }, (_, i) => 1.5 + 0.25 * i),
      { atol: 0 },
    );
    const ai = arange(n, -5, 3, { dtype: "i32" });
    assert.equal(ai.dtype, "i32");
    assert.deepEqual(Array.from(await ai.read()), Array.from({ length: n }, (_, i) => -5 + 3 * i));
  }
  const fi = full([7], 9, { dtype: "u32" });
  assert.deepEqual(Array.from(await fi.read()), new Array(7).fill(9));
  const empty = zeros([0, 3]);
  assert.equal((await empty.read()).length, 0);
  const ones16 = ones([7], { dtype: "f16" });
  await expectTensor(ones16, new Array(7).fill(1), { atol: 0 });
});

Deno.test("arange past 65535 workgroups uses the y grid dimension", async () => {
  // 65535 workgroups of 256 threads cover 16,776,960 elements; 300 more need a second grid row.
  const n = 65535 * 256 + 300;
  const t = arange(n, 0, 1, { dtype: "i32" });
  const v = await t.read();
  let bad = -1;
  for (let i = 0; i < n; i++) {
    if (v[i] !== i) {
      bad = i;
      break;
    }
  }
  assert.equal(bad, -1, `element ${bad} is ${v[bad]}`);
  t.dispose();
});

// ---- writes into views --------------------------------------------------------------------------

Deno.test("assign, fillInto and addInto write through views and leave the rest untouched", async () => {
  const host = f32Values(7 * 33, 50);
  const x = tensor(Float32Array.from(host), [7, 33]);
  const expected = Float64Array.from(host);

  // Columns 3, 5, …, 31 of rows 1..5, written from a [5, 15] value.
  const val = f32Values(5 * 15, 51);
  const target = slice(slice(x, 0, 1, 6), 1, 3, 33, 2);
  assert.deepEqual(target.shape, [5, 15]);
  assign(target, tensor(Float32Array.from(val), [5, 15]));
  for (let r = 0; r < 5; r++) {
    for (let c = 0; c < 15; c++) expected[(r + 1) * 33 + 3 + 2 * c] = val[r * 15 + c];
  }
  await expectTensor(x, expected, { atol: 0 });

  // A broadcast value ([15]) into the same view, then fill a transposed view of a column block.
  const row = f32Values(15, 52);
  assign(target, tensor(Float32Array.from(row), [15]));
  for (let r = 0; r < 5; r++) {
    for (let c = 0; c < 15; c++) expected[(r + 1) * 33 + 3 + 2 * c] = row[c];
  }
  await expectTensor(x, expected, { atol: 0 });
  const block = transpose(slice(x, 1, 0, 2)); // [2, 7], strides [1, 33]
  fillInto(block, 4.5);
  for (let r = 0; r < 7; r++) expected[r * 33] = expected[r * 33 + 1] = 4.5;
  await expectTensor(x, expected, { atol: 0 });

  // In-place accumulation into a strided view reads the target through the output binding.
  const inc = f32Values(7, 53);
  const col = slice(x, 1, 32, 33); // [7, 1]
  addInto(col, tensor(Float32Array.from(inc), [7, 1]));
  for (let r = 0; r < 7; r++) expected[r * 33 + 32] = Math.fround(expected[r * 33 + 32] + inc[r]);
  await expectTensor(x, expected, { atol: 0 });

  // Copy between two disjoint views of the same buffer (rows 0..2 ← rows 4..6).
  assign(slice(x, 0, 0, 3), slice(x, 0, 4, 7));
  for (let i = 0; i < 3 * 33; i++) expected[i] = expected[4 * 33 + i];
  await expectTensor(x, expected, { atol: 0 });

  assert.throws(
    () => assign(target, zeros([4, 15])),
    /do not broadcast|output shape/,
  );
});

Deno.test("map evaluates custom expressions with scalars in i32 and u32", async () => {
  const a = tensor(Int32Array.from([-7, -1, 0, 5, 130]));
  const y = map([a], "a * 3 + i32(u_k)", { compute: "i32", uints: { k: 2 } });
  assert.equal(y.dtype, "i32");
  assert.deepEqual(Array.from(await y.read()), [-19, -1, 2, 17, 392]);
  const z = map([a, a], "a * s_k - b", { scalars: { k: 0.5 } });
  await expectTensor(z, [3.5, 0.5, 0, -2.5, -65], { atol: 0 });
});

Deno.test("addN: the bits of chained adds, one dispatch, g (summed back) for every input", async () => {
  const n = 130;
  const a = tensor(Float32Array.from(randomArray(2 * n, 1, -1e3, 1e3)), [2, n]);
  const b = tensor(Float32Array.from(randomArray(2 * n, 2, -1, 1)), [2, n]);
  const c = tensor(Float32Array.from(randomArray(2 * n, 3, -1e-3, 1e-3)), [2, n]);
  const d0 = rt().dispatchCount;
  const y = addN([a, b, c]);
  assert.equal(rt().dispatchCount - d0, 1);
  assert.deepEqual(await y.read(), await add(add(a, b), c).read());
  await checkGradients(
    ([x, v, w]) => addN([x, v, w]),
    ([x, v, w]) => Float64Array.from(x, (xi, i) => xi + v[i % 3] + w[0]),
    [
      { shape: [4, 3], values: randomArray(12, 4) },
      { shape: [3], values: randomArray(3, 5) },
      { shape: [1], values: randomArray(1, 6) },
    ],
  );
  assert.throws(() => addN([]), /at least one tensor/);
  for (const t of [a, b, c, y]) t.dispose();
});

Deno.test("zeros and fills of 0 use the driver's clear where aligned, a kernel elsewhere", async () => {
  const d0 = rt().dispatchCount;
  const z = zeros([3, 5]);
  assert.equal(rt().dispatchCount - d0, 0, "a zero fill of an aligned tensor is a clear");
  await expectTensor(z, new Array(15).fill(0), { atol: 0 });
  // A strided view, an f16 tensor of odd size and −0 go through the kernel.
  const base = full([4, 4], 7);
  fillInto(transpose(slice(base, 0, 1, 3), 0, 1), 0);
  await expectTensor(base, [7, 7, 7, 7, 0, 0, 0, 0, 0, 0, 0, 0, 7, 7, 7, 7], { atol: 0 });
  const half = zeros([3], { dtype: "f16" });
  await expectTensor(half, [0, 0, 0], { atol: 0 });
  const row = full([2, 3], 1);
  fillInto(slice(row, 0, 1, 2), 0); // contiguous rows at an offset: cleared in place
  await expectTensor(row, [1, 1, 1, 0, 0, 0], { atol: 0 });
  const neg = full([2], -0);
  assert.ok(Object.is((await neg.read())[0], -0));
  for (const t of [z, base, half, row, neg]) t.dispose();
});

Deno.test("map packOut: an elementwise output's pack serves the next product, bits unchanged", async () => {
  // [37, 12] and [3, 5, 8] pack (last dim a multiple of 4); [7, 10] and a transposed (strided)
  // input cannot and must fall back.
  const cases: { shape: number[]; strided?: boolean; packs: boolean }[] = [
    { shape: [37, 12], packs: true },
    { shape: [3, 5, 8], packs: true },
    { shape: [7, 10], packs: false },
    { shape: [12, 8], strided: true, packs: false },
  ];
  for (const c of cases) {
    for (const variant of MATMUL.variantNames()) {
      await withVariant("matmul", variant, async () => {
        const cols = c.shape.at(-1)!, n = c.shape.reduce((a, d) => a * d);
        const run = (packOut: boolean) =>
          scopeAsync(async () => {
            clearPackCache();
            const v = Float32Array.from(randomArray(n, 71, -3, 3));
            const x = c.strided
              ? transpose(tensor(v, [cols, n / cols]), 0, 1)
              : tensor(v, c.shape, { requiresGrad: true });
            const w = tensor(Float32Array.from(randomArray(5 * cols, 72)), [5, cols], {
              requiresGrad: true,
            });
            const y = gelu(x, { packOut });
            const d0 = rt().dispatchCount;
            const z = linear(y, w);
            const productDispatches = rt().dispatchCount - d0;
            backward(
              sum(mul(z, tensor(Float32Array.from(randomArray(n / cols * 5, 73)), z.shape))),
            );
            const out = [await y.read(), await z.read(), await w.grad!.read()];
            if (x.grad) out.push(await x.grad.read());
            const bits = out.map((a) => Array.from(new Uint32Array((a as Float32Array).buffer)));
            return { bits, productDispatches };
          });
        const plain = await run(false), hinted = await run(true);
        const what = `${variant} [${c.shape}]${c.strided ? " strided" : ""}`;
        plain.bits.forEach((b, i) => assert.deepEqual(hinted.bits[i], b, `${what}: ${i}`));
        const saved = variant === "texture" && c.packs ? 1 : 0;
        assert.equal(hinted.productDispatches, plain.productDispatches - saved, what);
      });
    }
  }
});

Deno.test("map packOut: a product that reads the pack once takes it out of the cache", async () => {
  await withVariant("matmul", "texture", () =>
    scopeAsync(async () => {
      clearPackCache();
      const x = tensor(Float32Array.from(randomArray(24 * 8, 74)), [24, 8]);
      const w = tensor(Float32Array.from(randomArray(8 * 4, 75)), [8, 4]);
      const before = packCacheBytes();
      const y = map([x], "a * 2.0", { packOut: true });
      assert.equal(packCacheBytes(), before + 24 * 2 * 16, "the pack is cached once written");
      const plain = await matmulRaw(map([x], "a * 2.0"), w).read();
      const d0 = rt().dispatchCount;
      const z = matmulRaw(y, w); // no reuseA: the product takes the pack over and releases it
      assert.equal(rt().dispatchCount - d0, 2, "packs w and runs the product, not y's pack");
      assert.equal(packCacheBytes(), before, "neither pack is kept (w is no frozen weight)");
      assert.deepEqual(Array.from(await z.read()), Array.from(plain));
    }));
});
