"""Make a BERT cross-encoder checkpoint with transformers, and its logits for some pairs.

Usage: make_cross_encoder.py ENCODER_DIR OUT_DIR

The checkpoint is a `BertForSequenceClassification` with one label, as the cross-encoders of
sentence-transformers are: the encoder's weights from ENCODER_DIR (all-MiniLM-L6-v2), its pooler,
and a classifier head drawn with seed 0. It is saved to OUT_DIR (config.json,
model.safetensors, tokenizer.json), and the logits transformers computes for each pair are
printed as JSON, with the versions that computed them: our ONNX export of the checkpoint must
give the same.
"""

import json
import sys

import tokenizers
import torch
import transformers
from transformers import AutoTokenizer, BertForSequenceClassification

PAIRS = [
    ("How does Kafka keep events in order?",
     "Kafka keeps the events of one key in order, partition by partition."),
    ("How does Kafka keep events in order?",
     "The borrow checker enforces ownership at compile time."),
    ("What is a vector database?", "Qdrant stores embeddings and searches them by similarity."),
    ("Why fine-tune a model on my own writing?",
     "A model fine-tuned on an author's articles writes in the author's voice. " * 60),
    ("", "An empty query still makes a pair."),
]


def main() -> None:
    encoder, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(encoder, num_labels=1)
    # A head of unit scale, so that the logits of different pairs differ by more than rounding.
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    tokenizer.save_pretrained(out)
    queries = [q for q, _ in PAIRS]
    passages = [p for _, p in PAIRS]
    batch = tokenizer(queries, passages, padding=True, truncation="longest_first",
                      max_length=512, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[:, 0].tolist()
    print(json.dumps({
        "pairs": [list(p) for p in PAIRS],
        "logits": logits,
        "tokens": [int(n) for n in batch["attention_mask"].sum(dim=1)],
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }))


if __name__ == "__main__":
    main()
