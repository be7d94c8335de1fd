"""Verifiable instructions: does a response obey "answer in lowercase", "use 3 bullets", ...?

A small stand-in for IFEval, written for this project. Each constraint type is a pure
function of the response text and the check's parameters, returning a bool. A check is
a dict naming its type and parameters, e.g. `{"type": "max_words", "n": 20}`; a prompt
carries one or more checks (the shipped set: `opd_lab/data/instructions.jsonl`).

A blank response passes no check, so a model cannot satisfy "no commas" or "at most
20 words" by saying nothing.

Example:
    >>> result = score("- tea\\n- milk\\n- bread", [{"type": "bullets", "n": 3}, {"type": "lowercase"}])
    >>> result.passed, result.fraction, result.all_passed
    ({'bullets': True, 'lowercase': True}, 1.0, True)
    >>> summarize([result, score("Tea.", [{"type": "lowercase"}])])["prompt_accuracy"]
    0.5
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*")
_BULLET = re.compile(r"^\s*[-*]\s+\S")
_FENCE = re.compile(r"^```[A-Za-z]*\s*\n(.*?)\n?```$", re.DOTALL)


def words(text: str) -> list[str]:
    """The words of `text` (letters and digits; "don't" and "well-known" count once).

    >>> words("It's a well-known fact, 42 times.")
    ["It's", 'a', 'well-known', 'fact', '42', 'times']
    """
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """The sentences of `text`: split after '.', '!' or '?' followed by a space, or at a line break.

    >>> sentences("Hi there. How are you?\\nFine")
    ['Hi there.', 'How are you?', 'Fine']
    """
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [part.strip() for part in parts if words(part)]


def paragraphs(text: str) -> list[str]:
    """The paragraphs of `text`: blocks separated by one or more blank lines.

    >>> len(paragraphs("one\\n\\n two\\nstill two\\n\\n\\nthree"))
    3
    """
    return [block.strip() for block in re.split(r"\n\s*\n", text.strip()) if block.strip()]


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text, re.IGNORECASE) is not None


def _json_object(text: str) -> dict | None:
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Constraint:
    """One constraint type: its parameters (name -> type), its test, and what it asks."""

    name: str
    parameters: dict[str, type]
    test: Callable[..., bool]
    meaning: str


CONSTRAINTS: dict[str, Constraint] = {c.name: c for c in [
    Constraint("lowercase", {}, lambda text: not any(ch.isupper() for ch in text),
               "no uppercase letters"),
    Constraint("uppercase", {}, lambda text: any(ch.isalpha() for ch in text) and not any(ch.islower() for ch in text),
               "letters only in capitals"),
    Constraint("max_words", {"n": int}, lambda text, n: len(words(text)) <= n, "at most n words"),
    Constraint("min_words", {"n": int}, lambda text, n: len(words(text)) >= n, "at least n words"),
    Constraint("bullets", {"n": int}, lambda text, n: sum(bool(_BULLET.match(line)) for line in text.splitlines()) == n,
               'exactly n lines starting with "- " or "* "'),
    Constraint("include_word", {"word": str}, lambda text, word: _has_word(text, word),
               "the word appears (whole word, any case)"),
    Constraint("exclude_word", {"word": str}, lambda text, word: not _has_word(text, word),
               "the word does not appear (whole word, any case)"),
    Constraint("json_key", {"key": str}, lambda text, key: key in (_json_object(text) or {}),
               "a JSON object with this key (a ``` fence around it is allowed)"),
    Constraint("starts_with", {"phrase": str}, lambda text, phrase: text.strip().lower().startswith(phrase.lower()),
               "begins with the phrase (any case)"),
    Constraint("ends_with", {"phrase": str}, lambda text, phrase: text.strip().lower().endswith(phrase.lower()),
               "ends with the phrase (any case), nothing after it"),
    Constraint("no_commas", {}, lambda text: "," not in text, "no commas"),
    Constraint("sentences", {"n": int}, lambda text, n: len(sentences(text)) <= n, "at most n sentences"),
    Constraint("paragraphs", {"n": int}, lambda text, n: len(paragraphs(text)) == n,
               "exactly n paragraphs separated by blank lines"),
    Constraint("quoted", {}, lambda text: len(text.strip()) >= 2 and text.strip()[0] in '"“' and text.strip()[-1] in '"”',
               "wrapped in double quotes"),
    Constraint("title", {}, lambda text: re.search(r"<<[^<>\n]*\w[^<>\n]*>>", text) is not None,
               "a title in double angle brackets, like <<my title>>"),
    Constraint("placeholder", {"n": int}, lambda text, n: len(re.findall(r"\[[^\[\]\n]*\w[^\[\]\n]*\]", text)) >= n,
               "at least n placeholders in square brackets, like [name]"),
    Constraint("postscript", {}, lambda text: re.search(r"^\s*P\.\s?S\.", text, re.MULTILINE) is not None,
               'a line starting with "P.S."'),
]}


def validate_check(check: dict) -> None:
    """Refuse a check row whose type is unknown or whose parameters are missing, extra or wrong.

    Raises:
        ValueError: one line naming the type or the parameter.

    >>> validate_check({"type": "max_words", "n": 0})
    Traceback (most recent call last):
    ...
    ValueError: check 'max_words': n must be a positive integer (got 0)
    """
    if not isinstance(check, dict):
        raise ValueError(f"a check must be an object like {{\"type\": \"lowercase\"}} (got {check!r})")
    kind = check.get("type")
    if kind not in CONSTRAINTS:
        raise ValueError(f"unknown check type {kind!r}: use one of {', '.join(CONSTRAINTS)}")
    expected = CONSTRAINTS[kind].parameters
    given = {key: value for key, value in check.items() if key != "type"}
    for name in given.keys() - expected.keys():
        raise ValueError(f"check {kind!r}: unexpected parameter {name!r}"
                         f" (it takes {', '.join(expected) or 'no parameters'})")
    for name, kind_of_value in expected.items():
        if name not in given:
            raise ValueError(f"check {kind!r}: missing parameter {name!r}")
        value = given[name]
        if kind_of_value is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"check {kind!r}: {name} must be a positive integer (got {value!r})")
        if kind_of_value is str and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"check {kind!r}: {name} must be a non-empty string (got {value!r})")


def passes(text: str, check: dict) -> bool:
    """Whether `text` satisfies one check (validated first). A blank text passes nothing.

    >>> passes("hello world", {"type": "max_words", "n": 2}), passes("", {"type": "no_commas"})
    (True, False)
    """
    validate_check(check)
    if not text.strip():
        return False
    parameters = {key: value for key, value in check.items() if key != "type"}
    return bool(CONSTRAINTS[check["type"]].test(text, **parameters))


@dataclass(frozen=True)
class InstructionScore:
    """One response's checks: `passed` maps "type" (or "type#i", i its position in the
    list, when a type appears more than once) to whether it held."""

    passed: dict[str, bool]

    @property
    def fraction(self) -> float:
        """The share of checks passed (the RL reward)."""
        return sum(self.passed.values()) / len(self.passed)

    @property
    def all_passed(self) -> bool:
        """Whether every check held (prompt-level strict correctness)."""
        return all(self.passed.values())


def check_keys(checks: list[dict]) -> list[str]:
    """The key of each check in `InstructionScore.passed`.

    >>> check_keys([{"type": "include_word", "word": "a"}, {"type": "lowercase"}, {"type": "include_word", "word": "b"}])
    ['include_word#0', 'lowercase', 'include_word#2']
    """
    types = [check["type"] for check in checks]
    return [kind if types.count(kind) == 1 else f"{kind}#{index}" for index, kind in enumerate(types)]


def score(text: str, checks: list[dict]) -> InstructionScore:
    """Score `text` against every check of one prompt.

    Raises:
        ValueError: for an empty list of checks, an unknown type or bad parameters.
    """
    if not checks:
        raise ValueError("score needs at least one check")
    for check in checks:
        validate_check(check)
    return InstructionScore({key: passes(text, check) for key, check in zip(check_keys(checks), checks)})


def summarize(scores: Iterable[InstructionScore]) -> dict:
    """Accuracies over many prompts.

    Returns:
        {"prompts": count, "prompt_accuracy": share of prompts with every check passed,
         "check_accuracy": share of all checks passed, "by_type": {type: pass rate}}.

    >>> summarize([score("ok", [{"type": "lowercase"}, {"type": "quoted"}])])
    {'prompts': 1, 'prompt_accuracy': 0.0, 'check_accuracy': 0.5, 'by_type': {'lowercase': 1.0, 'quoted': 0.0}}
    """
    scores = list(scores)
    if not scores:
        raise ValueError("summarize needs at least one score")
    outcomes: dict[str, list[bool]] = {}
    for result in scores:
        for key, passed in result.passed.items():
            outcomes.setdefault(key.split("#")[0], []).append(passed)
    every_check = [passed for result in scores for passed in result.passed.values()]
    return {
        "prompts": len(scores),
        "prompt_accuracy": sum(result.all_passed for result in scores) / len(scores),
        "check_accuracy": sum(every_check) / len(every_check),
        "by_type": {kind: sum(values) / len(values) for kind, values in sorted(outcomes.items())},
    }
