/**
 * safetensors reader/writer: round trips per dtype, tensor-by-tensor reads, the exact byte layout
 * Hugging Face writes, one test per malformed-header case, sharded checkpoints, atomic writes.
 * Host-only: no GPU needed.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  bf16ToF32,
  f32ToBf16,
  openCheckpoint,
  openSafetensors,
  openShardedSafetensors,
  SAFETENSORS_DTYPE_BYTES,
  SafetensorsError,
  writeSafetensors,
} from "../../models/safetensors.ts";
import { f16ToF32, f32ToF16 } from "../../ops/tensor.ts";
import { assertClose, randomArray } from "../helpers.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A raw file: the u64 header length (overridable), the header text, then `dataBytes` bytes. */
function rawFile(header: string, dataBytes: number, declaredLength?: bigint): Uint8Array {
  const json = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, declaredLength ?? BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

/** Write a file from a header object (or text) and assert opening it fails with `pattern`. */
async function assertBadHeader(
  header: string | Record<string, unknown>,
  dataBytes: number,
  pattern: RegExp,
): Promise<void> {
  await withTempDir(async (dir) => {
    const path = join(dir, "bad.safetensors");
    const text = typeof header === "string" ? header : JSON.stringify(header);
    await Deno.writeFile(path, rawFile(text, dataBytes));
    await assertOpenFails(path, pattern);
  });
}

async function assertOpenFails(path: string, pattern: RegExp): Promise<void> {
  await assert.rejects(openSafetensors(path), (e: unknown) => {
    assert.ok(e instanceof SafetensorsError, `expected a SafetensorsError, got ${e}`);
    assert.ok(e.message.startsWith(`${path}: `), `message should name the file: ${e.message}`);
    assert.match(e.message, pattern);
    return true;
  });
}

const f32 = (begin: number, shape: number[]) => ({
  dtype: "F32",
  shape,
  data_offsets: [begin, begin + 4 * shape.reduce((a, b) => a * b, 1)],
});

// ---- round trips ---------------------------------------------------------------------------------

Deno.test("F32 round trip is exact for awkward shapes, with metadata", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "f32.safetensors");
    const shapes = [[1], [7], [33, 5], [130, 3], [], [0, 4]];
    const tensors = shapes.map((shape, i) => ({
      name: `t${i}`,
      dtype: "F32" as const,
      shape,
      data: Float32Array.from(randomArray(shape.reduce((a, b) => a * b, 1), 10 + i, -100, 100)),
    }));
    await writeSafetensors(path, tensors, { format: "pt", note: "round trip" });
    using reader = await openSafetensors(path);
    assert.deepEqual(reader.metadata, { format: "pt", note: "round trip" });
    assert.deepEqual([...reader.names].sort(), tensors.map((t) => t.name).sort());
    for (const t of tensors) {
      assert.deepEqual(reader.info(t.name).shape, t.shape);
      assert.equal(reader.info(t.name).dtype, "F32");
      assert.deepEqual(await reader.readF32(t.name), t.data, t.name);
    }
  });
});

Deno.test("F16 round trip: values rounded once by f32ToF16, bits kept by readRaw", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "f16.safetensors");
    const values = randomArray(130 * 7, 3, -60, 60);
    const bits = f32ToF16(values);
    await writeSafetensors(path, [
      { name: "w", dtype: "F16", shape: [130, 7], data: values },
      // A Uint16Array is taken as encoded bits: frozen f16 weights are copied without re-rounding.
      { name: "bits", dtype: "F16", shape: [33], data: bits.slice(0, 33) },
    ]);
    using reader = await openSafetensors(path);
    const raw = await reader.readRaw("w");
    assert.deepEqual(new Uint16Array(raw.buffer, raw.byteOffset, raw.length / 2), bits);
    const back = await reader.readF32("w");
    assert.deepEqual(back, f16ToF32(bits));
    // f16 keeps 11 significant bits: relative error ≤ 2^-11 on this normal range.
    assertClose(back, Float32Array.from(values), { atol: 0, rtol: 2 ** -11 }, "f16 values");
    assert.deepEqual(await reader.readF32("bits"), f16ToF32(bits.slice(0, 33)));
  });
});

function bitsToF32(bits: number[]): Float32Array {
  return new Float32Array(Uint32Array.from(bits).buffer);
}

/** Independent bf16 reference: pick the nearer of the two bf16 neighbours in float64, ties even. */
function bf16Reference(x: number): number {
  const u = new Uint32Array(bitsToF32([0]).buffer);
  new Float32Array(u.buffer)[0] = x;
  const lo = u[0] >>> 16, hi = (lo + 1) & 0xffff;
  const value = (b: number) => new Float32Array(Uint32Array.of(b << 16).buffer)[0];
  const dLo = Math.abs(x - value(lo)), dHi = Math.abs(value(hi) - x);
  if (dLo < dHi) return lo;
  if (dHi < dLo) return hi;
  return lo & 1 ? hi : lo;
}

Deno.test("BF16 rounding is exact: ties to even, overflow to Inf, NaN stays NaN", async () => {
  const cases: [number, number, string][] = [
    [0x3f800000, 0x3f80, "1.0"],
    [0x3f808000, 0x3f80, "tie, even below"],
    [0x3f818000, 0x3f82, "tie, odd below → up"],
    [0x3f808001, 0x3f81, "just above half"],
    [0x3f807fff, 0x3f80, "just below half"],
    [0xbf818000, 0xbf82, "negative tie → even"],
    [0x80000000, 0x8000, "-0"],
    [0x00008000, 0x0000, "subnormal tie → even"],
    [0x00018000, 0x0002, "subnormal tie → up"],
    [0x7f800000, 0x7f80, "+Inf"],
    [0xff800000, 0xff80, "-Inf"],
    [0x7f7fffff, 0x7f80, "max f32 rounds to Inf"],
    [0x7f7f7fff, 0x7f7f, "largest below the bf16 max's half-ulp"],
  ];
  const values = bitsToF32(cases.map((c) => c[0]));
  const got = f32ToBf16(values);
  cases.forEach(([, expected, what], i) => {
    assert.equal(got[i], expected, `${what}: 0x${got[i].toString(16)}`);
  });
  const nan = f32ToBf16([NaN, ...bitsToF32([0x7f800001, 0xffc00001])]);
  for (const b of nan) {
    assert.ok((b & 0x7f80) === 0x7f80 && (b & 0x7f) !== 0, `NaN → 0x${b.toString(16)}`);
  }

  const random = Float32Array.from(randomArray(130, 5, -1e6, 1e6));
  const bits = f32ToBf16(random);
  random.forEach((x, i) => assert.equal(bits[i], bf16Reference(x), `random ${x}`));

  await withTempDir(async (dir) => {
    const path = join(dir, "bf16.safetensors");
    await writeSafetensors(path, [
      { name: "cases", dtype: "BF16", shape: [cases.length], data: values },
      { name: "nan", dtype: "BF16", shape: [1], data: [NaN] },
    ]);
    using reader = await openSafetensors(path);
    const raw = await reader.readRaw("cases");
    assert.deepEqual(new Uint16Array(raw.buffer, raw.byteOffset, raw.length / 2), got);
    assert.deepEqual(await reader.readF32("cases"), bf16ToF32(got));
    assert.ok(Number.isNaN((await reader.readF32("nan"))[0]));
  });
});

Deno.test("I32 and I64 round trip; integer checks on write and read", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "int.safetensors");
    const ints = [-2147483648, 2147483647, 0, -1, 7, 33, 130];
    await writeSafetensors(path, [
      { name: "i32", dtype: "I32", shape: [7], data: ints },
      { name: "i64", dtype: "I64", shape: [7], data: ints },
      { name: "big", dtype: "I64", shape: [1], data: BigInt64Array.of(1n << 40n) },
    ]);
    using reader = await openSafetensors(path);
    assert.deepEqual(await reader.readI32("i32"), Int32Array.from(ints));
    assert.deepEqual(await reader.readI32("i64"), Int32Array.from(ints));
    const raw = await reader.readRaw("big");
    assert.equal(new BigInt64Array(raw.buffer, raw.byteOffset, 1)[0], 1n << 40n);
    await assert.rejects(reader.readI32("big"), /tensor "big": I64 element 0 is 1099511627776/);
    await assert.rejects(reader.readF32("i32"), /tensor "i32": has dtype I32; readF32 reads/);
    await assert.rejects(
      writeSafetensors(join(dir, "x.safetensors"), [
        { name: "frac", dtype: "I32", shape: [2], data: [1, 2.5] },
      ]),
      /tensor "frac": element 1 is 2.5; I32 needs integers/,
    );
  });
});

// ---- layout and tensor-by-tensor reading ---------------------------------------------------------

Deno.test("writer matches Hugging Face's byte layout: compact JSON padded with spaces to 8", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "hf.safetensors");
    await writeSafetensors(path, [{ name: "a", dtype: "F32", shape: [2], data: [0, 0] }]);
    const bytes = await Deno.readFile(path);
    const json = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}';
    assert.equal(json.length, 54);
    const expected = rawFile(json.padEnd(56, " "), 8);
    assert.deepEqual(bytes, expected);
  });
});

Deno.test("mixed dtypes: aligned back-to-back layout, tensor-by-tensor and concurrent reads", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "mixed.safetensors");
    const entries = [
      { name: "b", dtype: "F16" as const, shape: [7], data: randomArray(7, 1) },
      { name: "a", dtype: "BF16" as const, shape: [1], data: [0.5] },
      { name: "10", dtype: "F32" as const, shape: [33], data: randomArray(33, 2) },
      { name: "2", dtype: "F32" as const, shape: [3], data: randomArray(3, 3) },
      { name: "ids", dtype: "I64" as const, shape: [5], data: [1, 2, 3, 4, 5] },
      { name: "z", dtype: "I32" as const, shape: [1], data: [9] },
    ];
    await writeSafetensors(path, entries);
    const bytes = await Deno.readFile(path);
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(headerLength % 8, 0, "header padded to 8 bytes");
    const header = new TextDecoder().decode(bytes.subarray(8, 8 + headerLength));
    // Larger elements first, then names; "10" < "2" as strings, and stays first in the JSON text.
    assert.deepEqual(
      [...header.matchAll(/"([^"]+)":\{"dtype"/g)].map((m) => m[1]),
      ["ids", "10", "2", "z", "a", "b"],
    );

    using reader = await openSafetensors(path);
    assert.deepEqual(reader.names, ["ids", "10", "2", "z", "a", "b"]);
    let end = 0;
    for (const name of reader.names) {
      const info = reader.info(name);
      assert.equal(info.dataOffsets[0], end, `${name} starts where the previous ends`);
      assert.equal(info.dataOffsets[0] % SAFETENSORS_DTYPE_BYTES[info.dtype], 0, `${name} aligned`);
      end = info.dataOffsets[1];
    }
    assert.equal(8 + headerLength + end, bytes.length);

    // Reverse order, then all at once: reads on the shared handle must not interleave.
    const expectedF32 = (e: (typeof entries)[number]) =>
      e.dtype === "F16"
        ? f16ToF32(f32ToF16(e.data))
        : e.dtype === "BF16"
        ? bf16ToF32(f32ToBf16(e.data))
        : Float32Array.from(e.data);
    const floats = entries.filter((e) => e.dtype !== "I64" && e.dtype !== "I32");
    for (const e of [...floats].reverse()) {
      assert.deepEqual(await reader.readF32(e.name), expectedF32(e), e.name);
    }
    const all = await Promise.all(floats.map((e) => reader.readF32(e.name)));
    floats.forEach((e, i) => assert.deepEqual(all[i], expectedF32(e), `concurrent ${e.name}`));
    assert.deepEqual(await reader.readI32("ids"), Int32Array.of(1, 2, 3, 4, 5));
    assert.throws(() => reader.info("nope"), /tensor "nope": not found; the file holds 6 tensors/);
    const leftovers = [];
    for await (const f of Deno.readDir(dir)) leftovers.push(f.name);
    assert.deepEqual(leftovers, ["mixed.safetensors"], "no temporary files left behind");
  });
});

Deno.test("a failed write leaves the previous file intact and no temporary file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "model.safetensors");
    await writeSafetensors(path, [{ name: "w", dtype: "F32", shape: [2], data: [1, 2] }]);
    const before = await Deno.readFile(path);
    // Fails while encoding, after the temporary file was created.
    await assert.rejects(
      writeSafetensors(path, [
        { name: "a", dtype: "F32", shape: [1], data: [3] },
        { name: "b", dtype: "I64", shape: [1], data: [2 ** 60] },
      ]),
      /tensor "b": element 0 is .*; I64 from numbers needs safe integers/,
    );
    assert.deepEqual(await Deno.readFile(path), before);
    const names = [];
    for await (const f of Deno.readDir(dir)) names.push(f.name);
    assert.deepEqual(names, ["model.safetensors"]);
    await assert.rejects(
      writeSafetensors(path, [{ name: "w", dtype: "F32", shape: [3], data: [1, 2] }]),
      /tensor "w": data has 2 values, shape \[3\] needs 3/,
    );
    await assert.rejects(
      writeSafetensors(path, [
        { name: "w", dtype: "F32", shape: [1], data: [1] },
        { name: "w", dtype: "F32", shape: [1], data: [1] },
      ]),
      /tensor "w": given twice/,
    );
  });
});

// ---- malformed headers: one test and one message per case ---------------------------------------

Deno.test("bad header: truncated file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "short.safetensors");
    await Deno.writeFile(path, new Uint8Array([1, 2, 3]));
    await assertOpenFails(path, /truncated: 3 bytes, expected at least 8/);
  });
});

Deno.test("bad header: header length beyond the file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "long.safetensors");
    await Deno.writeFile(path, rawFile("{}", 0, 1000n));
    await assertOpenFails(path, /header length 1000 exceeds the 2 bytes after the 8-byte prefix/);
  });
});

Deno.test("bad header: header length above the 100 MB limit", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "huge.safetensors");
    await Deno.writeFile(path, rawFile("{}", 0, 1n << 40n));
    await assertOpenFails(path, /header length 1099511627776 exceeds the 100000000-byte limit/);
  });
});

Deno.test("bad header: invalid JSON", async () => {
  await assertBadHeader('{"a": {"dtype": "F32",', 0, /header is not valid JSON/);
});

Deno.test("bad header: not a JSON object", async () => {
  await assertBadHeader("[1, 2]", 0, /header must be a JSON object .*got an array/);
});

Deno.test("bad header: unknown dtype", async () => {
  await assertBadHeader(
    { w: { dtype: "Q4", shape: [2], data_offsets: [0, 2] } },
    2,
    /tensor "w": unknown dtype "Q4"; expected one of F64, F32, F16, BF16/,
  );
});

Deno.test("bad header: negative shape", async () => {
  await assertBadHeader(
    { w: { dtype: "F32", shape: [2, -1], data_offsets: [0, 0] } },
    0,
    /tensor "w": shape must be an array of non-negative integers, got \[2,-1\]/,
  );
});

Deno.test("bad header: non-integer shape", async () => {
  await assertBadHeader(
    { w: { dtype: "F32", shape: [1.5], data_offsets: [0, 4] } },
    4,
    /tensor "w": shape must be an array of non-negative integers, got \[1.5\]/,
  );
});

Deno.test("bad header: malformed data_offsets", async () => {
  await assertBadHeader(
    { w: { dtype: "F32", shape: [1], data_offsets: [0] } },
    4,
    /tensor "w": data_offsets must be \[begin, end\] with non-negative integers, got \[0\]/,
  );
});

Deno.test("bad header: offsets outside the data section", async () => {
  await assertBadHeader(
    { w: f32(8, [2]) },
    12,
    /tensor "w": data_offsets \[8, 16\] lie outside the data section of 12 bytes/,
  );
});

Deno.test("bad header: overlapping tensors", async () => {
  await assertBadHeader(
    { a: f32(0, [4]), b: f32(12, [2]) },
    20,
    /tensor "b": bytes \[12, 20\] overlap tensor "a" at \[0, 16\]/,
  );
});

Deno.test("bad header: byte length differs from numel × dtype size", async () => {
  await assertBadHeader(
    { w: { dtype: "F32", shape: [4], data_offsets: [0, 12] } },
    12,
    /tensor "w": data_offsets \[0, 12\] span 12 bytes, but shape \[4\] of F32 needs 16/,
  );
});

Deno.test("bad header: duplicate tensor names", async () => {
  const entry = JSON.stringify(f32(0, [1]));
  await assertBadHeader(
    `{"w": ${entry}, "v": ${JSON.stringify(f32(4, [1]))}, "w" : ${entry}}`,
    8,
    /tensor "w": appears twice in the header/,
  );
  // The same name nested in __metadata__ is not a duplicate.
  await withTempDir(async (dir) => {
    const path = join(dir, "ok.safetensors");
    await Deno.writeFile(path, rawFile(`{"__metadata__": {"w": "x"}, "w": ${entry}}`, 4));
    using reader = await openSafetensors(path);
    assert.deepEqual(reader.names, ["w"]);
  });
});

Deno.test("bad header: non-string metadata", async () => {
  await assertBadHeader(
    { __metadata__: { total: 3 } },
    0,
    /__metadata__\["total"\] must be a string, got number 3/,
  );
});

// ---- sharded checkpoints -------------------------------------------------------------------------

async function writeShards(dir: string, weightMap: Record<string, string>): Promise<void> {
  await writeSafetensors(join(dir, "model-00001-of-00002.safetensors"), [
    { name: "embed.weight", dtype: "F32", shape: [7, 3], data: randomArray(21, 7) },
    { name: "layers.0.w", dtype: "BF16", shape: [3, 3], data: randomArray(9, 8) },
  ]);
  await writeSafetensors(join(dir, "model-00002-of-00002.safetensors"), [
    { name: "layers.1.w", dtype: "F16", shape: [3, 3], data: randomArray(9, 9) },
  ]);
  const index = { metadata: { total_size: 138 }, weight_map: weightMap };
  await Deno.writeTextFile(join(dir, "model.safetensors.index.json"), JSON.stringify(index));
}

const WEIGHT_MAP = {
  "embed.weight": "model-00001-of-00002.safetensors",
  "layers.0.w": "model-00001-of-00002.safetensors",
  "layers.1.w": "model-00002-of-00002.safetensors",
};

Deno.test("sharded checkpoint: one reader over every shard", async () => {
  await withTempDir(async (dir) => {
    await writeShards(dir, WEIGHT_MAP);
    using reader = await openCheckpoint(dir);
    assert.deepEqual(reader.names, Object.keys(WEIGHT_MAP));
    assert.deepEqual(reader.metadata, { total_size: "138" });
    assert.equal(reader.info("layers.1.w").file, join(dir, "model-00002-of-00002.safetensors"));
    assert.deepEqual(await reader.readF32("embed.weight"), Float32Array.from(randomArray(21, 7)));
    assert.deepEqual(
      await reader.readF32("layers.1.w"),
      f16ToF32(f32ToF16(randomArray(9, 9))),
    );
    assert.deepEqual(
      await reader.readF32("layers.0.w"),
      bf16ToF32(f32ToBf16(randomArray(9, 8))),
    );
    assert.throws(() => reader.info("lm_head.weight"), /tensor "lm_head.weight": not found/);
  });
});

Deno.test("sharded checkpoint: a missing shard file is named", async () => {
  await withTempDir(async (dir) => {
    await writeShards(dir, { ...WEIGHT_MAP, "layers.2.w": "model-00003-of-00003.safetensors" });
    await assert.rejects(
      openShardedSafetensors(join(dir, "model.safetensors.index.json")),
      /model\.safetensors\.index\.json: weight_map\["layers\.2\.w"\] names shard "model-00003-of-00003\.safetensors", which does not exist/,
    );
  });
});

Deno.test("sharded checkpoint: a tensor absent from its mapped shard is named", async () => {
  await withTempDir(async (dir) => {
    await writeShards(dir, { ...WEIGHT_MAP, "layers.1.w": "model-00001-of-00002.safetensors" });
    await assert.rejects(
      openShardedSafetensors(join(dir, "model.safetensors.index.json")),
      /weight_map\["layers\.1\.w"\] names shard "model-00001-of-00002\.safetensors", which does not hold that tensor/,
    );
  });
});

Deno.test("sharded checkpoint: malformed index and empty directory", async () => {
  await withTempDir(async (dir) => {
    const index = join(dir, "model.safetensors.index.json");
    await Deno.writeTextFile(index, JSON.stringify({ weight_map: ["a"] }));
    await assert.rejects(openShardedSafetensors(index), /expected an object with a "weight_map"/);
    await Deno.writeTextFile(index, JSON.stringify({ weight_map: { a: "../a.safetensors" } }));
    await assert.rejects(
      openShardedSafetensors(index),
      /must be a file inside the index's directory/,
    );
    await Deno.remove(index);
    await assert.rejects(
      openCheckpoint(dir),
      /no checkpoint: expected model\.safetensors or model\.safetensors\.index\.json/,
    );
  });
});
