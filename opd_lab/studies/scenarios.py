"""Lab scenarios: each sets up one condition under which the seed makes a claim.

The seed (on-policy distillation, Thinking Machines 2025) claims that OPD reaches a
teacher's level in far fewer gradient steps than RL and with far less compute than
off-policy distillation (SFT on teacher samples), *when* the teacher is strong, the
student has the foundation but not the skill, answers are long, and so on. A scenario
is a documented lab recipe (task, model sizes, the teacher's data, the base student's
foundation) plus the settings `opd-lab compare` uses on it (step budget, batch,
learning-rate grid). Build one with `opd-lab lab build --scenario NAME`; its models are
the specs `lab:NAME`.

Each scenario's measured verdict is in docs/claims.md, generated from compare reports.

Example:
    >>> get_scenario("weak-teacher").recipe().task
    'addition-careless'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # opd_lab.lab imports torch; the CLI lists scenarios without it
    from opd_lab.lab import LabRecipe


@dataclass(frozen=True)
class Scenario:
    """A lab recipe for one of the seed's conditions, and how to compare methods on it."""

    name: str
    condition: str
    """The seed's condition this scenario sets up, in a sentence."""
    claims: tuple[str, ...]
    """Claim ids (see `CLAIMS`) this scenario tests."""
    recipe_changes: dict = field(default_factory=dict)
    """LabRecipe fields that differ from the defaults."""
    steps: int = 300
    """Step budget of every compare run (a run stops earlier once it closes 95% of the gap)."""
    batch_size: int = 64
    """Sequences per step, the same for every method (RL: a quarter of the prompts, 4 samples each)."""
    prompt_pool: int = 0
    """0: fresh prompts every step; N: every method reuses the same N prompts, and SFT
    trains on one fixed teacher sample per prompt (off-policy distillation)."""
    learning_rates: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4)
    """The sweep grid, the same for every method."""
    sweep_steps: int = 60
    variants: tuple[str, ...] = ()
    """Arms beyond RL, SFT and OPD that every comparison on this scenario runs (`compare.VARIANTS`)."""
    run_changes: dict = field(default_factory=dict)
    """RunConfig fields every run of the comparison sets (e.g. a noisy teacher)."""
    lab: str = ""
    """The lab it uses when it shares another scenario's (empty: its own, named after it)."""
    eval_every: int = 10
    eval_count: int = 500
    """Held-out problems per evaluation: 500 keeps the standard error near 2 points at 50%."""

    def recipe(self, quick: bool = False) -> LabRecipe:
        """The lab recipe: its task's (`LabRecipe.for_task`) with this scenario's changes; `quick` makes tiny models in
        seconds (for tests and CI)."""
        from opd_lab.lab import TINY_RECIPE, LabRecipe

        changes = {**self.recipe_changes, **(TINY_RECIPE if quick else {})}
        return LabRecipe.for_task(name=(self.lab or self.name) + ("-quick" if quick else ""), **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The seed's claims, in the order of docs/claims.md.
CLAIMS = {
    "steps-vs-rl": "OPD reaches the teacher's level in far fewer gradient steps than RL (seed: 7-10x)",
    "compute-vs-sft": "OPD needs far less total compute than off-policy distillation (seed: 9-30x)",
    "mode-seeking": "Reverse KL commits to one of the teacher's strategies where forward KL (SFT) averages them",
    "data-reuse": "OPD can train for several epochs on the same prompts (where SFT on a fixed dataset memorizes)",
    "foundation": "OPD needs a student with the foundation (it refines, it does not teach from scratch)",
    "strong-teacher": "OPD needs a strong teacher; with a weak one, RL with a verifier may win",
    "continual-learning": "OPD from the model's earlier self recovers a forgotten skill",
    "merging-experts": "OPD keeps two experts' skills where sequential training forgets",
    "recovery": "Where slips can be undone, OPD teaches the student to recover from its own mistakes, which SFT on "
                "the teacher's (almost slip-free) samples cannot (literature: DAgger; SCoRe)",
    "noisy-teacher": "With a noisy teacher, OPD (zero-forcing reverse KL) beats SFT on the teacher's samples at "
                     "temperature 1 (literature: Sriraman et al. 2026; GKD)",
}

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario(
        name="baseline",
        condition="The lab as it was: 3-digit addition with written carries (about 31 completion tokens), a "
                  "strong teacher and a base student with the foundation but not the skill.",
        claims=("steps-vs-rl", "compute-vs-sft"),
        recipe_changes=dict(task="addition"),
    ),
    Scenario(
        name="no-foundation",
        condition="A student without the foundation: the base student is the untrained initialization (0%), "
                  "the teacher is the strong 3-digit addition teacher.",
        claims=("foundation",),
        recipe_changes=dict(task="addition", student_steps=0),
        # From the untrained initialization every method needs the rates and steps that train a model from
        # scratch (the lab's own base student: 700 steps at 3e-3); at 1e-5..3e-4 none learned anything in 200 steps.
        steps=600, learning_rates=(3e-4, 1e-3, 3e-3),
    ),
    Scenario(
        name="noisy-teacher",
        condition="A noisy teacher: the baseline's teacher mixed with uniform noise, p = 0.97 p_teacher + 0.03 / V "
                  "per token, in OPD's scores and in SFT's samples. Its greedy answers stay those of the clean "
                  "teacher; its samples slip. The target is the clean teacher; accuracy at temperature 1 is the "
                  "measure where zero-forcing reverse KL should beat SFT on the noisy samples.",
        claims=("noisy-teacher",),
        recipe_changes=dict(task="addition"),
        lab="baseline",
        variants=("sft-greedy",),
        run_changes=dict(teacher_noise=0.03),
    ),
    Scenario(
        name="retry",
        condition="Recoverable slips: 3-digit addition with a retract token `!` (\"the step I just wrote is wrong; I "
                  "redo it\"); only the final answer is verified. The teacher was trained on solutions in which 30% of "
                  "the steps are first written wrong and retracted (the wrong copies masked out of the loss), so it "
                  "retracts slips but rarely makes them; the base student saw 10% of its examples in that format.",
        claims=("recovery",),
        recipe_changes=dict(task="addition-retry", student_retry_fraction=0.1),
    ),
    Scenario(
        name="weak-teacher",
        condition="A weak teacher: trained on worked solutions that forget the carry into the last column, it is "
                  "right only when that column gets no carry (about half the problems); the verifier checks the "
                  "true sum.",
        claims=("strong-teacher",),
        recipe_changes=dict(task="addition-careless"),  # its task's recipe has no teacher gate (lab.TASK_RECIPES)
        steps=200,
    ),
)}


def get_scenario(name: str) -> Scenario:
    """The scenario called `name`; the error lists the known ones."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}: use one of {', '.join(SCENARIOS)}")
    return SCENARIOS[name]
