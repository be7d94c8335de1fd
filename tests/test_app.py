"""The web app's handlers, called directly and through gradio_client, on the tiny lab.

Handlers are plain functions of the tab modules; the served app is driven through its
named API endpoints (/preview, /launch, /list_runs, /stop, ...). One test launches a
real background run from the app, closes the app, and checks the run carried on and
a new app instance shows it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time

import pytest

from synthetic_runs import make_run

gr = pytest.importorskip("gradio")


@pytest.fixture()
def runs_root(lab_home):
    from opd_lab.paths import runs_dir

    return runs_dir()


def _form(**changes) -> list:
    from opd_lab_app.launch_tab import FORM_FIELDS

    values = [changes.pop(spec.name, spec.default) for spec in FORM_FIELDS]
    assert not changes, f"not form fields: {changes}"
    return values


def _folders(root) -> set[str]:
    return {path.name for path in root.iterdir()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_state(run_dir, states, timeout=120.0) -> dict:
    from opd_lab import runs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = runs.status_of(run_dir)
        if status.get("state") in states:
            return status
        time.sleep(0.5)
    raise AssertionError(f"{run_dir.name} never reached {states}: {runs.status_of(run_dir)}")


# --- Launch -------------------------------------------------------------------------


def test_form_has_every_config_field_but_the_locked_ones():
    from opd_lab_app.launch_tab import FIELD_NAMES, config_from_form
    from opd_lab.config import RunConfig

    names = [spec.name for spec in dataclasses.fields(RunConfig)]
    locked = ("trust_remote_code", "teacher_server", "teacher_servers", "report_dir", "fsdp")
    assert FIELD_NAMES == [name for name in names if name not in locked]
    # A browser cannot point the app at a teacher server: the form has no such field.
    assert config_from_form(_form()).teacher_server == ""
    # Nor choose where the server writes tracker files (report_to writes under the data dir).
    assert "report_to" in FIELD_NAMES and config_from_form(_form()).report_dir == ""
    # Runs launched from the app have one process, where sharding means nothing.
    assert config_from_form(_form()).fsdp is False


def test_built_form_widgets_follow_field_types(lab_home):
    from opd_lab_app.main import build_app

    demo = build_app()
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert isinstance(by_id["field-method"], gr.Dropdown)
    assert isinstance(by_id["field-steps"], gr.Number) and by_id["field-steps"].precision == 0
    assert isinstance(by_id["field-learning_rate"], gr.Number)
    assert isinstance(by_id["field-teacher"], gr.Dropdown)  # choices, not paths (opd_lab_app.inputs)
    assert "lab:addition" in [value for _, value in by_id["field-teacher"].choices]
    assert isinstance(by_id["field-name"], gr.Textbox)
    assert "field-trust_remote_code" not in by_id
    assert "Optimizer steps." in by_id["field-steps"].info


def test_form_labels_are_words_with_the_field_name_second(lab_home):
    from opd_lab_app.launch_tab import FIELD_NAMES
    from opd_lab_app.main import build_app

    demo = build_app()
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert by_id["field-batch_size"].label == "Prompts per step"
    assert by_id["field-warmup_steps"].label == "Warmup steps"
    for name in FIELD_NAMES:
        widget = by_id[f"field-{name}"]
        assert "_" not in widget.label, widget.label
        assert widget.info.endswith(f"[{name}]")


def test_preview_lists_only_changed_flags():
    from opd_lab_app.launch_tab import check_form, preview_command

    assert preview_command(_form()) == "opd-lab launch"
    command = preview_command(_form(method="rl", samples_per_prompt=4, steps=6, learning_rate=3e-4,
                                    name="my run"))
    assert command == ("opd-lab launch --name 'my run' --method rl --steps 6 --samples-per-prompt 4 "
                       "--learning-rate 0.0003")
    assert preview_command(_form(), trust_remote_code=True) == "opd-lab launch --trust-remote-code"
    assert check_form(_form()).startswith("Ready")
    assert "temperature" in check_form(_form(temperature=0.0))


def test_launch_with_a_bad_value_shows_the_error_and_creates_no_run(runs_root):
    from opd_lab_app.launch_tab import launch_run

    before = _folders(runs_root)
    message, run_id = launch_run(_form(learning_rate=5.0))
    assert run_id == "" and "learning_rate" in message and "Not launched" in message
    message, run_id = launch_run(_form(steps=None))
    assert run_id == "" and "steps: enter a value" in message
    message, run_id = launch_run(_form(method="rl", samples_per_prompt=1))
    assert run_id == "" and "samples_per_prompt" in message
    assert _folders(runs_root) == before


def test_launch_at_the_run_limit_queues_the_run_with_its_place(runs_root, monkeypatch):
    from opd_lab_app.launch_tab import launch_run
    from opd_lab_app.runs_tab import TABLE_HEADERS, run_rows
    from opd_lab import runs

    monkeypatch.setenv("OPD_LAB_MAX_RUNS", "0")
    message, run_id = launch_run(_form(steps=2, name="queued-form"))
    assert run_id.startswith("queued-form") and "#1 in line" in message
    row = {r[0]: dict(zip(TABLE_HEADERS, r)) for r in run_rows()}[run_id]
    assert row["state"] == "waiting (#1 in line)" and row["step"].endswith("0/2")
    assert "left the queue" in runs.request_stop(runs.runs_dir() / run_id)
    runs.delete_run(runs.runs_dir() / run_id)


def test_presets_fill_the_form():
    from opd_lab_app.launch_tab import FIELD_NAMES, preset_values

    values = dict(zip(FIELD_NAMES, preset_values("RL on the lab")))
    assert values["method"] == "rl" and values["samples_per_prompt"] == 4 and values["batch_size"] == 8
    assert values["steps"] == 150  # everything else is the default
    from opd_lab.config import PRESETS, RunConfig

    for preset in PRESETS:  # every preset is a valid config
        RunConfig.from_dict(dict(zip(FIELD_NAMES, preset_values(preset))))


def test_config_shows_as_yaml_and_loads_back_from_pasted_text_without_trust_remote_code():
    from opd_lab_app.launch_tab import FIELD_NAMES, MAX_CONFIG_CHARS, config_text, load_config_text

    text, message = config_text(_form(method="sft", steps=7, name="saved"))
    assert "steps: 7" in text and "saved.yaml" in message
    values, message = load_config_text(text)
    assert dict(zip(FIELD_NAMES, values))["steps"] == 7 and "Loaded" in message

    values, message = load_config_text('{"method": "opd", "trust_remote_code": true, "steps": 3}')
    assert "trust_remote_code" not in FIELD_NAMES and "ignores" in message
    values, message = load_config_text("steps: 0\n")
    assert values == [None] * len(FIELD_NAMES) and "steps" in message
    values, message = load_config_text("steps: 3\nsteps: 4\n")
    assert values == [None] * len(FIELD_NAMES) and "appears twice" in message
    values, message = load_config_text("x" * (MAX_CONFIG_CHARS + 1))
    assert values == [None] * len(FIELD_NAMES) and "at most" in message
    assert config_text(_form(steps=0))[0] == ""


# --- Runs ---------------------------------------------------------------------------


def test_run_table_has_one_row_per_run(runs_root):
    from opd_lab_app.runs_tab import TABLE_HEADERS, run_rows, run_summary

    make_run(runs_root, "table-demo", method="rl", steps=20, eval_accuracy={0: 0.1, 20: 0.8})
    rows = {row[0]: dict(zip(TABLE_HEADERS, row)) for row in run_rows()}
    assert rows["table-demo"] == {"run": "table-demo", "method": "rl", "task": "addition", "state": "finished",
                                  "step": "▰▰▰▰▰▰▰▰▰▰ 20/20", "ETA": "-", "accuracy": "80.0%",
                                  "message": "finished", "owner": "-"}
    assert "**finished**" in run_summary("table-demo")


def test_run_table_names_owners_filters_mine_and_says_starting(runs_root):
    from opd_lab_app.runs_tab import TABLE_HEADERS, run_rows, state_text
    from opd_lab_app.state import forget_runs_list
    from opd_lab.run_folder import record_launcher

    record_launcher(make_run(runs_root, "owned-by-ana"), "ana")
    record_launcher(make_run(runs_root, "owned-by-ben"), "ben")
    forget_runs_list()
    rows = {row[0]: dict(zip(TABLE_HEADERS, row)) for row in run_rows()}
    assert rows["owned-by-ana"]["owner"] == "ana" and rows["owned-by-ben"]["owner"] == "ben"
    assert [row[0] for row in run_rows(mine_of="ana")] == ["owned-by-ana"]
    assert run_rows(mine_of="") == []  # without a login nobody owns a run
    assert state_text({"state": "queued"}) == "starting"  # the process is starting; only the line "waits"
    assert state_text({"state": "waiting", "queue_position": 2}) == "waiting (#2 in line)"


@pytest.mark.parametrize("bad_id", ["../../etc", "..", "/etc/passwd", "a/../../b", "", "runs/../x"])
def test_run_ids_that_leave_the_runs_folder_are_rejected(runs_root, bad_id):
    from opd_lab_app import compare_tab, inspect_tab, playground_tab, runs_tab

    before = _folders(runs_root)
    for message in (runs_tab.stop_run(bad_id), runs_tab.resume_run(bad_id), runs_tab.delete_run(bad_id, True),
                    runs_tab.run_summary(bad_id), inspect_tab.token_view(bad_id, 2, 0),
                    compare_tab.comparison([bad_id], "step", "eval/accuracy")[2]):
        assert message.startswith("**Error:**"), message
    assert inspect_tab.steps_of(bad_id) == []
    with pytest.raises(ValueError):
        playground_tab.resolve_choice(f"run:{bad_id}/step_000001")
    assert _folders(runs_root) == before


def test_delete_needs_the_confirmation(runs_root):
    from opd_lab_app.runs_tab import delete_run

    make_run(runs_root, "to-delete")
    assert "I am sure" in delete_run("to-delete", False)
    assert (runs_root / "to-delete").exists()
    assert "Deleted" in delete_run("to-delete", True)
    assert not (runs_root / "to-delete").exists()


# --- Compare ------------------------------------------------------------------------


def test_comparison_has_one_row_per_run_and_a_verdict_that_matches_it(runs_root, monkeypatch):
    from opd_lab_app import compare_tab

    make_run(runs_root, "cmp-opd", method="opd", eval_accuracy={0: 0.4, 10: 0.7, 20: 0.8})
    make_run(runs_root, "cmp-rl", method="rl", eval_accuracy={0: 0.4, 10: 0.5, 20: 0.6})
    make_run(runs_root, "cmp-sft", method="sft", flops_per_step=5e12, eval_accuracy={0: 0.4, 10: 0.75, 20: 0.85})
    monkeypatch.setattr(compare_tab, "lab_summary_of", lambda spec, task: {"teacher": {"accuracy": 0.9},
                                                                           "student": {"accuracy": 0.4}})
    figure, table, note = compare_tab.comparison(["cmp-opd", "cmp-rl", "cmp-sft"], "flops", "eval/accuracy")
    assert [trace.name for trace in figure.data] == ["OPD", "RL", "SFT"]  # only the method differs
    assert list(table["id"]) == ["cmp-opd", "cmp-rl", "cmp-sft"] and len(table) == 3
    assert list(table["final accuracy"]) == ["80.0%", "60.0%", "85.0%"]
    # Gap targets: 0.4 + f * (0.9 - 0.4) -> 65%, 80%, 87.5%; none is reached at step 0.
    assert [column for column in table.columns if column.startswith("to close")] == [
        "to close 50% of the gap (65.0%)", "to close 80% of the gap (80.0%)", "to close 95% of the gap (87.5%)"]
    assert table.iloc[1]["to close 50% of the gap (65.0%)"].startswith("not reached (> 20 steps")
    # 80% of the gap: OPD at step 20 (2e13 FLOPs), SFT at step 20 (1e14): OPD wins on compute.
    assert table.iloc[0]["to close 80% of the gap (80.0%)"].startswith("20 steps") and "2e+13 FLOPs" in table.iloc[0][
        "to close 80% of the gap (80.0%)"]
    assert "OPD closed 80% of the gap to the teacher with the least compute" in note
    assert "5.0x less than SFT" in note
    assert compare_tab.comparison([], "step", "eval/accuracy")[2] == "Choose at least one run."


def test_legends_name_what_differs_between_runs():
    from opd_lab.report import run_labels

    configs = [{"method": "opd", "estimator": "full", "temperature": 0.7, "seed": 0, "name": "a"},
               {"method": "opd", "estimator": "sampled", "temperature": 1.0, "seed": 0, "name": "b"},
               {"method": "sft", "estimator": "sampled", "temperature": 1.0, "seed": 0, "name": "c"}]
    assert run_labels(configs) == ["OPD · estimator=full · T=0.7", "OPD · estimator=sampled · T=1",
                                   "SFT · estimator=sampled · T=1"]
    assert run_labels([{"method": "opd"}, {"method": "opd"}]) == ["OPD", "OPD #2"]


def test_three_methods_share_the_budget():
    from opd_lab.studies.arms import method_configs
    from opd_lab.config import ConfigError, RunConfig

    base = RunConfig(method="opd", estimator="full", divergence="jsd", on_policy_fraction=0.5, eval_every=3, seed=7)
    configs = {config.method: config for config in method_configs(steps=12, sequences_per_step=8, base=base)}
    assert set(configs) == {"rl", "sft", "opd"}
    assert {config.steps for config in configs.values()} == {12}
    sequences = {method: config.batch_size * config.samples_per_prompt for method, config in configs.items()}
    assert sequences == {"rl": 8, "sft": 8, "opd": 8}
    assert {(config.eval_every, config.seed, config.on_policy_fraction) for config in configs.values()} == {(3, 7, 1.0)}
    assert [config.name for config in configs.values()] == ["compare-rl", "compare-sft", "compare-opd"]
    for bad in (6, 0):
        with pytest.raises(ConfigError, match="multiple of 4"):
            method_configs(steps=12, sequences_per_step=bad)


def test_the_trio_launches_at_max_runs_2_through_the_queue(runs_root, monkeypatch):
    from opd_lab_app.compare_tab import launch_three
    from opd_lab import runs

    monkeypatch.setenv("OPD_LAB_MAX_RUNS", "2")
    message, launched = launch_three(4, 8)
    assert len(launched) == 3, message
    states = {run: runs.status_of(runs.runs_dir() / run)["state"] for run in launched}
    assert sorted(states.values()) == ["queued", "queued", "waiting"] or list(states.values()).count("waiting") == 1
    assert "#1 in line" in message
    for server_word in ("--max-runs", "OPD_LAB_MAX_RUNS", str(runs.runs_dir()), "stop one"):
        assert server_word not in message

    def all_finished():
        runs.start_waiting()  # what the app's queue thread does every 2 s
        return all(runs.status_of(runs.runs_dir() / run)["state"] == "finished" for run in launched)

    deadline = time.monotonic() + 300
    while not all_finished():
        assert time.monotonic() < deadline, {run: runs.status_of(runs.runs_dir() / run) for run in launched}
        assert runs.running_count() <= 2
        time.sleep(0.5)


# --- Inspect ------------------------------------------------------------------------


def test_inspect_shows_a_logged_sample(runs_root):
    from opd_lab_app import inspect_tab

    make_run(runs_root, "inspect-demo", steps=20, sample_every=10)
    assert inspect_tab.steps_of("inspect-demo") == [10, 20]
    choices = inspect_tab.sample_choices("inspect-demo", 10)
    assert [index for _, index in choices] == [0, 1]
    view = inspect_tab.token_view("inspect-demo", 10, 1, "advantage")
    assert "<div" in view and "inspect-demo, step 10" in view and "<script" not in view
    assert inspect_tab.token_view("inspect-demo", 10, 5) == "Choose a logged step and a sample."
    heatmap, over_training = inspect_tab.step_figures("inspect-demo", 10)
    assert heatmap.data[0].z.shape[0] == 2 and len(over_training.data) >= 1
    # As in the Playground: the advantage by default, on the locked scale unless unlocked.
    assert "(locked scale)" in inspect_tab.token_view("inspect-demo", 10, 0)
    assert "p<sub>teacher</sub>" in inspect_tab.token_view("inspect-demo", 10, 0)
    assert "(this view's scale)" in inspect_tab.token_view("inspect-demo", 10, 0, "advantage", locked=False)
    _, smoothed = inspect_tab.step_figures("inspect-demo", 20, smoothing=0.8)
    assert [shape.x0 for shape in smoothed.layout.shapes] == [20] and any("EMA" in t.name for t in smoothed.data)


def test_inspect_side_by_side_shows_the_same_prompt_or_says_it_is_missing(runs_root):
    from opd_lab_app import inspect_tab
    from opd_lab.files import append_jsonl
    from opd_lab.run_folder import SAMPLES_FILE
    from synthetic_runs import make_tokens

    make_run(runs_root, "side-opd", method="opd", steps=20, sample_every=10)
    other = make_run(runs_root, "side-sft", method="sft", steps=20, sample_every=10)
    append_jsonl(other / SAMPLES_FILE, [{"step": 15, "index": 0, "prompt": "1+1=", "correct": False,
                                         "tokens": make_tokens(3)}])
    view = inspect_tab.side_by_side("side-opd", 10, 1, "side-sft", 20)
    assert view.count('class="tvcol"') == 2 and "side-opd at step 10 ✗ wrong" in view
    # The other run's sample of the same index; an SFT sample is the teacher's text it trained on.
    assert "side-sft at step 20 (written by the teacher; SFT trained on it) ✗ wrong" in view
    assert view.count('class="tvt"') == 9 + 9  # both columns: the second samples have 12 - 3 tokens
    missing = inspect_tab.side_by_side("side-opd", 10, 0, "side-sft", 15)
    assert missing == ("<p>The prompt <code>347+285=</code> was not logged in <b>side-sft</b> at step 15 "
                       "(the prompts logged there: 1+1=).</p>")
    assert "Choose a run" in inspect_tab.side_by_side("side-opd", 10, 0, None, None)
    assert "<b>Error:</b>" in inspect_tab.side_by_side("side-opd", 10, 0, "../etc", 10)
    assert "choose a logged step and a sample" in inspect_tab.side_by_side("side-opd", 10, 7, "side-sft", 10)


def test_the_red_pen_in_inspect_uses_the_checkpoint_nearest_the_writer(runs_root):
    from opd_lab_app import inspect_tab
    from opd_lab.checkpoints import STATE_FILE

    run_dir = make_run(runs_root, "pen-demo", steps=20, sample_every=10)
    with pytest.raises(inspect_tab.runs.RunError, match="no checkpoint yet"):
        inspect_tab.pen_student(run_dir, 10)
    for step in (5, 9, 20):
        (run_dir / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
        (run_dir / "checkpoints" / f"step_{step:06d}" / STATE_FILE).touch()
    chosen, sentence = inspect_tab.pen_student(run_dir, 10)  # step 10's samples come from the student of step 9
    assert chosen.name == "step_000009" and sentence == "Student: the checkpoint at step 9, the one that wrote this sample."
    chosen, sentence = inspect_tab.pen_student(run_dir, 8)  # 7 is as near 5 as 9: the earlier one
    assert chosen.name == "step_000005" and "nearest kept to the one that wrote this sample (step 7)" in sentence
    assert inspect_tab.pen_student(run_dir, 30)[0].name == "step_000020"


def test_the_red_pen_rewrites_a_logged_sample(trained_run):
    from opd_lab_app import inspect_tab

    run_id = trained_run.name
    sample = inspect_tab.logged_sample(run_id, 2, 0)
    choices = inspect_tab.pen_choices(sample["tokens"], 1)
    assert choices and choices[0][1] == sample["tokens"][1]["teacher_top"][0][0]
    view, verdict = inspect_tab.inspect_red_pen(run_id, 2, 0, 1, "9")
    assert verdict.startswith("Student: the checkpoint at step 2, the nearest kept")
    assert f"token 1 `{sample['tokens'][1]['text']}` → `9`" in verdict
    assert "During training the run's verifier judged the old completion" in verdict
    assert "after the red pen" in view and sample["prompt"] in view
    _, error = inspect_tab.inspect_red_pen(run_id, 2, 0, 999, "9")
    assert error.startswith("**Error:**")


# --- Playground ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(lab_home):
    """A 2-step OPD run trained in this process, with a checkpoint."""
    from opd_lab import run_folder
    from opd_lab.config import RunConfig
    from opd_lab.train import run_training

    config = RunConfig(name="playground", steps=2, batch_size=4, eval_every=2, eval_count=8, sample_every=1,
                       checkpoint_every=2, samples_to_log=2)
    run_dir = run_folder.create_run(config)
    assert run_training(run_dir, progress=False) == "finished"
    return run_dir


def test_playground_answers_with_a_checkpoint_and_caches_models(trained_run, monkeypatch):
    from opd_lab_app import playground_tab

    choices = dict((value, label) for label, value in playground_tab.model_choices())
    choice = f"run:{trained_run.name}/step_000002"
    assert "lab:addition" in choices and choice in choices
    completion, view, about, records = playground_tab.answer(choice, "123+456=", True, 1.0, 0, "reverse_kl")
    assert view.startswith("<style") and len(records) >= 1 and trained_run.name in about
    assert completion == "".join(record["text"] for record in records if record["text"] != "</s>")[:len(completion)]

    view, about, records = playground_tab.score("lab:addition", "1+2=", "1+2+0=03;3", "advantage")
    assert len(records) == len("1+2+0=03;3") + 1  # every character, and the end of text
    assert "base student" in about

    loads = []
    monkeypatch.setattr(playground_tab, "load_pair", lambda *a, **k: loads.append(a))
    monkeypatch.setattr(playground_tab, "load_with_teacher", lambda *a, **k: loads.append(a))
    again = playground_tab.answer(choice, "123+456=", True, 1.0, 0, "reverse_kl")
    assert again[0] == completion and loads == []  # served from the cache


def test_playground_rejects_unknown_models(lab_home):
    from opd_lab_app import playground_tab

    for choice in ("lab:../../etc", "lab:sorting", "run:nope/step_000001", "/etc/passwd", ""):
        completion, view, _, _ = playground_tab.answer(choice, "1+1=", True, 1.0, 0, "reverse_kl")
        assert completion == "" and view.startswith("**Error:**")


# --- the served app, through gradio_client -----------------------------------------


@pytest.fixture()
def served_app(lab_home):
    from opd_lab_app.main import build_app

    demo = build_app()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


def test_client_endpoints(served_app, runs_root):
    from gradio_client import Client

    make_run(runs_root, "client-demo")
    _, url = served_app
    client = Client(url, verbose=False)
    table = client.predict(api_name="/list_runs")
    assert "client-demo" in [row[0] for row in table["data"]]
    command, check = client.predict(*_form(steps=6, method="sft"), api_name="/preview")
    assert command == "opd-lab launch --method sft --steps 6" and check.startswith("Ready")
    command, check = client.predict(*_form(steps=0), api_name="/preview")
    assert command == "opd-lab launch --steps 0" and "steps: must be at least 1" in check
    assert client.predict("../../etc", api_name="/stop").startswith("**Error:**")
    before = _folders(runs_root)
    message, run_id = client.predict(*_form(eval_every=0), api_name="/launch")
    assert run_id == "" and "eval_every" in message and _folders(runs_root) == before


@pytest.mark.slow
def test_a_run_launched_by_the_app_survives_the_app(lab_home, runs_root):
    from gradio_client import Client

    from opd_lab_app.main import build_app
    from opd_lab import run_folder, runs

    demo = build_app()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        form = _form(name="survivor", steps=8, batch_size=4, eval_every=4, eval_count=8, sample_every=4,
                     checkpoint_every=4)
        message, run_id = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(*form, api_name="/launch")
    finally:
        demo.close()
    assert run_id.startswith("survivor-"), message
    run_dir = run_folder.run_path(run_id)
    assert runs.status_of(run_dir)["state"] in runs.ACTIVE_STATES  # the app is gone, the run is not
    status = _wait_state(run_dir, ("finished", "failed", "stopped"))
    assert status["state"] == "finished" and status["step"] == 8, status

    demo = build_app()  # a new app instance reads the run back from its folder
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        table = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/list_runs")
    finally:
        demo.close()
    row = next(row for row in table["data"] if row[0] == run_id)
    assert row[3] == "finished" and row[4].endswith(" 8/8")


# --- serve --------------------------------------------------------------------------


def test_parse_auth_and_the_instructor():
    from opd_lab_app.main import choose_instructor, parse_auth

    assert parse_auth(None) == []
    assert parse_auth("me:se:cret") == [("me", "se:cret")]
    assert parse_auth(["teacher:a", "ana:b"]) == [("teacher", "a"), ("ana", "b")]
    for bad in ("nocolon", ":pw", "me:"):
        with pytest.raises(ValueError, match="user:password"):
            parse_auth(bad)
    with pytest.raises(ValueError, match="given twice"):
        parse_auth(["ana:a", "ana:b"])
    pairs = [("teacher", "a"), ("ana", "b")]
    assert choose_instructor(pairs, None) == "teacher" and choose_instructor(pairs, "ana") == "ana"
    assert choose_instructor([], None) is None
    with pytest.raises(ValueError, match="not one of the --auth users"):
        choose_instructor(pairs, "ben")
    with pytest.raises(ValueError, match="needs --auth"):
        choose_instructor([], "teacher")


def test_only_the_launcher_or_the_instructor_may_act_on_a_run():
    from opd_lab_app.users import refusal

    assert refusal("ana", "ana", "teacher") is None
    assert refusal("ana", "teacher", "teacher") is None
    assert refusal("ana", None, None) is None  # no login: one user, every run theirs
    assert refusal(None, None, None) is None
    assert refusal("ana", "ben", "teacher") == (
        "this run belongs to ana: only ana or the instructor (teacher) may stop, resume or delete it")
    assert "only the instructor (teacher)" in refusal(None, "ben", "teacher")  # a terminal run is the instructor's


def test_stop_and_delete_refuse_another_users_run(runs_root):
    from types import SimpleNamespace

    from opd_lab_app import runs_tab
    from opd_lab.run_folder import STOP_FILE, launcher_of, record_launcher

    run_dir = make_run(runs_root, "owned-demo")
    record_launcher(run_dir, "ana")
    assert launcher_of(run_dir) == "ana" and "launched by ana" in runs_tab.run_summary("owned-demo")
    ben, ana = SimpleNamespace(username="ben"), SimpleNamespace(username="ana")
    for message in (runs_tab.stop_run("owned-demo", ben, "teacher"),
                    runs_tab.resume_run("owned-demo", ben, "teacher"),
                    runs_tab.delete_run("owned-demo", True, ben, "teacher")):
        assert message == ("**Error:** this run belongs to ana: only ana or the instructor (teacher) "
                           "may stop, resume or delete it")
    assert run_dir.exists() and not (run_dir / STOP_FILE).exists()
    assert "not running" in runs_tab.stop_run("owned-demo", ana, "teacher")
    assert runs_tab.delete_run("owned-demo", True, SimpleNamespace(username="teacher"), "teacher") == \
        "Deleted **owned-demo**."
    assert not run_dir.exists()


@pytest.mark.slow
def test_the_served_app_records_the_launcher_and_refuses_other_users(lab_home, runs_root):
    from gradio_client import Client

    from opd_lab_app.main import build_app
    from opd_lab.run_folder import launcher_of, run_path

    demo = build_app(instructor="teacher")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                auth=[("teacher", "t"), ("ana", "a"), ("ben", "b")])
    url = f"http://127.0.0.1:{port}/"
    try:
        message, run_id = Client(url, auth=("ana", "a"), verbose=False).predict(
            *_form(name="ana-run", steps=400, batch_size=2, eval_every=400, eval_count=4), api_name="/launch")
        assert run_id.startswith("ana-run-"), message
        assert launcher_of(run_path(run_id)) == "ana"
        refused = Client(url, auth=("ben", "b"), verbose=False).predict(run_id, api_name="/stop")
        assert refused.startswith("**Error:** this run belongs to ana")
        assert Client(url, auth=("teacher", "t"), verbose=False).predict(run_id, api_name="/stop").startswith(
            ("stop requested", "run ", f"{run_id} left the queue"))
    finally:
        demo.close()
    _wait_state(run_path(run_id), ("stopped", "finished", "failed"))


def test_serve_sets_the_run_limit_builds_a_missing_lab_and_passes_auth(lab_home, monkeypatch):
    import opd_lab_app.main
    import opd_lab.lab

    launched, built = {}, []

    class FakeApp:
        def launch(self, **kwargs):
            launched.update(kwargs)

    monkeypatch.setattr(opd_lab_app.main, "build_app", lambda trust_remote_code, instructor: launched.update(
        trust=trust_remote_code, instructor=instructor) or FakeApp())
    monkeypatch.setattr(opd_lab_app.main, "lab_summary", lambda task: None)  # as if no lab were built
    monkeypatch.setattr(opd_lab.lab, "build_lab", lambda recipe: built.append(recipe.task) or {})
    monkeypatch.setattr(opd_lab.lab, "format_summary", lambda summary: "summary")
    monkeypatch.setenv("OPD_LAB_MAX_RUNS", "1")  # restored after the test; serve overwrites it
    monkeypatch.setattr(opd_lab_app.main, "start_queue_worker", lambda: launched.update(queue=True))
    opd_lab_app.main.serve(host="0.0.0.0", port=7999, auth="me:pw", max_runs=5, trust_remote_code=True, build=True)
    assert built == ["addition"]
    assert launched["server_name"] == "0.0.0.0" and launched["server_port"] == 7999
    assert launched["auth"].__self__.passwords == {"me": "pw"} and launched["trust"] is True and launched["queue"] is True
    assert "instructor" in launched["auth_message"] and launched["instructor"] == "me"
    assert os.environ["OPD_LAB_MAX_RUNS"] == "5"
    built.clear()
    opd_lab_app.main.serve(build=False)
    assert built == [] and launched["auth_message"] is None


def test_serving_to_the_network_without_a_password_warns(lab_home, monkeypatch, capsys):
    import opd_lab_app.main

    monkeypatch.setattr(opd_lab_app.main, "build_app", lambda trust_remote_code, instructor: type(
        "Fake", (), {"launch": lambda *a, **k: None})())
    monkeypatch.setattr(opd_lab_app.main, "start_queue_worker", lambda: None)
    opd_lab_app.main.serve(host="0.0.0.0", build=False)
    assert "without --auth" in capsys.readouterr().err
    opd_lab_app.main.serve(host="127.0.0.1", build=False)
    assert "WARNING" not in capsys.readouterr().err


def field_report_records() -> list[dict]:
    """`7+5+0=12;4+8+1=13;3+2+1=07;732` scored as the field report measured on the full lab (347+285=).

    The correct `2` of `12` has a high reverse KL (the student was only 51.5% sure of it) but a
    positive advantage; the wrong `7`s have a low KL and a teacher p of 0.001.
    """
    records = []
    for position, text in enumerate("7+5+0=12;4+8+1=13;3+2+1=07;732"):
        record = {"text": text, "student_logprob": -0.05, "teacher_logprob": -0.001, "reverse_kl": 0.05,
                  "teacher_top": [[text, 0.999], ["9", 0.0005]]}
        if position == 7:  # the 2 of 12
            record.update(student_logprob=math.log(0.515), teacher_logprob=math.log(0.999), reverse_kl=3.62)
        if position in (25, 27):  # the 7 of 07 and the 7 of 732
            correct = "6"
            record.update(student_logprob=math.log(0.3), teacher_logprob=math.log(0.001), reverse_kl=0.252,
                          teacher_top=[[correct, 0.999], ["7", 0.001]])
        record["advantage"] = record["teacher_logprob"] - record["student_logprob"]
        records.append(record)
    return records


def darkest(view: str) -> list[int]:
    """Token positions of a view, reddest first (green minus red channel: white 0, red < 0, blue > 0)."""
    import re

    colours = re.findall(r'class="tvt" style="background:#([0-9a-f]{6})[^"]*" data-i="(\d+)"', view)
    return [int(position) for _, position in sorted(colours, key=lambda found: int(found[0][2:4], 16) - int(found[0][0:2], 16))]


def test_playground_default_colouring_shows_the_typed_mistakes(lab_home, monkeypatch):
    from opd_lab_app import playground_tab
    from opd_lab import tokenview

    monkeypatch.setattr(playground_tab.feedback, "score_completions", lambda *a, **k: [field_report_records()])
    view, _, records = playground_tab.score("lab:addition", "347+285=", "7+5+0=12;4+8+1=13;3+2+1=07;732")
    assert playground_tab.DEFAULT_COLOR == "advantage"
    assert sorted(darkest(view)[:2]) == [25, 27]  # both wrong 7s are the reddest tokens
    assert 7 not in darkest(view)[:5]  # the correct 2 is not red (it is blue: pushed up)
    assert "The teacher would write 6 (99.9%) instead of 7 (0.1%)." in view
    assert f"≥ +{tokenview.LOCKED_VMAX:g}" in view and "locked scale" in view  # the same scale everywhere
    kl_view = playground_tab._view(records, "347+285=", "reverse_kl", "x")
    assert darkest(kl_view)[0] == 7  # the trap the legend explains: KL marks the unsure, correct 2
    legend = playground_tab.color_legend()
    assert "whole next-token distribution" in legend and "dislikes *this* token" in legend


def test_teacher_sentence_agrees_or_corrects():
    from opd_lab.tokenview import teacher_sentence

    assert teacher_sentence({"text": "6", "teacher_top": [["6", 0.999]]}) == "the teacher would write 6 too (99.9%)"
    assert teacher_sentence({"text": " ", "teacher_logprob": math.log(0.02), "teacher_top": [["<", 0.5]]}) == (
        "the teacher would write &lt; (50.0%) instead of · (2.0%)")
    assert teacher_sentence({"text": "x"}) == ""


def test_red_pen_rewrites_from_the_corrected_token(lab_home):
    from opd_lab_app import playground_tab

    view, about, records = playground_tab.score("lab:addition", "1+2=", "1+2+0=03;3")
    choices = playground_tab.pen_choices(records, 6)
    assert len(choices) == 5 and choices[0][1] == records[6]["teacher_top"][0][0]
    html, verdict = playground_tab.red_pen("lab:addition", "1+2=", records, 6, "9")
    assert "Red pen:** token 6 `0` → `9`" in verdict and "1+2+0=9" in verdict
    assert "after the red pen" in html and html.count('class="tvcols"') == 1
    assert "Against the true answer **3**: before, right (3); after, **wrong**" in verdict  # 1+2, not the teacher's guess
    _, error = playground_tab.red_pen("lab:addition", "1+2=", records, 99, "9")
    assert error.startswith("**Error:**")
    _, error = playground_tab.red_pen("lab:addition", "1+2=", [], 0, "9")
    assert "score a completion first" in error


def test_form_is_ready_only_when_the_lab_and_models_exist(lab_home):
    from opd_lab_app import launch_tab

    values = launch_tab.preset_values(launch_tab.DEFAULTS_PRESET)
    assert launch_tab.check_form(values) == "Ready: press **Launch**."
    values[launch_tab.FIELD_NAMES.index("task")] = "sorting"
    assert "not built yet" in launch_tab.check_form(values) and "opd-lab lab build --task sorting" in \
        launch_tab.check_form(values)


def test_playground_legend_names_each_colouring_once():
    from opd_lab_app.playground_tab import color_legend

    legend = color_legend()
    assert legend.count("Advantage") == 1 and legend.lower().count("advantage:") == 0
    assert "Reverse KL" in legend


def test_run_summary_shows_where_the_step_time_went(runs_root):
    from opd_lab_app.runs_tab import phase_split, run_summary
    from opd_lab_app.state import run_dir_of
    from opd_lab.files import append_jsonl
    from opd_lab.run_folder import METRICS_FILE

    make_run(runs_root, "split-demo", method="opd", steps=2)
    run_dir = run_dir_of("split-demo")
    assert phase_split(run_dir) == ""  # no phase timings logged: nothing shown
    append_jsonl(run_dir / METRICS_FILE, [{"step": 3, "perf/time_sampling": 0.3, "perf/time_teacher": 0.2,
                                           "perf/time_student": 0.4, "perf/time_optimizer": 0.1}])
    assert phase_split(run_dir) == "step time: sampling 30% · teacher 20% · student 40% · optimizer 10%"
    assert "step time: sampling 30%" in run_summary("split-demo")


def _fake_lab(name: str, teacher: float, student: float) -> None:
    """A built lab's summary only (no models): what the teacher lines read."""
    from opd_lab.files import write_json_atomic
    from opd_lab.lab import SUMMARY_FILE
    from opd_lab.paths import lab_dir

    write_json_atomic(lab_dir(name) / SUMMARY_FILE, {"task": "addition", "teacher": {"accuracy": teacher},
                                                     "student": {"accuracy": student}})


def test_the_teacher_line_is_the_runs_own_teacher_for_a_named_lab(runs_root):
    """An `opd-lab compare` run trains against `lab:NAME`: its dashed line is that lab's teacher,
    not the task's default lab's."""
    from opd_lab_app import compare_tab, runs_tab

    _fake_lab("weak-teacher-demo", teacher=0.55, student=0.2)
    make_run(runs_root, "named-lab-run", teacher="lab:weak-teacher-demo")
    make_run(runs_root, "default-lab-run")
    default_teacher = compare_tab.lab_summary_of("lab", "addition")["teacher"]["accuracy"]
    assert default_teacher != 0.55

    def teacher_line(run_id):
        figure, _, _ = runs_tab.run_figures(run_id, "train/loss")
        return [shape["y0"] for shape in json.loads(figure.plot)["layout"].get("shapes", [])]

    assert teacher_line("named-lab-run") == [0.55]
    assert teacher_line("default-lab-run") == [default_teacher]
    _, _, note = compare_tab.comparison(["named-lab-run"], "step", "eval/accuracy")
    assert "lab teacher's 55.0%" in note and "base student's 20.0%" in note
    _, _, note = compare_tab.comparison(["named-lab-run", "default-lab-run"], "step", "eval/accuracy")
    assert "different teachers" in note


def test_a_teacher_that_is_not_a_lab_draws_no_line(runs_root, tmp_path):
    from opd_lab_app import runs_tab

    make_run(runs_root, "hub-teacher-run", teacher="HuggingFaceTB/SmolLM2-360M-Instruct")
    figure, _, _ = runs_tab.run_figures("hub-teacher-run", "train/loss")
    assert json.loads(figure.plot)["layout"].get("shapes", []) == []


def test_run_figures_are_built_once_per_change_of_the_metrics_and_shared(runs_root, monkeypatch):
    """A classroom of viewers of one training run costs one figure build per new metrics row, not one per viewer."""
    from opd_lab_app import runs_tab, state
    from opd_lab import plots
    from opd_lab.files import append_jsonl
    from opd_lab.run_folder import METRICS_FILE

    run_dir = make_run(runs_root, "watched-by-30", steps=20)
    builds = []
    real = plots.training_curves
    monkeypatch.setattr(runs_tab.plots, "training_curves", lambda *a, **k: builds.append(a) or real(*a, **k))
    first = [runs_tab.run_figures("watched-by-30", "train/loss", 0.6) for _ in range(30)]  # 30 viewers, one tick
    assert len(builds) == 2 and all(figures[0] is first[0][0] for figures in first)  # accuracy + metric, shared
    append_jsonl(run_dir / METRICS_FILE, [{"step": 21, "train/loss": 0.01, "eval/accuracy": 0.9}])
    runs_tab.run_figures("watched-by-30", "train/loss", 0.6)
    assert len(builds) == 2  # changed within FIGURE_MIN_AGE_S of the last build: still shown as built
    monkeypatch.setattr(state, "FIGURE_MIN_AGE_S", 0.0)
    again = runs_tab.run_view("watched-by-30", "train/loss", 0.6, False)
    assert len(builds) == 4 and '"y":[' in again["metric"].replace(" ", "") and "watched-by-30" in again["summary"]
    assert "watched-by-30" in [row[0] for row in again["table"]]
    assert json.loads(again["accuracy"])["data"][0]["y"][-1] == 0.9  # the new evaluation is drawn


def test_the_compare_chart_redraws_once_more_after_a_run_ends(runs_root):
    """The chart follows the runs' files, not their state: the last evaluation lands after the last step."""
    from opd_lab_app.compare_tab import refresh_signature
    from opd_lab.files import append_jsonl
    from opd_lab.run_folder import METRICS_FILE, update_status

    run_dir = make_run(runs_root, "ending-run", steps=10)
    update_status(run_dir, state="running")
    drawn = refresh_signature(["ending-run"])
    assert refresh_signature(["ending-run"]) == drawn  # nothing new: no redraw
    update_status(run_dir, state="finished")
    after_end = refresh_signature(["ending-run"])
    assert after_end != drawn
    append_jsonl(run_dir / METRICS_FILE, [{"step": 10, "eval/accuracy": 0.9}])  # the final evaluation, written last
    assert refresh_signature(["ending-run"]) != after_end


def test_compare_aims_at_the_teacher_of_the_runs_own_lab(runs_root, monkeypatch):
    """Runs on `lab:baseline-quick` are measured against that lab's teacher, not the task's default lab."""
    from opd_lab_app import compare_tab
    from opd_lab.lab import TINY_RECIPE, LabRecipe, build_lab, lab_summary, lab_summary_of

    build_lab(LabRecipe(name="baseline-quick", **TINY_RECIPE), progress_print=lambda *_: None)
    run_dir = make_run(runs_root, "on-a-dashed-lab", steps=10)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "teacher": "lab:baseline-quick",
                                                     "student": "lab:baseline-quick"}))
    asked = []
    monkeypatch.setattr(compare_tab, "lab_summary_of", lambda spec, task: asked.append(spec) or lab_summary_of(spec, task))
    base, teacher, note = compare_tab._lab_accuracies([run_dir])
    assert asked == ["lab:baseline-quick"]
    summary = lab_summary("baseline-quick")
    assert (base, teacher, note) == (summary["student"]["accuracy"], summary["teacher"]["accuracy"], "")
