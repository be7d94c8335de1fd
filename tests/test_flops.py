"""FLOPs accounting: parameter counts, the 2N / 6N rules and the cumulative counter."""

from __future__ import annotations

import json

import pytest
import torch

from opd_lab.flops import FlopsCounter, count_parameters, forward_flops, training_flops


def test_count_parameters_all_and_trainable():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2, bias=False))
    assert count_parameters(model) == 3 * 4 + 4 + 4 * 2
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 8
    assert count_parameters(model) == 24


def test_tied_weights_are_counted_once():
    embedding = torch.nn.Embedding(10, 3)
    head = torch.nn.Linear(3, 10, bias=False)
    head.weight = embedding.weight
    assert count_parameters(torch.nn.ModuleList([embedding, head])) == 30


def test_forward_and_training_flops():
    assert forward_flops(1_000, 7) == 14_000
    assert training_flops(1_000, 7) == 42_000
    with pytest.raises(ValueError):
        forward_flops(-1, 3)


def test_counter_accumulates_by_purpose():
    counter = FlopsCounter()
    assert counter.total == 0
    counter.add_sampling(100, 10)   # 2 * 100 * 10
    counter.add_sampling(100, 5)    # + 1,000
    counter.add_teacher(1_000, 10)  # 2 * 1000 * 10
    counter.add_training(100, 10)   # 6 * 100 * 10
    assert (counter.sampling, counter.teacher, counter.training) == (3_000, 20_000, 6_000)
    assert counter.total == 29_000
    assert counter.as_metrics() == {"perf/flops_sampling": 3_000, "perf/flops_teacher": 20_000,
                                    "perf/flops_training": 6_000, "perf/flops": 29_000}


def test_counter_round_trips_through_metrics_and_json():
    counter = FlopsCounter()
    counter.add_sampling(123_456_789, 98_765)
    counter.add_teacher(7_000_000_000, 4_321)
    counter.add_training(123_456_789, 98_765)
    restored = FlopsCounter.from_metrics(json.loads(json.dumps(counter.as_metrics())))
    assert restored == counter
    restored.add_training(1, 1)
    assert restored.total == counter.total + 6
