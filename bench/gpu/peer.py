"""The PyTorch side of the one-command GPU benchmark (bench/gpu/run.sh).

On the device machine: Hugging Face transformers' RobertaForSequenceClassification (random
weights, fp32, eager attention) with PEFT's LoRA r 8 (alpha 16, dropout 0.1) on query,value, and
the same model fully fine-tuned, at batch 32 x seq 128, roberta-base shape; torch.optim.AdamW;
one step = forward -> cross-entropy -> backward -> step -> zero_grad(set_to_none=True), timed
as steps back to back with one torch.cuda.synchronize() at the end (msPerStep, as our side) and
each step synchronized alone (syncedMs). Peak memory is torch.cuda.max_memory_allocated() over the timed
steps (everything the step holds: weights, grads, moments, activations). It also times matmul
4096x768 . 768x{768,3072} in fp32 (TF32 off, as our kernels are fp32).

With --small (or without transformers/PEFT, or without CUDA) it falls back to the plain PyTorch
model of bench/peers/enc_step.py at the small shape on the CPU, so the script is exercised
before any GPU time is spent; the JSON says which implementation and device ran.

Usage: python3 bench/gpu/peer.py --out FILE [--small]
"""

import argparse
import json
import os
import statistics
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def write(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def timed(fn, sync, steps, warmup):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def back_to_back(fn, sync, steps):
    """Wall time per call of `steps` calls waited for once at the end (as a training loop that
    reads the loss only at logging steps runs them: the queue never drains between steps)."""
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1000 / steps


def hf_model(mode, device, shape):
    from transformers import RobertaConfig, RobertaForSequenceClassification
    cfg = RobertaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                        intermediate_size=shape["ffn"], max_position_embeddings=shape["seq"] + 2,
                        type_vocab_size=1, num_labels=2)
    try:
        model = RobertaForSequenceClassification(cfg, attn_implementation="eager")
    except TypeError:  # older transformers: eager is the only implementation
        model = RobertaForSequenceClassification(cfg)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16,
                                                 lora_dropout=0.1,
                                                 target_modules=["query", "value"]))
    model = model.to(device).train()

    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits
    return model, forward


def plain_model(mode, shape):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "peers"))
    import enc_step
    a = argparse.Namespace(mode=mode, **shape)
    model, _, _, _, _, _ = enc_step.build(a)
    model.train()
    return model, model


def step_figure(mode, device, shape, use_hf, steps, warmup):
    torch.manual_seed(0)
    model, forward = hf_model(mode, device, shape) if use_hf else plain_model(mode, shape)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4 if mode == "lora" else 2e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, shape["vocab"], (shape["batch"], shape["seq"]), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    labels = torch.randint(0, 2, (shape["batch"],), generator=g)
    mask = torch.ones(shape["batch"], shape["seq"], dtype=torch.long)
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)

    def step():
        loss = F.cross_entropy(forward(ids, mask), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    synced = timed(step, sync, steps, warmup)
    ms = back_to_back(step, sync, steps)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    if peak is None:  # CPU: parameters, grads and moments, plus one step's saved activations
        saved = {}
        param_ptrs = {p.data_ptr() for p in model.parameters()}

        def pack(t):
            if t.data_ptr() not in param_ptrs:
                saved[t.data_ptr()] = t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(forward(ids, mask), labels)
        loss.backward()
        nb = lambda t: t.numel() * t.element_size()
        peak = (sum(nb(p) for p in model.parameters()) + sum(nb(p.grad) for p in params)
                + sum(nb(v) for s in opt.state.values() for v in s.values()
                      if torch.is_tensor(v) and v.numel() > 1) + sum(saved.values()))
        opt.zero_grad(set_to_none=True)
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return {"mode": mode, "msPerStep": ms, "syncedMs": synced, "peakBytes": peak}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--small", action="store_true")
    a = ap.parse_args()
    if torch is None:
        write(a.out, {"skipped": "torch is not installed for " + sys.executable})
        print("peer skipped: torch is not installed")
        return
    cuda = torch.cuda.is_available() and not a.small
    device = "cuda" if cuda else "cpu"
    if not cuda:
        torch.set_num_threads(2)
    try:
        import transformers  # noqa: F401
        import peft  # noqa: F401
        have_hf = True
    except ImportError:
        have_hf = False
    use_hf = have_hf and cuda
    small = {"hidden": 128, "layers": 2, "heads": 4, "ffn": 512, "vocab": 50265, "batch": 4,
             "seq": 32}
    base = {"hidden": 768, "layers": 12, "heads": 12, "ffn": 3072, "vocab": 50265, "batch": 32,
            "seq": 128}
    shape = base if cuda else small
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    out = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "implementation": ("transformers RobertaForSequenceClassification (eager, fp32)"
                           " + PEFT LoRA") if use_hf else "plain PyTorch (bench/peers/enc_step.py)",
        "shape": shape,
        "matmul": [],
        "steps": [],
    }
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    m, k = (4096, 768) if cuda else (512, 128)
    for n in ((768, 3072) if cuda else (128, 512)):
        x = torch.randn(m, k, device=device)
        w = torch.randn(k, n, device=device)
        ms = timed(lambda: x @ w, sync, 10 if cuda else 3, 2)
        out["matmul"].append({"name": f"matmul {m}×{k}·{k}×{n}", "ms": ms,
                              "gflops": 2 * m * n * k / ms / 1e6})
    for mode in ("lora", "full"):
        out["steps"].append(step_figure(mode, device, shape, use_hf, 5 if cuda else 3, 2))
        print(f"peer {mode}: {out['steps'][-1]['msPerStep']:.1f} ms/step")
    write(a.out, out)


if __name__ == "__main__":
    main()
