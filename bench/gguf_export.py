"""A tiny Hugging Face Llama (kdstudio's demo teacher) as a GGUF file llama.cpp serves.

    python bench/gguf_export.py MODEL_DIR OUT.gguf

Run it with the Python that has the `gguf` package (the llama-cpp-python venv of
bench/bench_llamacpp.py): it needs numpy and gguf only, no torch and no safetensors package
(the safetensors format is read directly: an 8-byte header length, a JSON header, raw data).

What it writes follows llama.cpp's convert_hf_to_gguf.py for `LlamaForCausalLM`: float32
tensors under llama.cpp's names, q and k projections permuted from Hugging Face's
rotate-half layout to llama.cpp's interleaved RoPE, the hyper-parameters under `llama.*`,
and the byte-level BPE tokenizer as a "gpt2" vocabulary (pieces, merges, special tokens as
control tokens, GPT-2 pre-tokenizer) with the tokenizer's chat template. The template
writes the bos token itself, so llama.cpp is told not to add another.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a float32 numpy array."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        buf = raw[base + a : base + b]
        if meta["dtype"] == "BF16":
            half = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            arr = half.view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=DTYPES[meta["dtype"]]).astype(np.float32)
        out[name] = arr.reshape(meta["shape"])
    return out


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotate-half q/k rows -> llama.cpp's interleaved pairs."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def export(model_dir: Path, out: Path) -> None:
    import gguf

    cfg = json.loads((model_dir / "config.json").read_text())
    tok_json = json.loads((model_dir / "tokenizer.json").read_text())
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    tensors = read_safetensors(model_dir / "model.safetensors")
    n_head, n_kv = (
        cfg["num_attention_heads"],
        cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
    )
    hidden = cfg["hidden_size"]

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(model_dir.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(hidden // n_head)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(cfg["vocab_size"])

    # the vocabulary: every id's piece, special (added) tokens as control tokens
    vocab = dict(tok_json["model"]["vocab"])
    added = {t["content"]: t for t in tok_json.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    n_vocab = cfg["vocab_size"]
    pieces = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for piece, i in vocab.items():
        if i < n_vocab:
            pieces[i] = piece
            special = piece in added and added[piece].get("special", False)
            types[i] = gguf.TokenType.CONTROL if special else gguf.TokenType.NORMAL
    merges = tok_json["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(pieces)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, add in (
        ("bos_token", w.add_bos_token_id),
        ("eos_token", w.add_eos_token_id),
        ("pad_token", w.add_pad_token_id),
    ):
        if tok_cfg.get(key) in vocab:
            add(vocab[tok_cfg[key]])
    w.add_add_bos_token(False)  # the chat template writes it
    w.add_add_eos_token(False)
    template = tok_cfg.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").exists():
        template = (model_dir / "chat_template.jinja").read_text()
    if template:
        w.add_chat_template(template)

    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    w.add_tensor("token_embd.weight", tensors["model.embed_tokens.weight"])
    for layer in range(cfg["num_hidden_layers"]):
        for hf, ours in names.items():
            t = tensors[f"model.layers.{layer}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                t = permute(t, n_head)
            elif hf == "self_attn.k_proj":
                t = permute(t, n_kv)
            w.add_tensor(f"blk.{layer}.{ours}.weight", np.ascontiguousarray(t))
    w.add_tensor("output_norm.weight", tensors["model.norm.weight"])
    head = tensors.get("lm_head.weight", tensors["model.embed_tokens.weight"])
    w.add_tensor("output.weight", head)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    export(Path(sys.argv[1]), Path(sys.argv[2]))
    print(sys.argv[2])
