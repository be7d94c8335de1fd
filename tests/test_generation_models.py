import pytest
import torch

from opd_lab.generation import encode_prompts, forward_logits, generate, rollouts_from_texts, target_logprobs
from opd_lab.models import ModelLoadError, check_pair_compatible, load_model
from opd_lab.tokenizer import build_char_tokenizer

PROMPTS = ["347+285=", "1+2=", "999+999=", "10+5=", "12+345="]


def test_left_padding_layout():
    tokenizer = build_char_tokenizer()
    ids, mask = encode_prompts(tokenizer, ["1+2=", "347+285="])
    assert ids.shape == mask.shape == (2, 8)
    assert mask[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert ids[0, 0].item() == tokenizer.pad_token_id
    assert tokenizer.decode(ids[0, 4:].tolist()) == "1+2="


def test_batched_generation_equals_unbatched(lab_pair):
    teacher, _, tokenizer = lab_pair
    batched = generate(teacher, tokenizer, PROMPTS, max_new_tokens=20, greedy=True)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(teacher, tokenizer, [prompt], max_new_tokens=20, greedy=True)
        assert alone.completions[0] == batched.completions[row]
        assert alone.completion_token_ids(0) == batched.completion_token_ids(row)
        length = alone.completion_lengths[0]
        lp_alone = alone.sampling_logprobs_BT[0][alone.target_mask_BT[0].bool()]
        lp_batch = batched.sampling_logprobs_BT[row][batched.target_mask_BT[row].bool()]
        assert lp_alone.shape == lp_batch.shape == (length,)
        torch.testing.assert_close(lp_alone, lp_batch, atol=1e-4, rtol=1e-4)


def test_sampling_logprobs_match_a_fresh_forward_pass(lab_pair):
    """The log-probs recorded while sampling are the ones a training forward pass computes."""
    _, student, tokenizer = lab_pair
    generator = torch.Generator().manual_seed(0)
    rollouts = generate(student, tokenizer, PROMPTS * 2, max_new_tokens=16, temperature=0.7, generator=generator)
    with torch.no_grad():
        logps = target_logprobs(forward_logits(student, rollouts.sequences_BS, rollouts.attention_mask_BS), rollouts)
    mask = rollouts.target_mask_BT
    assert mask.sum() > 0
    diff = ((logps - rollouts.sampling_logprobs_BT).abs() * mask).max()
    assert diff < 1e-4


def test_sampling_is_seeded(lab_pair):
    _, student, tokenizer = lab_pair
    first = generate(student, tokenizer, PROMPTS, 12, generator=torch.Generator().manual_seed(3))
    second = generate(student, tokenizer, PROMPTS, 12, generator=torch.Generator().manual_seed(3))
    assert first.completions == second.completions


def _reference_sample(model, tokenizer, prompts, max_new_tokens, temperature, generator):
    """Sampling by the definition: a full forward over the whole sequence for every new token
    (no KV cache), every row kept in the batch to the end, `torch.multinomial` on its
    probabilities. Returns each row's token ids (EOS included) and their log-probs."""
    ids_BS, mask_BS = encode_prompts(tokenizer, prompts)
    finished_B = torch.zeros(len(prompts), dtype=torch.bool)
    rows = [([], []) for _ in prompts]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logprobs_BV = torch.log_softmax(forward_logits(model, ids_BS, mask_BS)[:, -1] / temperature, dim=-1)
            token_B = torch.multinomial(logprobs_BV.exp(), 1, generator=generator).squeeze(1)
            token_B = torch.where(finished_B, torch.full_like(token_B, tokenizer.pad_token_id), token_B)
            for row, (token_ids, logps) in enumerate(rows):
                if not finished_B[row]:
                    token_ids.append(int(token_B[row]))
                    logps.append(float(logprobs_BV[row, token_B[row]]))
            ids_BS = torch.cat([ids_BS, token_B[:, None]], dim=1)
            mask_BS = torch.cat([mask_BS, (~finished_B).long()[:, None]], dim=1)
            finished_B |= token_B == tokenizer.eos_token_id
            if finished_B.all():
                break
    return rows


@pytest.mark.parametrize("max_new_tokens,temperature", [(40, 1.0), (12, 0.8)])
def test_sampling_matches_the_definition_token_for_token(lab_pair, max_new_tokens, temperature):
    """The KV-cached loop that drops finished rows samples the same tokens, from the same
    seed, as full recomputation with every row kept: the random stream is preserved."""
    teacher, _, tokenizer = lab_pair
    prompts = PROMPTS * 3
    rollouts = generate(teacher, tokenizer, prompts, max_new_tokens, temperature=temperature,
                        generator=torch.Generator().manual_seed(11))
    expected = _reference_sample(teacher, tokenizer, prompts, max_new_tokens, temperature,
                                 torch.Generator().manual_seed(11))
    if max_new_tokens == 40:  # rows end at different lengths, so rows left the batch early
        longest = max(len(token_ids) for token_ids, _ in expected)
        assert any(token_ids[-1] == tokenizer.eos_token_id and len(token_ids) < longest
                   for token_ids, _ in expected)
    for row, (token_ids, logps) in enumerate(expected):
        assert rollouts.completion_token_ids(row) == token_ids
        recorded = rollouts.completion_sampling_logprobs_BL[row, : len(logps)]
        torch.testing.assert_close(recorded, torch.tensor(logps), atol=1e-4, rtol=1e-4)
        assert rollouts.completion_mask_BL[row].sum() == len(token_ids)


def test_rollouts_from_texts_masks_completion_and_eos():
    tokenizer = build_char_tokenizer()
    rollouts = rollouts_from_texts(tokenizer, ["1+2=", "34+5="], ["3", "39"])
    assert rollouts.completion_lengths == [2, 3]  # characters plus <eos>
    assert rollouts.completion_token_ids(0) == [tokenizer.convert_tokens_to_ids("3"), tokenizer.eos_token_id]
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        rollouts_from_texts(tokenizer, ["a", "b"], ["c"])


def test_pair_compatibility_check(lab_home, tmp_path):
    teacher_tokenizer = build_char_tokenizer()
    check_pair_compatible(teacher_tokenizer, build_char_tokenizer())
    other = build_char_tokenizer()
    other.add_tokens(["<think>"])
    with pytest.raises(ModelLoadError, match="tokenizers differ.*same text"):
        check_pair_compatible(teacher_tokenizer, other)
    other_specials = build_char_tokenizer()
    other_specials.pad_token = "<unk>"
    with pytest.raises(ModelLoadError, match="pad_token_id"):
        check_pair_compatible(teacher_tokenizer, other_specials)


def test_missing_model_path_is_a_clear_error(lab_home, tmp_path):
    with pytest.raises(ModelLoadError, match="model path not found"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelLoadError, match="not built yet.*opd-lab lab build --task sorting"):
        load_model("lab", "teacher", task="sorting")


def test_unreachable_hub_id_names_the_id(lab_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="someone/not-a-real-model-xyz"):
        load_model("someone/not-a-real-model-xyz")


def test_lab_pair_loads_and_teacher_is_frozen(lab_pair):
    teacher, student, tokenizer = lab_pair
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    assert tokenizer.padding_side == "left"


def test_smollm2_gguf_loads_offline(smollm2_home, monkeypatch):
    monkeypatch.setenv("OPD_LAB_HOME", str(smollm2_home[0]))  # de-quantized once per session, then cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_model("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tokenizer.chat_template
    rollouts = generate(model, tokenizer, ["What is the capital of France? Answer in one word."], 8, greedy=True)
    assert "paris" in rollouts.completions[0].lower()
