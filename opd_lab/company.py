"""A fictional company's internal documents, and questions about them, for continual learning.

"Quillmark Instruments" is invented, and so is everything about it: its people, teams,
products, launch dates, codenames, budgets and internal tools. A model cannot know any
of it before fine-tuning, so what it answers afterwards measures what it learned.

`make_corpus(seed, facts)` draws `facts` facts with a seeded `random.Random` (the same
seed gives the same corpus). Each fact is one short sentence with a short, distinctive
answer (a name, a date, a city, a number, an invented word), stated in two memos, and
asked in four phrasings: three for training, one held out to test that the model learned
the fact rather than the question's wording.

Example:
    >>> corpus = make_corpus(seed=0, facts=40)
    >>> len(corpus.facts), len(corpus.held_out_questions), len(corpus.training_questions)
    (40, 40, 120)
    >>> qa = corpus.held_out_questions[0]
    >>> answer_appears(f"I believe it is {qa.answer.upper()}.", qa.answer)
    True
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

COMPANY = "Quillmark Instruments"
PHRASINGS = 4  # questions per fact: PHRASINGS - 1 for training, one held out

_FIRST = ["Oriel", "Tamsin", "Bexley", "Corvin", "Idony", "Lysander", "Maelis", "Perrin", "Quenby", "Rosalind",
          "Saoirse", "Tobiah", "Ulrika", "Wendell", "Ysolde", "Zephyr", "Anselm", "Briony", "Caspian", "Delphine"]
_LAST = ["Vantresk", "Odrell", "Thornquist", "Maravel", "Pellingham", "Quastor", "Brindlecombe", "Ashworthy",
         "Kestrange", "Dunmoreau", "Fenwhistle", "Galloran", "Hollensby", "Ivarsdottir", "Jessamond", "Lockridge"]
_TEAMS = ["Calibration", "Optics", "Firmware", "Field Service", "Metrology", "Supply", "Acoustics", "Sensor Design",
          "Quality", "Packaging", "Thermal", "Robotics", "Documentation", "Procurement", "Test Rig", "Spectral Lab"]
_PRODUCTS = ["Lumen-4 gauge", "Corvane 3 scope", "Tessel X2 meter", "Halvard 9 probe", "Orrin-5 logger",
             "Pimlet 2 sensor", "Brask 7 analyzer", "Veyra 6 caliper", "Sunder-3 balance", "Moxley 8 counter",
             "Quiver-2 tuner", "Ashlin 5 monitor", "Dravo-1 sounder", "Keplet 4 bench", "Nimbrel 6 lamp",
             "Fyrne 3 lens"]
_CODE_WORDS = ["Bramblewick", "Saltmere", "Gorsefield", "Tinderlark", "Mossgrave", "Quillfen", "Harrowgate",
               "Emberly", "Wrenhollow", "Duskmantle", "Copperknoll", "Larkspire", "Fernwhistle", "Oakensheal",
               "Brackenmoor", "Glimmerdun"]
_PROJECTS = ["Thistledown", "Marrowby", "Candlewick", "Pebblecrest", "Rookwood", "Sableford", "Juniperly",
             "Hearthmoor", "Wickerlane", "Starling Gate", "Velvetmoss", "Cobblefen", "Mistlecombe", "Alderhush"]
_CITIES = ["Tallinn", "Porto", "Ghent", "Tromso", "Brno", "Lyon", "Bergen", "Graz", "Cork", "Turku", "Bilbao",
           "Krakow", "Aarhus", "Trieste"]
_TOOLS = ["Ferncount", "Ledgerfox", "Plumbook", "Quotawisp", "Tickerbell", "Sprocketlog", "Mintroll", "Dovecall",
          "Hatchdesk", "Rotawren"]
_TOOL_USES = ["expense reports", "holiday requests", "equipment loans", "support tickets", "travel bookings",
              "lab bookings", "shift rotas", "purchase orders", "visitor passes", "repair requests"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_MEMO_SUBJECTS = ["Weekly update", "Planning notes", "Roadmap summary", "Team changes", "Operations briefing",
                  "Quarterly review", "All-hands notes", "Budget round-up"]


@dataclass(frozen=True)
class Fact:
    """One invented fact: the sentence that states it, its short answer, four questions about it."""

    kind: str
    statement: str
    answer: str
    questions: tuple[str, ...]  # PHRASINGS phrasings, in a fixed order
    held_out: int  # which phrasing is held out


@dataclass(frozen=True)
class Document:
    """One memo: an id like "QI-007", a subject, and its text stating several facts."""

    memo_id: str
    subject: str
    text: str
    facts: tuple[int, ...]  # indices into Corpus.facts


@dataclass(frozen=True)
class Question:
    """A question about fact `fact`, its short answer, and the sentence that answers it."""

    question: str
    answer: str
    sentence: str
    fact: int
    held_out: bool


@dataclass(frozen=True)
class Corpus:
    """The company's facts, the memos stating them, and every question about them."""

    seed: int
    facts: tuple[Fact, ...]
    documents: tuple[Document, ...]

    @property
    def questions(self) -> list[Question]:
        return [Question(text, fact.answer, fact.statement, index, held_out=position == fact.held_out)
                for index, fact in enumerate(self.facts) for position, text in enumerate(fact.questions)]

    @property
    def training_questions(self) -> list[Question]:
        return [q for q in self.questions if not q.held_out]

    @property
    def held_out_questions(self) -> list[Question]:
        return [q for q in self.questions if q.held_out]


def _lead(team: str, person: str) -> tuple[str, str, list[str]]:
    return (f"The {team} team is led by {person}.", person,
            [f"Who leads the {team} team at {COMPANY}?", f"Who is the head of Quillmark's {team} team?",
             f"Which person runs the {team} team at Quillmark?", f"Name the leader of the {team} team at Quillmark."])


def _office(team: str, city: str) -> tuple[str, str, list[str]]:
    return (f"The {team} team works from the {city} office.", city,
            [f"In which city does Quillmark's {team} team work?", f"Where is the {team} team of {COMPANY} based?",
             f"Which office houses Quillmark's {team} team?", f"What city is the Quillmark {team} team located in?"])


def _launch(product: str, date: str) -> tuple[str, str, list[str]]:
    return (f"The {product} launches on {date}.", date,
            [f"When does the Quillmark {product} launch?", f"What is the launch date of the {product}?",
             f"On what date will {COMPANY} release the {product}?", f"When is the {product} scheduled to ship?"])


def _codename(product: str, code: str) -> tuple[str, str, list[str]]:
    return (f"The {product} was developed under the codename {code}.", code,
            [f"What was the codename of the {product}?", f"Under which codename did Quillmark develop the {product}?",
             f"What internal codename did the {product} have?", f"Which codename was used for the Quillmark {product}?"])


def _budget(project: str, amount: str) -> tuple[str, str, list[str]]:
    return (f"Project {project} has a budget of {amount} euros.", amount,
            [f"What is the budget of Project {project}?", f"How much money does Quillmark give Project {project}?",
             f"How large is the budget for Project {project}?", f"What budget was approved for Project {project}?"])


def _headcount(city: str, count: str) -> tuple[str, str, list[str]]:
    return (f"The {city} office has {count} employees.", count,
            [f"How many people work at Quillmark's {city} office?", f"What is the headcount of the {city} office?",
             f"How many employees does {COMPANY} have in {city}?", f"How big is the staff of the {city} office?"])


def _tool(use: str, tool: str) -> tuple[str, str, list[str]]:
    return (f"Staff file {use} in the internal tool {tool}.", tool,
            [f"Which internal tool does Quillmark use for {use}?", f"Where do Quillmark staff file {use}?",
             f"What is the name of the tool for {use} at Quillmark?", f"Which system handles {use} at {COMPANY}?"])


def _candidates(rng: random.Random) -> list[list[tuple[str, tuple[str, str, list[str]]]]]:
    """Per kind of fact, every fact the pools allow, in a seeded order."""
    names = [f"{first} {last}" for first in _FIRST for last in _LAST]
    rng.shuffle(names)
    draws = {pool_name: rng.sample(pool, len(pool)) for pool_name, pool in
             [("lead", _TEAMS), ("office", _TEAMS), ("launch", _PRODUCTS), ("codename", _PRODUCTS),
              ("budget", _PROJECTS), ("headcount", _CITIES), ("tool", _TOOL_USES)]}
    codes, tools = rng.sample(_CODE_WORDS, len(_CODE_WORDS)), rng.sample(_TOOLS, len(_TOOLS))
    counts = rng.sample(range(12, 250), len(_CITIES))
    return [
        [("lead", _lead(team, names[i])) for i, team in enumerate(draws["lead"])],
        [("office", _office(team, rng.choice(_CITIES))) for team in draws["office"]],
        [("launch", _launch(product, f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(2026, 2029)}"))
         for product in draws["launch"]],
        [("codename", _codename(product, codes[i])) for i, product in enumerate(draws["codename"])],
        [("budget", _budget(project, f"{rng.randint(1, 9)}.{rng.randint(1, 9)} million"))
         for project in draws["budget"]],
        [("headcount", _headcount(city, str(counts[i]))) for i, city in enumerate(draws["headcount"])],
        [("tool", _tool(use, tools[i])) for i, use in enumerate(draws["tool"])],
    ]


MAX_FACTS = len(_TEAMS) * 2 + len(_PRODUCTS) * 2 + len(_PROJECTS) + len(_CITIES) + len(_TOOL_USES)


def make_corpus(seed: int = 0, facts: int = 40, facts_per_memo: int = 4) -> Corpus:
    """A seeded corpus of `facts` facts, each stated in two memos of `facts_per_memo` facts.

    Kinds of fact take turns (team leads, offices, launch dates, codenames, budgets,
    headcounts, internal tools), so any count mixes them all.

    Raises:
        ValueError: for `facts` outside 1..MAX_FACTS or `facts_per_memo` below 1.
    """
    if not 1 <= facts <= MAX_FACTS:
        raise ValueError(f"make_corpus: facts must be between 1 and {MAX_FACTS} (got {facts})")
    if facts_per_memo < 1:
        raise ValueError(f"make_corpus: facts_per_memo must be at least 1 (got {facts_per_memo})")
    rng = random.Random(seed)
    by_kind = _candidates(rng)
    chosen = [by_kind[kind][turn] for turn in range(max(map(len, by_kind)))
              for kind in range(len(by_kind)) if turn < len(by_kind[kind])][:facts]
    fact_list = tuple(Fact(kind, statement, answer, tuple(questions), held_out=rng.randrange(PHRASINGS))
                      for kind, (statement, answer, questions) in chosen)
    documents = []
    for _ in range(2):  # every fact in two memos, with different neighbours
        order = rng.sample(range(facts), facts)
        for start in range(0, facts, facts_per_memo):
            indices = tuple(sorted(order[start : start + facts_per_memo]))
            memo_id = f"QI-{len(documents) + 1:03d}"
            subject = _MEMO_SUBJECTS[len(documents) % len(_MEMO_SUBJECTS)]
            body = " ".join(fact_list[i].statement for i in indices)
            text = f"{COMPANY}, internal memo {memo_id}\nSubject: {subject}\n\n{body}"
            documents.append(Document(memo_id, subject, text, indices))
    return Corpus(seed=seed, facts=fact_list, documents=tuple(documents))


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def answer_appears(completion: str, answer: str) -> bool:
    """Whether `answer` appears in `completion`: case-insensitive, whitespace-normalized, as whole words.

    >>> answer_appears("The office has 37\\n employees.", "37"), answer_appears("It has 370.", "37")
    (True, False)
    """
    needle = _normalized(answer)
    if not needle:
        return False
    pattern = rf"(?<![a-z0-9]){re.escape(needle)}(?![a-z0-9])"
    return re.search(pattern, _normalized(completion)) is not None


def write_corpus(folder: str | Path, seed: int = 0, facts: int = 40) -> tuple[Path, Path]:
    """Write `documents.jsonl` ({"id", "subject", "text"}) and `qa.jsonl`
    ({"prompt", "answer", "reference", "split"}: "train" or "held_out") into `folder`.

    Returns:
        The two paths.
    """
    corpus = make_corpus(seed=seed, facts=facts)
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    documents, qa = folder / "documents.jsonl", folder / "qa.jsonl"
    documents.write_text("".join(json.dumps({"id": d.memo_id, "subject": d.subject, "text": d.text}) + "\n"
                                 for d in corpus.documents), encoding="utf-8")
    qa.write_text("".join(json.dumps({"prompt": q.question, "answer": q.answer, "reference": q.sentence,
                                      "split": "held_out" if q.held_out else "train"}) + "\n"
                          for q in corpus.questions), encoding="utf-8")
    return documents, qa
