"""The `opd-lab` command line: a thin caller of the library.

    opd-lab lab build [--task addition] [--force]    build the offline lab
    opd-lab eval MODEL [--task addition]             held-out accuracy of a model
    opd-lab train [CONFIG] [--method opd ...]        train in the foreground
    opd-lab train --processes 2 [--method opd ...]   data-parallel, through accelerate launch
    opd-lab launch [CONFIG] [--processes N] [...]    start a detached run, print its id
    opd-lab compare [--scenario baseline] [--quick]  RL vs SFT vs OPD, several seeds, a verdict
    opd-lab compare --scenario two-experts [--quick] several teachers, one student (opd_lab/studies/two_experts.py)
    opd-lab preflight --teacher T --student S        will OPD work for this pair? (exit 3: no-go)
    opd-lab recipe continual-learning [--setting cpu] a recipe on a real model (SmolLM2)
    opd-lab runs                                     list runs
    opd-lab stop RUN | opd-lab resume RUN            stop gracefully / continue
    opd-lab delete RUN                               remove a run that is not running
    opd-lab export RUN --to tensorboard [--dir D]    a finished run into an experiment tracker
    opd-lab app [--host 127.0.0.1] [--port 7860]     the web app (added by `opd_lab_app.cli`)

The training flags are generated from `RunConfig`'s fields; a YAML/JSON config file
may set them too (flags win). Every error ends the command with one line on stderr
that names the file or field and what to do, and exit status 2 (a bad input or
request) or 1 (anything else); `--debug` also prints the traceback, and a run's own
traceback is in its log.txt. `--data-dir` (or `$OPD_LAB_HOME`) picks where the lab
and the runs live. The library never imports the app: the `opd-lab` console script is
`opd_lab_app.cli.main`, which calls `main` here with the `app` subcommand as an extra
`Command`; `python -m opd_lab` (what launched runs execute) has no `app` subcommand.

The command line answers at once: this module imports no torch, transformers or
gradio, and `--help`, `runs`, `stop`, `delete` and the refusals of bad flags never load
them (each command's handler imports what it needs; tests/test_cli_startup.py checks
it). Every command silences third-party progress bars (`opd_lab.quiet`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from opd_lab.config import TRACKERS, ConfigError, RunConfig, command_line, config_fields, flag_of
from opd_lab.quiet import silence_third_party
from opd_lab.studies import compare_study
from opd_lab.studies.arms import VARIANTS
from opd_lab.studies.recipes import RECIPES, SETTINGS
from opd_lab.studies.scenarios import SCENARIOS, get_scenario
from opd_lab.studies.stages import RESULTS_FILE
from opd_lab.tasks import BUILTIN_TASKS, DEFAULT_TASK


@dataclass(frozen=True)
class Command:
    """A subcommand that a caller of the library adds to `opd-lab` (the app adds `app`)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="a YAML or JSON config file (optional)")
    group = parser.add_argument_group("run config (see RunConfig)")
    for spec in config_fields():
        flag = flag_of(spec.name)
        help_text = spec.metadata["help"] + f" (default: {spec.default!r})"
        if spec.type == "bool":
            group.add_argument(flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif spec.name in REPEATABLE:
            group.add_argument(flag, dest=spec.name, action="append", default=None, metavar=spec.type.upper(),
                               help=f"{help_text}. Repeat it as {flag} {REPEATABLE[spec.name][1]} for several tasks.")
        else:
            group.add_argument(flag, dest=spec.name, default=None, metavar=spec.type.upper(),
                               choices=spec.metadata.get("choices"), help=help_text)


# Flags that may be repeated as TASK=VALUE, filling a per-task field: --teacher addition=lab:addition
# --teacher sorting=lab:sorting sets `teachers`; --task addition=0.5 --task sorting=0.5 sets `task_weights`.
REPEATABLE = {"teacher": ("teachers", "TASK=SPEC"), "task": ("task_weights", "TASK=WEIGHT")}


def _is_task_pair(value: str) -> bool:
    task = value.partition("=")[0].strip()
    return "=" in value and (task in BUILTIN_TASKS or task.endswith(".jsonl"))


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config from an optional file plus the flags that were given."""
    base = RunConfig.from_file(args.config).to_dict() if args.config else {}
    for spec in config_fields():
        value = getattr(args, spec.name, None)
        if spec.name in REPEATABLE and value is not None:
            plain = [item for item in value if not _is_task_pair(item)]
            if len(plain) > 1:
                raise ConfigError(f"{spec.name}: given {len(plain)} times; repeat it only as "
                                  f"{flag_of(spec.name)} {REPEATABLE[spec.name][1]}")
            pairs = [item for item in value if _is_task_pair(item)]
            if pairs:
                base[REPEATABLE[spec.name][0]] = ",".join(pairs)
            value = plain[0] if plain else None
        if value is not None:
            base[spec.name] = value
    if args.task and all(_is_task_pair(item) for item in args.task):
        base.pop("task", None)  # --task TASK=WEIGHT only: the run's task is the mixture's first
    return RunConfig.from_dict(base)


def build_parser(extra_commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opd-lab", description="On-policy distillation lab.")
    parser.add_argument("--data-dir", help="where the lab and runs live (default: $OPD_LAB_HOME or ~/.cache/opd-lab)")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    lab = commands.add_parser("lab", help="the built-in offline lab")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True)
    build = lab_commands.add_parser("build", help="train the lab's teacher and base student (cached)")
    build.add_argument("--task", default=DEFAULT_TASK, help=f"built-in task (default: {DEFAULT_TASK})")
    build.add_argument("--scenario", help="build a lab scenario instead (see docs/claims.md): "
                       + ", ".join(SCENARIOS))
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true", help="rebuild even if a matching lab exists")
    build.add_argument("--threads", type=int, default=1,
                       help="torch threads to build on (default 1, on every machine: the thread count changes float "
                            "round-off, so the lab itself; another count, with --force, reproduces a lab built with it)")

    evaluate = commands.add_parser("eval", help="held-out accuracy of a model on a task")
    evaluate.add_argument("model", help="'lab-teacher', 'lab-student', a directory, a .gguf file, or a hub id")
    evaluate.add_argument("--task", default=DEFAULT_TASK)
    evaluate.add_argument("--count", type=int, default=200)
    evaluate.add_argument("--samples", type=int, default=0, help="also sample k answers per problem (pass@k)")

    for name, help_text in (("train", "train in the foreground"), ("launch", "start a detached background run")):
        sub = commands.add_parser(name, help=help_text)
        _add_config_flags(sub)
        sub.add_argument("--processes", type=int, default=None, metavar="N",
                         help="train on N data-parallel processes through `accelerate launch` "
                              "(GPUs, or CPU processes over gloo; docs in opd_lab/distributed.py)")
        if name == "train":
            sub.add_argument("--run-dir", help=argparse.SUPPRESS)
            sub.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)
            sub.add_argument("--owner-fd", type=int, help=argparse.SUPPRESS)  # the run's lock, from the launcher

    compare = commands.add_parser("compare", help="RL vs SFT vs OPD on a lab scenario: several seeds, a verdict")
    compare.add_argument("--scenario", default="baseline", choices=list(SCENARIOS) + ["two-experts"],
                         help="default: baseline; two-experts: multi-teacher OPD vs SFT, sequential OPD and RL "
                              "(opd_lab/studies/two_experts.py)")
    compare.add_argument("--protocol", default="from-base", choices=("from-base", "handoff"),
                         help="from-base: every method from the base student (default); handoff: SFT on fixed "
                              "datasets of 64..4096 teacher samples first, then SFT, OPD and RL from the plateau "
                              "(the seed's protocol, opd_lab/studies/handoff.py)")
    compare.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    compare.add_argument("--variants", default="", help="extra arms, comma-separated: " + ", ".join(VARIANTS))
    compare.add_argument("--quick", action="store_true", help="tiny models and budgets (seconds; for CI and notebooks)")
    compare.add_argument("--workers", type=int, default=2, help="runs trained at once, one thread each (default 2)")
    compare.add_argument("--prompt-pool", type=int, default=None,
                         help="every method reuses the same N prompts; SFT trains on one fixed teacher sample per prompt")
    compare.add_argument("--out", help="report folder (default: <data dir>/reports/<scenario>-<time>); a killed or "
                         "stopped comparison rerun with the same --out skips its finished stages and runs")
    compare.add_argument("--launched-by", help=argparse.SUPPRESS)  # the app's user who started it

    preflight = commands.add_parser(
        "preflight", help="will OPD work for this pair? measured in about a minute (exit 0: go or caution, 3: no-go)")
    preflight.add_argument("--teacher", required=True, help="teacher spec: lab, lab:SCENARIO, a directory, a .gguf, smollm2")
    preflight.add_argument("--student", required=True, help="student spec, as --teacher")
    preflight.add_argument("--task", help="task (default: the task of a lab:NAME spec's lab, else "
                           f"{DEFAULT_TASK})")
    preflight.add_argument("--problems", type=int, default=50, help="held-out problems and sampled prompts (default 50)")
    preflight.add_argument("--top-k", type=int, default=5, help="agreement counts sampled tokens in the teacher's "
                           "top-k (default 5)")
    preflight.add_argument("--seed", type=int, default=0)
    preflight.add_argument("--json", action="store_true", help="print the measurements and verdict as JSON")
    recipe = commands.add_parser("recipe", help="a recipe on a real model: " + ", ".join(RECIPES))
    recipe.add_argument("recipe", help=f"{', '.join(RECIPES)}, or a recipe file (YAML)")
    recipe.add_argument("--setting", default="auto", choices=SETTINGS,
                        help="the recipe's settings for this machine (auto: gpu with CUDA, else cpu; quick: a smoke test)")
    recipe.add_argument("--out", help="the recipe's folder; an unfinished one goes on from its last finished stage "
                        "(default: <data dir>/recipes/<recipe>-<setting>-<time>)")

    commands.add_parser("runs", help="list runs")
    delete = commands.add_parser("delete", help="remove a run's folder (refused while it runs)")
    delete.add_argument("run", help="run id (see opd-lab runs)")
    export = commands.add_parser("export", help="a run's config, metrics and samples into an experiment tracker")
    export.add_argument("run", help="run id (see opd-lab runs)")
    export.add_argument("--to", required=True, metavar="TRACKER",
                        help=f"comma-separated: {', '.join(TRACKERS)} (pip install 'opd-lab[track]')")
    export.add_argument("--dir", help="where the tracker writes (default: <data dir>/tracking)")
    commands.add_parser("batch-worker", help="(internal) trains the runs opd-lab compare hands it, one after another")
    for name, help_text in (("stop", "stop a run after its current step"), ("resume", "continue a stopped or failed run")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("run", help="run id (see opd-lab runs)")
        if name == "resume":
            sub.add_argument("--foreground", action="store_true", help="run in this terminal instead")
            sub.add_argument("--processes", type=int, default=None, metavar="N",
                             help="continue on N data-parallel processes (default: as many as it last used)")
            sub.add_argument("--from-scratch", action="store_true",
                             help="restart from step 0 (a run none of whose checkpoints loads); its old metrics, "
                                  "samples and checkpoints are kept aside in the run folder, not deleted")

    for command in extra_commands:
        sub = commands.add_parser(command.name, help=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run_command=command.run)
    return parser


def _eval(args) -> None:
    if args.count < 1:
        raise ConfigError(f"--count: must be at least 1 (got {args.count})")
    if args.samples < 0:
        raise ConfigError(f"--samples: must not be negative (got {args.samples})")
    from opd_lab.eval import evaluate
    from opd_lab.models import load_model
    from opd_lab.tasks import get_task

    spec, role = args.model, "student"
    if spec in ("lab-teacher", "lab-student"):
        spec, role = "lab", spec.split("-")[1]
    model, tokenizer = load_model(spec, role, args.task)
    result = evaluate(model, tokenizer, get_task(args.task), count=args.count,
                      samples_per_problem=args.samples, progress=True)
    print(f"greedy accuracy {result.accuracy:.1%} on {result.count} held-out problems, "
          f"mean completion length {result.mean_completion_length:.1f} tokens")
    if result.k:
        print(f"sampled accuracy {result.sampled_accuracy:.1%}, pass@{result.k} {result.pass_at_k:.1%}")


def _preflight(args) -> int:
    """`opd-lab preflight`: print the pair's measurements and verdict; 3 for no-go, else 0."""
    for flag, value in (("--problems", args.problems), ("--top-k", args.top_k)):
        if value < 1:
            raise ConfigError(f"{flag}: must be at least 1 (got {value})")
    import json

    from opd_lab.models import pick_device
    from opd_lab.pair_check import format_report, judge, measure_pair, report_dict, task_of_specs

    task = args.task or task_of_specs(args.teacher, args.student)
    measurements = measure_pair(args.teacher, args.student, task, problems=args.problems, top_k=args.top_k,
                                seed=args.seed, device=pick_device("auto"))
    verdict = judge(measurements)
    print(json.dumps(report_dict(measurements, verdict), indent=2) if args.json
          else format_report(measurements, verdict))
    return verdict.exit_code


def error_line(error: BaseException) -> str:
    """An error as the one line the CLI and the app show.

    A bad input or request (`ValueError`: ConfigError, ModelLoadError, RunError...;
    `OSError`, which names its file) is its own message; anything else is a bug or an
    environment problem, so its type is named too.

    Example:
        >>> error_line(ConfigError("steps: must be at least 1 (got 0)"))
        'steps: must be at least 1 (got 0)'
    """
    from opd_lab.paths import disk_full_line, is_disk_full

    if is_disk_full(error):
        return disk_full_line(error)
    lines = str(error).strip().splitlines()
    text = " ".join(line.strip() for line in lines[:1]) or type(error).__name__
    return text if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {text}"


def main(argv: list[str] | None = None, extra_commands: Sequence[Command] = (),
         early_sigterm: list | None = None) -> int:
    """Run one `opd-lab` command; its exit status.

    Args:
        early_sigterm: filled by a SIGTERM handler installed before the imports
            (`python -m opd_lab`); see `_obey_early_sigterm`.
    """
    args = build_parser(extra_commands).parse_args(argv)
    silence_third_party()
    if early_sigterm is not None and _obey_early_sigterm(args, early_sigterm):
        return 128 + signal.SIGTERM
    try:
        if args.data_dir:
            os.environ["OPD_LAB_HOME"] = str(Path(args.data_dir).expanduser().resolve())
        return _dispatch(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - the top level: every error becomes one line
        if args.debug:
            traceback.print_exc()
        user_error = isinstance(error, (ValueError, OSError))
        hint = "" if user_error or args.debug else " (run with --debug to see the traceback)"
        print(f"opd-lab: error: {error_line(error)}{hint}", file=sys.stderr)
        return 2 if user_error else 1


def _obey_early_sigterm(args, received: list) -> bool:
    """Hand SIGTERM back to its normal handling; whether the command must end now.

    A run's training process (`train --run-dir`) turns SIGTERM into its folder's STOP
    file until the training loop's own handler takes over, so a stop asked while it
    starts is a stop (state `stopped`), whatever instant it came. Any other command
    gets the default action back, and ends now if a SIGTERM already came.
    """
    run_dir = getattr(args, "run_dir", None) if args.command == "train" else None
    if run_dir:
        stop_file = Path(run_dir) / "STOP"
        signal.signal(signal.SIGTERM, lambda *_: stop_file.touch())
        if received:
            stop_file.touch()
        return False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return bool(received)


def _compare(args) -> int | None:
    """`opd-lab compare`: the study its scenario and protocol name (`opd_lab.studies.STUDIES`)."""
    from opd_lab import files
    from opd_lab.studies.comparison_report import STOPPED_FILE

    study = compare_study(args.scenario, args.protocol)
    run, settings = study.load(), study.settings_class()
    if study.name == "two-experts":
        folder = Path(run(settings(quick=args.quick), out=args.out)["folder"])
        print(f"report: {folder / 'report.md'}")
        return None
    if study.name == "handoff":
        folder = run(settings(scenario=args.scenario, seeds=args.seeds, quick=args.quick, workers=args.workers),
                     out=args.out)
        print(f"report: {folder / 'handoff.md'}")
        return None
    folder = run(settings(scenario=args.scenario, seeds=args.seeds, quick=args.quick, workers=args.workers,
                          variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
                          prompt_pool=args.prompt_pool), out=args.out, launched_by=args.launched_by)
    print(f"report: {folder / 'report.md'}")
    stopped = files.read_json(folder / STOPPED_FILE, default={}) or {}
    if stopped.get("stopped"):  # 128 + the signal's number, as a shell reports it
        return 130 if stopped["stopped"] == "Ctrl-C" else 143 if stopped["stopped"] == "SIGTERM" else 1
    return None


def _dispatch(args) -> int | None:
    from opd_lab import run_folder, runs

    if getattr(args, "run_command", None) is not None:
        return args.run_command(args)
    if args.command == "lab":
        from opd_lab.lab import LabRecipe, build_lab, format_summary

        if args.scenario:
            from dataclasses import replace

            recipe = replace(get_scenario(args.scenario).recipe(), seed=args.seed)
        else:
            recipe = LabRecipe.for_task(args.task, seed=args.seed)
        print(format_summary(build_lab(recipe, force=args.force, threads=args.threads)))
    elif args.command == "compare":
        return _compare(args)
    elif args.command == "recipe":
        from opd_lab.studies.recipes import run_recipe

        folder = run_recipe(args.recipe, args.setting, out=args.out)
        print(f"results: {folder / RESULTS_FILE}")
    elif args.command == "eval":
        _eval(args)
    elif args.command == "preflight":
        return _preflight(args)
    elif args.command == "train":
        config = None if args.run_dir else config_from_args(args)  # a bad flag is refused before torch loads
        from opd_lab import distributed, ownership
        from opd_lab.preflight import check_run_inputs

        if args.run_dir and args.processes is not None:  # own the run, start its processes, hand rank 0 the lock
            run_dir = Path(args.run_dir)
            owner = (ownership.adopt(run_dir, args.owner_fd) if args.owner_fd is not None
                     else runs.take_for_foreground(run_dir))
            return _accelerate_launch(args.processes, ["train", "--run-dir", str(run_dir)]
                                      + (["--no-progress"] if args.no_progress else []), owner)
        if args.processes is not None and not args.run_dir:  # start the processes; rank 0 of them creates the run
            return _accelerate_launch(args.processes, shlex.split(command_line(config.to_dict(), "train"))[1:])
        world = distributed.current()
        owner = None
        if args.run_dir:  # a launched or resumed run; a launcher may have handed over the run's lock
            run_dir = Path(args.run_dir)
            if args.owner_fd is not None:
                owner = ownership.adopt(run_dir, args.owner_fd)
            elif world.is_main and os.environ.get(ownership.HANDOVER_VAR):
                owner = ownership.receive(run_dir, os.environ[ownership.HANDOVER_VAR])
        else:  # rank 0 creates the run folder, owned from its first instant; the others are told where
            if world.is_main:
                run_dir, owner = ownership.create_owned_run(check_run_inputs(config))
                print(f"run {run_dir.name} in {run_dir}")
            run_dir = Path(world.broadcast(str(run_dir) if world.is_main else None))
        return _train_here(run_dir, owner, progress=not args.no_progress and world.is_main)
    elif args.command == "launch":
        run_dir, _ = runs.start_run(config_from_args(args), processes=args.processes or 1)
        print(run_dir.name)
    elif args.command == "runs":
        print(runs.format_runs(runs.list_runs()))
    elif args.command == "batch-worker":
        from opd_lab.run_batch import serve_worker

        serve_worker()
    elif args.command == "stop":
        print(runs.request_stop(run_folder.run_path(args.run)))
    elif args.command == "delete":
        run_dir = run_folder.run_path(args.run)
        runs.delete_run(run_dir)
        print(f"deleted {run_dir.name}")
    elif args.command == "export":
        from opd_lab.tracking import export_run

        try:
            names = RunConfig(report_to=args.to).trackers()
        except ConfigError as error:  # the field's message, under the flag's name
            raise ConfigError(f"--to:{str(error).split(':', 1)[1]}") from None
        if not names:
            raise ConfigError(f"--to: name a tracker: {', '.join(TRACKERS)}")
        written = export_run(run_folder.run_path(args.run), names, Path(args.dir).expanduser() if args.dir else None)
        for name, folder in written.items():
            print(f"{name}: {folder}")
    elif args.command == "resume":
        run_dir = run_folder.run_path(args.run)
        if args.foreground and args.processes is not None:
            return _accelerate_launch(args.processes, ["train", "--run-dir", str(run_dir)],
                                      runs.take_for_foreground(run_dir, args.from_scratch))  # refuses a running run
        if args.foreground:
            return _train_here(run_dir, runs.take_for_foreground(run_dir, args.from_scratch), progress=True)
        pid = runs.resume(run_dir, processes=args.processes, from_scratch=args.from_scratch)
        print(f"resumed {run_dir.name} (pid {pid})")
    return None


def _accelerate_launch(processes: int, module_args: list[str], owner=None) -> int:
    """Run `python -m opd_lab <module_args>` on `processes` processes; their exit status.

    With `owner` (this process owns the run), the run's lock goes to their rank 0
    (`ownership.LockHandover`); this process owns the run until rank 0 has it, and stops
    the processes if rank 0 never asks for it.
    """
    import subprocess

    from opd_lab import distributed, ownership

    if processes < 1:
        raise ConfigError(f"--processes: must be at least 1 (got {processes})")
    command, env = distributed.launch_command(processes, module_args), distributed.launch_environment(processes)
    if owner is None:  # rank 0 creates or takes the run itself
        return subprocess.run(command, env=env).returncode
    with owner, ownership.LockHandover(owner) as handover:
        process = subprocess.Popen(command, env={**env, **handover.env})
        if not handover.give(alive=lambda: process.poll() is None):
            if process.poll() is None:
                process.terminate()
            process.wait()
            print(f"opd-lab: run {owner.run_dir.name}: its rank 0 never took over the run; see its log",
                  file=sys.stderr)
            return 1
    return process.wait()


def _train_here(run_dir: Path, owner, progress: bool) -> int:
    """Train the run in this process (owned by `owner`, or taken here); 0 unless it failed."""
    from opd_lab import distributed
    from opd_lab.run_folder import RunError, load_status
    from opd_lab.train import run_training

    state = run_training(run_dir, progress=progress, owner=owner)
    try:
        message = load_status(run_dir).get("message", "")
    except RunError as error:
        message = str(error)
    if distributed.current().is_main:  # one line per run, not one per data-parallel process
        print(f"{run_dir.name}: {state} - {message}", file=sys.stdout if state != "failed" else sys.stderr)
    return 0 if state in ("finished", "stopped") else 1
