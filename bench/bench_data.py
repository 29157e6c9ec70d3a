"""Benchmark: import a large JSONL, then page, count and search it.

    python bench/bench_data.py                  # 1,000,000 rows of ~200 bytes
    python bench/bench_data.py --rows 200000    # quicker

Prints each figure beside its target and beside the time plain `python -c` takes just to
read and json-parse the same file (the floor for any Python importer), as a ratio. Peak
memory is measured for the full file and for a tenth of it: flat memory means the two match.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = [
    "model",
    "teacher",
    "student",
    "token",
    "loss",
    "gradient",
    "batch",
    "layer",
    "attention",
    "distill",
    "prompt",
    "answer",
    "explain",
    "why",
    "how",
    "what",
    "when",
    "where",
    "data",
    "train",
    "learn",
    "small",
    "large",
    "fast",
    "slow",
    "python",
    "code",
    "write",
    "story",
    "poem",
    "list",
    "summary",
    "table",
    "number",
    "value",
    "error",
    "result",
    "method",
    "paper",
    "idea",
]

IMPORT_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from kdstudio.workspace import Workspace
from kdstudio.data import import_dataset
ws = Workspace.open({ws!r})
t = time.perf_counter()
r = import_dataset(ws, {path!r}, name={name!r})
dt = time.perf_counter() - t
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"seconds": dt, "rows": r.n_rows, "rss_mb": u.ru_maxrss / 1024, "cpu": u.ru_utime + u.ru_stime}}))
"""

PARSE_CHILD = """
import json, resource, time
t = time.perf_counter()
n = 0
with open({path!r}, 'rb') as f:
    for line in f:
        json.loads(line)
        n += 1
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"seconds": time.perf_counter() - t, "rows": n, "rss_mb": u.ru_maxrss / 1024, "cpu": u.ru_utime + u.ru_stime}}))
"""

BASE_CHILD = """
import json, resource
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()


def make_file(path: Path, rows: int, seed: int = 0) -> None:
    """OpenAI chat rows of ~200 bytes: a user turn and an assistant answer."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            rec = {
                "messages": [
                    {"role": "user", "content": f"{sentence(rng, 8)}? ({i})"},
                    {"role": "assistant", "content": sentence(rng, 10) + "."},
                ]
            }
            f.write(json.dumps(rec) + "\n")


def child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(fn, repeat: int = 5) -> float:
    """Best of `repeat` in milliseconds (the first call included in `cold`)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated file and workspace")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON (scripts/bench)")
    args = ap.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="kd-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    big, small = work / "big.jsonl", work / "small.jsonl"
    print(f"generating {args.rows:,} rows in {work} ...", file=sys.stderr)
    make_file(big, args.rows)
    make_file(small, max(args.rows // 10, 1))
    size_mb = big.stat().st_size / 1e6
    print(f"  {size_mb:.0f} MB, {big.stat().st_size / args.rows:.0f} bytes a row", file=sys.stderr)

    print("parsing with the json module ...", file=sys.stderr)
    parse = child(PARSE_CHILD.format(path=str(big)))
    base = child(BASE_CHILD)
    print("importing ...", file=sys.stderr)
    ws_dir = work / "ws"
    shutil.rmtree(ws_dir, ignore_errors=True)
    imp_small = child(
        IMPORT_CHILD.format(root=str(ROOT), ws=str(ws_dir), path=str(small), name="small")
    )
    imp = child(IMPORT_CHILD.format(root=str(ROOT), ws=str(ws_dir), path=str(big), name="big"))
    assert imp["rows"] == args.rows, imp

    from kdstudio.data import store
    from kdstudio.workspace import Workspace

    ws = Workspace.open(ws_dir)
    t = time.perf_counter()
    first = store.page(ws, "big", 0, 100)
    cold_page = (time.perf_counter() - t) * 1000
    assert len(first) == 100
    page_first = timed(lambda: store.page(ws, "big", 0, 100))
    page_deep = timed(lambda: store.page(ws, "big", int(args.rows * 0.9), 100))
    count_ms = timed(lambda: store.count(ws, "big"))
    term = "attention gradient"
    n_match = store.count(ws, "big", search=term)
    fts_page = timed(lambda: store.page(ws, "big", 0, 100, search=term))
    fts_count = timed(lambda: store.count(ws, "big", search=term), repeat=3)
    rare = f"({args.rows // 2})"
    fts_rare = timed(lambda: store.page(ws, "big", 0, 100, search=rare.strip("()")))
    db_mb = sum(p.stat().st_size for p in ws_dir.glob("kdstudio.sqlite*")) / 1e6
    ws.close()

    rate = imp["rows"] / imp["seconds"]
    parse_rate = parse["rows"] / parse["seconds"]
    rows = [
        ("import rows/s", f"{rate:,.0f}", ">= 50,000", f"{parse_rate:,.0f} parse-only rows/s",
         f"{imp['seconds'] / parse['seconds']:.1f}x the parse time"),
        ("import time", f"{imp['seconds']:.1f} s", f"<= {args.rows / 50_000:.0f} s",
         f"{parse['seconds']:.1f} s", f"{imp['seconds'] / parse['seconds']:.1f}x"),
        ("import CPU time (both threads)", f"{imp['cpu']:.1f} s", "",
         f"{parse['cpu']:.1f} s", f"{imp['cpu'] / parse['cpu']:.1f}x"),
        (f"peak RSS, {args.rows:,} rows", f"{imp['rss_mb']:.0f} MB", "flat in file size",
         f"{parse['rss_mb']:.0f} MB", f"{imp['rss_mb'] / parse['rss_mb']:.1f}x"),
        (f"peak RSS, {args.rows // 10:,} rows", f"{imp_small['rss_mb']:.0f} MB", "same as above",
         f"(python alone {base['rss_mb']:.0f} MB)", f"{imp['rss_mb'] / imp_small['rss_mb']:.2f}x small"),
        ("first page (100 rows), cold", f"{cold_page:.1f} ms", "< 100 ms", "", ""),
        ("first page (100 rows), warm", f"{page_first:.1f} ms", "< 100 ms", "", ""),
        ("page at row 90%", f"{page_deep:.1f} ms", "< 100 ms", "", ""),
        ("count", f"{count_ms:.2f} ms", "< 50 ms", "", ""),
        (f"FTS '{term}', first 100", f"{fts_page:.1f} ms", "< 100 ms", f"{n_match:,} matches", ""),
        (f"FTS '{term}', count", f"{fts_count:.1f} ms", "", "", ""),
        ("FTS rare term, first page", f"{fts_rare:.1f} ms", "< 100 ms", "", ""),
        ("database size", f"{db_mb:.0f} MB", "", f"file {size_mb:.0f} MB", f"{db_mb / size_mb:.1f}x"),
    ]  # fmt: skip
    headers = ("measure", "kdstudio", "target", "json parse only", "ratio")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(5)]
    load = os.getloadavg()[0]
    print(
        f"\nkdstudio data benchmark: {args.rows:,} rows, {os.cpu_count()} CPUs, load average {load:.1f}"
    )
    print("(wall times suffer when other work shares the CPUs; the CPU-time ratio does not)\n")
    for r in [headers, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if not args.keep and args.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        from _results import Row, write_results

        write_results(
            args.json, "data", f"Data: import {args.rows:,} rows of JSONL, then page, count, search",
            [Row(m, k, ref, ratio, t) for m, k, t, ref, ratio in rows],
            reference="reading and json-parsing the same file in plain Python (the floor)",
            notes=["wall times suffer when other work shares the CPUs; the CPU-time ratio does not"],
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
