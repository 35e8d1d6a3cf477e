/**
 * The runtime: WGSL kernel definitions, a pipeline cache keyed by source, batched command
 * submission, per-dispatch parameters in a uniform arena, read-back and GPU timing.
 *
 * Dispatches are recorded into one command encoder (inside one compute pass while no copy
 * intervenes) and submitted in groups: when `flush()` is called, when a read-back needs the
 * results, or when the uniform arena fills up. Nothing is read back unless asked.
 *
 * @module
 */
import { getGpu, type Gpu, gpu, takeGpuErrors } from "./device.ts";
import { BufferPool } from "./memory.ts";

/** Element types a storage binding may hold. */
export type StorageType =
  | "f32"
  | "f16"
  | "i32"
  | "u32"
  | "vec4f"
  | "atomic<u32>"
  | "atomic<i32>";

/** One storage-buffer binding of a kernel, in binding order. */
export interface BufferBindingDecl {
  /** The WGSL variable name. */
  name: string;
  /** Element type of the `array<…>`. */
  type: StorageType;
  /** Read-only or read-write storage. */
  access: "read" | "read_write";
}

/** Texel formats a storage-texture binding may use. */
export type StorageTextureFormat = "rgba32float";

/**
 * One 2D storage-texture binding: read-only (`textureLoad`) or write-only (`textureStore`).
 * Software adapters serve texture loads far faster than storage-buffer loads, so kernel variants
 * for them stage operands in textures.
 */
export interface TextureBindingDecl {
  /** The WGSL variable name. */
  name: string;
  /** The texel format. */
  texture: StorageTextureFormat;
  /** `textureLoad` only, or `textureStore` only. */
  access: "read" | "write";
}

/** A kernel binding: a storage buffer or a storage texture. */
export type BindingDecl = BufferBindingDecl | TextureBindingDecl;

function isTextureDecl(b: BindingDecl): b is TextureBindingDecl {
  return "texture" in b;
}

/** A scalar kernel parameter, passed through the uniform arena. */
export type ParamType = "u32" | "i32" | "f32";

/** Everything needed to build one kernel's WGSL; see {@link defineKernel}. */
export interface KernelSpec {
  /** A short name for errors and profiles. */
  name: string;
  /** Buffer and texture bindings, in binding order. */
  bindings: BindingDecl[];
  /** Scalar parameters; they become `params.NAME` in the WGSL. */
  params?: [string, ParamType][];
  /**
   * WGSL after the generated header (enable directives, `struct Params`, bindings). Must declare
   * `@compute @workgroup_size(...) fn main(...)`.
   */
  source: string;
}

/** A kernel ready to dispatch: its full WGSL and how to lay out its parameters. */
export interface Kernel {
  /** The spec's name. */
  readonly name: string;
  /** The complete WGSL (generated header + source); also the pipeline cache key. */
  readonly wgsl: string;
  /** The bindings, in binding order. */
  readonly bindings: readonly BindingDecl[];
  /** Scalar parameters in uniform layout order. */
  readonly params: readonly [string, ParamType][];
}

/** Anything that owns a GPU buffer a kernel can bind to a storage-buffer binding. */
export interface BufferBindable {
  /** The buffer bound whole. */
  readonly buffer: GPUBuffer;
}

/** A 2D texture (and a view of it) a kernel can bind to a storage-texture binding. */
export interface TextureBindable {
  /** The texture (compared to detect a read/write conflict within one dispatch). */
  readonly texture: GPUTexture;
  /** The view that is bound. */
  readonly view: GPUTextureView;
}

/** What {@link Runtime.dispatch} binds: buffers (tensors) and textures, in declaration order. */
export type Bindable = BufferBindable | TextureBindable;

function resourceOf(b: Bindable): GPUBuffer | GPUTexture {
  return "buffer" in b ? b.buffer : b.texture;
}

/** The uniform binding carrying a kernel's scalar parameters sits after the storage bindings. */
function header(spec: KernelSpec): string {
  const params = spec.params ?? [];
  const usesF16 = spec.bindings.some((b) => !isTextureDecl(b) && b.type === "f16") ||
    /\bf16\b/.test(spec.source);
  const lines: string[] = [];
  if (usesF16) lines.push("enable f16;");
  lines.push(
    "struct Params {",
    ...(params.length ? params.map(([n, t]) => `  ${n}: ${t},`) : ["  _unused: u32,"]),
    "}",
  );
  spec.bindings.forEach((b, i) => {
    if (isTextureDecl(b)) {
      lines.push(
        `@group(0) @binding(${i}) var ${b.name}: texture_storage_2d<${b.texture}, ${b.access}>;`,
      );
      return;
    }
    const access = b.access === "read" ? "read" : "read_write";
    lines.push(`@group(0) @binding(${i}) var<storage, ${access}> ${b.name}: array<${b.type}>;`);
  });
  lines.push(`@group(0) @binding(${spec.bindings.length}) var<uniform> params: Params;`);
  return lines.join("\n");
}

/**
 * Build a kernel from its spec. The result is a plain value; compiling happens on first dispatch
 * and pipelines are cached by WGSL source, so defining the same kernel twice costs nothing.
 *
 * @example
 * ```ts
 * import { defineKernel } from "./runtime.ts";
 * const double = defineKernel({
 *   name: "double",
 *   bindings: [{ name: "x", type: "f32", access: "read_write" }],
 *   params: [["n", "u32"]],
 *   source: `@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
 *     if (g.x < params.n) { x[g.x] = 2.0 * x[g.x]; } }`,
 * });
 * ```
 */
export function defineKernel(spec: KernelSpec): Kernel {
  return {
    name: spec.name,
    wgsl: `${header(spec)}\n${spec.source}`,
    bindings: spec.bindings,
    params: spec.params ?? [],
  };
}

const kernelMemo = new Map<string, Kernel>();

/**
 * The kernel `build()` makes for (`family`, `key`), built once per process. Kernel generators call
 * this so a shape-independent kernel is generated (and its WGSL string assembled) only once;
 * compiled pipelines are cached separately, by source.
 */
export function memoKernel(family: string, key: string, build: () => Kernel): Kernel {
  const id = `${family}|${key}`;
  let k = kernelMemo.get(id);
  if (!k) {
    k = build();
    kernelMemo.set(id, k);
  }
  return k;
}

/** Split `n` workgroups over x and y so neither exceeds the per-dimension limit. */
export function grid1d(workgroups: number): [number, number, number] {
  const max = 65535;
  if (workgroups <= max) return [Math.max(1, workgroups), 1, 1];
  return [max, Math.ceil(workgroups / max), 1];
}

/** WGSL expression for the linear invocation index under {@link grid1d} with `wgSize` threads. */
export function linearIndex(wgSize: number, gid = "gid", nwg = "nwg"): string {
  return `(${gid}.x + ${gid}.y * ${nwg}.x * ${wgSize}u)`;
}

const ARENA_BYTES = 1 << 20;

/** A pooled 2D rgba32float texture for staging operands; see {@link TexturePool}. */
export interface ScratchTexture extends TextureBindable {
  /** Allocated texels per row (≥ what was asked for). */
  readonly width: number;
  /** Allocated rows (≥ what was asked for). */
  readonly height: number;
}

/**
 * Round a texture dimension up to one of four classes per power of two (as buffer classes); below
 * 16 to the next power of two, since attention packs rows into a few very wide texture lines and
 * a floor of 16 lines held 8× the bytes they needed.
 */
function textureClass(d: number): number {
  if (d <= 16) return 2 ** Math.ceil(Math.log2(d));
  const p = 2 ** Math.floor(Math.log2(d));
  if (p === d) return p;
  const step = p / 4;
  return Math.ceil(d / step) * step;
}

/**
 * Scratch rgba32float textures, reused by size class. A texture handed back may be handed out
 * again at once: every user writes it from a command recorded later in the same queue order, so
 * GPU ordering (not host timing) protects earlier readers. Textures are never destroyed while
 * commands may reference them; {@link Runtime.clearTextures} frees the idle ones.
 */
export class TexturePool {
  #free = new Map<string, ScratchTexture[]>();
  #idle: ScratchTexture[] = [];
  #reserved = 0;
  /**
   * An empty pool on `device`; `account` records live texture bytes in the memory report
   * (category "scratch") while a texture is held.
   */
  constructor(
    private readonly device: GPUDevice,
    private readonly account: (bytes: number) => void = () => {},
  ) {}

  /** The largest width or height this adapter allows. */
  get maxDimension(): number {
    return this.device.limits.maxTextureDimension2D;
  }

  /** Take a texture of at least `width` × `height` texels. */
  acquire(width: number, height: number): ScratchTexture {
    const max = this.maxDimension;
    if (width > max || height > max || width < 1 || height < 1) {
      throw new Error(
        `scratch texture ${width}×${height} is outside this adapter's 1…${max} texels per side`,
      );
    }
    const w = Math.min(max, textureClass(width)), h = Math.min(max, textureClass(height));
    const key = `${w}x${h}`;
    const hit = this.#free.get(key)?.pop();
    if (hit) {
      this.#idle.splice(this.#idle.indexOf(hit), 1);
      this.account(w * h * 16);
      return hit;
    }
    const texture = this.device.createTexture({
      size: [w, h],
      format: "rgba32float",
      usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
      label: `scratch ${key}`,
    });
    this.#reserved += w * h * 16;
    this.account(w * h * 16);
    return { texture, view: texture.createView(), width: w, height: h };
  }

  /** Give a texture back for reuse. */
  release(t: ScratchTexture): void {
    this.account(-t.width * t.height * 16);
    const key = `${t.width}x${t.height}`;
    const list = this.#free.get(key) ?? [];
    list.push(t);
    this.#free.set(key, list);
    this.#idle.push(t);
  }

  /** Bytes of texture memory the pool holds from the driver. */
  get reservedBytes(): number {
    return this.#reserved;
  }

  /** Destroy idle textures (the caller has submitted every command that used them). */
  destroyIdle(): void {
    for (const t of this.#idle) {
      t.texture.destroy();
      this.#reserved -= t.width * t.height * 16;
    }
    this.#idle = [];
    this.#free.clear();
  }
}

interface Pipeline {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
}

/** Process-wide runtime state (one device, one encoder in flight). */
class Runtime {
  /** The device and what is known about its adapter. */
  readonly gpu: Gpu;
  /** The one GPUDevice. */
  readonly device: GPUDevice;
  /** Storage buffers by size class, with per-category accounting. */
  readonly pool: BufferPool;
  /** Scratch textures for kernel variants that stage operands in textures. */
  readonly textures: TexturePool;
  #pipelines = new Map<string, Pipeline>();
  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #pendingDispatches = 0;
  #pendingBuffers = new Set<GPUBuffer>();
  #arena: GPUBuffer;
  #arenaMirror = new ArrayBuffer(ARENA_BYTES);
  #arenaU32 = new Uint32Array(this.#arenaMirror);
  #arenaI32 = new Int32Array(this.#arenaMirror);
  #arenaF32 = new Float32Array(this.#arenaMirror);
  #arenaUsed = 0;
  #align: number;
  #timing: { querySet: GPUQuerySet; next: number; capacity: number } | null = null;
  #profileNames: string[] | null = null;
  #profileShapes = false;
  #lastTimestamps: number[] = [];
  #versions = new WeakMap<GPUBuffer, number>();
  #textureHolders: (() => void)[] = [];
  #releaseListeners: ((buffer: GPUBuffer) => void)[] = [];
  /** Dispatches after which the runtime submits on its own, bounding parked memory. */
  autoFlushDispatches = 1024;
  /** Count of dispatches since start (for profiles and tests). */
  dispatchCount = 0;
  /** Count of submits since start. */
  submitCount = 0;

  /** Runtime state over `g`'s device; use {@link rt}. */
  constructor(g: Gpu) {
    this.gpu = g;
    this.device = g.device;
    this.pool = new BufferPool(g.device, () => this.#encoder !== null);
    this.textures = new TexturePool(g.device, (bytes) => this.pool.account("scratch", bytes));
    this.pool.onRelease = (buffer) => {
      for (const l of this.#releaseListeners) l(buffer);
    };
    this.#align = Math.max(16, g.device.limits.minUniformBufferOffsetAlignment);
    this.#arena = g.device.createBuffer({
      size: ARENA_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
  }

  /**
   * How many times `buffer` has been written (a dispatch binding it read-write, a copy, a host
   * write or a clear). Caches of values derived from a buffer compare it to stay exact.
   */
  writeVersion(buffer: GPUBuffer): number {
    return this.#versions.get(buffer) ?? 0;
  }

  #bump(buffer: GPUBuffer): void {
    this.#versions.set(buffer, (this.#versions.get(buffer) ?? 0) + 1);
  }

  /** Call `listener` with the buffer of every allocation given back to the pool. */
  onBufferReleased(listener: (buffer: GPUBuffer) => void): void {
    this.#releaseListeners.push(listener);
  }

  /** Register a holder of scratch textures that {@link clearTextures} asks to let go first. */
  onClearTextures(release: () => void): void {
    this.#textureHolders.push(release);
  }

  #pipelineFor(k: Kernel): Pipeline {
    let p = this.#pipelines.get(k.wgsl);
    if (p) return p;
    const module = this.device.createShaderModule({ code: k.wgsl, label: k.name });
    const entries: GPUBindGroupLayoutEntry[] = k.bindings.map((b, i) =>
      isTextureDecl(b)
        ? {
          binding: i,
          visibility: GPUShaderStage.COMPUTE,
          storageTexture: {
            access: b.access === "read" ? "read-only" : "write-only",
            format: b.texture,
            viewDimension: "2d",
          },
        }
        : {
          binding: i,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: b.access === "read" ? "read-only-storage" : "storage" },
        }
    );
    entries.push({
      binding: k.bindings.length,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type: "uniform", hasDynamicOffset: false },
    });
    const layout = this.device.createBindGroupLayout({ entries, label: k.name });
    const pipeline = this.device.createComputePipeline({
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
      label: k.name,
    });
    p = { pipeline, layout };
    this.#pipelines.set(k.wgsl, p);
    return p;
  }

  /** Number of distinct compiled pipelines (the kernel cache's size). */
  get pipelineCount(): number {
    return this.#pipelines.size;
  }

  #ensureEncoder(): GPUCommandEncoder {
    if (!this.#encoder) this.#encoder = this.device.createCommandEncoder();
    return this.#encoder;
  }

  #ensurePass(): GPUComputePassEncoder {
    if (this.#pass) return this.#pass;
    const enc = this.#ensureEncoder();
    const t = this.#timing;
    if (t && t.next + 2 <= t.capacity) {
      this.#pass = enc.beginComputePass({
        timestampWrites: {
          querySet: t.querySet,
          beginningOfPassWriteIndex: t.next,
          endOfPassWriteIndex: t.next + 1,
        },
      });
      t.next += 2;
    } else {
      this.#pass = enc.beginComputePass();
    }
    return this.#pass;
  }

  #endPass(): void {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
  }

  /** Record one dispatch of `k` over `workgroups`, binding `buffers` in declaration order. */
  dispatch(
    k: Kernel,
    buffers: readonly Bindable[],
    params: Readonly<Record<string, number>>,
    workgroups: readonly [number, number?, number?],
  ): void {
    if (buffers.length !== k.bindings.length) {
      throw new Error(
        `kernel ${k.name}: ${k.bindings.length} bindings declared, ${buffers.length} given`,
      );
    }
    const [x, y = 1, z = 1] = workgroups;
    if (x === 0 || y === 0 || z === 0) return;
    const limit = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (x > limit || y > limit || z > limit) {
      throw new Error(`kernel ${k.name}: grid ${x}×${y}×${z} exceeds ${limit} per dimension`);
    }
    k.bindings.forEach((decl, i) => {
      if (isTextureDecl(decl) !== !("buffer" in buffers[i])) {
        throw new Error(
          `kernel ${k.name}: binding ${decl.name} expects a ${
            isTextureDecl(decl) ? "texture" : "buffer"
          }, got a ${"buffer" in buffers[i] ? "buffer" : "texture"}`,
        );
      }
    });
    for (let i = 0; i < buffers.length; i++) {
      const decl = k.bindings[i];
      for (let j = i + 1; j < buffers.length; j++) {
        if (
          resourceOf(buffers[i]) === resourceOf(buffers[j]) &&
          (decl.access !== "read" || k.bindings[j].access !== "read")
        ) {
          throw new Error(
            `kernel ${k.name}: bindings ${decl.name} and ${k.bindings[j].name} share a ` +
              "resource and one is written; WebGPU forbids that within one dispatch",
          );
        }
      }
    }
    const { pipeline, layout } = this.#pipelineFor(k);
    const paramBytes = Math.max(16, Math.ceil((k.params.length * 4) / 16) * 16);
    const slot = Math.ceil(paramBytes / this.#align) * this.#align;
    if (this.#arenaUsed + slot > ARENA_BYTES) this.flush();
    const offset = this.#arenaUsed;
    this.#arenaUsed += slot;
    const base = offset / 4;
    k.params.forEach(([name, type], i) => {
      const v = params[name];
      if (v === undefined) throw new Error(`kernel ${k.name}: parameter ${name} missing`);
      if (type === "f32") this.#arenaF32[base + i] = v;
      else if (type === "i32") this.#arenaI32[base + i] = v;
      else this.#arenaU32[base + i] = v;
    });
    const entries: GPUBindGroupEntry[] = buffers.map((b, i) => ({
      binding: i,
      resource: "buffer" in b ? { buffer: b.buffer } : b.view,
    }));
    entries.push({
      binding: buffers.length,
      resource: { buffer: this.#arena, offset, size: paramBytes },
    });
    const bindGroup = this.device.createBindGroup({ layout, entries });
    if (this.#profileNames) {
      // Profiling: one pass per dispatch, so each gets its own pair of timestamps.
      this.#endPass();
      // With shapes: the grid and a product's M, N, K too (which call of a kernel costs what).
      const mnk = "M" in params ? ` M${params.M} N${params.N} K${params.K}` : "";
      this.#profileNames.push(
        this.#profileShapes ? `${k.name} [${x},${y},${z}]${mnk}` : k.name,
      );
    }
    const pass = this.#ensurePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(x, y, z);
    if (this.#profileNames) this.#endPass();
    buffers.forEach((b, i) => {
      if (!("buffer" in b)) return;
      this.#pendingBuffers.add(b.buffer);
      if ((k.bindings[i] as BufferBindingDecl).access !== "read") this.#bump(b.buffer);
    });
    this.#pendingDispatches++;
    this.dispatchCount++;
    if (this.#pendingDispatches >= this.autoFlushDispatches) this.flush();
  }

  /** Record a buffer-to-buffer copy (ends the current compute pass). */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    this.#endPass();
    this.#ensureEncoder().copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
    this.#bump(dst);
    this.#pendingBuffers.add(src);
    this.#pendingBuffers.add(dst);
    this.#pendingDispatches++;
  }

  /**
   * Record a copy of `rows` rows of `texels` rgba32float texels each from `src` (row r starting at
   * byte `offset + r·bytesPerRow`; `offset` a multiple of 16, `bytesPerRow` of 256) into the top
   * left of `dst` (ends the current compute pass). The driver's copy moves the bits as they are.
   * It counts in {@link Runtime.dispatchCount} as the pack dispatch it stands for, so counts of
   * packs read the same whichever way an operand was packed.
   */
  copyToTexture(
    src: GPUBuffer,
    offset: number,
    bytesPerRow: number,
    dst: ScratchTexture,
    texels: number,
    rows: number,
  ): void {
    if (offset % 16 !== 0 || bytesPerRow % 256 !== 0) {
      throw new Error(
        `copyToTexture: offset ${offset} must be a multiple of 16 and bytesPerRow ${bytesPerRow} of 256`,
      );
    }
    this.#endPass();
    this.#ensureEncoder().copyBufferToTexture(
      { buffer: src, offset, bytesPerRow, rowsPerImage: rows },
      { texture: dst.texture },
      [texels, rows],
    );
    this.#pendingBuffers.add(src);
    this.#pendingDispatches++;
    this.dispatchCount++;
  }

  /**
   * Record zeroing `bytes` of `dst` from `offset` (both multiples of 4; ends the current compute
   * pass). The driver's fill is far cheaper than a kernel writing zeros on software adapters.
   */
  clear(dst: GPUBuffer, offset: number, bytes: number): void {
    if (offset % 4 !== 0 || bytes % 4 !== 0) {
      throw new Error(`clear: offset ${offset} and size ${bytes} must be multiples of 4 bytes`);
    }
    if (bytes === 0) return;
    this.#endPass();
    this.#ensureEncoder().clearBuffer(dst, offset, bytes);
    this.#bump(dst);
    this.#pendingBuffers.add(dst);
    this.#pendingDispatches++;
  }

  /** Submit pending work, then destroy the scratch textures nobody holds. */
  clearTextures(): void {
    for (const release of this.#textureHolders) release();
    this.flush();
    this.textures.destroyIdle();
  }

  /** Submit everything recorded so far. */
  flush(): void {
    if (!this.#encoder) return;
    this.#endPass();
    if (this.#arenaUsed > 0) {
      this.device.queue.writeBuffer(this.#arena, 0, this.#arenaMirror, 0, this.#arenaUsed);
    }
    this.device.queue.submit([this.#encoder.finish()]);
    this.#encoder = null;
    this.#arenaUsed = 0;
    this.#pendingDispatches = 0;
    this.#pendingBuffers.clear();
    this.submitCount++;
    this.pool.afterSubmit();
  }

  /** Write host data into a buffer, submitting first if a pending command still uses it. */
  write(dst: GPUBuffer, dstOffset: number, data: ArrayBufferView): void {
    if (this.#pendingBuffers.has(dst)) this.flush();
    this.#bump(dst);
    // writeBuffer needs a multiple of 4 bytes.
    const bytes = data.byteLength;
    if (bytes % 4 === 0) {
      this.device.queue.writeBuffer(
        dst,
        dstOffset,
        data.buffer as ArrayBuffer,
        data.byteOffset,
        bytes,
      );
    } else {
      const padded = new Uint8Array(Math.ceil(bytes / 4) * 4);
      padded.set(new Uint8Array(data.buffer, data.byteOffset, bytes));
      this.device.queue.writeBuffer(dst, dstOffset, padded);
    }
  }

  /** Copy `bytes` from `src` at `offset` back to the host (submits pending work first). */
  async read(src: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
    const aligned = Math.ceil(bytes / 4) * 4;
    const staging = this.device.createBuffer({
      size: Math.max(4, aligned),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    this.copy(src, offset, staging, 0, aligned);
    this.flush();
    await staging.mapAsync(GPUMapMode.READ);
    const out = staging.getMappedRange().slice(0, bytes);
    staging.unmap();
    staging.destroy();
    this.#throwGpuErrors();
    return out;
  }

  /** Wait until the GPU has finished all submitted work. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.#throwGpuErrors();
  }

  /** Throw the device's pending errors, if any (results computed after one are not valid). */
  #throwGpuErrors(): void {
    const errors = takeGpuErrors();
    if (errors.length) {
      throw new Error(
        `WebGPU reported ${errors.length} error(s); results since then are invalid:\n  ` +
          errors.slice(0, 5).join("\n  "),
      );
    }
  }

  /**
   * GPU time per kernel name of the work `fn` records (each dispatch timed alone), sorted by
   * total time. Null without timestamp queries. Kernel names group variants (`map(a + b)` etc.);
   * with `shapes`, dispatches group by kernel name, grid and (products) M, N, K.
   */
  async profile(
    fn: () => void,
    maxDispatches = 2048,
    shapes = false,
  ): Promise<[string, { ms: number; count: number }][] | null> {
    if (!this.gpu.hasTimestamps) return null;
    this.#profileNames = [];
    this.#profileShapes = shapes;
    let names: string[];
    try {
      await this.timeGpu(fn, maxDispatches);
    } finally {
      names = this.#profileNames;
      this.#profileNames = null;
    }
    const per = this.#lastTimestamps;
    const out = new Map<string, { ms: number; count: number }>();
    for (let i = 0; i < Math.min(names.length, per.length); i++) {
      const e = out.get(names[i]) ?? { ms: 0, count: 0 };
      e.ms += per[i];
      e.count++;
      out.set(names[i], e);
    }
    return [...out].sort((a, b) => b[1].ms - a[1].ms);
  }

  /**
   * GPU time in milliseconds of the work `fn` records, from pass timestamps (summed over passes).
   * Returns null when the adapter has no timestamp queries; callers then time on the host.
   */
  async timeGpu(fn: () => void, maxPasses = 64): Promise<number | null> {
    if (!this.gpu.hasTimestamps) {
      fn();
      await this.sync();
      return null;
    }
    this.flush();
    const capacity = maxPasses * 2;
    const querySet = this.device.createQuerySet({ type: "timestamp", count: capacity });
    this.#timing = { querySet, next: 0, capacity };
    try {
      fn();
    } finally {
      this.#endPass();
    }
    const used = this.#timing.next;
    this.#timing = null;
    const resolve = this.device.createBuffer({
      size: capacity * 8,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    this.#ensureEncoder().resolveQuerySet(querySet, 0, used, resolve, 0);
    const raw = await this.read(resolve, 0, used * 8);
    resolve.destroy();
    querySet.destroy();
    const ts = new BigUint64Array(raw);
    let ns = 0n;
    this.#lastTimestamps = [];
    for (let i = 0; i + 1 < used; i += 2) {
      ns += ts[i + 1] - ts[i];
      this.#lastTimestamps.push(Number(ts[i + 1] - ts[i]) / 1e6);
    }
    return Number(ns) / 1e6;
  }
}

let runtime: Runtime | null = null;

/** Initialise WebGPU and the runtime once; every entry point awaits this before using ops. */
export async function init(): Promise<Gpu> {
  const g = await getGpu();
  if (!runtime) runtime = new Runtime(g);
  return g;
}

/** The runtime (after {@link init}). */
export function rt(): Runtime {
  if (!runtime) {
    gpu(); // throws the "not initialised" error
    runtime = new Runtime(gpu());
  }
  return runtime;
}

export type { Runtime };
