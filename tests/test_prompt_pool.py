"""Prompt pools, the fixed SFT teacher dataset, and stopping at a target accuracy."""

from __future__ import annotations

import pytest

from opd_lab.config import ConfigError, RunConfig
from opd_lab.prompt_source import PromptSource
from opd_lab.files import read_jsonl
from opd_lab.run_folder import SFT_DATASET_FILE, load_metrics, load_status
from opd_lab.tasks import get_task


def test_a_pool_is_visited_once_per_epoch_and_is_the_same_for_the_same_seed():
    task = get_task("addition")
    source = PromptSource(task, pool_size=6, seed=3)
    pool = sorted(p.prompt for p in source.pool)
    first, second = source.next_batch(6), source.next_batch(6)
    assert sorted(p.prompt for p in first) == pool and sorted(p.prompt for p in second) == pool
    assert [p.prompt for p in first] != [p.prompt for p in second]  # reshuffled each epoch
    assert sorted(p.prompt for p in PromptSource(task, 6, seed=3).pool) == pool
    assert sorted(p.prompt for p in PromptSource(task, 6, seed=4).pool) != pool


def test_prompt_source_state_round_trip():
    task = get_task("addition")
    source = PromptSource(task, pool_size=5, seed=0)
    source.next_batch(3)
    copy = PromptSource(task, pool_size=5, seed=0)
    copy.load_state(source.state())
    assert [p.prompt for p in copy.next_batch(7)] == [p.prompt for p in source.next_batch(7)]


def test_without_a_pool_prompts_are_fresh():
    source = PromptSource(get_task("addition"), pool_size=0, seed=0)
    assert len({p.prompt for p in source.next_batch(64)}) > 50


def test_teacher_dataset_needs_a_pool():
    with pytest.raises(ConfigError, match="prompt_pool"):
        RunConfig(method="sft", sft_source="teacher_dataset")
    RunConfig(method="sft", sft_source="teacher_dataset", prompt_pool=8)


def test_sft_on_a_fixed_teacher_dataset_charges_its_sampling_once(lab_home):
    from opd_lab.train import train

    run_dir = train(RunConfig(method="sft", sft_source="teacher_dataset", prompt_pool=6, batch_size=4, steps=4,
                              eval_every=2, eval_count=8, checkpoint_every=2), progress=False)
    dataset = read_jsonl(run_dir / SFT_DATASET_FILE)
    assert 1 <= len(dataset) <= 6 and all(row["completion"] is not None for row in dataset)
    rows = [r for r in load_metrics(run_dir) if r["step"] > 0]
    assert rows[0]["perf/flops_sampling"] > 0
    assert all(r["perf/flops_sampling"] == rows[0]["perf/flops_sampling"] for r in rows)  # charged once
    assert rows[-1]["perf/flops_teacher"] == 0.0


def test_a_run_stops_once_it_reaches_the_target_accuracy(lab_home, monkeypatch):
    from opd_lab import train as train_module

    monkeypatch.setattr(train_module.Trainer, "evaluate", lambda self: {"eval/accuracy": 0.5 if self.step_done < 4 else 0.9})
    run_dir = train_module.train(RunConfig(method="opd", steps=20, batch_size=2, eval_every=2, eval_count=4,
                                           stop_at_accuracy=0.8), progress=False)
    assert load_metrics(run_dir)[-1]["step"] == 4
    status = load_status(run_dir)
    assert status["state"] == "finished" and "reached the target" in status["message"]
