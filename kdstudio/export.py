"""Export: a run's student as a Hugging Face model folder with a model card of its provenance.

    result = export(ExportConfig(run="demo", out="~/models/demo"), ws, sink, cancel)

The folder holds `save_pretrained` weights (safetensors), the tokenizer with the chat
template training used, `README.md` (the model card) and `kdstudio.json` (the same
provenance, machine-readable). What the weights are:

- a full fine-tune: the student's weights (`AutoModelForCausalLM.from_pretrained(DIR)`);
- a LoRA run: the adapter (`adapter_config.json`, `adapter_model.safetensors`), which
  names the base student; with `merge_lora` the adapter merged into the base weights,
  a plain model like a full fine-tune.

The card names the base student, the teachers (name, model and endpoint host only: never
a key, a header, a full URL or its query), the datasets and collections, dates, the method
and the resolved config, the latest training metrics and the evaluation summary, and a note
on teacher providers' terms. Everything is written into a hidden folder next to the target
and renamed into place at the end; a folder that is not empty is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlparse

from kdstudio import __version__
from kdstudio.config import Section, dumps_toml, setting
from kdstudio.errors import Cancelled, ConfigError, NotFound, UserError
from kdstudio.events import FanoutSink, Finished, Log, Progress, Sink, StoreSink, Warning

if TYPE_CHECKING:
    from kdstudio.events import CancelToken
    from kdstudio.workspace import Workspace

CARD = "README.md"
PROVENANCE = "kdstudio.json"
#: Collection parameters shown on the card (request shape only; nothing else is copied).
SHOWN_PARAMS = ("samples", "max_tokens", "temperature", "top_p", "seed", "top_logprobs")
TERMS_NOTE = (
    "Many teacher providers' terms of use restrict using their outputs to develop models "
    "that compete with theirs. This model was trained on outputs of the teachers listed "
    "above{names}; check each provider's current terms before you publish, share or use it "
    "commercially."
)


@dataclass
class ExportConfig(Section):
    """What to export and where (`kdstudio export RUN --out DIR ...`)."""

    _section: ClassVar[str] = "export"

    run: str = setting(help="The run to export, by name.")
    out: Path = setting(help="The folder to write; it must not exist or be empty.")
    checkpoint: str = setting(
        "last", "Which checkpoint: `last`, `best` (lowest eval loss) or a step number."
    )
    merge_lora: bool = setting(
        False, "For a LoRA run: merge the adapter into the base weights (else export the adapter)."
    )

    def check(self) -> None:
        self.checkpoint = str(self.checkpoint).strip()
        if self.checkpoint not in ("last", "best") and not self.checkpoint.isdigit():
            raise ConfigError(
                f"export.checkpoint must be last, best or a step number; got {self.checkpoint!r}"
            )
        self.out = Path(self.out).expanduser()


@dataclass
class ExportResult:
    path: Path
    kind: str  # model | merged | adapter
    step: int | None
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


# -- provenance --------------------------------------------------------------------------------


def endpoint_host(endpoint: str | None) -> str:
    """The host (and port) of an endpoint URL; never its credentials, path or query.

    `local:/models/x` (a local teacher) reads as `local`.
    """
    if not endpoint:
        return "unknown"
    if endpoint.startswith("local:"):
        return "local"
    try:
        parsed = urlparse(endpoint)
        host, port = parsed.hostname, parsed.port
    except ValueError:
        return "unknown"
    if not host:
        return "unknown"
    return f"{host}:{port}" if port else host


def _iso(t: float | None) -> str | None:
    if not t:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _teacher_record(ws: Workspace, name: str | None, endpoint: str | None, model: str | None):
    """{name, kind, model, host} of one teacher, from its stored record when it still exists."""
    kind, host = ("local", "local") if (endpoint or "").startswith("local:") else ("openai", None)
    if name and name in ws.teacher_names():
        t = ws.get_teacher(name)
        kind = t.kind
        model = model or t.model or (Path(t.path).name if t.path else None)
        host = endpoint_host(t.base_url) if t.kind == "openai" else "local"
    return {
        "name": name,
        "kind": kind,
        "model": model or "unknown",
        "host": host or endpoint_host(endpoint),
    }


def _collection_record(ws: Workspace, name: str) -> tuple[dict, list[dict], dict | None]:
    """(collection, its teachers, its dataset) as plain dicts for the card."""
    from kdstudio.collect.store import get_collection, review_counts

    info = get_collection(ws, name)
    used = ws.query(
        "SELECT DISTINCT r.endpoint, r.model, r.source FROM collection_items ci"
        " JOIN responses r ON r.hash = ci.hash WHERE ci.collection_id=? AND ci.status='done'",
        (info.id,),
    )
    teachers = []
    for r in used:
        if r["source"] == "import":
            continue
        rec = _teacher_record(ws, info.teacher_name, r["endpoint"], r["model"])
        if rec not in teachers:
            teachers.append(rec)
    if not teachers and info.teacher_name:
        teachers.append(_teacher_record(ws, info.teacher_name, None, None))
    edited = ws.query_one(
        "SELECT COUNT(*) FROM collection_items WHERE collection_id=? AND edited_text IS NOT NULL",
        (info.id,),
    )[0]
    curation: dict[str, dict[str, int]] = {}
    for r in ws.query(
        "SELECT decider, review, COUNT(*) FROM collection_items WHERE collection_id=?"
        " AND status='done' AND decider IS NOT NULL GROUP BY decider, review",
        (info.id,),
    ):
        curation.setdefault(r[0], {})[r[1]] = r[2]
    collection = {
        "name": info.name,
        "source": info.source,
        "teacher": info.teacher_name,
        "dataset": info.dataset_name,
        "answers": info.counts.get("done", 0),
        "reviews": {**review_counts(ws, info.id), "edited": edited},
        # who decided the reviews in force: {decider: {review: answers}}
        "curation": curation,
        "params": {k: info.params[k] for k in SHOWN_PARAMS if info.params.get(k) is not None},
        "created": _iso(info.created_at),
        "updated": _iso(info.updated_at),
    }
    row = ws.query_one(
        "SELECT name, n_rows, source, created_at FROM datasets WHERE id=?", (info.dataset_id,)
    )
    dataset = None
    if row is not None:
        dataset = {
            "name": row["name"],
            "rows": row["n_rows"],
            "file": Path(row["source"]).name if row["source"] else None,
            "imported": _iso(row["created_at"]),
        }
    return collection, teachers, dataset


def _missing_collection(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "source": "removed from the workspace since training",
        "teacher": None,
        "dataset": None,
        "answers": None,
        "reviews": {},
        "curation": {},
        "params": {},
        "created": None,
        "updated": None,
    }


def _base_student(path: str) -> dict[str, Any]:
    info: dict[str, Any] = {"path": path, "name": Path(path).name}
    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return info
    info["model_type"] = cfg.get("model_type")
    info["architectures"] = cfg.get("architectures")
    hub = cfg.get("_name_or_path")
    if isinstance(hub, str) and hub.count("/") == 1 and not Path(hub).exists():
        info["hub_id"] = hub
    return info


def _evaluation_record(ws: Workspace, run: str, step: int | None) -> dict[str, Any] | None:
    from kdstudio.evaluate import latest_evaluation

    ev = latest_evaluation(ws, run, step=step) or latest_evaluation(ws, run)
    if ev is None:
        return None
    return {
        "id": ev.id,
        "checkpoint": ev.checkpoint,
        "step": ev.step,
        "date": _iso(ev.finished_at or ev.created_at),
        "prompts": ev.summary.get("n"),
        "metrics": ev.summary.get("metrics", {}),
        "note": ev.summary.get("note"),
    }


def provenance(ws: Workspace, run: Any, checkpoint: Path, kind: str) -> dict[str, Any]:
    """Everything the model card says, as one JSON-able document."""
    from kdstudio.distill import runs

    meta = json.loads((checkpoint / "meta.json").read_text(encoding="utf-8"))
    collections, teachers, datasets = [], [], []
    for name in run.collections:
        try:
            collection, used, dataset = _collection_record(ws, name)
        except NotFound:  # removed since training: say so rather than refuse to export
            collection, used, dataset = _missing_collection(name), [], None
        collections.append(collection)
        teachers += [t for t in used if t not in teachers]
        if dataset and dataset not in datasets:
            datasets.append(dataset)
    local = run.config.get("distill", {}).get("teacher")
    if local:
        rec = _teacher_record(ws, local, "local:", None)
        if rec not in teachers:
            teachers.append(rec)
    metrics = runs.latest_metrics(ws, run.id)
    return {
        "kdstudio": __version__,
        "exported": _iso(time.time()),
        "format": kind,
        "run": {
            "name": run.name,
            "status": run.status,
            "method": run.method,
            "created": _iso(run.created_at),
            "updated": _iso(run.updated_at),
        },
        "checkpoint": {
            "name": checkpoint.name,
            "step": meta.get("step"),
            "saved": _iso(meta.get("time")),
            "eval_loss": meta.get("eval_loss"),
        },
        "base_student": _base_student(run.config["student"]["path"]),
        "teachers": teachers,
        "collections": collections,
        "datasets": datasets,
        "config": run.config,
        "train_metrics": {k: {"step": s, "value": v} for k, (s, v) in sorted(metrics.items())},
        "evaluation": _evaluation_record(ws, run.name, meta.get("step")),
    }


# -- the model card ----------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def _teacher_label(t: dict[str, Any]) -> str:
    where = "a local model" if t["host"] == "local" else t["host"]
    return f"{t['name'] or 'unnamed'} ({t['model']} at {where})"


def model_card(doc: dict[str, Any]) -> str:
    """The README.md of an export, from `provenance(...)`."""
    run, ckpt, base = doc["run"], doc["checkpoint"], doc["base_student"]
    kind_words = {
        "model": "the full fine-tuned weights",
        "merged": "the LoRA adapter merged into the base weights",
        "adapter": "a LoRA adapter for the base student (load the base, then the adapter)",
    }
    front = ["---", f"library_name: {'peft' if doc['format'] == 'adapter' else 'transformers'}"]
    if base.get("hub_id"):
        front.append(f"base_model: {base['hub_id']}")
    front += ["pipeline_tag: text-generation", "tags:", "- kdstudio", "- knowledge-distillation"]
    front.append("---")
    out = [*front, "", f"# {run['name']}", ""]
    out.append(
        f"A student model distilled with kdstudio {doc['kdstudio']} by `{run['method']}` on "
        f"the teacher answers described below. This folder holds {kind_words[doc['format']]}, "
        f"from checkpoint `{ckpt['name']}` (step {ckpt['step']})."
    )
    out += ["", "## Base student", ""]
    base_line = f"- Folder: `{base['path']}`"
    if base.get("hub_id"):
        base_line += f" (Hugging Face: `{base['hub_id']}`)"
    out.append(base_line)
    if base.get("model_type"):
        out.append(
            f"- Architecture: {base['model_type']} ({', '.join(base.get('architectures') or [])})"
        )
    out += ["", "## Teachers", ""]
    if doc["teachers"]:
        out += _table(
            ["teacher", "model", "endpoint host"],
            [[t["name"], t["model"], t["host"]] for t in doc["teachers"]],
        )
    else:
        out.append("No teacher is recorded: the answers were imported from a file, or their")
        out.append("collection has been removed from the workspace since training.")
    out += ["", "## Data", ""]
    out += _table(
        [
            "collection",
            "source",
            "teacher",
            "dataset",
            "answers",
            "accepted",
            "rejected",
            "edited",
            "request",
            "collected",
        ],
        [
            [
                c["name"],
                c["source"],
                c["teacher"],
                c["dataset"],
                c["answers"],
                c["reviews"].get("accepted"),
                c["reviews"].get("rejected"),
                c["reviews"].get("edited"),
                ", ".join(f"{k}={v}" for k, v in c["params"].items()) or None,
                c["updated"],
            ]
            for c in doc["collections"]
        ],
    )
    curated = [
        [c["name"], decider, n.get("accepted", 0), n.get("rejected", 0), n.get("pending", 0)]
        for c in doc["collections"]
        for decider, n in sorted(c.get("curation", {}).items())
    ]
    if curated:
        out += [
            "",
            "Who decided the reviews (a person, a check program, a judge teacher or best-of-n; "
            "rejected answers were not trained on):",
            "",
        ]
        out += _table(["collection", "decided by", "accepted", "rejected", "pending"], curated)
    if doc["datasets"]:
        out.append("")
        out += _table(
            ["dataset", "rows", "file", "imported"],
            [[d["name"], d["rows"], d["file"], d["imported"]] for d in doc["datasets"]],
        )
    out += ["", "## Dates", ""]
    out += [
        f"- Run started: {run['created'] or '–'}; last update: {run['updated'] or '–'} "
        f"(status: {run['status']})",
        f"- Checkpoint saved: {ckpt['saved'] or '–'}",
        f"- Exported: {doc['exported']}",
    ]
    out += ["", "## Method and config", ""]
    out.append(
        f"Method `{run['method']}`; the run's full resolved config "
        "(`kdstudio train --config FILE` reproduces it):"
    )
    out += ["", "```toml", dumps_toml(doc["config"]).rstrip(), "```"]
    out += ["", "## Metrics", ""]
    if doc["train_metrics"]:
        out.append("Latest training metrics (eval metrics are on the run's held-out prompts):")
        out.append("")
        out += _table(
            ["metric", "step", "value"],
            [[k, v["step"], v["value"]] for k, v in doc["train_metrics"].items()],
        )
    else:
        out.append("No training metrics were recorded.")
    ev = doc["evaluation"]
    out.append("")
    if ev:
        out.append(
            f"Evaluation {ev['id']} of checkpoint `{ev['checkpoint']}` on {ev['prompts']} "
            f"held-out prompts ({ev['date']}): the student before training (its starting "
            "weights), after training, and the teacher."
        )
        out.append("")
        out += _table(
            ["metric", "before", "after", "teacher", "gap closed"],
            [
                [
                    name,
                    row.get("before"),
                    row.get("after"),
                    row.get("teacher"),
                    None if row.get("gap_closed") is None else f"{row['gap_closed']:.0%}",
                ]
                for name, row in ev["metrics"].items()
            ],
        )
        out += [
            "",
            "`loglik` is the mean log-likelihood per token of the teacher's answers; "
            f"{ev['note']}. `gap closed` is (after - before) / (teacher - before).",
        ]
        if ev["step"] != ckpt["step"]:
            out.append(f"(This evaluation is of step {ev['step']}, not of the exported step.)")
    else:
        out.append("No evaluation yet (`kdstudio eval RUN` compares the student with its teacher).")
    out += ["", "## Use", "", "```python"]
    if doc["format"] == "adapter":
        out += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{base["hub_id"] if base.get("hub_id") else base["path"]}")',
            'model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER")',
            "# with peft installed and the base folder in place, this loads both in one go:",
            '# model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")',
        ]
    else:
        out += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")',
        ]
    out += ['tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")', "```"]
    names = [_teacher_label(t) for t in doc["teachers"]]
    out += ["", "## Terms of the teachers' outputs", ""]
    out.append(TERMS_NOTE.format(names=": " + "; ".join(names) if names else ""))
    return "\n".join(out) + "\n"


# -- the job -----------------------------------------------------------------------------------


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder to export into")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(
            f"--out {out} is not empty; kdstudio never overwrites an export: choose a new "
            "folder or empty this one"
        )


def _write_weights(tmp: Path, checkpoint: Path, kind: str, base_path: Path | None) -> None:
    from transformers import AutoModelForCausalLM

    if kind == "adapter":
        for f in (checkpoint / "model").iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        return
    if kind == "merged":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_path)
        model = PeftModel.from_pretrained(base, checkpoint / "model").merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(checkpoint / "model")
    model.config.use_cache = True  # training turns the KV cache off; inference wants it
    model.save_pretrained(tmp)


def _same_modes(folder: Path) -> None:
    """Give every file of an export the mode a new file gets here, and every folder a new
    folder's (0644 and 0755 under the usual umask): safetensors writes the weights through
    a private temporary file (0600), so they were the one file that whoever may read the
    export could not."""
    mask = _umask()
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    """This process's umask, read without changing it where the system says (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and put back at once
    os.umask(mask)
    return mask


def _kind(run: Any, checkpoint: Path, merge: bool, sink: Sink) -> str:
    lora = bool(run.config.get("lora")) or (checkpoint / "model" / "adapter_config.json").exists()
    if not lora:
        if merge:
            sink.emit(Warning(f"run {run.name!r} is a full fine-tune: there is no LoRA to merge"))
        return "model"
    if merge:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise UserError("--merge-lora needs peft: pip install 'kdstudio[lora]'") from None
        return "merged"
    return "adapter"


def export(config: ExportConfig, ws: Workspace, sink: Sink, cancel: CancelToken) -> ExportResult:
    """Write a run's checkpoint as a model folder with its model card (see the module doc)."""
    from kdstudio.distill import checkpoint as ckpt
    from kdstudio.distill import runs

    t0 = time.time()
    out = config.out.resolve()
    run = runs.get_run(ws, config.run)
    checkpoint = ckpt.resolve_checkpoint(ws, run.name, config.checkpoint)
    _check_target(out)  # before the heavy imports: bad input is refused at once

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    sink = FanoutSink([sink, StoreSink(ws, "export", run.id)])
    kind = _kind(run, checkpoint, config.merge_lora, sink)
    # merging needs the starting weights: a moved student folder is said before any work
    base_path = ckpt.base_student_path(ws, run) if kind == "merged" else None
    hf_logging.disable_progress_bar()
    tmp = out.parent / f".{out.name}.kdstudio-tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write in {out.parent} ({exc.strerror})") from None
    steps = ["weights", "tokenizer", "model card"]
    try:
        sink.emit(Log(f"exporting {run.name} {checkpoint.name} as {kind} to {out}"))
        for done, what in enumerate(steps):
            cancel.raise_if_cancelled()
            sink.emit(Progress(done, len(steps), unit="step", message=what))
            if what == "weights":
                _write_weights(tmp, checkpoint, kind, base_path)
            elif what == "tokenizer":
                AutoTokenizer.from_pretrained(checkpoint / "tokenizer").save_pretrained(tmp)
            else:
                doc = provenance(ws, run, checkpoint, kind)
                (tmp / PROVENANCE).write_text(
                    json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8"
                )
                (tmp / CARD).write_text(model_card(doc), encoding="utf-8")
        cancel.raise_if_cancelled()
        _same_modes(tmp)
        _check_target(out)  # nothing appeared there meanwhile
        if out.is_dir():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Cancelled):
            raise Cancelled(f"export of {run.name} stopped; nothing was written to {out}") from None
        raise
    sink.emit(Progress(len(steps), len(steps), unit="step", message="done"))
    files = sorted(p.name for p in out.iterdir())
    step = json.loads((checkpoint / "meta.json").read_text(encoding="utf-8")).get("step")
    result = ExportResult(out, kind, step, files, time.time() - t0)
    sink.emit(Finished(f"exported {run.name} (step {step}, {kind}) to {out}", result.to_dict()))
    return result
