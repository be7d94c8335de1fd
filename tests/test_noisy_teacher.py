"""The noisy teacher: p = (1 - q) p_teacher + q / V, in every use of the teacher."""

import math

import pytest
import torch

from opd_lab.config import ConfigError, RunConfig
from opd_lab.generation import completion_logits, generate
from opd_lab.noisy_teacher import NoisyTeacherModel, noisy_logprobs
from opd_lab.teacher_scoring import InProcessTeacher


@pytest.mark.parametrize("noise", [0.0, 0.01, 0.05, 0.5])
def test_noisy_logprobs_equal_the_formula(noise):
    logits = torch.randn(3, 5, 11, dtype=torch.float64) * 4
    expected = torch.log((1 - noise) * torch.softmax(logits, dim=-1) + noise / 11)
    torch.testing.assert_close(noisy_logprobs(logits, noise).double(), expected, rtol=1e-5, atol=1e-6)


def test_noisy_logprobs_stay_exact_where_the_teacher_underflows():
    logits = torch.tensor([[[0.0, -1e4, -1e4, -1e4]]])  # p = 1 on token 0, exactly 0 elsewhere in float32
    noisy = noisy_logprobs(logits, 0.04)
    assert torch.isfinite(noisy).all()
    assert float(noisy[0, 0, 1]) == pytest.approx(math.log(0.01), rel=1e-6)
    assert float(noisy[0, 0, 0]) == pytest.approx(math.log(0.96 + 0.01), rel=1e-6)


def test_the_noisy_teacher_scores_and_samples_from_the_mixture(lab_pair):
    teacher, _, tokenizer = lab_pair
    noisy = NoisyTeacherModel(teacher, 0.05)
    rollouts = generate(teacher, tokenizer, ["123+456=", "905+77="], 12, generator=torch.Generator().manual_seed(0))
    clean_logits = completion_logits(teacher, rollouts)
    scores = InProcessTeacher(noisy).score(rollouts)
    tokens = rollouts.sequences_BS[:, rollouts.prompt_length:]
    expected = torch.log(0.95 * torch.softmax(clean_logits, -1) + 0.05 / clean_logits.shape[-1])
    expected = expected.gather(-1, tokens[..., None]).squeeze(-1) * rollouts.completion_mask_BL
    torch.testing.assert_close(scores.logprobs_BL, expected, rtol=1e-5, atol=1e-5)
    # Sampling goes through the same wrapper: its recorded log-probs are the mixture's.
    sampled = generate(noisy, tokenizer, ["123+456="], 12, generator=torch.Generator().manual_seed(1))
    rescored = InProcessTeacher(noisy).score(sampled).logprobs_BL
    torch.testing.assert_close(sampled.completion_sampling_logprobs_BL, rescored, rtol=1e-4, atol=1e-4)
    # The greedy answer never changes: the mixture keeps the most likely token.
    clean_greedy = generate(teacher, tokenizer, ["123+456="], 12, greedy=True).completions
    assert generate(noisy, tokenizer, ["123+456="], 12, greedy=True).completions == clean_greedy


def test_teacher_noise_is_validated():
    assert RunConfig(teacher_noise=0.03).teacher_noise == 0.03
    with pytest.raises(ConfigError, match="teacher_noise"):
        RunConfig(teacher_noise=1.0)
    with pytest.raises(ConfigError, match="teacher_noise"):
        RunConfig(teacher_noise=0.01, teacher_server="http://localhost:8000", teacher="x")


def test_noise_statistics_count_the_mass_only_the_noise_could_teach():
    from opd_lab.noisy_teacher import noise_statistics

    teacher = torch.log(torch.tensor([[[0.998, 0.0015, 0.0005], [0.5, 0.4995, 0.0005]]]))
    student = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]]]))
    both = noise_statistics(student, teacher, torch.ones(1, 2))
    assert both["noise_mass"] == pytest.approx((0.1 + 0.4) / 2)  # token 2 is under 1e-3 for the clean teacher
    entropy = [-sum(p * math.log(p) for p in row) for row in ([0.7, 0.2, 0.1], [0.3, 0.3, 0.4])]
    assert both["entropy"] == pytest.approx(sum(entropy) / 2, rel=1e-5)
    first = noise_statistics(student, teacher, torch.tensor([[1.0, 0.0]]))
    assert first["noise_mass"] == pytest.approx(0.1)
