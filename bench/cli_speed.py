"""Seconds until `opd-lab runs` (and `--help`) answer: this checkout against an earlier commit.

A command that lists runs needs neither torch nor transformers, yet it used to import
both first. This benchmark makes a data dir with 20 finished runs (synthetic folders,
150 metrics rows each), then times whole fresh processes, `python -c "from opd_lab_app.cli
import main; main([...])"`, as a user's shell would start them: the `--base` revision's
code (extracted with `git archive`) and this checkout's, strictly alternating, so that
the shared machine's drift hits both alike. It prints each side's median and the ratio.

Run:

    OMP_NUM_THREADS=1 python -m bench.cli_speed --base main --rounds 5

The target is under 1 s for `opd-lab runs` with 20 runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from synthetic_runs import make_run  # noqa: E402 - the tests' run folders, with no model

COMMANDS = {"runs": ["runs"], "--help": ["--help"]}


def extract_revision(revision: str, into: Path) -> Path:
    """The package folders (`opd_lab/`, `opd_lab_app/`) of `revision`, written under `into`."""
    listed = subprocess.run(["git", "ls-tree", "--name-only", revision], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split()
    app = "opd_lab_app" if "opd_lab_app" in listed else "app"  # the app's package before its rename
    archive = subprocess.run(["git", "archive", revision, "opd_lab", app], cwd=REPO, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def make_home(folder: Path, count: int) -> Path:
    """A data dir holding `count` finished synthetic runs."""
    for index in range(count):
        make_run(folder / "runs", f"opd-bench-{index:02d}", steps=150, sample_every=50)
    return folder


def time_command(code_root: Path, home: Path, args: list[str]) -> float:
    """Wall-clock seconds of one fresh `opd-lab ARGS` process running the code under `code_root`."""
    env = {**os.environ, "PYTHONPATH": str(code_root), "OPD_LAB_HOME": str(home)}
    package = "opd_lab_app" if (code_root / "opd_lab_app").is_dir() else "app"
    script = f"from {package}.cli import main; main({args!r})"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=home, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0,):
        raise RuntimeError(f"{code_root}: opd-lab {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="the revision to compare with (default: main)")
    parser.add_argument("--runs", type=int, default=20, help="run folders in the data dir (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="timed processes per side and command (default 5)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="opd-cli-bench-") as scratch:
        base_root = extract_revision(args.base, Path(scratch) / "base")
        home = make_home(Path(scratch) / "home", args.runs)
        print(f"{args.runs} runs; base {args.base} vs this checkout; {args.rounds} rounds, alternating")
        for name, command in COMMANDS.items():
            times: dict[str, list[float]] = {"base": [], "current": []}
            time_command(REPO, home, command)  # warm the file cache for both sides
            time_command(base_root, home, command)
            for _ in range(args.rounds):
                times["base"].append(time_command(base_root, home, command))
                times["current"].append(time_command(REPO, home, command))
            base, current = (statistics.median(times[side]) for side in ("base", "current"))
            ratios = [now / before for before, now in zip(times["base"], times["current"])]
            print(f"opd-lab {name:<7} base {base:6.2f} s  current {current:6.2f} s  "
                  f"median paired ratio current/base {statistics.median(ratios):.3f} "
                  f"({1 / statistics.median(ratios):.1f}x faster)")


if __name__ == "__main__":
    main()
