"""Tasks on the fictional company of `opd_lab.company`: learn its memos, answer questions.

- `company-docs` (SFT data): training rows ask for a memo ("Recite ... memo QI-007.")
  or a training question; each row's `reference` is the memo's text or the sentence
  that answers the question. Its held-out evaluation is the held-out questions.
- `company-qa`: the same questions without the memos; training rows are the training
  phrasings, evaluation the held-out phrasing of every fact.

A completion is correct when the fact's answer appears in it (case-insensitive,
whitespace-normalized, whole words); the reward is 1 when correct, else 0.

Example:
    >>> task = CompanyTask(documents=False)
    >>> problem = task.eval_problems(1)[0]
    >>> task.verify(problem, f"It is {problem.answer}.").correct
    True
"""

from __future__ import annotations

import random

from opd_lab.company import COMPANY, answer_appears, make_corpus
from opd_lab.tasks.base import ListedTask, Problem, Verdict


class CompanyTask(ListedTask):
    """Questions (and, with `documents`, memos to recite) about the fictional company."""

    def __init__(self, documents: bool, seed: int = 0, facts: int = 40):
        corpus = make_corpus(seed=seed, facts=facts)
        self.name = "company-docs" if documents else "company-qa"
        self.description = (f"{'memos of and ' if documents else ''}questions about {COMPANY}, a fictional company; "
                            "held out: a new phrasing of each question")
        self.max_new_tokens = 160 if documents else 48  # a memo is about 100 tokens; an answer a sentence
        self.train_split = [Problem(prompt=q.question, answer=q.answer, reference=q.sentence)
                            for q in corpus.training_questions]
        if documents:
            self.train_split += [Problem(prompt=f"Recite the {COMPANY} internal memo {d.memo_id}.",
                                         answer=d.text, reference=d.text) for d in corpus.documents]
        self.eval_split = [Problem(prompt=q.question, answer=q.answer, reference=q.sentence)
                           for q in corpus.held_out_questions]

    def train_problems(self, count: int, rng: random.Random) -> list[Problem]:
        return [rng.choice(self.train_split) for _ in range(count)]

    def eval_problems(self, count: int, seed: int = 0) -> list[Problem]:
        return self.eval_split[:count]

    def verify(self, problem: Problem, completion: str) -> Verdict:
        correct = answer_appears(completion, problem.answer)
        return Verdict(reward=float(correct), correct=correct, parsed=completion.strip())
