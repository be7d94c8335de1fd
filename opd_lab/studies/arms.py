"""RL vs SFT vs OPD with the same budget: the configs of the textbook comparison.

One definition serves the app's one-click comparison, the benchmark
(`python -m bench.compare_methods`) and the workshop notebook, so all three compare
the same thing: the same optimizer steps and the same number of sequences per step.
RL samples `RL_SAMPLES_PER_PROMPT` completions per prompt (its group-normalized
advantage needs several), so it sees that many times fewer prompts per step.

Example:
    >>> [c.method for c in method_configs(steps=60, sequences_per_step=32)]
    ['rl', 'sft', 'opd']
    >>> [c.batch_size * c.samples_per_prompt for c in method_configs(60, 32)]
    [32, 32, 32]
"""

from __future__ import annotations

from opd_lab.config import RL_SAMPLES_PER_PROMPT, ConfigError, RunConfig

COMPARISON_PREFIX = "compare"


def method_configs(steps: int, sequences_per_step: int, base: RunConfig | None = None,
                   name_prefix: str = COMPARISON_PREFIX) -> list[RunConfig]:
    """RL, SFT and OPD configs that differ only in method (and RL's prompts per step).

    Args:
        steps: optimizer steps of each run.
        sequences_per_step: sequences each method trains on per step; a multiple of
            `RL_SAMPLES_PER_PROMPT`.
        base: the shared settings (task, evaluation schedule, seed, ...); defaults
            to `RunConfig()`.
        name_prefix: runs are named `<prefix>-rl`, `<prefix>-sft`, `<prefix>-opd`.

    Raises:
        ConfigError: for a batch that RL cannot split evenly, or any bad value.
    """
    if (not isinstance(sequences_per_step, int) or sequences_per_step < RL_SAMPLES_PER_PROMPT
            or sequences_per_step % RL_SAMPLES_PER_PROMPT):
        raise ConfigError(f"batch_size: must be a multiple of {RL_SAMPLES_PER_PROMPT} so that RL, with "
                          f"{RL_SAMPLES_PER_PROMPT} samples per prompt, samples as many sequences per step "
                          f"(got {sequences_per_step})")
    base = base or RunConfig()
    return [base.with_overrides(name=f"{name_prefix}-{arm}", steps=steps, on_policy_fraction=1.0, reward_coef=0.0,
                                **arm_overrides(arm, sequences_per_step))
            for arm in ("rl", "sft", "opd")]


# Arms beyond the three methods that `opd-lab compare --variants` can add.
VARIANTS: dict[str, dict] = {
    "opd-full": {"method": "opd", "estimator": "full"},  # the exact reverse KL over the vocabulary
    "opd-clipped": {"method": "opd", "estimator": "clipped"},  # the sampled advantage clamped
    "opd-topk": {"method": "opd", "estimator": "topk"},  # reverse KL over the student's top-k, renormalized
    "sft-greedy": {"method": "sft", "sft_source": "teacher_greedy"},  # sequence-level KD: the teacher's greedy answers
}


def arm_of(config: RunConfig) -> str:
    """The arm a comparison's config belongs to (the inverse of `arm_overrides`)."""
    for arm, fields in VARIANTS.items():
        if all(getattr(config, name) == value for name, value in fields.items()):
            return arm
    return config.method


def arm_overrides(arm: str, sequences_per_step: int, prompt_pool: int = 0) -> dict:
    """The config fields that define one arm of a comparison at `sequences_per_step`.

    RL samples `RL_SAMPLES_PER_PROMPT` completions for a fraction of the prompts; with
    a prompt pool, SFT trains on a fixed teacher dataset (one sample per pool prompt),
    the seed's off-policy distillation.
    """
    if arm == "rl":
        return {"method": "rl", "samples_per_prompt": RL_SAMPLES_PER_PROMPT,
                "batch_size": sequences_per_step // RL_SAMPLES_PER_PROMPT, "prompt_pool": prompt_pool}
    if arm == "sft":
        return {"method": "sft", "samples_per_prompt": 1, "batch_size": sequences_per_step, "prompt_pool": prompt_pool,
                "sft_source": "teacher_dataset" if prompt_pool else "teacher"}
    if arm in VARIANTS:
        return {**arm_overrides(VARIANTS[arm]["method"], sequences_per_step, prompt_pool), **VARIANTS[arm]}
    if arm == "opd":
        return {"method": "opd", "samples_per_prompt": 1, "batch_size": sequences_per_step, "prompt_pool": prompt_pool}
    raise ConfigError(f"unknown arm {arm!r}: use rl, sft, opd or one of {', '.join(VARIANTS)}")
