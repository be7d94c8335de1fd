"""The teacher-scoring interface: both implementations give the same answers, the vLLM
client reads vLLM's response format, and the top-k + tail KL against the exact KL."""

import json
from pathlib import Path

import pytest
import torch

from opd_lab import losses
from opd_lab.generation import Rollouts, forward_logits, generate
from opd_lab.teacher_scoring import InProcessTeacher, TeacherScores, VllmTeacher, scores_from_vllm
from fake_vllm import fake_vllm, serving
from opd_lab.config import ConfigError, RunConfig
from opd_lab.run_folder import load_config, load_metrics, load_samples, load_status, log_tail
from opd_lab.train import train

FIXTURE = Path(__file__).parent / "fixtures" / "vllm_prompt_logprobs.json"


@pytest.fixture()
def lab_rollouts(lab_pair):
    teacher, student, tokenizer = lab_pair
    generator = torch.Generator().manual_seed(0)
    rollouts = generate(student, tokenizer, ["347+285=", "12+9=", "5+505="], 12, generator=generator)
    return teacher, tokenizer, rollouts


@pytest.fixture()
def vllm_server(lab_rollouts):
    teacher, tokenizer, _ = lab_rollouts
    server = fake_vllm(teacher, tokenizer)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("implementation", ["in_process", "vllm"])
def test_every_teacher_scorer_gives_the_teachers_log_probs(lab_rollouts, vllm_server, implementation):
    """Conformance: the answers the engine relies on, checked against the teacher's own forward."""
    teacher, _, rollouts = lab_rollouts
    scorer = InProcessTeacher(teacher) if implementation == "in_process" else VllmTeacher(vllm_server + "/v1", "lab")
    scores = scorer.score(rollouts, top_k=3)
    assert isinstance(scores, TeacherScores)
    mask_BL = rollouts.completion_mask_BL
    with torch.no_grad():
        expected_BLV = torch.log_softmax(forward_logits(teacher, rollouts.sequences_BS, rollouts.attention_mask_BS)
                                         [:, rollouts.prompt_length - 1 : -1], dim=-1)
    targets_BL = rollouts.sequences_BS[:, rollouts.prompt_length :]
    expected_BL = losses.gather_tokens(expected_BLV, targets_BL) * mask_BL
    assert scores.logprobs_BL.shape == mask_BL.shape
    torch.testing.assert_close(scores.logprobs_BL * mask_BL, expected_BL, atol=1e-4, rtol=1e-4)
    assert (scores.logprobs_BL[mask_BL == 0] == 0).all()
    top = expected_BLV.topk(3, dim=-1)
    live = mask_BL.bool()
    assert torch.equal(scores.top_ids_BLK[live], top.indices[live])
    torch.testing.assert_close(scores.top_logprobs_BLK[live], top.values[live], atol=1e-4, rtol=1e-4)
    # Without top-k, only the sampled tokens' log-probs: what the `sampled` estimator needs.
    assert scorer.score(rollouts).top_ids_BLK is None


def test_vllm_teacher_refuses_a_temperature_it_cannot_score(lab_rollouts, vllm_server):
    _, _, rollouts = lab_rollouts
    rollouts.temperature = 0.7
    with pytest.raises(ValueError, match="scores at temperature 1"):
        VllmTeacher(vllm_server, "lab").score(rollouts)


def test_an_unreachable_teacher_server_is_one_clear_error(lab_rollouts):
    _, _, rollouts = lab_rollouts
    with pytest.raises(RuntimeError, match="^teacher server http://127.0.0.1:9/v1/completions"):
        VllmTeacher("http://127.0.0.1:9", "lab", timeout_s=2).score(rollouts)


def test_a_recorded_vllm_response_is_read_right():
    """tests/fixtures/vllm_prompt_logprobs.json has vLLM's shape: the first position None,
    token ids as string keys, the scored token included even outside the top-k."""
    response = json.loads(FIXTURE.read_text())
    # prompt [pad, 11, 12], completion [13, 14, pad]: the server saw the tokens 11 12 13 14.
    sequences = torch.tensor([[0, 11, 12, 13, 14, 0]])
    attention = torch.tensor([[0, 1, 1, 1, 1, 0]])
    target_mask = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]])
    rollouts = Rollouts(["p"], ["c"], sequences, attention, target_mask, torch.zeros(1, 5), 3, 1.0)
    scores = scores_from_vllm(response, rollouts, top_k=2)
    assert scores.logprobs_BL[0].tolist() == pytest.approx([-0.9, -4.25, 0.0])
    assert scores.top_ids_BLK[0, :2].tolist() == [[20, 13], [21, 22]]
    assert scores.top_logprobs_BLK[0, :2].flatten().tolist() == pytest.approx([-0.7, -0.9, -0.3, -1.9])
    with pytest.raises(ValueError, match="answered 1 choices for 2 sequences"):
        scores_from_vllm(response, Rollouts(["p", "q"], ["c", "d"], sequences.repeat(2, 1), attention.repeat(2, 1),
                                            target_mask.repeat(2, 1), torch.zeros(2, 5), 3, 1.0), top_k=2)


def test_topk_tail_kl_is_a_lower_bound_short_by_the_tails_own_kl(lab_rollouts, lab_pair):
    """Against the exact reverse KL on the lab's teacher and student: never above it, equal
    with k = V, and short by exactly p_s(tail) * KL(p_s(.|tail) || p_t(.|tail))."""
    teacher, _, rollouts = lab_rollouts
    student = lab_pair[1]
    with torch.no_grad():
        student_BLV = torch.log_softmax(forward_logits(student, rollouts.sequences_BS, rollouts.attention_mask_BS)
                                        [:, rollouts.prompt_length - 1 : -1], dim=-1)
    scores = InProcessTeacher(teacher).score(rollouts, top_k=student_BLV.shape[-1])
    teacher_BLV, live = scores.logprobs_BLV, rollouts.completion_mask_BL.bool()
    exact_BL = losses.kl_from_logprobs(student_BLV, teacher_BLV)
    every = losses.topk_tail_reverse_kl(student_BLV, scores.top_ids_BLK, scores.top_logprobs_BLK)
    torch.testing.assert_close(every[live], exact_BL[live], atol=1e-5, rtol=1e-4)
    for k in (1, 3, 5):
        top = teacher_BLV.topk(k, dim=-1)
        folded_BL = losses.topk_tail_reverse_kl(student_BLV, top.indices, top.values)
        assert (folded_BL[live] <= exact_BL[live] + 1e-5).all()
        in_top = torch.zeros_like(teacher_BLV, dtype=torch.bool).scatter(-1, top.indices, True)
        neg_inf = torch.full_like(teacher_BLV, float("-inf"))
        student_tail = torch.where(in_top, neg_inf, student_BLV)
        teacher_tail = torch.where(in_top, neg_inf, teacher_BLV)
        tail_mass_BL = student_tail.exp().sum(-1)
        tail_kl_BL = losses.kl_from_logprobs(student_tail - student_tail.logsumexp(-1, keepdim=True),
                                             teacher_tail - teacher_tail.logsumexp(-1, keepdim=True))
        torch.testing.assert_close(exact_BL[live] - folded_BL[live], (tail_mass_BL * tail_kl_BL)[live],
                                   atol=1e-4, rtol=1e-3)
    # The fallback trains the student: its gradient reaches the student's log-probs.
    logits = torch.randn(1, 2, 7, requires_grad=True)
    top = torch.log_softmax(torch.randn(1, 2, 7), -1).topk(3, dim=-1)
    losses.topk_tail_reverse_kl(torch.log_softmax(logits, -1), top.indices, top.values).sum().backward()
    assert logits.grad.abs().sum() > 0


# --- runs against a teacher server ------------------------------------------------------

RUN = dict(method="opd", steps=3, batch_size=4, eval_count=8, eval_every=3, sample_every=2, samples_to_log=2,
           max_new_tokens=12, learning_rate=1e-3, checkpoint_every=3, seed=0)


def test_a_run_scored_by_a_teacher_server_trains_like_one_with_the_teacher_in_process(lab_pair):
    """The fake server computes prompt log-probs with the lab teacher itself, so the remote
    run must give the in-process run's losses; its folder records the server, and its
    token views hold the teacher's log-probs and top-k from the server, with no exact KL."""
    teacher, _, tokenizer = lab_pair
    local = train(RunConfig(name="local", **RUN), progress=False)
    with serving(teacher, tokenizer) as url:
        remote = train(RunConfig(name="remote", teacher_server=url, **RUN), progress=False)
    assert load_config(remote)["teacher_server"] == url and load_config(remote)["teacher"] == "lab"
    reference, rows = load_metrics(local), load_metrics(remote)
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    for step in (1, 2, 3):
        for key in ("train/loss", "train/grad_norm", "train/accuracy", "progress/tokens", "perf/flops_teacher"):
            assert rows[step][key] == pytest.approx(reference[step][key], rel=1e-4, abs=1e-6), (step, key)
        assert "train/reverse_kl" not in rows[step]  # the exact KL needs the teacher's whole distribution
    # Logging steps ask the server for its top-k: the lower bound of the exact KL.
    assert "train/reverse_kl_topk" in rows[2] and "train/reverse_kl_topk" not in rows[1]
    assert 0 <= rows[2]["train/reverse_kl_topk"] <= reference[2]["train/reverse_kl"] + 1e-5
    assert rows[3]["eval/accuracy"] == reference[3]["eval/accuracy"]
    remote_tokens = load_samples(remote)[0]["tokens"]
    local_tokens = load_samples(local)[0]["tokens"]
    for mine, theirs in zip(remote_tokens, local_tokens):
        assert mine["teacher_logprob"] == pytest.approx(theirs["teacher_logprob"], abs=1e-4)
        assert mine["teacher_top"][0][0] == theirs["teacher_top"][0][0]
        assert "reverse_kl" not in mine


def test_the_full_estimator_with_a_teacher_server_trains_on_the_top_k_tail_kl(lab_pair):
    teacher, _, tokenizer = lab_pair
    with serving(teacher, tokenizer) as url:
        run_dir = train(RunConfig(name="remote-full", teacher_server=url, estimator="full", teacher_top_k=5,
                                  **RUN), progress=False)
    rows = load_metrics(run_dir)
    assert load_status(run_dir)["state"] == "finished"
    for row in rows[1:]:
        assert row["train/reverse_kl_topk"] == pytest.approx(row["train/loss"], rel=1e-5)
        assert row["train/reverse_kl_topk"] > 0
    assert "KL(top-k) " in log_tail(run_dir)


@pytest.mark.parametrize("changes, field", [
    ({"method": "sft"}, "sft_source"),
    ({"method": "sft", "sft_source": "teacher_dataset", "prompt_pool": 8}, "sft_source"),
    ({"on_policy_fraction": 0.5}, "on_policy_fraction"),
    ({"temperature": 0.7}, "temperature"),
    ({"estimator": "full", "divergence": "jsd"}, "divergence"),
    ({"teacher_server": "localhost:8000"}, "teacher_server"),
])
def test_what_a_teacher_server_cannot_serve_is_refused_naming_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        RunConfig(**{"teacher_server": "http://localhost:8000", **changes})
    RunConfig(method="sft", sft_source="reference", teacher_server="http://localhost:8000")  # no teacher samples
