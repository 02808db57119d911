"""Reference data of the GGUF import tests, made once by the real libraries and committed.

Two environments (both made outside the repository; see README.md beside this file):
  gguf     : gguf 0.19.0, numpy 2.2.6, transformers 4.57.1, tokenizers 0.22.2 (no torch)
  torch    : Debian's torch 1.13.1, transformers 4.37.2, numpy 1.x (the tests' torch-venv)

  GGUF_PY=.../gguf-venv/bin/python TORCH_PY=.../torch-venv/bin/python \
    python3 make_reference.py SMOLLM2.gguf CORPUS.json

Writes, beside this file:
  types.gguf, types.json         one tensor of each supported type, and the sha256 of its
                                 dequantization by `gguf.quants.dequantize`
  smollm2_tensors.json           the same for every tensor of the SmolLM2 file
  tiny-llama.gguf, tiny-qwen2.gguf, tiny-llama-spm.gguf
                                 small random models written by the gguf package (llama's q/k
                                 permuted as llama.cpp's converter does), with their tokenizers
  tiny_logits.json               logits of the tiny models' original Hugging Face weights
                                 (transformers, before GGUF), on fixed ids
  tokenizer_ids.json             token ids of transformers' own GGUF tokenizer conversion on
                                 prose, code, digits and emoji (add_special_tokens=False)
  smollm2_logits.json            logits of transformers on SmolLM2 dequantized by the gguf
                                 package and un-permuted (the checkpoint an import must equal)
"""

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def gguf_part(smollm2, corpus):
    import hashlib

    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as T

    rng = np.random.default_rng(7)

    def sha(values):
        return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()

    # 1. Every tensor of the SmolLM2 file.
    reader = gguf.GGUFReader(smollm2)
    rows = []
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        rows.append({"name": t.name, "type": t.tensor_type.name, "dims": [int(d) for d in t.shape],
                     "sha256": sha(values)})
    json.dump({"file": os.path.basename(smollm2), "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
               "tensors": rows}, open(os.path.join(HERE, "smollm2_tensors.json"), "w"), indent=1)

    # 2. One tensor of each type: 2 rows of 512.
    path = os.path.join(HERE, "types.gguf")
    w = gguf.GGUFWriter(path, arch="test")
    expected = {}
    data = rng.standard_normal((2, 512)).astype(np.float32)
    for qtype in [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]:
        q = gguf.quants.quantize(data, qtype)
        w.add_tensor(f"t.{qtype.name}", q, raw_dtype=qtype)
        expected[qtype.name] = q
    # The K-quants have no quantizer in the package: random blocks with sane f16 scales.
    for qtype in [T.Q4_K, T.Q5_K, T.Q6_K]:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(2, 512 // block * size), dtype=np.uint8)
        blocks = raw.reshape(-1, size)
        scales = rng.uniform(-0.05, 0.05, size=(blocks.shape[0], 2)).astype(np.float16)
        if qtype == T.Q6_K:
            blocks[:, size - 2:] = scales[:, :1].view(np.uint8)
        else:
            blocks[:, 0:4] = scales.view(np.uint8)
        w.add_tensor(f"t.{qtype.name}", raw, raw_dtype=qtype)
        expected[qtype.name] = raw
    w.add_string("general.name", "every type")
    w.add_array("test.array.nested", [[1, 2], [3]])
    w.add_array("test.array.floats", [0.5, -1.25])
    w.add_int8("test.i8", -3)
    w.add_uint16("test.u16", 65535)
    w.add_int16("test.i16", -32768)
    w.add_int64("test.i64", -(2**40))
    w.add_float64("test.f64", 2.5)
    w.add_bool("test.bool", True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    types = {}
    for t in gguf.GGUFReader(path).tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        types[t.name] = {"sha256": sha(values), "first": [float(x) for x in values.reshape(-1)[:4]]}
    json.dump(types, open(os.path.join(HERE, "types.json"), "w"), indent=1)

    # 3. Tiny models, with their original weights kept for the logits.
    tiny_tokens, tiny_merges = byte_level_vocabulary()
    for arch, pre in [("llama", "llama-bpe"), ("qwen2", "qwen2")]:
        tiny_model(gguf, np, rng, arch, pre, tiny_tokens, tiny_merges)
    tiny_spm(gguf, np)

    # 4. transformers' own tokenizer conversion, on the corpus and on hard cases.
    texts = hard_texts()
    articles = json.load(open(corpus))
    for a in articles[:12]:
        texts.append(a["content"]["Content"][:1500])
    import transformers.modeling_gguf_pytorch_utils as m
    m.is_torch_available = lambda: True  # the tokenizer half of the loader needs no torch
    from transformers import AutoTokenizer
    out = {"transformers": __import__("transformers").__version__, "texts": texts, "files": {}}
    for path in [smollm2, os.path.join(HERE, "tiny-llama.gguf"), os.path.join(HERE, "tiny-qwen2.gguf"),
                 os.path.join(HERE, "tiny-llama-spm.gguf")]:
        tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
        out["files"][os.path.basename(path)] = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        if path == smollm2:
            # transformers' converter ignores `tokenizer.ggml.pre`: for a Llama-architecture file it
            # splits with GPT-2's regex alone. SmolLM2's own tokenizer.json (and llama.cpp's
            # `smollm`) isolate digits first, which changes whitespace before a digit. Its pipeline,
            # on the vocabulary and merges transformers converted:
            from tokenizers import pre_tokenizers
            backend = tok.backend_tokenizer
            backend.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
            out["smollm_pre_tokenizer"] = [backend.encode(t, add_special_tokens=False).ids for t in texts]
    json.dump(out, open(os.path.join(HERE, "tokenizer_ids.json"), "w"))


def hard_texts():
    return [
        "Hello world! It's 2026; the 12345th event costs $3.50 (about 1,234,567.89 in total).",
        "def fold_events(ledger: list[Event]) -> dict[str, int]:\n    return {e.id: e.offset for e in ledger}\n",
        "Emoji 🚀🔥 and accents: café, naïve, Ωμέγα, 日本語のテキスト, عربى.",
        "   leading spaces,\ttabs\n\n\nand blank lines   ",
        "<|im_start|>user\nWhat is event sourcing?<|im_end|>\n",
        "CamelCaseIdentifier snake_case_name kebab-case-name SCREAMING_CASE 0x1F2E 3.14159e-10",
    ]


def byte_level_vocabulary():
    # GPT-2's bytes-to-unicode table, then a few merges.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + chars
    merges = []
    for pair in ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "r e", "a t", "e n", "Ġ w", "o r",
                 "Ġ o", "e s", "i s", "Ġ c", "e d", "Ġt h", "1 2"]:
        left, right = pair.split(" ")
        merged = left + right
        merges.append(pair)
        if merged not in tokens:
            tokens.append(merged)
    return tokens, merges


def permute(w, n_head):
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_model(gguf, np, rng, arch, pre, tokens, merges):
    from gguf import GGMLQuantizationType as T

    hidden, layers, heads, kv_heads, ffn = 64, 2, 4, 2, 128
    vocab = len(tokens)
    hd = hidden // heads
    hf = {}

    def param(name, shape, qtype=T.F32, scale=0.08):
        values = (rng.standard_normal(shape) * scale).astype(np.float32)
        if qtype != T.F32:
            values = gguf.quants.dequantize(gguf.quants.quantize(values, qtype), qtype).reshape(shape)
        hf[name] = (values, qtype)
        return values

    param("model.embed_tokens.weight", (vocab, hidden), T.F32, 0.5)
    param("model.norm.weight", (hidden,), T.F32, 0.1)
    hf["model.norm.weight"] = (hf["model.norm.weight"][0] + 1.0, T.F32)
    if arch == "qwen2":
        param("lm_head.weight", (vocab, hidden), T.F16, 0.2)
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ["input_layernorm.weight", "post_attention_layernorm.weight"]:
            hf[p + n] = ((1.0 + rng.standard_normal(hidden) * 0.1).astype(np.float32), T.F32)
        param(p + "self_attn.q_proj.weight", (hidden, hidden), T.Q8_0)
        param(p + "self_attn.k_proj.weight", (kv_heads * hd, hidden), T.F16)
        param(p + "self_attn.v_proj.weight", (kv_heads * hd, hidden), T.Q8_0)
        param(p + "self_attn.o_proj.weight", (hidden, hidden), T.F32)
        param(p + "mlp.gate_proj.weight", (ffn, hidden), T.Q8_0)
        param(p + "mlp.up_proj.weight", (ffn, hidden), T.F32)
        param(p + "mlp.down_proj.weight", (hidden, ffn), T.Q8_0)
        if arch == "qwen2":
            param(p + "self_attn.q_proj.bias", (hidden,), T.F32, 0.1)
            param(p + "self_attn.k_proj.bias", (kv_heads * hd,), T.F32, 0.1)
            param(p + "self_attn.v_proj.bias", (kv_heads * hd,), T.F32, 0.1)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight", "self_attn.q_proj.bias": "attn_q.bias",
             "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias"}
    w = gguf.GGUFWriter(os.path.join(HERE, f"tiny-{arch}.gguf"), arch=arch)
    w.add_name(f"tiny {arch}")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0 if arch == "llama" else 1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    for name, (values, qtype) in hf.items():
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            gname = f"blk.{i}.{parts[rest]}"
        else:
            gname = names[name]
        stored = values
        if arch == "llama" and rest_is(name, "q_proj.weight"):
            stored = permute(values, heads)
        if arch == "llama" and rest_is(name, "k_proj.weight"):
            stored = permute(values, kv_heads)
        w.add_tensor(gname, gguf.quants.quantize(np.ascontiguousarray(stored), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # The original weights, for transformers' logits.
    folder = os.path.join(tempfile.gettempdir(), f"twin-tiny-{arch}")
    os.makedirs(folder, exist_ok=True)
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, (v, _) in hf.items()}, os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})
    config = {"model_type": arch, "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": ffn,
              "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
              "rope_theta": 10000.0 if arch == "llama" else 1000000.0,
              "tie_word_embeddings": arch == "llama", "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 2}
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))


def rest_is(name, suffix):
    return name.endswith(suffix)


def tiny_spm(gguf, np):
    # A SentencePiece vocabulary: unk, bos, eos, 256 byte pieces, then pieces with scores.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    pieces = ["▁", "e", "t", "h", "a", "o", "n", "s", "i", "r", "l", "d", "c", "u", "w", "▁t", "he", "▁the",
              "in", "▁a", "er", "on", "▁s", "re", "at", "en", "▁w", "or", "▁o", "es", "is", "▁c", "ed", "▁is",
              "ing", "▁in", "▁and", "an", "nd", "nt", "ent", "▁event", "ev", "▁ev", "▁re", "▁on"]
    for i, p in enumerate(pieces):
        tokens.append(p)
        types.append(1)
        scores.append(-float(i))
    w = gguf.GGUFWriter(os.path.join(HERE, "tiny-llama-spm.gguf"), arch="llama")
    w.add_name("tiny sentencepiece")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def torch_part(smollm2_json):
    """transformers' logits: tiny models from their original weights; SmolLM2 from the gguf
    package's dequantization."""
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ids = [[5, 77, 120, 3, 250, 9, 44, 180, 61, 2]]
    out = {"transformers": transformers.__version__, "torch": torch.__version__, "ids": ids[0], "models": {}}
    for arch in ["llama", "qwen2"]:
        folder = os.path.join(tempfile.gettempdir(), f"twin-tiny-{arch}")
        model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(torch.tensor(ids)).logits[0]
        out["models"][f"tiny-{arch}.gguf"] = logits.tolist()
    json.dump(out, open(os.path.join(HERE, "tiny_logits.json"), "w"))

    folder = json.load(open(smollm2_json))["folder"]
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    ids = [[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 2]]
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits[0]
    top = torch.topk(logits, 5, dim=-1)
    json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "ids": ids[0],
               "last": logits[-1].tolist()[:2048], "argmax": logits.argmax(-1).tolist(),
               "top5": top.indices.tolist(), "top5_logits": top.values.tolist(),
               "rows_sha": [float(logits[i].sum()) for i in range(logits.shape[0])]},
              open(os.path.join(HERE, "smollm2_logits.json"), "w"))


def smollm2_folder(smollm2):
    """SmolLM2 as a Hugging Face folder, by the gguf package alone (STACK.md's recipe)."""
    import numpy as np
    import gguf
    from safetensors.numpy import save_file

    r = gguf.GGUFReader(smollm2)
    folder = os.path.join(tempfile.gettempdir(), "twin-smollm2-reference")
    os.makedirs(folder, exist_ok=True)
    parts = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
             "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
             "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
             "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
             "ffn_down.weight": "mlp.down_proj.weight"}
    tensors = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        if t.name.startswith("blk."):
            _, i, rest = t.name.split(".", 2)
            name = f"model.layers.{i}.{parts[rest]}"
            n_head = {"attn_q.weight": 9, "attn_k.weight": 3}.get(rest)
            if n_head:
                w = w.reshape(n_head, w.shape[0] // n_head // 2, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)
        else:
            name = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}[t.name]
        tensors[name] = np.ascontiguousarray(w, dtype=np.float32)
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576,
              "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
              "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
              "rope_theta": 100000.0, "tie_word_embeddings": True, "hidden_act": "silu",
              "bos_token_id": 1, "eos_token_id": 2}
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))
    return folder


if __name__ == "__main__":
    if sys.argv[1] == "--torch":
        torch_part(sys.argv[2])
    elif sys.argv[1] == "--gguf":
        gguf_part(sys.argv[2], sys.argv[3])
        folder = smollm2_folder(sys.argv[2])
        json.dump({"folder": folder}, open(os.path.join(tempfile.gettempdir(), "twin-smollm2.json"), "w"))
    else:
        smollm2, corpus = sys.argv[1:3]
        subprocess.run([os.environ["GGUF_PY"], __file__, "--gguf", smollm2, corpus], check=True)
        subprocess.run([os.environ["TORCH_PY"], __file__, "--torch",
                        os.path.join(tempfile.gettempdir(), "twin-smollm2.json")], check=True)
