"""Pruning by layers: which layers go, and a pruned model that still decodes correctly."""

from __future__ import annotations

import copy

import pytest
import torch

from opd_lab.prune import block_distances, choose_block, drop_layers, layers_to_keep, save_pruned


def test_layers_to_keep_removes_exactly_the_block():
    assert layers_to_keep(10, drop=3, start=5) == [0, 1, 2, 3, 4, 8, 9]
    assert layers_to_keep(4, drop=1, start=0) == [1, 2, 3]
    for bad in ((10, 3, 8), (10, 0, 2), (3, 3, 0), (10, 2, -1)):
        with pytest.raises(ValueError, match="cannot drop"):
            layers_to_keep(*bad)


def test_block_distances_find_the_block_that_changes_least():
    torch.manual_seed(0)
    states = [torch.randn(2, 3, 8) for _ in range(7)]  # embeddings + 6 layers
    states[4] = states[2] + 0.01 * torch.randn(2, 3, 8)  # layers 2 and 3 barely change the stream
    mask = torch.ones(2, 3)
    distances = block_distances(states, mask, drop=2)
    assert set(distances) == {1, 2, 3}  # the first and the last layer are protected
    assert min(distances, key=distances.get) == 2
    assert distances[2] < 0.05 < distances[1]
    with pytest.raises(ValueError):
        block_distances(states, mask, drop=5)


def test_padding_is_left_out_of_the_distance():
    states = [torch.ones(1, 2, 4) for _ in range(4)]
    states[3] = torch.tensor([[[-1.0] * 4, [1.0] * 4]])  # the first position is padding
    mask = torch.tensor([[0, 1]])
    assert block_distances(states, mask, drop=1, protect=1)[1] == pytest.approx(0.0, abs=1e-3)


def test_pruned_model_decodes_with_its_cache_and_reloads(lab_pair, tmp_path):
    from opd_lab.generation import forward_logits, generate
    from opd_lab.models import LabModelSize, build_lab_model, load_model

    _, _, tokenizer = lab_pair
    teacher = build_lab_model(LabModelSize(hidden_size=32, layers=5, heads=2, intermediate_size=64), tokenizer,
                              seed=0).eval()
    layers = teacher.config.num_hidden_layers
    start, _ = choose_block(teacher, tokenizer, ["347+285=", "12+9="], drop=1)
    assert 1 <= start <= layers - 2
    pruned = drop_layers(copy.deepcopy(teacher), layers_to_keep(layers, 1, start))
    assert pruned.config.num_hidden_layers == layers - 1
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == list(range(layers - 1))
    # Greedy decoding with the KV cache gives the tokens a cache-free forward pass picks.
    rollouts = generate(pruned, tokenizer, ["347+285="], 6, greedy=True)
    sequence = rollouts.sequences_BS[:, : rollouts.prompt_length + 5]
    logits = forward_logits(pruned, sequence, torch.ones_like(sequence))
    expected = logits[0, rollouts.prompt_length - 1 :].argmax(-1)[:5]
    assert expected.tolist() == sequence[0, rollouts.prompt_length :].tolist()
    folder = save_pruned(pruned, tokenizer, tmp_path / "pruned")
    reloaded, _ = load_model(str(folder))
    assert reloaded.config.num_hidden_layers == layers - 1
    assert torch.allclose(forward_logits(reloaded.eval(), sequence, torch.ones_like(sequence)), logits, atol=1e-5)
    assert not list(tmp_path.glob(".partial-*"))


def test_drop_layers_refuses_models_without_a_layer_list():
    with pytest.raises(ValueError, match="no model.layers"):
        drop_layers(torch.nn.Linear(2, 2), [0])
