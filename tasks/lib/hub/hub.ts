/**
 * Hugging Face Hub downloads into the standard Hugging Face cache, laid out exactly as Python's
 * `huggingface_hub` writes it, so a file fetched here is reused by `transformers`/`datasets` and
 * the other way round:
 *
 * ```
 * {cache}/models--{org}--{name}/              (datasets--{org}--{name} for data sets)
 *   blobs/{etag}                              content; etag = sha256 (LFS) or git blob sha1
 *   blobs/{etag}.incomplete                   a partial download, resumed with a Range request
 *   refs/{revision}                           the commit hash the branch/tag last resolved to
 *   snapshots/{commit}/{path}                 relative symlink to ../../blobs/{etag}
 * {cache}/.locks/{repo folder}/{etag}.lock    flock, shared with Python's filelock
 * ```
 *
 * The cache root is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`;
 * `$HF_ENDPOINT` and `$HF_TOKEN` (or the token file `huggingface-cli login` writes) are honoured, and
 * `$HF_HUB_OFFLINE=1` resolves everything from the cache alone (refs → snapshot).
 *
 * @example
 * ```ts
 * import { snapshotDownload } from "./hub.ts";
 * const dir = await snapshotDownload({
 *   repoId: "nyu-mll/glue",
 *   repoType: "dataset",
 *   revision: "refs/convert/parquet",
 *   allowPatterns: ["sst2/*"],
 * });
 * console.log(dir); // ~/.cache/huggingface/hub/datasets--nyu-mll--glue/snapshots/<commit>
 * ```
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { dirname, isAbsolute, join, relative } from "node:path";
import { z } from "zod";

/** The kinds of Hub repository this toolkit downloads from. */
export type RepoType = "model" | "dataset";

/** The public Hub, used when `$HF_ENDPOINT` is not set. */
export const DEFAULT_ENDPOINT = "https://huggingface.co";

/** The branch downloaded when no revision is given. */
export const DEFAULT_REVISION = "main";

/** Options shared by every Hub function; anything left out is read from the environment. */
export interface HubOptions {
  /** Environment to read defaults from (default: the process environment). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Cache root (default: `$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`). */
  cacheDir?: string;
  /** Hub URL (default: `$HF_ENDPOINT` or {@link DEFAULT_ENDPOINT}). */
  endpoint?: string;
  /** Access token; `null` sends none (default: `$HF_TOKEN`, then `$HF_HOME/token`). */
  token?: string | null;
  /** Resolve from the cache only (default: `$HF_HUB_OFFLINE`). */
  offline?: boolean;
  /** Draw a progress bar on stderr (default: when stderr is a terminal). */
  progress?: boolean;
  /** Retries after a 5xx answer or a network error that made no progress (default 5). */
  maxRetries?: number;
  /** First backoff delay in ms, doubled per retry up to 8 s (default 500). */
  retryBaseMs?: number;
  /** Milliseconds without any answer or body bytes before a request counts as failed (default 60 000). */
  timeoutMs?: number;
  /** Where warnings go (default: stderr). */
  log?: (line: string) => void;
}

/** {@link HubOptions} with every default resolved. */
export interface HubConfig {
  /** Cache root. */
  cacheDir: string;
  /** Hub URL without a trailing slash. */
  endpoint: string;
  /** Access token, if any. */
  token: string | undefined;
  /** Whether to stay off the network. */
  offline: boolean;
  /** Whether to draw a progress bar. */
  progress: boolean;
  /** Retry bound. */
  maxRetries: number;
  /** First backoff delay in ms. */
  retryBaseMs: number;
  /** Idle timeout in ms. */
  timeoutMs: number;
  /** Warning sink. */
  log: (line: string) => void;
}

/** A repository at a revision (branch, tag, `refs/...` or 40-hex commit). */
export interface RepoRef {
  /** `org/name` (or a bare legacy name). */
  repoId: string;
  /** Default "model". */
  repoType?: RepoType;
  /** Default {@link DEFAULT_REVISION}. */
  revision?: string;
}

/** One file of a repository. */
export interface FileRef extends RepoRef {
  /** Path inside the repository, `/`-separated. */
  path: string;
}

/** Which files of a repository a snapshot holds (Python's fnmatch rules: `*` also crosses `/`). */
export interface SnapshotRequest extends RepoRef {
  /** Keep only files matching one of these (default: all). */
  allowPatterns?: readonly string[];
  /** Then drop files matching any of these. */
  ignorePatterns?: readonly string[];
}

/** What a snapshot download or cache lookup resolved to. */
export interface SnapshotResult {
  /** The repository. */
  repoId: string;
  /** Its type. */
  repoType: RepoType;
  /** The revision asked for. */
  revision: string;
  /** The commit it resolved to. */
  commit: string;
  /** `{cache}/{repo folder}/snapshots/{commit}`. */
  snapshotDir: string;
  /** Repository paths of the selected files, sorted. */
  files: string[];
}

/** What a HEAD request on a resolve URL says about one file. */
export interface HubFileMetadata {
  /** `X-Repo-Commit`. */
  commit: string;
  /** `X-Linked-Etag` or `ETag`, unquoted: the blob's name in the cache. */
  etag: string;
  /** `X-Linked-Size` or `Content-Length`. */
  size: number;
  /** Where to GET the bytes: a CDN `Location`, or the resolve URL itself. */
  location: string;
  /** Whether the file is stored in LFS (then `etag` is its sha256). */
  isLfs: boolean;
}

/** One file in the tree API's listing. */
export interface RepoTreeEntry {
  /** Path inside the repository. */
  path: string;
  /** Size in bytes (of the LFS object for LFS files). */
  size: number;
  /** sha256 of the content, for LFS files. */
  lfsSha256?: string;
}

/** An HTTP or integrity failure talking to the Hub; `status` is set for HTTP errors. */
export class HubError extends Error {
  /** HTTP status, when the Hub answered with an error. */
  readonly status: number | undefined;
  /** Whether retrying may help (5xx, 429, network). */
  readonly retryable: boolean;
  /** Builds the error; `status` and `retryable` default to undefined and false. */
  constructor(message: string, status?: number, retryable = false) {
    super(message);
    this.name = "HubError";
    this.status = status;
    this.retryable = retryable;
  }
}

/** A file or snapshot asked for offline (or with the Hub unreachable) that is not in the cache. */
export class HubCacheMissError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "HubCacheMissError";
  }
}

const COMMIT_RE = /^[0-9a-f]{40}$/;
const SHA256_RE = /^[0-9a-f]{64}$/;
const REPO_ID_RE = /^(?:[A-Za-z0-9][\w.-]*\/)?[A-Za-z0-9][\w.-]*$/;
const ETAG_RE = /^[\w.-]+$/;
const MAX_BACKOFF_MS = 8000;

// ---------------------------------------------------------------------------------------------
// Configuration and naming

/** Resolve every option against the environment (flags win over environment variables). */
export function resolveHubConfig(options: HubOptions = {}): HubConfig {
  const env = options.env ?? Deno.env.toObject();
  const endpoint = (options.endpoint ?? env.HF_ENDPOINT ?? DEFAULT_ENDPOINT).replace(/\/+$/, "");
  try {
    new URL(endpoint);
  } catch {
    throw new Error(`HF_ENDPOINT: expected a URL such as ${DEFAULT_ENDPOINT}, got "${endpoint}"`);
  }
  const token = options.token === null ? undefined : options.token ?? envToken(env);
  return {
    cacheDir: options.cacheDir ?? hubCacheDir(env),
    endpoint,
    token,
    offline: options.offline ?? isTruthy(env.HF_HUB_OFFLINE),
    progress: options.progress ?? Deno.stderr.isTerminal(),
    maxRetries: options.maxRetries ?? 5,
    retryBaseMs: options.retryBaseMs ?? 500,
    timeoutMs: options.timeoutMs ?? 60_000,
    log: options.log ?? ((line) => console.error(line)),
  };
}

/** The cache root: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME|~/.cache` + `/huggingface/hub`. */
export function hubCacheDir(
  env: Readonly<Record<string, string | undefined>> = Deno.env.toObject(),
): string {
  const explicit = env.HF_HUB_CACHE ?? env.HUGGINGFACE_HUB_CACHE;
  if (explicit) return expandHome(explicit, env);
  return join(hfHome(env), "hub");
}

/** The cache folder of one repository: `models--org--name` or `datasets--org--name`. */
export function repoFolderName(repoId: string, repoType: RepoType = "model"): string {
  return [`${repoType}s`, ...repoId.split("/")].join("--");
}

/** `{endpoint}/[datasets/]{repo}/resolve/{revision}/{path}?download=true`, revision URL-encoded. */
export function hubResolveUrl(endpoint: string, ref: FileRef): string {
  const prefix = (ref.repoType ?? "model") === "dataset" ? "datasets/" : "";
  const revision = encodeURIComponent(ref.revision ?? DEFAULT_REVISION);
  const path = ref.path.split("/").map(encodeURIComponent).join("/");
  return `${endpoint}/${prefix}${ref.repoId}/resolve/${revision}/${path}?download=true`;
}

/** Python `fnmatch` semantics, as `huggingface_hub` applies patterns (`*` crosses `/`; `dir/` means `dir/*`). */
export function matchesPattern(path: string, pattern: string): boolean {
  return globToRegExp(pattern.endsWith("/") ? `${pattern}*` : pattern).test(path);
}

/** Keep the paths matching any allow pattern (all when none given), minus those matching an ignore pattern. */
export function filterRepoFiles(
  paths: readonly string[],
  allowPatterns?: readonly string[],
  ignorePatterns?: readonly string[],
): string[] {
  return paths.filter((p) =>
    (allowPatterns === undefined || allowPatterns.some((g) => matchesPattern(p, g))) &&
    !(ignorePatterns ?? []).some((g) => matchesPattern(p, g))
  );
}

// ---------------------------------------------------------------------------------------------
// Public entry points

/** HEAD one file's resolve URL (no redirect following, except relative ones) and read its metadata. */
export async function hubFileMetadata(
  ref: FileRef,
  options: HubOptions = {},
): Promise<HubFileMetadata> {
  const cfg = resolveHubConfig(options);
  return await fetchFileMetadata(normalizeFileRef(ref), cfg);
}

/** The commit a revision points to and every file path in it (`/api/{type}s/{repo}/revision/{rev}`). */
export async function listRepoFiles(
  ref: RepoRef,
  options: HubOptions = {},
): Promise<{ commit: string; files: string[] }> {
  const cfg = resolveHubConfig(options);
  return await fetchRepoListing(normalizeRepoRef(ref), cfg);
}

/** Sizes and LFS sha256 of every file at a revision (tree API, paginated), keyed by path. */
export async function listRepoTree(
  ref: RepoRef,
  options: HubOptions = {},
): Promise<Map<string, RepoTreeEntry>> {
  const cfg = resolveHubConfig(options);
  return await fetchRepoTree(normalizeRepoRef(ref), cfg);
}

/**
 * Download one file into the cache (or find it there) and return its snapshot path
 * `{cache}/{repo folder}/snapshots/{commit}/{path}`. Offline, it resolves refs → snapshot and
 * throws {@link HubCacheMissError} naming the repository and file when absent.
 */
export async function hubFile(ref: FileRef, options: HubOptions = {}): Promise<string> {
  const cfg = resolveHubConfig(options);
  return await fetchFileIntoCache(normalizeFileRef(ref), cfg, undefined);
}

/** The snapshot path of one cached file, without touching the network; throws when it is not cached. */
export async function resolveCachedFile(ref: FileRef, options: HubOptions = {}): Promise<string> {
  return await cachedFileOrThrow(normalizeFileRef(ref), resolveHubConfig(options));
}

/** Download the selected files of a repository at a revision; returns the snapshot folder. */
export async function snapshotDownload(
  request: SnapshotRequest,
  options: HubOptions = {},
): Promise<string> {
  return (await fetchSnapshot(request, options)).snapshotDir;
}

/** Like {@link snapshotDownload}, returning the commit and the selected files too. */
export async function fetchSnapshot(
  request: SnapshotRequest,
  options: HubOptions = {},
): Promise<SnapshotResult> {
  const cfg = resolveHubConfig(options);
  const ref = normalizeRepoRef(request);
  if (cfg.offline) return await cachedSnapshot(ref, request, cfg);
  let listing: { commit: string; files: string[] };
  try {
    listing = await fetchRepoListing(ref, cfg);
  } catch (e) {
    if (!isUnreachable(e)) throw e;
    const cached = await cachedSnapshot(ref, request, cfg).catch(() => undefined);
    if (cached === undefined) throw e;
    cfg.log(
      `${describe(ref)}: the Hub is unreachable (${errorText(e)}); using the cached snapshot`,
    );
    return cached;
  }
  const storage = repoStorage(cfg.cacheDir, ref);
  await writeRef(storage, ref.revision, listing.commit);
  const files = filterRepoFiles(listing.files, request.allowPatterns, request.ignorePatterns)
    .sort();
  if (files.length === 0) {
    throw new HubError(
      `${describe(ref)}: no file matches ${JSON.stringify(request.allowPatterns ?? ["*"])}` +
        `${request.ignorePatterns ? ` minus ${JSON.stringify(request.ignorePatterns)}` : ""}` +
        ` (the revision has ${listing.files.length} files: ${preview(listing.files)})`,
    );
  }
  const missing: string[] = [];
  for (const path of files) {
    if (!(await exists(pointerPath(storage, listing.commit, path)))) missing.push(path);
  }
  if (missing.length > 0) {
    const pinned = { ...ref, revision: listing.commit };
    const tree = await fetchRepoTree(pinned, cfg).catch((e) => {
      cfg.log(`${describe(ref)}: no tree listing (${errorText(e)}); sizes come from HEAD alone`);
      return new Map<string, RepoTreeEntry>();
    });
    for (const path of missing) await fetchFileIntoCache({ ...pinned, path }, cfg, tree.get(path));
  }
  return {
    repoId: ref.repoId,
    repoType: ref.repoType,
    revision: ref.revision,
    commit: listing.commit,
    snapshotDir: join(storage, "snapshots", listing.commit),
    files,
  };
}

/**
 * The snapshot folder of a cached revision, without touching the network (refs/{revision} →
 * snapshots/{commit}). With patterns, at least one cached file must match them. Throws
 * {@link HubCacheMissError} naming the repository and revision otherwise.
 */
export async function resolveCachedSnapshot(
  request: SnapshotRequest,
  options: HubOptions = {},
): Promise<string> {
  const cfg = resolveHubConfig(options);
  return (await cachedSnapshot(normalizeRepoRef(request), request, cfg)).snapshotDir;
}

// ---------------------------------------------------------------------------------------------
// What `deno task download` fetches

/** Files a model download keeps: config, tokenizer files, safetensors weights and their index. */
export const MODEL_ALLOW_PATTERNS: readonly string[] = [
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "added_tokens.json",
  "vocab.json",
  "vocab.txt",
  "merges.txt",
  "tokenizer.model",
  "*.safetensors",
  "*.safetensors.index.json",
];

/** Never downloaded for a model: sub-folders (other formats, ONNX, originals) and pickle/TF/Flax weights. */
export const MODEL_IGNORE_PATTERNS: readonly string[] = [
  "*/*",
  "*.bin",
  "*.pt",
  "*.pth",
  "*.h5",
  "*.msgpack",
  "*.ckpt",
  "*.onnx",
  "*.gguf",
];

/** Download a model's config, tokenizer and safetensors weights; errors when the repo has no safetensors. */
export async function downloadModel(
  repoId: string,
  revision: string = DEFAULT_REVISION,
  options: HubOptions = {},
): Promise<SnapshotResult> {
  const result = await fetchSnapshot({
    repoId,
    repoType: "model",
    revision,
    allowPatterns: MODEL_ALLOW_PATTERNS,
    ignorePatterns: MODEL_IGNORE_PATTERNS,
  }, options);
  if (!result.files.includes("config.json")) {
    throw new HubError(`${describe(result)}: no config.json at the top level of the repository`);
  }
  if (!result.files.some((f) => f.endsWith(".safetensors"))) {
    throw new HubError(
      `${describe(result)}: no *.safetensors weights (this toolkit never downloads .bin/.pt/.h5 ` +
        `weights; look for a safetensors revision, e.g. refs/pr/N from the conversion bot)`,
    );
  }
  return result;
}

/** The Hub data set holding GLUE. */
export const GLUE_REPO = "nyu-mll/glue";

/** The branch the Hub's parquet conversion lives on. */
export const GLUE_PARQUET_REVISION = "refs/convert/parquet";

/** GLUE configurations (folders of the parquet conversion). */
export const GLUE_CONFIGS: readonly string[] = [
  "ax",
  "cola",
  "mnli",
  "mnli_matched",
  "mnli_mismatched",
  "mrpc",
  "qnli",
  "qqp",
  "rte",
  "sst2",
  "stsb",
  "wnli",
];

/** Download one GLUE task's parquet files: `nyu-mll/glue` @ refs/convert/parquet, `{config}/{split}/*.parquet`. */
export async function downloadGlue(
  config: string,
  options: HubOptions = {},
): Promise<SnapshotResult> {
  if (!GLUE_CONFIGS.includes(config)) {
    throw new Error(`--config: expected a GLUE task (${GLUE_CONFIGS.join(", ")}), got "${config}"`);
  }
  return await fetchSnapshot({
    repoId: GLUE_REPO,
    repoType: "dataset",
    revision: GLUE_PARQUET_REVISION,
    allowPatterns: [`${config}/*/*.parquet`],
  }, options);
}

/** Commonsense data in LLM-Adapters' JSON format that has a Hub copy, by name. */
export const COMMONSENSE_HUB_DATASETS: Readonly<
  Record<string, { repoId: string; allowPatterns: readonly string[] }>
> = {
  // The 170k-example training mix (instruction / input / output / answer records).
  commonsense_170k: {
    repoId: "zwhe99/commonsense_170k",
    allowPatterns: ["*.json", "*.jsonl", "*.parquet"],
  },
};

/** LLM-Adapters' per-task test sets, which have no Hub copy in that format. */
export const COMMONSENSE_TEST_SETS: readonly string[] = [
  "boolq",
  "piqa",
  "social_i_qa",
  "hellaswag",
  "winogrande",
  "ARC-Challenge",
  "ARC-Easy",
  "openbookqa",
];

/** Download a commonsense data set by name; LLM-Adapters' test sets must be placed by hand (the error says where). */
export async function downloadCommonsense(
  name: string,
  options: HubOptions = {},
): Promise<SnapshotResult> {
  const hub = COMMONSENSE_HUB_DATASETS[name];
  if (hub !== undefined) {
    return await fetchSnapshot({
      repoId: hub.repoId,
      repoType: "dataset",
      allowPatterns: hub.allowPatterns,
    }, options);
  }
  if (COMMONSENSE_TEST_SETS.includes(name)) {
    throw new Error(
      `commonsense "${name}": LLM-Adapters' test sets are not on the Hugging Face Hub in their JSON ` +
        `format; place dataset/${name}/test.json (and train.json where it exists) from ` +
        `https://github.com/AGI-Edgerunners/LLM-Adapters by hand as {data dir}/${name}/test.json`,
    );
  }
  throw new Error(
    `commonsense: expected one of ${
      [...Object.keys(COMMONSENSE_HUB_DATASETS), ...COMMONSENSE_TEST_SETS].join(", ")
    }, got "${name}"`,
  );
}

// ---------------------------------------------------------------------------------------------
// Internals: references and paths

interface NormalizedRepoRef {
  repoId: string;
  repoType: RepoType;
  revision: string;
}

interface NormalizedFileRef extends NormalizedRepoRef {
  path: string;
}

function normalizeRepoRef(ref: RepoRef): NormalizedRepoRef {
  const repoType = ref.repoType ?? "model";
  if (repoType !== "model" && repoType !== "dataset") {
    throw new Error(`repoType: expected "model" or "dataset", got "${repoType}"`);
  }
  if (!REPO_ID_RE.test(ref.repoId) || ref.repoId.includes("--") || ref.repoId.includes("..")) {
    throw new Error(`repo id: expected "org/name" (letters, digits, - _ .), got "${ref.repoId}"`);
  }
  const revision = ref.revision ?? DEFAULT_REVISION;
  if (
    revision === "" || revision.startsWith("/") || revision.endsWith("/") ||
    revision.split("/").some((s) => s === "" || s === "." || s === "..")
  ) {
    throw new Error(`revision: expected a branch, tag or commit, got "${revision}"`);
  }
  return { repoId: ref.repoId, repoType, revision };
}

function normalizeFileRef(ref: FileRef): NormalizedFileRef {
  return { ...normalizeRepoRef(ref), path: checkRepoPath(ref.path, `${ref.repoId}: file path`) };
}

/** Reject paths that would escape the snapshot folder (they come from the server's listing). */
function checkRepoPath(path: string, what: string): string {
  if (
    path === "" || isAbsolute(path) || path.includes("\\") ||
    path.split("/").some((s) => s === "" || s === "." || s === "..")
  ) {
    throw new Error(
      `${what}: expected a relative "/"-separated path inside the repository, got "${path}"`,
    );
  }
  return path;
}

function describe(ref: { repoId: string; repoType: RepoType; revision: string }): string {
  return `${ref.repoType === "dataset" ? "dataset " : ""}${ref.repoId}@${ref.revision}`;
}

function repoStorage(cacheDir: string, ref: NormalizedRepoRef): string {
  return join(cacheDir, repoFolderName(ref.repoId, ref.repoType));
}

function pointerPath(storage: string, commit: string, path: string): string {
  return join(storage, "snapshots", commit, ...path.split("/"));
}

function hfHome(env: Readonly<Record<string, string | undefined>>): string {
  if (env.HF_HOME) return expandHome(env.HF_HOME, env);
  const xdg = env.XDG_CACHE_HOME
    ? expandHome(env.XDG_CACHE_HOME, env)
    : join(homeDir(env), ".cache");
  return join(xdg, "huggingface");
}

function homeDir(env: Readonly<Record<string, string | undefined>>): string {
  const home = env.HOME ?? env.USERPROFILE;
  if (!home) {
    throw new Error("HOME: not set; set HF_HUB_CACHE or HF_HOME to locate the Hugging Face cache");
  }
  return home;
}

function expandHome(path: string, env: Readonly<Record<string, string | undefined>>): string {
  return path === "~" || path.startsWith("~/") ? join(homeDir(env), path.slice(1)) : path;
}

function envToken(env: Readonly<Record<string, string | undefined>>): string | undefined {
  const fromEnv = env.HF_TOKEN ?? env.HUGGING_FACE_HUB_TOKEN;
  if (fromEnv) return fromEnv.trim();
  let file: string;
  try {
    file = env.HF_TOKEN_PATH ? expandHome(env.HF_TOKEN_PATH, env) : join(hfHome(env), "token");
  } catch {
    return undefined;
  }
  try {
    return Deno.readTextFileSync(file).trim() || undefined;
  } catch {
    return undefined;
  }
}

function isTruthy(value: string | undefined): boolean {
  return value !== undefined && ["1", "ON", "YES", "TRUE"].includes(value.toUpperCase());
}

function globToRegExp(pattern: string): RegExp {
  let source = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "*") source += ".*";
    else if (c === "?") source += ".";
    else if (c === "[") {
      const close = pattern.indexOf("]", i + 2);
      if (close < 0) {
        source += "\\[";
        continue;
      }
      let body = pattern.slice(i + 1, close).replace(/\\/g, "\\\\");
      if (body.startsWith("!")) body = `^${body.slice(1)}`;
      source += `[${body}]`;
      i = close;
    } else source += c.replace(/[.+^${}()|\\\]]/g, "\\$&");
  }
  return new RegExp(`^${source}$`, "s");
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

async function readRef(storage: string, revision: string): Promise<string | undefined> {
  if (COMMIT_RE.test(revision)) return revision;
  try {
    const commit = (await Deno.readTextFile(join(storage, "refs", ...revision.split("/")))).trim();
    return COMMIT_RE.test(commit) ? commit : undefined;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

/** Record branch/tag → commit as `refs/{revision}` (no newline, as Python writes it). */
async function writeRef(storage: string, revision: string, commit: string): Promise<void> {
  if (revision === commit) return;
  const path = join(storage, "refs", ...revision.split("/"));
  if ((await Deno.readTextFile(path).catch(() => undefined)) === commit) return;
  await Deno.mkdir(dirname(path), { recursive: true });
  await Deno.writeTextFile(path, commit);
}

async function findCachedFile(ref: NormalizedFileRef, cfg: HubConfig): Promise<string | undefined> {
  const storage = repoStorage(cfg.cacheDir, ref);
  const commit = await readRef(storage, ref.revision);
  if (commit === undefined) return undefined;
  const pointer = pointerPath(storage, commit, ref.path);
  return (await exists(pointer)) ? pointer : undefined;
}

async function cachedFileOrThrow(ref: NormalizedFileRef, cfg: HubConfig): Promise<string> {
  const found = await findCachedFile(ref, cfg);
  if (found !== undefined) return found;
  throw new HubCacheMissError(
    `${describe(ref)}: file "${ref.path}" is not in the Hugging Face cache at ${cfg.cacheDir}` +
      `${
        cfg.offline ? " (offline mode: HF_HUB_OFFLINE / --offline)" : ""
      }; download it once online`,
  );
}

async function cachedSnapshot(
  ref: NormalizedRepoRef,
  request: SnapshotRequest,
  cfg: HubConfig,
): Promise<SnapshotResult> {
  const storage = repoStorage(cfg.cacheDir, ref);
  const why = cfg.offline ? " (offline mode: HF_HUB_OFFLINE / --offline)" : "";
  const commit = await readRef(storage, ref.revision);
  if (commit === undefined) {
    throw new HubCacheMissError(
      `${describe(ref)}: not in the Hugging Face cache at ${cfg.cacheDir} ` +
        `(no ${join(repoFolderName(ref.repoId, ref.repoType), "refs", ref.revision)})${why}; ` +
        `download it once online`,
    );
  }
  const snapshotDir = join(storage, "snapshots", commit);
  const cached = (await exists(snapshotDir)) ? await listSnapshotFiles(snapshotDir) : [];
  const files = filterRepoFiles(cached, request.allowPatterns, request.ignorePatterns).sort();
  if (files.length === 0) {
    throw new HubCacheMissError(
      `${describe(ref)}: commit ${commit} has no cached file matching ` +
        `${
          JSON.stringify(request.allowPatterns ?? ["*"])
        } in ${snapshotDir}${why}; download it once online`,
    );
  }
  return { ...ref, commit, snapshotDir, files };
}

async function listSnapshotFiles(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const path = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory) out.push(...await listSnapshotFiles(join(dir, entry.name), path));
    else if (await exists(join(dir, entry.name))) out.push(path); // skips dangling links
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Internals: HTTP

function authHeaders(cfg: HubConfig): Record<string, string> {
  const headers: Record<string, string> = { "User-Agent": `ruc-peft; deno/${Deno.version.deno}` };
  if (cfg.token) headers.Authorization = `Bearer ${cfg.token}`;
  return headers;
}

/** Run `fn` with a fresh abort signal that fires after `timeoutMs`; the timer never outlives the call. */
async function withTimeout<T>(
  timeoutMs: number,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const controller = new AbortController();
  const timer = setTimeout(
    () => controller.abort(new Error(`no answer in ${timeoutMs} ms`)),
    timeoutMs,
  );
  try {
    return await fn(controller.signal);
  } finally {
    clearTimeout(timer);
  }
}

/** Network failures (and our own timeouts) are worth retrying; HTTP errors say so themselves. */
function isRetryable(e: unknown): boolean {
  if (e instanceof HubError) return e.retryable;
  return e instanceof TypeError || (e instanceof DOMException && e.name === "AbortError") ||
    (e instanceof Error && /no answer in|no bytes for/.test(e.message));
}

/** Unreachable Hub (network down, 5xx): the cache may still serve the request. */
function isUnreachable(e: unknown): boolean {
  return isRetryable(e);
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function backoffMs(cfg: HubConfig, failures: number): number {
  return Math.min(MAX_BACKOFF_MS, cfg.retryBaseMs * 2 ** (failures - 1));
}

/**
 * The reason when `e` is a failure to connect at all (DNS lookup, connection refused, no route):
 * retrying that for seconds only delays the message, unlike a dropped connection or a 5xx.
 */
export function connectFailure(e: unknown): string | null {
  if (!(e instanceof TypeError)) return null;
  const text = `${e.message} ${e.cause instanceof Error ? e.cause.message : String(e.cause ?? "")}`;
  const m =
    /dns error[^)]*|failed to lookup address[^)]*|Connection refused|Network is unreachable|No route to host|Requests to port \d+ are blocked/i
      .exec(text);
  return m ? m[0].trim() : null;
}

async function withRetries<T>(
  what: string,
  cfg: HubConfig,
  fn: () => Promise<T>,
  url?: string,
): Promise<T> {
  for (let failures = 0;;) {
    try {
      return await fn();
    } catch (e) {
      const unreachable = connectFailure(e);
      if (unreachable !== null) {
        // Retryable in kind (so a cached copy may still serve), but not worth waiting for.
        throw new HubError(
          `${what}: cannot connect to ${url ?? cfg.endpoint} (${unreachable}); check the network ` +
            `or HF_ENDPOINT, or pass --offline to use the Hugging Face cache only`,
          undefined,
          true,
        );
      }
      if (!isRetryable(e) || failures >= cfg.maxRetries) {
        if (failures > 0 && e instanceof Error) e.message += ` (after ${failures + 1} attempts)`;
        throw e;
      }
      failures++;
      await new Promise((r) => setTimeout(r, backoffMs(cfg, failures)));
      if (cfg.progress) cfg.log(`${what}: ${errorText(e)}; retry ${failures}/${cfg.maxRetries}`);
    }
  }
}

/** Turn an error answer into a HubError that names the repository/file and what to do. */
async function httpError(res: Response, what: string): Promise<HubError> {
  await res.body?.cancel();
  const code = res.headers.get("X-Error-Code");
  const serverMessage = res.headers.get("X-Error-Message");
  let hint = "";
  if (res.status === 401 || res.status === 403 || code === "GatedRepo") {
    hint = "; the repository is private or gated, or the token is wrong: set HF_TOKEN to a token " +
      "with read access (and accept the licence on the repository page if it is gated)";
  } else if (code === "RepoNotFound" || code === "RepositoryNotFound") {
    hint = "; no such repository (or it is private: set HF_TOKEN)";
  } else if (code === "RevisionNotFound") hint = "; no such revision";
  else if (code === "EntryNotFound") hint = "; no such file at this revision";
  const detail = `${code ? ` ${code}` : ""}${serverMessage ? `: ${serverMessage}` : ""}`;
  const retryable = res.status >= 500 || res.status === 429 || res.status === 408;
  return new HubError(`${what}: HTTP ${res.status}${detail}${hint}`, res.status, retryable);
}

async function fetchJson(
  url: string,
  what: string,
  cfg: HubConfig,
): Promise<{ body: unknown; next?: string }> {
  return await withRetries(what, cfg, () =>
    withTimeout(cfg.timeoutMs, async (signal) => {
      const res = await fetch(url, { headers: authHeaders(cfg), signal });
      if (!res.ok) throw await httpError(res, what);
      const body: unknown = await res.json().catch((e) => {
        throw new HubError(`${what}: expected JSON from ${url} (${errorText(e)})`);
      });
      return { body, next: nextLink(res.headers.get("Link"), url) };
    }), url);
}

/** The `rel="next"` target of a Link header (the tree API paginates with it). */
function nextLink(link: string | null, base: string): string | undefined {
  if (!link) return undefined;
  const m = /<([^>]+)>\s*;\s*rel="?next"?/.exec(link);
  return m ? new URL(m[1], base).href : undefined;
}

const RevisionInfoSchema = z.object({
  sha: z.string().regex(COMMIT_RE, "expected a 40-hex commit"),
  siblings: z.array(z.object({ rfilename: z.string() })),
});

const TreeSchema = z.array(z.object({
  type: z.string(),
  path: z.string(),
  size: z.number().int().nonnegative().optional(),
  lfs: z.object({ oid: z.string(), size: z.number().int().nonnegative() }).nullish(),
}));

function zodProblem(error: z.ZodError): string {
  const issue = error.issues[0];
  return `${issue.path.join(".") || "(root)"}: ${issue.message}`;
}

async function fetchRepoListing(
  ref: NormalizedRepoRef,
  cfg: HubConfig,
): Promise<{ commit: string; files: string[] }> {
  const url = `${cfg.endpoint}/api/${ref.repoType}s/${ref.repoId}/revision/${
    encodeURIComponent(ref.revision)
  }`;
  const what = `${describe(ref)}: listing ${url}`;
  const { body } = await fetchJson(url, what, cfg);
  const parsed = RevisionInfoSchema.safeParse(body);
  if (!parsed.success) {
    throw new HubError(`${what}: unexpected answer, ${zodProblem(parsed.error)}`);
  }
  const files = parsed.data.siblings.map((s) =>
    checkRepoPath(s.rfilename, `${what}: siblings[].rfilename`)
  );
  return { commit: parsed.data.sha, files };
}

async function fetchRepoTree(
  ref: NormalizedRepoRef,
  cfg: HubConfig,
): Promise<Map<string, RepoTreeEntry>> {
  const entries = new Map<string, RepoTreeEntry>();
  let url: string | undefined = `${cfg.endpoint}/api/${ref.repoType}s/${ref.repoId}/tree/${
    encodeURIComponent(ref.revision)
  }?recursive=true`;
  for (let page = 0; url !== undefined; page++) {
    if (page > 10_000) throw new HubError(`${describe(ref)}: tree listing never ends`);
    const what = `${describe(ref)}: tree ${url}`;
    const { body, next }: { body: unknown; next?: string } = await fetchJson(url, what, cfg);
    const parsed = TreeSchema.safeParse(body);
    if (!parsed.success) {
      throw new HubError(`${what}: unexpected answer, ${zodProblem(parsed.error)}`);
    }
    for (const item of parsed.data) {
      if (item.type !== "file") continue;
      const lfsSha256 = item.lfs && SHA256_RE.test(item.lfs.oid) ? item.lfs.oid : undefined;
      entries.set(item.path, {
        path: item.path,
        size: item.lfs?.size ?? item.size ?? 0,
        lfsSha256,
      });
    }
    url = next;
  }
  return entries;
}

async function fetchFileMetadata(ref: NormalizedFileRef, cfg: HubConfig): Promise<HubFileMetadata> {
  let url = hubResolveUrl(cfg.endpoint, ref);
  const what = `${describe(ref)}: "${ref.path}"`;
  return await withRetries(what, cfg, () =>
    withTimeout(cfg.timeoutMs, async (signal) => {
      // A redirect to another host (a CDN with a signed URL) must not be followed: the metadata is
      // on this answer. One on the same host (a renamed repository) is, as huggingface_hub does.
      for (let hops = 0;; hops++) {
        const res = await fetch(url, {
          method: "HEAD",
          redirect: "manual",
          headers: { ...authHeaders(cfg), "Accept-Encoding": "identity" },
          signal,
        });
        await res.body?.cancel();
        const location = res.headers.get("Location");
        const target = location === null ? undefined : new URL(location, url);
        if (res.status >= 300 && res.status < 400 && target?.hostname === new URL(url).hostname) {
          if (hops >= 5) throw new HubError(`${what}: more than 5 redirects from ${url}`);
          url = target.href;
          continue;
        }
        if (!(res.ok || (res.status >= 300 && res.status < 400))) throw await httpError(res, what);
        return parseFileMetadata(res, url, what);
      }
    }), url);
}

function parseFileMetadata(res: Response, url: string, what: string): HubFileMetadata {
  const commit = res.headers.get("X-Repo-Commit");
  if (commit === null || !COMMIT_RE.test(commit)) {
    throw new HubError(
      `${what}: the answer has no X-Repo-Commit header (got ${commit}); is ${url} a Hugging Face ` +
        `Hub? Check HF_ENDPOINT, proxy and firewall settings`,
    );
  }
  const linkedEtag = res.headers.get("X-Linked-Etag");
  const etag = normalizeEtag(linkedEtag ?? res.headers.get("ETag"));
  if (etag === undefined || !ETAG_RE.test(etag)) {
    throw new HubError(
      `${what}: the answer has no usable ETag (got ${etag}), so the blob cannot be named`,
    );
  }
  const sizeText = res.headers.get("X-Linked-Size") ?? res.headers.get("Content-Length");
  const size = sizeText === null ? NaN : Number(sizeText);
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new HubError(
      `${what}: the answer has no X-Linked-Size / Content-Length (got ${sizeText})`,
    );
  }
  const location = res.headers.get("Location");
  return {
    commit,
    etag,
    size,
    location: location ? new URL(location, url).href : url,
    isLfs: linkedEtag !== null,
  };
}

function normalizeEtag(etag: string | null): string | undefined {
  if (etag === null) return undefined;
  return etag.replace(/^W\//, "").replace(/^"|"$/g, "");
}

// ---------------------------------------------------------------------------------------------
// Internals: one file into the cache

async function fetchFileIntoCache(
  ref: NormalizedFileRef,
  cfg: HubConfig,
  expected: RepoTreeEntry | undefined,
): Promise<string> {
  const storage = repoStorage(cfg.cacheDir, ref);
  if (COMMIT_RE.test(ref.revision)) {
    const pointer = pointerPath(storage, ref.revision, ref.path);
    if (await exists(pointer)) return pointer;
  }
  if (cfg.offline) return await cachedFileOrThrow(ref, cfg);
  let meta: HubFileMetadata;
  try {
    meta = await fetchFileMetadata(ref, cfg);
  } catch (e) {
    if (!isUnreachable(e)) throw e;
    const cached = await findCachedFile(ref, cfg);
    if (cached === undefined) throw e;
    cfg.log(
      `${describe(ref)}: the Hub is unreachable (${errorText(e)}); using the cached "${ref.path}"`,
    );
    return cached;
  }
  if (expected !== undefined && expected.size !== meta.size) {
    throw new HubError(
      `${
        describe(ref)
      }: "${ref.path}" is ${meta.size} bytes by HEAD but ${expected.size} by the tree listing`,
    );
  }
  await writeRef(storage, ref.revision, meta.commit);
  const pointer = pointerPath(storage, meta.commit, ref.path);
  if (await exists(pointer)) return pointer;
  const blob = join(storage, "blobs", meta.etag);
  const lock = join(
    cfg.cacheDir,
    ".locks",
    repoFolderName(ref.repoId, ref.repoType),
    `${meta.etag}.lock`,
  );
  await withFileLock(lock, async () => {
    if (!(await exists(blob))) {
      const sha256 = expected?.lfsSha256 ??
        (meta.isLfs && SHA256_RE.test(meta.etag) ? meta.etag : undefined);
      await downloadBlob(ref, meta, blob, sha256, cfg);
    }
    if (!(await exists(pointer))) await linkPointer(blob, pointer);
  });
  return pointer;
}

/** Hold an exclusive flock on `path` (the lock Python's filelock takes) while `fn` runs. */
async function withFileLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const file = await Deno.open(path, { create: true, write: true });
  try {
    await file.lock(true);
    return await fn();
  } finally {
    await file.unlock().catch(() => {});
    file.close();
  }
}

/** Point `snapshots/{commit}/{path}` at the blob with a relative link (a copy where links fail). */
async function linkPointer(blob: string, pointer: string): Promise<void> {
  await Deno.mkdir(dirname(pointer), { recursive: true });
  await Deno.remove(pointer).catch(() => {});
  try {
    await Deno.symlink(relative(dirname(pointer), blob), pointer);
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) return;
    await Deno.copyFile(blob, pointer);
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) done += await file.write(bytes.subarray(done));
}

async function hashPrefix(path: string, length: number, hash: Hash): Promise<void> {
  const file = await Deno.open(path, { read: true });
  try {
    const buffer = new Uint8Array(1 << 20);
    for (let left = length; left > 0;) {
      const n = await file.read(buffer.subarray(0, Math.min(buffer.length, left)));
      if (n === null) throw new Error(`${path}: shorter than ${length} bytes while re-hashing`);
      hash.update(buffer.subarray(0, n));
      left -= n;
    }
  } finally {
    file.close();
  }
}

/**
 * Fetch the blob into `{blob}.incomplete`, resuming from its current length with a Range request,
 * retrying 5xx and dropped connections (a retry that made progress does not count), then check
 * size and sha256 and rename it into place. A mismatch deletes the partial file.
 */
async function downloadBlob(
  ref: NormalizedFileRef,
  meta: HubFileMetadata,
  blob: string,
  sha256: string | undefined,
  cfg: HubConfig,
): Promise<void> {
  const what = `${describe(ref)}: "${ref.path}"`;
  const incomplete = `${blob}.incomplete`;
  await Deno.mkdir(dirname(blob), { recursive: true });
  const file = await Deno.open(incomplete, { create: true, append: true });
  let closed = false;
  const fail = async (message: string): Promise<never> => {
    file.close();
    closed = true;
    await Deno.remove(incomplete).catch(() => {});
    throw new HubError(`${what}: ${message}; the partial file was deleted`);
  };
  try {
    let offset = (await file.stat()).size;
    if (offset > meta.size) {
      await file.truncate(0);
      offset = 0;
    }
    let hash = sha256 !== undefined ? createHash("sha256") : undefined;
    if (hash !== undefined && offset > 0) await hashPrefix(incomplete, offset, hash);
    // Only a download from the Hub's own host may carry the token: a CDN URL is signed already.
    const onHub = new URL(meta.location).hostname === new URL(cfg.endpoint).hostname;
    const baseHeaders = onHub ? authHeaders(cfg) : { "User-Agent": authHeaders(cfg)["User-Agent"] };
    const bar = progressBar(ref.path, meta.size, offset, cfg.progress);
    let failures = 0;
    while (offset < meta.size) {
      const before = offset;
      try {
        const controller = new AbortController();
        let timer = setTimeout(() => controller.abort(), cfg.timeoutMs);
        try {
          const headers: Record<string, string> = { ...baseHeaders, "Accept-Encoding": "identity" };
          if (offset > 0) headers.Range = `bytes=${offset}-`;
          const res = await fetch(meta.location, { headers, signal: controller.signal });
          if (res.status === 416 && offset > 0) {
            await res.body?.cancel();
            await file.truncate(0);
            offset = 0;
            hash = sha256 !== undefined ? createHash("sha256") : undefined;
            throw new HubError(`${what}: the server refused to resume; restarting`, 416, true);
          }
          if (!res.ok) throw await httpError(res, what);
          if (offset > 0 && res.status !== 206) {
            // The server ignored the Range request and sends the whole file.
            await file.truncate(0);
            offset = 0;
            hash = sha256 !== undefined ? createHash("sha256") : undefined;
            bar.reset(0);
          }
          if (res.body === null) throw new HubError(`${what}: empty answer body`, res.status, true);
          for await (const chunk of res.body) {
            clearTimeout(timer);
            timer = setTimeout(() => controller.abort(), cfg.timeoutMs);
            if (offset + chunk.length > meta.size) {
              await res.body.cancel().catch(() => {});
              await fail(`received more than the expected ${meta.size} bytes`);
            }
            await writeAll(file, chunk);
            hash?.update(chunk);
            offset += chunk.length;
            bar.advance(chunk.length);
          }
          if (offset < meta.size) {
            throw new HubError(
              `${what}: connection closed at byte ${offset} of ${meta.size}`,
              undefined,
              true,
            );
          }
        } finally {
          clearTimeout(timer);
        }
      } catch (e) {
        if (closed || !isRetryable(e)) throw e;
        const unreachable = connectFailure(e);
        if (unreachable !== null) {
          throw new HubError(
            `${what}: cannot connect to ${meta.location} (${unreachable}); ` +
              `${offset} of ${meta.size} bytes kept in ${incomplete} for the next run`,
            undefined,
            true,
          );
        }
        failures = offset > before ? 1 : failures + 1;
        if (failures > cfg.maxRetries) {
          throw new HubError(
            `${what}: ${errorText(e)} (gave up after ${cfg.maxRetries} retries without progress; ` +
              `${offset} of ${meta.size} bytes kept in ${incomplete} for the next run)`,
          );
        }
        await new Promise((r) => setTimeout(r, backoffMs(cfg, failures)));
      }
    }
    bar.finish();
    const size = (await file.stat()).size;
    if (size !== meta.size) await fail(`size mismatch: expected ${meta.size} bytes, got ${size}`);
    if (hash !== undefined) {
      const actual = hash.digest("hex");
      if (actual !== sha256) await fail(`sha256 mismatch: expected ${sha256}, got ${actual}`);
    }
  } finally {
    if (!closed) file.close();
  }
  await Deno.rename(incomplete, blob);
}

// ---------------------------------------------------------------------------------------------
// Progress

interface ProgressBar {
  advance(bytes: number): void;
  reset(done: number): void;
  finish(): void;
}

/** One line on stderr, redrawn at most 10×/s; a no-op when disabled (not a terminal). */
function progressBar(label: string, total: number, initial: number, enabled: boolean): ProgressBar {
  if (!enabled) return { advance() {}, reset() {}, finish() {} };
  const encoder = new TextEncoder();
  const start = performance.now();
  let done = initial;
  let drawnAt = 0;
  const name = label.length > 32 ? `…${label.slice(-31)}` : label;
  const draw = (force: boolean): void => {
    const now = performance.now();
    if (!force && now - drawnAt < 100) return;
    drawnAt = now;
    const fraction = total > 0 ? done / total : 1;
    const width = 24;
    const filled = Math.round(fraction * width);
    const rate = (done - initial) / Math.max(1e-3, (now - start) / 1000);
    const line = `\r${name} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ` +
      `${(fraction * 100).toFixed(1)}% ${formatBytes(done)}/${formatBytes(total)} ${
        formatBytes(rate)
      }/s`;
    Deno.stderr.writeSync(encoder.encode(line));
  };
  return {
    advance(bytes) {
      done += bytes;
      draw(false);
    },
    reset(value) {
      done = value;
      draw(true);
    },
    finish() {
      draw(true);
      Deno.stderr.writeSync(encoder.encode("\n"));
    },
  };
}

function formatBytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  for (; n >= 1000 && i < units.length - 1; i++) n /= 1000;
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function preview(items: readonly string[]): string {
  return items.length === 0
    ? "none"
    : items.slice(0, 8).join(", ") + (items.length > 8 ? ", …" : "");
}
