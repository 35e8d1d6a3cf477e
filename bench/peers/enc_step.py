"""The reference encoder training step in PyTorch, the peer of bench/step_bench.ts.

A randomly initialised RoBERTa-shaped classifier written out in plain PyTorch (the same modules
and order as Hugging Face's RobertaForSequenceClassification, so no transformers install is
needed), one batch of random ids, dropout on, torch.optim.AdamW, and either LoRA r 8 (alpha 16,
dropout 0.1) on query,value or full fine-tuning. One step: forward -> cross-entropy -> backward ->
optimizer.step() -> zero_grad(set_to_none=True).

Prints one JSON object: median ms per step, every step's ms, and memory by category in bytes:
weights (frozen parameters), trainable (parameters that train), grads (gradients alive after
backward), optimizer (AdamW moments) and activations (the tensors autograd saved for backward,
counted once per storage through saved_tensors_hooks, parameters excluded). Their sum is the
peak a step needs; PyTorch's CPU allocator has no per-category peak of its own.

Usage: /usr/bin/python3 bench/peers/enc_step.py --mode lora|full [--steps N] [--warmup W]
       [--threads 2] [--hidden 128 --layers 2 --heads 4 --ffn 512 --vocab 50265 --batch 16
       --seq 64]
"""

import argparse
import json
import math
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # the caller prints the skip message
    print(json.dumps({"skipped": "torch is not installed for " + sys.executable}))
    sys.exit(0)


class LoraLinear(nn.Module):
    """PEFT's LoRA Linear: base(x) + s * B(A(dropout(x)))."""

    def __init__(self, base, r, alpha, dropout):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.drop = nn.Dropout(dropout)
        self.scaling = alpha / r

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(self.drop(x))) * self.scaling


class Layer(nn.Module):
    def __init__(self, h, heads, ffn, p):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.attn_out = nn.Linear(h, h)
        self.ln1 = nn.LayerNorm(h, eps=1e-5)
        self.inter = nn.Linear(h, ffn)
        self.out = nn.Linear(ffn, h)
        self.ln2 = nn.LayerNorm(h, eps=1e-5)
        self.p = p

    def forward(self, x, bias):
        b, t, h = x.shape
        split = lambda y: y.view(b, t, self.heads, h // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(h // self.heads) + bias
        probs = F.dropout(scores.softmax(-1), self.p, self.training)
        ctx = (probs @ v).transpose(1, 2).reshape(b, t, h)
        h1 = self.ln1(F.dropout(self.attn_out(ctx), self.p, self.training) + x)
        o = F.dropout(self.out(F.gelu(self.inter(h1))), self.p, self.training)
        return self.ln2(o + h1)


class Encoder(nn.Module):
    def __init__(self, a):
        super().__init__()
        h = a.hidden
        self.word = nn.Embedding(a.vocab, h)
        self.pos = nn.Embedding(a.seq + 2, h)
        self.typ = nn.Embedding(1, h)
        self.ln = nn.LayerNorm(h, eps=1e-5)
        self.layers = nn.ModuleList(Layer(h, a.heads, a.ffn, 0.1) for _ in range(a.layers))
        self.dense = nn.Linear(h, h)
        self.out_proj = nn.Linear(h, 2)
        self.p = 0.1
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0, 0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

    def forward(self, ids, mask):
        t = ids.shape[1]
        positions = torch.arange(2, t + 2).unsqueeze(0)  # RoBERTa: past padding_idx 1
        x = self.word(ids) + self.pos(positions) + self.typ(torch.zeros_like(ids))
        x = F.dropout(self.ln(x), self.p, self.training)
        bias = (1.0 - mask[:, None, None, :]) * torch.finfo(torch.float32).min
        for layer in self.layers:
            x = layer(x, bias)
        z = torch.tanh(self.dense(F.dropout(x[:, 0], self.p, self.training)))
        return self.out_proj(F.dropout(z, self.p, self.training))


def build(a):
    torch.manual_seed(0)
    model = Encoder(a)
    if a.mode == "lora":
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in model.layers:
            layer.query = LoraLinear(layer.query, 8, 16, 0.1)
            layer.value = LoraLinear(layer.value, 8, 16, 0.1)
        for m in (model.dense, model.out_proj):
            for p in m.parameters():
                p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias")
             and "ln" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (
        n.endswith("bias") or "ln" in n)]
    lr = 5e-4 if a.mode == "lora" else 2e-5
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, a.vocab, (a.batch, a.seq), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    labels = torch.randint(0, 2, (a.batch,), generator=g)
    mask = torch.ones(a.batch, a.seq)
    return model, params, opt, ids, labels, mask


def nbytes(t):
    return t.numel() * t.element_size()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["lora", "full"], required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    for name, default in [("hidden", 128), ("layers", 2), ("heads", 4), ("ffn", 512),
                          ("vocab", 50265), ("batch", 16), ("seq", 64)]:
        ap.add_argument("--" + name, type=int, default=default)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, params, opt, ids, labels, mask = build(a)
    model.train()
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr() if hasattr(t, "untyped_storage") else t.data_ptr()
        if t.data_ptr() not in param_ptrs:
            saved[ptr] = max(saved.get(ptr, 0), nbytes(t))
        return t

    def step(measure):
        ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if measure else None
        if ctx:
            ctx.__enter__()
        loss = F.cross_entropy(model(ids, mask), labels)
        if ctx:
            ctx.__exit__(None, None, None)
        loss.backward()
        grads = sum(nbytes(p.grad) for p in params if p.grad is not None)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return grads

    for _ in range(a.warmup):
        step(False)
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step(False)
        times.append((time.perf_counter() - t0) * 1000)
    grads = step(True)
    trainable = sum(nbytes(p) for p in params)
    frozen = sum(nbytes(p) for p in model.parameters() if not p.requires_grad)
    optim = sum(nbytes(v) for s in opt.state.values() for v in s.values()
                if torch.is_tensor(v) and v.numel() > 1)
    peak = {"weights": frozen, "trainable": trainable, "grads": grads, "optimizer": optim,
            "activations": sum(saved.values())}
    peak["total"] = sum(peak.values())
    print(json.dumps({
        "mode": a.mode,
        "medianMs": statistics.median(times),
        "stepsMs": times,
        "peak": peak,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
