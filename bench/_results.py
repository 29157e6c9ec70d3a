"""Machine-readable benchmark results: what `--json OUT` of each bench script writes.

    from _results import Row, write_results
    write_results(args.json, "train", "Training throughput", rows, reference="transformers Trainer")

One document per benchmark, read by `scripts/bench` to write BENCHMARKS.md:

    {"benchmark": "train", "title": ..., "reference": "what the reference column measures",
     "rows": [{"measure", "kdstudio", "reference", "ratio", "target", "status"}, ...],
     "notes": [...], "argv": [...], "load_average": [start, end]}

Figures are strings with their units, as the script prints them; `status` is "ok", "MISSED"
or "" (no target). A script imports this module from its own folder (bench/ is on sys.path
when a script in it runs).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

_LOAD_AT_IMPORT = os.getloadavg()[0] if hasattr(os, "getloadavg") else None


@dataclass
class Row:
    """One measured figure beside its reference (measured in the same run) and target."""

    measure: str
    kdstudio: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    status: str = ""


def status(met: bool | None) -> str:
    return "" if met is None else ("ok" if met else "MISSED")


_NUMBER = re.compile(r"^\s*([-+]?[\d,]*\.?\d+)")
_BOUND = re.compile(r"^\s*(<=|>=|<|>)\s*([-+]?[\d,]*\.?\d+)")


def judge(figure: str, target: str) -> str:
    """ "ok"/"MISSED" for a simple numeric target ("< 100 ms", ">= 50,000"); "" otherwise."""
    m, v = _BOUND.match(target or ""), _NUMBER.match(figure or "")
    if not m or not v:
        return ""
    x, bound = float(v.group(1).replace(",", "")), float(m.group(2).replace(",", ""))
    op = m.group(1)
    met = {"<": x < bound, "<=": x <= bound, ">": x > bound, ">=": x >= bound}[op]
    return status(met)


def _judged(row: Row) -> str:
    """The figure a target is about: the ratio for "<= 0.35x"-style targets."""
    return row.ratio if row.target.rstrip().endswith("x") else row.kdstudio


def write_results(
    path: str | Path | None,
    name: str,
    title: str,
    rows: list[Row],
    *,
    reference: str = "",
    notes: list[str] | None = None,
) -> None:
    """Write the results document to `path` (nothing when `path` is None)."""
    if not path:
        return
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    doc = {
        "benchmark": name,
        "title": title,
        "reference": reference,
        "rows": [{**asdict(r), "status": r.status or judge(_judged(r), r.target)} for r in rows],
        "notes": list(notes or []),
        "argv": sys.argv[1:],
        "load_average": [_LOAD_AT_IMPORT, load_end],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
