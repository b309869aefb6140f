"""An independent reference for the embedding engine's tests: all-MiniLM-L6-v2 in plain NumPy.

No torch, no `tokenizers`, no `safetensors` package: the weights are read from the safetensors
layout (8-byte little-endian header length, a JSON header, raw little-endian data) and the
token ids come from tokenizer.json's WordPiece vocabulary with BERT's basic tokenizer
(lowercase, strip accents, split on whitespace and punctuation). Good enough for the short
ASCII sentences the tests use; it is not a general tokenizer.

Usage: python3 minilm_numpy.py MODEL_DIR
"""

import json
import math
import struct
import sys
import unicodedata

import numpy as np


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": "<f4", "I64": "<i8"}
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return tensors


def basic_tokens(text):
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    out, word = [], ""
    for c in text:
        if c.isspace():
            if word:
                out.append(word)
            word = ""
        elif unicodedata.category(c).startswith("P") or c in "$+<=>^`|~":
            if word:
                out.append(word)
            out.append(c)
            word = ""
        else:
            word += c
    if word:
        out.append(word)
    return out


def wordpiece(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(vocab[piece])
                break
            end -= 1
        else:
            return [vocab["[UNK]"]]
        start = end
    return pieces


def encode(text, vocab):
    ids = [vocab["[CLS]"]]
    for w in basic_tokens(text):
        ids += wordpiece(w, vocab)
    return ids[:255] + [vocab["[SEP]"]]


def layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def embed(ids, t, cfg):
    x = np.asarray(ids)
    h = (
        t["embeddings.word_embeddings.weight"][x]
        + t["embeddings.position_embeddings.weight"][: len(x)]
        + t["embeddings.token_type_embeddings.weight"][0]
    ).astype(np.float64)
    h = layer_norm(h, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
    heads = cfg["num_attention_heads"]
    d = cfg["hidden_size"] // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda v, n: v @ t[p + n + ".weight"].T.astype(np.float64) + t[p + n + ".bias"]
        q = lin(h, "attention.self.query").reshape(-1, heads, d).transpose(1, 0, 2)
        k = lin(h, "attention.self.key").reshape(-1, heads, d).transpose(1, 0, 2)
        v = lin(h, "attention.self.value").reshape(-1, heads, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(len(x), -1)
        h = layer_norm(lin(a, "attention.output.dense") + h,
                       t[p + "attention.output.LayerNorm.weight"], t[p + "attention.output.LayerNorm.bias"])
        f = lin(gelu(lin(h, "intermediate.dense")), "output.dense")
        h = layer_norm(f + h, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"])
    pooled = h.mean(0)
    return pooled / np.linalg.norm(pooled)


def main():
    model_dir = sys.argv[1]
    cfg = json.load(open(f"{model_dir}/config.json"))
    vocab = json.load(open(f"{model_dir}/tokenizer.json"))["model"]["vocab"]
    t = load_safetensors(f"{model_dir}/model.safetensors")
    t = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in t.items()}
    pairs = [
        ("This is an example sentence", "Each sentence is converted"),
        ("That is a happy person", "That is a happy dog"),
        ("That is a happy person", "That is a very happy person"),
        ("That is a happy person", "Today is a sunny day"),
        ("", "That is a happy person"),
    ]
    cache = {}
    for a, b in pairs:
        for s in (a, b):
            if s not in cache:
                cache[s] = embed(encode(s, vocab), t, cfg)
                print(f"{s!r}: ids {encode(s, vocab)} first5 {np.round(cache[s][:5], 6).tolist()}")
        print(f"cos({a!r}, {b!r}) = {float(cache[a] @ cache[b]):.6f}")


if __name__ == "__main__":
    main()
