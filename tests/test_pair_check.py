"""`opd-lab preflight`: the pure verdict, and measurements on quick labs whose answer is known."""

import dataclasses
import json
import shutil

import pytest
import torch

from opd_lab.cli import main
from opd_lab.lab import LabRecipe, build_lab
from opd_lab.models import LabModelSize, ModelLoadError, check_pair_compatible
from opd_lab.pair_check import (FOUNDATION_FLOOR, PairMeasurements, judge, measure_pair, teacher_top_k_hits)
from opd_lab.studies.scenarios import get_scenario
from opd_lab.tokenizer import build_char_tokenizer

HEALTHY = PairMeasurements("t", "s", "addition", problems=50, top_k=5, student_pass_rate=0.5,
                           teacher_pass_rate=0.98, reverse_kl=0.4, top_k_agreement=0.95)
TEMPLATE = "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}Assistant:"


def _messages(verdict):
    return " | ".join(finding.message for finding in verdict.findings)


def test_verdict_thresholds():
    assert judge(HEALTHY).level == "go" and judge(HEALTHY).exit_code == 0
    no_foundation = judge(dataclasses.replace(HEALTHY, student_pass_rate=FOUNDATION_FLOOR / 2))
    assert no_foundation.level == "no-go" and no_foundation.exit_code == 3
    assert "no foundation" in _messages(no_foundation) and "SFT first" in _messages(no_foundation)
    weaker = judge(dataclasses.replace(HEALTHY, teacher_pass_rate=0.45))
    assert weaker.level == "no-go" and "not stronger" in _messages(weaker)
    barely = judge(dataclasses.replace(HEALTHY, teacher_pass_rate=0.55))
    assert barely.level == "caution" and "not clearly stronger" in _messages(barely)
    settled = judge(dataclasses.replace(HEALTHY, reverse_kl=0.001))
    assert settled.level == "caution" and "little to learn" in _messages(settled)
    strange = judge(dataclasses.replace(HEALTHY, top_k_agreement=0.2))
    assert strange.level == "caution" and "unlikely" in _messages(strange) and "top-5" in _messages(strange)
    mismatch = judge(PairMeasurements("t", "s", "addition", 50, 5, tokenizer_problem="chat templates differ"))
    assert mismatch.level == "no-go" and "chat templates differ" in _messages(mismatch)


def test_teacher_top_k_hits_counts_ranks_with_ties_in():
    logits_BLV = torch.tensor([[[3.0, 1.0, 2.0, 2.0], [0.0, 0.0, 0.0, 5.0]]])
    tokens_BL = torch.tensor([[2, 3]])
    assert teacher_top_k_hits(logits_BLV, tokens_BL, k=1).tolist() == [[False, True]]
    assert teacher_top_k_hits(logits_BLV, tokens_BL, k=2).tolist() == [[True, True]]  # 2.0 ties for second
    with pytest.raises(ValueError, match="at least 1"):
        teacher_top_k_hits(logits_BLV, tokens_BL, k=0)


def test_chat_template_mismatch_names_the_position():
    plain, templated = build_char_tokenizer(), build_char_tokenizer()
    check_pair_compatible(plain, build_char_tokenizer())  # two lab tokenizers: no template, fine
    templated.chat_template = TEMPLATE
    with pytest.raises(ModelLoadError, match=r"teacher: no chat template, student: a chat template.*"
                                             r"token 0, character 0.*'347\+285='.*'User: 347"):
        check_pair_compatible(plain, templated)
    other = build_char_tokenizer()
    other.chat_template = TEMPLATE.replace("Assistant:", "Bot:")
    with pytest.raises(ModelLoadError, match=r"token 15, character 15: teacher .*Assistant:.* vs student .*Bot:"):
        check_pair_compatible(templated, other)


@pytest.fixture(scope="module")
def quick_labs(tmp_path_factory):
    """A data dir with the quick no-foundation lab and a tiny healthy one (a few seconds)."""
    home = tmp_path_factory.mktemp("pair-check-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPD_LAB_HOME", str(home))
        build_lab(get_scenario("no-foundation").recipe(quick=True), progress_print=lambda *_: None)
        # "a.." prompts answer 7 and "b.." prompts 8: the teacher learns both, the student
        # only ever saw 7 (about half right: the foundation, not the skill).
        rows, lazy = [], []
        for letter, answer in (("a", "7"), ("b", "8")):
            for number in range(100):
                rows.append({"prompt": f"{letter}{number:02d}=", "answer": answer, "reference": answer})
                lazy.append({"prompt": f"{letter}{number:02d}=", "answer": answer, "reference": "7"})
        task, foundation = home / "letters.jsonl", home / "lazy.jsonl"
        task.write_text("".join(json.dumps(row) + "\n" for row in rows))
        foundation.write_text("".join(json.dumps(row) + "\n" for row in lazy))
        size = LabModelSize(32, 1, 2, 64)
        build_lab(LabRecipe(name="letters", task=str(task), student_task=str(foundation), teacher_size=size,
                            student_size=size, teacher_steps=80, student_steps=30, student_examples=64,
                            eval_count=32), progress_print=lambda *_: None)
    return home


def test_student_without_foundation_gets_the_foundation_warning(quick_labs, monkeypatch, capsys):
    monkeypatch.setenv("OPD_LAB_HOME", str(quick_labs))
    args = ["preflight", "--teacher", "lab:no-foundation-quick", "--student", "lab:no-foundation-quick",
            "--problems", "16"]
    assert main(args) == 3
    table = capsys.readouterr().out
    assert "verdict: NO-GO" in table and "no foundation" in table and "SFT first" in table
    assert main(args + ["--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    measured = report["measurements"]
    assert measured["student_pass_rate"] < FOUNDATION_FLOOR and measured["task"] == "addition"
    assert measured["reverse_kl"] > 0 and measured["sampled_tokens"] > 0 and 0 <= measured["top_k_agreement"] <= 1
    assert report["verdict"]["level"] == "no-go"


def test_healthy_pair_goes_without_the_foundation_warning(quick_labs, monkeypatch):
    monkeypatch.setenv("OPD_LAB_HOME", str(quick_labs))
    measurements = measure_pair("lab:letters", "lab:letters", str(quick_labs / "letters.jsonl"), problems=32)
    assert measurements.teacher_pass_rate > measurements.student_pass_rate + 0.1
    assert measurements.student_pass_rate >= FOUNDATION_FLOOR
    verdict = judge(measurements)
    assert verdict.level in ("go", "caution") and verdict.exit_code == 0
    assert "foundation" not in _messages(verdict)


def test_template_mismatch_is_reported_not_raised(quick_labs, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("OPD_LAB_HOME", str(quick_labs))
    chat_teacher = tmp_path / "chat-teacher"
    shutil.copytree(quick_labs / "lab" / "letters" / "teacher", chat_teacher)
    from opd_lab.models import load_tokenizer

    tokenizer = load_tokenizer(str(chat_teacher))
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(chat_teacher)
    measurements = measure_pair(str(chat_teacher), "lab:letters", str(quick_labs / "letters.jsonl"), problems=8)
    assert "chat template" in measurements.tokenizer_problem and measurements.student_pass_rate is None
    assert judge(measurements).level == "no-go"
    assert main(["preflight", "--teacher", str(chat_teacher), "--student", "lab:letters",
                 "--task", str(quick_labs / "letters.jsonl")]) == 3
    assert "render prompts differently" in capsys.readouterr().out
