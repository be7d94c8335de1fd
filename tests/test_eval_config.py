"""Evaluation, the run config, and the CLI generated from it."""

import json

import pytest

from opd_lab.cli import build_parser, config_from_args
from opd_lab.config import ConfigError, RunConfig, config_fields
from opd_lab.eval import evaluate
from opd_lab.tasks import get_task


def test_evaluate_reports_greedy_sampled_and_pass_at_k(lab_pair):
    teacher, _, tokenizer = lab_pair
    result = evaluate(teacher, tokenizer, get_task("addition"), count=12, samples_per_problem=3, seed=1)
    assert result.count == len(result.records) == 12
    assert 0 <= result.accuracy <= 1 and result.mean_completion_length > 0
    assert result.k == 3 and result.sampled_accuracy <= result.pass_at_k
    again = evaluate(teacher, tokenizer, get_task("addition"), count=12, samples_per_problem=3, seed=1)
    assert again.sampled_accuracy == result.sampled_accuracy  # seeded
    metrics = result.as_metrics()
    assert set(metrics) == {"eval/accuracy", "eval/completion_len", "eval/sampled_accuracy", "eval/pass@3"}
    record = result.records[0]
    assert {"prompt", "answer", "completion", "correct", "reward", "length"} <= set(record)


def test_eval_max_new_tokens_cuts_every_answer_and_the_task_limit_stays(lab_pair):
    """`RunConfig.eval_max_new_tokens` (smoke runs, slow CPUs) cuts greedy and sampled answers
    alike; the task's own limit is untouched for the next evaluation."""
    teacher, _, tokenizer = lab_pair
    task = get_task("addition")
    full = evaluate(teacher, tokenizer, task, count=8, samples_per_problem=2, seed=1)
    cut = evaluate(teacher, tokenizer, task, count=8, samples_per_problem=2, seed=1, max_new_tokens=4)
    assert max(r["length"] for r in full.records) > 4 >= max(r["length"] for r in cut.records)
    assert cut.accuracy == 0.0  # a 3-digit sum's worked answer needs far more than 4 tokens
    assert task.max_new_tokens == get_task("addition").max_new_tokens


def test_every_config_field_has_help_and_a_cli_flag():
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for spec in config_fields():
        assert spec.metadata["help"], spec.name
        assert "--" + spec.name.replace("_", "-") in help_text


def test_cli_flags_override_a_config_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"method": "rl", "samples_per_prompt": 4, "steps": 10}))
    args = build_parser().parse_args(["train", str(path), "--steps", "20", "--learning-rate", "0.0005"])
    config = config_from_args(args)
    assert (config.method, config.samples_per_prompt, config.steps, config.learning_rate) == ("rl", 4, 20, 5e-4)


def test_config_is_frozen_and_round_trips(tmp_path):
    config = RunConfig(method="sft", steps=7)
    with pytest.raises(Exception):
        config.steps = 8  # frozen
    assert RunConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "run.yaml"
    path.write_text("method: opd\nestimator: full\ndivergence: jsd\njsd_beta: 0.3\n")
    assert RunConfig.from_file(path).jsd_beta == 0.3


@pytest.mark.parametrize("changes, field", [
    ({"on_policy_fraction": 1.5}, "on_policy_fraction"),
    ({"temperature": 0}, "temperature"),
    ({"task": "chess"}, "task"),
    ({"task": "/no/such/file.jsonl"}, "task"),
    ({"estimator": "sampled", "divergence": "jsd"}, "divergence"),
    ({"name": "../escape"}, "name"),
    ({"steps": True}, "steps"),
    ({"dtype": "float16"}, "dtype"),
    ({"eval_max_new_tokens": -1}, "eval_max_new_tokens"),
])
def test_bad_values_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        RunConfig(**changes)
