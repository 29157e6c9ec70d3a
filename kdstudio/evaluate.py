"""Evaluation: a run's student against its teacher and its own starting weights.

    result = evaluate(EvalConfig(run="demo", limit=50), ws, sink, cancel)
    result.summary["metrics"]["rouge_l"]  # {"before": 0.12, "after": 0.61, "teacher": 1.0}

For each held-out prompt of the run (the rows the trainer set aside, `runs.eval_row_ids`),
the student from a checkpoint ("after") and the student's starting weights ("before") each
generate an answer (greedy, batched, left padding). Every answer is compared with the
teacher's answer, which is the reference:

- `loglik`: mean log-likelihood per token of the teacher's response under the model, on
  exactly the tokens training puts loss on (`distill.batches.encode_example`), pooled over
  all tokens, so `after` is minus the trainer's eval loss on these prompts;
- `exact_match`, `f1` (bag of words) and `rouge_l` (longest common subsequence F-measure)
  of the generated text against the teacher's text, after `normalize_text`.

The teacher column is the reference itself: its exact match, F1 and ROUGE-L against itself
are 1 by definition, and it has no log-likelihood under the student. A prompt with several
teacher samples is evaluated once, against its first sample.

Two more comparisons with the teacher, where the data allows them:

- `kl_to_teacher`: where the teacher's logprobs are stored, the KL from the teacher's top-k
  (plus the tail bucket) to each student at the teacher's answer tokens, aligned as sparse KD
  aligns them (`kdstudio.distill.align`, by bytes), pooled over those positions (teacher: 0);
- `teacher_nll`: where the collection's teacher is a local model, its negative
  log-likelihood per token of each model's own greedy answer (the teacher's too): how
  likely the teacher finds what the student says.

And one against the task itself: when the dataset has reference answers (an answer column in
the imported file), the answers of both students *and of the teacher* are scored against them
(`summary["reference"]`, exact match, F1, ROUGE-L), so a student that beats its teacher shows.

Each batch is committed to `evaluations`/`eval_items` as it completes. Stopping finishes
the batch, stores the summary of what was done (status `stopped`) and raises `Cancelled`.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from kdstudio.config import Section, setting
from kdstudio.distill import plan
from kdstudio.errors import Cancelled, ConfigError, NotFound, UserError
from kdstudio.events import FanoutSink, Finished, Log, Progress, RowDone, Sink, StoreSink
from kdstudio.generation import generate_batch, stop_at

if TYPE_CHECKING:
    from kdstudio.collect.store import Example
    from kdstudio.events import CancelToken
    from kdstudio.workspace import Workspace

#: The scores of one model on one prompt, and of a whole evaluation.
TEXT_METRICS = ("exact_match", "f1", "rouge_l")
METRICS = ("loglik", *TEXT_METRICS, "kl_to_teacher", "teacher_nll")
LOWER_IS_BETTER = ("kl_to_teacher", "teacher_nll")
MODELS = ("before", "after", "teacher")
TEACHER_NOTE = (
    "the teacher's answer is the reference: its exact match, F1 and ROUGE-L against itself "
    "are 1 by definition, and it has no log-likelihood under the student"
)


# -- text metrics ------------------------------------------------------------------------------

_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff])")


def normalize_text(text: str) -> str:
    """NFKC, lower case, punctuation removed, whitespace collapsed (SQuAD-style, without the
    English-only article removal); CJK characters become words of their own."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    text = _CJK.sub(r" \1 ", text)
    return " ".join(text.split())


def words(text: str) -> list[str]:
    """The words the text metrics compare: `normalize_text(text).split()`."""
    return normalize_text(text).split()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both texts are equal after `normalize_text`, else 0.0."""
    return float(normalize_text(prediction) == normalize_text(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-words F1 (SQuAD): overlap counted with multiplicity. Two empty texts score 1."""
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence of two sequences of hashable items.

    Bit-parallel (Hyyrö 2004): bit i of `v` is 0 when the LCS grows at position i of `a`;
    one big-integer add per item of `b`, so long answers cost O(len(b) * len(a) / 64).
    """
    if not a or not b:
        return 0
    positions: dict[Any, int] = {}
    for i, item in enumerate(a):
        positions[item] = positions.get(item, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for item in b:
        u = v & positions.get(item, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) over words: LCS / len as precision and recall.

    Two empty texts score 1; one empty text scores 0.
    """
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def text_scores(prediction: str, reference: str) -> dict[str, float]:
    """{exact_match, f1, rouge_l} of a generated text against the reference."""
    return {
        "exact_match": exact_match(prediction, reference),
        "f1": token_f1(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
    }


# -- config ------------------------------------------------------------------------------------


@dataclass
class EvalConfig(Section):
    """What to evaluate and how (`kdstudio eval RUN ...`, the window's Evaluate button)."""

    _section: ClassVar[str] = "eval"

    run: str = setting(help="The run to evaluate, by name.")
    limit: int | None = setting(
        None, "Evaluate at most this many held-out prompts (default: all of them).", min=1
    )
    checkpoint: str = setting(
        "last", "Which checkpoint: `last`, `best` (lowest eval loss) or a step number."
    )
    max_new_tokens: int = setting(
        256, "Longest answer each student may generate, in tokens.", min=1, max=65536
    )
    batch_size: int = setting(8, "Prompts generated together.", min=1, max=4096)
    device: str = setting("auto", "Where to run the students.", choices=("auto", "cuda", "cpu"))

    def check(self) -> None:
        self.checkpoint = str(self.checkpoint).strip()
        if self.checkpoint not in ("last", "best") and not self.checkpoint.isdigit():
            raise ConfigError(
                f"eval.checkpoint must be last, best or a step number; got {self.checkpoint!r}"
            )


# -- stored evaluations ------------------------------------------------------------------------


@dataclass
class Evaluation:
    """One row of `evaluations`: an evaluation of one checkpoint of a run."""

    id: int
    run: str
    run_id: int
    checkpoint: str | None
    step: int | None
    status: str  # running | finished | stopped | failed
    config: dict[str, Any]
    summary: dict[str, Any]
    error: str | None
    created_at: float
    finished_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EvalItem:
    """One held-out prompt with the three answers side by side and their scores."""

    idx: int
    row_id: int | None
    prompt: str
    teacher: str
    student_before: str
    student_after: str
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_EVAL_SQL = "SELECT e.*, r.name AS run_name FROM evaluations e JOIN runs r ON r.id = e.run_id"


def _evaluation(row: Any) -> Evaluation:
    return Evaluation(
        id=row["id"],
        run=row["run_name"],
        run_id=row["run_id"],
        checkpoint=row["checkpoint"],
        step=row["step"],
        status=row["status"],
        config=json.loads(row["config"] or "{}"),
        summary=json.loads(row["summary"] or "{}"),
        error=row["error"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )


def get_evaluation(ws: Workspace, eval_id: int) -> Evaluation:
    row = ws.query_one(f"{_EVAL_SQL} WHERE e.id=?", (eval_id,))
    if row is None:
        known = [str(r[0]) for r in ws.query("SELECT id FROM evaluations ORDER BY id")]
        raise NotFound("evaluation", str(eval_id), known)
    return _evaluation(row)


def list_evaluations(ws: Workspace, run: str | None = None) -> list[Evaluation]:
    """Evaluations, oldest first; of one run when `run` is given."""
    if run is None:
        rows = ws.query(f"{_EVAL_SQL} ORDER BY e.id")
    else:
        rows = ws.query(f"{_EVAL_SQL} WHERE r.name=? ORDER BY e.id", (run,))
    return [_evaluation(r) for r in rows]


def latest_evaluation(ws: Workspace, run: str, *, step: int | None = None) -> Evaluation | None:
    """The newest finished evaluation of a run (of the checkpoint at `step`, when given)."""
    done = [e for e in list_evaluations(ws, run) if e.status == "finished"]
    if step is not None:
        done = [e for e in done if e.step == step]
    return done[-1] if done else None


def eval_items(
    ws: Workspace, eval_id: int, *, limit: int | None = None, offset: int = 0
) -> list[EvalItem]:
    """The stored prompts of an evaluation, in order."""
    rows = ws.query(
        "SELECT * FROM eval_items WHERE eval_id=? ORDER BY idx LIMIT ? OFFSET ?",
        (eval_id, -1 if limit is None else limit, offset),
    )
    return [
        EvalItem(
            idx=r["idx"],
            row_id=r["row_id"],
            prompt=r["prompt"],
            teacher=r["teacher"] or "",
            student_before=r["student_before"] or "",
            student_after=r["student_after"] or "",
            metrics=json.loads(r["metrics"] or "{}"),
        )
        for r in rows
    ]


def summarize(items: Sequence[EvalItem]) -> dict[str, Any]:
    """Before / after / teacher figures over stored items (see the module docstring), and
    the share of the gap to the teacher that training closed.

    `loglik` is pooled over tokens (sum of log-probabilities / number of tokens),
    `kl_to_teacher` over the positions with teacher logprobs, `teacher_nll` over each model's
    answer tokens; the text metrics are means over prompts. Against reference answers
    (`summary["reference"]`, None when no prompt has one) the teacher is scored like the
    students.
    """
    metrics: dict[str, dict[str, float | None]] = {}
    n_tokens = sum(int(it.metrics.get("n_tokens", 0)) for it in items)
    for name in METRICS:
        row: dict[str, float | None] = {
            model: _pooled(items, model, name) for model in ("before", "after")
        }
        if name in TEXT_METRICS:
            row["teacher"] = 1.0 if items else None
        elif name == "kl_to_teacher":
            row["teacher"] = 0.0 if row["after"] is not None else None
        elif name == "teacher_nll":
            row["teacher"] = _pooled(items, "teacher", name)
        else:
            row["teacher"] = None
        row["gap_closed"] = _gap_closed(row, name in LOWER_IS_BETTER)
        metrics[name] = row
    return {
        "n": len(items),
        "n_tokens": n_tokens,
        "truncated": sum(1 for it in items if it.metrics.get("truncated")),
        "metrics": metrics,
        "reference": _reference_summary(items),
        "note": TEACHER_NOTE,
    }


_WEIGHTS = {"loglik": "n_tokens", "kl_to_teacher": "n_kd", "teacher_nll": "n_answer"}


def _pooled(items: Sequence[EvalItem], model: str, name: str) -> float | None:
    """A metric of one model over items: pooled over tokens (by `_WEIGHTS`) or averaged."""
    pairs = []
    for it in items:
        value = it.metrics.get(model, {}).get(name)
        if value is None:
            continue
        weight = name in _WEIGHTS and (
            it.metrics.get(model, {}).get(_WEIGHTS[name]) or it.metrics.get(_WEIGHTS[name], 0)
        )
        pairs.append((value, float(weight) if name in _WEIGHTS else 1.0))
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None
    return sum(v * w for v, w in pairs) / total


def _reference_summary(items: Sequence[EvalItem]) -> dict[str, Any] | None:
    """Exact match, F1 and ROUGE-L of before, after and the teacher against the dataset's
    reference answers (means over the prompts that have one)."""
    scored = [it.metrics["reference"] for it in items if it.metrics.get("reference")]
    if not scored:
        return None
    metrics = {}
    for name in TEXT_METRICS:
        metrics[name] = {
            model: sum(ref[model][name] for ref in scored) / len(scored) for model in MODELS
        }
    return {"n": len(scored), "metrics": metrics}


def _gap_closed(row: dict[str, float | None], lower_is_better: bool = False) -> float | None:
    """Share of the distance from the starting weights to the teacher that training closed:
    (after - before) / (teacher - before); None without a teacher figure or a gap (the
    teacher no better than the starting weights)."""
    before, after, teacher = row["before"], row["after"], row["teacher"]
    if before is None or after is None or teacher is None:
        return None
    gap = before - teacher if lower_is_better else teacher - before
    return None if gap <= 0 else (after - before) / (teacher - before)


# -- held-out prompts --------------------------------------------------------------------------


def held_out_examples(ws: Workspace, run: Any) -> list[Example]:
    """One example per held-out prompt of a run (its first non-empty teacher sample; with
    several collections, from the first that answered it), in dataset order. Rejected answers
    are skipped and edited ones used, as in training."""
    from kdstudio.distill import runs

    rows = set(runs.eval_row_ids(ws, run.name))
    if not rows:
        raise UserError(
            f"run {run.name!r} held out no prompts (data.eval_fraction is "
            f"{run.config['data'].get('eval_fraction')}); train a run with "
            "data.eval_fraction > 0 to evaluate it"
        )
    chosen: dict[int, Example] = {}
    for ex in plan.iter_run_examples(run.train_config(), ws):
        if ex.row_id in rows and ex.row_id not in chosen and ex.response.strip():
            chosen[ex.row_id] = ex
    return list(chosen.values())


def prompt_text(messages: list[dict]) -> str:
    """The text shown for a prompt: its last user turn."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return str(messages[-1].get("content", "")) if messages else ""


# -- models ------------------------------------------------------------------------------------


def _autocast(device: Any) -> Any:
    """The autocast the trainer's `auto` precision uses on `device` (bf16 on a GPU that has it)."""
    return plan.autocast(device, plan.pick_precision("auto", device).amp_dtype)


def generate_answers(
    model: Any,
    tok: Any,
    prompts: Sequence[list[dict]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    device: Any,
) -> list[str]:
    """Greedy answers to chat prompts, generated as one left-padded batch."""
    from transformers import GenerationConfig

    texts = [
        tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts
    ]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    gen = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=list(stop_ids),
        use_cache=True,  # checkpoints are saved with the cache off (training)
    )
    with _autocast(device):
        got = generate_batch(
            model, ids, pad_id=tok.pad_token_id, device=device, generation_config=gen
        )
    stops = set(stop_ids)
    return [
        tok.decode(stop_at(new, stops, keep=False), skip_special_tokens=True).strip()
        for new in got.new_ids
    ]


def response_logliks(model: Any, encoded: Sequence[Any], pad_id: int, device: Any) -> list[float]:
    """Mean log-probability per loss-carrying token of each encoded example (right padded)."""
    return [s["loglik"] for s in response_scores(model, encoded, pad_id, device)]


def response_scores(
    model: Any,
    encoded: Sequence[Any],
    pad_id: int,
    device: Any,
    targets: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """Per encoded example: `loglik` (mean log-probability per loss-carrying token) and, with
    `targets` (`align.Targets`, one per example or None), `kl_to_teacher` (mean KL from the
    teacher's aligned top-k and tail to the model over those positions) and `n_kd`.

    One forward pass; only one row's log-softmax is materialised in float32 at a time.
    """
    import torch

    from kdstudio.distill.batches import IGNORE, collate
    from kdstudio.distill.losses import cross_entropy, sparse_topk_kl_per_token

    batch = collate(list(encoded), pad_id).to(device)
    with torch.inference_mode(), _autocast(device):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    out = []
    for row, enc in enumerate(encoded):
        targets_row = batch.labels[row, 1:]
        keep = targets_row != IGNORE
        ce = cross_entropy(logits[row, :-1][keep], targets_row[keep])  # -log p(target)
        scores: dict[str, Any] = {"loglik": -float(ce.mean()) if ce.numel() else 0.0}
        tg = targets[row] if targets is not None else None
        if tg is not None and tg.n_kd:
            at = torch.as_tensor(enc.prompt_len + tg.pos.astype("int64") - 1, device=device)
            kl = sparse_topk_kl_per_token(
                logits[row].index_select(0, at),
                torch.as_tensor(tg.ids, device=device).long(),
                torch.as_tensor(tg.logprobs, device=device),
            )
            scores.update(kl_to_teacher=float(kl.mean()), n_kd=int(tg.n_kd))
        out.append(scores)
    return out


class _TeacherScorer:
    """The collection's teacher when it is a local model: how likely it finds an answer
    (`teacher_nll`, per token of the answer and its end of turn, in its own chat template)."""

    def __init__(self, ws: Workspace, collection: str, device: Any) -> None:
        from kdstudio.collect.store import get_collection
        from kdstudio.model_folder import model_folder_problem

        self.model = None
        self.device = device
        name = get_collection(ws, collection).teacher_name
        if not name or name not in ws.teacher_names():
            return
        teacher = ws.get_teacher(name)
        if teacher.kind != "local" or model_folder_problem(teacher.path or "") is not None:
            return  # an optional figure: no local teacher folder, no teacher NLL
        from transformers import AutoModelForCausalLM

        from kdstudio.distill.batches import load_student_tokenizer

        self.name = name
        self.tok, _ = load_student_tokenizer(str(teacher.path))
        self.model = AutoModelForCausalLM.from_pretrained(teacher.path).to(device).eval()

    def nll(self, messages: Sequence[list[dict]], answers: Sequence[str]) -> list[dict]:
        """{"teacher_nll", "n_answer"} per answer ({} for an empty one)."""
        from kdstudio.distill.batches import encode_example

        if self.model is None:
            return [{} for _ in answers]
        encs = [
            encode_example(self.tok, m, a, 1 << 20) if a.strip() else None
            for m, a in zip(messages, answers, strict=True)
        ]
        known = [e for e in encs if e is not None]
        logliks = iter(
            response_logliks(self.model, known, self.tok.pad_token_id, self.device) if known else []
        )
        return [
            {"teacher_nll": -next(logliks), "n_answer": e.n_target} if e is not None else {}
            for e in encs
        ]

    def close(self) -> None:
        self.model = None


class _Students:
    """The checkpoint's student and the starting weights, both ready to generate.

    A LoRA run loads the base weights once: "before" runs with the adapter disabled.
    """

    def __init__(self, ws: Workspace, run: Any, which: str, device: Any) -> None:
        from kdstudio.distill import checkpoint as ckpt

        self.after, self.tok = ckpt.load_student(ws, run.name, which, device=str(device))
        self.lora = hasattr(self.after, "disable_adapter")
        self.before = None if self.lora else ckpt.load_student(ws, run.name, "base", str(device))[0]

    @contextmanager
    def model(self, which: str) -> Iterator[Any]:
        if which == "after":
            yield self.after
        elif self.lora:
            with self.after.disable_adapter():
                yield self.after
        else:
            yield self.before

    def close(self) -> None:
        self.after = self.before = None


# -- the job -----------------------------------------------------------------------------------


def _create_row(ws: Workspace, run: Any, path: Any, config: EvalConfig) -> int:
    from kdstudio.distill.checkpoint import STEP_RE

    m = STEP_RE.fullmatch(path.name)
    cur = ws.db.execute(
        "INSERT INTO evaluations(run_id, checkpoint, step, status, config, created_at)"
        " VALUES (?,?,?,?,?,?)",
        (
            run.id,
            path.name,
            int(m.group(1)) if m else None,
            "running",
            json.dumps(config.to_dict()),
            time.time(),
        ),
    )
    return int(cur.lastrowid)


def _finish_row(
    ws: Workspace, eval_id: int, status: str, summary: dict[str, Any], error: str | None = None
) -> None:
    ws.db.execute(
        "UPDATE evaluations SET status=?, summary=?, error=?, finished_at=? WHERE id=?",
        (status, json.dumps(summary), error, time.time(), eval_id),
    )


def _store_items(ws: Workspace, eval_id: int, items: Sequence[EvalItem]) -> None:
    with ws.tx() as con:
        con.executemany(
            "INSERT INTO eval_items(eval_id, idx, row_id, prompt, teacher, student_before,"
            " student_after, metrics) VALUES (?,?,?,?,?,?,?,?)",
            [
                (
                    eval_id,
                    it.idx,
                    it.row_id,
                    it.prompt,
                    it.teacher,
                    it.student_before,
                    it.student_after,
                    json.dumps(it.metrics),
                )
                for it in items
            ],
        )


def _batches(
    pairs: Sequence[tuple[Example, Any]], size: int
) -> Iterator[list[tuple[int, Any, Any]]]:
    """Batches of (idx, example, encoded), longest first: similar lengths share a batch (less
    padding, and generation ends together), and a batch too big for memory fails at once."""
    order = sorted(range(len(pairs)), key=lambda i: (-len(pairs[i][1]), i))
    for start in range(0, len(order), size):
        yield [(i, *pairs[i]) for i in order[start : start + size]]


@dataclass
class _Scoring:
    """What scores a batch besides the students: the stop ids, the teacher's aligned logprobs
    per example, reference answers by dataset row, and the local teacher (if any)."""

    stop_ids: Sequence[int]
    targets: dict[int, Any]  # id(example) -> align.Targets
    references: dict[int, str]
    teacher: _TeacherScorer


def _score_batch(
    students: _Students,
    batch: Sequence[tuple[int, Example, Any]],
    config: EvalConfig,
    scoring: _Scoring,
    device: Any,
) -> list[EvalItem]:
    tok = students.tok
    prompts = [ex.messages for _, ex, _ in batch]
    encoded = [enc for _, _, enc in batch]
    targets = [scoring.targets.get(id(ex)) for _, ex, _ in batch]
    answers: dict[str, list[str]] = {}
    scores: dict[str, list[dict]] = {}
    for which in ("after", "before"):
        with students.model(which) as model:
            answers[which] = generate_answers(
                model,
                tok,
                prompts,
                max_new_tokens=config.max_new_tokens,
                stop_ids=scoring.stop_ids,
                device=device,
            )
            scores[which] = response_scores(model, encoded, tok.pad_token_id, device, targets)
    answers["teacher"] = [ex.response for _, ex, _ in batch]
    nll = {m: scoring.teacher.nll(prompts, answers[m]) for m in MODELS}
    items = []
    for j, (idx, ex, enc) in enumerate(batch):
        metrics: dict[str, Any] = {"n_tokens": enc.n_target, "truncated": enc.truncated}
        for which in ("before", "after"):
            metrics[which] = {
                **scores[which][j],
                **nll[which][j],
                **text_scores(answers[which][j], ex.response),
            }
        metrics["teacher"] = dict(nll["teacher"][j])
        reference = scoring.references.get(ex.row_id)
        if reference is not None:
            metrics["reference"] = {
                "text": reference,
                **{m: text_scores(answers[m][j], reference) for m in MODELS},
            }
        items.append(
            EvalItem(
                idx=idx,
                row_id=ex.row_id,
                prompt=prompt_text(ex.messages),
                teacher=ex.response,
                student_before=answers["before"][j],
                student_after=answers["after"][j],
                metrics=metrics,
            )
        )
    return items


def _references(ws: Workspace, examples: Sequence[Example]) -> dict[int, str]:
    """The dataset's reference answer of each example's row, where it has one."""
    rows = sorted({ex.row_id for ex in examples})
    out: dict[int, str] = {}
    for start in range(0, len(rows), 500):
        part = rows[start : start + 500]
        marks = ",".join("?" * len(part))
        for r in ws.query(
            f"SELECT id, reference FROM dataset_rows WHERE id IN ({marks})", tuple(part)
        ):
            if r["reference"] is not None and r["reference"].strip():
                out[r["id"]] = r["reference"]
    return out


def _teacher_targets(tok: Any, pairs: Sequence[tuple[Example, Any]]) -> dict[int, Any]:
    """The stored teacher logprobs of each example aligned to the student's tokens by bytes
    (as sparse KD aligns them), keyed by id(example); examples without logprobs are left out."""
    from kdstudio.distill.align import align_example
    from kdstudio.teachers.vocab import VocabBytes

    if not any(ex.logprobs is not None for ex, _ in pairs):
        return {}
    vocab = VocabBytes(tok)
    return {
        id(ex): align_example(enc, ex.response, ex.logprobs, vocab, mode="bytes")
        for ex, enc in pairs
        if ex.logprobs is not None
    }


def _encode_all(
    tok: Any, examples: Sequence[Example], max_length: int
) -> tuple[list[tuple[Example, Any]], int]:
    """(example, Encoded) pairs as training encodes them, and how many were too long."""
    from kdstudio.distill.batches import encode_example

    pairs, dropped = [], 0
    for ex in examples:
        enc = encode_example(tok, ex.messages, ex.response, max_length)
        if enc is None:
            dropped += 1
        else:
            pairs.append((ex, enc))
    return pairs, dropped


def _stop_ids(tok: Any, model: Any, encoded: Sequence[Any]) -> list[int]:
    """Token ids that end an answer: eos, the generation config's, and the end-of-turn token
    that training puts last in every response."""
    from kdstudio.distill.batches import IGNORE

    ids = {tok.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen_eos) if isinstance(gen_eos, list) else {gen_eos}
    for enc in encoded:
        last = [x for x in enc.labels if x != IGNORE]
        if last:
            ids.add(last[-1])
    return sorted(i for i in ids if i is not None)


def evaluate(config: EvalConfig, ws: Workspace, sink: Sink, cancel: CancelToken) -> Evaluation:
    """Generate and score the held-out prompts of a run; returns the stored evaluation."""
    from kdstudio.distill import checkpoint as ckpt
    from kdstudio.distill import runs

    run = runs.get_run(ws, config.run)
    examples = held_out_examples(ws, run)
    path = ckpt.resolve_checkpoint(ws, run.name, config.checkpoint)
    ckpt.base_student_path(ws, run)  # "before" needs the starting weights: said before loading
    device = plan.pick_device(config.device, setting="eval.device")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard loading bars would flood the console
    sink.emit(Log(f"evaluating {run.name} at {path.name} on {device.type}: loading the students"))
    students = _Students(ws, run, config.checkpoint, device)
    pairs, dropped = _encode_all(students.tok, examples, int(run.config["data"]["max_length"]))
    if config.limit is not None:
        pairs = pairs[: config.limit]
    if not pairs:
        raise UserError(
            f"run {run.name!r} has no held-out prompt to evaluate ({len(examples)} held out, "
            f"{dropped} longer than data.max_length)"
        )
    scoring = _Scoring(
        _stop_ids(students.tok, students.after, [enc for _, enc in pairs]),
        _teacher_targets(students.tok, pairs),
        _references(ws, [ex for ex, _ in pairs]),
        _TeacherScorer(ws, run.config["data"]["collection"], device),
    )
    eval_id = _create_row(ws, run, path, config)
    sink = FanoutSink([sink, StoreSink(ws, "eval", eval_id)])
    if dropped:
        sink.emit(Log(f"{dropped} held-out prompts are longer than data.max_length: skipped"))
    done: list[EvalItem] = []
    sink.emit(Progress(0, len(pairs), unit="prompt"))  # the clock starts before the first batch
    try:
        for batch in _batches(pairs, config.batch_size):
            if cancel.cancelled:
                break
            items = _score_batch(students, batch, config, scoring, device)
            _store_items(ws, eval_id, items)
            for it in items:
                done.append(it)
                after = it.metrics["after"]
                sink.emit(RowDone(it.idx, "done", extra={"rouge_l": after["rouge_l"]}))
                sink.emit(Progress(len(done), len(pairs), unit="prompt", extra=_running(done)))
    except BaseException as exc:
        status = "stopped" if isinstance(exc, KeyboardInterrupt) else "failed"
        _finish_row(ws, eval_id, status, _summary(done, pairs, dropped, path), str(exc))
        raise
    finally:
        students.close()
        scoring.teacher.close()
    summary = _summary(done, pairs, dropped, path)
    if len(done) < len(pairs):
        _finish_row(ws, eval_id, "stopped", summary)
        raise Cancelled(
            f"evaluation stopped after {len(done)} of {len(pairs)} prompts; what was done is "
            f"stored as evaluation {eval_id}"
        )
    _finish_row(ws, eval_id, "finished", summary)
    result = get_evaluation(ws, eval_id)
    sink.emit(Finished(f"evaluated {run.name} at {path.name} on {len(done)} prompts", summary))
    return result


def _running(done: Sequence[EvalItem]) -> dict[str, float]:
    """Running means for the progress line: ROUGE-L before and after."""
    n = len(done)
    return {
        "rouge_l_before": round(sum(it.metrics["before"]["rouge_l"] for it in done) / n, 4),
        "rouge_l_after": round(sum(it.metrics["after"]["rouge_l"] for it in done) / n, 4),
    }


def _summary(
    done: Sequence[EvalItem], pairs: Sequence[Any], dropped: int, path: Any
) -> dict[str, Any]:
    return {
        **summarize(done),
        "planned": len(pairs),
        "too_long": dropped,
        "checkpoint": path.name,
    }
