"""Makes the small random checkpoints of training/tests/data and their reference logits.

Run once with Debian's python3-torch 1.13.1 and transformers 4.37.2 (see README.md here):
    VENV/bin/python training/tests/data/make_checkpoints.py training/tests/data
Every parameter is drawn at random (norm weights and biases included), so that a missed term
shows in the logits.
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

OUT = sys.argv[1]
VOCAB = 512

TEXT = [
    "The twin writes like its author because it learned from the author's own articles.",
    "Retrieval finds the passages that answer a question; the model writes the answer.",
    "Kafka keeps the log, ClickHouse keeps the warehouse and Qdrant keeps the vectors.",
    "Fine-tuning with LoRA trains two small matrices beside each frozen weight.",
    "A snapshot pins the log positions, so a dataset can always be built again.",
    "Instruction: summarise the article. Answer: the article explains event sourcing.",
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request. ### Instruction: What do you think about the warehouse? "
    "### Response: In my experience the warehouse is a projection that a replay rebuilds.",
    "That is why vector search should be measured before it is trusted.",
    "Tokenizers, snapshots, retrieval and evaluation work on one laptop first and on a "
    "cluster later; event sourcing keeps every change as a fact on the log.",
] * 20


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXT, trainer)
    return tok


def randomise(model, scale):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


def make(name, config, shard=None, chat_template=None):
    torch.manual_seed(hash(name) % 1000)
    model = AutoModelForCausalLM.from_config(config)
    randomise(model, 0.1)
    model.eval()
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    kwargs = {"safe_serialization": True}
    if shard:
        kwargs["max_shard_size"] = shard
    model.save_pretrained(folder, **kwargs)
    TOK.save(os.path.join(folder, "tokenizer.json"))
    tc = {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "model_max_length": 256}
    if chat_template:
        tc["chat_template"] = chat_template
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=1)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, config.vocab_size, (2, 20), generator=g)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    save_file(
        {"input_ids": ids.to(torch.int64).contiguous(), "logits": logits.float().contiguous()},
        os.path.join(folder, "reference.safetensors"),
    )
    print(name, "max |logit|", logits.abs().max().item())


TOK = tokenizer()
common = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,
    bos_token_id=0,
    eos_token_id=0,
)
make("llama", LlamaConfig(**common, rope_theta=10000.0, rms_norm_eps=1e-5), shard="150KB")
make(
    "llama-rope-linear",
    LlamaConfig(**common, rope_scaling={"type": "linear", "factor": 2.0}, tie_word_embeddings=True),
)
make("mistral", MistralConfig(**common, sliding_window=8, rope_theta=1e6))
make(
    "qwen2",
    Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1e6),
    chat_template="{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
)
make(
    "gpt2",
    GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256, initializer_range=0.2,
        bos_token_id=0, eos_token_id=0,
    ),
)
with open(os.path.join(OUT, "VERSIONS"), "w") as f:
    f.write(f"torch {torch.__version__}\ntransformers {transformers.__version__}\n")
