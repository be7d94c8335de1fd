"""Checks of a run's inputs, all made before its folder is created.

A run launched in the background that fails at once on a bad input leaves a failed
run folder behind and tells the user nothing until they look. So every input that can
be checked without training is checked first, and a run folder is created only once
all of these pass:

- paths: a task file and local model folders become absolute, since a launched run
  works in its own folder (`RunConfig.with_absolute_paths`);
- the data dir: it can be created and written;
- the experiment trackers of `report_to`: installed, and their directory writable
  (`tracking.check_trackers`);
- the task: it loads (a task file must be UTF-8; errors name the file and the line);
- the models: the student's and every teacher's tokenizer and config load (a missing
  path, an unreachable hub id, a corrupt config) and each teacher's tokenizer matches
  the student's (in a run with several teachers, an error names the teacher and its task);
- prompt lengths: every prompt plus `max_new_tokens` fits the models' context. A
  prompt that does not is refused, never silently truncated: a cut prompt asks
  another question.

Numbers, choices, names and duplicate config keys are already refused by `RunConfig`.

Example:
    >>> config = check_run_inputs(RunConfig(task="my_task.jsonl"))  # doctest: +SKIP
    >>> Path(config.task).is_absolute()  # doctest: +SKIP
    True
"""

from __future__ import annotations

from opd_lab.config import ConfigError, RunConfig
from opd_lab.models import PairMismatchError, check_pair_compatible, context_length, load_tokenizer
from opd_lab.paths import check_writable, runs_dir
from opd_lab.tracking import check_trackers
from opd_lab.tasks import JsonlTask, Task, get_task

# Built-in tasks generate prompts; this many of them are measured.
GENERATED_PROMPTS_CHECKED = 64


def check_run_inputs(config: RunConfig) -> RunConfig:
    """Check everything a run of `config` needs; return the config with absolute paths.

    Raises:
        DataDirError: the data dir cannot be written.
        ConfigError: a tracker of `report_to` is not installed or cannot write its directory.
        ValueError: the task cannot be loaded (naming the file and line).
        ModelLoadError: a model cannot be loaded, or the two tokenizers differ.
        ConfigError: a prompt is too long for the models' context.
    """
    config = config.with_absolute_paths()
    check_writable(runs_dir())
    check_trackers(config)
    student = None
    for task_name, teacher in config.teacher_map().items():  # one task, or each of a mixture with its teacher
        task = get_task(task_name, regex=config.task_regex or None)
        check_rewards_possible(config, task)
        teacher_tokenizer = load_tokenizer(teacher, "teacher", task_name, config.trust_remote_code)
        student = student or load_tokenizer(config.student, "student", config.task, config.trust_remote_code)
        try:
            check_pair_compatible(teacher_tokenizer, student)
        except PairMismatchError as error:
            if len(config.run_tasks()) == 1:
                raise
            raise PairMismatchError(f"teacher {teacher} (task {task_name}): {error}") from None
        known = [length for length in (context_length(teacher, "teacher", task_name, config.trust_remote_code),
                                       context_length(config.student, "student", config.task,
                                                      config.trust_remote_code)) if length]
        if known:
            check_prompt_lengths(task, student, min(known), config.resolved_max_new_tokens(task.max_new_tokens))
    return config


def check_rewards_possible(config: RunConfig, task: Task, warn=None) -> None:
    """Refuse a run that learns from rewards (RL, or a reward weight) on a task file none
    of whose rows can be verified (no "answer", no "checks"): every reward would be 0 and
    it would learn nothing. Warn (on stderr) when only some rows lack one.

    Raises:
        ConfigError: naming the file, the keys its rows do have, and what to do.
    """
    import sys

    if not isinstance(task, JsonlTask) or (config.method != "rl" and not config.reward_coef):
        return
    problems = {p.prompt: p for p in task.train_split + task.eval_split}.values()  # a small file's eval rows repeat
    unverifiable = [p for p in problems if not p.checks and p.prompt in task.unanswered]
    who = "RL" if config.method == "rl" else f"reward_coef={config.reward_coef:g}"
    if len(unverifiable) == len(problems):
        keys = ", ".join(sorted(task.keys_seen)) or "none"
        raise ConfigError(f"task: {task.path}: no row has an \"answer\" or \"checks\" (the keys found: {keys}), "
                          f"so {who} would get reward 0 on every sample; name the answer key \"answer\", "
                          "or use OPD, which needs no answers")
    if unverifiable:
        (warn or (lambda text: print(text, file=sys.stderr)))(
            f"opd-lab: warning: task {task.path.name}: {len(unverifiable)} of {len(problems)} rows have no "
            f"\"answer\" or \"checks\"; {who} gets reward 0 on them")


def check_prompt_lengths(task: Task, tokenizer, context: int, max_new_tokens: int) -> None:
    """Refuse a task whose prompts, with `max_new_tokens` of completion, exceed `context` tokens.

    Raises:
        ConfigError: naming the longest prompt (its file and line for a task file) and what to change.
    """
    room = context - max_new_tokens
    if room < 1:
        raise ConfigError(f"max_new_tokens: {max_new_tokens} leaves no room for a prompt in the models' "
                          f"context of {context} tokens; lower it")
    problems = (task.train_split + task.eval_split if isinstance(task, JsonlTask)
                else task.eval_problems(GENERATED_PROMPTS_CHECKED))
    prompts = list(dict.fromkeys(problem.prompt for problem in problems))
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    too_long = [(length, prompt) for length, prompt in zip(lengths, prompts) if length > room]
    if not too_long:
        return
    length, prompt = max(too_long, key=lambda pair: pair[0])
    where = (f"{task.path}, line {task.line_of[prompt]}" if isinstance(task, JsonlTask)
             else f"task {task.name}")
    raise ConfigError(f"task: {where}: the prompt is {length} tokens, but the models' context of {context} tokens "
                      f"leaves {room} after max_new_tokens={max_new_tokens} ({len(too_long)} prompts too long); "
                      "refused, not truncated: shorten those prompts or lower max_new_tokens")
