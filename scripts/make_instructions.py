"""Write opd_lab/data/instructions.jsonl: everyday requests, each with one or two verifiable instructions.

Every row is `{"prompt": ..., "checks": [...]}`: a request ("Explain why bread goes
stale.") followed by its instructions in plain words ("Answer in at most 2 sentences."),
and the checks that verify them (`opd_lab.instructions`). Answers are meant to be short,
so a small chat model (SmolLM2-135M-Instruct, 96 new tokens) can sometimes obey them.

The output is deterministic (a fixed seed): rerun it after editing the lists below.

    python scripts/make_instructions.py        # rewrites opd_lab/data/instructions.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from opd_lab.instructions import validate_check

OUTPUT = Path(__file__).resolve().parents[1] / "opd_lab" / "data" / "instructions.jsonl"
ROWS_PER_REQUEST = 3
SEED = 0

REQUESTS = [
    "Explain why the sky is blue.", "Explain why bread goes stale.", "Explain how a rainbow forms.",
    "Explain what a library card is for.", "Explain why we need sleep.", "Explain how bees make honey.",
    "Explain why leaves change colour in autumn.", "Explain how a bicycle stays upright.",
    "Explain what a budget is.", "Explain why ice floats on water.", "Explain how a compass works.",
    "Explain why people yawn.", "Explain what recycling is.", "Explain how to read a bus timetable.",
    "Explain why the moon changes shape.", "Describe a rainy morning in a city.", "Describe your ideal weekend.",
    "Describe a busy kitchen.", "Describe the smell of fresh coffee.", "Describe a walk on the beach.",
    "Describe an old wooden chair.", "Describe a quiet library.", "Describe a market on a Saturday morning.",
    "Describe a cat sleeping in the sun.", "Describe the first snow of winter.", "Describe a train station at night.",
    "Describe a garden in spring.", "List some ways to save water at home.", "List a few healthy breakfast ideas.",
    "List some things to pack for a day hike.", "List a few tips for learning a new language.",
    "List some ways to stay warm in winter.", "List a few good habits for students.",
    "List some fun things to do on a rainy day.", "List a few ways to be kind to a neighbour.",
    "List some common kitchen tools.", "List a few reasons to keep a diary.", "Give advice to someone starting to run.",
    "Give tips for a good night's sleep.", "Give advice on keeping a plant alive.",
    "Give tips for writing a polite email.", "Give advice for a first job interview.",
    "Give tips for saving money on groceries.", "Give advice on making new friends in a new town.",
    "Give tips for staying focused while studying.", "Write a short note thanking a friend for a gift.",
    "Write a short note inviting a neighbour to tea.", "Write a short note to a teacher saying your child is ill.",
    "Write a short note reminding a colleague about a meeting.", "Write a short birthday message for a cousin.",
    "Write a short note apologising for being late.", "Write a short welcome message for a new team member.",
    "Write a short note asking to borrow a ladder.", "Write a short review of a café you like.",
    "Write a short description of a lost umbrella for a notice board.", "Write a short poem about the sea.",
    "Write a short story about a lost dog finding its way home.", "Write a short poem about autumn.",
    "Write a short product description for a reusable water bottle.",
    "Write a short announcement that the office will close early on Friday.", "Tell me about elephants.",
    "Tell me about the planet Mars.", "Tell me about penguins.", "Tell me about volcanoes.",
    "Tell me how to make a cup of tea.", "Tell me how to boil an egg.", "Tell me how to plant a tree.",
    "Tell me how to tie a shoelace.", "Tell me how to clean a window.", "Tell me why exercise is healthy.",
    "Tell me why people keep pets.", "Tell me what makes a good friend.", "What is the difference between weather and climate?",
    "What is a good way to start the day?", "What should I bring to a picnic?", "What makes a good book?",
    "What is the best way to learn to swim?", "What is a healthy lunch for school?", "What are clouds made of?",
    "What is the purpose of a seatbelt?", "How do I make a paper airplane?", "How do I keep my desk tidy?",
    "How do I prepare for a long flight?", "How do I care for a goldfish?", "How can I reduce stress after work?",
    "How can I make my room feel cosy?", "Summarize the benefits of walking every day.",
    "Summarize why breakfast matters.", "Summarize what a good neighbour does.", "Summarize how to stay safe in the sun.",
]

# Each constraint type: the values its parameters take and plain-words phrasings of it.
CONSTRAINTS = {
    "lowercase": ([{}], ["Answer in all lowercase letters.", "Write your whole answer in lowercase, with no capital letters.",
                         "Use only lowercase letters."]),
    "uppercase": ([{}], ["Write your whole answer in capital letters.", "Answer in all uppercase letters."]),
    "max_words": ([{"n": n} for n in (15, 20, 30, 40)],
                  ["Answer in at most {n} words.", "Use no more than {n} words.", "Keep your answer to {n} words or fewer."]),
    "min_words": ([{"n": n} for n in (25, 30, 40)],
                  ["Use at least {n} words.", "Your answer should be at least {n} words long."]),
    "bullets": ([{"n": n} for n in (2, 3, 4)],
                ['Use exactly {n} bullet points, each starting with "- ".', "Answer with exactly {n} markdown bullet points.",
                 "Give your answer as a list of exactly {n} bullet points."]),
    "include_word": ([{"word": w} for w in ("simple", "important", "because", "every", "together")],
                     ['Include the word "{word}" in your answer.', 'Make sure to use the word "{word}".']),
    "exclude_word": ([{"word": w} for w in ("very", "really", "good", "thing", "also")],
                     ['Do not use the word "{word}".', 'Avoid the word "{word}" in your answer.']),
    "json_key": ([{"key": k} for k in ("answer", "summary", "reply")],
                 ['Reply with a JSON object that has a "{key}" key.', 'Format your answer as JSON, an object with the key "{key}".']),
    "starts_with": ([{"phrase": p} for p in ("Sure", "In short", "Well", "Here is")],
                    ['Begin your answer with "{phrase}".', 'Start your reply with the words "{phrase}".']),
    "ends_with": ([{"phrase": p} for p in ("Hope this helps!", "That is all.", "Any other questions?")],
                  ['End your answer with the exact phrase "{phrase}"', 'Finish with "{phrase}" and write nothing after it.']),
    "no_commas": ([{}], ["Do not use any commas.", "Write your answer without a single comma."]),
    "sentences": ([{"n": n} for n in (1, 2, 3)],
                  ["Answer in at most {n} sentences.", "Use no more than {n} sentences."]),
    "paragraphs": ([{"n": 2}], ["Write exactly two paragraphs, separated by a blank line.",
                                "Answer in two short paragraphs with a blank line between them."]),
    "quoted": ([{}], ["Wrap your entire answer in double quotation marks.", "Put your whole reply inside double quotes."]),
    "title": ([{}], ["Give your answer a title in double angle brackets, like <<my title>>.",
                     "Start with a title wrapped in double angle brackets, such as <<a title>>."]),
    "placeholder": ([{"n": n} for n in (1, 2)],
                    ["Include at least {n} placeholder in square brackets, such as [name].",
                     "Leave at least {n} blank to fill in, written in square brackets like [date]."]),
    "postscript": ([{}], ["At the end, add a postscript starting with P.S.", "Add a P.S. at the end of your answer."]),
}

# Pairs that contradict each other, or that read oddly together, are never combined.
CONFLICTS = {frozenset(pair) for pair in [
    ("lowercase", "uppercase"), ("lowercase", "starts_with"), ("lowercase", "ends_with"), ("lowercase", "postscript"),
    ("uppercase", "starts_with"), ("uppercase", "ends_with"), ("uppercase", "json_key"),
    ("max_words", "min_words"), ("max_words", "paragraphs"), ("min_words", "sentences"),
    ("bullets", "sentences"), ("bullets", "paragraphs"), ("bullets", "quoted"), ("bullets", "json_key"),
    ("paragraphs", "sentences"), ("paragraphs", "quoted"), ("ends_with", "postscript"), ("starts_with", "title"),
    ("quoted", "starts_with"), ("quoted", "ends_with"), ("quoted", "postscript"), ("quoted", "title"),
    ("include_word", "exclude_word"),
] + [("json_key", other) for other in ("quoted", "starts_with", "ends_with", "postscript", "title", "paragraphs",
                                        "no_commas", "sentences", "placeholder", "min_words")]}
SECOND_CHECKS = ["lowercase", "no_commas", "include_word", "exclude_word", "max_words", "starts_with", "ends_with",
                 "sentences"]


def _instruction(kind: str, rng: random.Random) -> tuple[str, dict]:
    values, phrasings = CONSTRAINTS[kind]
    parameters = rng.choice(values)
    text = rng.choice(phrasings).format(**parameters)
    if kind == "placeholder":
        text = text.replace("least 1 ", "least one ").replace("least 2 placeholder ", "least two placeholders ")
        text = text.replace("least 2 blank ", "least two blanks ")
    if kind == "sentences" and parameters["n"] == 1:
        text = "Answer in one sentence."
    return text, {"type": kind, **parameters}


def make_rows(seed: int = SEED) -> list[dict]:
    """The rows: every request with ROWS_PER_REQUEST different first instructions; half get a second one."""
    rng = random.Random(seed)
    kinds = list(CONSTRAINTS)
    queue: list[str] = []
    rows = []
    for request in REQUESTS:
        used: set[str] = set()
        for _ in range(ROWS_PER_REQUEST):
            if not queue:  # every type comes up equally often as a first instruction
                queue = rng.sample(kinds, len(kinds))
            first = next((k for k in queue if k not in used), queue[0])
            queue.remove(first)
            used.add(first)
            texts, checks = zip(_instruction(first, rng))
            if rng.random() < 0.5:
                partners = [k for k in SECOND_CHECKS if k != first and frozenset((k, first)) not in CONFLICTS]
                text, check = _instruction(rng.choice(partners), rng)
                texts, checks = texts + (text,), checks + (check,)
            rows.append({"prompt": " ".join((request,) + texts), "checks": list(checks)})
    if len({row["prompt"] for row in rows}) != len(rows):
        raise RuntimeError("two rows have the same prompt; change the requests or the seed")
    for row in rows:
        for check in row["checks"]:
            validate_check(check)
    return rows


if __name__ == "__main__":
    rows = make_rows()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {OUTPUT}")
