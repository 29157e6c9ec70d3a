"""The demo's models: tiny Llama-style models and locally trained BPE tokenizers, built
offline from a config (the tests and benchmarks build theirs here too).

    tok_dir = make_tokenizer(tmp / "tok", texts, vocab_size=512)
    sp_dir = make_tokenizer(tmp / "sp", texts, vocab_size=512, style="sentencepiece")
    model_dir = make_model(tmp / "student", tok_dir, layers=2, hidden=64)

Two kinds of tokenizer, as the two big families of real models have them: `bytelevel`
(GPT-2/Llama-3/Qwen style: byte-level BPE, `<|end|>` turns) and `sentencepiece`
(Llama-2/Mistral style: `▁` for spaces and a space put in front of the text, byte-fallback
`<0xNN>` tokens, and a ChatML template with `<|im_start|>`/`<|im_end|>`). Both have a chat
template, so the training data path uses them like a real model's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

SPECIAL = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
DEFAULT_TEXT = [
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ? !",
    "Knowledge distillation trains a small student to imitate a large teacher.",
    "What is 2 + 3? The answer is 5. Reverse the string abc: cba. Sort 3 1 2: 1 2 3.",
]


SP_SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(
    out_dir: str | Path,
    texts: Iterable[str] = (),
    *,
    vocab_size: int = 512,
    style: str = "bytelevel",
) -> Path:
    """Train a BPE tokenizer on `texts` and save it as a transformers tokenizer; `style` is
    `bytelevel` or `sentencepiece` (see the module docstring)."""
    if style == "sentencepiece":
        return _make_sentencepiece(Path(out_dir), texts, vocab_size)
    if style != "bytelevel":
        raise ValueError(f"tokenizer style must be bytelevel or sentencepiece, got {style!r}")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts) + DEFAULT_TEXT, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048
    fast.save_pretrained(out_dir)
    return out_dir


def _make_sentencepiece(out_dir: Path, texts: Iterable[str], vocab_size: int) -> Path:
    """A Llama-2-style BPE: `▁` words with a space put in front, 256 byte-fallback tokens
    right after the special ones, and the merges learned on `texts`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.pre_tokenizer = metaspace
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size - 256, len(SP_SPECIAL) + 64),
        special_tokens=SP_SPECIAL,
        show_progress=False,
    )
    learner.train_from_iterator(list(texts) + DEFAULT_TEXT, trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    vocab = {t: i for i, t in enumerate(SP_SPECIAL)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = metaspace
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SP_SPECIAL])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<unk>",
        additional_special_tokens=["</s>", "<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 2048
    fast.save_pretrained(out_dir)
    return out_dir


def make_model(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    intermediate: int | None = None,
    max_positions: int = 1024,
    seed: int = 0,
    vocab_size: int | None = None,
) -> Path:
    """Build a randomly initialised tiny Llama for the tokenizer and save model + tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=vocab_size or len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir
