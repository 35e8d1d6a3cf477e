/**
 * safetensors I/O: a strict reader that loads one tensor at a time from a file handle, a sharded
 * reader over `model.safetensors.index.json`, an atomic writer, and f32 ↔ bf16 conversion.
 *
 * File layout (Hugging Face's format): an 8-byte little-endian u64 `N`, `N` bytes of JSON header
 * `{"__metadata__": {..}, "name": {"dtype", "shape", "data_offsets": [begin, end]}, ..}`, then the
 * data section, with offsets relative to its start. Every header is validated before any tensor is
 * read, so a corrupt or hostile file fails with a message naming the file, the tensor and what was
 * expected instead of yielding garbage weights. Host byte order is assumed little-endian (every
 * platform Deno ships for), so little-endian tensor bytes are viewed directly as typed arrays.
 *
 * f16 conversion is ops/tensor.ts's `f32ToF16` / `f16ToF32`; this module adds the bf16 pair.
 *
 * @example
 * ```ts
 * import { openSafetensors, writeSafetensors } from "./safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, [{ name: "w", dtype: "BF16", shape: [2], data: [1, -0.5] }]);
 * const reader = await openSafetensors(path);
 * console.log(reader.info("w").shape, await reader.readF32("w")); // [2] Float32Array [1, -0.5]
 * reader.close();
 * ```
 *
 * @module
 */
import { basename, dirname, isAbsolute, join } from "node:path";
import { f16ToF32, f32ToF16 } from "../ops/tensor.ts";

/** Element types a safetensors header may name (the ones this toolkit can meet in checkpoints). */
export type SafetensorsDType =
  | "F64"
  | "F32"
  | "F16"
  | "BF16"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U8"
  | "BOOL";

/** Bytes per element of each safetensors dtype. */
export const SAFETENSORS_DTYPE_BYTES: Readonly<Record<SafetensorsDType, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** The header-length limit Hugging Face's reader enforces (bytes); larger means a corrupt file. */
export const MAX_HEADER_BYTES = 100_000_000;

/** The name of the sharded-checkpoint index Hugging Face writes next to its shards. */
export const SAFETENSORS_INDEX_FILE = "model.safetensors.index.json";

/** The name of a single-file Hugging Face checkpoint. */
export const SAFETENSORS_FILE = "model.safetensors";

/** Where one tensor lives: its dtype, shape and byte range in the data section of `file`. */
export interface SafetensorsTensorInfo {
  /** The tensor's name in the header. */
  readonly name: string;
  /** Element type. */
  readonly dtype: SafetensorsDType;
  /** Shape (row-major, contiguous). */
  readonly shape: readonly number[];
  /** `[begin, end)` in bytes, relative to the start of the data section. */
  readonly dataOffsets: readonly [number, number];
  /** Path of the file that holds the tensor. */
  readonly file: string;
}

/** A parsed and validated header. */
export interface SafetensorsHeader {
  /** Tensors in data order (ascending `begin`). */
  readonly tensors: SafetensorsTensorInfo[];
  /** The free-form `__metadata__` string map (empty when absent). */
  readonly metadata: Record<string, string>;
}

/** A malformed safetensors file or index, or a request for something it does not hold. */
export class SafetensorsError extends Error {
  /** The file (or index) at fault. */
  readonly file: string;
  /** The tensor at fault, when there is one. */
  readonly tensor: string | undefined;

  /**
   * An error whose message names the file, the tensor and the problem.
   *
   * @param file the file (or index) at fault
   * @param tensor the tensor at fault, when there is one
   * @param detail what was found and what was expected
   */
  constructor(file: string, tensor: string | undefined, detail: string) {
    super(`${file}: ${tensor === undefined ? "" : `tensor "${tensor}": `}${detail}`);
    this.name = "SafetensorsError";
    this.file = file;
    this.tensor = tensor;
  }
}

function isDType(value: unknown): value is SafetensorsDType {
  return typeof value === "string" && Object.hasOwn(SAFETENSORS_DTYPE_BYTES, value);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return "an array";
  if (value === null) return "null";
  if (typeof value === "string") return JSON.stringify(value);
  return typeof value === "object" ? "an object" : `${typeof value} ${String(value)}`;
}

/**
 * The top-level keys of a JSON object text, in order and with repeats. JSON.parse keeps only the
 * last of two equal keys, which would let one tensor silently shadow another, so duplicates are
 * found on the raw text. The text must already be valid JSON: the scan only tracks string
 * boundaries and nesting depth, and a depth-1 string followed by ':' is a key.
 */
function topLevelKeys(text: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") depth--;
    else if (c === '"') {
      const start = i;
      for (i++; text[i] !== '"'; i++) if (text[i] === "\\") i++;
      if (depth !== 1) continue;
      let j = i + 1;
      while (text[j] === " " || text[j] === "\t" || text[j] === "\n" || text[j] === "\r") j++;
      if (text[j] === ":") keys.push(JSON.parse(text.slice(start, i + 1)) as string);
    }
  }
  return keys;
}

/**
 * Parse and validate a safetensors JSON header.
 *
 * @param json the header's bytes (UTF-8 JSON, possibly space-padded)
 * @param file the file name used in error messages
 * @param dataBytes the size of the data section that the offsets must fit in
 * @returns the tensors in data order and the metadata
 * @throws {SafetensorsError} naming the file, the tensor and what was expected
 *
 * @example
 * ```ts
 * import { parseSafetensorsHeader } from "./safetensors.ts";
 * const json = new TextEncoder().encode('{"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}');
 * console.log(parseSafetensorsHeader(json, "x.safetensors", 8).tensors[0].shape); // [2]
 * ```
 */
export function parseSafetensorsHeader(
  json: Uint8Array,
  file: string,
  dataBytes: number,
): SafetensorsHeader {
  const fail = (detail: string, tensor?: string): never => {
    throw new SafetensorsError(file, tensor, detail);
  };
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(json);
  } catch {
    return fail("header is not valid UTF-8");
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    return fail(`header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(parsed)) {
    return fail(
      `header must be a JSON object mapping tensor names to entries, got ${describe(parsed)}`,
    );
  }
  const seen = new Set<string>();
  for (const key of topLevelKeys(text)) {
    if (seen.has(key)) fail("appears twice in the header; names must be unique", key);
    seen.add(key);
  }

  const metadata: Record<string, string> = {};
  const tensors: SafetensorsTensorInfo[] = [];
  for (const [name, entry] of Object.entries(parsed)) {
    if (name === "__metadata__") {
      if (!isPlainObject(entry)) {
        fail(`__metadata__ must be an object of strings, got ${describe(entry)}`);
      }
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== "string") {
          fail(`__metadata__["${k}"] must be a string, got ${describe(v)}`);
        }
        metadata[k] = v as string;
      }
      continue;
    }
    if (!isPlainObject(entry)) {
      fail(`entry must be an object {dtype, shape, data_offsets}, got ${describe(entry)}`, name);
    }
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (!isDType(dtype)) {
      fail(
        `unknown dtype ${describe(dtype)}; expected one of ${
          Object.keys(SAFETENSORS_DTYPE_BYTES).join(", ")
        }`,
        name,
      );
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`, name);
    }
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)
    ) {
      fail(
        `data_offsets must be [begin, end] with non-negative integers, got ${
          JSON.stringify(offsets)
        }`,
        name,
      );
    }
    const [begin, end] = offsets as number[];
    if (begin > end || end > dataBytes) {
      fail(
        `data_offsets [${begin}, ${end}] lie outside the data section of ${dataBytes} bytes ` +
          `(expected 0 ≤ begin ≤ end ≤ ${dataBytes})`,
        name,
      );
    }
    const dims = shape as number[];
    const elementBytes = SAFETENSORS_DTYPE_BYTES[dtype as SafetensorsDType];
    const expected = dims.reduce((n, d) => n * d, 1) * elementBytes;
    if (end - begin !== expected) {
      fail(
        `data_offsets [${begin}, ${end}] span ${end - begin} bytes, but shape [${
          dims.join(", ")
        }] ` +
          `of ${dtype} needs ${expected} (numel × ${elementBytes})`,
        name,
      );
    }
    tensors.push({
      name,
      dtype: dtype as SafetensorsDType,
      shape: dims,
      dataOffsets: [begin, end],
      file,
    });
  }

  tensors.sort((a, b) =>
    a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]
  );
  let prev: SafetensorsTensorInfo | undefined;
  for (const cur of tensors) {
    if (cur.dataOffsets[0] === cur.dataOffsets[1]) continue; // empty tensors share no bytes
    if (prev && cur.dataOffsets[0] < prev.dataOffsets[1]) {
      fail(
        `bytes [${cur.dataOffsets[0]}, ${cur.dataOffsets[1]}] overlap tensor "${prev.name}" at ` +
          `[${prev.dataOffsets[0]}, ${prev.dataOffsets[1]}]; tensors must not share bytes`,
        cur.name,
      );
    }
    prev = cur;
  }
  return { tensors, metadata };
}

// ---- reading -------------------------------------------------------------------------------------

/** Read access to the tensors of one safetensors file or of a sharded checkpoint. */
export interface SafetensorsReader extends Disposable {
  /** The file (or index) this reader was opened on. */
  readonly path: string;
  /** Tensor names: data order for one file, weight_map order for a sharded checkpoint. */
  readonly names: readonly string[];
  /** The `__metadata__` map (of the index's `metadata` strings, for a sharded checkpoint). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Whether a tensor of this name exists. */
  has(name: string): boolean;
  /** dtype, shape and location of a tensor; throws {@link SafetensorsError} if it is absent. */
  info(name: string): SafetensorsTensorInfo;
  /** The tensor's little-endian bytes, in a fresh buffer (e.g. to keep f16 weights as f16). */
  readRaw(name: string): Promise<Uint8Array>;
  /** The tensor widened or narrowed to f32; for F32, F16, BF16 and F64 tensors. */
  readF32(name: string): Promise<Float32Array>;
  /** The tensor as i32; for I32, I16, I8, U8, BOOL, and I64 whose values fit in 32 bits. */
  readI32(name: string): Promise<Int32Array>;
  /** Release the file handles. */
  close(): void;
}

/** Shared decoding on top of `info` + `readRaw`, so single and sharded readers behave alike. */
abstract class ReaderBase implements SafetensorsReader {
  abstract readonly path: string;
  abstract readonly names: readonly string[];
  abstract readonly metadata: Readonly<Record<string, string>>;
  abstract has(name: string): boolean;
  abstract info(name: string): SafetensorsTensorInfo;
  abstract readRaw(name: string): Promise<Uint8Array>;
  abstract close(): void;

  async readF32(name: string): Promise<Float32Array> {
    const info = this.info(name);
    const raw = await this.readRaw(name);
    switch (info.dtype) {
      case "F32":
        return new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
      case "F16":
        return f16ToF32(new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2));
      case "BF16":
        return bf16ToF32(new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2));
      case "F64":
        return Float32Array.from(new Float64Array(raw.buffer, raw.byteOffset, raw.byteLength / 8));
      default:
        throw new SafetensorsError(
          info.file,
          name,
          `has dtype ${info.dtype}; readF32 reads F32, F16, BF16 or F64 (use readI32 or readRaw)`,
        );
    }
  }

  async readI32(name: string): Promise<Int32Array> {
    const info = this.info(name);
    const raw = await this.readRaw(name);
    const { buffer, byteOffset, byteLength } = raw;
    switch (info.dtype) {
      case "I32":
        return new Int32Array(buffer, byteOffset, byteLength / 4);
      case "I16":
        return Int32Array.from(new Int16Array(buffer, byteOffset, byteLength / 2));
      case "I8":
        return Int32Array.from(new Int8Array(buffer, byteOffset, byteLength));
      case "U8":
      case "BOOL":
        return Int32Array.from(raw);
      case "I64": {
        const wide = new BigInt64Array(buffer, byteOffset, byteLength / 8);
        const out = new Int32Array(wide.length);
        for (let i = 0; i < wide.length; i++) {
          const v = wide[i];
          if (v < -2147483648n || v > 2147483647n) {
            throw new SafetensorsError(
              info.file,
              name,
              `I64 element ${i} is ${v}, outside the i32 range readI32 returns (use readRaw)`,
            );
          }
          out[i] = Number(v);
        }
        return out;
      }
      default:
        throw new SafetensorsError(
          info.file,
          name,
          `has dtype ${info.dtype}; readI32 reads I64, I32, I16, I8, U8 or BOOL (use readF32)`,
        );
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function missingTensor(file: string, name: string, names: readonly string[]): SafetensorsError {
  const some = names.slice(0, 5).map((n) => `"${n}"`).join(", ");
  return new SafetensorsError(
    file,
    name,
    `not found; the file holds ${names.length} tensors (${some}${names.length > 5 ? ", …" : ""})`,
  );
}

/** Fill `out` from `position`, looping over short reads; a short file means it changed under us. */
async function readAt(
  file: Deno.FsFile,
  position: number,
  out: Uint8Array,
  fail: () => never,
): Promise<void> {
  await file.seek(position, Deno.SeekMode.Start);
  let filled = 0;
  while (filled < out.length) {
    const n = await file.read(out.subarray(filled));
    if (n === null) fail();
    filled += n as number;
  }
}

class FileReader extends ReaderBase {
  readonly names: readonly string[];
  readonly #infos: Map<string, SafetensorsTensorInfo>;
  // Reads seek a shared handle, so they are serialised: two overlapping reads would interleave.
  #queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly path: string,
    readonly metadata: Readonly<Record<string, string>>,
    tensors: SafetensorsTensorInfo[],
    readonly dataStart: number,
    readonly handle: Deno.FsFile,
  ) {
    super();
    this.names = tensors.map((t) => t.name);
    this.#infos = new Map(tensors.map((t) => [t.name, t]));
  }

  has(name: string): boolean {
    return this.#infos.has(name);
  }

  info(name: string): SafetensorsTensorInfo {
    const info = this.#infos.get(name);
    if (!info) throw missingTensor(this.path, name, this.names);
    return info;
  }

  readRaw(name: string): Promise<Uint8Array> {
    const [begin, end] = this.info(name).dataOffsets;
    const out = new Uint8Array(end - begin);
    const read = this.#queue.then(() =>
      readAt(this.handle, this.dataStart + begin, out, () => {
        throw new SafetensorsError(this.path, name, "file ended before the tensor's last byte");
      })
    );
    this.#queue = read.catch(() => {});
    return read.then(() => out);
  }

  close(): void {
    try {
      this.handle.close();
    } catch (e) {
      if (!(e instanceof Deno.errors.BadResource)) throw e; // closing twice is harmless
    }
  }
}

/**
 * Open one safetensors file: read and validate its header; tensors are read on demand.
 *
 * @param path the `.safetensors` file
 * @returns a reader; call `close()` (or `using`) when done
 * @throws {SafetensorsError} for a truncated file or an invalid header
 *
 * @example
 * ```ts
 * import { openSafetensors, writeSafetensors } from "./safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, [{ name: "ids", dtype: "I32", shape: [3], data: [1, 2, 3] }]);
 * using reader = await openSafetensors(path);
 * console.log(await reader.readI32("ids")); // Int32Array [1, 2, 3]
 * ```
 */
export async function openSafetensors(path: string): Promise<SafetensorsReader> {
  const handle = await Deno.open(path, { read: true });
  try {
    const size = (await handle.stat()).size;
    const fail = (detail: string): never => {
      throw new SafetensorsError(path, undefined, detail);
    };
    if (size < 8) fail(`truncated: ${size} bytes, expected at least 8 (the header length)`);
    const prefix = new Uint8Array(8);
    await readAt(handle, 0, prefix, () => fail("truncated while reading the header length"));
    const headerBytes = new DataView(prefix.buffer).getBigUint64(0, true);
    if (headerBytes > BigInt(MAX_HEADER_BYTES)) {
      fail(`header length ${headerBytes} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
    }
    if (headerBytes > BigInt(size - 8)) {
      fail(`header length ${headerBytes} exceeds the ${size - 8} bytes after the 8-byte prefix`);
    }
    const json = new Uint8Array(Number(headerBytes));
    await readAt(handle, 8, json, () => fail("truncated while reading the header"));
    const dataStart = 8 + json.length;
    const header = parseSafetensorsHeader(json, path, size - dataStart);
    return new FileReader(path, header.metadata, header.tensors, dataStart, handle);
  } catch (e) {
    handle.close();
    throw e;
  }
}

class ShardedReader extends ReaderBase {
  readonly names: readonly string[];

  constructor(
    readonly path: string,
    readonly metadata: Readonly<Record<string, string>>,
    readonly owners: Map<string, SafetensorsReader>,
    readonly shards: SafetensorsReader[],
  ) {
    super();
    this.names = [...owners.keys()];
  }

  has(name: string): boolean {
    return this.owners.has(name);
  }

  #owner(name: string): SafetensorsReader {
    const owner = this.owners.get(name);
    if (!owner) throw missingTensor(this.path, name, this.names);
    return owner;
  }

  info(name: string): SafetensorsTensorInfo {
    return this.#owner(name).info(name);
  }

  readRaw(name: string): Promise<Uint8Array> {
    return this.#owner(name).readRaw(name);
  }

  close(): void {
    for (const shard of this.shards) shard.close();
  }
}

/**
 * Open a sharded checkpoint from its index (`model.safetensors.index.json`): one reader over all
 * shards. Every shard the `weight_map` names must exist next to the index and hold the tensors
 * mapped to it; all shard headers are validated up front.
 *
 * @param indexPath the index file
 * @returns a reader over the `weight_map`'s tensors
 * @throws {SafetensorsError} for a malformed index, a missing shard, or a tensor not in its shard
 *
 * @example
 * ```ts
 * import { openShardedSafetensors, writeSafetensors } from "./safetensors.ts";
 * const dir = await Deno.makeTempDir();
 * await writeSafetensors(`${dir}/a.safetensors`, [{ name: "x", dtype: "F32", shape: [1], data: [1] }]);
 * const index = { metadata: {}, weight_map: { x: "a.safetensors" } };
 * await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, JSON.stringify(index));
 * using reader = await openShardedSafetensors(`${dir}/model.safetensors.index.json`);
 * console.log(reader.names); // ["x"]
 * ```
 */
export async function openShardedSafetensors(indexPath: string): Promise<SafetensorsReader> {
  const fail = (detail: string): never => {
    throw new SafetensorsError(indexPath, undefined, detail);
  };
  let index: unknown;
  try {
    index = JSON.parse(await Deno.readTextFile(indexPath));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw e;
    return fail(`not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(index) || !isPlainObject(index.weight_map)) {
    return fail(`expected an object with a "weight_map" object of tensor name → shard file`);
  }
  const metadata: Record<string, string> = {};
  if (index.metadata !== undefined && index.metadata !== null) {
    if (!isPlainObject(index.metadata)) {
      fail(`"metadata" must be an object, got ${describe(index.metadata)}`);
    }
    // HF writes numbers here (total_size); keep them as strings like a file's __metadata__.
    for (const [k, v] of Object.entries(index.metadata as Record<string, unknown>)) {
      metadata[k] = typeof v === "string" ? v : JSON.stringify(v);
    }
  }
  const weightMap = index.weight_map as Record<string, unknown>;
  const dir = dirname(indexPath);
  const shards = new Map<string, SafetensorsReader>();
  const owners = new Map<string, SafetensorsReader>();
  try {
    for (const [name, shard] of Object.entries(weightMap)) {
      if (typeof shard !== "string" || shard === "") {
        fail(`weight_map["${name}"] must be a shard file name, got ${describe(shard)}`);
      }
      const file = shard as string;
      if (isAbsolute(file) || file.split(/[\\/]/).includes("..")) {
        fail(`weight_map["${name}"] = "${file}" must be a file inside the index's directory`);
      }
      let reader = shards.get(file);
      if (!reader) {
        try {
          reader = await openSafetensors(join(dir, file));
        } catch (e) {
          if (!(e instanceof Deno.errors.NotFound)) throw e;
          return fail(
            `weight_map["${name}"] names shard "${file}", which does not exist in ${dir}`,
          );
        }
        shards.set(file, reader);
      }
      if (!reader.has(name)) {
        fail(`weight_map["${name}"] names shard "${file}", which does not hold that tensor`);
      }
      owners.set(name, reader);
    }
  } catch (e) {
    for (const reader of shards.values()) reader.close();
    throw e;
  }
  return new ShardedReader(indexPath, metadata, owners, [...shards.values()]);
}

/**
 * Open the weights of a Hugging Face model directory: the sharded index when there is one,
 * otherwise `model.safetensors`.
 *
 * @param dir the model directory (e.g. a snapshot in the Hugging Face cache)
 * @returns a reader over every weight
 * @throws {SafetensorsError} when neither file is there, or either is malformed
 *
 * @example
 * ```ts
 * import { openCheckpoint, writeSafetensors } from "./safetensors.ts";
 * const dir = await Deno.makeTempDir();
 * await writeSafetensors(`${dir}/model.safetensors`, [{ name: "b", dtype: "F32", shape: [1], data: [0] }]);
 * using reader = await openCheckpoint(dir);
 * console.log(reader.names); // ["b"]
 * ```
 */
export async function openCheckpoint(dir: string): Promise<SafetensorsReader> {
  const indexPath = join(dir, SAFETENSORS_INDEX_FILE);
  try {
    return await openShardedSafetensors(indexPath);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  try {
    return await openSafetensors(join(dir, SAFETENSORS_FILE));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    throw new SafetensorsError(
      dir,
      undefined,
      `no checkpoint: expected ${SAFETENSORS_FILE} or ${SAFETENSORS_INDEX_FILE} in this directory`,
    );
  }
}

// ---- conversion ----------------------------------------------------------------------------------

/**
 * Convert f32 values to bfloat16 bits (the top 16 bits of the f32, rounded to nearest even).
 * NaN stays a quiet NaN with its sign; overflow past the largest bf16 rounds to ±Infinity.
 *
 * @example
 * ```ts
 * import { f32ToBf16 } from "./safetensors.ts";
 * console.log(f32ToBf16([1, -2, Infinity])); // Uint16Array [0x3f80, 0xc000, 0x7f80]
 * ```
 */
export function f32ToBf16(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < values.length; i++) {
    f[0] = values[i];
    const x = u[0];
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) {
      // Truncating a NaN could clear every mantissa bit left and turn it into Infinity.
      out[i] = (x >>> 16) | 0x40;
      continue;
    }
    // Adding 0x7fff plus the kept LSB carries into bit 16 exactly when the dropped half is > ½,
    // or = ½ with an odd kept part: round to nearest, ties to even.
    out[i] = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return out;
}

/**
 * Convert bfloat16 bits to f32 values (exact: bf16 is a truncated f32).
 *
 * @example
 * ```ts
 * import { bf16ToF32 } from "./safetensors.ts";
 * console.log(bf16ToF32(new Uint16Array([0x3f80, 0xc000]))); // Float32Array [1, -2]
 * ```
 */
export function bf16ToF32(bits: Uint16Array): Float32Array {
  const wide = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) wide[i] = bits[i] << 16;
  return new Float32Array(wide.buffer);
}

// ---- writing -------------------------------------------------------------------------------------

/** dtypes {@link writeSafetensors} can encode. */
export type SafetensorsWritableDType = "F32" | "F16" | "BF16" | "I32" | "I64";

/** One tensor to write. */
export interface SafetensorsEntry {
  /** Unique name (not `__metadata__`). */
  name: string;
  /** Element type on disk; values are converted to it. */
  dtype: SafetensorsWritableDType;
  /** Row-major shape; its element count must equal `data.length`. */
  shape: readonly number[];
  /**
   * Values, converted to `dtype` (floats round to nearest even; integers must be exact). For F16
   * and BF16, a Uint16Array is taken as already-encoded bits (e.g. from `readRaw`) and kept as is;
   * for I64, a BigInt64Array is written as is.
   */
  data: ArrayLike<number> | BigInt64Array;
}

const WRITABLE = new Set<string>(["F32", "F16", "BF16", "I32", "I64"]);

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** Encode one entry's data, validating integer values so nothing wraps silently. */
function encode(entry: SafetensorsEntry, file: string): Uint8Array {
  const { data, dtype, name } = entry;
  const fail = (detail: string): never => {
    throw new SafetensorsError(file, name, detail);
  };
  if (data instanceof BigInt64Array) {
    return dtype === "I64" ? bytesOf(data) : fail(`BigInt64Array data can only be written as I64`);
  }
  switch (dtype) {
    case "F32":
      return bytesOf(data instanceof Float32Array ? data : Float32Array.from(data));
    case "F16":
      return bytesOf(data instanceof Uint16Array ? data : f32ToF16(data));
    case "BF16":
      return bytesOf(data instanceof Uint16Array ? data : f32ToBf16(data));
    case "I32": {
      if (data instanceof Int32Array) return bytesOf(data);
      const out = new Int32Array(data.length);
      for (let i = 0; i < data.length; i++) {
        const v = data[i];
        if (!Number.isInteger(v) || v < -2147483648 || v > 2147483647) {
          fail(`element ${i} is ${v}; I32 needs integers in [-2^31, 2^31)`);
        }
        out[i] = v;
      }
      return bytesOf(out);
    }
    case "I64": {
      const out = new BigInt64Array(data.length);
      for (let i = 0; i < data.length; i++) {
        const v = data[i];
        if (!Number.isSafeInteger(v)) {
          fail(`element ${i} is ${v}; I64 from numbers needs safe integers`);
        }
        out[i] = BigInt(v);
      }
      return bytesOf(out);
    }
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) done += await file.write(bytes.subarray(done));
}

/**
 * Write tensors to a safetensors file, atomically: into a temporary file in the same directory,
 * then renamed over `path`, so readers never see a half-written checkpoint.
 *
 * The header is space-padded to a multiple of 8 bytes, as Hugging Face does. Tensors are laid out
 * back to back, ordered by element size (largest first) and then by name: with the data section
 * 8-aligned this aligns every tensor to its element size without gaps, which Hugging Face's
 * reader rejects. For tensors of one dtype that is plain name order.
 *
 * @param path destination file
 * @param tensors the tensors; names unique, `data.length` equal to the shape's element count
 * @param metadata optional `__metadata__` strings (e.g. `{ format: "pt" }`)
 * @throws {SafetensorsError} naming the tensor for invalid names, shapes, dtypes or values
 *
 * @example
 * ```ts
 * import { writeSafetensors } from "./safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, [{ name: "w", dtype: "F16", shape: [2, 2], data: [1, 2, 3, 4] }], {
 *   format: "pt",
 * });
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly SafetensorsEntry[],
  metadata?: Readonly<Record<string, string>>,
): Promise<void> {
  const names = new Set<string>();
  for (const t of tensors) {
    const fail = (detail: string): never => {
      throw new SafetensorsError(path, t.name, detail);
    };
    if (typeof t.name !== "string" || t.name === "" || t.name === "__metadata__") {
      fail(`invalid name; expected a non-empty string other than "__metadata__"`);
    }
    if (names.has(t.name)) fail("given twice; names must be unique");
    names.add(t.name);
    if (!WRITABLE.has(t.dtype)) {
      fail(`dtype "${t.dtype}" cannot be written; expected one of ${[...WRITABLE].join(", ")}`);
    }
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`shape [${t.shape.join(", ")}] must hold non-negative integers`);
    }
    const n = t.shape.reduce((a, d) => a * d, 1);
    if (t.data.length !== n) {
      fail(`data has ${t.data.length} values, shape [${t.shape.join(", ")}] needs ${n}`);
    }
  }
  for (const [k, v] of Object.entries(metadata ?? {})) {
    if (typeof v !== "string") {
      throw new SafetensorsError(
        path,
        undefined,
        `metadata["${k}"] must be a string, got ${describe(v)}`,
      );
    }
  }

  const size = (t: SafetensorsEntry): number => SAFETENSORS_DTYPE_BYTES[t.dtype];
  const ordered = [...tensors].sort((a, b) =>
    size(b) - size(a) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  );
  // The header text is built by hand: a JS object would move integer-like names ("0") first.
  const fields: string[] = [];
  if (metadata && Object.keys(metadata).length > 0) {
    fields.push(`"__metadata__":${JSON.stringify(metadata)}`);
  }
  let offset = 0;
  for (const t of ordered) {
    const bytes = t.data.length * size(t);
    const entry = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    fields.push(`${JSON.stringify(t.name)}:${JSON.stringify(entry)}`);
    offset += bytes;
  }
  const json = new TextEncoder().encode(`{${fields.join(",")}}`);
  const padded = new Uint8Array(Math.ceil(json.length / 8) * 8).fill(0x20);
  padded.set(json);
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(padded.length), true);

  const tmp = join(
    dirname(path),
    `.${basename(path)}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`,
  );
  const file = await Deno.open(tmp, { write: true, createNew: true });
  try {
    await writeAll(file, prefix);
    await writeAll(file, padded);
    // One tensor encoded at a time: peak extra memory is the largest tensor, not the file.
    for (const t of ordered) await writeAll(file, encode(t, path));
    await file.sync();
    file.close();
    await Deno.rename(tmp, path);
  } catch (e) {
    try {
      file.close();
    } catch { /* already closed */ }
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}
