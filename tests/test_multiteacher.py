"""Several teachers, one student: task mixing, routing each prompt to its task's teacher,
per-teacher metrics, in process and through one fake vLLM server per teacher."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

from fake_vllm import serving
from opd_lab import losses, teacher_routing
from opd_lab.config import ConfigError, RunConfig
from opd_lab.generation import generate
from opd_lab.lab import TINY_RECIPE, LabRecipe, build_lab
from opd_lab.models import ModelLoadError, PairMismatchError, load_model
from opd_lab.run_folder import load_metrics, load_samples, load_status
from opd_lab.task_mix import TaskMixSource, batch_shares, interleave, per_task_means
from opd_lab.tasks import get_task
from opd_lab.teacher_routing import TeacherRouter, select_rows
from opd_lab.teacher_scoring import InProcessTeacher, Teacher
from opd_lab.tokenizer import build_char_tokenizer
from opd_lab.train import train
from opd_lab.trainer import Trainer

TWO_TASKS = dict(task_weights="addition=0.5,sorting=0.5", teachers="addition=lab,sorting=lab:sorting")
RUN = dict(method="opd", steps=2, batch_size=6, eval_count=8, eval_every=2, sample_every=1, samples_to_log=6,
           max_new_tokens=12, learning_rate=1e-3, checkpoint_every=2, seed=0)


@pytest.fixture(scope="module")
def two_labs(lab_home, tmp_path_factory):
    """A data dir of its own (the session's stays without a sorting lab) holding a tiny
    addition lab and a tiny sorting lab (its teacher is `lab:sorting`)."""
    yield from private_home_with_labs(tmp_path_factory.mktemp("two-labs-home"), ("addition", "sorting"))


def private_home_with_labs(home, tasks):
    previous = os.environ["OPD_LAB_HOME"]
    os.environ["OPD_LAB_HOME"] = str(home)
    try:
        for task in tasks:
            build_lab(LabRecipe(task=task, **TINY_RECIPE), progress_print=lambda *_: None)
        yield home
    finally:
        os.environ["OPD_LAB_HOME"] = previous


# --- mixing tasks -------------------------------------------------------------------------


def test_batch_shares_follow_the_weights_and_add_up():
    assert batch_shares(6, {"a": 0.5, "b": 0.5}) == {"a": 3, "b": 3}
    assert batch_shares(5, {"a": 1, "b": 1}) == {"a": 3, "b": 2}
    assert batch_shares(10, {"a": 3, "b": 1, "c": 1}) == {"a": 6, "b": 2, "c": 2}
    assert sum(batch_shares(7, {"a": 0.2, "b": 0.3, "c": 0.5}).values()) == 7
    assert batch_shares(3, {"a": 1, "b": 0}) == {"a": 3, "b": 0}
    assert interleave({"a": [1, 2, 3, 4], "b": [5, 6]}) == [1, 5, 2, 3, 6, 4]


def test_a_mixed_source_tags_each_problem_with_its_task_and_keeps_its_state():
    tasks = {"addition": get_task("addition"), "sorting": get_task("sorting")}
    source = TaskMixSource(tasks, {"addition": 3, "sorting": 1}, pool_size=0, seed=0)
    batch = source.next_batch(8)
    assert [p.task for p in batch].count("addition") == 6
    assert all(p.prompt.startswith("sort") == (p.task == "sorting") for p in batch)
    state = source.state()
    following = source.next_batch(8)
    again = TaskMixSource(tasks, {"addition": 3, "sorting": 1}, pool_size=0, seed=0)
    again.load_state(state)
    assert [p.prompt for p in again.next_batch(8)] == [p.prompt for p in following]
    pooled = TaskMixSource(tasks, {"addition": 1, "sorting": 1}, pool_size=4, seed=0)
    assert sorted(p.task for p in pooled.pool) == ["addition", "addition", "sorting", "sorting"]


def test_per_task_means_weigh_rows_and_tokens():
    metrics, weights = per_task_means(["a", "b", "a"], {"train/accuracy": torch.tensor([1.0, 1.0, 0.0]),
                                                        "train/reverse_kl_sum": torch.tensor([3.0, 2.0, 1.0])},
                                      row_tokens=torch.tensor([3.0, 4.0, 1.0]))
    assert metrics == {"train/accuracy/a": 0.5, "train/reverse_kl/a": 1.0, "train/accuracy/b": 1.0,
                       "train/reverse_kl/b": 0.5}
    assert weights["train/accuracy/a"] == 2 and weights["train/reverse_kl/a"] == 4


# --- the config -------------------------------------------------------------------------


def test_teachers_and_task_weights_read_from_yaml_mappings(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: opd\nteachers: {addition: lab:addition, sorting: lab:sorting}\n"
                    "task_weights: {sorting: 0.25, addition: 0.75}\n")
    config = RunConfig.from_file(path)
    assert config.task == "sorting" and config.run_tasks() == ["sorting", "addition"]
    assert config.teacher_map() == {"sorting": "lab:sorting", "addition": "lab:addition"}
    assert config.task_weight_map() == {"sorting": 0.25, "addition": 0.75}
    assert RunConfig.from_dict(config.to_dict()) == config
    # A task without its own teacher gets `teacher`; a single-task run is unchanged.
    assert RunConfig(task_weights="addition=1,sorting=1", teachers="sorting=lab:sorting",
                     teacher="lab:x").teacher_map() == {"addition": "lab:x", "sorting": "lab:sorting"}
    assert RunConfig().run_tasks() == ["addition"] and RunConfig().teacher_map() == {"addition": "lab"}


@pytest.mark.parametrize("changes, field", [
    ({"teachers": "sorting=lab:sorting"}, "teachers"),  # not a task of the run
    ({"task_weights": "addition=0,sorting=0"}, "task_weights"),
    ({"task_weights": "addition=1,sorting=-1"}, "task_weights"),
    ({"task_weights": "addition=1,nonsense=1"}, "task_weights"),
    ({"task_weights": "sorting=1", "task": "addition"}, "task"),
    ({"teachers": "addition"}, "teachers"),
    ({"task_weights": "addition=1,sorting=1", "teachers": "sorting=lab:sorting", "teacher_servers": "addition=http://h:1"},
     "teacher_servers"),
])
def test_bad_multi_teacher_settings_are_refused_naming_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        RunConfig(**changes)


# --- routing ------------------------------------------------------------------------------


def _mixed_rollouts(tokenizer, student):
    prompts = ["347+285=", "sort:dcba=", "12+9=", "sort:zyx="]
    return generate(student, tokenizer, prompts, 10, generator=torch.Generator().manual_seed(0))


def test_the_router_scores_each_row_with_its_own_teacher(two_labs):
    addition, tokenizer = load_model("lab", "teacher", "addition")
    sorting, _ = load_model("lab:sorting", "teacher")
    student, _ = load_model("lab", "student", "addition")
    rollouts = _mixed_rollouts(tokenizer, student)
    tasks = ["addition", "sorting", "addition", "sorting"]
    router = TeacherRouter({"addition": Teacher("lab", InProcessTeacher(addition), 1, addition),
                            "sorting": Teacher("lab:sorting", InProcessTeacher(sorting), 1, sorting)})
    scores = router.score(rollouts, tasks, top_k=2)
    mask = rollouts.completion_mask_BL.bool()
    for model, rows, other in ((addition, [0, 2], sorting), (sorting, [1, 3], addition)):
        own = InProcessTeacher(model).score(select_rows(rollouts, rows), top_k=2)
        wrong = InProcessTeacher(other).score(select_rows(rollouts, rows))
        torch.testing.assert_close(scores.logprobs_BL[rows][mask[rows]], own.logprobs_BL[mask[rows]], atol=1e-5,
                                   rtol=1e-5)
        assert not torch.allclose(scores.logprobs_BL[rows][mask[rows]], wrong.logprobs_BL[mask[rows]], atol=1e-3)
        assert torch.equal(scores.top_ids_BLK[rows][mask[rows]], own.top_ids_BLK[mask[rows]])
        torch.testing.assert_close(scores.logits_BLV[rows], own.logits_BLV)


def test_a_teacher_without_the_students_tokenizer_is_refused_naming_it(two_labs, tmp_path, monkeypatch):
    _, tokenizer = load_model("lab:sorting", "teacher")
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(tmp_path / "odd")
    model, _ = load_model("lab:sorting", "teacher")
    model.save_pretrained(tmp_path / "odd")
    config = RunConfig(**RUN | TWO_TASKS | {"teachers": f"sorting={tmp_path / 'odd'}"})
    with pytest.raises(PairMismatchError, match=f"^teacher {tmp_path / 'odd'} \\(task sorting\\): .*tokenizers differ"):
        Trainer(config, tmp_path / "run")


# --- a run's advantages come from each prompt's own teacher -----------------------------------

# Two fake teachers with known log-probs: fixed logits whatever the context.
VOCAB = len(build_char_tokenizer())
BIASES = {"addition": torch.zeros(VOCAB), "sorting": torch.linspace(-2.0, 2.0, VOCAB)}


class FixedLogitsTeacher(torch.nn.Module):
    """A 'teacher' whose next-token logits are `bias` at every position: log p(t) = log_softmax(bias)[t]."""

    def __init__(self, bias):
        super().__init__()
        self.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=0):
        length = logits_to_keep or input_ids.shape[1]
        return SimpleNamespace(logits=self.bias.expand(input_ids.shape[0], length, -1))


def _advantages_of_one_step(config, run_dir, monkeypatch):
    """One OPD step of `config`: its on-policy part, what `per_token_advantages` saw and
    returned, and the step's result."""
    seen, captured = {}, {}
    original = losses.per_token_advantages

    def spy(method, mask_BT, rewards_N, **kwargs):
        advantages, metrics = original(method, mask_BT, rewards_N, **kwargs)
        seen.update(kwargs, mask=mask_BT, advantages=advantages)
        return advantages, metrics

    monkeypatch.setattr(losses, "per_token_advantages", spy)
    trainer = Trainer(config, run_dir)
    trainer.begin(None)
    original_part = trainer._on_policy_part

    def part(*args, **kwargs):
        captured["part"] = original_part(*args, **kwargs)
        return captured["part"]

    monkeypatch.setattr(trainer, "_on_policy_part", part)
    result = trainer.step()
    return captured["part"], seen, result


@pytest.mark.parametrize("where", ["in_process", "teacher_servers"])
def test_each_prompts_advantage_comes_from_its_own_teacher(two_labs, tmp_path, monkeypatch, where):
    """With a fake teacher per task whose log-probs are known, every row's advantage is its
    own teacher's log-prob minus the student's, in process and through one server per teacher."""
    config = RunConfig(**RUN | TWO_TASKS | {"steps": 1})
    expected = {task: torch.log_softmax(bias, -1) for task, bias in BIASES.items()}
    if where == "in_process":
        monkeypatch.setattr(teacher_routing, "load_teacher", lambda spec, task, *args, **kwargs: Teacher(
            spec, InProcessTeacher(FixedLogitsTeacher(BIASES[task])), 1000))
        part, seen, result = _advantages_of_one_step(config, tmp_path / "run", monkeypatch)
    else:
        _, tokenizer = load_model("lab", "teacher", "addition")
        with serving(FixedLogitsTeacher(BIASES["addition"]), tokenizer) as add_url, \
                serving(FixedLogitsTeacher(BIASES["sorting"]), tokenizer) as sort_url:
            config = config.with_overrides(teacher_servers=f"addition={add_url},sorting={sort_url}")
            part, seen, result = _advantages_of_one_step(config, tmp_path / "run", monkeypatch)
    tasks, rollouts = part.tasks, part.rollouts
    assert tasks.count("addition") == tasks.count("sorting") == 3
    assert all(prompt.startswith("sort") == (task == "sorting") for prompt, task in zip(rollouts.prompts, tasks))
    mask = seen["mask"].bool()
    completion = rollouts.sequences_BS[:, rollouts.prompt_length :]
    for row, task in enumerate(tasks):
        live = mask[row]
        want = expected[task][completion[row][live]]
        torch.testing.assert_close(seen["teacher_logps_BT"][row][live].float(), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(seen["advantages"][row][live].float(),
                                   want - seen["sampling_logps_BT"][row][live].float(), atol=1e-5, rtol=1e-5)
    if where == "in_process":  # each teacher is charged for its own rows' tokens only
        tokens = rollouts.attention_mask_BS.sum(dim=1)
        for task in ("addition", "sorting"):
            rows = torch.tensor([t == task for t in tasks])
            assert result.metrics[f"perf/flops_teacher/{task}"] == 2 * 1000 * int(tokens[rows].sum())


# --- a 2-teacher run ---------------------------------------------------------------------------


def test_a_two_teacher_run_trains_on_a_mixed_batch_and_logs_per_teacher_metrics(two_labs):
    run_dir = train(RunConfig(name="two-experts", **RUN | TWO_TASKS), progress=False)
    assert load_status(run_dir)["state"] == "finished"
    rows = load_metrics(run_dir)
    for task in ("addition", "sorting"):
        for key in ("train/accuracy", "train/reverse_kl", "train/reward", "perf/flops_teacher"):
            assert f"{key}/{task}" in rows[1], key
        assert f"eval/accuracy/{task}" in rows[0] and f"eval/accuracy/{task}" in rows[-1]
    step = rows[1]
    # The run's KL is the token-weighted mean of the two teachers' KLs, and its FLOPs their sum.
    kls = [step["train/reverse_kl/addition"], step["train/reverse_kl/sorting"]]
    assert min(kls) - 1e-6 <= step["train/reverse_kl"] <= max(kls) + 1e-6 and kls[0] != kls[1]
    assert step["perf/flops_teacher"] == pytest.approx(step["perf/flops_teacher/addition"]
                                                       + step["perf/flops_teacher/sorting"])
    assert rows[-1]["eval/accuracy"] == pytest.approx(
        (rows[-1]["eval/accuracy/addition"] + rows[-1]["eval/accuracy/sorting"]) / 2)
    samples = load_samples(run_dir)
    judged = {(s["task"], s["teacher"]) for s in samples}
    assert judged == {("addition", "lab:addition"), ("sorting", "lab:sorting")}
    assert all(s["prompt"].startswith("sort") == (s["task"] == "sorting") for s in samples)


def test_sft_on_a_mixture_writes_each_tasks_samples_with_its_teacher(two_labs):
    run_dir = train(RunConfig(name="two-experts-sft", **RUN | TWO_TASKS | {"method": "sft", "steps": 1,
                                                                          "sample_every": 1}), progress=False)
    rows = load_metrics(run_dir)
    assert rows[1]["perf/flops_sampling"] == pytest.approx(rows[1]["perf/flops_teacher/addition"]
                                                           + rows[1]["perf/flops_teacher/sorting"])
    assert {s["teacher"] for s in load_samples(run_dir)} == {"lab:addition", "lab:sorting"}


# --- the command line ------------------------------------------------------------------------


def test_repeated_teacher_and_task_flags_fill_the_per_task_fields():
    from opd_lab.cli import build_parser, config_from_args

    parser = build_parser()
    config = config_from_args(parser.parse_args(
        ["train", "--task", "sorting=1", "--task", "addition=3", "--teacher", "sorting=lab:sorting",
         "--teacher", "lab:addition"]))
    assert (config.task, config.task_weights, config.teacher) == ("sorting", "sorting=1,addition=3", "lab:addition")
    assert config.teacher_map() == {"sorting": "lab:sorting", "addition": "lab:addition"}
    single = config_from_args(parser.parse_args(["train", "--teacher", "lab:x", "--task", "sorting"]))
    assert (single.teacher, single.task, single.teachers, single.task_weights) == ("lab:x", "sorting", "", "")
    with pytest.raises(ConfigError, match="^teacher: given 2 times"):
        config_from_args(parser.parse_args(["train", "--teacher", "a", "--teacher", "b"]))


# --- the app -------------------------------------------------------------------------------------


def _form(**changes) -> list:
    from opd_lab_app.launch_tab import FORM_FIELDS

    return [changes.pop(spec.name, spec.default) for spec in FORM_FIELDS]


def test_the_launch_form_starts_a_two_teacher_run_and_the_views_show_each_teacher(two_labs):
    pytest.importorskip("gradio")
    from opd_lab_app.compare_tab import comparison
    from opd_lab_app.inspect_tab import sample_choices, token_view
    from opd_lab_app.launch_tab import check_form, launch_run
    from opd_lab_app.runs_tab import metric_choices, run_figures, run_summary
    from opd_lab.paths import runs_dir
    from waiting import wait_for

    form = _form(name="form-two-experts", task_weights="addition=0.5,sorting=0.5",
                 teachers="addition=lab:addition,sorting=lab:sorting", steps=2, batch_size=4, eval_every=2,
                 eval_count=8, sample_every=1, samples_to_log=4, max_new_tokens=12, checkpoint_every=2)
    assert check_form(form).startswith("Ready")
    assert "not built" in check_form(_form(task_weights="addition=1,sorting=1", teachers="sorting=lab:nowhere"))
    message, run_id = launch_run(form)
    assert run_id.startswith("form-two-experts"), message
    run_dir = runs_dir() / run_id
    assert wait_for(lambda: load_status(run_dir).get("state") in ("finished", "failed"), timeout=180)
    assert load_status(run_dir)["state"] == "finished"
    # Runs: the tasks with their teachers, one accuracy curve per task, per-teacher metrics to pick.
    assert "addition (teacher lab:addition) + sorting (teacher lab:sorting)" in run_summary(run_id)
    accuracy, _, _ = run_figures(run_id, "train/reverse_kl/sorting")  # served as plotly JSON, shared by viewers
    assert {trace["name"] for trace in json.loads(accuracy.plot)["data"]} >= {"addition", "sorting"}
    assert {"train/reverse_kl/addition", "eval/accuracy/sorting", "perf/flops_teacher/sorting"} <= set(
        metric_choices(run_id))
    # Compare: a per-teacher metric against FLOPs.
    figure = comparison([run_id], "flops", "eval/accuracy/sorting")[0]
    assert len(figure.data) == 1 and len(figure.data[0].y) == 2
    # Inspect: which teacher judged each logged sample.
    labels = [label for label, _ in sample_choices(run_id, 1)]
    views = [token_view(run_id, 1, index) for index in range(len(labels))]
    assert any("judged by teacher lab:sorting (sorting)" in view for view in views)
    assert any("judged by teacher lab:addition (addition)" in view for view in views)


def test_preflight_checks_every_teacher_and_names_the_mismatched_one(two_labs, tmp_path):
    from opd_lab.preflight import check_run_inputs

    check_run_inputs(RunConfig(**RUN | TWO_TASKS))  # both teachers share the student's tokenizer
    _, tokenizer = load_model("lab:sorting", "teacher")
    tokenizer.add_tokens(["<extra>"])
    model, _ = load_model("lab:sorting", "teacher")
    for save in (model, tokenizer):
        save.save_pretrained(tmp_path / "odd")
    with pytest.raises(PairMismatchError, match=r"^teacher .*odd \(task sorting\): .*tokenizers differ"):
        check_run_inputs(RunConfig(**RUN | TWO_TASKS | {"teachers": f"addition=lab,sorting={tmp_path / 'odd'}"}))
    with pytest.raises(ModelLoadError, match="the built-in lab 'nowhere' is not built"):
        check_run_inputs(RunConfig(**RUN | TWO_TASKS | {"teachers": "sorting=lab:nowhere"}))


def test_a_two_teacher_trainer_resumes_its_prompts_and_per_teacher_flops(two_labs, tmp_path):
    config = RunConfig(**RUN | TWO_TASKS | {"steps": 3})
    first = Trainer(config, tmp_path / "a")
    first.begin(None)
    first.step()
    state = first.state()
    expected = first.step().metrics
    resumed = Trainer(config, tmp_path / "b")
    resumed.begin(state)
    again = resumed.step().metrics
    for task in ("addition", "sorting"):
        assert again[f"perf/flops_teacher/{task}"] == expected[f"perf/flops_teacher/{task}"] > 0
    # (The checkpoint's weights are not in the trainer state; the prompts and counters are.)
    assert again["progress/samples"] == expected["progress/samples"]
    assert resumed.prompts.state() == first.prompts.state()
