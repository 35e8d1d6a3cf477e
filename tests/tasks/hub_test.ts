/**
 * `deno task download` and tasks/lib/hub/hub.ts against a local fake Hub (hub_server.ts): the cache
 * layout on disk, cache hits, resumed transfers, integrity checks, tokens, offline mode and the
 * GLUE parquet branch. The GLUE test serves the real parquet files of ../shared/data/glue/parquet.
 * Every test uses its own temporary HF_HUB_CACHE; the real home cache is never touched.
 * Host-only: no GPU needed.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  downloadCommonsense,
  downloadGlue,
  downloadModel,
  fetchSnapshot,
  filterRepoFiles,
  hubCacheDir,
  HubCacheMissError,
  HubError,
  hubFile,
  type HubOptions,
  hubResolveUrl,
  matchesPattern,
  MODEL_ALLOW_PATTERNS,
  MODEL_IGNORE_PATTERNS,
  repoFolderName,
  resolveCachedSnapshot,
  resolveHubConfig,
  snapshotDownload,
} from "../../tasks/lib/hub/hub.ts";
import { downloadCli } from "../../tasks/download.ts";
import { type FixtureRepo, type HubServer, startHubServer } from "./hub_server.ts";

const GLUE_PARQUET = new URL("../../../shared/data/glue/parquet", import.meta.url).pathname;
const hasGlue = await Deno.stat(join(GLUE_PARQUET, "wnli", "train", "0000.parquet")).then(
  () => true,
  () => false,
);

const encoder = new TextEncoder();

/** Deterministic pseudo-random bytes (xorshift32), so the LFS blob has a known sha256. */
function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const WEIGHTS = randomBytes(300_000, 7);
const CONFIG = encoder.encode(JSON.stringify({ model_type: "roberta", hidden_size: 8 }));
const TOKENIZER = encoder.encode(JSON.stringify({ version: "1.0", model: { type: "BPE" } }));

const MODEL: FixtureRepo = {
  repoId: "acme/tiny-model",
  repoType: "model",
  revisions: [{
    name: "main",
    files: [
      { path: "config.json", content: CONFIG },
      { path: "tokenizer.json", content: TOKENIZER },
      { path: "README.md", content: encoder.encode("# tiny\n") },
      { path: "model.safetensors", content: WEIGHTS, lfs: true },
      { path: "pytorch_model.bin", content: randomBytes(5000, 9), lfs: true },
      { path: "onnx/model.safetensors", content: randomBytes(4000, 11), lfs: true },
      { path: "nested/deep/notes.txt", content: encoder.encode("deep file\n") },
      { path: "empty.txt", content: new Uint8Array(0) },
    ],
  }],
};

const PRIVATE: FixtureRepo = {
  repoId: "acme/private-model",
  repoType: "model",
  private: true,
  revisions: [{
    name: "main",
    files: [
      { path: "config.json", content: CONFIG },
      { path: "model.safetensors", content: randomBytes(20_000, 13), lfs: true },
    ],
  }],
};

const BIN_ONLY: FixtureRepo = {
  repoId: "acme/bin-only",
  repoType: "model",
  revisions: [{
    name: "main",
    files: [
      { path: "config.json", content: CONFIG },
      { path: "pytorch_model.bin", content: randomBytes(1000, 17), lfs: true },
    ],
  }],
};

async function glueRepo(): Promise<FixtureRepo> {
  const files = [];
  for (const path of ["wnli/train", "wnli/validation", "wnli/test", "cola/validation"]) {
    files.push({
      path: `${path}/0000.parquet`,
      content: await Deno.readFile(join(GLUE_PARQUET, path, "0000.parquet")),
      lfs: true,
    });
  }
  return {
    repoId: "nyu-mll/glue",
    repoType: "dataset",
    revisions: [
      { name: "main", files: [{ path: "README.md", content: encoder.encode("# GLUE\n") }] },
      { name: "refs/convert/parquet", files },
    ],
  };
}

/** A temp cache + fake Hub for one test; both are removed/closed afterwards. */
async function withHub(
  repos: FixtureRepo[],
  fn: (hub: HubServer, options: HubOptions & { cacheDir: string }) => Promise<void>,
  extra: { token?: string; treePageSize?: number } = {},
): Promise<void> {
  const cacheDir = await Deno.makeTempDir({ prefix: "hub_test_" });
  const hub = startHubServer({ repos, ...extra });
  const logs: string[] = [];
  try {
    await fn(hub, {
      env: {},
      cacheDir,
      endpoint: hub.url,
      progress: false,
      retryBaseMs: 1,
      maxRetries: 3,
      log: (line) => logs.push(line),
    });
  } finally {
    await hub.close();
    await Deno.remove(cacheDir, { recursive: true });
  }
}

function contentRequests(
  hub: HubServer,
  from = 0,
): { path: string; range: string | null; bytes: number }[] {
  return hub.requests.slice(from).filter((r) =>
    r.method === "GET" && (r.route === "cdn" || r.route === "resolve")
  );
}

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test("hub config: cache root from HF_HUB_CACHE > HF_HOME > XDG_CACHE_HOME > HOME; endpoint, token, offline", async () => {
  assert.equal(hubCacheDir({ HF_HUB_CACHE: "/c/hub", HF_HOME: "/h", HOME: "/home/u" }), "/c/hub");
  assert.equal(hubCacheDir({ HF_HOME: "/h", HOME: "/home/u" }), "/h/hub");
  assert.equal(hubCacheDir({ XDG_CACHE_HOME: "/x", HOME: "/home/u" }), "/x/huggingface/hub");
  assert.equal(hubCacheDir({ HOME: "/home/u" }), "/home/u/.cache/huggingface/hub");
  assert.equal(hubCacheDir({ HF_HOME: "~/hf", HOME: "/home/u" }), "/home/u/hf/hub");
  assert.equal(repoFolderName("FacebookAI/roberta-base"), "models--FacebookAI--roberta-base");
  assert.equal(repoFolderName("nyu-mll/glue", "dataset"), "datasets--nyu-mll--glue");
  assert.equal(
    hubResolveUrl("https://hf.co", {
      repoId: "nyu-mll/glue",
      repoType: "dataset",
      revision: "refs/convert/parquet",
      path: "sst2/train/0000.parquet",
    }),
    "https://hf.co/datasets/nyu-mll/glue/resolve/refs%2Fconvert%2Fparquet/sst2/train/0000.parquet?download=true",
  );

  const home = await Deno.makeTempDir({ prefix: "hub_home_" });
  try {
    await Deno.writeTextFile(join(home, "token"), "hf_fromfile\n");
    const fromFile = resolveHubConfig({ env: { HF_HOME: home } });
    assert.equal(fromFile.token, "hf_fromfile");
    assert.equal(fromFile.endpoint, "https://huggingface.co");
    assert.equal(fromFile.offline, false);
    const fromEnv = resolveHubConfig({
      env: {
        HF_HOME: home,
        HF_TOKEN: "hf_env",
        HF_ENDPOINT: "http://mirror.test/",
        HF_HUB_OFFLINE: "1",
      },
    });
    assert.equal(fromEnv.token, "hf_env");
    assert.equal(fromEnv.endpoint, "http://mirror.test");
    assert.equal(fromEnv.offline, true);
    assert.equal(fromEnv.cacheDir, join(home, "hub"));
    assert.equal(resolveHubConfig({ env: { HF_HOME: home }, token: null }).token, undefined);
    assert.equal(resolveHubConfig({ env: { HF_HOME: home, HF_HUB_OFFLINE: "0" } }).offline, false);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
  assert.throws(
    () => resolveHubConfig({ env: { HOME: "/h", HF_ENDPOINT: "not a url" } }),
    /HF_ENDPOINT/,
  );
});

Deno.test("hub patterns: fnmatch semantics and the model file selection", () => {
  assert.ok(matchesPattern("sst2/train/0000.parquet", "sst2/*/*.parquet"));
  assert.ok(!matchesPattern("sst2_x/train/0000.parquet", "sst2/*/*.parquet"));
  assert.ok(matchesPattern("a/b/c.json", "*.json"), "`*` crosses `/` as in Python's fnmatch");
  assert.ok(matchesPattern("docs/readme.md", "docs/"), "a trailing slash means the whole folder");
  assert.ok(matchesPattern("model-00001.safetensors", "model-0000[0-9].safetensors"));
  assert.ok(!matchesPattern("model-0000x.safetensors", "model-0000[!x].safetensors"));
  assert.ok(matchesPattern("a.b", "a?b") && !matchesPattern("a.bc", "a?b"));
  assert.ok(!matchesPattern("axb", "a.b"), "dots are literal");
  const repo = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "tf_model.h5",
    "flax_model.msgpack",
    "onnx/model.safetensors",
    "README.md",
    ".gitattributes",
  ];
  assert.deepEqual(filterRepoFiles(repo, MODEL_ALLOW_PATTERNS, MODEL_IGNORE_PATTERNS), [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
  ]);
  assert.deepEqual(filterRepoFiles(repo, undefined, ["*.*"]), []);
});

Deno.test("hub snapshotDownload: blobs named by etag, relative symlinks, refs, no partial files", async () => {
  await withHub([MODEL], async (hub, options) => {
    const dir = await snapshotDownload({ repoId: MODEL.repoId }, options);
    const commit = hub.commitOf(MODEL.repoId);
    const storage = join(options.cacheDir, "models--acme--tiny-model");
    assert.equal(dir, join(storage, "snapshots", commit));
    assert.equal(await Deno.readTextFile(join(storage, "refs", "main")), commit);

    for (const file of MODEL.revisions[0].files) {
      const etag = hub.etagOf(MODEL.repoId, file.path);
      assert.match(etag, file.lfs ? /^[0-9a-f]{64}$/ : /^[0-9a-f]{40}$/);
      if (file.lfs) {
        assert.equal(etag, await sha256Hex(file.content), "an LFS blob is named by its sha256");
      }
      const pointer = join(dir, ...file.path.split("/"));
      const depth = file.path.split("/").length + 1; // snapshots/{commit}/{path...}
      assert.equal(await Deno.readLink(pointer), `${"../".repeat(depth)}blobs/${etag}`, file.path);
      assert.ok((await Deno.lstat(pointer)).isSymlink);
      assert.deepEqual(await Deno.readFile(join(storage, "blobs", etag)), file.content, file.path);
      assert.deepEqual(await Deno.readFile(pointer), file.content, file.path);
    }
    const blobNames = [];
    for await (const e of Deno.readDir(join(storage, "blobs"))) blobNames.push(e.name);
    assert.equal(blobNames.length, MODEL.revisions[0].files.length);
    assert.ok(blobNames.every((n) => !n.endsWith(".incomplete")), "no partial file left behind");
    const locks = [];
    for await (
      const e of Deno.readDir(join(options.cacheDir, ".locks", "models--acme--tiny-model"))
    ) {
      locks.push(e.name);
    }
    assert.ok(locks.includes(`${hub.etagOf(MODEL.repoId, "model.safetensors")}.lock`));

    const heads = hub.requests.filter((r) => r.method === "HEAD");
    assert.ok(
      heads.length > 0 && heads.every((r) => r.path.includes(`/resolve/${commit}/`)),
      "pinned to the commit",
    );
    assert.ok(heads.every((r) => r.search === "?download=true"));
    const cdn = hub.requests.filter((r) => r.route === "cdn");
    assert.equal(
      cdn.length,
      MODEL.revisions[0].files.filter((f) => f.lfs).length,
      "one CDN GET per LFS file",
    );
    const tree = hub.requests.filter((r) => r.path.includes("/tree/"));
    assert.ok(tree.length >= 4, `the tree listing is paginated (2 per page): ${tree.length} pages`);
  }, { treePageSize: 2 });
});

Deno.test("hub cache hit: a second snapshot makes no downloads; a second hubFile only a HEAD", async () => {
  await withHub([MODEL], async (hub, options) => {
    const first = await downloadModel(MODEL.repoId, "main", options);
    assert.deepEqual(first.files, ["config.json", "model.safetensors", "tokenizer.json"]);
    assert.ok(!hub.requests.some((r) => r.path.endsWith(".bin")), "a .bin is never fetched");
    assert.ok(!hub.requests.some((r) => r.path.includes("onnx")), "sub-folders are never fetched");
    const before = hub.requests.length;
    const second = await downloadModel(MODEL.repoId, "main", options);
    assert.deepEqual(second, first);
    const after = hub.requests.slice(before);
    assert.deepEqual(
      after.map((r) => r.route),
      ["api"],
      "only the revision listing is asked again",
    );

    const mark = hub.requests.length;
    const path = await hubFile({ repoId: MODEL.repoId, path: "config.json" }, options);
    assert.equal(path, join(first.snapshotDir, "config.json"));
    assert.deepEqual(hub.requests.slice(mark).map((r) => r.method), ["HEAD"]);
  });
});

Deno.test("hub resume: a partial .incomplete blob is finished with a Range request for the rest", async () => {
  await withHub([MODEL], async (hub, options) => {
    const etag = hub.etagOf(MODEL.repoId, "model.safetensors");
    const blobs = join(options.cacheDir, "models--acme--tiny-model", "blobs");
    await Deno.mkdir(blobs, { recursive: true });
    await Deno.writeFile(join(blobs, `${etag}.incomplete`), WEIGHTS.subarray(0, 100_000));
    const path = await hubFile({ repoId: MODEL.repoId, path: "model.safetensors" }, options);
    const gets = contentRequests(hub);
    assert.equal(gets.length, 1);
    assert.equal(gets[0].range, "bytes=100000-");
    assert.equal(gets[0].bytes, WEIGHTS.length - 100_000, "only the remaining bytes were sent");
    assert.deepEqual(await Deno.readFile(path), WEIGHTS);
    await assert.rejects(Deno.stat(join(blobs, `${etag}.incomplete`)), Deno.errors.NotFound);
  });
});

Deno.test("hub resume: a connection dropped mid-file is resumed from the byte it stopped at", async () => {
  await withHub([MODEL], async (hub, options) => {
    hub.dropOnce("model.safetensors", 70_000);
    hub.dropOnce("config.json", 10);
    const path = await hubFile({ repoId: MODEL.repoId, path: "model.safetensors" }, options);
    assert.deepEqual(await Deno.readFile(path), WEIGHTS);
    const gets = contentRequests(hub);
    assert.deepEqual(gets.map((g) => g.range), [null, "bytes=70000-"]);
    assert.deepEqual(gets.map((g) => g.bytes), [70_000, WEIGHTS.length - 70_000]);

    // A regular (non-LFS) file is resumed the same way, on the Hub URL itself.
    const config = await hubFile({ repoId: MODEL.repoId, path: "config.json" }, options);
    assert.deepEqual(await Deno.readFile(config), CONFIG);
    const configGets = contentRequests(hub).slice(2);
    assert.deepEqual(configGets.map((g) => [g.range, g.bytes]), [[null, 10], [
      "bytes=10-",
      CONFIG.length - 10,
    ]]);
  });
});

Deno.test("hub resume: a transfer that goes silent is abandoned after timeoutMs and resumed", async () => {
  await withHub([MODEL], async (hub, options) => {
    hub.stallOnce("model.safetensors", 50_000);
    const t0 = performance.now();
    const path = await hubFile({ repoId: MODEL.repoId, path: "model.safetensors" }, {
      ...options,
      timeoutMs: 300,
    });
    assert.ok(performance.now() - t0 >= 300, "it waited for the idle timeout");
    assert.deepEqual(await Deno.readFile(path), WEIGHTS);
    assert.deepEqual(contentRequests(hub).map((g) => [g.range, g.bytes]), [
      [null, 50_000],
      ["bytes=50000-", WEIGHTS.length - 50_000],
    ]);
  });
});

Deno.test("hub redirects: a renamed repository is followed on the Hub host, the CDN never is in HEAD", async () => {
  const renamed: FixtureRepo = { ...PRIVATE, formerNames: ["acme/old-name"] };
  await withHub([renamed], async (hub, options) => {
    const path = await hubFile({ repoId: "acme/old-name", path: "model.safetensors" }, {
      ...options,
      token: "hf_secret",
    });
    const commit = hub.commitOf(PRIVATE.repoId);
    // Stored under the name asked for, as huggingface_hub does.
    assert.equal(
      path,
      join(options.cacheDir, "models--acme--old-name", "snapshots", commit, "model.safetensors"),
    );
    assert.deepEqual(await Deno.readFile(path), PRIVATE.revisions[0].files[1].content);
    assert.deepEqual(
      hub.requests.map((r) => [r.method, r.route, r.status, r.authorization !== null]),
      [
        ["HEAD", "resolve", 307, true],
        ["HEAD", "resolve", 302, true],
        ["GET", "cdn", 200, false],
      ],
    );
  }, { token: "hf_secret" });
});

Deno.test("hub integrity: a sha256 mismatch deletes the partial file and names the file", async () => {
  await withHub([MODEL], async (hub, options) => {
    hub.corrupt("model.safetensors");
    const etag = hub.etagOf(MODEL.repoId, "model.safetensors");
    const storage = join(options.cacheDir, "models--acme--tiny-model");
    await assert.rejects(
      hubFile({ repoId: MODEL.repoId, path: "model.safetensors" }, options),
      (e: unknown) => {
        assert.ok(e instanceof HubError);
        assert.match(e.message, /acme\/tiny-model@main: "model\.safetensors": sha256 mismatch/);
        assert.match(e.message, new RegExp(`expected ${etag}`));
        return true;
      },
    );
    await assert.rejects(
      Deno.stat(join(storage, "blobs", `${etag}.incomplete`)),
      Deno.errors.NotFound,
    );
    await assert.rejects(Deno.stat(join(storage, "blobs", etag)), Deno.errors.NotFound);
    const commit = hub.commitOf(MODEL.repoId);
    await assert.rejects(
      Deno.lstat(join(storage, "snapshots", commit, "model.safetensors")),
      Deno.errors.NotFound,
    );

    hub.corrupt("model.safetensors", false);
    const path = await hubFile({ repoId: MODEL.repoId, path: "model.safetensors" }, options);
    assert.deepEqual(await Deno.readFile(path), WEIGHTS, "a clean retry succeeds");
  });
});

Deno.test("hub retries: 5xx answers are retried with backoff, and the retries are bounded", async () => {
  await withHub([MODEL], async (hub, options) => {
    hub.failNext("resolve", 503, 2);
    hub.failNext("cdn", 502, 1);
    const path = await hubFile({ repoId: MODEL.repoId, path: "model.safetensors" }, options);
    assert.deepEqual(await Deno.readFile(path), WEIGHTS);
    assert.deepEqual(hub.requests.map((r) => r.status), [503, 503, 302, 502, 200]);

    hub.failNext("api", 500, 100);
    const mark = hub.requests.length;
    await assert.rejects(
      fetchSnapshot({ repoId: "acme/other" }, options),
      /HTTP 500 InjectedFailure \(after 4 attempts\)/,
    );
    assert.equal(hub.requests.length - mark, 4, "1 try + maxRetries 3");
    hub.failNext("api", 500, 0);

    await assert.rejects(
      hubFile({ repoId: MODEL.repoId, path: "missing.json" }, options),
      /acme\/tiny-model@main: "missing\.json": HTTP 404 EntryNotFound; no such file/,
    );
  });
});

Deno.test("hub auth: a private repo needs HF_TOKEN, which is sent to the Hub but not to the CDN", async () => {
  await withHub([PRIVATE], async (hub, options) => {
    const env = { HF_HUB_CACHE: options.cacheDir, HF_ENDPOINT: hub.url };
    const base = { progress: false, retryBaseMs: 1, maxRetries: 1 };
    await assert.rejects(
      downloadModel(PRIVATE.repoId, "main", { ...base, env }),
      /acme\/private-model@main: listing .*HTTP 401.*set HF_TOKEN/,
    );
    const result = await downloadModel(PRIVATE.repoId, "main", {
      ...base,
      env: { ...env, HF_TOKEN: "hf_secret" },
    });
    assert.equal(result.snapshotDir.startsWith(options.cacheDir), true);
    assert.deepEqual(await Deno.readFile(join(result.snapshotDir, "config.json")), CONFIG);
    const authed = hub.requests.filter((r) => r.status < 400);
    assert.ok(
      authed.filter((r) => r.route !== "cdn").every((r) => r.authorization === "Bearer hf_secret"),
    );
    const cdn = authed.filter((r) => r.route === "cdn");
    assert.equal(cdn.length, 1);
    assert.equal(cdn[0].authorization, null, "the signed CDN URL gets no token");
    await assert.rejects(
      downloadModel(PRIVATE.repoId, "main", { ...base, env: { ...env, HF_TOKEN: "hf_wrong" } }),
      /HTTP 401/,
    );
  }, { token: "hf_secret" });
});

Deno.test("hub offline: resolves refs → snapshot from the cache alone, and names what is missing", async () => {
  await withHub([MODEL], async (hub, options) => {
    const online = await downloadModel(MODEL.repoId, "main", options);
    const mark = hub.requests.length;
    const offlineEnv = {
      HF_HUB_CACHE: options.cacheDir,
      HF_ENDPOINT: hub.url,
      HF_HUB_OFFLINE: "1",
    };
    const offline = await downloadModel(MODEL.repoId, "main", { env: offlineEnv, progress: false });
    assert.deepEqual(offline, online);
    assert.equal(
      await resolveCachedSnapshot({ repoId: MODEL.repoId }, options),
      online.snapshotDir,
    );
    assert.equal(
      await hubFile({ repoId: MODEL.repoId, path: "tokenizer.json" }, {
        ...options,
        offline: true,
      }),
      join(online.snapshotDir, "tokenizer.json"),
    );
    assert.equal(hub.requests.length, mark, "offline mode makes no request");

    await assert.rejects(
      hubFile({ repoId: MODEL.repoId, path: "README.md" }, { ...options, offline: true }),
      (e: unknown) =>
        e instanceof HubCacheMissError &&
        /acme\/tiny-model@main: file "README\.md" is not in the Hugging Face cache/.test(
          e.message,
        ) &&
        e.message.includes("offline"),
    );
    await assert.rejects(
      downloadModel("acme/never-downloaded", "main", { ...options, offline: true }),
      (e: unknown) =>
        e instanceof HubCacheMissError &&
        e.message.includes("acme/never-downloaded@main: not in the Hugging Face cache") &&
        e.message.includes(join("models--acme--never-downloaded", "refs", "main")),
    );
    await assert.rejects(
      downloadGlue("wnli", { ...options, offline: true }),
      /dataset nyu-mll\/glue@refs\/convert\/parquet: not in the Hugging Face cache/,
    );
    assert.equal(hub.requests.length, mark);

    // With the Hub unreachable (online mode), the cached snapshot is used and a warning logged.
    const logs: string[] = [];
    await hub.close();
    const fallback = await downloadModel(MODEL.repoId, "main", {
      ...options,
      maxRetries: 1,
      log: (l) => logs.push(l),
    });
    assert.deepEqual(fallback, online);
    assert.match(logs.join("\n"), /unreachable.*cached snapshot/);
  });
});

Deno.test({
  name:
    "hub GLUE: nyu-mll/glue parquet files from refs/convert/parquet (real ../shared/data/glue files)",
  ignore: !hasGlue,
  fn: async () => {
    const glue = await glueRepo();
    await withHub([glue], async (hub, options) => {
      const result = await downloadGlue("wnli", options);
      const commit = hub.commitOf("nyu-mll/glue", "refs/convert/parquet");
      const storage = join(options.cacheDir, "datasets--nyu-mll--glue");
      assert.equal(result.commit, commit);
      assert.equal(result.snapshotDir, join(storage, "snapshots", commit));
      assert.deepEqual(result.files, [
        "wnli/test/0000.parquet",
        "wnli/train/0000.parquet",
        "wnli/validation/0000.parquet",
      ]);
      assert.equal(
        await Deno.readTextFile(join(storage, "refs", "refs", "convert", "parquet")),
        commit,
      );
      for (const f of result.files) {
        const local = join(result.snapshotDir, f);
        assert.deepEqual(await Deno.readFile(local), await Deno.readFile(join(GLUE_PARQUET, f)), f);
        assert.equal(
          await Deno.readLink(local),
          `../../../../blobs/${hub.etagOf("nyu-mll/glue", f, "refs/convert/parquet")}`,
        );
      }
      const api = hub.requests.find((r) => r.route === "api");
      assert.equal(api?.path, "/api/datasets/nyu-mll/glue/revision/refs%2Fconvert%2Fparquet");
      assert.ok(
        !hub.requests.some((r) => r.path.includes("cola")),
        "another task's files are not fetched",
      );
      assert.ok(hub.requests.some((r) => r.path.startsWith("/datasets/nyu-mll/glue/resolve/")));

      await assert.rejects(downloadGlue("sst-2", options), /--config: expected a GLUE task/);
    });
  },
});

Deno.test("deno task download: flags, printed paths, and errors that say what to do", async () => {
  await withHub([MODEL, BIN_ONLY], async (hub, options) => {
    const out = await downloadCli(["--model", MODEL.repoId, "--quiet"], options);
    const commit = hub.commitOf(MODEL.repoId);
    const dir = join(options.cacheDir, "models--acme--tiny-model", "snapshots", commit);
    assert.equal(
      out,
      [
        `model acme/tiny-model@main (commit ${commit.slice(0, 12)}): ${dir}`,
        `  ${dir}/config.json`,
        `  ${dir}/model.safetensors`,
        `  ${dir}/tokenizer.json`,
      ].join("\n"),
    );
    const offline = await downloadCli(["--model", MODEL.repoId, "--offline"], {
      ...options,
      endpoint: "http://127.0.0.1:9",
    });
    assert.equal(offline, out);

    const generic = await downloadCli(
      ["--dataset", "acme/tiny-model", "--include", "*.md"],
      options,
    ).catch((e) => e);
    assert.match(String(generic), /dataset acme\/tiny-model@main: listing .*HTTP 404 RepoNotFound/);

    await assert.rejects(
      downloadModel(BIN_ONLY.repoId, "main", options),
      /acme\/bin-only@main: no \*\.safetensors weights/,
    );
    await assert.rejects(downloadCli([], options), /nothing to download: .*--help\)$/);
    await assert.rejects(downloadCli(["--dataset", "glue"], options), /missing --config/);
    await assert.rejects(
      downloadCli(["--dataset", "glue", "--config", "nope"], options),
      /expected a GLUE task/,
    );
    await assert.rejects(downloadCli(["--bogus"], options), /unknown flag --bogus/);
    await assert.rejects(
      downloadCli(["--model", "not a repo"], options),
      /repo id: expected "org\/name"/,
    );
    await assert.rejects(
      downloadCommonsense("boolq", options),
      /boolq.*place dataset\/boolq\/test\.json.*LLM-Adapters/,
    );
    await assert.rejects(
      downloadCli(["--dataset", "commonsense", "nope"], options),
      /expected one of commonsense_170k/,
    );
    assert.match(await downloadCli(["--help"]), /^usage: deno task download/);
  });
});
