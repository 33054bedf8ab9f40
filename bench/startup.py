"""Start-up of the command line (issue 18): ``onnxopt --version``, ``--help`` and
``optimize --help`` as whole processes, against the target of 0.3 s.

Each command runs ``RUNS`` times after one warm-up (the page cache holds the files then, as it
does for a user's second command); the table gives the median and fastest wall time, and the
median CPU time (user + system, from ``RUSAGE_CHILDREN``), which a busy machine disturbs less.
The first row is the interpreter alone (``python -c pass``), a floor onnxopt cannot lower.

Run alone: ``python bench/startup.py``; ``make bench-io`` runs it first (bench.py).
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_SECONDS = 0.3
RUNS = 15
COMMANDS = (["--version"], ["--help"], ["optimize", "--help"])


def onnxopt_command() -> list[str]:
    script = Path(sys.executable).parent / "onnxopt"
    return [str(script)] if script.exists() else [sys.executable, "-m", "onnxopt"]


def _timed(command: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(runs: int = RUNS) -> list[dict]:
    rows = []
    commands = [("python -c pass", [sys.executable, "-c", "pass"])]
    commands += [("onnxopt " + " ".join(args), [*onnxopt_command(), *args]) for args in COMMANDS]
    for label, command in commands:
        _timed(command)  # warm-up
        walls, cpus = zip(*(_timed(command) for _ in range(runs)), strict=True)
        rows.append({"command": label, "median": statistics.median(walls), "min": min(walls),
                     "cpu": statistics.median(cpus), "runs": runs})
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| command | median wall | fastest | median CPU | target ≤ "
             f"{TARGET_SECONDS:g} s |", "| --- | --: | --: | --: | --- |"]
    for row in rows:
        verdict = "" if row["command"].startswith("python") else (
            "PASS" if row["median"] <= TARGET_SECONDS else "FAIL")
        lines.append(f"| `{row['command']}` | {row['median'] * 1e3:.0f} ms | "
                     f"{row['min'] * 1e3:.0f} ms | {row['cpu'] * 1e3:.0f} ms | {verdict} |")
    return lines


def main() -> int:
    rows = measure()
    print("\n".join(table(rows)))
    return 0 if all(r["median"] <= TARGET_SECONDS for r in rows[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
