"""The instruction checker: every constraint type on an answer that obeys it and one that does not."""

import pytest

from opd_lab.instructions import CONSTRAINTS, check_keys, passes, score, summarize, validate_check

# (check, an answer that passes, an answer that fails) for every constraint type
CASES = [
    ({"type": "lowercase"}, "tea is made with hot water.", "Tea is made with hot water."),
    ({"type": "uppercase"}, "TEA IS MADE WITH HOT WATER, 100%.", "TEA IS MADE WITH hot WATER."),
    ({"type": "max_words", "n": 5}, "Bees make honey from nectar.", "Bees make honey from flower nectar."),
    ({"type": "min_words", "n": 5}, "Bees make honey from nectar.", "Bees make honey."),
    ({"type": "bullets", "n": 3}, "Tips:\n- sleep\n* eat well\n  - walk", "- sleep\n- eat well\n1. walk"),
    ({"type": "include_word", "word": "simple"}, "It is SIMPLE, really.", "It is simply done."),
    ({"type": "exclude_word", "word": "very"}, "Everything is every bit fine.", "It is Very fine."),
    ({"type": "json_key", "key": "answer"}, '```json\n{"answer": "blue", "why": "scattering"}\n```',
     '{"reply": "blue"}'),
    ({"type": "starts_with", "phrase": "In short"}, "  in short, the sky scatters blue light.",
     "The sky, in short, is blue."),
    ({"type": "ends_with", "phrase": "Hope this helps!"}, "Drink water. Hope this helps!\n",
     "Hope this helps! Drink water."),
    ({"type": "no_commas"}, "Rain falls and the streets shine.", "Rain falls, and the streets shine."),
    ({"type": "sentences", "n": 2}, "The moon orbits us. Its lit side changes!", "One. Two. Three."),
    ({"type": "paragraphs", "n": 2}, "First part here.\n\nSecond part here.", "One block\nstill the same block."),
    ({"type": "quoted"}, '"Bread dries out as it cools."', 'Bread "dries" out.'),
    ({"type": "title"}, "<<Autumn Leaves>>\nThe leaves turn red.", "<<>> The leaves turn red."),
    ({"type": "placeholder", "n": 2}, "Dear [name], see you on [date].", "Dear [name], see you soon."),
    ({"type": "postscript"}, "See you soon.\nP.S. Bring a cake.", "See you soon. PS bring a cake."),
]


def test_cases_cover_every_constraint_type():
    assert {case[0]["type"] for case in CASES} == set(CONSTRAINTS)


@pytest.mark.parametrize("check, good, bad", CASES, ids=[case[0]["type"] for case in CASES])
def test_each_constraint_passes_and_fails(check, good, bad):
    assert passes(good, check)
    assert not passes(bad, check)


def test_blank_answer_passes_nothing():
    for check, _, _ in CASES:
        assert not passes("  \n", check), check["type"]


def test_score_keys_fraction_and_all_passed():
    checks = [{"type": "include_word", "word": "tea"}, {"type": "lowercase"}, {"type": "include_word", "word": "milk"}]
    result = score("tea with sugar", checks)
    assert result.passed == {"include_word#0": True, "lowercase": True, "include_word#2": False}
    assert result.fraction == pytest.approx(2 / 3)
    assert not result.all_passed
    assert score("tea with milk", checks).all_passed
    assert check_keys([{"type": "quoted"}]) == ["quoted"]


def test_summarize_numbers():
    scores = [
        score("a short answer", [{"type": "lowercase"}, {"type": "max_words", "n": 5}]),  # both pass
        score("A Short answer", [{"type": "lowercase"}, {"type": "max_words", "n": 5}]),  # 1 of 2
        score("no commas here", [{"type": "no_commas"}]),  # passes
        score("x, y", [{"type": "no_commas"}]),  # fails
    ]
    summary = summarize(scores)
    assert summary["prompts"] == 4
    assert summary["prompt_accuracy"] == pytest.approx(2 / 4)
    assert summary["check_accuracy"] == pytest.approx(4 / 6)
    assert summary["by_type"] == {"lowercase": 0.5, "max_words": 1.0, "no_commas": 0.5}
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


@pytest.mark.parametrize("check, message", [
    ({"type": "shout"}, "unknown check type 'shout'"),
    ({"type": "max_words"}, "'max_words': missing parameter 'n'"),
    ({"type": "max_words", "n": "20"}, "'max_words': n must be a positive integer"),
    ({"type": "bullets", "n": 0}, "'bullets': n must be a positive integer"),
    ({"type": "bullets", "n": True}, "'bullets': n must be a positive integer"),
    ({"type": "include_word", "word": ""}, "'include_word': word must be a non-empty string"),
    ({"type": "lowercase", "n": 3}, "'lowercase': unexpected parameter 'n'"),
    (["lowercase"], "a check must be an object"),
])
def test_bad_checks_are_refused_by_name(check, message):
    with pytest.raises(ValueError, match=message):
        validate_check(check)
    with pytest.raises(ValueError, match=message):
        score("anything", [check])
