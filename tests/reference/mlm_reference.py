"""Independent float64 PyTorch reference of RobertaForMaskedLM / BertForMaskedLM's loss.

Written from Hugging Face's modeling_roberta.py / modeling_bert.py semantics (not from our TS):
backbone → lm head (dense → GELU(erf) → LayerNorm → word_embeddingsᵀ + bias, the decoder tied to
the word embeddings) → cross-entropy over positions whose label is not -100. Writes, per kind,
fixtures/mlm/<kind>/{config.json, model.safetensors} and fixtures/mlm/<kind>.json with the batch,
the loss, the logits of the first masked rows and gradients of the tied embedding and the head.

Run by hand: /usr/bin/python3 tests/reference/mlm_reference.py (needs python3-torch).
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import write_safetensors  # noqa: E402  (the fixtures' one writer)

torch.set_default_dtype(torch.float64)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "mlm")

V, H, FF, LAYERS, HEADS, T, B = 40, 16, 32, 2, 2, 10, 3
EPS = 1e-5


def make(kind, seed):
    g = torch.Generator().manual_seed(seed)
    base = kind
    max_pos = T + 2 if kind == "roberta" else T
    types = 1 if kind == "roberta" else 2
    w = {}

    def normal(name, shape, std):
        w[name] = (torch.randn(*shape, generator=g) * std).float()

    def ln(name):
        normal(name + ".weight", [H], 0.1)
        w[name + ".weight"] += 1
        normal(name + ".bias", [H], 0.05)

    def lin(name, o, i, std=0.3):
        normal(name + ".weight", [o, i], std)
        normal(name + ".bias", [o], 0.05)

    e = f"{base}.embeddings."
    normal(e + "word_embeddings.weight", [V, H], 0.5)
    normal(e + "position_embeddings.weight", [max_pos, H], 0.3)
    normal(e + "token_type_embeddings.weight", [types, H], 0.3)
    ln(e + "LayerNorm")
    for l in range(LAYERS):
        p = f"{base}.encoder.layer.{l}."
        for m in ("query", "key", "value"):
            lin(p + "attention.self." + m, H, H, 0.35)
        lin(p + "attention.output.dense", H, H)
        ln(p + "attention.output.LayerNorm")
        lin(p + "intermediate.dense", FF, H)
        lin(p + "output.dense", H, FF)
        ln(p + "output.LayerNorm")
    if kind == "roberta":
        lin("lm_head.dense", H, H)
        ln("lm_head.layer_norm")
        normal("lm_head.bias", [V], 0.1)
    else:
        lin("cls.predictions.transform.dense", H, H)
        ln("cls.predictions.transform.LayerNorm")
        normal("cls.predictions.bias", [V], 0.1)
    config = {
        "architectures": ["RobertaForMaskedLM" if kind == "roberta" else "BertForMaskedLM"],
        "model_type": kind, "vocab_size": V, "hidden_size": H, "intermediate_size": FF,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "max_position_embeddings": max_pos, "type_vocab_size": types, "layer_norm_eps": EPS,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "hidden_act": "gelu",
        "initializer_range": 0.02, "pad_token_id": 1 if kind == "roberta" else 0,
    }
    return w, config


def forward(kind, p, ids, labels):
    b, t = ids.shape
    e = f"{kind}.embeddings."
    pad = 1 if kind == "roberta" else 0
    if kind == "roberta":
        real = (ids != pad).long()
        positions = torch.cumsum(real, 1) * real + pad
    else:
        positions = torch.arange(t).expand(b, t)
    mask = (ids != pad).double()
    x = (p[e + "word_embeddings.weight"][ids] + p[e + "position_embeddings.weight"][positions]
         + p[e + "token_type_embeddings.weight"][0])
    F = torch.nn.functional
    x = F.layer_norm(x, (H,), p[e + "LayerNorm.weight"], p[e + "LayerNorm.bias"], EPS)
    hd = H // HEADS
    bias = (1 - mask)[:, None, None, :] * torch.finfo(torch.float64).min

    def lin(name, y):
        return y @ p[name + ".weight"].T + p[name + ".bias"]

    def norm(name, y):
        return F.layer_norm(y, (H,), p[name + ".weight"], p[name + ".bias"], EPS)

    for l in range(LAYERS):
        q = f"{kind}.encoder.layer.{l}."

        def heads(y):
            return y.view(b, t, HEADS, hd).transpose(1, 2)

        qs, ks, vs = (heads(lin(q + "attention.self." + m, x)) for m in ("query", "key", "value"))
        att = torch.softmax(qs @ ks.transpose(-1, -2) / math.sqrt(hd) + bias, -1) @ vs
        ctx = att.transpose(1, 2).reshape(b, t, H)
        x1 = norm(q + "attention.output.LayerNorm", lin(q + "attention.output.dense", ctx) + x)
        x = norm(q + "output.LayerNorm", lin(q + "output.dense", F.gelu(lin(q + "intermediate.dense", x1))) + x1)
    if kind == "roberta":
        dense, ln, hb = "lm_head.dense", "lm_head.layer_norm", "lm_head.bias"
    else:
        dense, ln = "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm"
        hb = "cls.predictions.bias"
    z = norm(ln, F.gelu(lin(dense, x)))
    logits = z @ p[e + "word_embeddings.weight"].T + p[hb]  # the decoder is tied
    flat = logits.reshape(b * t, V)
    loss = F.cross_entropy(flat, labels.reshape(-1), ignore_index=-100)
    return loss, flat


def main():
    os.makedirs(OUT, exist_ok=True)
    for kind, seed in (("roberta", 11), ("bert", 12)):
        w, config = make(kind, seed)
        d = os.path.join(OUT, kind)
        os.makedirs(d, exist_ok=True)
        write_safetensors(os.path.join(d, "model.safetensors"), {k: v.numpy() for k, v in w.items()})
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        g = torch.Generator().manual_seed(seed + 100)
        pad = config["pad_token_id"]
        ids = torch.randint(4, V, (B, T), generator=g)
        ids[2, 7:] = pad  # a padded row: padding is never selected, and masked out as keys
        labels = torch.full((B, T), -100, dtype=torch.long)
        for (r, c) in [(0, 1), (0, 4), (1, 0), (1, 5), (1, 9), (2, 3), (2, 6)]:
            labels[r, c] = ids[r, c]
            ids[r, c] = 3 if (r + c) % 3 else int(torch.randint(4, V, (1,), generator=g))
        p = {k: v.double().clone().requires_grad_(True) for k, v in w.items()}
        loss, flat = forward(kind, p, ids, labels)
        loss.backward()
        rows = [i for i, y in enumerate(labels.reshape(-1).tolist()) if y != -100]
        head_dense = "lm_head.dense.weight" if kind == "roberta" else "cls.predictions.transform.dense.weight"
        out = {
            "kind": kind,
            "ids": ids.reshape(-1).tolist(), "labels": labels.reshape(-1).tolist(), "b": B, "t": T,
            "loss": loss.item(),
            "maskedLogits": flat[rows].detach().reshape(-1).tolist(),
            "grads": {n: p[n].grad.reshape(-1).tolist() for n in (
                f"{kind}.embeddings.word_embeddings.weight", head_dense,
                "lm_head.bias" if kind == "roberta" else "cls.predictions.bias")},
        }
        with open(os.path.join(OUT, f"{kind}.json"), "w") as f:
            json.dump(out, f)
        print(kind, "loss", out["loss"])


if __name__ == "__main__":
    main()
