"""Independent PyTorch reference runs for every method of the registry (tests/reference/).

Run by hand, never by the tests or the toolkit:

    /usr/bin/python3 tests/reference/reference.py            # writes tests/reference/fixtures/

It builds a tiny RoBERTa for sequence classification (config.json, model.safetensors and a
word-level tokenizer.json), a small SST-2-style data set (train.tsv, dev.tsv), and then, for each
method, trains 20 optimizer steps in float64 the way Hugging Face's Trainer, PEFT and the methods'
reference code do, as written down in ../shared/METHODS.md:

- the loop: forward, loss (+ AdaLoRA's regulariser), backward, clip_grad_norm_(1.0) over every
  gradient, torch.optim.AdamW (or the method's optimizer), the method's per-step logic,
  zero_grad(set_to_none); learning rate from get_linear_schedule_with_warmup with
  ceil(warmup_ratio x total) warm-up steps; weight decay off for biases and LayerNorm weights;
- each method from its paper, PEFT and its reference repository (see the METHODS dictionary).

Every fixture holds the run settings, the example indices of each step's batch, the loss of every
step, the final trainable tensors (<name>.safetensors, under this toolkit's parameter names) and
one deliberately wrong variant's losses, which the Deno test shows would fail its tolerance.

What the reference shares with the toolkit on purpose, because it is data rather than method:
the batch order (epochBatches: mulberry32 shuffles, documented in tasks/lib/data/pipeline.ts), the
counter-based generator that draws random starts (ops/random.ts: PCG hash; LoRA's A, AdaLoRA's P
and Q, VeRA's shared matrices, LISA's block samples) and the sign convention for singular vectors
(largest-magnitude entry positive). Everything else - the model, every method's rule, the
optimizers and schedules - is written here from the papers and METHODS.md, in float64.

Only torch and numpy are needed (safetensors is read and written by hand).
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
MODEL_DIR = os.path.join(OUT, "model")
DATA_DIR = os.path.join(OUT, "data")

# ---- the tiny model and data ------------------------------------------------------------------

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # RoBERTa's ids 0, 1, 2, 3
POSITIVE = ["good", "great", "fine", "nice", "warm", "bright", "happy", "calm"]
NEGATIVE = ["bad", "awful", "poor", "dull", "cold", "dark", "sad", "harsh"]
NEUTRAL = ["the", "a", "film", "plot", "cast", "music", "story", "scene", "very", "not", "quite",
           "end"]
WORDS = POSITIVE + NEGATIVE + NEUTRAL
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS)}
PAD = 1

CONFIG = {
    "architectures": ["RobertaForSequenceClassification"],
    "attention_probs_dropout_prob": 0.0,
    "bos_token_id": 0,
    "classifier_dropout": None,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 16,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "initializer_range": 0.2,
    "intermediate_size": 32,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 24,
    "model_type": "roberta",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "pad_token_id": PAD,
    "position_embedding_type": "absolute",
    "problem_type": "single_label_classification",
    "torch_dtype": "float32",
    "transformers_version": "4.46.3",
    "type_vocab_size": 1,
    "use_cache": True,
    "vocab_size": len(VOCAB),
}
H = CONFIG["hidden_size"]
HEADS = CONFIG["num_attention_heads"]
LAYERS = CONFIG["num_hidden_layers"]
EPS = CONFIG["layer_norm_eps"]

# The run every fixture shares (RunConfig keys of tasks/lib/train/config.ts).
BASE_RUN = {
    "task": "sst2",
    "steps": 20,
    "batchSize": 8,
    "maxLength": 16,
    "warmupRatio": 0.06,  # ceil(0.06 x 20) = 2 warm-up steps (round() would give 1)
    "schedule": "linear",
    "weightDecay": 0.01,
    "maxGradNorm": 1.0,
    "seed": 0,
}
N_TRAIN, N_DEV = 48, 8


def make_model():
    """Random weights in Hugging Face names (float32), the classifier head included."""
    g = torch.Generator().manual_seed(20240901)

    def normal(shape, std):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).float()

    w = {}
    p = "roberta.embeddings."
    w[p + "word_embeddings.weight"] = normal([len(VOCAB), H], 0.6)
    w[p + "position_embeddings.weight"] = normal([CONFIG["max_position_embeddings"], H], 0.3)
    w[p + "token_type_embeddings.weight"] = normal([1, H], 0.3)

    def layer_norm(name):
        w[name + ".weight"] = (1 + normal([H], 0.1))
        w[name + ".bias"] = normal([H], 0.05)

    def linear(name, d_out, d_in, std=0.25):
        w[name + ".weight"] = normal([d_out, d_in], std)
        w[name + ".bias"] = normal([d_out], 0.05)

    layer_norm(p + "LayerNorm")
    for l in range(LAYERS):
        q = f"roberta.encoder.layer.{l}."
        for m in ("query", "key", "value"):
            linear(q + "attention.self." + m, H, H, 0.35)
        linear(q + "attention.output.dense", H, H)
        layer_norm(q + "attention.output.LayerNorm")
        linear(q + "intermediate.dense", CONFIG["intermediate_size"], H)
        linear(q + "output.dense", H, CONFIG["intermediate_size"])
        layer_norm(q + "output.LayerNorm")
    linear("classifier.dense", H, H, 0.3)
    linear("classifier.out_proj", 2, H, 0.3)
    return w


def make_data():
    """Sentences over the word list; label 1 when positive words outnumber negative ones."""
    rng = np.random.default_rng(7)
    rows = []
    while len(rows) < N_TRAIN + N_DEV:
        n = int(rng.integers(3, 10))
        words = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), n)]
        pos = sum(x in POSITIVE for x in words)
        neg = sum(x in NEGATIVE for x in words)
        if pos == neg:
            continue
        rows.append((" ".join(words), 1 if pos > neg else 0))
    return rows[:N_TRAIN], rows[N_TRAIN:]


def encode(sentence):
    return [0] + [VOCAB[x] for x in sentence.split(" ")] + [2]


def tokenizer_json():
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(SPECIALS)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "RobertaProcessing",
            "sep": ["</s>", 2],
            "cls": ["<s>", 0],
            "trim_offsets": True,
            "add_prefix_space": False,
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {
            "type": "WordPiece",
            "unk_token": "<unk>",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": VOCAB,
        },
    }


# ---- safetensors, by hand ---------------------------------------------------------------------

DTYPES = {"F32": (np.float32, 4), "I32": (np.int32, 4)}


def write_safetensors(path, tensors):
    """tensors: name -> numpy array (float32 or int32), written in sorted order."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = "F32" if a.dtype == np.float32 else "I32"
        data = a.astype(DTYPES[dtype][0]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=DTYPES[info["dtype"]][0]).reshape(info["shape"])
    return out


# ---- what the reference shares with the toolkit (data, not method) -----------------------------

M32 = 0xFFFFFFFF


def mulberry32(seed):
    """ops/random.ts seededRandom."""
    state = [seed & M32]

    def imul(a, b):
        return (a * b) & M32

    def next_value():
        state[0] = (state[0] + 0x6D2B79F5) & M32
        t = state[0]
        t = imul(t ^ (t >> 15), t | 1)
        t = (t ^ ((t + imul(t ^ (t >> 7), t | 61)) & M32)) & M32
        return ((t ^ (t >> 14)) & M32) / 4294967296

    return next_value


def shuffled(items, random):
    a = list(items)
    for i in range(len(a) - 1, 0, -1):
        j = int(math.floor(random() * (i + 1)))
        a[i], a[j] = a[j], a[i]
    return a


def epoch_batches(lengths, batch_size, seed, epoch):
    """tasks/lib/data/pipeline.ts epochBatches (shuffle, pools of 50 batches sorted by length)."""
    random = mulberry32((seed * 1000003 + epoch * 7919) & M32)
    mixed = shuffled(range(len(lengths)), random)
    pool = batch_size * 50
    batches = []
    for p in range(0, len(mixed), pool):
        chunk = sorted(mixed[p:p + pool], key=lambda i: (lengths[i], i))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return shuffled(batches, random)


def pcg_hash(v):
    state = (v * 747796405 + 2891336453) & M32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & M32
    return ((word >> 22) ^ word) & M32


def rng_u32(seed, stream, index):
    """ops/random.ts rngU32: a pure function of (seed, stream, index)."""
    return pcg_hash((index + pcg_hash((stream + pcg_hash(seed & M32)) & M32)) & M32)


def rng_uniform(seed, stream, n, offset=0, step=1):
    return np.array([(rng_u32(seed, stream, offset + step * i) >> 8) / 16777216 for i in range(n)])


def rand_uniform(shape, low, high, seed, stream):
    """The engine's randUniform: low + (high - low) * u, in float32."""
    n = int(np.prod(shape))
    u = rng_uniform(seed, stream, n).astype(np.float32)
    lo, hi = np.float32(low), np.float32(high)
    return torch.tensor((lo + (hi - lo) * u).astype(np.float32).reshape(shape), dtype=torch.float64)


def rand_normal(shape, mean, std, seed, stream):
    """The engine's randNormal: Box-Muller over the even/odd counters, rounded to float32."""
    n = int(np.prod(shape))
    u1 = rng_uniform(seed, stream, n, 0, 2)
    u2 = rng_uniform(seed, stream, n, 1, 2)
    z = mean + std * np.sqrt(-2 * np.log(1 - u1)) * np.cos(2 * np.pi * u2)
    return torch.tensor(z.astype(np.float32).reshape(shape), dtype=torch.float64)


def lisa_sample(seed, interval, blocks, layers):
    """methods/lisa.ts lisaSample: a partial Fisher-Yates shuffle driven by rngU32."""
    order = list(range(blocks))
    s = ((seed & M32) ^ 0x4C495341) & M32
    for i in range(layers):
        j = i + rng_u32(s, interval, i) % (blocks - i)
        order[i], order[j] = order[j], order[i]
    return sorted(order[:layers])


def sign_fixed_columns(m):
    """Flip each column so that its largest-magnitude entry is positive (svd_flip)."""
    flip = (m.max(0).values + m.min(0).values) < 0
    return m * torch.where(flip, -1.0, 1.0)


# ---- the model (Hugging Face's RobertaForSequenceClassification, dropout off) -----------------


class Net:
    """The model's weights (float64 leaves) and the Linear layers a method replaced."""

    def __init__(self, weights):
        self.p = {k: v.double().clone() for k, v in weights.items()}
        self.adapters = {}  # module name -> fn(x, module name) -> y
        self.capture = None  # EVA: fn(module name, x)

    def base_linear(self, name, x):
        return x @ self.p[name + ".weight"].T + self.p[name + ".bias"]

    def linear(self, name, x):
        if self.capture:
            self.capture(name, x)
        fn = self.adapters.get(name)
        return fn(x, name) if fn else self.base_linear(name, x)

    def layer_norm(self, name, x):
        return torch.nn.functional.layer_norm(x, (H,), self.p[name + ".weight"],
                                              self.p[name + ".bias"], EPS)

    def logits(self, ids, mask):
        b, t = ids.shape
        real = (ids != PAD).long()
        positions = torch.cumsum(real, 1) * real + PAD
        e = "roberta.embeddings."
        x = (self.p[e + "word_embeddings.weight"][ids] + self.p[e + "position_embeddings.weight"]
             [positions] + self.p[e + "token_type_embeddings.weight"][0])
        x = self.layer_norm(e + "LayerNorm", x)
        hd = H // HEADS
        bias = (1 - mask)[:, None, None, :] * torch.finfo(torch.float64).min
        for l in range(LAYERS):
            q = f"roberta.encoder.layer.{l}."

            def heads(y):
                return y.view(b, t, HEADS, hd).transpose(1, 2)

            qs = heads(self.linear(q + "attention.self.query", x))
            ks = heads(self.linear(q + "attention.self.key", x))
            vs = heads(self.linear(q + "attention.self.value", x))
            scores = qs @ ks.transpose(-1, -2) / math.sqrt(hd) + bias
            ctx = (torch.softmax(scores, -1) @ vs).transpose(1, 2).reshape(b, t, H)
            x1 = self.layer_norm(q + "attention.output.LayerNorm",
                                 self.linear(q + "attention.output.dense", ctx) + x)
            inter = torch.nn.functional.gelu(self.linear(q + "intermediate.dense", x1))
            x = self.layer_norm(q + "output.LayerNorm", self.linear(q + "output.dense", inter) + x1)
        z = torch.tanh(self.linear("classifier.dense", x[:, 0]))
        return self.linear("classifier.out_proj", z)


def targeted(net, targets):
    """Linear modules matching a target by name suffix (PEFT's rule), head excluded, tree order."""
    linears = [k[:-len(".weight")] for k, t in net.p.items()
               if k.endswith(".weight") and t.dim() == 2 and "embeddings" not in k and
               not k.startswith("classifier.")]
    return [n for n in linears if any(n == t or n.endswith("." + t) for t in targets)]


def no_decay(name):
    """Hugging Face's exemption (methods/groups.ts isNoDecay): biases and norm weights."""
    return name.endswith(".bias") or name == "bias" or "LayerNorm" in name or "layernorm" in name


HEAD = ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
        "classifier.out_proj.bias"]


# ---- methods ----------------------------------------------------------------------------------
#
# A method's setup(net, data, opts) returns a Plan: trainable tensors by name, their parameter
# groups (name -> (lr multiplier, decays)), and optional hooks. Everything not trainable is frozen.


class Plan:
    """What a method trains and how; the loop in run() calls its hooks."""

    def __init__(self, params, rate=None, decays=None):
        self.params = params  # list of (name, leaf tensor requiring grad)
        self.rate = rate or (lambda name, t: 1.0)
        self.decays = decays or (lambda name, t: not no_decay(name))
        self.extra_loss = None  # fn(step) -> tensor
        self.step_begin = None  # fn(step, optimizer)
        self.before_step = None  # fn(step): after backward, before clipping
        self.after_step = None  # fn(step, optimizer): after optimizer.step, before zero_grad
        self.optimizer = None  # fn(groups) -> optimizer
        self.split = lambda name: False  # True: the tensor gets a group of its own kind
        self.stats = {}  # decisions to check (known at setup)
        self.stats_fn = None  # fn() -> decisions known after training


def head_params(net):
    return [(n, net.p[n]) for n in HEAD]


def lora_layers(net, targets, r, alpha, rslora=False, seed=0):
    """PEFT LoRA: A ~ kaiming_uniform(a=sqrt 5) = U(+-1/sqrt(d_in)) (the toolkit's counter-based
    draw, stream 7919 + layer), B = 0, y = base(x) + s B A x."""
    s = alpha / math.sqrt(r) if rslora else alpha / r
    params = []
    for i, name in enumerate(targeted(net, targets)):
        w = net.p[name + ".weight"]
        bound = 1 / math.sqrt(w.shape[1])
        a = rand_uniform([r, w.shape[1]], -bound, bound, seed, 7919 + i)
        b = torch.zeros(w.shape[0], r)
        params += [(name + ".lora_A.weight", a), (name + ".lora_B.weight", b)]
    return s, params


def install_lora(net, params, s):
    named = dict(params)
    for key in named:
        if key.endswith(".lora_A.weight"):
            name = key[:-len(".lora_A.weight")]

            def fn(x, n, a=named[key], b=named[name + ".lora_B.weight"]):
                return net.base_linear(n, x) + s * ((x @ a.T) @ b.T)

            net.adapters[name] = fn


def setup_full(net, data, o):
    params = list(net.p.items())
    if o.get("wrong"):  # weight decay on biases and LayerNorm weights as well
        return Plan(params, decays=lambda n, t: True)
    return Plan(params)


def setup_lora(net, data, o, rslora=False):
    r, alpha = o["r"], o["alpha"]
    wrong_scaling = o.get("wrong")
    s, params = lora_layers(net, ["query", "value"], r, alpha, rslora != bool(wrong_scaling))
    install_lora(net, params, s)
    return Plan(params + head_params(net))


def setup_rslora(net, data, o):
    return setup_lora(net, data, o, rslora=True)


def setup_lora_wv(net, data, o):
    """LoRA with the seed paper's W_v rule (Yao et al., LightweightAtt create_my_optimizer):
    lambda x lr for every parameter whose name contains value (or v_proj) and every 1-D tensor."""
    plan = setup_lora(net, data, o)
    lam = o["wvLrRatio"]
    if o.get("wrong"):  # lrMultipliers {value: lambda}: the value modules only
        plan.rate = lambda n, t: lam if ".value." in n else 1.0
    else:
        plan.rate = lambda n, t: lam if (".value." in n or t.dim() == 1) else 1.0
    return plan


def setup_loraplus(net, data, o):
    """PEFT create_loraplus_optimizer: lora_B and every 1-D tensor at lambda x lr; the 1-D ones
    without weight decay; everything else at lr."""
    r, alpha, lam = o["r"], o["alpha"], o["lrRatio"]
    s, params = lora_layers(net, ["query", "value"], r, alpha)
    install_lora(net, params, s)
    plan = Plan(params + head_params(net))
    if o.get("wrong"):  # lambda on lora_B only, the head's biases at lr
        plan.rate = lambda n, t: lam if "lora_B" in n else 1.0
    else:
        plan.rate = lambda n, t: lam if ("lora_B" in n or t.dim() == 1) else 1.0
        plan.decays = lambda n, t: t.dim() != 1 and not no_decay(n)
    return plan


def setup_dora(net, data, o):
    """DoRA as PEFT: m = ||W0|| per output row; y = base(x) + (m/n - 1) (W0 x) + (m/n) s B A x
    with n = ||W0 + s B A|| detached (the paper's section 4.3)."""
    r, alpha = o["r"], o["alpha"]
    s, params = lora_layers(net, ["query", "value"], r, alpha)
    named = dict(params)
    mags = []
    for key in list(named):
        if not key.endswith(".lora_A.weight"):
            continue
        name = key[:-len(".lora_A.weight")]
        w0 = net.p[name + ".weight"]
        m = w0.norm(dim=1).clone()
        mags.append((name + ".lora_magnitude_vector", m))

        def fn(x, n, a=named[key], b=named[name + ".lora_B.weight"], m=m, w0=w0):
            norm = (w0 + s * b @ a).norm(dim=1)
            if not o.get("wrong"):
                norm = norm.detach()
            scale = m / norm
            base = x @ w0.T
            return base + net.p[n + ".bias"] + (scale - 1) * base + scale * s * ((x @ a.T) @ b.T)

        net.adapters[name] = fn
    out = []
    for key, t in params:
        out.append((key, t))
        if key.endswith(".lora_B.weight"):
            out.append(next(x for x in mags if x[0] == key.replace(".lora_B.weight",
                                                                   ".lora_magnitude_vector")))
    return Plan(out + head_params(net))


def residual(net, starts, s):
    """Residual-base LoRA: W_res = W0 - s B0 A0 (frozen), A = A0 and B = B0 trained."""
    params = []
    for name, (a0, b0) in starts.items():
        net.p[name + ".weight"] = (net.p[name + ".weight"] - s * b0 @ a0).float().double()
        params += [(name + ".lora_A.weight", a0.clone()), (name + ".lora_B.weight", b0.clone())]
    install_lora(net, params, s)
    return params


def setup_pissa(net, data, o):
    """PiSSA (PEFT pissa_init): W0 = U S V^T, A = diag(sqrt(S_r / s)) V_r^T,
    B = U_r diag(sqrt(S_r / s)), W_res = W0 - s B A."""
    r, alpha = o["r"], o["alpha"]
    s = alpha / r
    starts = {}
    for name in targeted(net, ["query", "value"]):
        u, sv, vh = torch.linalg.svd(net.p[name + ".weight"], full_matrices=False)
        div = 1 if o.get("wrong") else s  # the paper's s = 1 reading, with s = 2 here
        root = torch.sqrt(sv[:r] / div)
        starts[name] = (root[:, None] * vh[:r], u[:, :r] * root)
    return Plan(residual(net, starts, s) + head_params(net))


def setup_olora(net, data, o):
    """OLoRA (PEFT olora_init): W0 = Q R (Householder), B = Q[:, :r], A = R[:r], W_res = W0 - s B A."""
    r, alpha = o["r"], o["alpha"]
    s = alpha / r
    starts = {}
    for name in targeted(net, ["query", "value"]):
        q, rr = torch.linalg.qr(net.p[name + ".weight"])
        starts[name] = (rr[:r].clone(), q[:, :r].clone())
    if o.get("wrong"):  # the residual subtracts B A without the scaling s
        params = []
        for name, (a0, b0) in starts.items():
            net.p[name + ".weight"] = net.p[name + ".weight"] - b0 @ a0
            params += [(name + ".lora_A.weight", a0), (name + ".lora_B.weight", b0)]
        install_lora(net, params, s)
        return Plan(params + head_params(net))
    return Plan(residual(net, starts, s) + head_params(net))


def setup_loraga(net, data, o):
    """LoRA-GA (Outsider565/LoRA-GA, direction ArB2r, scale "stable"): G = the mean gradient of
    each target weight over the first batches; G = U S V^T (signs fixed), A = c V[:, :r]^T,
    B = c U[:, r:2r], c = d_out^(1/4) / sqrt(gamma); W_res = W0 - s B A."""
    r, alpha, gamma = o["r"], o["alpha"], o["stableGamma"]
    s = alpha / r
    names = targeted(net, ["query", "value"])
    ws = [net.p[n + ".weight"].requires_grad_(True) for n in names]
    for batch in data["batches_epoch0"][:o["batches"]]:
        loss = torch.nn.functional.cross_entropy(net.logits(*batch["inputs"]), batch["labels"])
        loss.backward()
    starts = {}
    for n, w in zip(names, ws):
        g = w.grad / o["batches"]
        w.grad = None
        w.requires_grad_(False)
        u, sv, vh = torch.linalg.svd(g, full_matrices=False)
        v = vh.T
        flip = torch.where((v.max(0).values + v.min(0).values) < 0, -1.0, 1.0)
        u, v = u * flip, v * flip
        c = w.shape[0] ** 0.25 if o.get("wrong") else w.shape[0] ** 0.25 / math.sqrt(gamma)
        starts[n] = ((c * v[:, :r].T).contiguous(), (c * u[:, r:2 * r]).contiguous())
    return Plan(residual(net, starts, s) + head_params(net))


# Inputs of three kinds (the block's input, the attention context, the attention output), all of
# width H, so the PCAs differ and the ranks move between layers.
EVA_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense"]


def setup_eva(net, data, o):
    """EVA (PEFT initialize_lora_eva_weights): incremental PCA of each layer's inputs over the
    training batches (real tokens only), shared by layers with the same input, until the
    components converge (cosine >= tau); ranks redistributed by explained variance, budget r x L;
    A = top components (largest entry positive), B = 0, alpha_l = alpha r_l / r."""
    r, alpha, rho, tau, max_batches = o["r"], o["alpha"], o["rho"], o["tau"], o["maxBatches"]
    names = targeted(net, EVA_TARGETS)
    k = min(round(r * rho), H)
    # query, key and value read the same tensor: one PCA, held by the first of them (the query).
    leader = {n: n.replace(".value", ".query").replace(".key", ".query") for n in names}
    leaders = sorted(set(leader.values()), key=names.index)
    pca = {n: {"comps": None, "sigma": None, "ratio": None, "mean": None, "scaled": None,
               "total": None, "seen": 0, "converged": [False] * k} for n in leaders}
    ranks = {n: k for n in names}
    thunks = data["batches_epoch0"][:max_batches]
    margins = []

    def needed(l):
        return max(ranks[n] for n in names if leader[n] == l)

    def pending():
        return [l for l in leaders if not all(pca[l]["converged"][:needed(l)])]

    captured = {}
    net.capture = lambda name, x: captured.__setitem__(name, x)
    batches = 0
    with torch.no_grad():
        while batches < max_batches:
            if batches > 0 and not pending():
                break
            batch = thunks[batches % len(thunks)]
            captured.clear()
            net.logits(*batch["inputs"])
            rows = batch["inputs"][1].reshape(-1) > 0
            for l in pending():
                x = captured[l].reshape(-1, H)[rows]
                st = pca[l]
                n = x.shape[0]
                m = x.mean(0)
                centred = x - m
                squares = (centred ** 2).sum()
                if st["mean"] is None:
                    stacked, new_mean, total = centred, m, squares
                else:
                    n0 = st["seen"]
                    c = math.sqrt(n0 * n / (n0 + n))
                    shift = st["mean"] - m
                    stacked = torch.cat([st["scaled"], centred, (c * shift)[None]], 0)
                    total = st["total"] + squares + c * c * (shift ** 2).sum()
                    new_mean = st["mean"] * (n0 / (n0 + n)) + m * (n / (n0 + n))
                _, sv, vh = torch.linalg.svd(stacked, full_matrices=False)
                sv, vh = sv[:k], vh[:k]
                st["scaled"] = vh * sv[:, None]
                st["mean"], st["total"], st["seen"] = new_mean, total, st["seen"] + n
                comps = sign_fixed_columns(vh.T).T
                if st["comps"] is not None:
                    cos = [float(comps[i] @ st["comps"][i] / (comps[i].norm() * st["comps"][i].norm()))
                           for i in range(k)]
                    margins.extend(abs(c_ - tau) for c_ in cos)
                    st["converged"] = [c_ >= tau for c_ in cos]
                st["comps"], st["sigma"] = comps, sv
                st["ratio"] = (sv ** 2 / total).tolist()
            if all(pca[l]["comps"] is not None for l in leaders):
                entries = [(-pca[leader[n]]["ratio"][i], li, i, n) for li, n in enumerate(names)
                           for i in range(k)]
                entries.sort()
                ranks = {n: 0 for n in names}
                for e in entries[:r * len(names)]:
                    ranks[e[3]] += 1
            batches += 1
    net.capture = None
    if o.get("wrong"):  # no redistribution: every layer keeps rank r
        ranks = {n: r for n in names}
    params = []
    for n in names:
        rank = ranks[n]
        if rank == 0:
            continue
        a = pca[leader[n]]["comps"][:rank].float().double().clone()
        b = torch.zeros(net.p[n + ".weight"].shape[0], rank)
        alpha_l = alpha * rank / r if rank != r else alpha
        s = alpha_l / rank

        def fn(x, name, a=a, b=b, s=s):
            return net.base_linear(name, x) + s * ((x @ a.T) @ b.T)

        net.adapters[n] = fn
        params += [(n + ".lora_A.weight", a), (n + ".lora_B.weight", b)]
    plan = Plan(params + head_params(net))
    plan.stats = {"ranks": ranks, "batches": batches,
                  "convergenceMargin": min(margins) if margins else None}
    return plan


def setup_adalora(net, data, o):
    """AdaLoRA as PEFT (AdaLoraModel + RankAllocator): y = base(x) + alpha/(r0 + 1e-5) B (A * E) x,
    E = 0, A, B ~ N(0, 0.02^2); loss + w mean ||A A^T - I||_F, ||B^T B - I||_F (unsquared);
    update_and_allocate(t) after optimizer.step() with t counted from 0."""
    r0, target_r, alpha = o["initR"], o["targetR"], o["alpha"]
    tinit, tfinal, delta_t = o["tinit"], o["tfinal"], o["deltaT"]
    beta1, beta2, w_orth, total = o["beta1"], o["beta2"], o["orthRegWeight"], BASE_RUN["steps"]
    names = targeted(net, ["query", "key", "value", "dense"])
    scaling = alpha / (r0 + 1e-5)
    params, layers = [], []
    for i, n in enumerate(names):
        w = net.p[n + ".weight"]
        a = rand_normal([r0, w.shape[1]], 0, 0.02, BASE_RUN["seed"], 104729 + 2 * i)
        b = rand_normal([w.shape[0], r0], 0, 0.02, BASE_RUN["seed"], 104730 + 2 * i)
        e = torch.zeros(r0, 1)
        layers.append((n, a, e, b))
        params += [(n + ".lora_A", a), (n + ".lora_E", e), (n + ".lora_B", b)]

        def fn(x, name, a=a, e=e, b=b):
            return net.base_linear(name, x) + scaling * ((x @ (a * e).T) @ b.T)

        net.adapters[n] = fn
    plan = Plan(params + head_params(net))
    squared = bool(o.get("wrong"))

    def regulariser(step):
        terms = []
        for _, a, _, b in layers:
            for gram in (a @ a.T, b.T @ b):
                d = gram - torch.eye(r0)
                terms.append((d ** 2).sum() if squared else torch.linalg.norm(d, "fro"))
        return w_orth * sum(terms) / len(terms)

    plan.extra_loss = regulariser
    ipt, unc = {}, {}
    init_bgt, target_bgt = r0 * len(names), target_r * len(names)
    state = {"pattern": None}
    margins = []

    def budget_schedule(t):
        if t <= tinit:
            return init_bgt, False
        if t > total - tfinal:
            return target_bgt, True
        c = 1 - (t - tinit) / (total - tfinal - tinit)
        return int((init_bgt - target_bgt) * c ** 3 + target_bgt), t % delta_t == 0

    def mask_to_budget(budget):
        scores = []
        for n, a, e, b in layers:
            s = lambda t: ipt[id(t)] * unc[id(t)]
            scores.append(s(e).view(-1) + s(a).mean(1) + s(b).mean(0))
        allv = torch.cat(scores)
        k = init_bgt - budget
        if k <= 0:
            return
        ordered = torch.sort(allv).values
        margins.append(float((ordered[k] - ordered[k - 1]) / ordered[k]))
        threshold = ordered[k - 1]
        pattern = []
        with torch.no_grad():
            for (n, a, e, b), s in zip(layers, scores):
                keep = s > threshold
                e.mul_(keep[:, None].double())
                pattern.append(keep.tolist())
        state["pattern"] = pattern

    def after_step(t, optimizer):
        if t < total - tfinal:
            with torch.no_grad():
                for _, a, e, b in layers:
                    for p in (a, e, b):
                        cur = (p * p.grad).abs()
                        ipt[id(p)] = beta1 * ipt.get(id(p), torch.zeros_like(p)) + (1 - beta1) * cur
                        unc[id(p)] = (beta2 * unc.get(id(p), torch.zeros_like(p)) +
                                      (1 - beta2) * (cur - ipt[id(p)]).abs())
            budget, mask = budget_schedule(t)
            if mask:
                mask_to_budget(budget)
        elif t == total - tfinal:
            mask_to_budget(target_bgt)
            ipt.clear()
            unc.clear()
        else:
            with torch.no_grad():
                for (n, a, e, b), keep in zip(layers, state["pattern"]):
                    e.mul_(torch.tensor(keep, dtype=torch.float64)[:, None])

    plan.after_step = after_step
    plan.stats_fn = lambda: {"rankPattern": {n + ".lora_E": keep for (n, *_), keep in
                                             zip(layers, state["pattern"])},
                             "maskMargin": min(margins)}
    return plan


def setup_ia3(net, data, o):
    """(IA)^3 as PEFT: l = 1; key, value: y = l * (W x + b) (l [d_out, 1]); feed-forward
    output.dense (which also matches attention.output.dense): y = W (l * x) + b (l [1, d_in])."""
    params = []
    for n in targeted(net, ["key", "value", "output.dense"]):
        w = net.p[n + ".weight"]
        ff = n.endswith("output.dense")
        if o.get("wrong"):  # feed-forward modules scaled at the output instead of the input
            ff = False
        l = torch.ones(1, w.shape[1]) if ff else torch.ones(w.shape[0], 1)

        def fn(x, name, l=l, ff=ff):
            if ff:
                return net.base_linear(name, x * l.view(-1))
            return net.base_linear(name, x) * l.view(-1)

        net.adapters[n] = fn
        params.append((n + ".ia3_l", l))
    return Plan(params + head_params(net))


def setup_vera(net, data, o):
    """VeRA as PEFT: shared A [r, d_in,max] ~ U(+-sqrt(6/d_in,max)), B [d_out,max, r] ~
    U(+-sqrt(6/r)) (kaiming_uniform, gain sqrt 2, on the fan-in; the toolkit's draw of key
    projection_prng_key); per layer lambda_b = 0 [d_out], lambda_d = d_initial [r];
    y = base(x) + lambda_b * (B_s (lambda_d * (A_s x)))."""
    r, d_init = o["r"], o["dInitial"]
    names = targeted(net, ["query", "value"])
    max_in = max(net.p[n + ".weight"].shape[1] for n in names)
    max_out = max(net.p[n + ".weight"].shape[0] for n in names)
    bound_b = math.sqrt(6 / max_out) if o.get("wrong") else math.sqrt(6 / r)
    a_sh = rand_uniform([r, max_in], -math.sqrt(6 / max_in), math.sqrt(6 / max_in), 0, 0)
    b_sh = rand_uniform([max_out, r], -bound_b, bound_b, 0, 1)
    params = []
    for n in names:
        d_out, d_in = net.p[n + ".weight"].shape
        lb, ld = torch.zeros(d_out), torch.full((r,), float(d_init))

        def fn(x, name, lb=lb, ld=ld, d_out=d_out, d_in=d_in):
            return net.base_linear(name, x) + lb * (((x @ a_sh[:, :d_in].T) * ld) @ b_sh[:d_out].T)

        net.adapters[n] = fn
        params += [(n + ".vera_lambda_b", lb), (n + ".vera_lambda_d", ld)]
    return Plan(params + head_params(net))


def setup_bitfit(net, data, o):
    """BitFit: every bias (Linear and LayerNorm) plus the head."""
    params = [(n, t) for n, t in net.p.items() if n.endswith(".bias") and not n.startswith(
        "classifier.") and not (o.get("wrong") and "LayerNorm" in n)]
    return Plan(params + head_params(net))


class GaLoreAdamW(torch.optim.Optimizer):
    """GaLore's optimizer (jiaweizzhao/GaLore galore_torch.GaLoreAdamW), written from the paper's
    Algorithm 1 and METHODS.md 2.12: for a projected 2-D weight G [m, n], every T updates
    (from the first) P = top-r right singular vectors (m >= n) or left ones; R = G P or P^T G;
    Adam moments of R, never reset; N = m / (sqrt(v) + eps); W -= lr sqrt(1 - b2^t) / (1 - b1^t)
    * scale * (N P^T or P N); then W -= lr wd W. Unprojected parameters: the same without P."""

    def __init__(self, groups, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(groups, {"lr": 1.0, "betas": betas, "eps": eps, "weight_decay": 0.0})
        self.margins = []

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                g = p.grad
                rank = group.get("rank")
                if rank:
                    m, n = p.shape
                    if st.get("step", 0) % group["update_proj_gap"] == 0:
                        u, sv, vh = torch.linalg.svd(g, full_matrices=False)
                        self.margins.append(float((sv[rank - 1] - sv[rank]) / sv[rank - 1]))
                        st["P"] = sign_fixed_columns(vh.T[:, :rank] if m >= n else u[:, :rank])
                    g = g @ st["P"] if m >= n else st["P"].T @ g
                if "m" not in st:
                    st["step"], st["m"], st["v"] = 0, torch.zeros_like(g), torch.zeros_like(g)
                st["step"] += 1
                st["m"].mul_(b1).add_(g, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                normalized = st["m"] / (st["v"].sqrt() + group["eps"])
                size = group["lr"] * math.sqrt(1 - b2 ** st["step"]) / (1 - b1 ** st["step"])
                if rank:
                    normalized = group["scale"] * (
                        normalized @ st["P"].T if p.shape[0] >= p.shape[1] else st["P"] @ normalized)
                p.add_(normalized, alpha=-size)
                p.mul_(1 - group["lr"] * group["weight_decay"])


def setup_galore(net, data, o):
    """GaLore as the official run_glue.py / HF galore_adamw: every parameter trains; the targeted
    Linear weights (the GLUE recipe's: every attention and feed-forward matrix) through the
    projection, everything else through GaLoreAdamW's plain branch."""
    targets = ["query", "key", "value", "intermediate.dense", "output.dense"]
    projected = {n + ".weight" for n in targeted(net, targets)}
    if o.get("wrong"):  # the targets, their biases and the head only (this toolkit before)
        keep = projected | {n[:-len("weight")] + "bias" for n in projected} | set(HEAD)
        params = [(n, t) for n, t in net.p.items() if n in keep]
    else:
        params = list(net.p.items())
    plan = Plan(params)

    def make(groups):
        for g in groups:
            if all(id(p) in {id(net.p[n]) for n in projected} for p in g["params"]):
                g.update(rank=o["rank"], update_proj_gap=o["updateProjGap"], scale=o["scale"])
        return GaLoreAdamW(groups)

    plan.optimizer = make
    plan.split = lambda n: n in projected  # the projected weights in groups of their own
    return plan


def setup_lisa(net, data, o):
    """LISA (LMFlow's DynamicLayerActivationCallback): at every step t with t % K == 0 (step 0
    included) freeze all blocks and unfreeze gamma sampled ones; embeddings and head always train;
    a deactivated block's AdamW state is deleted (METHODS.md 2.13, the paper's memory claim)."""
    gamma, interval = o["layers"], o["interval"]
    plan = Plan(list(net.p.items()))
    blocks = [[n for n in net.p if n.startswith(f"roberta.encoder.layer.{i}.")]
              for i in range(LAYERS)]
    active_log = []

    def step_begin(t, optimizer):
        late = 1 if o.get("wrong") else 0  # switching one step late
        if t < late or (t - late) % interval:
            return
        sample = lisa_sample(BASE_RUN["seed"], (t - late) // interval, LAYERS, gamma)
        active_log.append(sample)
        for i, names in enumerate(blocks):
            for n in names:
                p = net.p[n]
                on = i in sample
                if not on and p in optimizer.state:
                    del optimizer.state[p]
                p.requires_grad_(on)

    plan.step_begin = step_begin
    plan.stats_fn = lambda: {"activeBlocks": active_log}
    return plan


def setup_sift(net, data, o):
    """SIFT (song-wx/SIFT with HF's Trainer): the first backward pass selects, per target matrix,
    the k = floor(rho n) + 1 entries of largest |gradient|; that step leaves the increments alone
    (the head trains); afterwards W[idx] trains by AdamW on g[idx] without weight decay (the
    reference zeroes its increment after each update, so its decay acts on zeros). Targets: the
    reference's GLUE recipe (sparse_module query value key attention.output.dense)."""
    names = targeted(net, ["query", "key", "value", "attention.output.dense"])
    plan = Plan(head_params(net))
    first = data["batches_epoch0"][0]
    ws = [net.p[n + ".weight"].requires_grad_(True) for n in names]
    loss = torch.nn.functional.cross_entropy(net.logits(*first["inputs"]), first["labels"])
    loss.backward()
    deltas, margins = [], []
    for n, w in zip(names, ws):
        g = w.grad.abs().reshape(-1)
        w.grad = None
        w.requires_grad_(False)
        k = min(int(o["density"] * g.numel()) + 1, g.numel())
        ordered = torch.sort(g, descending=True)
        margins.append(float((ordered.values[k - 1] - ordered.values[k]) / ordered.values[k - 1]))
        idx = torch.sort(ordered.indices[:k]).values
        delta = torch.zeros(k)
        deltas.append((n, idx, delta))

        def fn(x, name, w0=net.p[n + ".weight"].clone(), idx=idx, delta=delta):
            flat = w0.reshape(-1).index_add(0, idx, delta)
            return x @ flat.view_as(w0).T + net.p[name + ".bias"]

        net.adapters[n] = fn
    for n, idx, delta in deltas:
        plan.params.append((n + ".sift.values", delta))
    wrong = bool(o.get("wrong"))
    plan.decays = lambda n, t: (wrong or not n.endswith(".sift.values")) and not no_decay(n)

    def before_step(t):
        if t == 0 and not wrong:
            for _, _, delta in deltas:
                delta.grad = None

    plan.before_step = before_step
    plan.stats = {"indices": {n: idx.tolist() for n, idx, _ in deltas},
                  "selectionMargin": min(margins)}
    return plan


# ---- the training loop ------------------------------------------------------------------------


def linear_schedule(step, warmup, total):
    """get_linear_schedule_with_warmup's multiplier."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def run(setup, opts, run_cfg, weights, data):
    net = Net(weights)
    plan = setup(net, data, opts)
    for n, t in plan.params:
        t.requires_grad_(True)
    names = [n for n, _ in plan.params]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate parameter names in {setup.__name__}")
    lr = run_cfg["lr"]
    groups = {}
    for n, t in plan.params:
        key = (plan.rate(n, t), plan.decays(n, t), plan.split(n))
        groups.setdefault(key, []).append(t)
    group_list = [{"params": ps, "lr": lr * rate, "base": lr * rate,
                   "weight_decay": run_cfg["weightDecay"] if decays else 0.0}
                  for (rate, decays, _), ps in groups.items()]
    if plan.optimizer:
        optimizer = plan.optimizer(group_list)
    else:
        optimizer = torch.optim.AdamW(group_list, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    total = run_cfg["steps"]
    warmup = math.ceil(run_cfg["warmupRatio"] * total)
    losses = []
    for t in range(total):
        if plan.step_begin:
            plan.step_begin(t, optimizer)
        batch = data["steps"][t]
        loss = torch.nn.functional.cross_entropy(net.logits(*batch["inputs"]), batch["labels"])
        if plan.extra_loss:
            loss = loss + plan.extra_loss(t)
        loss.backward()
        if plan.before_step:
            plan.before_step(t)
        with_grad = [p for _, p in plan.params if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(with_grad, run_cfg["maxGradNorm"])
        mult = linear_schedule(t, warmup, total)
        for g in optimizer.param_groups:
            g["lr"] = g["base"] * mult
        optimizer.step()
        if plan.after_step:
            plan.after_step(t, optimizer)
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    stats = dict(plan.stats)
    if plan.stats_fn:
        stats.update(plan.stats_fn())
    if isinstance(optimizer, GaLoreAdamW):
        stats["svdGapMin"] = min(optimizer.margins)
    final = {n: t.detach().float().numpy() for n, t in plan.params}
    return losses, final, stats


# Every method of methods/registry.ts (plus LoRA with the W_v rule): its setup, its options
# (as the toolkit's methodOptions), the run settings that differ from BASE_RUN, and what its
# deliberately wrong variant does.
LORA = {"r": 4, "alpha": 8}
METHODS = {
    "full": (setup_full, {}, {"lr": 3e-3, "weightDecay": 0.1},
             "weight decay on biases and LayerNorm weights too"),
    "lora": (setup_lora, LORA, {"lr": 1e-2}, "rsLoRA's scaling alpha/sqrt(r) instead of alpha/r"),
    "rslora": (setup_rslora, LORA, {"lr": 1e-2}, "LoRA's scaling alpha/r instead of alpha/sqrt(r)"),
    "lora-wv": (setup_lora_wv, {**LORA, "wvLrRatio": 4}, {"lr": 5e-3, "method": "lora",
                                                           "wvLrRatio": 4},
                "lrMultipliers {value: 4}: the W_v rule without the 1-D tensors"),
    "loraplus": (setup_loraplus, {**LORA, "lrRatio": 4}, {"lr": 5e-3},
                 "lambda on lora_B only (the head's biases at the base rate)"),
    "dora": (setup_dora, LORA, {"lr": 1e-2}, "the weight norm not detached in backward"),
    "pissa": (setup_pissa, LORA, {"lr": 5e-3}, "sqrt(S) without the division by s (s = 2 here)"),
    "olora": (setup_olora, LORA, {"lr": 5e-3}, "W_res = W0 - B A without the scaling s"),
    "loraga": (setup_loraga, {**LORA, "batches": 2, "stableGamma": 16}, {"lr": 5e-3},
               "the stable scale without 1/sqrt(gamma)"),
    "eva": (setup_eva, {**LORA, "rho": 2, "tau": 0.95, "maxBatches": 12},
            {"lr": 1e-2, "targets": EVA_TARGETS},
            "no rank redistribution (every layer keeps rank r)"),
    "adalora": (setup_adalora, {"initR": 6, "targetR": 4, "alpha": 8, "tinit": 2, "tfinal": 4,
                                "deltaT": 2, "beta1": 0.85, "beta2": 0.85, "orthRegWeight": 0.5},
                {"lr": 1e-2}, "the squared Frobenius norm in the orthogonality regulariser"),
    "ia3": (setup_ia3, {}, {"lr": 2e-2}, "feed-forward modules scaled at their output"),
    "vera": (setup_vera, {"r": 8, "dInitial": 0.1}, {"lr": 2e-2},
             "B's kaiming bound from d_out,max instead of r"),
    "bitfit": (setup_bitfit, {}, {"lr": 1e-2}, "LayerNorm biases left frozen"),
    "galore": (setup_galore, {"rank": 4, "updateProjGap": 6, "scale": 2}, {"lr": 2e-3},
               "only the targets, their biases and the head train"),
    "lisa": (setup_lisa, {"layers": 1, "interval": 5}, {"lr": 2e-3},
             "blocks switched one step late"),
    "sift": (setup_sift, {"density": 0.05}, {"lr": 5e-3},
             "weight decay on the increments and an update at the selection step"),
}

SOURCES = {
    "full": "Hugging Face Trainer, AdamW",
    "lora": "PEFT LoRA",
    "rslora": "PEFT LoRA, use_rslora",
    "lora-wv": "LightweightAtt create_my_optimizer",
    "loraplus": "PEFT create_loraplus_optimizer",
    "dora": "PEFT LoRA, use_dora",
    "pissa": "PEFT pissa_init",
    "olora": "PEFT olora_init",
    "loraga": "Outsider565/LoRA-GA",
    "eva": "PEFT EVA",
    "adalora": "PEFT AdaLoRA",
    "ia3": "PEFT IA3",
    "vera": "PEFT VeRA",
    "bitfit": "BitFit, all bias terms",
    "galore": "galore_torch GaLoreAdamW",
    "lisa": "LMFlow's LISA callback",
    "sift": "song-wx/SIFT",
}

# Options the toolkit gets but the reference does not read (they only restate defaults).
EXTRA_OPTIONS = {"lora-wv": ["wvLrRatio"]}


def main():
    os.makedirs(MODEL_DIR, exist_ok=True)
    os.makedirs(os.path.join(DATA_DIR, "SST-2"), exist_ok=True)
    weights = make_model()
    write_safetensors(os.path.join(MODEL_DIR, "model.safetensors"),
                      {k: v.numpy() for k, v in weights.items()})
    with open(os.path.join(MODEL_DIR, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(MODEL_DIR, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_json(), f, indent=2)
        f.write("\n")
    with open(os.path.join(MODEL_DIR, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                   "unk_token": "<unk>", "model_max_length": 16,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
        f.write("\n")
    train, dev = make_data()
    for split, rows in (("train", train), ("dev", dev)):
        with open(os.path.join(DATA_DIR, "SST-2", f"{split}.tsv"), "w") as f:
            f.write("sentence\tlabel\n")
            for text, label in rows:
                f.write(f"{text}\t{label}\n")

    encoded = [encode(t) for t, _ in train]
    labels = [y for _, y in train]
    lengths = [len(e) for e in encoded]

    def collate(idx):
        t = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), t), PAD, dtype=torch.long)
        mask = torch.zeros(len(idx), t)
        for row, i in enumerate(idx):
            ids[row, :lengths[i]] = torch.tensor(encoded[i])
            mask[row, :lengths[i]] = 1
        return {"inputs": (ids, mask), "labels": torch.tensor([labels[i] for i in idx])}

    bs, total = BASE_RUN["batchSize"], BASE_RUN["steps"]
    per_epoch = math.ceil(len(train) / bs)
    order, epochs = [], {}
    for k in range(total):
        e = k // per_epoch
        if e not in epochs:
            epochs[e] = epoch_batches(lengths, bs, BASE_RUN["seed"], e)
        order.append(epochs[e][k % per_epoch])
    data = {"steps": [collate(i) for i in order],
            "batches_epoch0": [collate(i) for i in epochs[0]]}

    only = sys.argv[1:]
    for name, (setup, opts, extra, wrong_what) in METHODS.items():
        if only and name not in only:
            continue
        run_cfg = {**BASE_RUN, **{k: v for k, v in extra.items() if k != "method"}}
        losses, final, stats = run(setup, opts, run_cfg, weights, data)
        wrong_losses, _, _ = run(setup, {**opts, "wrong": True}, run_cfg, weights, data)
        method = extra.get("method", name)
        method_options = {k: v for k, v in opts.items() if k not in EXTRA_OPTIONS.get(name, [])}
        fixture = {
            "method": method,
            "reference": SOURCES[name],
            "run": {**run_cfg, "method": method, "methodOptions": method_options},
            "batches": order,
            "losses": losses,
            "wrong": {"what": wrong_what, "losses": wrong_losses},
            "stats": stats,
        }
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(fixture, f, indent=2)
            f.write("\n")
        write_safetensors(os.path.join(OUT, f"{name}.safetensors"), final)
        worst = max(abs(a - b) / abs(a) for a, b in zip(losses, wrong_losses))
        print(f"{name:9s} loss {losses[0]:.5f} -> {losses[-1]:.5f}; wrong variant differs by up to "
              f"{worst:.2e} relative; {stats_line(stats)}")


def stats_line(stats):
    return ", ".join(f"{k} {v:.3g}" for k, v in stats.items() if isinstance(v, float))


if __name__ == "__main__":
    main()
