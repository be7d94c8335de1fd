"""A classroom of viewers against the app while a run trains on the real lab.

Item 4 of the workshop issue: 30 attendees with the Runs tab open, each refreshing every
2 seconds, must not stall the app nor the training. This bench

1. builds (or reuses) the real addition lab (`opd-lab lab build`, about 2 minutes on 2 cores);
2. serves the app in its own process and launches one OPD run on the lab in the
   background, as the Launch tab does;
3. measures the run's training speed (steps/s from its status) with no viewer, then with
   N viewers, then with none again (the two quiet phases bracket any drift of the
   machine's load, and their mean is the baseline);
4. each viewer, every 2 s, asks for what one refresh of the Runs tab shows, in one request as
   the tab's timer does: the runs table and the followed run's summary, figures and log
   (`/run_view`, through the same shared runs list and figures as the timer);

and prints the three ratios against their targets: refresh p95 < 1 s, the app's CPU
< 25% of one core, and training speed with viewers >= 85% of the quiet speed. The
viewers run in this process at the lowest CPU priority, as plain HTTP requests (they stand
for browsers on other machines); the machine's load average is printed, since other work
skews every number.

    OMP_NUM_THREADS=1 OPD_LAB_HOME=/tmp/bench-home PYTHONPATH=. python3 bench/bench_app_viewers.py
    ... --viewers 30 --seconds 40 --extra-runs 20   # 20 finished synthetic runs in the table too
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVER = """
import sys
from opd_lab_app.main import build_app
build_app().launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True)
"""
TARGET_P95_S, TARGET_CPU, TARGET_SPEED = 1.0, 0.25, 0.85


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def training_speed(run_dir: Path, seconds: float) -> tuple[float, int]:
    """(steps per second, steps) of the run over the next `seconds`, from its status file."""
    from opd_lab import runs

    start_step, started = runs.status_of(run_dir).get("step", 0), time.monotonic()
    time.sleep(seconds)
    steps = runs.status_of(run_dir).get("step", 0) - start_step
    return steps / (time.monotonic() - started), steps


def wait_for_training(run_dir: Path, timeout: float = 600.0) -> None:
    from opd_lab import runs

    deadline = time.monotonic() + timeout
    while runs.status_of(run_dir).get("step", 0) < 3:
        state = runs.status_of(run_dir).get("state")
        if state in ("failed", "stopped", "finished") or time.monotonic() > deadline:
            raise RuntimeError(f"the bench run did not start training: {runs.status_of(run_dir)}")
        time.sleep(1)


class Viewer:
    """One attendee's page, as its requests: a kept-alive HTTP connection calling the app's named
    endpoints directly (`POST /gradio_api/run/<name>`), as cheap on this machine as a browser
    elsewhere would be (a `gradio_client.Client` per viewer costs more CPU than the app itself)."""

    def __init__(self, port: int, session: str = "bench"):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        # A page keeps one session; a request without one makes Gradio set up a new session
        # each time (about 18 ms of the app's CPU here), which no browser costs.
        self.session = session

    def call(self, api_name: str, *data) -> dict:
        body = json.dumps({"data": list(data), "session_hash": self.session})
        self.connection.request("POST", f"/gradio_api/run/{api_name}", body=body,
                                headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"/{api_name}: HTTP {response.status}: {payload[:200]!r}")
        return json.loads(payload)


def wait_for_app(port: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            Viewer(port).call("list_runs")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each phase")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between a viewer's refreshes")
    parser.add_argument("--extra-runs", type=int, default=0, help="finished synthetic runs added to the table")
    parser.add_argument("--port", type=int, default=7931)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from opd_lab import runs
    from opd_lab.config import RunConfig
    from opd_lab.lab import LabRecipe, build_lab
    from opd_lab.paths import runs_dir

    lab = build_lab(LabRecipe.for_task("addition"))
    print(f"lab: teacher {lab['teacher']['accuracy']:.1%}, base student {lab['student']['accuracy']:.1%}")
    if args.extra_runs:
        from synthetic_runs import make_run

        for index in range(args.extra_runs):
            if not (runs_dir() / f"bench-{index:02d}").exists():
                make_run(runs_dir(), f"bench-{index:02d}", steps=300)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.port)], env=os.environ)
    run_dir = None
    try:
        wait_for_app(args.port)
        clients = [Viewer(args.port, f"viewer-{index}") for index in range(args.viewers)]
        # The default OPD run on the lab; no evaluation or checkpoint inside the phases, so the
        # speed of each phase is the speed of training steps alone (every step still logs metrics).
        run_dir, _ = runs.start_run(RunConfig(name="bench-viewers", steps=100_000, eval_every=100_000,
                                              sample_every=100_000, checkpoint_every=100_000))
        wait_for_training(run_dir)
        os.nice(19)  # from here on this process only plays the viewers' browsers
        quiet_first, _ = training_speed(run_dir, args.seconds)

        latencies, stop = [], threading.Event()

        def viewer(client, offset):
            stop.wait(offset)
            while not stop.is_set():
                started = time.monotonic()
                view = client.call("run_view", run_dir.name, "train/loss", 0.6, False)["data"][0]
                assert view["metric"] and view["table"], view["summary"]  # the figures and the table came back
                latencies.append(time.monotonic() - started)
                stop.wait(max(0.0, args.interval - (time.monotonic() - started)))

        threads = [threading.Thread(target=viewer, args=(c, args.interval * i / len(clients)), daemon=True)
                   for i, c in enumerate(clients)]
        cpu_before, wall_before = cpu_seconds(server.pid), time.monotonic()
        for thread in threads:
            thread.start()
        watched, _ = training_speed(run_dir, args.seconds)
        stop.set()
        for thread in threads:
            thread.join()
        cpu = (cpu_seconds(server.pid) - cpu_before) / (time.monotonic() - wall_before)
        quiet_second, _ = training_speed(run_dir, args.seconds)
        quiet = (quiet_first + quiet_second) / 2
        ordered = sorted(latencies)
        p50, p95 = statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]
        speed = watched / quiet if quiet > 0 else float("nan")
        print(f"{args.viewers} viewers every {args.interval:g} s, phases of {args.seconds:.0f} s, "
              f"{len(latencies)} refreshes (/run_view), load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
        print(f"training: {quiet_first:.2f} steps/s quiet, {watched:.2f} with viewers, {quiet_second:.2f} quiet again")
        print(f"refresh p50 {p50:.3f} s, p95 {p95:.3f} s   target p95 < {TARGET_P95_S:g} s: "
              f"{'met' if p95 < TARGET_P95_S else 'NOT met'} (ratio {p95 / TARGET_P95_S:.2f})")
        print(f"app CPU {cpu:.1%} of one core   target < {TARGET_CPU:.0%}: "
              f"{'met' if cpu < TARGET_CPU else 'NOT met'} (ratio {cpu / TARGET_CPU:.2f})")
        print(f"training speed with viewers / without {speed:.2f}   target >= {TARGET_SPEED:.2f}: "
              f"{'met' if speed >= TARGET_SPEED else 'NOT met'}")
    finally:
        if run_dir is not None:
            runs.request_stop(run_dir)
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
