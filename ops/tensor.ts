/**
 * Tensors: a shape, strides, a dtype and a reference to pooled GPU storage.
 *
 * Views (reshape of a contiguous tensor, transpose, permute, slice, broadcast) share storage and
 * only change `strides`/`offset`; kernels read strided inputs directly where they can and call
 * `contiguous()` otherwise. `layout` names how the storage is laid out on the device: today every
 * tensor is a linear storage buffer ("buffer"); kernel variants may keep other layouts (e.g.
 * textures on software adapters) behind the same Tensor.
 *
 * Lifetimes are deterministic: a tensor lives until `dispose()`, and everything created inside a
 * {@link scope} is disposed when the scope ends unless it is returned or `keep()`-ed.
 *
 * @module
 */
import { rt } from "./runtime.ts";
import type { Allocation, Category } from "./memory.ts";

/** Element types of tensors. Arithmetic is f32; f16 is a storage type for frozen weights. */
export type DType = "f32" | "f16" | "i32" | "u32";

/** Bytes per element of each dtype. */
export const BYTES_PER_ELEMENT: Readonly<Record<DType, number>> = {
  f32: 4,
  f16: 2,
  i32: 4,
  u32: 4,
};

/** How a tensor's storage is laid out on the device. */
export type Layout = "buffer";

/** Host arrays a tensor reads back into. */
export type HostArray = Float32Array | Int32Array | Uint32Array;

/** Reference-counted storage shared by a tensor and its views. */
class Storage {
  refs = 0;
  constructor(readonly alloc: Allocation, readonly layout: Layout) {}
}

/** Row-major strides of `shape`. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** Number of elements of `shape`. */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function checkShape(shape: readonly number[]): void {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new Error(`invalid shape [${shape.join(", ")}]: dimensions must be integers ≥ 0`);
    }
  }
}

// ---- scopes ------------------------------------------------------------------------------------

const scopes: Set<Tensor>[] = [];
let defaultCategory: Category = "activations";

/** The category new tensors get when none is given (see {@link withCategory}). */
export function currentCategory(): Category {
  return defaultCategory;
}

/** Run `fn` with `category` as the default category for tensors created inside it. */
export function withCategory<T>(category: Category, fn: () => T): T {
  const prev = defaultCategory;
  defaultCategory = category;
  try {
    return fn();
  } finally {
    defaultCategory = prev;
  }
}

function collect(value: unknown, out: Set<Tensor>): void {
  if (value instanceof Tensor) out.add(value);
  else if (Array.isArray(value)) { for (const v of value) collect(v, out); }
  else if (
    value && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype
  ) {
    for (const v of Object.values(value)) collect(v, out);
  }
}

function endScope(owned: Set<Tensor>, result: unknown): void {
  const survivors = new Set<Tensor>();
  collect(result, survivors);
  const parent = scopes.at(-1);
  for (const t of owned) {
    if (survivors.has(t) || t.kept) {
      if (!t.kept) parent?.add(t);
    } else if (!t.disposed) {
      t.dispose();
    }
  }
}

/**
 * Run `fn`; every tensor created inside is disposed when it returns, except tensors in its result
 * (a tensor, or arrays/plain objects of them), which move to the enclosing scope, and tensors
 * marked with `keep()`.
 *
 * @example
 * ```ts
 * import { init, mul, scope, tensor } from "./mod.ts";
 * await init();
 * const y = scope(() => mul(tensor([1, 2, 3]), 2)); // the input is freed, y survives
 * ```
 */
export function scope<T>(fn: () => T): T {
  const owned = new Set<Tensor>();
  scopes.push(owned);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    endScope(owned, undefined);
    throw e;
  }
  scopes.pop();
  endScope(owned, result);
  return result;
}

/** {@link scope} for async functions: the scope stays open until the promise settles. */
export async function scopeAsync<T>(fn: () => Promise<T>): Promise<T> {
  const owned = new Set<Tensor>();
  scopes.push(owned);
  const depth = scopes.length;
  let result: T;
  try {
    result = await fn();
  } catch (e) {
    scopes.splice(depth - 1);
    endScope(owned, undefined);
    throw e;
  }
  scopes.splice(depth - 1);
  endScope(owned, result);
  return result;
}

// ---- the tensor --------------------------------------------------------------------------------

/** Options for creating a tensor. */
export interface TensorOptions {
  /** Element type; default "f32" (`tensor` infers "i32"/"u32" from an Int32Array/Uint32Array). */
  dtype?: DType;
  /** Memory category of the storage; default the current one (see {@link withCategory}). */
  category?: Category;
  /** Make the tensor a leaf that receives a gradient; default false. */
  requiresGrad?: boolean;
  /** A name for errors and parameters (a Hugging Face parameter name). */
  name?: string;
}

/** An n-dimensional array on the GPU. */
export class Tensor {
  /** Size of each dimension ([] for a scalar). */
  readonly shape: readonly number[];
  /** Step between neighbours along each dimension, in elements (0 where broadcast). */
  readonly strides: readonly number[];
  /** Offset of element [0, …, 0] in elements of `dtype` from the start of the storage. */
  readonly offset: number;
  /** Element type of the storage. */
  readonly dtype: DType;
  /** True when autograd should compute a gradient for this tensor. */
  requiresGrad = false;
  /** Accumulated gradient of a leaf that requires grad (category "grads"). */
  grad: Tensor | null = null;
  /** Optional name (parameters carry their Hugging Face name). */
  name?: string;
  /** A host copy of the values, kept for small index tensors built from host data. */
  hostData?: HostArray;
  #storage: Storage;
  #disposed = false;
  #kept = false;
  /** Backward rules on the tape that read this tensor (see {@link Tensor.release}). */
  #holds = 0;
  #releaseRequested = false;

  /** Low-level constructor; use the creation functions (`tensor`, `zeros`, …) instead. */
  constructor(
    storage: Storage,
    shape: readonly number[],
    dtype: DType,
    strides?: readonly number[],
    offset = 0,
  ) {
    checkShape(shape);
    this.#storage = storage;
    this.shape = Object.freeze([...shape]);
    this.strides = Object.freeze(strides ? [...strides] : contiguousStrides(shape));
    this.offset = offset;
    this.dtype = dtype;
    storage.refs++;
    scopes.at(-1)?.add(this);
  }

  /** The GPU buffer (shared with views). */
  get buffer(): GPUBuffer {
    if (this.#disposed) throw new Error(`use of a disposed tensor${this.#label()}`);
    return this.#storage.alloc.buffer;
  }

  /** The storage layout on the device. */
  get layout(): Layout {
    return this.#storage.layout;
  }

  /** The memory category of the storage. */
  get category(): Category {
    return this.#storage.alloc.category;
  }

  /** Number of elements. */
  get size(): number {
    return numel(this.shape);
  }

  /** Number of dimensions. */
  get rank(): number {
    return this.shape.length;
  }

  /** Bytes of the logical tensor (not of the shared storage). */
  get bytes(): number {
    return this.size * BYTES_PER_ELEMENT[this.dtype];
  }

  /** True once disposed. */
  get disposed(): boolean {
    return this.#disposed;
  }

  /** True when marked to outlive every scope. */
  get kept(): boolean {
    return this.#kept;
  }

  /** True when the elements are laid out row-major with no gaps (offset may be non-zero). */
  get isContiguous(): boolean {
    let acc = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      if (this.shape[i] !== 1 && this.strides[i] !== acc) return false;
      acc *= this.shape[i];
    }
    return true;
  }

  /** Move this tensor's storage (shared with its views) to another memory category. */
  setCategory(category: Category): this {
    rt().pool.retag(this.#storage.alloc, category);
    return this;
  }

  /**
   * True when this tensor is the only one referencing its storage and covers all of it, row-major
   * from offset 0: handing the storage to a new owner (autograd adopting a gradient) then needs
   * no copy.
   */
  get ownsStorage(): boolean {
    return !this.#disposed && this.#storage.refs === 1 && this.offset === 0 &&
      this.isContiguous && this.#storage.alloc.bytes === this.bytes;
  }

  /** True when this tensor shares storage with `other`. */
  sharesStorage(other: Tensor): boolean {
    return this.#storage === other.#storage;
  }

  /** Mark this tensor to outlive every scope (parameters, optimizer state). Returns `this`. */
  keep(): this {
    this.#kept = true;
    return this;
  }

  /** A view on the same storage with another shape/strides/offset (no autograd; see ops). */
  view(shape: readonly number[], strides: readonly number[], offset = this.offset): Tensor {
    const t = new Tensor(this.#storage, shape, this.dtype, strides, offset);
    t.name = this.name;
    return t;
  }

  /**
   * The forward pass no longer reads this tensor: dispose it now, or, while backward rules on
   * the tape still read it, as soon as the last of them has run (or the tape is cleared). Kept
   * tensors (parameters, optimizer state) are never released this way. A model calls this on
   * its intermediates so that activations live only as long as backward needs them, instead of
   * until the step's scope ends.
   *
   * @example
   * ```ts
   * import { backward, gelu, init, sum, tensor } from "./mod.ts";
   * await init();
   * const x = tensor([1, -2, 3], { requiresGrad: true });
   * const h = gelu(x);
   * const y = gelu(h);
   * h.release(); // gelu's backward reads h: it is freed once that rule has run
   * backward(sum(y));
   * console.log(h.disposed); // true
   * ```
   */
  release(): void {
    if (this.#disposed || this.#kept) return;
    if (this.#holds > 0) this.#releaseRequested = true;
    else this.dispose();
  }

  /** Autograd: a recorded backward rule reads this tensor (a release waits for it). */
  hold(): void {
    this.#holds++;
  }

  /** Autograd: a rule that held this tensor has run or was dropped. */
  unhold(): void {
    if (this.#holds === 0) throw new Error(`unhold of a tensor nobody holds${this.#label()}`);
    if (--this.#holds === 0 && this.#releaseRequested) this.dispose();
  }

  /** Release this tensor's reference to its storage (the storage goes back when unreferenced). */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.grad?.dispose();
    this.grad = null;
    if (--this.#storage.refs === 0) rt().pool.release(this.#storage.alloc);
  }

  /** Copy the values back to the host (widened to f32 for f16). Submits pending work. */
  async read(): Promise<HostArray> {
    const bpe = BYTES_PER_ELEMENT[this.dtype];
    // Buffer copies need 4-byte-aligned offsets, which an f16 view at an odd offset lacks.
    const aligned = (this.offset * bpe) % 4 === 0;
    const src = this.isContiguous && aligned ? this : this.#contiguousForRead();
    const raw = await rt().read(src.buffer, src.offset * bpe, src.size * bpe);
    if (src !== this) src.dispose();
    switch (this.dtype) {
      case "f32":
        return new Float32Array(raw);
      case "i32":
        return new Int32Array(raw);
      case "u32":
        return new Uint32Array(raw);
      case "f16":
        return f16ToF32(new Uint16Array(raw));
    }
  }

  /** Read a one-element tensor as a number. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new Error(`item() needs one element, got shape [${this.shape}]`);
    return (await this.read())[0];
  }

  /** Read back as nested arrays (for printing and tests). */
  async toArray(): Promise<number[]> {
    return Array.from(await this.read());
  }

  #contiguousForRead(): Tensor {
    if (!contiguousHook) throw new Error("contiguous() is not registered");
    return contiguousHook(this);
  }

  #label(): string {
    return this.name ? ` (${this.name})` : "";
  }

  /** A short description for errors and logs. */
  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(", ")}]${this.#label()})`;
  }
}

let contiguousHook: ((t: Tensor) => Tensor) | null = null;

/** Registered by the elementwise module: a contiguous copy (used by `read` of strided views). */
export function registerContiguous(fn: (t: Tensor) => Tensor): void {
  contiguousHook = fn;
}

/** Allocate an uninitialised tensor. */
export function empty(shape: readonly number[], options: TensorOptions = {}): Tensor {
  checkShape(shape);
  const dtype = options.dtype ?? "f32";
  const bytes = numel(shape) * BYTES_PER_ELEMENT[dtype];
  const alloc = rt().pool.acquire(bytes, options.category ?? defaultCategory);
  const t = new Tensor(new Storage(alloc, "buffer"), shape, dtype);
  if (options.requiresGrad) t.requiresGrad = true;
  if (options.name) t.name = options.name;
  return t;
}

/** Convert f32 values to IEEE half bits (round to nearest even). */
export function f32ToF16(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < values.length; i++) {
    f[0] = values[i];
    const x = u[0];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant ? 0x200 : 0);
      continue;
    }
    const e = exp - 127 + 15;
    if (e >= 0x1f) {
      out[i] = sign | 0x7c00;
    } else if (e <= 0) {
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      mant |= 0x800000;
      const shift = 14 - e;
      let h = mant >>> shift;
      const rem = mant & ((1 << shift) - 1);
      const half = 1 << (shift - 1);
      if (rem > half || (rem === half && (h & 1))) h++;
      out[i] = sign | h;
    } else {
      let h = (e << 10) | (mant >>> 13);
      const rem = mant & 0x1fff;
      if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
      out[i] = sign | h;
    }
  }
  return out;
}

/** Convert IEEE half bits to f32 values. */
export function f16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0) out[i] = sign * mant * 2 ** -24;
    else if (exp === 0x1f) out[i] = mant ? NaN : sign * Infinity;
    else out[i] = sign * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  return out;
}

/** A number or an arbitrarily nested array of numbers (rectangular), as `tensor` accepts. */
export type Nested = number | Nested[];

function flatten(data: Nested, shape: number[], out: number[], depth: number): void {
  if (typeof data === "number") {
    out.push(data);
    return;
  }
  if (shape.length <= depth) shape.push(data.length);
  else if (shape[depth] !== data.length) throw new Error("ragged nested array");
  for (const d of data) flatten(d, shape, out, depth + 1);
}

/**
 * A tensor from host values: a typed array or (nested) number array, with an optional shape.
 *
 * @example
 * ```ts
 * import { init, tensor } from "./mod.ts";
 * await init();
 * const x = tensor([[1, 2], [3, 4]]);
 * console.log(x.shape); // [2, 2]
 * ```
 */
export function tensor(
  data: Nested | ArrayLike<number>,
  shapeOrOptions?: readonly number[] | TensorOptions,
  maybeOptions: TensorOptions = {},
): Tensor {
  const options = Array.isArray(shapeOrOptions)
    ? maybeOptions
    : (shapeOrOptions as TensorOptions | undefined) ?? {};
  let shape = Array.isArray(shapeOrOptions) ? [...shapeOrOptions] as number[] : undefined;
  let values: ArrayLike<number>;
  if (typeof data === "number") {
    values = [data];
    shape ??= [];
  } else if (Array.isArray(data)) {
    const flat: number[] = [];
    const inferred: number[] = [];
    flatten(data as Nested, inferred, flat, 0);
    values = flat;
    shape ??= inferred;
  } else {
    values = data as ArrayLike<number>;
    shape ??= [values.length];
  }
  if (numel(shape) !== values.length) {
    throw new Error(`tensor(): ${values.length} values do not fill shape [${shape.join(", ")}]`);
  }
  const dtype = options.dtype ??
    (values instanceof Int32Array ? "i32" : values instanceof Uint32Array ? "u32" : "f32");
  const t = empty(shape, { ...options, dtype });
  let host: ArrayBufferView;
  switch (dtype) {
    case "f32":
      host = values instanceof Float32Array ? values : Float32Array.from(values);
      break;
    case "i32":
      host = values instanceof Int32Array ? values : Int32Array.from(values);
      t.hostData = host as Int32Array;
      break;
    case "u32":
      host = values instanceof Uint32Array ? values : Uint32Array.from(values);
      t.hostData = host as Uint32Array;
      break;
    case "f16":
      host = f32ToF16(values);
      break;
  }
  if (t.size > 0) rt().write(t.buffer, 0, host);
  return t;
}
