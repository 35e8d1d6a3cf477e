/**
 * A local imitation of the Hugging Face Hub for the download tests: `Deno.serve` on 127.0.0.1 at a
 * random port, serving fixture repositories in the Hub's URL layout with the Hub's headers.
 *
 * - `/{repo}/resolve/{rev}/{path}` and `/datasets/{repo}/resolve/{rev}/{path}` (rev URL-encoded):
 *   regular files answer 200 with `ETag` = git blob sha1, `Content-Length`, `X-Repo-Commit`; LFS
 *   files answer 302 to `/cdn/{sha256}` with `X-Linked-Etag`, `X-Linked-Size`, `X-Repo-Commit`.
 * - `/cdn/{sha256}` at http://localhost:{second port} (another host, like a real CDN): the LFS bytes, with
 *   `Range: bytes=N-` support (206 / 416), no auth needed.
 * - `/api/{models|datasets}/{repo}/revision/{rev}` → `{ sha, siblings: [{ rfilename }] }` and
 *   `/api/{type}s/{repo}/tree/{rev}?recursive=true`, paginated with a `Link: rel="next"` header.
 * - Private repositories answer 401 unless `Authorization: Bearer {token}` is sent.
 * - A renamed repository's resolve URLs redirect (307, relative Location) to its new name.
 * - Fault injection: drop a transfer mid-file once, stall one once, corrupt a file's bytes, fail
 *   the next N requests of a route with a status.
 *
 * It is bounded: after `maxRequests` requests it answers 503, and it shuts itself down after
 * `lifetimeMs` if a test forgets to close it. Every request is logged for the tests to inspect.
 *
 * @module
 */
import { createHash } from "node:crypto";

/** One file of a fixture repository. */
export interface FixtureFile {
  /** Path inside the repository. */
  path: string;
  /** Its bytes. */
  content: Uint8Array;
  /** Stored in LFS (served through the CDN redirect, named by sha256). */
  lfs?: boolean;
}

/** One revision (branch or `refs/...` name) of a fixture repository. */
export interface FixtureRevision {
  /** Branch/ref name, e.g. "main" or "refs/convert/parquet". */
  name: string;
  /** The files at this revision. */
  files: FixtureFile[];
}

/** A fixture repository. */
export interface FixtureRepo {
  /** `org/name`. */
  repoId: string;
  /** Model or data set. */
  repoType: "model" | "dataset";
  /** Its revisions. */
  revisions: FixtureRevision[];
  /** Requires the server's token. */
  private?: boolean;
  /** Former names: their resolve URLs redirect (same host, relative Location) to this repository. */
  formerNames?: string[];
}

/** Server settings. */
export interface HubServerOptions {
  /** The repositories served. */
  repos: FixtureRepo[];
  /** The token private repositories accept. */
  token?: string;
  /** Entries per tree API page (default 1000). */
  treePageSize?: number;
  /** Requests served before every answer becomes 503 (default 500). */
  maxRequests?: number;
  /** Self-shutdown after this many ms (default 60 000). */
  lifetimeMs?: number;
}

/** The routes fault injection can target. */
export type HubRoute = "resolve" | "cdn" | "api";

/** One request as the server saw it. */
export interface LoggedRequest {
  /** HTTP method. */
  method: string;
  /** Which route answered (or "other"). */
  route: HubRoute | "other";
  /** The raw (still percent-encoded) path. */
  path: string;
  /** The query string, with its "?". */
  search: string;
  /** The Range header. */
  range: string | null;
  /** The Authorization header. */
  authorization: string | null;
  /** The answer's status. */
  status: number;
  /** Body bytes actually sent. */
  bytes: number;
}

/** A running fake Hub. */
export interface HubServer {
  /** Base URL, e.g. http://127.0.0.1:41234 (use as HF_ENDPOINT). */
  url: string;
  /** Every request so far. */
  requests: LoggedRequest[];
  /** The commit hash a revision resolves to. */
  commitOf(repoId: string, revision?: string): string;
  /** The etag (cache blob name) of a file at a revision. */
  etagOf(repoId: string, path: string, revision?: string): string;
  /** The next transfer of this file's bytes stops after `afterBytes` body bytes (once). */
  dropOnce(path: string, afterBytes: number): void;
  /** The next transfer of this file's bytes goes silent after `afterBytes` (once), until the client gives up. */
  stallOnce(path: string, afterBytes: number): void;
  /** Serve this file's bytes with every byte flipped (same length) until further notice. */
  corrupt(path: string, on?: boolean): void;
  /** Answer the next `times` requests of `route` with `status`. */
  failNext(route: HubRoute, status: number, times: number): void;
  /** Stop serving and wait until the server is down. */
  close(): Promise<void>;
}

interface ServedFile extends FixtureFile {
  sha256: string;
  gitSha1: string;
}

interface ServedRevision {
  name: string;
  commit: string;
  files: Map<string, ServedFile>;
}

interface ServedRepo {
  repo: FixtureRepo;
  revisions: ServedRevision[];
}

function hex(algorithm: "sha1" | "sha256", ...parts: (string | Uint8Array)[]): string {
  const hash = createHash(algorithm);
  for (const p of parts) hash.update(p);
  return hash.digest("hex");
}

/** Start the fake Hub; always `await server.close()` at the end of the test. */
export function startHubServer(options: HubServerOptions): HubServer {
  const maxRequests = options.maxRequests ?? 500;
  const pageSize = options.treePageSize ?? 1000;
  const repos = new Map<string, ServedRepo>();
  const blobs = new Map<string, ServedFile>();
  const renamed = new Map<string, string>();
  for (const repo of options.repos) {
    const revisions = repo.revisions.map((rev): ServedRevision => {
      const files = new Map<string, ServedFile>();
      for (const f of rev.files) {
        const served: ServedFile = {
          ...f,
          sha256: hex("sha256", f.content),
          gitSha1: hex("sha1", `blob ${f.content.length}\0`, f.content),
        };
        files.set(f.path, served);
        if (f.lfs) blobs.set(served.sha256, served);
      }
      return {
        name: rev.name,
        commit: hex("sha1", `${repo.repoType}:${repo.repoId}@${rev.name}`),
        files,
      };
    });
    repos.set(`${repo.repoType}:${repo.repoId}`, { repo, revisions });
    for (const former of repo.formerNames ?? []) {
      renamed.set(`${repo.repoType}:${former}`, repo.repoId);
    }
  }
  const requests: LoggedRequest[] = [];
  const drops = new Map<string, number>();
  const stalls = new Map<string, number>();
  const corrupted = new Set<string>();
  const failures: Record<HubRoute, { status: number; times: number }> = {
    resolve: { status: 0, times: 0 },
    cdn: { status: 0, times: 0 },
    api: { status: 0, times: 0 },
  };

  const controller = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: controller.signal, onListen() {} },
    (req) => handle(req),
  );
  // The "CDN" is another host name (localhost, on its own port), as a real CDN is: clients must not
  // follow the Hub's redirect to it in the HEAD request, nor send it the token.
  const cdnServer = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: controller.signal, onListen() {} },
    (req) => handle(req),
  );
  const url = `http://127.0.0.1:${server.addr.port}`;
  const cdnUrl = `http://localhost:${cdnServer.addr.port}`;
  const lifetime = setTimeout(() => controller.abort(), options.lifetimeMs ?? 60_000);

  function findRevision(served: ServedRepo, revision: string): ServedRevision | undefined {
    return served.revisions.find((r) => r.name === revision || r.commit === revision);
  }

  function lookupRepo(type: string, repoId: string): ServedRepo | undefined {
    return repos.get(`${type}:${repoId}`);
  }

  function authorized(served: ServedRepo, req: Request): boolean {
    return !served.repo.private || req.headers.get("authorization") === `Bearer ${options.token}`;
  }

  function errorResponse(
    status: number,
    code: string,
    extra: Record<string, string> = {},
  ): Response {
    return new Response(`${code}\n`, { status, headers: { "X-Error-Code": code, ...extra } });
  }

  /** Body bytes for [start, end) of a file, counting what is sent and honouring an armed drop. */
  function body(file: ServedFile, start: number, log: LoggedRequest): ReadableStream<Uint8Array> {
    let bytes = file.content.subarray(start);
    if (corrupted.has(file.path)) bytes = bytes.map((b) => b ^ 0xff);
    const dropAfter = drops.get(file.path);
    drops.delete(file.path);
    const stallAfter = stalls.get(file.path);
    stalls.delete(file.path);
    const limit = Math.min(dropAfter ?? Infinity, stallAfter ?? Infinity, bytes.length);
    let sent = 0;
    let wake: (() => void) | undefined;
    return new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent >= limit && stallAfter !== undefined && limit < bytes.length) {
          return new Promise<void>((resolve) => (wake = resolve)); // silent until cancelled
        }
        if (sent >= limit) {
          c.close(); // shorter than Content-Length when dropped: the client sees a broken body
          return;
        }
        const chunk = bytes.slice(sent, Math.min(limit, sent + 16384));
        sent += chunk.length;
        log.bytes += chunk.length;
        c.enqueue(chunk);
      },
      cancel() {
        wake?.();
      },
    });
  }

  /** 200 / 206 / 416 for a (possibly ranged) GET, or headers alone for HEAD. */
  function content(
    req: Request,
    file: ServedFile,
    headers: Record<string, string>,
    log: LoggedRequest,
  ): Response {
    const size = file.content.length;
    const range = req.headers.get("range");
    let start = 0;
    let status = 200;
    if (range !== null) {
      const m = /^bytes=(\d+)-$/.exec(range);
      if (m === null) return errorResponse(400, "BadRange");
      start = Number(m[1]);
      if (start >= size) {
        return new Response(null, { status: 416, headers: { "Content-Range": `bytes */${size}` } });
      }
      status = 206;
      headers["Content-Range"] = `bytes ${start}-${size - 1}/${size}`;
    }
    headers["Content-Length"] = String(size - start);
    headers["Accept-Ranges"] = "bytes";
    if (req.method === "HEAD") return new Response(null, { status, headers });
    return new Response(body(file, start, log), { status, headers });
  }

  function resolve(req: Request, segments: string[], log: LoggedRequest): Response {
    const type = segments[0] === "datasets" ? "dataset" : "model";
    const rest = type === "dataset" ? segments.slice(1) : segments;
    if (rest.length < 5 || rest[2] !== "resolve") return errorResponse(404, "NotFound");
    const repoId = `${rest[0]}/${rest[1]}`;
    const newName = renamed.get(`${type}:${repoId}`);
    if (newName !== undefined) {
      const target = `/${type === "dataset" ? "datasets/" : ""}${newName}/${
        rest.slice(2).join("/")
      }`;
      return new Response(null, { status: 307, headers: { Location: target } });
    }
    const served = lookupRepo(type, repoId);
    if (served === undefined) return errorResponse(404, "RepoNotFound");
    if (!authorized(served, req)) return errorResponse(401, "RepoNotFound");
    const revision = findRevision(served, decodeURIComponent(rest[3]));
    if (revision === undefined) return errorResponse(404, "RevisionNotFound");
    const path = rest.slice(4).map(decodeURIComponent).join("/");
    const file = revision.files.get(path);
    if (file === undefined) {
      return errorResponse(404, "EntryNotFound", { "X-Repo-Commit": revision.commit });
    }
    if (file.lfs) {
      return new Response(null, {
        status: 302,
        headers: {
          Location: `${cdnUrl}/cdn/${file.sha256}`,
          "X-Repo-Commit": revision.commit,
          "X-Linked-Etag": `"${file.sha256}"`,
          "X-Linked-Size": String(file.content.length),
          // The Hub's own ETag names the LFS pointer, not the content: clients must prefer X-Linked-Etag.
          ETag: `"${hex("sha1", "pointer", file.sha256)}"`,
        },
      });
    }
    return content(req, file, { "X-Repo-Commit": revision.commit, ETag: `"${file.gitSha1}"` }, log);
  }

  function api(req: Request, segments: string[], search: URLSearchParams): Response {
    // api/{models|datasets}/{org}/{name}/{revision|tree}/{rev}[/{path...}]
    const type = segments[1] === "datasets" ? "dataset" : segments[1] === "models" ? "model" : "";
    if (type === "" || segments.length < 6) return errorResponse(404, "NotFound");
    const served = lookupRepo(type, `${segments[2]}/${segments[3]}`);
    if (served === undefined) return errorResponse(404, "RepoNotFound");
    if (!authorized(served, req)) return errorResponse(401, "RepoNotFound");
    const revision = findRevision(served, decodeURIComponent(segments[5]));
    if (revision === undefined) return errorResponse(404, "RevisionNotFound");
    const files = [...revision.files.values()];
    if (segments[4] === "revision") {
      return Response.json({
        id: served.repo.repoId,
        sha: revision.commit,
        siblings: files.map((f) => ({ rfilename: f.path })),
      });
    }
    if (segments[4] !== "tree") return errorResponse(404, "NotFound");
    const prefix = segments.slice(6).map(decodeURIComponent).join("/");
    const recursive = search.get("recursive") === "true";
    const entries: unknown[] = [];
    const dirs = new Set<string>();
    for (const f of files) {
      if (prefix && !f.path.startsWith(`${prefix}/`)) continue;
      const rel = prefix ? f.path.slice(prefix.length + 1) : f.path;
      const parts = rel.split("/");
      for (let i = 1; i < parts.length && (recursive || i === 1); i++) {
        dirs.add([prefix, ...parts.slice(0, i)].filter((s) => s).join("/"));
      }
      if (!recursive && parts.length > 1) continue;
      entries.push({
        type: "file",
        oid: f.gitSha1,
        size: f.content.length,
        path: f.path,
        ...(f.lfs ? { lfs: { oid: f.sha256, size: f.content.length, pointerSize: 134 } } : {}),
      });
    }
    for (const d of dirs) {
      entries.push({ type: "directory", oid: hex("sha1", d), size: 0, path: d });
    }
    const cursor = Number(search.get("cursor") ?? "0");
    const page = entries.slice(cursor, cursor + pageSize);
    const headers: Record<string, string> = {};
    if (cursor + pageSize < entries.length) {
      const next = new URL(`/${segments.join("/")}`, url);
      next.searchParams.set("recursive", String(recursive));
      next.searchParams.set("cursor", String(cursor + pageSize));
      headers.Link = `<${next.href}>; rel="next"`;
    }
    return Response.json(page, { headers });
  }

  function cdn(req: Request, segments: string[], log: LoggedRequest): Response {
    const file = blobs.get(segments[1] ?? "");
    if (file === undefined) return errorResponse(404, "NoSuchKey");
    return content(req, file, { ETag: `"${file.sha256}"` }, log);
  }

  function handle(req: Request): Response {
    const u = new URL(req.url);
    const segments = u.pathname.split("/").slice(1);
    const route: HubRoute | "other" = segments[0] === "api"
      ? "api"
      : segments[0] === "cdn"
      ? "cdn"
      : segments.includes("resolve")
      ? "resolve"
      : "other";
    const log: LoggedRequest = {
      method: req.method,
      route,
      path: u.pathname,
      search: u.search,
      range: req.headers.get("range"),
      authorization: req.headers.get("authorization"),
      status: 0,
      bytes: 0,
    };
    requests.push(log);
    let res: Response;
    if (requests.length > maxRequests) res = errorResponse(503, "RequestBudgetExhausted");
    else if (route !== "other" && failures[route].times > 0) {
      failures[route].times--;
      res = errorResponse(failures[route].status, "InjectedFailure");
    } else if (route === "api") res = api(req, segments, u.searchParams);
    else if (route === "cdn") res = cdn(req, segments, log);
    else if (route === "resolve") res = resolve(req, segments, log);
    else res = errorResponse(404, "NotFound");
    log.status = res.status;
    return res;
  }

  function findFile(repoId: string, path: string, revision: string): ServedFile {
    for (const served of repos.values()) {
      if (served.repo.repoId !== repoId) continue;
      const file = findRevision(served, revision)?.files.get(path);
      if (file !== undefined) return file;
    }
    throw new Error(`hub_server: no file ${repoId}@${revision}/${path}`);
  }

  return {
    url,
    requests,
    commitOf(repoId, revision = "main") {
      for (const served of repos.values()) {
        const rev = served.repo.repoId === repoId ? findRevision(served, revision) : undefined;
        if (rev !== undefined) return rev.commit;
      }
      throw new Error(`hub_server: no revision ${repoId}@${revision}`);
    },
    etagOf(repoId, path, revision = "main") {
      const file = findFile(repoId, path, revision);
      return file.lfs ? file.sha256 : file.gitSha1;
    },
    dropOnce(path, afterBytes) {
      drops.set(path, afterBytes);
    },
    stallOnce(path, afterBytes) {
      stalls.set(path, afterBytes);
    },
    corrupt(path, on = true) {
      if (on) corrupted.add(path);
      else corrupted.delete(path);
    },
    failNext(route, status, times) {
      failures[route] = { status, times };
    },
    async close() {
      clearTimeout(lifetime);
      controller.abort();
      await Promise.all([server.finished, cdnServer.finished]);
    },
  };
}
