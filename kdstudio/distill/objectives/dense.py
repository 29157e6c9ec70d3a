"""`[distill] method = "dense_kd"`: KD from a local teacher's full distribution.

The teacher (`[distill] teacher`, a local Hugging Face folder) runs forward in eval mode under
no_grad on the same batch, its LM head fused with the loss like the student's. With forward
KL (the default) each chunk's gradient is written in closed form (`dense_fkl_chunk`); the
other divergences (`losses.PER_TOKEN`) go through autograd per chunk. `distill.on_policy`
(GKD's lambda) is the share of micro-batches where the student samples responses to the
batch's prompts and the teacher scores them: those train on the divergence alone (CE of the
student's own samples teaches nothing) and count as much as the batch they replace.

Tokenizers (`check_tokenizers`, run at setup and by the pre-flight). With one tokenizer the
two distributions are compared id by id: the same token for every id, and the same ids for a
probe text. Models of one family may differ only in padding rows of the embedding (e.g. a
vocab_size of 152064 vs 151936 for the same 151,665 tokens): then both distributions are
truncated to the shared rows, after checking that no token lives beyond them. A teacher with
another tokenizer (or `distill.align = "bytes"`/`"uld"`) reads each example in its own
template and tokens and its distribution is moved onto the student's tokens by the byte
alignment sparse KD uses (`objectives.cross`); `distill.align = "exact"` refuses it instead,
with a message naming both tokenizers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdstudio.distill.batches import IGNORE, Encoded, collate
from kdstudio.distill.fused_head import fused_head_loss
from kdstudio.distill.hf import final_hidden, hf_model, lm_head, supports_fusion
from kdstudio.distill.losses import PER_TOKEN, rowdot, sparse_divergence_per_token
from kdstudio.distill.objectives.base import (
    ObjectiveContext,
    ObjectiveOutput,
    pick_rows,
    target_labels,
    target_rows,
)
from kdstudio.distill.objectives.cross import CrossTokenizer
from kdstudio.distill.objectives.kd import KDObjective, chunk_terms, log_memory
from kdstudio.errors import UserError
from kdstudio.events import Log, Warning
from kdstudio.generation import generate_batch, stop_at
from kdstudio.teachers.vocab import special_ids

if TYPE_CHECKING:
    from kdstudio.distill.batches import Batch
    from kdstudio.distill.config import TrainConfig
    from kdstudio.workspace import Workspace

SKEW_ALPHA = 0.1  # DistiLLM's default for skl / srkl
PROBE_TEXT = "Hello, world! The answer is 42.\n  Naïve café 🙂 — distillation\t(x+y)^2"


# -- the teacher and its tokenizer ---------------------------------------------------------------


@dataclass
class TeacherCheck:
    """A local teacher that passed the tokenizer check. `shared_rows`: the vocabulary size
    KD runs over (the smaller model's rows when only padding rows differ). `align`: "exact"
    when the two share a tokenizer (KD id by id), else how the teacher's distribution is moved
    onto the student's tokens ("bytes" or "uld", `kdstudio.distill.align`)."""

    teacher: str
    teacher_path: str
    shared_rows: int
    student_rows: int
    teacher_rows: int
    message: str
    notes: list[str] = field(default_factory=list)
    align: str = "exact"


def _rows(path: str) -> int:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(text.vocab_size)


def _load_tokenizer(path: str, who: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the {who}'s tokenizer from {path}: {exc}") from None


def check_teacher(
    config: TrainConfig, ws: Workspace, *, student_tokenizer: Any = None
) -> TeacherCheck:
    """The dense-KD teacher of `config`: it must be local and share the student's tokenizer."""
    name = config.distill.teacher
    if not name:
        raise UserError("distill.teacher must name a local teacher for method dense_kd")
    teacher = ws.get_teacher(name)
    if teacher.kind != "local":
        raise UserError(
            f"distill.teacher {name!r} is an OpenAI-compatible endpoint: dense_kd needs a local "
            "teacher's full logits (add one with `kdstudio teacher add-local NAME --path DIR`), "
            'or collect its logprobs and train with method = "sparse_kd"'
        )
    path = teacher.path or ""
    if not (Path(path) / "config.json").exists():
        raise UserError(
            f"teacher {name!r}: {path} has no config.json (expected a Hugging Face model folder)"
        )
    student_path = config.student.path
    s_tok = student_tokenizer or _load_tokenizer(student_path, "student")
    t_tok = _load_tokenizer(path, "teacher")
    s_rows, t_rows = _rows(student_path), _rows(path)
    align = config.distill.align
    try:
        shared = check_tokenizers(
            s_tok,
            t_tok,
            student_rows=s_rows,
            teacher_rows=t_rows,
            student_name=f"student {student_path}",
            teacher_name=f"teacher {name!r} at {path}",
        )
    except UserError as exc:
        if align == "exact":
            raise
        mode = "uld" if align == "uld" else "bytes"
        how = (
            "compared by sorted probabilities (ULD)"
            if mode == "uld"
            else "moved onto the student's tokens by bytes"
        )
        return TeacherCheck(
            name,
            path,
            0,
            s_rows,
            t_rows,
            f"dense_kd: teacher {name!r} has another tokenizer ({len(t_tok):,} tokens, the "
            f"student {len(s_tok):,}): its distribution is {how} (align {mode})",
            [f"why the tokenizers count as different: {str(exc).split(': ', 1)[-1]}"],
            mode,
        )
    notes = []
    if (getattr(s_tok, "chat_template", None) or "") != (
        getattr(t_tok, "chat_template", None) or ""
    ):
        notes.append(
            "the teacher's chat template differs from the student's: the teacher scores the "
            "examples as the student's template renders them"
        )
    if align in ("bytes", "uld"):
        message = (
            f"dense_kd: teacher {name!r} shares the student's tokenizer; distill.align = "
            f"{align!r} aligns it by {'sorted probabilities' if align == 'uld' else 'bytes'} "
            "all the same"
        )
        return TeacherCheck(name, path, shared, s_rows, t_rows, message, [], align)
    if s_rows == t_rows:
        message = f"dense_kd: teacher {name!r} shares the student's tokenizer ({s_rows:,} rows)"
    else:
        message = (
            f"dense_kd: teacher {name!r} shares the student's tokenizer; the models differ only "
            f"in padding rows ({s_rows:,} vs {t_rows:,}), KD runs over the shared {shared:,}"
        )
    return TeacherCheck(name, path, shared, s_rows, t_rows, message, notes)


def _id_table(tok: Any, n: int) -> list[str | None]:
    size = min(len(tok), n)
    return list(tok.convert_ids_to_tokens(list(range(size)))) + [None] * (n - size)


def check_tokenizers(
    student: Any,
    teacher: Any,
    *,
    student_rows: int,
    teacher_rows: int,
    student_name: str = "student",
    teacher_name: str = "teacher",
) -> int:
    """The number of shared logit rows KD may use; UserError when the tokenizers differ.

    Accepted: every id below the smaller model's row count is the same token in both (or
    unused in both), no token of either tokenizer lives beyond it, and a probe text
    tokenizes to the same ids.
    """
    shared = min(student_rows, teacher_rows)
    problem = None
    n_s, n_t = len(student), len(teacher)
    common = min(n_s, n_t, shared)
    s_ids, t_ids = _id_table(student, common), _id_table(teacher, common)
    diff = [i for i in range(common) if s_ids[i] != t_ids[i]]
    if diff:
        i = diff[0]
        problem = (
            f"{len(diff):,} of the first {common:,} ids differ (id {i} is {s_ids[i]!r} for the "
            f"student, {t_ids[i]!r} for the teacher)"
        )
    elif n_s != n_t:
        who = "student" if n_s > n_t else "teacher"
        problem = f"the {who}'s tokenizer has {abs(n_s - n_t):,} more tokens (ids {common:,}+)"
    elif n_s > shared:
        problem = f"the tokenizers have {n_s:,} tokens but one model has only {shared:,} rows"
    elif student.encode(PROBE_TEXT, add_special_tokens=False) != teacher.encode(
        PROBE_TEXT, add_special_tokens=False
    ):
        problem = "the vocabularies match but a probe text tokenizes differently"
    if problem:
        raise UserError(
            f'dense_kd with distill.align = "exact" needs the teacher and the student to share '
            f"a tokenizer, but the {teacher_name} ({n_t:,} tokens) and the {student_name} "
            f'({n_s:,} tokens) differ: {problem}. Set distill.align = "auto" or "bytes" to move '
            "the teacher's distribution onto the student's tokens by bytes"
        )
    return shared


# -- the objective -------------------------------------------------------------------------------


class DenseKD(KDObjective):
    """KD from a local teacher's full distribution, run on the same batch."""

    teacher: Any = None

    def setup(self, ctx: ObjectiveContext) -> None:
        from transformers import AutoModelForCausalLM

        d = self.config.distill
        check = check_teacher(self.config, ctx.ws, student_tokenizer=ctx.tokenizer)
        self.shared = check.shared_rows
        self.cross: CrossTokenizer | None = None
        if check.align != "exact":
            if d.temperature != 1.0:
                raise UserError(
                    "dense_kd across tokenizers needs distill.temperature = 1.0 (the teacher's "
                    "distribution is moved onto the student's tokens with a tail bucket, which "
                    "holds its mass at temperature 1 only)"
                )
            self.cross = CrossTokenizer(
                _load_tokenizer(check.teacher_path, "teacher"),
                ctx.tokenizer,
                mode=check.align,
                max_length=self.config.data.max_length,
            )
        ctx.sink.emit(Log(check.message))
        for note in check.notes:
            ctx.sink.emit(Warning(note, where="distill.teacher"))
        self.memory = log_memory(ctx, self.config)
        dtype = ctx.autocast_dtype or torch.float32
        try:
            teacher = AutoModelForCausalLM.from_pretrained(check.teacher_path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load teacher {d.teacher!r} from {check.teacher_path}: {exc}"
            ) from None
        teacher.config.use_cache = False
        self.teacher = teacher.to(ctx.device).eval().requires_grad_(False)
        probe = torch.tensor([[ctx.tokenizer.bos_token_id or 0] * 4], device=ctx.device)
        self.teacher_fused = supports_fusion(self.teacher, probe)
        self.options: dict[str, float] = {"temperature": d.temperature}
        if d.divergence == "jsd":
            self.options["beta"] = d.beta
        elif d.divergence in ("skl", "srkl"):
            self.options["alpha"] = SKEW_ALPHA
        self.per_token = PER_TOKEN[d.divergence]
        self.tokenizer = ctx.tokenizer

    def _teacher_rows(
        self, batch: Batch, rows: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        with torch.no_grad():
            if self.teacher_fused:
                hidden = final_hidden(self.teacher, batch.model_inputs())
                weight, bias = lm_head(self.teacher)
                return pick_rows(hidden, rows), weight, bias
            logits = self.teacher(**batch.model_inputs(), use_cache=False).logits
            return pick_rows(logits, rows), None, None

    def loss(self, model: Any, batch: Batch) -> ObjectiveOutput:
        d = self.config.distill
        # the trainer seeds and checkpoints Python's RNG, so a resumed run draws the same
        on_policy = d.on_policy > 0 and random.random() < d.on_policy
        scored = self._generate(model, batch) if on_policy else batch
        w = 1.0 if on_policy else d.kd_weight
        if self.cross is not None:
            out = self._cross_loss(model, scored, w, generated=on_policy)
        else:
            out = self._same_loss(model, scored, w)
        if d.on_policy > 0:
            # CE of the student's own samples trains nothing: report CE of the collected
            # responses only, and weigh a generated batch like the batch it replaced
            ce = out.sums.pop("ce")
            n = torch.tensor(float(batch.n_target), device=out.loss_sum.device)
            out.counts["ce"] = (ce * 0, n * 0) if on_policy else (ce, n)
            out.counts["on_policy"] = (n * 0 + float(on_policy), n * 0 + 1)
            if on_policy:
                out.loss_sum = out.loss_sum * (batch.n_target / max(scored.n_target, 1))
        return out

    def _same_loss(self, model: Any, scored: Batch, w: float) -> ObjectiveOutput:
        """Divergence of the two full distributions, id by id (one tokenizer)."""
        d = self.config.distill
        rows = target_rows(scored)
        labels = target_labels(scored, rows)
        tx, tw, tb = self._teacher_rows(scored, rows)
        x, weight, bias = self.student_rows(model, scored, rows)
        v = self.shared
        per_token = partial(self.per_token, **self.options)

        def teacher_logits(r: slice) -> Tensor:
            with torch.no_grad():
                return tx[r] if tw is None else F.linear(tx[r], tw, tb)

        def chunk_loss(logits: Tensor, r: slice) -> tuple[Tensor, Tensor]:
            t = teacher_logits(r)[:, :v]
            kd = per_token(logits[:, :v], t)
            is_kd = torch.ones_like(labels[r], dtype=torch.bool)
            return chunk_terms(logits, labels[r], kd, is_kd, t.argmax(-1), w, d.temperature)

        if d.divergence == "fkl":
            chunk_loss = dense_fkl_chunk(labels, teacher_logits, vocab=v, w=w, tau=d.temperature)
        total, stats = fused_head_loss(
            chunk_loss, x, weight, bias, chunk_size=self.chunk_size, n_stats=self.N_STATS
        )
        return self._output(total, stats, scored.n_target)

    def _cross_loss(
        self, model: Any, scored: Batch, w: float, *, generated: bool
    ) -> ObjectiveOutput:
        """Divergence of the teacher's distribution moved onto the student's tokens (another
        tokenizer; `objectives.cross`), over its candidates and a tail bucket."""
        d = self.config.distill
        assert self.cross is not None
        targets = self.cross.batch_targets(scored, self.teacher, generated=generated)
        options = {k: v for k, v in self.options.items() if k != "temperature"}
        divergence = partial(sparse_divergence_per_token, divergence=d.divergence, **options)
        return self._targets_loss(model, scored, targets, w, divergence)

    def _generate(self, model: Any, batch: Batch) -> Batch:
        """The batch's prompts with responses the student samples (temperature 1), masked
        for loss on the generated tokens, at most as long as the longest collected one."""
        tok = self.tokenizer
        specials = special_ids(tok)
        stops = {tok.eos_token_id}
        for enc in batch.items:
            last = next((x for x in reversed(enc.labels) if x != IGNORE), None)
            if last in specials:
                stops.add(last)  # the template's end-of-turn token
        prompts = [enc.input_ids[: enc.prompt_len] for enc in batch.items]
        pad = tok.pad_token_id
        dev = batch.input_ids.device
        got = generate_batch(
            hf_model(model),
            prompts,
            pad_id=pad,
            device=dev,
            inference_mode=False,  # the student trains on right after
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max(enc.n_target for enc in batch.items),
            pad_token_id=pad,
            eos_token_id=sorted(stops),
            use_cache=True,
        )
        items = []
        for enc, prompt, new in zip(batch.items, prompts, got.new_ids, strict=True):
            seq = stop_at(new, stops, keep=True)
            items.append(
                Encoded(
                    [*prompt, *seq],
                    [IGNORE] * len(prompt) + seq,
                    len(prompt),
                    [],
                    example=enc.example,
                )
            )
        return collate(items, pad).to(dev)

    def close(self) -> None:
        self.teacher = None


def dense_fkl_chunk(labels: Tensor, teacher: Any, *, vocab: int, w: float, tau: float) -> Any:
    """Chunk function of CE + forward KL with its gradient in closed form:

        d/dz [(1 - w) CE + w tau^2 KL(p_tau || q_tau)] = (1 - w)(q - onehot) + w tau (q_tau - p_tau)

    over the first `vocab` logits for the KD term (padding rows beyond it get CE only).
    `teacher(rows)` gives the teacher's logits of those rows. CE is read off the logsumexp
    the gradient needs anyway (not `losses.cross_entropy`): one pass fewer over [n, V]."""

    def chunk(logits: Tensor, rows: slice) -> tuple[Tensor, Tensor, Tensor]:
        z = logits.float()
        y = labels[rows]
        lse = torch.logsumexp(z, dim=-1)
        q = torch.exp(z - lse.unsqueeze(-1))
        ce = lse - z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        entropy = lse - rowdot(q, z)
        t = teacher(rows)[:, :vocab].float()
        zk = z[:, :vocab]
        if tau != 1.0:
            zk, t = zk / tau, t / tau
        if tau == 1.0 and vocab == z.shape[-1]:
            lse_k, q_k = lse, q
        else:
            lse_k = torch.logsumexp(zk, dim=-1)
            q_k = torch.exp(zk - lse_k.unsqueeze(-1))
        log_p = torch.log_softmax(t, dim=-1)
        p = log_p.exp()
        kd = (rowdot(p, log_p) - rowdot(p, zk) + lse_k).clamp_min(0.0)
        grad = q.mul_(1.0 - w) if q is not q_k else q * (1.0 - w)
        grad.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(ce, -(1.0 - w)).unsqueeze(-1))
        grad[:, :vocab].add_(q_k - p, alpha=w * tau)
        loss = ((1.0 - w) * ce + w * tau**2 * kd).sum()
        agree = (z.argmax(-1) == t.argmax(-1)).sum()
        ones = torch.tensor(float(z.shape[0]), device=z.device)
        stats = torch.stack([ce.sum(), kd.sum(), ones, agree.float(), entropy.sum()])
        return loss, stats, grad

    chunk.analytic = True
    return chunk
