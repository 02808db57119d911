#!/usr/bin/env python3
"""Python baseline for the embedding benchmark: the way fastembed runs an ONNX embedding model.

onnxruntime + tokenizers from PyPI, batches of 32 (or BATCH) in the given order, padded to the longest in
the batch, truncated to 256 tokens, mean pooling over the attention mask and L2 normalisation in
numpy. Same ONNX file and thread count as the Rust side.

    python3 baseline.py MODEL.onnx TOKENIZER.json CHUNKS.json THREADS OUT.npy [BATCH]

Prints {"seconds": ..., "chunks": ...} as JSON; writes the embeddings to OUT.npy.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

BATCH = 32


def main():
    model, tokenizer_path, chunks_path, threads, out = sys.argv[1:6]
    batch = int(sys.argv[6]) if len(sys.argv) > 6 else BATCH
    chunks = json.load(open(chunks_path))
    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.enable_truncation(max_length=256)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def embed(texts):
        encoded = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        types = np.array([e.type_ids for e in encoded], dtype=np.int64)
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    embed(chunks[:batch])  # warm-up, as the Rust side does
    start = time.perf_counter()
    vectors = [embed(chunks[i : i + batch]) for i in range(0, len(chunks), batch)]
    seconds = time.perf_counter() - start
    np.save(out, np.concatenate(vectors))
    print(json.dumps({"seconds": seconds, "chunks": len(chunks)}))


if __name__ == "__main__":
    main()
