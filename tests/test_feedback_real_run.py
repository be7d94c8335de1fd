"""Per-token records and every figure, from a real (tiny) lab run folder."""

import pytest

from opd_lab import checkpoints, plots, plots_kl, report, run_folder, tokenview
from opd_lab.config import RunConfig
from opd_lab.feedback import score_completions
from opd_lab.tokenview import completion_summary
from opd_lab.models import load_model
from opd_lab.run_folder import load_metrics, load_samples, sample_steps
from opd_lab.train import run_training


@pytest.fixture(scope="module")
def real_run(lab_home):
    """A 3-step OPD run that logs every rollout of every step."""
    config = RunConfig(steps=3, batch_size=4, eval_every=1, eval_count=8, sample_every=1, samples_to_log=4,
                       checkpoint_every=1, max_new_tokens=12)
    run_dir = run_folder.create_run(config)
    assert run_training(run_dir, progress=False) == "finished"
    return run_dir, config


@pytest.fixture(scope="module")
def sft_run_at_07(lab_home):
    """A 2-step SFT run on teacher samples drawn at temperature 0.7, logging every rollout."""
    config = RunConfig(method="sft", temperature=0.7, steps=2, batch_size=4, eval_every=2, eval_count=8,
                       sample_every=1, samples_to_log=4, checkpoint_every=2, max_new_tokens=12)
    run_dir = run_folder.create_run(config)
    assert run_training(run_dir, progress=False) == "finished"
    return run_dir, config


@pytest.mark.parametrize("run", ["real_run", "sft_run_at_07"])
def test_records_summed_over_positions_match_the_logged_reverse_kl(run, request):
    """samples.jsonl and train/reverse_kl agree, for OPD at temperature 1 and SFT at 0.7."""
    run_dir, _ = request.getfixturevalue(run)
    metrics = {row["step"]: row for row in load_metrics(run_dir)}
    for step in sample_steps(run_dir):
        samples = load_samples(run_dir, step)
        assert len(samples) == 4  # the whole batch
        total = sum(completion_summary(s["tokens"])["reverse_kl_sum"] for s in samples)
        count = sum(completion_summary(s["tokens"])["tokens"] for s in samples)
        assert total / count == pytest.approx(metrics[step]["train/reverse_kl"], rel=1e-4, abs=1e-6)


def test_rescoring_a_logged_sample_reproduces_its_records(real_run, lab_home):
    """The logged records at step k come from the student of step k-1: re-scoring agrees."""
    run_dir, config = real_run
    student, tokenizer = checkpoints.load_student(run_dir / "checkpoints" / "step_000001", config)
    teacher, _ = load_model("lab", "teacher", "addition")
    sample = load_samples(run_dir, 2)[0]
    records = score_completions(teacher, student, tokenizer, [sample["prompt"]], [sample["completion"]])[0]
    logged = sample["tokens"]
    # A completion cut at max_new_tokens has no <eos>; re-scoring appends one.
    assert [r["text"] for r in records[: len(logged)]] == [r["text"] for r in logged]
    for fresh, old in zip(records, logged):
        assert fresh["student_logprob"] == pytest.approx(old["student_logprob"], abs=1e-4)
        assert fresh["teacher_logprob"] == pytest.approx(old["teacher_logprob"], abs=1e-4)
        assert fresh["reverse_kl"] == pytest.approx(old["reverse_kl"], abs=1e-4)


def test_every_figure_renders_from_a_real_run(real_run):
    run_dir, _ = real_run
    for x in ("step", "samples", "tokens", "flops", "wall"):
        figure = plots.training_curves([run_dir], metric="eval/accuracy", x=x)
        assert len(figure.data) == 1 and len(figure.data[0].x) == 4  # steps 0..3
    assert "train/reverse_kl" in plots.available_metrics([run_dir])
    assert len(plots.method_comparison([run_dir], x="flops", teacher_accuracy=0.9).data) >= 1
    assert report.cost_to_reach(load_metrics(run_dir), 0.0)["steps"] == 0
    samples = load_samples(run_dir, 2)
    heatmap = plots_kl.kl_heatmap(samples)
    assert len(heatmap.data[0].z) == len(samples)
    assert len(plots_kl.kl_histogram(samples).data) == 1
    assert len(plots_kl.kl_over_training(run_dir).data) >= 1
    html = tokenview.render_tokens(samples[0]["tokens"], prompt=samples[0]["prompt"])
    assert "<script" not in html and samples[0]["prompt"] in html
