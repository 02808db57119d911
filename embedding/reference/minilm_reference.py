#!/usr/bin/env python3
"""Reference embeddings for all-MiniLM-L6-v2, computed without ONNX Runtime or PyTorch.

An independent implementation of what sentence-transformers computes: a BERT encoder written
directly in numpy from the safetensors weights, mean pooling over the attention mask, and L2
normalisation. Tokenisation uses Hugging Face `tokenizers` with the model's tokenizer.json,
truncated to the model's 256 tokens, as sentence-transformers does.

    pip install numpy tokenizers
    python3 minilm_reference.py MODEL_DIR > ../testdata/minilm_reference.json

MODEL_DIR holds config.json, tokenizer.json and model.safetensors.
"""
import json
import math
import struct
import sys

import numpy as np
from tokenizers import Tokenizer

SENTENCES = [
    "This is an example sentence.",
    "Each sentence is converted to a vector.",
    "Streaming pipelines turn raw documents into features in near real time.",
    "I write about MLOps, LLM systems and production machine learning.",
    "fn main() {\n    println!(\"hello, world\");\n}",
    "Ünïcödé, emoji 🚀 and 𝗯𝗼𝗹𝗱 letters survive tokenisation.",
    "a",
    " ".join(["The long tail of a document keeps going well past the model's window."] * 30),
]


def load_safetensors(path):
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = {"F32": np.float32, "I64": np.int64}[info["dtype"]]
        tensors[name.removeprefix("bert.")] = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
    return tensors


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def encode(ids, w, config):
    """Last hidden state of one unpadded sequence, in float64 for a tight reference."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = hidden // heads
    eps = config["layer_norm_eps"]
    t = lambda name: w[name].astype(np.float64)
    n = len(ids)
    x = t("embeddings.word_embeddings.weight")[ids]
    x = x + t("embeddings.position_embeddings.weight")[:n]
    x = x + t("embeddings.token_type_embeddings.weight")[0]
    x = layer_norm(x, t("embeddings.LayerNorm.weight"), t("embeddings.LayerNorm.bias"), eps)
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."
        linear = lambda v, name: v @ t(p + name + ".weight").T + t(p + name + ".bias")
        q = linear(x, "attention.self.query").reshape(n, heads, head_dim).transpose(1, 0, 2)
        k = linear(x, "attention.self.key").reshape(n, heads, head_dim).transpose(1, 0, 2)
        v = linear(x, "attention.self.value").reshape(n, heads, head_dim).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, hidden)
        attention = linear(context, "attention.output.dense")
        x = layer_norm(attention + x, t(p + "attention.output.LayerNorm.weight"), t(p + "attention.output.LayerNorm.bias"), eps)
        inner = gelu(linear(x, "intermediate.dense"))
        out = linear(inner, "output.dense")
        x = layer_norm(out + x, t(p + "output.LayerNorm.weight"), t(p + "output.LayerNorm.bias"), eps)
    return x


def main():
    model_dir = sys.argv[1]
    config = json.load(open(f"{model_dir}/config.json"))
    weights = load_safetensors(f"{model_dir}/model.safetensors")
    tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=256)
    cases = []
    for sentence in SENTENCES:
        ids = tokenizer.encode(sentence).ids
        hidden = encode(np.array(ids), weights, config)
        pooled = hidden.mean(0)  # no padding: every token counts
        vector = pooled / np.linalg.norm(pooled)
        cases.append({"text": sentence, "token_ids": ids, "embedding": [round(float(v), 8) for v in vector]})
    json.dump({"model": "sentence-transformers/all-MiniLM-L6-v2", "max_tokens": 256, "cases": cases}, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
