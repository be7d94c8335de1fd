"""Durable files (`opd_lab.files`) and the run folder's own protocols (`opd_lab.run_folder`)."""

from __future__ import annotations

import pytest

from opd_lab import files, run_folder


def test_atomic_writes_replace_whole_files_and_leave_no_temporary(tmp_path):
    path = tmp_path / "deep" / "data.json"
    files.write_json_atomic(path, {"a": 1})
    files.write_json_atomic(path, {"a": 2, "b": [1, 2]})
    assert files.read_json(path) == {"a": 2, "b": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["data.json"]
    assert files.read_json(tmp_path / "missing.json", default="none") == "none"


def test_jsonl_skips_a_torn_last_line_and_truncates_by_step(tmp_path):
    path = tmp_path / "rows.jsonl"
    files.append_jsonl(path, [{"step": 1}, {"step": 2}, {"step": 3}])
    with path.open("a") as handle:
        handle.write('{"step": 4, "loss"')  # a process killed mid-write
    assert [row["step"] for row in files.read_jsonl(path)] == [1, 2, 3]
    files.truncate_jsonl(path, 2)
    assert [row["step"] for row in files.read_jsonl(path)] == [1, 2]


def test_an_unreadable_file_is_named_and_is_a_run_error_only_inside_a_run_folder(tmp_path):
    broken = tmp_path / "summary.json"
    broken.write_text("{not json")
    with pytest.raises(files.UnreadableFile, match="summary.json") as found:
        files.read_json(broken)
    assert not isinstance(found.value, run_folder.RunError)  # a lab summary is not a run
    (tmp_path / run_folder.STATUS_FILE).write_text("{not json")
    with pytest.raises(run_folder.RunError, match="status.json") as found:
        run_folder.load_status(tmp_path)
    assert isinstance(found.value, files.UnreadableFile)


def test_the_stop_protocol_asks_sees_and_clears(tmp_path):
    assert not run_folder.stop_asked(tmp_path)
    run_folder.ask_to_stop(tmp_path)
    assert run_folder.stop_asked(tmp_path) and (tmp_path / run_folder.STOP_FILE).exists()
    run_folder.clear_stop(tmp_path)
    run_folder.clear_stop(tmp_path)  # clearing twice is fine
    assert not run_folder.stop_asked(tmp_path)


def test_the_log_gets_whole_lines_and_its_tail_keeps_each_bars_last_state(tmp_path):
    assert run_folder.log_tail(tmp_path) == ""
    run_folder.append_log(tmp_path, "first\n\n")
    with run_folder.open_log(tmp_path) as log:
        log.write("bar 10%\rbar 50%\rbar 100%\n")
    run_folder.append_log(tmp_path, "last")
    assert run_folder.log_tail(tmp_path).splitlines() == ["first", "bar 100%", "last"]
    assert run_folder.log_tail(tmp_path, lines=1) == "last"


def test_the_metrics_schema_lives_with_the_run_folder():
    assert run_folder.PHASES == ("sampling", "teacher", "student", "optimizer")
    assert "train/reward" in run_folder.ROW_MEAN_METRICS and "train/loss" not in run_folder.ROW_MEAN_METRICS
