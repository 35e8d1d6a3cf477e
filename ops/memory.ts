/**
 * GPU memory: a size-class buffer pool with exact accounting per category.
 *
 * Every allocation carries a {@link Category}. Live and peak bytes are counted from the bytes that
 * tensors asked for (the "logical" size, what a memory table reports); the pool separately counts
 * what it really holds from the driver (size classes round up by at most 25 %).
 *
 * Buffers released while encoded-but-unsubmitted commands may still read them are parked until the
 * next submit, so a buffer is never handed out again (and overwritten by `queue.writeBuffer`, which
 * runs before pending commands) while an earlier command still needs it.
 *
 * @module
 */

/** What a piece of GPU memory is for; the memory report is broken down by these. */
export type Category =
  | "weights"
  | "trainable"
  | "grads"
  | "optimizer"
  | "activations"
  | "scratch";

/** Every category, in report order. */
export const CATEGORIES: readonly Category[] = [
  "weights",
  "trainable",
  "grads",
  "optimizer",
  "activations",
  "scratch",
];

/** A snapshot of the pool's accounting. */
export interface MemoryStats {
  /** Bytes held by live allocations, per category. */
  live: Record<Category, number>;
  /** The highest `live` value each category reached since the last reset. */
  peak: Record<Category, number>;
  /** Sum of live bytes over categories. */
  liveTotal: number;
  /** The highest `liveTotal` reached since the last reset (not the sum of per-category peaks). */
  peakTotal: number;
  /** Bytes of GPU buffers the pool holds from the driver (live + free + parked). */
  reservedBytes: number;
  /** Number of live allocations. */
  liveAllocations: number;
}

/** One pooled allocation. */
export interface Allocation {
  /** The pooled buffer; its size is `capacity`, possibly more than `bytes`. */
  readonly buffer: GPUBuffer;
  /** Bytes requested by the owner (what accounting counts). */
  readonly bytes: number;
  /** Size class of the underlying buffer. */
  readonly capacity: number;
  /** Changed only through {@link BufferPool.retag}, which keeps the accounting exact. */
  category: Category;
  /** Set when the owner gave the buffer back; a second release throws. */
  released: boolean;
}

const MIN_CLASS = 256;

/** Round `bytes` up to its size class: four classes per power of two (≤ 25 % waste). */
export function sizeClass(bytes: number): number {
  if (bytes <= MIN_CLASS) return MIN_CLASS;
  const p = 2 ** Math.floor(Math.log2(bytes));
  if (p === bytes) return p;
  const step = p / 4;
  return Math.ceil(bytes / step) * step;
}

function zeroes(): Record<Category, number> {
  return {
    weights: 0,
    trainable: 0,
    grads: 0,
    optimizer: 0,
    activations: 0,
    scratch: 0,
  };
}

/** A pool of storage buffers keyed by size class. */
export class BufferPool {
  #free = new Map<number, GPUBuffer[]>();
  #parked: GPUBuffer[] = [];
  #parkedCapacity: number[] = [];
  #live = zeroes();
  #peak = zeroes();
  #liveTotal = 0;
  #peakTotal = 0;
  #reserved = 0;
  #count = 0;
  /** Bytes held in free lists (reusable, not live). */
  #freeBytes = 0;
  /** Submit counter and, per size class, the submit at which it was last used. */
  #tick = 0;
  #lastUsed = new Map<number, number>();
  /**
   * Free buffers kept for reuse are bounded by max(this, the peak live bytes): beyond it the
   * classes unused for longest are destroyed after a submit. Dynamic shapes touch many size
   * classes; without a bound the pool would keep every one of them.
   */
  idleFloorBytes = 64 * 2 ** 20;
  /** Called with the buffer of every released allocation (caches keyed by buffer drop it). */
  onRelease: ((buffer: GPUBuffer) => void) | null = null;

  /** A pool that creates its buffers on `device`. */
  constructor(
    private readonly device: GPUDevice,
    /** True while commands that may reference released buffers are encoded but not submitted. */
    private readonly hasPending: () => boolean,
  ) {}

  /** Take a buffer of at least `bytes` bytes for `category`. */
  acquire(bytes: number, category: Category): Allocation {
    const capacity = sizeClass(Math.max(4, bytes));
    const limit = this.device.limits.maxBufferSize;
    if (capacity > limit) {
      throw new Error(
        `allocation of ${bytes} bytes exceeds this adapter's maxBufferSize (${limit} bytes)`,
      );
    }
    let buffer = this.#free.get(capacity)?.pop();
    this.#lastUsed.set(capacity, this.#tick);
    if (buffer) this.#freeBytes -= capacity;
    if (!buffer) {
      buffer = this.device.createBuffer({
        size: capacity,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      });
      this.#reserved += capacity;
    }
    this.#live[category] += bytes;
    this.#liveTotal += bytes;
    this.#count++;
    if (this.#live[category] > this.#peak[category]) this.#peak[category] = this.#live[category];
    if (this.#liveTotal > this.#peakTotal) this.#peakTotal = this.#liveTotal;
    return { buffer, bytes, capacity, category, released: false };
  }

  /** Give an allocation back. Releasing twice is a bug and throws. */
  release(a: Allocation): void {
    if (a.released) throw new Error("GPU allocation released twice");
    a.released = true;
    this.onRelease?.(a.buffer);
    this.#live[a.category] -= a.bytes;
    this.#liveTotal -= a.bytes;
    this.#count--;
    if (this.hasPending()) {
      this.#parked.push(a.buffer);
      this.#parkedCapacity.push(a.capacity);
    } else {
      this.#toFree(a.buffer, a.capacity);
    }
  }

  /**
   * Count `bytes` (negative to release) of a resource that is not a pooled buffer — the
   * matmul's scratch textures — in a category, so the memory report covers it too.
   */
  account(category: Category, bytes: number): void {
    this.#live[category] += bytes;
    this.#liveTotal += bytes;
    if (this.#live[category] > this.#peak[category]) this.#peak[category] = this.#live[category];
    if (this.#liveTotal > this.#peakTotal) this.#peakTotal = this.#liveTotal;
  }

  /** Move a live allocation to another category (e.g. a frozen weight made trainable). */
  retag(a: Allocation, category: Category): void {
    if (a.released) throw new Error("retag of a released GPU allocation");
    if (a.category === category) return;
    this.#live[a.category] -= a.bytes;
    this.#live[category] += a.bytes;
    a.category = category;
    if (this.#live[category] > this.#peak[category]) this.#peak[category] = this.#live[category];
  }

  /** Called by the runtime right after a submit: parked buffers become reusable. */
  afterSubmit(): void {
    for (let i = 0; i < this.#parked.length; i++) {
      this.#toFree(this.#parked[i], this.#parkedCapacity[i]);
    }
    this.#parked = [];
    this.#parkedCapacity = [];
    this.#tick++;
    this.#evictIdle();
  }

  #toFree(buffer: GPUBuffer, capacity: number): void {
    let list = this.#free.get(capacity);
    if (!list) this.#free.set(capacity, list = []);
    list.push(buffer);
    this.#freeBytes += capacity;
  }

  #evictIdle(): void {
    const limit = Math.max(this.idleFloorBytes, this.#peakTotal);
    if (this.#freeBytes <= limit) return;
    const classes = [...this.#free.keys()].sort((a, b) =>
      (this.#lastUsed.get(a) ?? 0) - (this.#lastUsed.get(b) ?? 0) || b - a
    );
    for (const capacity of classes) {
      const list = this.#free.get(capacity)!;
      while (list.length && this.#freeBytes > limit) {
        list.pop()!.destroy();
        this.#freeBytes -= capacity;
        this.#reserved -= capacity;
      }
      if (list.length === 0) this.#free.delete(capacity);
      if (this.#freeBytes <= limit) break;
    }
  }

  /** Destroy every free buffer (returns the driver memory; live buffers are untouched). */
  trim(): void {
    for (const [capacity, list] of this.#free) {
      for (const b of list) b.destroy();
      this.#reserved -= capacity * list.length;
    }
    this.#free.clear();
    this.#freeBytes = 0;
  }

  /** Current accounting. */
  stats(): MemoryStats {
    return {
      live: { ...this.#live },
      peak: { ...this.#peak },
      liveTotal: this.#liveTotal,
      peakTotal: this.#peakTotal,
      reservedBytes: this.#reserved,
      liveAllocations: this.#count,
    };
  }

  /** Start peak tracking afresh from the current live values. */
  resetPeak(): void {
    this.#peak = { ...this.#live };
    this.#peakTotal = this.#liveTotal;
  }
}
