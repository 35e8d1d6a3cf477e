#!/usr/bin/env python3
"""Check that a model folder written by @ruc/peft (a run's model/, or `deno task merge` output)
opens the way Hugging Face opens it, with the logits this toolkit computed.

usage: python3 tests/tasks/check_hf_model.py MODEL_DIR EXPECTED.json

EXPECTED.json (written by tests/tasks/output_test.ts): {"sentences": [...], "ids": [[...]],
"mask": [[...]], "logits": [[...]]}.

With transformers installed: AutoConfig / AutoModelForSequenceClassification.from_pretrained
(no missing, unexpected or mismatched keys), AutoTokenizer gives the same ids, and the logits
agree. Without it (this repo's build machines have torch only): the same file checks are done by
hand -- config.json's architectures and labels, safetensors metadata format "pt", the tensor
names RobertaForSequenceClassification's state_dict has (modeling_roberta: `roberta.` backbone
without pooler, `classifier.dense` + `classifier.out_proj`) -- and the logits come from an
independent float64 RoBERTa forward written here in torch.

Exit status 0 when every check passes; 1 with the failed check on stderr.
"""
import json
import math
import os
import struct
import sys

import torch


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    meta = header.pop("__metadata__", {})
    kinds = {"F32": torch.float32, "F16": torch.float16, "I32": torch.int32}
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        t = torch.frombuffer(bytearray(body[a:b]), dtype=kinds[info["dtype"]])
        out[name] = t.reshape(info["shape"]).double()
    return meta, out


def roberta_keys(c):
    keys = ["roberta.embeddings." + n for n in
            ["word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
             "LayerNorm.weight", "LayerNorm.bias"]]
    for i in range(c["num_hidden_layers"]):
        p = f"roberta.encoder.layer.{i}."
        for m in ["attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                  "output.dense", "output.LayerNorm"]:
            keys += [p + m + ".weight", p + m + ".bias"]
    keys += ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
             "classifier.out_proj.bias"]
    return sorted(keys)


def roberta_logits(c, w, ids, mask):
    h, heads, eps = c["hidden_size"], c["num_attention_heads"], c.get("layer_norm_eps", 1e-5)
    pad = c.get("pad_token_id", 1)
    b, t = ids.shape
    real = (ids != pad).long()
    positions = torch.cumsum(real, 1) * real + pad
    e = "roberta.embeddings."
    x = (w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][positions]
         + w[e + "token_type_embeddings.weight"][0])

    def ln(name, y):
        return torch.nn.functional.layer_norm(y, (h,), w[name + ".weight"], w[name + ".bias"], eps)

    def lin(name, y):
        return y @ w[name + ".weight"].T + w[name + ".bias"]

    x = ln(e + "LayerNorm", x)
    hd = h // heads
    bias = (1 - mask)[:, None, None, :] * torch.finfo(torch.float64).min
    for i in range(c["num_hidden_layers"]):
        p = f"roberta.encoder.layer.{i}."

        def split(y):
            return y.view(b, t, heads, hd).transpose(1, 2)

        q, k, v = (split(lin(p + "attention.self." + n, x)) for n in ["query", "key", "value"])
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, -1) @ v
        x1 = ln(p + "attention.output.LayerNorm",
                lin(p + "attention.output.dense", att.transpose(1, 2).reshape(b, t, h)) + x)
        inter = torch.nn.functional.gelu(lin(p + "intermediate.dense", x1))
        x = ln(p + "output.LayerNorm", lin(p + "output.dense", inter) + x1)
    return lin("classifier.out_proj", torch.tanh(lin("classifier.dense", x[:, 0])))


def check_by_hand(model_dir, expected):
    c = json.load(open(os.path.join(model_dir, "config.json")))
    if c.get("architectures") != ["RobertaForSequenceClassification"]:
        fail(f"architectures {c.get('architectures')}")
    id2label = c.get("id2label") or {}
    if sorted(int(k) for k in id2label) != list(range(len(id2label))):
        fail(f"id2label keys {list(id2label)} are not 0..n-1")
    if {v: int(k) for k, v in id2label.items()} != c.get("label2id"):
        fail("label2id is not the inverse of id2label")
    if "num_labels" in c and c["num_labels"] != len(id2label):
        fail("num_labels disagrees with id2label")
    meta, w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    if meta.get("format") != "pt":
        fail(f"safetensors metadata format {meta.get('format')!r}; transformers needs 'pt'")
    want = roberta_keys(c)
    if sorted(w) != want:
        fail(f"tensor names differ: missing {sorted(set(want) - set(w))}, "
             f"unexpected {sorted(set(w) - set(want))}")
    if w["classifier.out_proj.weight"].shape[0] != len(id2label):
        fail("the head's rows differ from the label count")
    ids = torch.tensor(expected["ids"])
    mask = torch.tensor(expected["mask"], dtype=torch.float64)
    return roberta_logits(c, w, ids, mask)


def check_with_transformers(model_dir, expected):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model, info = AutoModelForSequenceClassification.from_pretrained(
        model_dir, output_loading_info=True)
    for kind in ["missing_keys", "unexpected_keys", "mismatched_keys"]:
        if info.get(kind):
            fail(f"{kind}: {info[kind]}")
    tok = AutoTokenizer.from_pretrained(model_dir)
    for s, ids in zip(expected["sentences"], expected["ids"]):
        got = tok(s)["input_ids"]
        if got != ids[:len(got)]:
            fail(f"tokenizer ids for {s!r}: {got}, the toolkit's {ids}")
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(expected["ids"]),
                    attention_mask=torch.tensor(expected["mask"])).logits
    return out.double()


def main():
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        sys.exit(2)
    model_dir, expected_file = sys.argv[1], sys.argv[2]
    expected = json.load(open(expected_file))
    try:
        import transformers  # noqa: F401
        logits, how = check_with_transformers(model_dir, expected), "transformers from_pretrained"
    except ImportError:
        logits, how = check_by_hand(model_dir, expected), "by hand (no transformers installed)"
    want = torch.tensor(expected["logits"], dtype=torch.float64).reshape(logits.shape)
    worst = (logits - want).abs().max().item()
    if worst > 1e-4:
        fail(f"logits differ by {worst:.3e} (> 1e-4)")
    print(f"ok: {model_dir} opens as RobertaForSequenceClassification ({how}); "
          f"logits within {worst:.1e}")


if __name__ == "__main__":
    main()
