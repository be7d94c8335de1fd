"""Metrics read incrementally: only appended lines are parsed, a replaced file is read again."""

from __future__ import annotations

import json
import os

from opd_lab import jsonl_follow
from opd_lab.jsonl_follow import FollowedJsonl
from opd_lab.files import append_jsonl, read_jsonl, truncate_jsonl
from opd_lab.run_folder import load_metrics


def test_appended_rows_are_parsed_once_and_a_partial_line_waits(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    follower = FollowedJsonl(path)
    assert follower.read() == []  # no file yet
    append_jsonl(path, [{"step": 0}, {"step": 1}])
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(jsonl_follow.json, "loads", lambda text: parsed.append(text) or real_loads(text))
    assert [row["step"] for row in follower.read()] == [0, 1]
    append_jsonl(path, [{"step": 2}])
    with path.open("a") as handle:  # a write in progress: no newline yet
        handle.write('{"step": 3')
    assert [row["step"] for row in follower.read()] == [0, 1, 2]
    assert len(parsed) == 3  # rows 0 and 1 were not parsed a second time
    with path.open("a") as handle:
        handle.write("}\n")
    assert [row["step"] for row in follower.read()] == [0, 1, 2, 3]
    assert follower.read() == read_jsonl(path)


def test_a_replaced_or_shrunk_file_is_read_from_the_start(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / "metrics.jsonl"
    append_jsonl(path, [{"step": step, "train/loss": float(step)} for step in range(5)])
    assert [row["step"] for row in load_metrics(run_dir)] == [0, 1, 2, 3, 4]
    truncate_jsonl(path, 2)  # a resumed run rewrites the file (a new inode)
    assert [row["step"] for row in load_metrics(run_dir)] == [0, 1, 2]
    append_jsonl(path, [{"step": 3, "train/loss": 9.0}])
    assert load_metrics(run_dir)[-1] == {"step": 3, "train/loss": 9.0}
    with path.open("r+") as handle:  # shrunk in place
        handle.truncate(0)
    append_jsonl(path, [{"step": 7}])
    assert load_metrics(run_dir) == [{"step": 7}]
    os.remove(path)
    assert load_metrics(run_dir) == []


def test_invalid_lines_are_skipped_like_read_jsonl(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\nnot json\n[1, 2]\n\n{"step": 1}\n')
    assert FollowedJsonl(path).read() == [{"step": 0}, {"step": 1}]
