"""Benchmark: the collector against the loopback OpenAI-protocol server.

    python bench/bench_collect.py            # the full table (about a minute)
    python bench/bench_collect.py --quick    # fewer requests

1. Throughput: the server (a separate process) answers every request after 50 ms. For
   concurrency 1, 8, 32 and 128, kdstudio's `collect` (top-5 logprobs, every answer
   committed) runs N fresh requests; achieved requests/s is shown beside the ideal
   (concurrency / latency) and beside the ceiling this machine's CPU allows (1 / CPU
   seconds per request). Targets: >= 0.9 x min(ideal, CPU ceiling).
2. CPU per request: the same requests through a bare asyncio loop of the `openai` client
   (a semaphore, answers kept in a list): kdstudio's CPU seconds per request beside the
   bare loop's (target: within 1.3x).
3. Rate limit: the server allows N requests/s and answers 429 (with retry-after) beyond;
   kdstudio at concurrency 32 must achieve >= 0.9 x N with zero lost rows (N capped at what
   this machine reached without a limit, so a busy machine does not read as a logic miss).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # kdstudio, and the loopback server

LATENCY = 0.05
MAX_TOKENS = 16
TOP_K = 5


class Server:
    """The loopback server in its own process (so its CPU is not counted as ours)."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "support.openai_server", *args],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.url = self.proc.stdout.readline().strip()

    def cpu(self) -> float:
        """CPU seconds the server process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/_stats") as r:
            return json.load(r)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def make_workspace(root: Path, url: str, n: int, tag: str):
    from kdstudio.config import TeacherConfig
    from kdstudio.workspace import Workspace

    ws = Workspace.open(root / f"ws-{tag}")
    did = ws.db.execute(
        "INSERT INTO datasets(name, n_rows, created_at) VALUES ('prompts', ?, 0)", (n,)
    ).lastrowid
    ws.db.executemany(
        "INSERT INTO dataset_rows(dataset_id, idx, messages, prompt, n_chars, row_hash) VALUES (?,?,?,?,?,?)",
        [
            (
                did,
                i,
                json.dumps([{"role": "user", "content": f"{tag} prompt {i}"}]),
                f"{tag} prompt {i}",
                10,
                str(i),
            )
            for i in range(n)
        ],
    )
    ws.add_teacher(
        TeacherConfig(name="t", base_url=url, model="teacher-1", price_in=1.0, price_out=2.0)
    )
    return ws


class PhaseClock:
    """A sink that notes when requests start (the first Progress) and when the job ends,
    so the figures cover the request phase, not creating the workspace items."""

    def __init__(self) -> None:
        self.start = self.end = None

    def emit(self, event) -> None:
        from kdstudio.events import Finished, Progress

        if isinstance(event, Progress) and self.start is None:
            self.start = time.perf_counter()
        if isinstance(event, Finished):
            self.end = time.perf_counter()


def run_kdstudio(
    root: Path, url: str, n: int, concurrency: int, tag: str
) -> tuple[float, float, dict]:
    from kdstudio.collect import CollectConfig, collect

    ws = make_workspace(root, url, n, tag)
    config = CollectConfig(
        teacher="t",
        dataset="prompts",
        concurrency=concurrency,
        max_tokens=MAX_TOKENS,
        top_logprobs=TOP_K,
    )
    clock = PhaseClock()
    cpu = time.process_time()
    summary = collect(config, ws, clock)
    cpu = time.process_time() - cpu
    ws.close()
    return clock.end - clock.start, cpu, summary.counts


def run_bare(url: str, n: int, concurrency: int, tag: str) -> tuple[float, float]:
    import httpx2
    import openai

    async def main() -> list:
        client = openai.AsyncOpenAI(
            base_url=url,
            api_key="x",
            max_retries=0,
            http_client=httpx2.AsyncClient(
                limits=httpx2.Limits(
                    max_connections=concurrency, max_keepalive_connections=concurrency
                )
            ),
        )
        sem = asyncio.Semaphore(concurrency)
        out = []

        async def one(i: int) -> None:
            async with sem:
                out.append(
                    await client.chat.completions.create(
                        model="teacher-1",
                        messages=[{"role": "user", "content": f"{tag} prompt {i}"}],
                        max_tokens=MAX_TOKENS,
                        temperature=1.0,
                        logprobs=True,
                        top_logprobs=TOP_K,
                    )
                )

        await asyncio.gather(*(one(i) for i in range(n)))
        await client.close()
        return out

    cpu, wall = time.process_time(), time.perf_counter()
    answers = asyncio.run(main())
    assert len(answers) == n
    return time.perf_counter() - wall, time.process_time() - cpu


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--rates",
        default="50,150",
        help="comma-separated requests/s the rate-limited server allows (default 50,150)",
    )
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON (scripts/bench)")
    args = p.parse_args()
    scale = 0.5 if args.quick else 1.0
    root = Path(tempfile.mkdtemp(prefix="kd-bench-collect-"))
    load_start = os.getloadavg()[0]
    rows, cpu_rows = [], []
    unlimited: dict[int, float] = {}
    ok = True
    try:
        server = Server("--latency", str(LATENCY))
        run_bare(server.url, 20, 4, "warm")  # imports and first connections out of the way
        for conc in (1, 8, 32, 128):
            n = int(max(60, conc * 16) * scale) if conc > 1 else int(80 * scale)
            s_cpu = server.cpu()
            wall, cpu, counts = run_kdstudio(root, server.url, n, conc, f"kd{conc}")
            server_ms = (server.cpu() - s_cpu) / n * 1e3
            b_wall, b_cpu = run_bare(server.url, n, conc, f"bare{conc}")
            rate, ideal, bare = n / wall, conc / LATENCY, n / b_wall
            unlimited[conc] = rate
            target = 0.9 * min(ideal, bare)
            hit = rate >= target and counts["done"] == n
            ok &= hit
            rows.append(
                [
                    conc,
                    n,
                    f"{rate:.0f}",
                    f"{ideal:.0f}",
                    f"{rate / ideal:.2f}",
                    f"{bare:.0f}",
                    f"{rate / bare:.2f}",
                    f"{target:.0f}",
                    "ok" if hit else "MISS",
                ]
            )
            ratio = (cpu / n) / (b_cpu / n)
            ok &= ratio <= 1.3
            cpu_rows.append(
                [
                    conc,
                    f"{cpu / n * 1e3:.2f}",
                    f"{b_cpu / n * 1e3:.2f}",
                    f"{ratio:.2f}x",
                    "<= 1.30x",
                    f"{server_ms:.2f}",
                ]
            )
        server.close()

        rate_rows = []
        for limit in [float(r) for r in args.rates.split(",") if r.strip()]:
            n_rate = int(limit * 6 * scale)
            limited = Server("--latency", str(LATENCY), "--rate-limit", str(limit))
            wall, _cpu, counts = run_kdstudio(root, limited.url, n_rate, 32, f"rate{limit:g}")
            stats = limited.stats()
            limited.close()
            achieved = counts["done"] / wall
            lost = n_rate - counts["done"]
            ceiling = unlimited[32]  # what this machine reached at concurrency 32 without a limit
            rate_ok = achieved >= 0.9 * min(limit, ceiling) and lost == 0
            ok &= rate_ok
            rate_rows.append(
                [
                    f"{limit:.0f}",
                    n_rate,
                    f"{achieved:.1f}",
                    f"{achieved / limit:.2f}",
                    f"{ceiling:.0f}",
                    stats["status"].get("429", 0),
                    lost,
                    f">= {0.9 * min(limit, ceiling):.0f}, 0 lost",
                    "ok" if rate_ok else "MISS",
                ]
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"\n1. Throughput at {LATENCY * 1000:.0f} ms latency (top-{TOP_K} logprobs, {MAX_TOKENS} tokens, every answer committed)"
    )
    headers = [
        "conc",
        "requests",
        "kdstudio req/s",
        "ideal",
        "of ideal",
        "bare openai req/s",
        "of bare",
        "target",
        "",
    ]
    print(table(headers, rows))
    print(
        "   ideal = concurrency / latency; the bare openai loop on the same machine shows what the"
    )
    print("   client's CPU allows; target: >= 0.9 x min(ideal, bare loop)")
    print("\n2. CPU per request (ms)")
    print(
        table(
            ["conc", "kdstudio", "bare openai loop", "ratio", "target", "server (other process)"],
            cpu_rows,
        )
    )
    print(
        f"   this machine: {os.cpu_count()} CPUs, load average {load_start:.1f} at the start,"
        f" {os.getloadavg()[0]:.1f} at the end (other work shares these CPUs)"
    )
    print("\n3. Rate-limited server (N req/s, 429 + retry-after beyond), concurrency 32")
    print("   unlimited = kdstudio's req/s at concurrency 32 in table 1 (this machine's ceiling);")
    print("   target: >= 0.9 x min(N, unlimited) with no row lost")
    print(
        table(
            [
                "limit N",
                "requests",
                "achieved req/s",
                "of N",
                "unlimited",
                "429s",
                "lost",
                "target",
                "",
            ],
            rate_rows,
        )
    )
    print(f"\noverall: {'all targets met' if ok else 'some targets missed'}")
    write_json(args.json, rows, cpu_rows, rate_rows)
    return 0


def write_json(path: str | None, rows: list, cpu_rows: list, rate_rows: list) -> None:
    """The three tables as one list of figures (see bench/_results.py)."""
    from _results import Row, write_results

    out = []
    for conc, n, rate, _ideal, _of_ideal, bare, of_bare, target, mark in rows:
        out.append(
            Row(f"requests/s at concurrency {conc} ({n} requests, {LATENCY * 1e3:.0f} ms latency)",
                rate, f"{bare} (bare openai loop)", f"{of_bare}x", f">= {target}", mark)
        )  # fmt: skip
    for conc, kd_ms, bare_ms, ratio, target, _server in cpu_rows:
        ok = float(ratio.rstrip("x")) <= 1.3
        out.append(
            Row(f"CPU ms per request at concurrency {conc}", kd_ms, f"{bare_ms} (bare openai loop)",
                ratio, target, "ok" if ok else "MISSED")
        )  # fmt: skip
    for limit, n, achieved, of_n, _ceiling, n429, lost, target, mark in rate_rows:
        out.append(
            Row(f"req/s against a {limit} req/s rate limit ({n} requests, {n429} 429s, {lost} lost)",
                achieved, f"{limit} (the server's limit)", f"{of_n}x", target, mark)
        )  # fmt: skip
    write_results(
        path, "collect", "Collection: throughput, CPU per request, rate limits", out,
        reference="a bare asyncio loop of the openai client against the same server",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
