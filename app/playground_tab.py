"""The Playground tab: ask a student anything and see the teacher grade every token.

Choose a student (the lab's base student of a built task, or any checkpoint of any
run), type a prompt, and the student answers (`opd_lab.feedback.sample_and_score`);
or edit the answer, or type your own, and ask "what would the teacher say"
(`opd_lab.feedback.score_completions`). The teacher is the lab teacher of the task, or,
for a checkpoint, the teacher its run trained against. Loaded models stay in a small
cache, so scoring again is instant.
"""

from __future__ import annotations

import gradio as gr

from app.state import ModelCache, checkpoint_of, error_text, run_dir_of, run_ids
from opd_lab import feedback, runs, tokenview
from opd_lab.checkpoints import checkpoint_dirs, load_with_teacher
from opd_lab.config import ConfigError, RunConfig
from opd_lab.lab import built_lab_tasks
from opd_lab.models import ModelLoadError, load_pair
from opd_lab.run_folder import load_config
from opd_lab.tasks import DEFAULT_TASK, get_task

LAB_PREFIX = "lab:"
CHECKPOINT_PREFIX = "run:"
STUDENT_TITLE = "the student's answer"
EDITED_TITLE = "this completion, as the teacher sees it"
CACHE = ModelCache(capacity=2)  # up to two student/teacher pairs

INTRO = ("**Try a student on your own prompt.** Choose the lab's base student or any checkpoint of a "
         "run, type a prompt and let the student answer: each token is coloured by how much the "
         "teacher disagrees. Or edit the answer (or write your own) and ask what the teacher would "
         "say about it.")


def model_choices() -> list[tuple[str, str]]:
    """(label, value) of every student the playground can load: lab base students, then checkpoints."""
    choices = [(f"base student of the {task} lab", LAB_PREFIX + task) for task in built_lab_tasks()]
    for run_id in run_ids():
        try:
            run_dir = run_dir_of(run_id)
        except runs.RunError:
            continue
        for checkpoint in reversed(checkpoint_dirs(run_dir)):
            step = int(checkpoint.name.rsplit("_", 1)[-1])
            choices.append((f"{run_id} at step {step}", f"{CHECKPOINT_PREFIX}{run_id}/{checkpoint.name}"))
    return choices


def resolve_choice(choice: str, trust_remote_code: bool = False) -> dict:
    """What a model choice means: its task, the student and teacher to load, and a description.

    Raises:
        runs.RunError: an unknown lab, run or checkpoint (names are checked, never used as paths).
    """
    if not isinstance(choice, str) or not choice:
        raise runs.RunError("choose a student model")
    if choice.startswith(LAB_PREFIX):
        task = choice[len(LAB_PREFIX):]
        if task not in built_lab_tasks():
            raise runs.RunError(f"no built lab for task {task!r} (build one with `opd-lab lab build`)")
        return {"task": task, "task_regex": "", "checkpoint": None, "config": None,
                "trust_remote_code": trust_remote_code,
                "description": f"Student: the base student of the {task} lab. Teacher: the {task} lab's teacher."}
    if choice.startswith(CHECKPOINT_PREFIX):
        run_id, _, name = choice[len(CHECKPOINT_PREFIX):].partition("/")
        checkpoint = checkpoint_of(run_id, name)
        try:  # the app's flag, never the run's, decides whether a model's own code may run
            config = RunConfig.from_dict({**load_config(run_dir_of(run_id)), "trust_remote_code": trust_remote_code})
        except ConfigError as error:
            raise runs.RunError(f"run {run_id} has a config the app cannot use: {error}") from None
        return {"task": config.task, "task_regex": config.task_regex, "checkpoint": checkpoint, "config": config,
                "trust_remote_code": trust_remote_code,
                "description": f"Student: {run_id} at {name}. Teacher: `{config.teacher}` (the run's teacher), "
                               f"task {config.task}."}
    raise runs.RunError(f"unknown model choice {choice!r}")


def load_models(resolved: dict):
    """(teacher, student, tokenizer) of a resolved choice, from the cache when possible."""
    task, trust, checkpoint = resolved["task"], resolved["trust_remote_code"], resolved["checkpoint"]
    if checkpoint is None:
        return CACHE.get(("lab", task, trust), lambda: _eval_mode(*load_pair("lab", "lab", task, trust_remote_code=trust)))
    return CACHE.get(("checkpoint", str(checkpoint), trust), lambda: load_with_teacher(checkpoint, resolved["config"]))


def _eval_mode(teacher, student, tokenizer):
    return teacher, student.eval().requires_grad_(False), tokenizer


def default_prompt(task: str = DEFAULT_TASK) -> str:
    try:
        return get_task(task).eval_problems(1)[0].prompt
    except Exception:  # noqa: BLE001 - a .jsonl task may be gone; an empty box is fine
        return ""


def answer(choice: str, prompt: str, greedy: bool, temperature: float, seed: int, color_by: str,
           trust_remote_code: bool = False) -> tuple[str, str, str, list[dict]]:
    """Let the student answer `prompt`: `(completion, token view HTML, description, records)`."""
    try:
        resolved = resolve_choice(choice, trust_remote_code)
        if not prompt:
            raise runs.RunError("type a prompt first")
        teacher, student, tokenizer = load_models(resolved)
        max_new_tokens = get_task(resolved["task"], resolved["task_regex"] or None).max_new_tokens
        completions, records = feedback.sample_and_score(
            teacher, student, tokenizer, [prompt], max_new_tokens=max_new_tokens, greedy=bool(greedy),
            temperature=float(temperature or 1.0), seed=int(seed or 0))
    except (runs.RunError, ModelLoadError, ValueError, OSError) as error:
        return "", error_text(error), "", []
    view = _view(records[0], prompt, color_by, STUDENT_TITLE)
    return completions[0], view, resolved["description"], records[0]


def score(choice: str, prompt: str, completion: str, color_by: str,
          trust_remote_code: bool = False) -> tuple[str, str, list[dict]]:
    """What the teacher says about each token of a given completion: `(token view HTML, description, records)`."""
    try:
        resolved = resolve_choice(choice, trust_remote_code)
        if not prompt or not completion:
            raise runs.RunError("type a prompt and a completion first")
        teacher, student, tokenizer = load_models(resolved)
        records = feedback.score_completions(teacher, student, tokenizer, [prompt], [completion])[0]
    except (runs.RunError, ModelLoadError, ValueError, OSError) as error:
        return error_text(error), "", []
    return _view(records, prompt, color_by, EDITED_TITLE), resolved["description"], records


def _view(records: list[dict], prompt: str, color_by: str, title: str) -> str:
    color_by = color_by if color_by in tokenview.COLOR_KINDS else "reverse_kl"
    totals = feedback.summarize(records)
    title = (f"{title}: {totals['tokens']} tokens, mean reverse KL {totals['reverse_kl_mean']:.3f} nats, "
             f"mean advantage {totals['advantage_mean']:+.3f}")
    return tokenview.render_tokens(records, prompt=prompt, color_by=color_by, title=title)


def build(trust_remote_code: bool = False) -> dict:
    """The tab's widgets and events (call inside a `gr.Tab`); returns the model picker."""
    gr.Markdown(INTRO, elem_classes="tab-intro")
    choices = model_choices()
    with gr.Row():
        model = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Student model",
                            scale=3, elem_id="playground-model", allow_custom_value=True)
        color = gr.Radio([("reverse KL", "reverse_kl"), ("advantage", "advantage")], value="reverse_kl",
                         label="Colour tokens by", scale=2)
    description = gr.Markdown()
    with gr.Row():
        prompt = gr.Textbox(default_prompt(), label="Prompt", scale=3, elem_id="playground-prompt")
        greedy = gr.Checkbox(True, label="greedy", info="off: sample with the temperature", scale=1)
        temperature = gr.Number(1.0, label="temperature", minimum=0.05, step=0.05, scale=1)
        seed = gr.Number(0, label="seed", precision=0, scale=1)
    ask = gr.Button("Let the student answer", variant="primary", elem_id="playground-answer")
    completion = gr.Textbox(label="Completion (edit it, or type your own)", lines=2, elem_id="playground-completion")
    judge = gr.Button("What would the teacher say?", elem_id="playground-score")
    view = gr.HTML(elem_id="playground-view", padding=True)
    shown = gr.State({})  # the records on screen, to recolour them without scoring again

    def on_answer(choice, text, greedy_value, temperature_value, seed_value, color_by):
        completion_text, html, about, records = answer(choice, text, greedy_value, temperature_value,
                                                       seed_value, color_by, trust_remote_code)
        return completion_text, html, about, {"records": records, "prompt": text, "title": STUDENT_TITLE}

    def on_score(choice, text, completion_text, color_by):
        html, about, records = score(choice, text, completion_text, color_by, trust_remote_code)
        return html, about, {"records": records, "prompt": text, "title": EDITED_TITLE}

    def on_color(color_by, last):
        if not last or not last.get("records"):
            return gr.skip()
        return _view(last["records"], last["prompt"], color_by, last["title"])

    ask.click(on_answer, inputs=[model, prompt, greedy, temperature, seed, color],
              outputs=[completion, view, description, shown], api_name="answer")
    judge.click(on_score, inputs=[model, prompt, completion, color], outputs=[view, description, shown],
                api_name="score")
    color.input(on_color, inputs=[color, shown], outputs=view, api_visibility="private")
    return {"model": model}
