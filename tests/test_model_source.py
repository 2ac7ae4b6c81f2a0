"""`-m` as a hub repo id, resolved offline through a Hugging Face cache laid out by hub conventions."""

from __future__ import annotations

import os
import shutil

import pytest

from mistralrs import ModelLoadError, load
from mistralrs.engine.source import resolve_source

REVISION = "0123456789abcdef0123456789abcdef01234567"


def make_hub_cache(root, repo_id: str, files_from: str) -> str:
    """Lay out `root/models--owner--name/{refs/main,snapshots/<rev>/...}` as huggingface_hub does."""
    repo = os.path.join(root, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", REVISION)
    os.makedirs(os.path.join(repo, "refs"))
    shutil.copytree(files_from, snapshot)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(REVISION)
    return snapshot


def test_repo_id_loads_from_hf_cache_offline(backend, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = make_hub_cache(tmp_path, "tiny-org/tiny-qwen3", tiny_model_dir("qwen3"))
    source = resolve_source("tiny-org/tiny-qwen3", hf_cache=str(tmp_path))
    assert os.path.samefile(source.folder, snapshot)
    llm = load("tiny-org/tiny-qwen3", hf_cache=str(tmp_path), backend=backend, dtype="f32")
    reference = load(tiny_model_dir("qwen3"), backend=backend, dtype="f32")
    prompt = list(range(30, 50))
    assert llm.generate(prompt).token_ids == reference.generate(prompt).token_ids


def test_repo_not_in_cache_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        resolve_source("nobody/not-cached", hf_cache=str(tmp_path))
    assert "not in the Hugging Face cache" in info.value.message and "--hf-cache" in info.value.message


@pytest.mark.parametrize("bad", ["./missing-folder", "/no/such/dir", "not a repo id", "a/b/c"])
def test_paths_and_malformed_ids(bad):
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        resolve_source(bad)


def test_tokenizer_override(backend, tiny_model_dir, tmp_path):
    """-t points at a tokenizer.json elsewhere when the model folder has none."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama"), folder)
    os.rename(folder / "tokenizer.json", tmp_path / "elsewhere.json")
    llm = load(str(folder), backend=backend, tokenizer=str(tmp_path / "elsewhere.json"))
    assert llm.encode("hello world") == load(tiny_model_dir("llama"), backend=backend).encode("hello world")


def test_arch_override(backend, tiny_model_dir, tmp_path):
    """-a picks the architecture when config.json names one we do not know."""
    import json

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["MyFineTunedLlama"]
    (folder / "config.json").write_text(json.dumps(config))
    assert load(str(folder), backend=backend, arch="llama").arch == "LlamaForCausalLM"
