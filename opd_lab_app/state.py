"""What the app's tabs share: validated lookups of runs and checkpoints, small
formatters, and a small cache of loaded models.

The browser only ever names things: a run id (checked by `opd_lab.run_folder.run_path`, which
refuses anything that could leave the runs folder), a checkpoint name (checked against
`opd_lab.checkpoints.checkpoint_dirs` of that run) or a built lab task (checked against
the lab folders). No filesystem path typed in a browser is ever opened.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from opd_lab import run_folder, runs
from opd_lab.checkpoints import checkpoint_dirs


def run_dir_of(run_id: str) -> Path:
    """The folder of a run named by the browser.

    Raises:
        runs.RunError: for an empty, malformed (e.g. "../../etc") or unknown run id.
    """
    if not run_id:
        raise runs.RunError("choose a run first")
    return run_folder.run_path(run_id)


# Every viewer's page polls the runs list; one scan per this many seconds serves them all.
RUNS_LIST_MAX_AGE_S = 1.0
_runs_list = {"rows": [], "at": -1.0, "key": None}
_runs_list_lock = threading.Lock()


def list_runs() -> list[dict]:
    """`runs.list_runs()`, shared by all viewers for up to RUNS_LIST_MAX_AGE_S seconds.

    Each row also has its place in the queue, `queue_position` (None unless it waits), and
    `owner`, the user who launched it (None without a login, or for a run from the CLI).
    """
    folder = runs.runs_dir()
    key = (str(folder), folder.stat().st_mtime_ns)  # a run created or deleted is listed at once
    with _runs_list_lock:  # viewers arriving together wait for one scan instead of each scanning
        if key != _runs_list["key"] or time.monotonic() - _runs_list["at"] > RUNS_LIST_MAX_AGE_S:
            positions = runs.queue_positions()
            _runs_list["rows"] = [{**row, "queue_position": positions.get(row["id"]), "owner": _owner(row)}
                                  for row in runs.list_runs()]
            _runs_list["at"], _runs_list["key"] = time.monotonic(), key
        return _runs_list["rows"]


def _owner(row: dict) -> str | None:
    try:
        return run_folder.launcher_of(row["path"])
    except runs.RunError:  # an unreadable launched_by.json: listed without an owner
        return None


def forget_runs_list() -> None:
    """Read the run folders again at the next `list_runs` (after a launch, stop or delete)."""
    with _runs_list_lock:
        _runs_list["at"] = -1.0


def run_ids() -> list[str]:
    """Every run id, newest first."""
    return [row["id"] for row in list_runs()]


def start_queue_worker(interval_s: float = 2.0) -> None:
    """Start, once per process, the thread that launches waiting runs when places free
    (`runs.start_waiting`, through the library's locks and run limit)."""
    with _runs_list_lock:
        if _queue_worker["thread"] is not None:
            return
        stop = threading.Event()
        thread = threading.Thread(target=_serve_queue, args=(interval_s, stop), daemon=True, name="opd-lab-queue")
        _queue_worker.update(thread=thread, stop=stop)
        thread.start()


def stop_queue_worker() -> None:
    """Stop the queue's thread (tests; the served app keeps it until it exits)."""
    with _runs_list_lock:
        thread, stop = _queue_worker["thread"], _queue_worker["stop"]
        _queue_worker.update(thread=None, stop=None)
    if thread is not None:
        stop.set()
        thread.join()


_queue_worker = {"thread": None, "stop": None}


def _serve_queue(interval_s: float, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if runs.start_waiting():
                forget_runs_list()
        except Exception:  # noqa: BLE001 - a bad folder must not stop the queue; the next pass retries
            pass
        stop.wait(interval_s)


# Figures of a run, shared by every viewer: built once per run, view settings and change of its files.
FIGURE_CACHE_SIZE = 64
# A training run changes its metrics every step (several times a second); its figures are
# rebuilt at most this often (the Runs tab's refresh period), so 30 viewers of a fast run cost
# one build per refresh period, not one per step and viewer. A figure is at most this stale.
FIGURE_MIN_AGE_S = 2.0
_figures: OrderedDict = OrderedDict()  # key -> (stamp, built at, value)
_figures_lock = threading.Lock()


def file_stamp(path: Path) -> tuple:
    """What tells a changed file apart: (inode, size, mtime in ns); () for a missing file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return ()
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def shared(key, stamp, build: Callable, min_age_s: float | None = None):
    """`build()`, shared by every viewer asking for `key`, built again only when `stamp` (what it is
    built from, e.g. `file_stamp`s) changed and the last build is at least `min_age_s` old.

    30 viewers of one training run then cost one build per change of its metrics file
    (at most one per FIGURE_MIN_AGE_S), not 30 per refresh. Viewers arriving together wait for the one
    build. The FIGURE_CACHE_SIZE most recently asked keys are kept.
    """
    min_age_s = FIGURE_MIN_AGE_S if min_age_s is None else min_age_s
    with _figures_lock:
        entry = _figures.get(key)
        if entry is not None and (entry[0] == stamp or time.monotonic() - entry[1] < min_age_s):
            _figures.move_to_end(key)
            return entry[2]
        value = build()
        _figures[key] = (stamp, time.monotonic(), value)
        _figures.move_to_end(key)
        while len(_figures) > FIGURE_CACHE_SIZE:
            _figures.popitem(last=False)
        return value


def forget_figures() -> None:
    """Drop every shared figure (tests)."""
    with _figures_lock:
        _figures.clear()


def checkpoint_of(run_id: str, name: str) -> Path:
    """The checkpoint folder `name` (e.g. "step_000050") of a run, validated."""
    run_dir = run_dir_of(run_id)
    for checkpoint in checkpoint_dirs(run_dir):
        if checkpoint.name == name:
            return checkpoint
    raise runs.RunError(f"run {run_id} has no checkpoint named {name!r}")


def format_duration(seconds) -> str:
    """"1h 02m", "3m 05s", "42s"; "-" when unknown."""
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


def format_accuracy(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def error_text(error: Exception) -> str:
    """An error as a Markdown line the user can read."""
    return f"**Error:** {error}"


class ModelCache:
    """A small least-recently-used cache of loaded models, shared by the app's users.

    Loading a model takes seconds (a real one, minutes); the Playground scores many
    prompts with the same pair, so the last few loads are kept.

    Example:
        >>> cache = ModelCache(capacity=2)
        >>> cache.get(("lab", "addition"), lambda: "model")
        'model'
    """

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, load: Callable):
        with self._lock:  # one load at a time: two users asking for one model load it once
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = load()
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return value

    def __len__(self) -> int:
        return len(self._items)
