/**
 * Scaled dot-product attention with fused WGSL kernels (FlashAttention-style): the T×S score
 * matrix never reaches global memory. The forward streams K/V tiles through workgroup memory with
 * an online softmax and keeps each query row's logsumexp; the backward recomputes probabilities
 * from it, writing dQ per query row and dK/dV per key row, so every gradient element is written
 * by exactly one thread (deterministic, no atomics).
 *
 * Supports grouped-query attention (query head h reads kv head ⌊h·Hkv/Hq⌋), causal masking
 * aligned to the end of the keys (query i sees keys j ≤ i + S − T, as with a KV cache), a key
 * padding mask, and q/k/v given as strided views (read in place).
 *
 * @module
 */
import { needsGrad, record } from "./autograd.ts";
import { map } from "./elementwise.ts";
import { defineKernel, grid1d, type Kernel, linearIndex, rt } from "./runtime.ts";
import { empty, type Tensor } from "./tensor.ts";

/** Options of {@link scaledDotProductAttention}. */
export interface AttentionOptions {
  /** Mask keys after each query's position; the last query row aligns with the last key. */
  causal?: boolean;
  /** [B, S], f32 or i32: nonzero keeps a key, 0 masks it (padding) for every query. */
  keyPaddingMask?: Tensor;
  /** Multiplier of q·k before the softmax (default 1/√D). */
  scale?: number;
}

/** Sizes of one attention call. */
interface Geometry {
  batch: number;
  queryHeads: number;
  kvHeads: number;
  /** Query heads per kv head. */
  group: number;
  queryLen: number;
  keyLen: number;
  headDim: number;
}

/** Compile-time constants a kernel is specialised on. */
interface TileShape {
  headDim: number;
  /** Invocations per workgroup. */
  threads: number;
  /** Rows each invocation owns: query rows (forward, dQ) or key rows (dK/dV). */
  rowsPerThread: number;
  /** Rows of the operand staged in workgroup memory per step (keys, or queries for dK/dV). */
  tile: number;
  /** Whether a key padding mask is bound. */
  masked: boolean;
}

/** Running maximum before any key was seen; finite so that no kernel ever handles infinities. */
const NO_SCORE = -3.0e38;
/** Logsumexp stored for a row that sees no key: exp(s − this) is 0 for every real score. */
const EMPTY_ROW_LSE = 3.0e38;

function validate(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | undefined): Geometry {
  for (const [name, t] of [["q", q], ["k", k], ["v", v]] as const) {
    if (t.rank !== 4) {
      throw new Error(
        `scaledDotProductAttention: ${name} must have rank 4 ([B, H, T, D]), got [${t.shape}]`,
      );
    }
    if (t.dtype !== "f32") {
      throw new Error(`scaledDotProductAttention: ${name} must be f32, got ${t.dtype}`);
    }
  }
  const [batch, queryHeads, queryLen, headDim] = q.shape;
  const [kb, kvHeads, keyLen, kd] = k.shape;
  if (kb !== batch || kd !== headDim) {
    throw new Error(
      `scaledDotProductAttention: k [${k.shape}] must be [${batch}, Hkv, S, ${headDim}] to match q [${q.shape}]`,
    );
  }
  if (v.shape.join() !== k.shape.join()) {
    throw new Error(`scaledDotProductAttention: v [${v.shape}] must equal k's shape [${k.shape}]`);
  }
  if (kvHeads === 0 || queryHeads % kvHeads !== 0) {
    throw new Error(
      `scaledDotProductAttention: query heads (${queryHeads}) must be a multiple of kv heads (${kvHeads})`,
    );
  }
  if (mask) {
    if (mask.shape.join() !== [batch, keyLen].join()) {
      throw new Error(
        `scaledDotProductAttention: keyPaddingMask must be [B, S] = [${batch}, ${keyLen}], got [${mask.shape}]`,
      );
    }
    if (mask.dtype !== "f32" && mask.dtype !== "i32") {
      throw new Error(
        `scaledDotProductAttention: keyPaddingMask must be f32 or i32, got ${mask.dtype}`,
      );
    }
  }
  return {
    batch,
    queryHeads,
    kvHeads,
    group: queryHeads / kvHeads,
    queryLen,
    keyLen,
    headDim,
  };
}

/**
 * Workgroup shape and staged tile. On a GPU each invocation owns one row and 64 run together
 * (16 when the work is tiny). On a software adapter (llvmpipe) every memory read is a per-lane
 * gather, so each invocation owns 4 rows and reuses each staged key or query row 4 times from
 * registers, which are cheap there. The tile is the largest (at most 32 rows) whose two f32 row
 * blocks fit the device's workgroup memory.
 */
function chooseTiles(headDim: number, rowCount: number, masked: boolean): TileShape {
  const budget = rt().device.limits.maxComputeWorkgroupStorageSize;
  const rowBytes = vecsPerRow(headDim) * 16;
  let tile = 32;
  while (tile > 1 && 2 * tile * (rowBytes + 4) > budget) tile /= 2;
  if (2 * tile * (rowBytes + 4) > budget) {
    throw new Error(
      `scaledDotProductAttention: head dimension ${headDim} does not fit workgroup memory (${budget} bytes)`,
    );
  }
  const tiny = rowCount <= 16;
  if (rt().gpu.adapter.isFallback) {
    return { headDim, threads: tiny ? 8 : 16, rowsPerThread: tiny ? 2 : 4, tile, masked };
  }
  return { headDim, threads: tiny ? 16 : 64, rowsPerThread: 1, tile, masked };
}

// ---- WGSL pieces shared by the kernels -----------------------------------------------------------

/** Uniform parameters locating a strided [B, H, L, D] operand. */
function stridedParams(name: string): [string, "u32"][] {
  return ["off", "sb", "sh", "sl", "sd"].map((s) => [`${name}_${s}`, "u32"]);
}

function stridedValues(name: string, t: Tensor): Record<string, number> {
  const [sb, sh, sl, sd] = t.strides;
  return {
    [`${name}_off`]: t.offset,
    [`${name}_sb`]: sb,
    [`${name}_sh`]: sh,
    [`${name}_sl`]: sl,
    [`${name}_sd`]: sd,
  };
}

/** Number of vec4s a head row occupies (the last one zero-padded when D is not a multiple of 4). */
function vecsPerRow(headDim: number): number {
  return Math.ceil(headDim / 4);
}

/**
 * `fn NAME_vec4(b, h, l, c) -> vec4f`: elements 4c … 4c+3 of row (b, h, l) of the strided operand
 * bound as `binding` (parameters `NAME_off`, `NAME_sb`, …), zero past D.
 */
function stridedVec4Fn(name: string, headDim: number, binding = name): string {
  const lanes = [0, 1, 2, 3].map((x) => {
    const d = `4u * c + ${x}u`;
    return headDim % 4 === 0
      ? `${binding}[base + (${d}) * params.${name}_sd]`
      : `select(0.0, ${binding}[base + min(${d}, D - 1u) * params.${name}_sd], ${d} < D)`;
  });
  return `fn ${name}_vec4(b: u32, h: u32, l: u32, c: u32) -> vec4f {
  let base = params.${name}_off + b * params.${name}_sb + h * params.${name}_sh +
    l * params.${name}_sl;
  return vec4f(${lanes.join(", ")});
}`;
}

/**
 * `count` generated lines. Everything indexed by row or by vec4 is unrolled with constant indices:
 * private arrays indexed at run time live in scratch memory, constant-indexed ones in registers.
 */
function unroll(count: number, line: (i: number) => string, indent: string): string {
  return Array.from({ length: count }, (_, i) => indent + line(i)).join("\n");
}

/** The dot product of two head rows given as vec4 expressions (one horizontal sum at the end). */
function rowDot(headDim: number, a: (c: number) => string, b: (c: number) => string): string {
  const terms = Array.from({ length: vecsPerRow(headDim) }, (_, c) => `${a(c)} * ${b(c)}`);
  return `dot(${terms.join(" + ")}, vec4f(1.0))`;
}

/** Stores of the register row `reg(c)` (times `factor`) into contiguous `target` at `base`. */
function storeRow(
  headDim: number,
  target: string,
  base: string,
  reg: (c: number) => string,
  factor: string,
  indent: string,
): string {
  return unroll(
    headDim,
    (d) => `${target}[${base} + ${d}u] = ${reg(d >> 2)}.${"xyzw"[d & 3]}${factor};`,
    indent,
  );
}

const GEOMETRY_PARAMS: [string, "u32" | "f32"][] = [
  ["kv_heads", "u32"],
  ["group", "u32"],
  ["tq", "u32"],
  ["sk", "u32"],
  ["causal", "u32"],
  ["scale", "f32"],
];

function geometryValues(g: Geometry, causal: boolean, scale: number): Record<string, number> {
  return {
    kv_heads: g.kvHeads,
    group: g.group,
    tq: g.queryLen,
    sk: g.keyLen,
    causal: causal ? 1 : 0,
    scale,
  };
}

function constants(s: TileShape): string {
  return `const D: u32 = ${s.headDim}u;
const NV: u32 = ${vecsPerRow(s.headDim)}u;
const THREADS: u32 = ${s.threads}u;
const RPT: u32 = ${s.rowsPerThread}u;
const ROWS: u32 = THREADS * RPT;
const TILE: u32 = ${s.tile}u;
const NO_SCORE: f32 = ${NO_SCORE.toExponential()};
const EMPTY_ROW_LSE: f32 = ${EMPTY_ROW_LSE.toExponential()};
// Keys [0, limit) are visible to query t: all of them, or up to t + S − T when causal.
fn key_limit(t: u32) -> i32 {
  let s = i32(params.sk);
  if (params.causal == 0u) { return s; }
  return clamp(i32(t) + 1 + s - i32(params.tq), 0, s);
}`;
}

/**
 * Prologue of the kernels that own query rows: the workgroup's rows are ROWS consecutive
 * (query head, position) pairs of the heads sharing kv head `kvh`; invocation `lid` owns rows
 * first_row + lid + r·THREADS. `key_end` (uniform) is the causal limit of the workgroup's last row.
 */
function queryRowPrologue(s: TileShape): string {
  return `
  let b = wg.z;
  let kvh = wg.y;
  let row_count = params.group * params.tq;
  let first_row = wg.x * ROWS;
  let last = min(first_row + ROWS, row_count) - 1u;
  var t_max = last % params.tq;
  if (first_row / params.tq != last / params.tq) { t_max = params.tq - 1u; }
  let key_end = u32(key_limit(t_max));
${
    unroll(
      s.rowsPerThread,
      (r) =>
        `let row${r} = first_row + lid + ${r}u * THREADS;
  let live${r} = row${r} < row_count;
  let heads${r} = kvh * params.group + min(row${r}, row_count - 1u) / params.tq;
  let pos${r} = min(row${r}, row_count - 1u) % params.tq;
  let limit${r} = key_limit(pos${r});
  let out_row${r} = (b * params.kv_heads * params.group + heads${r}) * params.tq + pos${r};`,
      "  ",
    )
  }`;
}

/**
 * Loop over the keys [0, key_end) in tiles: a cooperative load of TILE key/value rows (zeros
 * past S) and their mask entries into workgroup memory, then per staged key its k and v rows in
 * registers (kc0…, vc0…) and `j`, its index, for `body`, which every owned row runs.
 */
function keyValueTileLoop(s: TileShape, body: (r: number) => string): string {
  const nv = vecsPerRow(s.headDim);
  const keepLoad = `
    for (var e = lid; e < TILE; e += THREADS) {
      let j = min(k0 + e, params.sk - 1u);
      keep_tile[e] = select(0.0, keep[b * params.sk + j], k0 + e < params.sk);
    }`;
  return `
  for (var k0 = 0u; k0 < key_end; k0 += TILE) {
    for (var e = lid; e < TILE * NV; e += THREADS) {
      let j = k0 + e / NV;
      let inside = j < params.sk;
      let jc = min(j, params.sk - 1u);
      k_tile[e] = select(vec4f(0.0), k_vec4(b, kvh, jc, e % NV), inside);
      v_tile[e] = select(vec4f(0.0), v_vec4(b, kvh, jc, e % NV), inside);
    }${s.masked ? keepLoad : ""}
    workgroupBarrier();
    let tile_keys = min(TILE, key_end - k0);
    for (var jj = 0u; jj < tile_keys; jj++) {
      ${s.masked ? "if (keep_tile[jj] == 0.0) { continue; }" : ""}
      let j = i32(k0 + jj);
      let kb = jj * NV;
${unroll(nv, (c) => `let kc${c} = k_tile[kb + ${c}u];`, "      ")}
${unroll(nv, (c) => `let vc${c} = v_tile[kb + ${c}u];`, "      ")}
${unroll(s.rowsPerThread, body, "      ")}
    }
    workgroupBarrier();
  }`;
}

function keyValueTileDecls(masked: boolean): string {
  return `var<workgroup> k_tile: array<vec4f, TILE * NV>;
var<workgroup> v_tile: array<vec4f, TILE * NV>;
${masked ? "var<workgroup> keep_tile: array<f32, TILE>;" : ""}`;
}

const kernels = new Map<string, Kernel>();

function cached(kind: string, s: TileShape, build: () => Kernel): Kernel {
  const key = `${kind}|${s.headDim}|${s.threads}|${s.rowsPerThread}|${s.tile}|${s.masked}`;
  let k = kernels.get(key);
  if (!k) {
    k = build();
    kernels.set(key, k);
  }
  return k;
}

const QKV_BINDINGS = [
  { name: "q", type: "f32", access: "read" },
  { name: "k", type: "f32", access: "read" },
  { name: "v", type: "f32", access: "read" },
] as const;

const KEEP_BINDING = { name: "keep", type: "f32", access: "read" } as const;

// ---- forward -------------------------------------------------------------------------------------

/*
 * Forward layout: workgroup (x: block of ROWS query rows, y: kv head, z: batch); a block's rows
 * run over the (query head, position) pairs of the query heads sharing that kv head, so a GQA
 * group shares every staged tile. Each invocation keeps its rows' scaled q and output accumulators
 * in registers (vec4s); K/V tiles of TILE rows (plus their padding-mask entries) are staged in
 * workgroup memory and folded in key by key with an online softmax (running max m, rescaled only
 * when it grows; running sum l). Writes out [B, Hq, T, D] and the row logsumexp m + log l.
 */
function forwardKernel(s: TileShape): Kernel {
  const D = s.headDim;
  const nv = vecsPerRow(D);
  const body = (r: number) =>
    `if (j < limit${r}) {
        let x = ${rowDot(D, (c) => `qs${r}_${c}`, (c) => `kc${c}`)};
        if (x > m${r}) {
          let alpha = exp(m${r} - x);
          l${r} *= alpha;
${unroll(nv, (c) => `acc${r}_${c} *= alpha;`, "          ")}
          m${r} = x;
        }
        let p = exp(x - m${r});
        l${r} += p;
${unroll(nv, (c) => `acc${r}_${c} += p * vc${c};`, "        ")}
      }`;
  return cached("forward", s, () =>
    defineKernel({
      name: "attention_forward",
      bindings: [
        ...QKV_BINDINGS,
        ...(s.masked ? [KEEP_BINDING] : []),
        { name: "out", type: "f32", access: "read_write" },
        { name: "lse", type: "f32", access: "read_write" },
      ],
      params: [
        ...GEOMETRY_PARAMS,
        ...stridedParams("q"),
        ...stridedParams("k"),
        ...stridedParams("v"),
      ],
      source: `${constants(s)}
${stridedVec4Fn("q", D)}
${stridedVec4Fn("k", D)}
${stridedVec4Fn("v", D)}
${keyValueTileDecls(s.masked)}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {${
        queryRowPrologue(s)
      }
${
        unroll(s.rowsPerThread, (r) =>
          `var m${r} = NO_SCORE;
  var l${r} = 0.0;
${
            unroll(
              nv,
              (c) => `let qs${r}_${c} = q_vec4(b, heads${r}, pos${r}, ${c}u) * params.scale;`,
              "  ",
            )
          }
${unroll(nv, (c) => `var acc${r}_${c} = vec4f(0.0);`, "  ")}`, "  ")
      }${keyValueTileLoop(s, body)}
${
        unroll(s.rowsPerThread, (r) =>
          `if (live${r}) {
    let inv = select(0.0, 1.0 / l${r}, l${r} > 0.0);
${
            storeRow(
              D,
              "out",
              `out_row${r} * D`,
              (c) => `acc${r}_${c}`,
              " * inv",
              "    ",
            )
          }
    lse[out_row${r}] = select(EMPTY_ROW_LSE, m${r} + log(l${r}), l${r} > 0.0);
  }`, "  ")
      }
}`,
    }));
}

// ---- backward ------------------------------------------------------------------------------------

/*
 * Delta layout: one invocation per query row computes D_i = Σ_d dO[i, d]·O[i, d] (dO strided,
 * O contiguous), the correction term of the softmax backward shared by dQ and dK.
 */
const deltaKernel = defineKernel({
  name: "attention_delta",
  bindings: [
    { name: "grad_out", type: "f32", access: "read" },
    { name: "out", type: "f32", access: "read" },
    { name: "delta", type: "f32", access: "read_write" },
  ],
  params: [["rows", "u32"], ["heads", "u32"], ["tq", "u32"], ["dim", "u32"], ...stridedParams("g")],
  source: `
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${linearIndex(64)};
  if (i >= params.rows) { return; }
  let t = i % params.tq;
  let h = (i / params.tq) % params.heads;
  let b = i / (params.tq * params.heads);
  let base = params.g_off + b * params.g_sb + h * params.g_sh + t * params.g_sl;
  var acc = 0.0;
  for (var d = 0u; d < params.dim; d++) {
    acc += grad_out[base + d * params.g_sd] * out[i * params.dim + d];
  }
  delta[i] = acc;
}`,
});

const GRAD_INPUT_BINDINGS = [
  ...QKV_BINDINGS,
  { name: "grad_out", type: "f32", access: "read" },
  { name: "lse", type: "f32", access: "read" },
  { name: "delta", type: "f32", access: "read" },
] as const;

const GRAD_PARAMS = [
  ...GEOMETRY_PARAMS,
  ...stridedParams("q"),
  ...stridedParams("k"),
  ...stridedParams("v"),
  ...stridedParams("g"),
];

function gradLoaders(D: number): string {
  return `${stridedVec4Fn("q", D)}
${stridedVec4Fn("k", D)}
${stridedVec4Fn("v", D)}
${stridedVec4Fn("g", D, "grad_out")}`;
}

/*
 * dQ layout: the forward's grid and row ownership. Each invocation keeps its rows' scaled q, dO,
 * lse and D_i in registers and walks the same K/V tiles in workgroup memory: p = exp(s − lse),
 * dS = p·(dO·v − D_i), dq += dS·k. Rows that see no key end with dq = 0.
 */
function gradQueryKernel(s: TileShape): Kernel {
  const D = s.headDim;
  const nv = vecsPerRow(D);
  const body = (r: number) =>
    `if (j < limit${r}) {
        let x = ${rowDot(D, (c) => `qs${r}_${c}`, (c) => `kc${c}`)};
        let dp = ${rowDot(D, (c) => `dos${r}_${c}`, (c) => `vc${c}`)};
        let ds = exp(x - row_lse${r}) * (dp - row_delta${r});
${unroll(nv, (c) => `dq${r}_${c} += ds * kc${c};`, "        ")}
      }`;
  return cached("grad_q", s, () =>
    defineKernel({
      name: "attention_grad_q",
      bindings: [
        ...GRAD_INPUT_BINDINGS,
        ...(s.masked ? [KEEP_BINDING] : []),
        { name: "grad_q", type: "f32", access: "read_write" },
      ],
      params: GRAD_PARAMS,
      source: `${constants(s)}
${gradLoaders(D)}
${keyValueTileDecls(s.masked)}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {${
        queryRowPrologue(s)
      }
${
        unroll(s.rowsPerThread, (r) =>
          `let row_lse${r} = lse[out_row${r}];
  let row_delta${r} = delta[out_row${r}];
${
            unroll(
              nv,
              (c) => `let qs${r}_${c} = q_vec4(b, heads${r}, pos${r}, ${c}u) * params.scale;`,
              "  ",
            )
          }
${unroll(nv, (c) => `let dos${r}_${c} = g_vec4(b, heads${r}, pos${r}, ${c}u);`, "  ")}
${unroll(nv, (c) => `var dq${r}_${c} = vec4f(0.0);`, "  ")}`, "  ")
      }${keyValueTileLoop(s, body)}
${
        unroll(s.rowsPerThread, (r) =>
          `if (live${r}) {
${
            storeRow(
              D,
              "grad_q",
              `out_row${r} * D`,
              (c) => `dq${r}_${c}`,
              " * params.scale",
              "    ",
            )
          }
  }`, "  ")
      }
}`,
    }));
}

/*
 * dK/dV layout: workgroup (x: block of ROWS key rows, y: kv head, z: batch); invocation `lid`
 * owns keys first_key + lid + r·THREADS, holding their k, v, dk, dv in registers (vec4s). It loops
 * over the query heads of the group and over tiles of TILE query rows staged in workgroup memory
 * (scaled q, dO, lse, D_i), starting at the first query the block's earliest key is visible to
 * when causal: p = exp(s − lse), dv += p·dO, dS = p·(dO·v − D_i), dk += dS·q·scale. Masked or
 * out-of-range keys end with zeros.
 */
function gradKeyValueKernel(s: TileShape): Kernel {
  const D = s.headDim;
  const nv = vecsPerRow(D);
  const body = (r: number) =>
    `if (live${r} && i >= first_query${r}) {
          let x = ${rowDot(D, (c) => `qc${c}`, (c) => `ks${r}_${c}`)};
          let dp = ${rowDot(D, (c) => `dc${c}`, (c) => `vs${r}_${c}`)};
          let p = exp(x - row_lse);
          let ds = p * (dp - row_delta);
${unroll(nv, (c) => `dv${r}_${c} += p * dc${c};`, "          ")}
${unroll(nv, (c) => `dk${r}_${c} += ds * qc${c};`, "          ")}
        }`;
  return cached("grad_kv", s, () =>
    defineKernel({
      name: "attention_grad_kv",
      bindings: [
        ...GRAD_INPUT_BINDINGS,
        ...(s.masked ? [KEEP_BINDING] : []),
        { name: "grad_k", type: "f32", access: "read_write" },
        { name: "grad_v", type: "f32", access: "read_write" },
      ],
      params: GRAD_PARAMS,
      source: `${constants(s)}
${gradLoaders(D)}
var<workgroup> q_tile: array<vec4f, TILE * NV>;
var<workgroup> do_tile: array<vec4f, TILE * NV>;
var<workgroup> lse_tile: array<f32, TILE>;
var<workgroup> delta_tile: array<f32, TILE>;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let b = wg.z;
  let kvh = wg.y;
  let first_key = wg.x * ROWS;
  // Query i sees key j when i ≥ j + T − S (causal); the block's first key bounds the start.
  let shift = i32(params.tq) - i32(params.sk);
  var q_start = 0u;
  if (params.causal != 0u) { q_start = u32(clamp(i32(first_key) + shift, 0, i32(params.tq))); }
${
        unroll(s.rowsPerThread, (r) =>
          `let key${r} = first_key + lid + ${r}u * THREADS;
  let key_c${r} = min(key${r}, params.sk - 1u);
  let live${r} = key${r} < params.sk${s.masked ? ` && keep[b * params.sk + key_c${r}] != 0.0` : ""};
  let first_query${r} = select(0, i32(key${r}) + shift, params.causal != 0u);
${unroll(nv, (c) => `let ks${r}_${c} = k_vec4(b, kvh, key_c${r}, ${c}u);`, "  ")}
${unroll(nv, (c) => `let vs${r}_${c} = v_vec4(b, kvh, key_c${r}, ${c}u);`, "  ")}
${unroll(nv, (c) => `var dk${r}_${c} = vec4f(0.0);`, "  ")}
${unroll(nv, (c) => `var dv${r}_${c} = vec4f(0.0);`, "  ")}`, "  ")
      }
  for (var gh = 0u; gh < params.group; gh++) {
    let h = kvh * params.group + gh;
    let row_base = (b * params.kv_heads * params.group + h) * params.tq;
    for (var i0 = q_start; i0 < params.tq; i0 += TILE) {
      for (var e = lid; e < TILE * NV; e += THREADS) {
        let i = min(i0 + e / NV, params.tq - 1u);
        q_tile[e] = q_vec4(b, h, i, e % NV) * params.scale;
        do_tile[e] = g_vec4(b, h, i, e % NV);
      }
      for (var e = lid; e < TILE; e += THREADS) {
        let i = min(i0 + e, params.tq - 1u);
        lse_tile[e] = lse[row_base + i];
        delta_tile[e] = delta[row_base + i];
      }
      workgroupBarrier();
      let count = min(TILE, params.tq - i0);
      for (var ii = 0u; ii < count; ii++) {
        let i = i32(i0 + ii);
        let qb = ii * NV;
${unroll(nv, (c) => `let qc${c} = q_tile[qb + ${c}u];`, "        ")}
${unroll(nv, (c) => `let dc${c} = do_tile[qb + ${c}u];`, "        ")}
        let row_lse = lse_tile[ii];
        let row_delta = delta_tile[ii];
${unroll(s.rowsPerThread, body, "        ")}
      }
      workgroupBarrier();
    }
  }
${
        unroll(s.rowsPerThread, (r) =>
          `if (key${r} < params.sk) {
    let o = ((b * params.kv_heads + kvh) * params.sk + key${r}) * D;
${
            storeRow(
              D,
              "grad_k",
              "o",
              (c) => `dk${r}_${c}`,
              "",
              "    ",
            )
          }
${storeRow(D, "grad_v", "o", (c) => `dv${r}_${c}`, "", "    ")}
  }`, "  ")
      }
}`,
    }));
}

// ---- the op --------------------------------------------------------------------------------------

/**
 * Attention softmax(scale·q·kᵀ + mask)·v over q [B, Hq, T, D] and k, v [B, Hkv, S, D], computed
 * by fused kernels that never store the T×S scores. Query head h uses kv head ⌊h·Hkv/Hq⌋
 * (grouped-query attention). With `causal`, query i sees keys j ≤ i + S − T, so a query block
 * appended to a KV cache attends to the whole cache. Rows whose keys are all masked output 0 and
 * get zero gradients. Differentiable in q, k and v.
 *
 * @example
 * ```ts
 * import { init, randNormal, scaledDotProductAttention } from "./mod.ts";
 * await init();
 * const q = randNormal([1, 4, 8, 16], 0, 1, { seed: 1 });
 * const kv = randNormal([1, 2, 8, 16], 0, 1, { seed: 2 });
 * const out = scaledDotProductAttention(q, kv, kv, { causal: true }); // [1, 4, 8, 16]
 * ```
 */
export function scaledDotProductAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options: AttentionOptions = {},
): Tensor {
  const mask = options.keyPaddingMask;
  const g = validate(q, k, v, mask);
  const causal = options.causal ?? false;
  const scale = options.scale ?? 1 / Math.sqrt(g.headDim);
  if (!Number.isFinite(scale)) {
    throw new Error(`scaledDotProductAttention: scale must be finite, got ${scale}`);
  }
  // The kernels read the mask as contiguous f32 keep flags, whatever its dtype or layout.
  const keep = mask ? map([mask], "select(0.0, 1.0, a != 0.0)") : undefined;
  const out = empty([g.batch, g.queryHeads, g.queryLen, g.headDim]);
  const lse = empty([g.batch, g.queryHeads, g.queryLen]);
  const rowCount = g.group * g.queryLen;
  const fwd = chooseTiles(g.headDim, rowCount, keep !== undefined);
  const common = {
    ...geometryValues(g, causal, scale),
    ...stridedValues("q", q),
    ...stridedValues("k", k),
    ...stridedValues("v", v),
  };
  const grid: [number, number, number] = [
    Math.ceil(rowCount / (fwd.threads * fwd.rowsPerThread)),
    g.kvHeads,
    g.batch,
  ];
  if (g.headDim > 0) {
    rt().dispatch(forwardKernel(fwd), [q, k, v, ...(keep ? [keep] : []), out, lse], common, grid);
  }
  if (!needsGrad(q, k, v)) {
    lse.dispose();
    keep?.dispose();
    return out;
  }
  return record("scaledDotProductAttention", out, [q, k, v], (gradOut) => {
    const delta = empty([g.batch, g.queryHeads, g.queryLen]);
    const rows = g.batch * g.queryHeads * g.queryLen;
    rt().dispatch(
      deltaKernel,
      [gradOut, out, delta],
      { rows, heads: g.queryHeads, tq: g.queryLen, dim: g.headDim, ...stridedValues("g", gradOut) },
      grid1d(Math.ceil(rows / 64)),
    );
    const params = { ...common, ...stridedValues("g", gradOut) };
    const inputs = [q, k, v, gradOut, lse, delta, ...(keep ? [keep] : [])];
    let gradQ: Tensor | null = null;
    if (q.requiresGrad) {
      gradQ = empty(q.shape);
      if (g.headDim > 0) rt().dispatch(gradQueryKernel(fwd), [...inputs, gradQ], params, grid);
    }
    let gradK: Tensor | null = null;
    let gradV: Tensor | null = null;
    if (k.requiresGrad || v.requiresGrad) {
      gradK = empty(k.shape);
      gradV = empty(v.shape);
      const kv = chooseTiles(g.headDim, g.keyLen, keep !== undefined);
      if (g.headDim > 0) {
        rt().dispatch(gradKeyValueKernel(kv), [...inputs, gradK, gradV], params, [
          Math.ceil(g.keyLen / (kv.threads * kv.rowsPerThread)),
          g.kvHeads,
          g.batch,
        ]);
      }
    }
    delta.dispose();
    return [gradQ, gradK, gradV];
  });
}
