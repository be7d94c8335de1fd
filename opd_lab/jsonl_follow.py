"""JSON-lines files read incrementally: each read parses only the bytes appended since the last.

A training run appends a row to `metrics.jsonl` every step, and the app reads the file
on every refresh of every viewer. Parsing the whole file each time costs O(rows) per
read, so a long run and a full classroom make the app spend its time in `json.loads`.
A `FollowedJsonl` remembers how far it read (byte offset, file identity) and parses
only the new complete lines. The file is read again from the start when it was
replaced (a resumed run rewrites it atomically, `files.truncate_jsonl`) or shrank.

A line without its newline yet (a write in progress, or a torn last line of a killed
process) is not consumed: it is parsed once complete, and a torn line that never
completes is skipped as `files.read_jsonl` skips it. Lines that are not valid
JSON are skipped too.

Example:
    >>> rows = followed_rows("/tmp/run/metrics.jsonl")  # doctest: +SKIP
    >>> rows = followed_rows("/tmp/run/metrics.jsonl")  # only new lines parsed  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

# Files followed at once by one process; the least recently read is forgotten first.
MAX_FOLLOWED = 256


class FollowedJsonl:
    """The rows of one JSON-lines file, brought up to date by `read()`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._identity = None  # (st_dev, st_ino) of the file read so far
        self._offset = 0  # bytes consumed: always the end of a complete line
        self._rows: list[dict] = []
        self._lock = threading.Lock()

    def read(self) -> list[dict]:
        """Every complete row of the file, in file order (a new list; the rows are shared, do not mutate them)."""
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._identity, self._offset, self._rows = None, 0, []
                return []
            identity = (stat.st_dev, stat.st_ino)
            if identity != self._identity or stat.st_size < self._offset:
                self._identity, self._offset, self._rows = identity, 0, []
            if stat.st_size > self._offset:
                with self.path.open("rb") as handle:
                    handle.seek(self._offset)
                    data = handle.read(stat.st_size - self._offset)
                end = data.rfind(b"\n") + 1  # complete lines only; the rest is read when finished
                for line in data[:end].splitlines():
                    self._parse(line)
                self._offset += end
            return list(self._rows)

    def _parse(self, line: bytes) -> None:
        line = line.strip()
        if not line:
            return
        try:
            row = json.loads(line.decode("utf-8", errors="replace"))
        except json.JSONDecodeError:
            return
        if isinstance(row, dict):
            self._rows.append(row)


_followed: OrderedDict[str, FollowedJsonl] = OrderedDict()
_followed_lock = threading.Lock()


def followed_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of `path`, read incrementally through one `FollowedJsonl` per file per process."""
    key = os.path.abspath(os.fspath(path))
    with _followed_lock:
        follower = _followed.get(key)
        if follower is None:
            follower = _followed[key] = FollowedJsonl(key)
            while len(_followed) > MAX_FOLLOWED:
                _followed.popitem(last=False)
        _followed.move_to_end(key)
    return follower.read()
