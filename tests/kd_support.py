"""Helpers for the KD tests: tiny students and teachers whose tokenizers relate in known ways,
collections with teacher logprobs (from the real collection job against the loopback server,
or from a local teacher), configs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from support.openai_server import VOCAB

# Every token the loopback teacher can answer with, often enough to be one student token.
# Words are separated by newlines so no merge spans two of the teacher's tokens.
COVERING_TEXTS = ["\n".join(w for w in VOCAB) + "\n"] * 40 + ["prompt 0 1 2 3 4 5 6 7 8 9"] * 5
# The same minus two of them: positions where they are candidates must fall back to CE.
MISSING = (" 🙂", " naïve")
PARTIAL_TEXTS = ["\n".join(w for w in VOCAB if w not in MISSING) + "\n"] * 40 + [
    "prompt 0 1 2 3 4 5 6 7 8 9"
] * 5


def sharpen_head(model_dir: Path, factor: float) -> Path:
    """Scale a saved model's LM head so its distributions are peaked (a teacher worth copying)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(factor)
    model.save_pretrained(model_dir)
    return model_dir


def make_kd_models(root: Path) -> SimpleNamespace:
    """Tiny models: `student` (tokenizer `tok`), `teacher` (same tokenizer, other weights,
    peaked head), `padded` (same tokenizer, 16 extra padding rows), `foreign` (a tokenizer
    trained on other text), `partial` (a student whose tokenizer lacks MISSING), `sp` (a
    SentencePiece-style student with a ChatML template, trained on the same text: another
    tokenizer of the same words)."""
    from support.train_data import memorisable_pairs, texts_of

    from kdstudio.demo.tiny import make_model, make_tokenizer

    texts = COVERING_TEXTS + texts_of(memorisable_pairs(24))
    tok = make_tokenizer(root / "tok", texts, vocab_size=420)
    ns = SimpleNamespace(root=root, tok=tok)
    ns.student = make_model(root / "student", tok, seed=0)
    ns.teacher = sharpen_head(make_model(root / "teacher", tok, seed=1), 12.0)
    n = len(__import__("transformers").AutoTokenizer.from_pretrained(tok))
    ns.padded = make_model(root / "padded", tok, seed=2, vocab_size=n + 16, layers=1, hidden=32)
    foreign_tok = make_tokenizer(
        root / "foreign-tok", ["something else entirely"] * 5, vocab_size=300
    )
    ns.foreign = make_model(root / "foreign", foreign_tok, seed=3, layers=1, hidden=32)
    partial_tok = make_tokenizer(root / "partial-tok", PARTIAL_TEXTS, vocab_size=380)
    ns.partial = make_model(root / "partial", partial_tok, seed=4, layers=1, hidden=32)
    sp_tok = make_tokenizer(root / "sp-tok", texts, vocab_size=640, style="sentencepiece")
    ns.sp = make_model(root / "sp", sp_tok, seed=5, layers=1, hidden=32)
    return ns


def add_local_teacher(ws, name: str, path: Path) -> None:
    from kdstudio.config import TeacherConfig

    ws.add_teacher(TeacherConfig(name=name, kind="local", path=str(path)), replace=True)


def config(student: Path, collection: str, **sections: dict[str, Any]):
    from kdstudio.distill.config import TrainConfig

    base: dict[str, Any] = {
        "student": {"path": str(student)},
        "data": {"collection": collection, "eval_fraction": 0.2, "max_length": 64},
        "optim": {"max_steps": 10, "batch_size": 4, "lr": 3e-3, "warmup": 1},
        "run": {"name": "kd", "log_every": 1, "eval_every": 0, "checkpoint_every": 0},
    }
    for key, values in sections.items():
        base.setdefault(key, {}).update(values)
    return TrainConfig.from_dict(base)


def collect_from_loopback(ws, server, *, n: int = 24, top_logprobs: int = 5, **kw: Any) -> str:
    """Prompts + a real collection job against the loopback server; returns its name."""
    from collect_support import make_prompts

    from kdstudio.collect import CollectConfig, collect
    from kdstudio.config import TeacherConfig

    make_prompts(ws, n=n)
    ws.add_teacher(TeacherConfig(name="t", base_url=server.url, model="teacher-1"), replace=True)
    collect(
        CollectConfig(
            teacher="t", dataset="prompts", max_tokens=16, top_logprobs=top_logprobs, **kw
        ),
        ws,
    )
    return "prompts.t"


def collect_from_local(ws, path: Path, *, n: int = 8, top_logprobs: int = 4, **kw: Any) -> str:
    """Prompts + a real collection job answered by the local teacher at `path` (greedy unless
    `temperature` says otherwise); returns the collection's name."""
    from collect_support import make_prompts

    from kdstudio.collect import CollectConfig, collect

    make_prompts(ws, n=n)
    add_local_teacher(ws, "local", path)
    collect(
        CollectConfig(
            teacher="local",
            dataset="prompts",
            max_tokens=8,
            top_logprobs=top_logprobs,
            **{"temperature": 0.0, **kw},
        ),
        ws,
    )
    return "prompts.local"


def metric_series(ws, run: str, name: str) -> list[float]:
    from kdstudio.distill.runs import get_run

    rid = get_run(ws, run).id
    rows = ws.query(
        "SELECT value FROM run_metrics WHERE run_id=? AND name=? ORDER BY step", (rid, name)
    )
    return [r[0] for r in rows]


def train(ws, cfg, sink=None):
    from kdstudio.distill.trainer import Trainer, run_training

    return run_training(Trainer(cfg, ws, sink))
