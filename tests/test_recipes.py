"""Recipe files, their settings, and a recipe folder that goes on where it stopped."""

from __future__ import annotations

import json

import pytest

from opd_lab.config import ConfigError
from opd_lab.studies.recipes import RECIPES, Recipe, load_recipe, open_recipe


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("setting", ["cpu", "gpu", "quick"])
def test_every_shipped_setting_gives_valid_stage_configs(name, setting):
    recipe = load_recipe(name, setting)
    assert recipe.name == name and recipe.setting == setting and recipe.description
    stages = ("finetune", "recover") if name == "continual-learning" else ("train",)
    for stage in stages:
        config = recipe.stage(stage, name="x", method="opd", task="addition")
        assert config.steps >= 1
    assert recipe.number("model") == "smollm2"


def test_bad_recipes_and_settings_are_refused_with_the_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_recipe("no-such-recipe")
    with pytest.raises(ConfigError, match="setting"):
        load_recipe("prune-distill", "tpu")
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: prune-distill\nsettings:\n  cpu: {model: smollm2, train: {steps: -1}}\n")
    recipe = load_recipe(str(bad), "cpu")
    with pytest.raises(ConfigError, match=r"bad.yaml, cpu.train: steps"):
        recipe.stage("train")
    with pytest.raises(ConfigError, match="no 'gpu' settings"):
        load_recipe(str(bad), "gpu")
    bad.write_text("recipe: [unclosed\n")
    with pytest.raises(ConfigError, match="not a valid YAML"):
        load_recipe(str(bad), "cpu")
    with pytest.raises(ConfigError, match="needs 'drop_layers'"):
        Recipe(name="prune-distill", setting="cpu", values={}, path=bad).number("drop_layers")


def test_a_recipe_folder_skips_finished_stages(tmp_path):
    recipe = load_recipe("prune-distill", "quick")
    state = open_recipe(recipe, tmp_path / "r")
    calls = []
    first = state.run_stage("prune", lambda: calls.append(1) or {"model": "m"}, progress_print=lambda *_: None)
    assert first["model"] == "m" and "seconds" in first
    saved = json.loads((tmp_path / "r" / "study.json").read_text())
    assert saved["stages"]["prune"]["model"] == "m"
    again = open_recipe(recipe, tmp_path / "r")  # a rerun with --out
    assert again.run_stage("prune", lambda: calls.append(2) or {"model": "other"},
                           progress_print=lambda *_: None)["model"] == "m"
    assert calls == [1]
    with pytest.raises(ConfigError, match="pick another folder"):
        open_recipe(load_recipe("continual-learning", "quick"), tmp_path / "r")


def test_continual_learning_recipe_end_to_end_and_resumed(smollm2_cached, tmp_path):
    from opd_lab.studies.recipes import run_recipe
    from opd_lab.run_folder import load_config, run_folders

    folder = run_recipe("continual-learning", "quick", out=tmp_path / "cl", progress_print=lambda *_: None)
    data = json.loads((folder / "study.json").read_text())
    assert set(data["stages"]) == {"before", "finetune", "recover", "mix", "kl_to_original"} and data["finished"]
    drift = data["stages"]["kl_to_original"]["models"]
    assert set(drift) == {"finetune", "recover", "mix"} and all(m["kl"] >= 0 and m["tokens"] > 0 for m in drift.values())
    for key in ("before", "finetune", "recover", "mix"):
        stage = data["stages"][key]
        assert set(stage["scores"]) == {"instructions", "company-qa"}
        assert all(0 <= s["accuracy"] <= s["reward"] <= 1 or s["accuracy"] == 1 for s in stage["scores"].values())
    recover = load_config(data["stages"]["recover"]["run_dir"])
    assert (recover["method"], recover["task"], recover["teacher"]) == ("opd", "instructions", "smollm2")
    assert recover["student"] == data["stages"]["finetune"]["model"]  # the fine-tuned model learns from its old self
    mix_rows = [json.loads(line) for line in (folder / "mixture.jsonl").read_text().splitlines()]
    assert len(mix_rows) == 8 and sum(r["answer"] == "" for r in mix_rows) == data["stages"]["mix"]["mixture"]["old_rows"]
    table = (folder / "study.md").read_text()
    assert table.count("\n| ") == 5  # the header and four stages
    runs_before = len(run_folders())
    run_recipe("continual-learning", "quick", out=folder, progress_print=lambda *_: None)  # finished: nothing reruns
    assert len(run_folders()) == runs_before


def test_prune_distill_recipe_end_to_end(smollm2_cached, tmp_path):
    from opd_lab.models import load_model
    from opd_lab.studies.recipes import run_recipe

    folder = run_recipe("prune-distill", "quick", out=tmp_path / "pd", progress_print=lambda *_: None)
    data = json.loads((folder / "study.json").read_text())
    pruned = data["stages"]["prune"]
    assert len(pruned["dropped"]) == 2 and pruned["parameters_after"] < pruned["parameters"]
    model, _ = load_model(pruned["model"])
    assert model.config.num_hidden_layers == pruned["layers"] - 2
    assert set(data["summaries"]) == {"rl", "sft", "opd"}
    assert data["verdict"]["sentence"] in (folder / "study.md").read_text()
    assert set(data["stages"]["kl_to_teacher"]["models"]) == {"student", "rl", "sft", "opd"}


def test_recipe_folders_are_described_and_shown_in_the_launch_panel(tmp_path, monkeypatch):
    import os

    from opd_lab_app import recipe_panel
    from opd_lab import ownership
    from opd_lab.studies.background import PROCESS_FILE, describe, recipes_dir

    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path))
    assert recipe_panel.recipes_table() == "No recipe started yet."
    done = recipes_dir() / "prune-distill-cpu-1"
    done.mkdir(parents=True)
    (done / "study.json").write_text(json.dumps({"recipe": "prune-distill", "setting": "cpu", "finished": "now",
                                                  "stages": {"prune": {}, "reference": {}}}))
    (done / "study.md").write_text("# Recipe prune-distill (cpu)\n\n**Verdict.** OPD won.\n")
    live = recipes_dir() / "continual-learning-cpu-2"
    live.mkdir()
    (live / "study.json").write_text(json.dumps({"recipe": "continual-learning", "setting": "cpu",
                                                  "stages": {"before": {}}}))
    (live / PROCESS_FILE).write_text(json.dumps({"pid": os.getpid(), "started": ownership.process_start_time(os.getpid())}))
    assert describe(live)["state"] == "running" and describe(done)["state"] == "finished"
    (live / PROCESS_FILE).write_text(json.dumps({"pid": os.getpid(), "started": 1}))  # the pid was reused
    assert describe(live)["state"] == "stopped"
    table = recipe_panel.recipes_table()
    assert "| prune-distill | cpu | finished | prune, reference |" in table and "**Verdict.** OPD won." in table
    message, _ = recipe_panel.start("continual-learning", "tpu")
    assert message.startswith("**Not started:**") and "setting" in message
    description, command = recipe_panel.recipe_text("prune-distill", "cpu")
    assert "pruned" in description or "layers" in description
    assert command == "opd-lab recipe prune-distill --setting cpu"


def test_the_claims_row_of_the_committed_smollm2_recipe_is_computed_from_its_numbers():
    import copy

    from opd_lab.studies.claims import smollm2_continual_row
    from opd_lab.paths import MEASURED_RESULTS_DIR

    data = json.loads((MEASURED_RESULTS_DIR / "recipes" / "smollm2-continual-learning.json").read_text())
    row = smollm2_continual_row(data)
    drift = data["stages"]["kl_to_original"]["models"]
    assert row["verdict"].startswith("holds") == (drift["recover"]["kl"] <= 0.5 * drift["finetune"]["kl"])
    assert f"{drift['finetune']['kl']:.2f} -> {drift['recover']['kl']:.2f} nats" in row["measured"]
    forgot_facts = copy.deepcopy(data)
    forgot_facts["stages"]["recover"]["scores"]["company-qa"]["accuracy"] = 0.0  # the recovery lost the new facts
    assert smollm2_continual_row(forgot_facts)["verdict"] == "does not hold"
