"""The window and the CLI side by side on one workspace, for as long as you like: is anything
lost or damaged? (`scripts/soak --minutes 60`; see scripts/soak.)

A real X server (Xvfb) with a window manager (openbox) shows `kdstudio --workspace A`. Beside
it, this script works on A through the CLI as a person in a terminal would, picking at
random: import a dataset, collect it from a teacher (a loopback OpenAI-protocol server),
kill a collection with SIGKILL half-way and re-run it, accept and reject answers, add and
remove teachers, train a tiny student for a few steps. Meanwhile it drives the window with
xdotool: switches tabs, opens workspace B through File > Open workspace… and comes back to A,
and takes a screenshot now and then.

Every minute, and at the end (after closing the window), it checks A:
  - `PRAGMA integrity_check` is ok, from a connection of its own;
  - every dataset the CLI imported is there with its rows;
  - every collection the CLI completed has every row done, and nothing a collection
    finished ever goes back;
  - every review the CLI made is still there;
  - every run the CLI trained reads finished, with its checkpoint.
The window's stderr must hold no traceback. Prints a table of what it did and checked;
exit 1 when any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "echo",
    "fox",
    "golf",
    "hotel",
    "india",
    "kilo",
    "lima",
    "mike",
]


class Soak:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.rng = random.Random(args.seed)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.a, self.b = tmp / "A", tmp / "B"
        self.env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "SOAK_KEY": "soak-key",
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "XDG_DATA_HOME": os.environ.get("XDG_DATA_HOME", str(tmp / "data")),
            "XDG_CACHE_HOME": str(tmp / "cache"),
            "DISPLAY": f":{args.display}",
            "QT_QPA_PLATFORM": "xcb",
        }
        self.env.pop("KDSTUDIO_WORKSPACE", None)
        self.done: Counter[str] = Counter()
        self.problems: list[str] = []
        self.datasets: dict[str, int] = {}  # name -> rows
        self.complete: set[str] = set()  # collections the CLI completed
        self.reviews: dict[tuple[str, int], str] = {}
        self.trained: set[str] = set()
        self.teachers: set[str] = set()
        self.procs: list[subprocess.Popen] = []
        self.keyring = "DBUS_SESSION_BUS_ADDRESS" in os.environ  # scripts/soak starts one
        self.n = 0

    # -- processes ------------------------------------------------------------------------
    def start(self) -> None:
        d = f":{self.args.display}"
        if Path(f"/tmp/.X11-unix/X{self.args.display}").exists():
            raise SystemExit(f"display {d} is taken; pick another with --display")
        self.procs.append(subprocess.Popen(["Xvfb", d, "-screen", "0", "1600x1000x24"]))
        time.sleep(1.5)
        self.procs.append(subprocess.Popen(["openbox"], env=self.env, stderr=subprocess.DEVNULL))
        server = subprocess.Popen(
            [sys.executable, "-m", "support.openai_server", "--latency", "0.05"],
            env=self.env,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(server)
        self.url = server.stdout.readline().strip()
        self.student = self.make_student()
        self.cli("teacher", "add", "t", "--base-url", self.url, "--model", "teacher-1",
                 "--api-key-env", "SOAK_KEY")  # fmt: skip
        self.teachers.add("t")
        subprocess.run(  # a key in the OS keyring, given on stdin as a person pastes it
            [sys.executable, "-m", "kdstudio", "--workspace", str(self.a), "teacher", "add",
             "k", "--base-url", self.url, "--model", "teacher-1", "--api-key-stdin"],
            env=self.env, input="soak-key\n", text=True, capture_output=True, check=False,
        )  # fmt: skip
        self.cli("teacher", "add", "t", "--base-url", self.url, "--model", "teacher-1",
                 "--api-key-env", "SOAK_KEY", workspace=self.b)  # fmt: skip
        self.window_log = (self.out / "window-stderr.txt").open("w")
        self.window = subprocess.Popen(
            [sys.executable, "-m", "kdstudio", "--workspace", str(self.a)],
            env=self.env,
            stdout=self.window_log,
            stderr=self.window_log,
        )
        self.wid = self.wait_window()

    def make_student(self) -> Path:
        code = (
            "import sys; from kdstudio.demo.tiny import make_model, make_tokenizer; "
            "from pathlib import Path; root = Path(sys.argv[1]); "
            "tok = make_tokenizer(root / 'tok', [' '.join(sys.argv[2:])] * 20, vocab_size=300); "
            "make_model(root / 'student', tok, layers=1, hidden=32)"
        )
        subprocess.run(
            [sys.executable, "-c", code, str(self.tmp / "m"), *WORDS], env=self.env, check=True
        )
        return self.tmp / "m" / "student"

    def wait_window(self) -> str:
        for _ in range(120):
            found = subprocess.run(
                ["xdotool", "search", "--onlyvisible", "--name", "kdstudio"],
                env=self.env,
                capture_output=True,
                text=True,
            ).stdout.split()
            if found:
                return found[0]
            time.sleep(0.5)
        raise SystemExit("the window did not appear")

    def cli(self, *argv: str, workspace: Path | None = None, check: bool = True) -> str:
        cmd = [sys.executable, "-m", "kdstudio", "--workspace", str(workspace or self.a), *argv]
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=600)
        if check and res.returncode != 0:
            self.problems.append(f"`{' '.join(argv)}` exited {res.returncode}: {res.stderr[-300:]}")
        return res.stdout

    def key(self, *keys: str) -> None:
        subprocess.run(["xdotool", "windowactivate", "--sync", self.wid], env=self.env)
        subprocess.run(["xdotool", "key", "--clearmodifiers", *keys], env=self.env)

    def type_text(self, text: str) -> None:
        subprocess.run(["xdotool", "type", "--delay", "20", text], env=self.env)

    def screenshot(self, name: str) -> None:
        subprocess.run(["import", "-window", "root", str(self.out / f"{name}.png")], env=self.env)

    # -- actions ----------------------------------------------------------------------------
    def act_import(self) -> None:
        self.n += 1
        name, rows = f"d{self.n}", self.rng.randint(5, 40)
        path = self.tmp / f"{name}.jsonl"
        with path.open("w") as f:
            for i in range(rows):
                words = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(2, 8)))
                f.write(json.dumps({"prompt": f"{i}: repeat {words}"}) + "\n")
        self.cli("data", "import", str(path), "--name", name)
        self.datasets[name] = rows

    def act_collect(self) -> None:
        todo = [d for d in self.datasets if f"{d}.t" not in self.complete]
        if not todo:
            return self.act_import()
        name = self.rng.choice(todo)
        cmd = [sys.executable, "-m", "kdstudio", "--workspace", str(self.a), "collect",
               "--teacher", "t", "--dataset", name, "--concurrency", "4", "--max-tokens", "16"]  # fmt: skip
        if self.rng.random() < 0.3:  # killed half-way, then run again: resumes
            proc = subprocess.Popen(
                cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(self.rng.uniform(0.5, 2.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.done["collect killed -9"] += 1
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=600)
        if res.returncode == 0:
            self.complete.add(f"{name}.t")
        else:
            self.problems.append(f"collect {name} exited {res.returncode}: {res.stderr[-300:]}")

    def act_review(self) -> None:
        if not self.complete:
            return self.act_collect()
        col = self.rng.choice(sorted(self.complete))
        rows = self.datasets[col.split(".")[0]]
        picks = sorted(self.rng.sample(range(rows), min(3, rows)))
        state = self.rng.choice(["accept", "reject"])
        self.cli("outputs", "review", col, state, *map(str, picks))
        for p in picks:
            self.reviews[(col, p)] = {"accept": "accepted", "reject": "rejected"}[state]

    def act_teacher(self) -> None:
        extra = f"x{self.rng.randint(1, 3)}"
        if extra in self.teachers:
            self.cli("teacher", "remove", extra)
            self.teachers.discard(extra)
        else:
            self.cli("teacher", "add", extra, "--base-url", self.url, "--model", "teacher-1",
                     "--api-key-env", "SOAK_KEY")  # fmt: skip
            self.teachers.add(extra)
        self.cli("teacher", "probe", "t")
        self.cli("teacher", "probe", "k", check=self.keyring)

    def act_train(self) -> None:
        if not self.complete:
            return self.act_collect()
        self.n += 1
        name = f"r{self.n}"
        config = self.tmp / f"{name}.toml"
        config.write_text(
            f'[student]\npath = "{self.student}"\n[data]\ncollection = "{sorted(self.complete)[0]}"\n'
            f"max_length = 64\n[optim]\nmax_steps = 12\nbatch_size = 4\nlr = 1e-3\n"
            f'[run]\nname = "{name}"\nlog_every = 2\neval_every = 0\ncheckpoint_every = 6\n'
        )
        self.cli("train", "--config", str(config), "--quiet")
        self.trained.add(name)

    def act_tabs(self) -> None:
        for _ in range(self.rng.randint(1, 5)):
            self.key("ctrl+Tab")
            time.sleep(0.3)

    def act_switch(self) -> None:
        """File > Open workspace… B, look around, then back to A, as a person would."""
        for target in (self.b, self.a):
            self.key("ctrl+o")
            time.sleep(1.5)
            self.key("ctrl+a")
            self.type_text(str(target))
            self.key("Return")
            time.sleep(1.0)
            self.key("Return")  # "Choose" in the folder dialog
            time.sleep(2.0)
            if not self.done["workspace switched to B and back"]:  # the first time: look
                self.screenshot(f"switch-to-{target.name}")
            self.act_tabs()
        self.done["workspace switched to B and back"] += 1

    # -- checks -----------------------------------------------------------------------------
    def check(self) -> None:
        con = sqlite3.connect(f"file:{self.a / 'kdstudio.sqlite'}?mode=ro", uri=True, timeout=30)
        try:
            ok = con.execute("PRAGMA integrity_check").fetchone()[0]
            if ok != "ok":
                self.problems.append(f"integrity_check: {ok}")
            for name, rows in self.datasets.items():
                got = con.execute("SELECT n_rows FROM datasets WHERE name=?", (name,)).fetchone()
                if got is None or got[0] != rows:
                    self.problems.append(f"dataset {name}: {got} rows, expected {rows}")
            for col in self.complete:
                got = con.execute(
                    "SELECT COUNT(*) FROM collection_items ci JOIN collections c ON"
                    " c.id = ci.collection_id WHERE c.name=? AND ci.status='done'",
                    (col,),
                ).fetchone()[0]
                if got != self.datasets[col.split(".")[0]]:
                    self.problems.append(f"collection {col}: {got} done")
            for (col, idx), state in self.reviews.items():
                got = con.execute(
                    "SELECT ci.review FROM collection_items ci JOIN collections c ON"
                    " c.id = ci.collection_id JOIN dataset_rows d ON d.id = ci.row_id"
                    " WHERE c.name=? AND d.idx=?",
                    (col, idx),
                ).fetchone()
                if got is None or got[0] != state:
                    self.problems.append(f"review {col}#{idx}: {got}, expected {state}")
            for run in self.trained:
                got = con.execute("SELECT status FROM runs WHERE name=?", (run,)).fetchone()
                if got is None or got[0] != "finished":
                    self.problems.append(f"run {run}: {got}")
                if not list((self.a / "checkpoints" / run).glob("step-*")):
                    self.problems.append(f"run {run}: no checkpoint")
        finally:
            con.close()
        self.done["checks"] += 1

    # -- the soak ---------------------------------------------------------------------------
    def run(self) -> int:
        self.start()
        self.screenshot("00-start")
        self.act_import()
        self.act_switch()  # once at the start, screenshots on the way
        actions = [
            (self.act_import, 3),
            (self.act_collect, 4),
            (self.act_review, 3),
            (self.act_teacher, 2),
            (self.act_tabs, 3),
            (self.act_switch, 1),
            (self.act_train, 1),
        ]
        began = time.monotonic()
        deadline = began + self.args.minutes * 60
        last_check = last_shot = time.monotonic()
        while time.monotonic() < deadline and self.window.poll() is None:
            act = self.rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
            act()
            self.done[act.__name__.removeprefix("act_")] += 1
            if time.monotonic() - last_check > 60:
                self.check()
                last_check = time.monotonic()
            if time.monotonic() - last_shot > 300:
                self.screenshot(f"{int((time.monotonic() - began) / 60):02d}-min")
                last_shot = time.monotonic()
            time.sleep(self.rng.uniform(0.2, 2.0))
        alive = self.window.poll() is None
        if not alive:
            self.problems.append(f"the window exited early ({self.window.returncode})")
        self.screenshot("99-end")
        self.key("ctrl+q")
        try:
            self.window.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.screenshot("99-close-stuck")
            self.problems.append("the window did not close within 60 s of Ctrl+Q")
            self.window.kill()
        self.check()
        self.window_log.close()
        log = (self.out / "window-stderr.txt").read_text(errors="replace")
        if "Traceback" in log:
            self.problems.append("the window's stderr holds a traceback (window-stderr.txt)")
        return self.report()

    def report(self) -> int:
        print(f"soak: {self.args.minutes} min, window + CLI on one workspace")
        for what, n in sorted(self.done.items()):
            print(f"  {what:<36}{n:>6}")
        kept = {
            "datasets imported (each checked)": len(self.datasets),
            "collections completed (each checked)": len(self.complete),
            "reviews made (each checked)": len(self.reviews),
            "runs trained (each checked)": len(self.trained),
        }
        for what, n in kept.items():
            print(f"  {what:<36}{n:>6}")
        print(f"problems: {len(self.problems)}")
        for p in self.problems:
            print(f"  - {p}")
        (self.out / "soak.json").write_text(
            json.dumps({"done": self.done, "kept": kept, "problems": self.problems}, indent=1)
        )
        return 1 if self.problems else 0

    def stop(self) -> None:
        for p in [getattr(self, "window", None), *reversed(self.procs)]:
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--display", type=int, default=87)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="soak-out", help="screenshots, the window's stderr, JSON")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        soak = Soak(args, Path(tmp))
        try:
            return soak.run()
        finally:
            soak.stop()


if __name__ == "__main__":
    sys.exit(main())
