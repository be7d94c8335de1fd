"""The Launch tab: a form generated from `RunConfig`'s fields that starts a background run.

Each field becomes a widget (a dropdown for fields with choices, a checkbox for
booleans, a number box for ints and floats, a text box otherwise) with the field's
`help` as its caption, so the form never drifts from the config. The form shows the
equivalent `opd-lab launch ...` command, saves and loads YAML/JSON configs, and
launches through `opd_lab.runs` (a detached process, no shell).

The task and model fields offer choices, never paths (`opd_lab_app.inputs`): the built-in tasks
and the instructor's task files, the built labs and the runs' checkpoints; anything else
is refused with one answer, whether or not such a file exists, and no message shows a
server path. A config is saved and loaded as text (copy it, paste it), so the app takes
no uploaded file and hands out no server file.

`trust_remote_code` is not in the form: only the `--trust-remote-code` flag of
`opd-lab app` can allow a model's own Python code to run. Nor is `teacher_server`: a
browser must not make the app send requests to any address it names (a teacher server
is for `opd-lab train/launch` on the command line), nor `report_dir`: a browser must
not make the app write files where it names (`report_to` writes under the data dir). Nor is `fsdp`: the app launches
runs on one process, where sharding has no effect (`opd-lab launch --processes N --fsdp`).
"""

from __future__ import annotations

import dataclasses
import functools

import gradio as gr
import yaml

from opd_lab_app import recipe_panel
from opd_lab_app.inputs import browser_fields, hide_paths, model_choices, task_choices
from opd_lab_app.state import forget_runs_list
from opd_lab_app.users import record
from opd_lab import preflight, runs
from opd_lab.cli import error_line
from opd_lab.config import PRESETS, ConfigError, RunConfig, command_line, config_fields, parse_config_text
from opd_lab.lab import built_lab_names

BROWSER_LOCKED = ("trust_remote_code", "teacher_server", "teacher_servers", "report_dir")
MULTI_PROCESS_ONLY = ("fsdp",)
FORM_FIELDS = [spec for spec in config_fields() if spec.name not in BROWSER_LOCKED + MULTI_PROCESS_ONLY]
FIELD_NAMES = [spec.name for spec in FORM_FIELDS]
# Shown first; every other field goes under "More settings", in declaration order.
MAIN_FIELDS = ("name", "method", "task", "device", "teacher", "student", "task_weights", "teachers", "steps",
               "batch_size", "samples_per_prompt", "learning_rate", "temperature", "seed",
               "eval_every", "eval_count", "sample_every", "checkpoint_every")
# Field labels a newcomer can read; any other field is its name in words ("batch_size" -> "Batch size").
LABELS = {"name": "Run name", "task_regex": "Answer regex (.jsonl tasks)", "teacher": "Teacher model",
          "task_weights": "Task mix (TASK=WEIGHT, ...)", "teachers": "Teachers per task (TASK=MODEL, ...)",
          "student": "Student model", "steps": "Training steps", "batch_size": "Prompts per step",
          "prompt_pool": "Prompt pool size", "samples_per_prompt": "Samples per prompt",
          "max_grad_norm": "Gradient clipping", "max_new_tokens": "Longest completion (tokens)",
          "estimator": "OPD estimator", "jsd_beta": "JSD mixture weight", "on_policy_fraction": "On-policy share",
          "reward_coef": "Reward weight", "sft_source": "SFT data source", "finetune": "Fine-tuning",
          "lora_rank": "LoRA rank", "lora_alpha": "LoRA alpha", "eval_every": "Evaluate every (steps)",
          "eval_count": "Evaluation problems", "stop_at_accuracy": "Stop at accuracy",
          "sample_every": "Log samples every (steps)", "samples_to_log": "Samples logged",
          "checkpoint_every": "Checkpoint every (steps)", "keep_checkpoints": "Checkpoints kept"}
DEFAULTS_PRESET = "defaults"
COLUMNS = 4

INTRO = ("**Start a training run in the background.** Pick a preset or change any setting "
         "(each one's meaning is written under it), then press **Launch**. The run keeps going if "
         "you close this page or the app; follow it in the **Runs** tab.")


def form_dict(values) -> dict:
    """Form values (in FORM_FIELDS order) as {field name: value}; empty boxes are left out."""
    return {name: value for name, value in zip(FIELD_NAMES, values) if value is not None}


def config_from_form(values, trust_remote_code: bool = False) -> RunConfig:
    """The validated config of the form's values, its task and models the server's names
    for the browser's choices (`opd_lab_app.inputs`); raises ConfigError naming the bad field."""
    data = form_dict(values)
    missing = [name for name, value in zip(FIELD_NAMES, values) if value is None]
    if missing:
        raise ConfigError(f"{missing[0]}: enter a value")
    return RunConfig.from_dict({**browser_fields(data), "trust_remote_code": trust_remote_code})


def preview_command(values, trust_remote_code: bool = False) -> str:
    """The `opd-lab launch` command equivalent to the form: only flags that differ from the defaults.

    Example:
        >>> preview_command([{"method": "rl"}.get(n, s.default) for n, s in zip(FIELD_NAMES, FORM_FIELDS)])
        'opd-lab launch --method rl'
    """
    return command_line({**form_dict(values), "trust_remote_code": trust_remote_code})


def check_form(values, trust_remote_code: bool = False) -> str:
    """A Markdown line: ready to launch, or the first bad value, or the input a run could not load.

    "Ready" is said only once `opd_lab.preflight` has found the task (a lab that is built),
    both models and the data folder, exactly as a launch would check them.
    """
    try:
        config = config_from_form(values, trust_remote_code)
    except ConfigError as error:
        return f"**Fix this before launching:** {error}"
    # Each task's teacher with the student, on that task (a bare 'lab' names each task's own lab).
    student = f"lab:{config.task}" if config.student == "lab" and config.task_weights else config.student
    problem = next(filter(None, (
        _preflight_problem(f"lab:{task}" if teacher == "lab" and config.task_weights else teacher, student, task,
                           config.task_regex, config.trust_remote_code, tuple(built_lab_names()))
        for task, teacher in config.teacher_map().items())), "")
    return f"**Fix this before launching:** {problem}" if problem else "Ready: press **Launch**."


@functools.lru_cache(maxsize=64)  # the form checks on every change; a model lookup can take seconds
def _preflight_problem(teacher: str, student: str, task: str, task_regex: str, trust_remote_code: bool,
                       built_labs: tuple) -> str:  # built_labs: a lab built since is checked again
    try:
        preflight.check_run_inputs(RunConfig(teacher=teacher, student=student, task=task, task_regex=task_regex,
                                             trust_remote_code=trust_remote_code))
    except Exception as error:  # noqa: BLE001 - shown as the one line a launch would print
        return hide_paths(error_line(error))
    return ""


def preset_values(preset: str) -> list:
    """Form values of a preset: the defaults with the preset's changes."""
    changes = PRESETS.get(preset, {})
    return [changes.get(spec.name, spec.default) for spec in FORM_FIELDS]


def launch_run(values, trust_remote_code: bool = False, request: gr.Request | None = None) -> tuple[str, str]:
    """Validate the form and start the run, or queue it at the run limit: `(message, run id or "")`.

    A bad value or an input that fails its checks (`opd_lab.preflight`) creates no run
    folder; the message is the line `opd-lab launch` would print. At the run limit the
    run waits in line (`runs.submit_run`) and starts when a place frees. With a login
    (`request.username`), the user is recorded as the run's launcher (`opd_lab_app.users`).
    """
    try:
        run_dir, pid = runs.submit_run(config_from_form(values, trust_remote_code))
    except Exception as error:  # noqa: BLE001 - the form shows every error as one line
        return f"**Not launched.** {hide_paths(error_line(error))}", ""
    record(run_dir, request)
    forget_runs_list()
    if pid is None:
        position = runs.queue_positions().get(run_dir.name, "?")
        return (f"Queued **{run_dir.name}**: {runs.max_active_runs()} runs are training (the limit), so it is "
                f"**#{position} in line** and starts by itself when a place frees. Follow it in the **Runs** tab."), \
            run_dir.name
    return f"Launched **{run_dir.name}** (process {pid}). Follow it in the **Runs** tab.", run_dir.name


MAX_CONFIG_CHARS = 64_000  # a pasted config longer than this is refused on the server


def config_text(values, trust_remote_code: bool = False) -> tuple[str, str]:
    """The form as YAML text to copy: `(text or "", message)`."""
    try:
        config = config_from_form(values, trust_remote_code)
    except ConfigError as error:
        return "", f"**Not saved.** {error}"
    chosen = {name: value for name, value in form_dict(values).items() if name in ("task", "teacher", "student")}
    return (yaml.safe_dump({**config.to_dict(), **chosen}, sort_keys=False),  # the choices' names, not paths
            f"Copy the YAML below into a file (e.g. `{config.run_name()}.yaml`): `opd-lab launch FILE` runs it, "
            "and pasting it here loads it.")


def load_config_text(text: str | None) -> tuple[list, str]:
    """Form values from a pasted YAML or JSON config: `(values, message)`.

    On an error the values are None (the form is left as it is).
    """
    nothing = [None] * len(FORM_FIELDS)
    if not text or not text.strip():
        return nothing, "**Not loaded.** Paste a YAML or JSON config first."
    if len(text) > MAX_CONFIG_CHARS:
        return nothing, f"**Not loaded.** A config is at most {MAX_CONFIG_CHARS:,} characters."
    try:
        config = RunConfig.from_dict(parse_config_text(text, "the pasted config"))
    except ConfigError as error:
        return nothing, f"**Not loaded.** {error}"
    note = ""
    if config.trust_remote_code:
        note = (" It sets `trust_remote_code: true`, which the app ignores: only "
                "`opd-lab app --trust-remote-code` can allow it.")
    return [getattr(config, name) for name in FIELD_NAMES], f"Loaded.{note}"


def field_label(name: str) -> str:
    """The form's label of a config field.

    Example:
        >>> field_label("batch_size"), field_label("warmup_steps")
        ('Prompts per step', 'Warmup steps')
    """
    return LABELS.get(name, name.replace("_", " ").capitalize())


CHOSEN_FIELDS = {"task": task_choices, "teacher": model_choices, "student": model_choices}


def _component(spec: dataclasses.Field):
    # The config field's own name comes second, for YAML files and the command line.
    label, choices = field_label(spec.name), spec.metadata.get("choices")
    info = f"{spec.metadata['help']} [{spec.name}]"
    key = f"field-{spec.name}"
    if spec.name in CHOSEN_FIELDS:  # a choice, not a path (`opd_lab_app.inputs`); the server checks it again
        return gr.Dropdown(CHOSEN_FIELDS[spec.name](), value=spec.default, label=label, info=info, elem_id=key,
                           allow_custom_value=True)
    if choices:
        return gr.Dropdown(list(choices), value=spec.default, label=label, info=info, elem_id=key)
    if spec.type == "bool":
        return gr.Checkbox(value=spec.default, label=label, info=info, elem_id=key)
    if spec.type == "int":
        return gr.Number(value=spec.default, label=label, info=info, precision=0, elem_id=key)
    if spec.type == "float":
        return gr.Number(value=spec.default, label=label, info=info, step=0.0001, elem_id=key)
    return gr.Textbox(value=spec.default, label=label, info=info, elem_id=key, max_lines=1)


def _grid(specs: list) -> dict:
    components = {}
    for start in range(0, len(specs), COLUMNS):
        with gr.Row(equal_height=True):
            for spec in specs[start:start + COLUMNS]:
                components[spec.name] = _component(spec)
    return components


def build(trust_remote_code: bool = False) -> dict:
    """The tab's widgets and events (call inside a `gr.Tab`); returns the launched-run box."""
    gr.Markdown(INTRO, elem_classes="tab-intro")
    if trust_remote_code:
        gr.Markdown("This app was started with `--trust-remote-code`: runs may load models that ship their own code.")
    with gr.Row():
        preset = gr.Dropdown([DEFAULTS_PRESET, *PRESETS], value=DEFAULTS_PRESET, label="Preset",
                             info="Fill the form with a starting point (then change anything).", scale=2)
        save_button = gr.Button("Show config as YAML", scale=1)
    with gr.Accordion("Load a config (paste YAML or JSON)", open=False, elem_id="load-config"):
        pasted = gr.Textbox(label="Config", lines=6, max_length=MAX_CONFIG_CHARS, elem_id="pasted-config")
        load_button = gr.Button("Load into the form", size="sm")
    main = [spec for spec in FORM_FIELDS if spec.name in MAIN_FIELDS]
    more = [spec for spec in FORM_FIELDS if spec.name not in MAIN_FIELDS]
    components = _grid(main)
    with gr.Accordion("More settings", open=False, elem_id="more-settings"):
        components.update(_grid(more))
    form = [components[name] for name in FIELD_NAMES]

    form_check = gr.Markdown(elem_id="form-check")
    command = gr.Code(preview_command(preset_values(DEFAULTS_PRESET), trust_remote_code), language="shell",
                      label="The same run from a terminal", interactive=False, elem_id="launch-command",
                      lines=1, wrap_lines=True, buttons=["copy"])
    with gr.Row():
        launch_button = gr.Button("Launch", variant="primary", elem_id="launch-button", scale=1)
        run_id = gr.Textbox(label="Launched run", interactive=False, elem_id="launched-run", scale=2)
    message = gr.Markdown(elem_id="launch-message")
    saved = gr.Code(label="This config as YAML", language="yaml", visible=False, interactive=False,
                    buttons=["copy"])
    recipe_panel.build()

    def on_preview(*values):
        return preview_command(values, trust_remote_code), check_form(values, trust_remote_code)

    def on_launch(request: gr.Request, *values):
        return launch_run(values, trust_remote_code, request)

    def on_save(*values):
        text, note = config_text(values, trust_remote_code)
        return gr.update(value=text, visible=bool(text)), note

    def on_load(text):
        values, note = load_config_text(text)
        return [gr.skip() if value is None else value for value in values] + [note]

    gr.on([c.change for c in form], on_preview, inputs=form, outputs=[command, form_check], api_name="preview",
          show_progress="hidden")
    preset.change(preset_values, inputs=preset, outputs=form, api_visibility="private")
    gr.on([c.input for c in form], lambda: "", outputs=message, api_visibility="private", show_progress="hidden")
    launch_button.click(on_launch, inputs=form, outputs=[message, run_id], api_name="launch")
    save_button.click(on_save, inputs=form, outputs=[saved, message], api_visibility="private")
    load_button.click(on_load, inputs=pasted, outputs=[*form, message], api_visibility="private")
    return {"launched": run_id}
