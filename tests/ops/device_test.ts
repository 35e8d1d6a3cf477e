/**
 * The device and the runtime around it: the no-adapter error, what the real adapter reports, and
 * the dispatch checks that catch a bad kernel call before WebGPU's asynchronous validation would.
 */
import assert from "node:assert/strict";
import {
  defineKernel,
  empty,
  getGpu,
  type GpuProvider,
  grid1d,
  type KernelSpec,
  NoAdapterError,
  requestGpu,
  rt,
  tensor,
} from "../../ops/mod.ts";
import { expectTensor, setup } from "../helpers.ts";

await setup();

Deno.test("no adapter: requestGpu throws NoAdapterError naming the software fallback", async () => {
  const seen: (GPURequestAdapterOptions | undefined)[] = [];
  const provider: GpuProvider = {
    requestAdapter: (options) => {
      seen.push(options);
      return Promise.resolve(null);
    },
  };
  const err = await requestGpu(provider).then(() => null, (e: unknown) => e);
  assert.ok(err instanceof NoAdapterError, `expected NoAdapterError, got ${err}`);
  assert.equal(err.name, "NoAdapterError");
  assert.match(err.message, /No WebGPU adapter found/);
  assert.match(err.message, /apt-get install mesa-vulkan-drivers/);
  assert.match(err.message, /GPU with its driver installed/);
  assert.equal(seen.length, 1);
  assert.equal(seen[0]?.powerPreference, "high-performance");
});

Deno.test("the real adapter is described and its maximum limits are requested", async () => {
  const g = await getGpu();
  assert.equal(g, await getGpu(), "getGpu must return one device per process");
  assert.ok(g.adapter.name.length > 0);
  assert.ok(["vulkan", "metal", "dx12", "gl"].includes(g.adapter.backend));
  for (const f of g.adapter.features) assert.ok(["shader-f16", "timestamp-query"].includes(f));
  assert.equal(g.hasF16, g.adapter.features.includes("shader-f16"));
  assert.equal(g.hasTimestamps, g.adapter.features.includes("timestamp-query"));
  const adapter = await (navigator as { gpu: GpuProvider }).gpu.requestAdapter({
    powerPreference: "high-performance",
  });
  assert.ok(adapter);
  for (
    const key of ["maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupStorageSize"]
  ) {
    const want: number = (adapter.limits as unknown as Record<string, number>)[key];
    const got: number = (g.device.limits as unknown as Record<string, number>)[key];
    assert.equal(got, want, `device limit ${key}`);
  }
});

const SCALE_SPEC: KernelSpec = {
  name: "test_scale",
  bindings: [
    { name: "x", type: "f32", access: "read" },
    { name: "y", type: "f32", access: "read_write" },
  ],
  params: [["n", "u32"], ["k", "f32"]],
  source: `@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x < params.n) { y[gid.x] = params.k * x[gid.x]; }
}`,
};
const scale = defineKernel(SCALE_SPEC);

Deno.test("kernels dispatch with uniform parameters and are cached by source", async () => {
  const x = tensor([1, 2, 3, 4, 5, 6, 7]);
  const y = empty([7]);
  const before = rt().pipelineCount;
  rt().dispatch(scale, [x, y], { n: 7, k: 2.5 }, [1]);
  rt().dispatch(defineKernel({ ...SCALE_SPEC }), [x, y], { n: 3, k: -1 }, [1]);
  assert.equal(rt().pipelineCount - before, 1, "the same WGSL compiled twice");
  await expectTensor(y, [-1, -2, -3, 10, 12.5, 15, 17.5], { atol: 0 });
  assert.ok(scale.wgsl.includes("var<uniform> params: Params"));
  assert.ok(!scale.wgsl.includes("enable f16"), "f16 enabled for a kernel without f16");
  for (const t of [x, y]) t.dispose();
});

Deno.test("bad dispatches fail with messages that name the kernel", () => {
  const x = tensor([1, 2, 3]);
  const y = empty([3]);
  assert.throws(
    () => rt().dispatch(scale, [x], { n: 3, k: 1 }, [1]),
    /kernel test_scale: 2 bindings declared, 1 given/,
  );
  assert.throws(
    () => rt().dispatch(scale, [x, x], { n: 3, k: 1 }, [1]),
    /kernel test_scale: bindings x and y share a (buffer|resource)/,
  );
  assert.throws(
    () => rt().dispatch(scale, [x, y], { n: 3 }, [1]),
    /kernel test_scale: parameter k missing/,
  );
  const limit = rt().device.limits.maxComputeWorkgroupsPerDimension;
  assert.throws(
    () => rt().dispatch(scale, [x, y], { n: 3, k: 1 }, [limit + 1]),
    /kernel test_scale: grid .* exceeds/,
  );
  assert.deepEqual(grid1d(0), [1, 1, 1]);
  assert.deepEqual(grid1d(65535), [65535, 1, 1]);
  assert.deepEqual(grid1d(65536), [65535, 2, 1]);
  for (const t of [x, y]) t.dispose();
});

Deno.test("timeGpu measures recorded work when the adapter has timestamps", async () => {
  const x = empty([1 << 16]);
  const y = empty([1 << 16]);
  const ms = await rt().timeGpu(() => {
    for (let i = 0; i < 4; i++) {
      rt().dispatch(scale, [x, y], { n: 1 << 16, k: 2 }, [1 << 10]);
    }
  });
  if (rt().gpu.hasTimestamps) {
    assert.ok(ms !== null && Number.isFinite(ms) && ms >= 0, `timeGpu returned ${ms}`);
  } else {
    assert.equal(ms, null);
  }
  for (const t of [x, y]) t.dispose();
});

Deno.test("a WebGPU error (here an invalid shader) makes the next read-back throw instead of returning stale zeros", async () => {
  const broken = defineKernel({
    name: "broken_on_purpose",
    bindings: [{ name: "x", type: "f32", access: "read_write" }],
    source: `@compute @workgroup_size(1) fn main() { let a = 1.0; let a = 2.0; x[0] = a; }`,
  });
  const t = tensor([5]);
  rt().dispatch(broken, [t], {}, [1]);
  await assert.rejects(t.read(), /WebGPU reported \d+ error\(s\)/);
  assert.deepStrictEqual(
    await t.toArray(),
    [5],
    "the device works again after the error was reported",
  );
});
