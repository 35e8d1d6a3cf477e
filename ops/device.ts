/**
 * The one GPUDevice of this process.
 *
 * The device is requested with the adapter's own maximum limits and every optional feature we can
 * use (`shader-f16`, `timestamp-query`). Callers get a description of the adapter (name, backend,
 * whether it is a software fallback) that goes into every result file.
 *
 * @module
 */

/** What a result file records about the adapter a run used. */
export interface AdapterDescription {
  /** Human-readable adapter name, e.g. "NVIDIA H100" or "llvmpipe (LLVM 15.0.6, 256 bits)". */
  name: string;
  /** The vendor string reported by the adapter (may be a PCI id). */
  vendor: string;
  /** The graphics backend under WebGPU when it can be inferred (vulkan, metal, dx12, gl). */
  backend: string;
  /** True for a software adapter such as Mesa's llvmpipe/lavapipe. */
  isFallback: boolean;
  /** Optional features the device was created with. */
  features: string[];
}

/** The device plus what we learned about its adapter. */
export interface Gpu {
  /** The process's one device, created with the adapter's maximum limits. */
  device: GPUDevice;
  /** What the adapter reported (recorded in result files). */
  adapter: AdapterDescription;
  /** True when shaders may use `enable f16;`. */
  hasF16: boolean;
  /** True when passes may carry timestamp writes. */
  hasTimestamps: boolean;
}

/** The minimal part of `navigator.gpu` we use; injectable so the no-adapter path can be tested. */
export interface GpuProvider {
  /** As `navigator.gpu.requestAdapter`: an adapter, or null when there is none. */
  requestAdapter(options?: GPURequestAdapterOptions): Promise<GPUAdapter | null>;
}

/** Thrown when no WebGPU adapter exists on this machine. */
export class NoAdapterError extends Error {
  /** `detail` (e.g. why the request failed) is added to the message in parentheses. */
  constructor(detail = "") {
    super(
      "No WebGPU adapter found" + (detail ? ` (${detail})` : "") + ". @ruc/peft needs one of:\n" +
        "  - a GPU with its driver installed (NVIDIA, AMD, Intel or Apple), or\n" +
        "  - Mesa's software Vulkan for CPU-only machines: `apt-get install mesa-vulkan-drivers`\n" +
        "    (Debian/Ubuntu; the CI script does this), then run again.\n" +
        "Set XDG_RUNTIME_DIR=/tmp on headless Linux to silence a harmless warning.",
    );
    this.name = "NoAdapterError";
  }
}

const OPTIONAL_FEATURES: GPUFeatureName[] = ["shader-f16", "timestamp-query"];

function inferBackend(info: GPUAdapterInfo): string {
  const d = `${info.description} ${info.architecture}`.toLowerCase();
  if (Deno.build.os === "darwin") return "metal";
  if (Deno.build.os === "windows") return "dx12";
  if (d.includes("opengl") || d.includes(" gl ")) return "gl";
  return "vulkan";
}

/**
 * Request an adapter and a device from `provider` (navigator.gpu by default) with the adapter's
 * maximum limits. Prefer {@link getGpu}, which caches the result for the whole process.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * const gpu = await requestGpu();
 * console.log(gpu.adapter.name);
 * ```
 */
export async function requestGpu(provider?: GpuProvider): Promise<Gpu> {
  const source = provider ?? (navigator as { gpu?: GpuProvider }).gpu;
  if (!source) throw new NoAdapterError("navigator.gpu is not available in this runtime");
  const adapter = await source.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new NoAdapterError();
  const features = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f));
  const requiredLimits: Record<string, number> = {};
  // Every numeric limit of the adapter, requested at its maximum.
  for (const key in adapter.limits) {
    const value = (adapter.limits as unknown as Record<string, unknown>)[key];
    if (typeof value === "number") requiredLimits[key] = value;
  }
  const device = await adapter.requestDevice({ requiredFeatures: features, requiredLimits });
  device.addEventListener("uncapturederror", (event) => {
    const message = (event as GPUUncapturedErrorEvent).error.message;
    if (pendingErrors.length < 20) pendingErrors.push(message);
  });
  const info = adapter.info;
  return {
    device,
    adapter: {
      name: info.description || info.device || "unknown adapter",
      vendor: info.vendor,
      backend: inferBackend(info),
      isFallback: (info as GPUAdapterInfo & { isFallbackAdapter?: boolean }).isFallbackAdapter ??
        false,
      features,
    },
    hasF16: features.includes("shader-f16"),
    hasTimestamps: features.includes("timestamp-query"),
  };
}

/** WebGPU validation/out-of-memory errors not yet reported (see {@link takeGpuErrors}). */
const pendingErrors: string[] = [];

/**
 * Errors the device reported since the last call, emptied. An invalid dispatch makes WebGPU drop
 * the whole command buffer, so the runtime throws these on the next read-back instead of letting
 * results silently stay zero.
 */
export function takeGpuErrors(): string[] {
  return pendingErrors.splice(0);
}

let cached: Promise<Gpu> | null = null;
let resolved: Gpu | null = null;

/** The process-wide device, created on first use. */
export function getGpu(): Promise<Gpu> {
  if (!cached) {
    cached = requestGpu().then((g) => (resolved = g));
    cached.catch(() => (cached = null));
  }
  return cached;
}

/**
 * The device synchronously, once {@link getGpu} has resolved. Engine code runs after
 * `await getGpu()` (or `await init()`), so ops stay synchronous.
 */
export function gpu(): Gpu {
  if (!resolved) {
    throw new Error("WebGPU is not initialised: call `await init()` (from ops/) before using ops");
  }
  return resolved;
}
