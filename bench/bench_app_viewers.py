"""The app under a classroom's polling: CPU of the app process and latency of the runs list.

Simulates N viewers (threads with a `gradio_client.Client` each) asking for the runs
table every 2 seconds, as each open Runs tab does, against an app serving a data
folder of synthetic finished runs, and prints the app's CPU share and the request
latency. Run it against two checkouts to compare (before/after a change):

    OMP_NUM_THREADS=1 OPD_LAB_HOME=/tmp/bench-home PYTHONPATH=. python3 bench/bench_app_viewers.py --runs 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVER = """
import sys
from app.main import build_app
build_app().launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--viewers", type=int, default=30)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300, help="metrics rows per synthetic run")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--port", type=int, default=7931)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from synthetic_runs import make_run
    from gradio_client import Client
    from opd_lab.paths import runs_dir

    for index in range(args.runs):
        if not (runs_dir() / f"bench-{index:02d}").exists():
            make_run(runs_dir(), f"bench-{index:02d}", steps=args.steps)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.port)], env=os.environ)
    try:
        url = f"http://127.0.0.1:{args.port}/"
        clients = []
        deadline = time.monotonic() + 120
        while not clients:
            try:
                clients.append(Client(url, verbose=False))
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        clients += [Client(url, verbose=False) for _ in range(args.viewers - 1)]
        latencies, stop = [], threading.Event()

        def viewer(client, offset):
            stop.wait(offset)
            while not stop.is_set():
                started = time.monotonic()
                client.predict(api_name="/list_runs")
                latencies.append(time.monotonic() - started)
                stop.wait(max(0.0, 2.0 - (time.monotonic() - started)))

        threads = [threading.Thread(target=viewer, args=(c, 2.0 * i / args.viewers)) for i, c in enumerate(clients)]
        cpu_before, wall_before = cpu_seconds(server.pid), time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        stop.set()
        for thread in threads:
            thread.join()
        cpu = (cpu_seconds(server.pid) - cpu_before) / (time.monotonic() - wall_before)
        ordered = sorted(latencies)
        print(f"{args.viewers} viewers, {args.runs} runs x {args.steps} steps, {args.seconds:.0f} s: "
              f"app CPU {cpu:.0%} of one core, {len(latencies)} requests, latency median "
              f"{statistics.median(ordered) * 1000:.0f} ms, p95 {ordered[int(0.95 * len(ordered))] * 1000:.0f} ms")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
