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

from opd_lab_app.inputs import hide_paths
from opd_lab_app.state import ModelCache, checkpoint_of, error_text, run_dir_of, run_ids
from opd_lab import feedback, model_spec, runs, tokenview
from opd_lab.checkpoints import checkpoint_dirs, load_with_teacher
from opd_lab.config import ConfigError, RunConfig
from opd_lab.lab import built_labs
from opd_lab.models import ModelLoadError, load_pair
from opd_lab.paths import lab_dir
from opd_lab.run_folder import load_config
from opd_lab.tasks import DEFAULT_TASK, get_task

STUDENT_TITLE = "the student's answer"
EDITED_TITLE = "this completion, as the teacher sees it"
CACHE = ModelCache(capacity=2)  # up to two student/teacher pairs

INTRO = ("**Try a student on your own prompt.** Choose the lab's base student or any checkpoint of a "
         "run, type a prompt and let the student answer: each token is coloured by what the teacher "
         "thinks of it (red: the teacher would not have written it). Or edit the answer (or write your "
         "own) and ask what the teacher would say about it. Then **click a token** to correct it with "
         "the red pen and let the student go on from there.")
COLOR_CHOICES = [("advantage: the teacher's verdict on the written token", "advantage"),
                 ("reverse KL: disagreement of the whole next-token distribution", "reverse_kl")]
DEFAULT_COLOR = "advantage"


def color_legend() -> str:
    """The two colourings explained in two sentences each, for beside the token view."""
    return "  \n".join(tokenview.COLOR_EXPLANATIONS[kind] for _, kind in COLOR_CHOICES)


def scale_of(locked: bool) -> float | None:
    """The colour scale of a view: the locked one shared by every view, or None (this view's own)."""
    return tokenview.LOCKED_VMAX if locked else None


def model_choices() -> list[tuple[str, str]]:
    """(label, value) of every student the playground can load: lab base students, then checkpoints."""
    choices = [(f"base student of the {lab.name} lab" + ("" if lab.task == lab.name else f" ({lab.task})"),
                model_spec.lab_spec(lab.name)) for lab in built_labs() if lab.summary is not None]
    for run_id in run_ids():
        try:
            run_dir = run_dir_of(run_id)
        except runs.RunError:
            continue
        for checkpoint in reversed(checkpoint_dirs(run_dir)):
            step = int(checkpoint.name.rsplit("_", 1)[-1])
            choices.append((f"{run_id} at step {step}", model_spec.checkpoint_spec(run_id, checkpoint.name)))
    return choices


def resolve_choice(choice: str, trust_remote_code: bool = False) -> dict:
    """What a model choice means: its task, the student and teacher to load, and a description.

    Raises:
        runs.RunError: an unknown lab, run or checkpoint (names are checked, never used as paths).
    """
    if not isinstance(choice, str) or not choice:
        raise runs.RunError("choose a student model")
    try:
        parsed = model_spec.parse(choice)
    except model_spec.SpecError as error:
        raise runs.RunError(str(error)) from None
    if parsed.is_lab and parsed.lab:
        name = parsed.lab
        lab = next((lab for lab in built_labs() if lab.name == name and lab.summary is not None), None)
        if lab is None:
            raise runs.RunError(f"no built lab named {name!r} (build one with `opd-lab lab build`)")
        return {"task": lab.task, "lab": lab.name, "task_regex": "", "checkpoint": None, "config": None,
                "trust_remote_code": trust_remote_code,
                "description": f"Student: the base student of the {lab.name} lab. Teacher: that lab's teacher "
                               f"(task {lab.task})."}
    if parsed.kind == model_spec.CHECKPOINT and parsed.checkpoint:
        run_id, name = parsed.run_id, parsed.checkpoint
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
        spec = model_spec.lab_spec(resolved["lab"])
        # Keyed by the lab's folder: a data dir switched under a running process (tests) never serves old models.
        return CACHE.get(("lab", str(lab_dir(resolved["lab"])), trust), lambda: _eval_mode(*load_pair(spec, spec, task, trust_remote_code=trust)))
    return CACHE.get(("checkpoint", str(checkpoint), trust), lambda: load_with_teacher(checkpoint, resolved["config"]))


def _eval_mode(teacher, student, tokenizer):
    return teacher, student.eval().requires_grad_(False), tokenizer


def default_prompt(task: str = DEFAULT_TASK) -> str:
    try:
        return get_task(task).eval_problems(1)[0].prompt
    except Exception:  # noqa: BLE001 - a .jsonl task may be gone; an empty box is fine
        return ""


def answer(choice: str, prompt: str, greedy: bool, temperature: float, seed: int, color_by: str = DEFAULT_COLOR,
           trust_remote_code: bool = False, locked: bool = True) -> tuple[str, str, str, list[dict]]:
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
    view = _view(records[0], prompt, color_by, STUDENT_TITLE, locked)
    return completions[0], view, hide_paths(resolved["description"]), records[0]


def score(choice: str, prompt: str, completion: str, color_by: str = DEFAULT_COLOR,
          trust_remote_code: bool = False, locked: bool = True) -> tuple[str, str, list[dict]]:
    """What the teacher says about each token of a given completion: `(token view HTML, description, records)`."""
    try:
        resolved = resolve_choice(choice, trust_remote_code)
        if not prompt or not completion:
            raise runs.RunError("type a prompt and a completion first")
        teacher, student, tokenizer = load_models(resolved)
        records = feedback.score_completions(teacher, student, tokenizer, [prompt], [completion])[0]
    except (runs.RunError, ModelLoadError, ValueError, OSError) as error:
        return error_text(error), "", []
    return _view(records, prompt, color_by, EDITED_TITLE, locked), resolved["description"], records


def _title(title: str, records: list[dict]) -> str:
    totals = tokenview.completion_summary(records)
    return (f"{title}: {totals['tokens']} tokens, mean reverse KL {totals['reverse_kl_mean']:.3f} nats, "
            f"mean advantage {totals['advantage_mean']:+.3f}")


def _view(records: list[dict], prompt: str, color_by: str, title: str, locked: bool = True) -> str:
    color_by = color_by if color_by in tokenview.COLOR_KINDS else DEFAULT_COLOR
    return tokenview.render_tokens(records, prompt=prompt, color_by=color_by, title=_title(title, records),
                                   vmax=scale_of(locked))


def pen_choices(records: list[dict], position) -> list[tuple[str, str]]:
    """(label, text) of what the red pen can write at `position`: the teacher's top-k, its first choice first."""
    try:
        token = records[int(position)]
    except (TypeError, ValueError, IndexError):
        return []
    return [(f"{tokenview.marked(str(text))}  (teacher {float(probability):.1%})", str(text))
            for text, probability in token.get("teacher_top", [])]


def red_pen(choice: str, prompt: str, records: list[dict], position, replacement: str, color_by: str = DEFAULT_COLOR,
            trust_remote_code: bool = False, locked: bool = True) -> tuple[str, str]:
    """Replace token `position` by `replacement`, let the student finish: `(side-by-side HTML, verdict)`.

    The verdict compares the final answers of the old and the new completion with the
    prompt's true answer (`Task.problem_for`); for a prompt whose answer the task does not
    know (one typed by hand, a task file without answers), it says so and gives none.
    """
    try:
        resolved = resolve_choice(choice, trust_remote_code)
        if not records:
            raise runs.RunError("score a completion first (either button above)")
        if not replacement:
            raise runs.RunError("choose what the red pen writes")
        position = int(position)
        if not 0 <= position < len(records):
            raise runs.RunError(f"token {position} is not in this completion (0 to {len(records) - 1})")
        task = get_task(resolved["task"], resolved["task_regex"] or None)
        teacher, student, tokenizer = load_models(resolved)
        old = "".join(str(record.get("text", "")) for record in records if record.get("token_id") != tokenizer.eos_token_id)
        new, new_records = feedback.rewrite_from(teacher, student, tokenizer, prompt, records, position, replacement,
                                                 max_new_tokens=task.max_new_tokens)
    except (runs.RunError, ModelLoadError, ValueError, OSError) as error:
        return "", error_text(error)
    written = str(records[position].get("text", ""))
    vmax = scale_of(locked) or tokenview.default_vmax([records, new_records], color_by)
    view = tokenview.render_side_by_side(records, new_records, _title("before", records),
                                         _title(f"after the red pen (token {position}: {written!r} -> {replacement!r})",
                                                new_records),
                                         prompt=prompt, color_by=color_by if color_by in tokenview.COLOR_KINDS
                                         else DEFAULT_COLOR, vmax=vmax)
    verdict = [f"**Red pen:** token {position} `{written}` → `{replacement}`; the student wrote the rest: `{new}`."]
    verdict.append(pen_verdict(task, prompt, old, new))
    return view, "  \n".join(verdict)


def pen_verdict(task, prompt: str, old: str, new: str) -> str:
    """One sentence: the old and the new completion checked against the prompt's true answer.

    Example:
        >>> from opd_lab.tasks import get_task
        >>> pen_verdict(get_task("addition"), "347+285=", "7+5+0=12;4+8+1=13;3+2+1=06;632", "7+5+0=12;631")
        'Against the true answer **632**: before, right (632); after, **wrong** (631).'
    """
    problem = task.problem_for(prompt)
    if problem is None:
        return (f"The task {task.name} does not know the answer to this prompt, so the red pen does not say "
                "right or wrong.")
    before, after = task.verify(problem, old), task.verify(problem, new)
    words = {True: "right", False: "wrong"}
    answer = problem.answer if len(problem.answer) <= 60 else problem.answer[:57] + "..."
    return (f"Against the true answer **{answer}**: before, {words[before.correct]} ({before.parsed or 'no answer'}); "
            f"after, **{words[after.correct]}** ({after.parsed or 'no answer'}).")


PEN_HELP = ("**Red pen.** Click a token above (or type its number), choose what to write instead "
            "(the teacher's first choice is preselected), and the student re-writes the rest from there.")


def pen_panel(prefix: str = "", help_text: str = PEN_HELP) -> tuple:
    """The red pen's widgets, for the Playground and Inspect: `(position box, replacement picker,
    button, verdict, before/after view)`, with element ids `{prefix}pen-position`, `-choice`,
    `-rewrite`, `-result` and `-view` (the page script fills the position box on a click)."""
    with gr.Group():
        gr.Markdown(help_text)
        with gr.Row():
            position = gr.Textbox(label="token to correct", placeholder="click a token", scale=1,
                                  max_lines=1, elem_id=f"{prefix}pen-position")
            replacement = gr.Dropdown([], label="write instead", scale=2, elem_id=f"{prefix}pen-choice",
                                      allow_custom_value=True)
            button = gr.Button("Rewrite from here", scale=1, elem_id=f"{prefix}pen-rewrite")
    result = gr.Markdown(elem_id=f"{prefix}pen-result")
    view = gr.HTML(elem_id=f"{prefix}pen-view", padding=True)
    return position, replacement, button, result, view


def clear_pen():
    """The red pen's widgets emptied: a new sample on screen makes the old token and verdict meaningless.
    Outputs: position box, replacement picker, verdict, before/after view."""
    return "", gr.update(choices=[], value=None), "", ""


def build(trust_remote_code: bool = False) -> dict:
    """The tab's widgets and events (call inside a `gr.Tab`); returns the model picker."""
    gr.Markdown(INTRO, elem_classes="tab-intro")
    choices = model_choices()
    with gr.Row():
        model = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Student model",
                            scale=3, elem_id="playground-model", allow_custom_value=True)
        color = gr.Radio(COLOR_CHOICES, value=DEFAULT_COLOR, label="Colour tokens by", scale=2,
                         elem_id="playground-color")
        locked = gr.Checkbox(True, label="lock the colour scale", scale=1, elem_id="playground-locked",
                             info=f"±{tokenview.LOCKED_VMAX:g} nats in every view; off: this view's own scale")
    description = gr.Markdown()
    with gr.Row():
        prompt = gr.Textbox(default_prompt(), label="Prompt", scale=3, elem_id="playground-prompt")
        greedy = gr.Checkbox(True, label="greedy", info="off: sample with the temperature", scale=1)
        temperature = gr.Number(1.0, label="temperature", minimum=0.05, step=0.05, scale=1)
        seed = gr.Number(0, label="seed", precision=0, scale=1)
    ask = gr.Button("Let the student answer", variant="primary", elem_id="playground-answer")
    completion = gr.Textbox(label="Completion (edit it, or type your own)", lines=2, elem_id="playground-completion")
    judge = gr.Button("What would the teacher say?", elem_id="playground-score")
    with gr.Row():
        view = gr.HTML(elem_id="playground-view", padding=True, min_height=60)
        gr.Markdown(color_legend(), elem_id="playground-legend")
    shown = gr.State({})  # the records on screen, to recolour them without scoring again
    pen_position, pen_text, pen, pen_result, pen_view = pen_panel()

    def on_answer(choice, text, greedy_value, temperature_value, seed_value, color_by, lock):
        completion_text, html, about, records = answer(choice, text, greedy_value, temperature_value,
                                                       seed_value, color_by, trust_remote_code, lock)
        return completion_text, html, about, {"records": records, "prompt": text, "title": STUDENT_TITLE}

    def on_score(choice, text, completion_text, color_by, lock):
        html, about, records = score(choice, text, completion_text, color_by, trust_remote_code, lock)
        return html, about, {"records": records, "prompt": text, "title": EDITED_TITLE}

    def on_color(color_by, lock, last):
        if not last or not last.get("records"):
            return gr.skip()
        return _view(last["records"], last["prompt"], color_by, last["title"], lock)

    def on_position(position, last):
        choices = pen_choices((last or {}).get("records") or [], position)
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def on_pen(choice, last, position, replacement, color_by, lock):
        last = last or {}
        return red_pen(choice, last.get("prompt", ""), last.get("records") or [], position, replacement, color_by,
                       trust_remote_code, lock)

    ask.click(on_answer, inputs=[model, prompt, greedy, temperature, seed, color, locked],
              outputs=[completion, view, description, shown], api_name="answer")
    judge.click(on_score, inputs=[model, prompt, completion, color, locked], outputs=[view, description, shown],
                api_name="score")
    gr.on([color.input, locked.input], on_color, inputs=[color, locked, shown], outputs=view,
          api_visibility="private")
    pen_position.change(on_position, inputs=[pen_position, shown], outputs=pen_text, api_visibility="private")
    # Cleared when the user asks for a new sample, before it arrives (a clear after it could race a click).
    gr.on([ask.click, judge.click], clear_pen, outputs=[pen_position, pen_text, pen_result, pen_view],
          api_visibility="private", queue=False)
    pen.click(on_pen, inputs=[model, shown, pen_position, pen_text, color, locked], outputs=[pen_view, pen_result],
              api_name="red_pen")
    return {"model": model}
