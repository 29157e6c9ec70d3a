"""Run every benchmark in bench/ and write BENCHMARKS.md (called by `scripts/bench`).

    scripts/bench                  # every bench/bench_*.py at its full size
    scripts/bench --quick          # smaller sizes (minutes instead of tens of minutes)
    scripts/bench --only train kd  # some of them; BENCHMARKS.md then holds only those

Each script runs in its own process with `--json OUT` (see bench/_results.py): one table
per benchmark with kdstudio's figure, the reference measured in the same run, the ratio and
the target. The machine (CPU model, cores, memory, torch version, date) heads the file, and
so does how busy the CPUs were with other work while each benchmark ran (from /proc/stat:
CPU time the whole machine spent minus what the benchmark's processes spent), because wall
times on a shared machine read slower than the code is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

#: Extra arguments per benchmark for --quick (a benchmark not listed runs as it is).
QUICK_ARGS = {
    "collect": ["--quick"],
    "data": ["--rows", "200000"],
    "gui": ["--quick"],
    "kd": ["--rounds", "2"],
    "kd_quality": ["--seeds", "0", "1", "--steps", "300"],
    "loss_memory": ["--chunk-sizes", "512"],
    "train": ["--steps", "60", "--repeats", "2"],
}
#: How to run it in the full set, where that differs from the script's own default.
FULL_ARGS: dict[str, list[str]] = {}


@dataclass
class Outcome:
    name: str
    command: list[str]
    seconds: float
    returncode: int | None
    output: str
    result: dict | None
    cpu_seconds: float  # CPU time of the benchmark's processes
    busy_seconds: float  # CPU time of the whole machine meanwhile
    load: tuple[float, float]
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def others_share(self) -> float:
        """Share of the machine's CPU capacity that other work used while this ran."""
        capacity = self.seconds * (os.cpu_count() or 1)
        return max(0.0, self.busy_seconds - self.cpu_seconds) / max(capacity, 1e-9)


def cpu_busy_seconds() -> float:
    """CPU seconds every CPU of the machine has spent busy since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    mem = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch, transformers; print(torch.__version__); print(transformers.__version__);"
            "print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')",
        ],
        capture_output=True,
        text=True,
    )
    torch_v, tf_v, gpu = ([*probe.stdout.split("\n"), "?", "?", "?"])[:3]
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} logical ({affinity} usable by this process)",
        "memory": mem or "?",
        "GPU": gpu or "none",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "torch": torch_v or "?",
        "transformers": tf_v or "?",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def benchmarks(only: list[str] | None) -> list[tuple[str, Path]]:
    found = [(p.stem.removeprefix("bench_"), p) for p in sorted(BENCH.glob("bench_*.py"))]
    if only:
        unknown = sorted(set(only) - {n for n, _ in found})
        if unknown:
            known = ", ".join(n for n, _ in found)
            raise SystemExit(f"scripts/bench: no benchmark {', '.join(unknown)} (known: {known})")
        found = [(n, p) for n, p in found if n in only]
    return found


def run_one(name: str, path: Path, quick: bool, timeout: float, work: Path) -> Outcome:
    out_json = work / f"{name}.json"
    args = QUICK_ARGS.get(name, []) if quick else FULL_ARGS.get(name, [])
    takes_json = '"--json"' in path.read_text()  # else it runs as it is; its output is shown
    command = [sys.executable, str(path), *args]
    if takes_json:
        command += ["--json", str(out_json)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    load0, busy0, cpu0, t0 = os.getloadavg()[0], cpu_busy_seconds(), children_cpu(), time.time()
    error, code = None, None
    try:
        proc = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        output, code = proc.stdout, proc.returncode
        if code != 0:
            error = f"exited with {code}"
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode()
        error = f"timed out after {timeout:.0f} s"
    seconds = time.time() - t0
    result = None
    if out_json.exists():
        result = json.loads(out_json.read_text())
    elif error is None and takes_json:
        error = "wrote no --json results"
    outcome = Outcome(
        name,
        command,
        seconds,
        code,
        output,
        result,
        children_cpu() - cpu0,
        cpu_busy_seconds() - busy0,
        (load0, os.getloadavg()[0]),
        error,
    )
    status = error or "done"
    print(
        f"   {status} in {seconds:.0f} s (other work used {outcome.others_share:.0%} of the CPUs)",
        file=sys.stderr,
        flush=True,
    )
    return outcome


# -- BENCHMARKS.md -----------------------------------------------------------------------------


def md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ").strip()


def md_table(headers: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]
    return lines


def counts(result: dict | None) -> tuple[int, int]:
    rows = (result or {}).get("rows", [])
    return sum(r["status"] == "ok" for r in rows), sum(r["status"] == "MISSED" for r in rows)


def contention_line(o: Outcome) -> str:
    share = o.others_share
    word = "idle" if share < 0.1 else "shared" if share < 0.5 else "heavily contended"
    return (
        f"{share:.0%} of the CPUs busy with other work ({word}); load average "
        f"{o.load[0]:.1f} -> {o.load[1]:.1f}"
    )


GPU_RESULTS = ROOT / "bench" / "gpu"


def gpu_section() -> list[str]:
    """BENCHMARKS.md's GPU part: every run of scripts/gpu-check kept in bench/gpu/ (its JSON),
    newest first. `scripts/bench` runs on the CPU; these were measured on a GPU machine."""
    lines = ["## GPU", ""]
    runs = sorted(GPU_RESULTS.glob("*.json"), reverse=True)
    if not runs:
        return [*lines, "No GPU run of `scripts/gpu-check` is recorded yet.", ""]
    lines += [
        "Measured by `scripts/gpu-check` on a GPU machine (not by `scripts/bench`); each run's "
        "full results are kept in `bench/gpu/`.",
        "",
    ]
    for path in runs:
        doc = json.loads(path.read_text())
        meta = doc["meta"]
        lines += [
            f"### {meta['date']}, {meta['device']}",
            "",
            f"torch {meta['torch']}, transformers {meta['transformers']}, Python "
            f"{meta['python']}; code {meta.get('code', '?')}; `{meta.get('run', 'scripts/gpu-check')}`.",
            "",
        ]
        rows = [
            [name, r["measure"], r["value"], r["reference"], r["ratio"], r["target"]]
            for name, res in doc["sections"].items()
            for r in res.get("rows", [])
        ]
        lines += md_table(["section", "measure", "kdstudio", "reference", "ratio", "target"], rows)
        lines.append("")
        failed = [f"`{n}`: {r['error']}" for n, r in doc["sections"].items() if "error" in r]
        lines += [f"- failed or not reached: {f}" for f in failed]
        lines += [f"- {note}" for note in meta.get("notes", [])]
        if failed or meta.get("notes"):
            lines.append("")
    return lines


def render(outcomes: list[Outcome], info: dict[str, str], quick: bool, total: float) -> str:
    lines = [
        "# kdstudio benchmarks",
        "",
        f"Written by `scripts/bench{' --quick' if quick else ''}` on {info['date']} "
        f"({total / 60:.0f} min). Each benchmark runs in its own process and measures its "
        "reference in the same run, on the same machine, so the ratios hold even where the "
        "absolute figures depend on the hardware. Rerun with `scripts/bench` (or `--quick`).",
        "",
        "## Machine",
        "",
        *md_table(["", ""], [[k, v] for k, v in info.items()]),
        "",
    ]
    busy = [o for o in outcomes if o.others_share >= 0.25]
    if busy:
        lines += [
            "> **The CPUs were shared with other work during "
            + ", ".join(f"`{o.name}` ({o.others_share:.0%})" for o in busy)
            + "**: wall-clock figures there read slower than on a quiet machine; "
            "ratios of CPU time and of figures measured side by side are less affected.",
            "",
        ]
    lines += ["## Summary", ""]
    summary = []
    for o in outcomes:
        ok, missed = counts(o.result)
        summary.append(
            [
                f"[{o.name}](#{o.name.replace('_', '-')})",
                (o.result or {}).get("title", ""),
                "failed: " + o.error
                if o.error
                else f"{ok} met, {missed} missed"
                if o.result
                else "see its output (no --json)",
                f"{o.seconds:.0f} s",
                f"{o.others_share:.0%}",
            ]
        )
    lines += md_table(["benchmark", "what", "targets", "took", "CPU used by other work"], summary)
    lines.append("")
    for o in outcomes:
        res = o.result or {}
        lines += [f"## {o.name}", ""]
        if res.get("title"):
            lines += [f"**{res['title']}**", ""]
        shown = o.command[1:-2] if "--json" in o.command else o.command[1:]
        lines += [f"`python {' '.join(Path(c).name if c.endswith('.py') else c for c in shown)}`"]
        lines += ["", f"Ran {o.seconds:.0f} s; {contention_line(o)}.", ""]
        if res.get("reference"):
            lines += [f"Reference: {res['reference']}.", ""]
        if o.error:
            lines += [f"**Failed: {o.error}.** The last lines it printed:", "", "```"]
            lines += o.output.strip().splitlines()[-25:] + ["```", ""]
        if res.get("rows"):
            rows = [
                [r["measure"], r["kdstudio"], r["reference"], r["ratio"], r["target"], r["status"]]
                for r in res["rows"]
            ]
            lines += md_table(
                ["measure", "kdstudio", "reference (same run)", "ratio", "target", ""], rows
            )
            lines.append("")
        for note in res.get("notes", []):
            lines += [f"- {note}"]
        if res.get("notes"):
            lines.append("")
        if o.output.strip() and not o.error:
            printed = [ln.rstrip() for ln in o.output.strip().splitlines() if "\r" not in ln]
            if o.result:
                lines += ["<details><summary>its own output</summary>", ""]
            lines += ["```", *printed[-60:], "```", ""]
            if o.result:
                lines += ["</details>", ""]
    lines += gpu_section()
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller sizes (see QUICK_ARGS)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="only these (e.g. train kd)")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="the report file")
    ap.add_argument(
        "--timeout", type=float, default=1800, help="seconds before a benchmark is stopped"
    )
    args = ap.parse_args(argv)
    todo = benchmarks(args.only)
    info = machine()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="kdstudio-bench-") as tmp:
        outcomes = [run_one(n, p, args.quick, args.timeout, Path(tmp)) for n, p in todo]
    text = render(outcomes, info, args.quick, time.time() - t0)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(text)
    os.replace(tmp_out, args.out)
    failed = [o.name for o in outcomes if o.error]
    print(
        f"wrote {args.out}"
        + (f"; failed: {', '.join(failed)}" if failed else "; every benchmark ran"),
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
