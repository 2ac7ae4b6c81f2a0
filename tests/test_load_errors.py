"""Bad model folders give one clear paragraph naming the file and the fix, never a traceback."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from mistralrs import ModelLoadError, TemplateError, UserError, load


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """A private copy of the tiny Qwen3 model that a test may break."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir("qwen3"), folder)
    return folder


def load_error(folder, backend, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load(str(folder), backend=backend, **kwargs)
    message = info.value.message
    assert "\n" not in message.strip() and "Traceback" not in message
    return message


def test_path_that_does_not_exist(backend, tmp_path):
    message = load_error(tmp_path / "nope", backend)
    assert "no such file or folder" in message and "nope" in message


def test_folder_without_config(backend, model_copy):
    os.remove(model_copy / "config.json")
    assert "config.json" in load_error(model_copy, backend)


def test_malformed_config_json(backend, model_copy):
    (model_copy / "config.json").write_text("{ not json")
    message = load_error(model_copy, backend)
    assert "config.json" in message and "not valid JSON" in message


def test_unknown_architecture_lists_supported(backend, model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config["architectures"] = ["FancyNewForCausalLM"]
    (model_copy / "config.json").write_text(json.dumps(config))
    message = load_error(model_copy, backend)
    assert "FancyNewForCausalLM" in message and "Qwen3ForCausalLM" in message and "-a/--arch" in message


def test_unknown_arch_override(backend, model_copy):
    assert "Unknown architecture `gpt9`" in load_error(model_copy, backend, arch="gpt9")


def _rewrite_weights(folder, change):
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(str(path))
    change(weights)
    save_file(weights, str(path), metadata={"format": "pt"})


def test_missing_tensor(backend, model_copy):
    _rewrite_weights(model_copy, lambda w: w.pop("model.layers.1.mlp.down_proj.weight"))
    message = load_error(model_copy, backend)
    assert "model.layers.1.mlp.down_proj.weight" in message and "lacks 1 weight" in message


def test_wrong_shaped_tensor(backend, model_copy):
    import numpy as np

    def shrink(w):
        w["model.layers.0.self_attn.o_proj.weight"] = np.zeros((64, 8), dtype=np.float32)

    _rewrite_weights(model_copy, shrink)
    message = load_error(model_copy, backend)
    assert "model.layers.0.self_attn.o_proj.weight" in message and "(64, 8)" in message
    assert "model.safetensors" in message


def test_truncated_safetensors(backend, model_copy):
    path = model_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    message = load_error(model_copy, backend)
    assert "model.safetensors" in message and "truncated or corrupt" in message


def test_missing_tokenizer(backend, model_copy):
    os.remove(model_copy / "tokenizer.json")
    message = load_error(model_copy, backend)
    assert "tokenizer.json" in message and "-t/--tokenizer" in message


def test_missing_shard_listed_in_index(backend, model_copy):
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "model-00002-of-00002.safetensors" in load_error(model_copy, backend)


def test_template_that_raises(backend, model_copy):
    config_path = model_copy / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = "{{ raise_exception('Only user and assistant roles are supported!') }}"
    config_path.write_text(json.dumps(config))
    llm = load(str(model_copy), backend=backend)
    with pytest.raises(TemplateError) as info:
        llm.chat([{"role": "user", "content": "hi"}])
    assert "Only user and assistant roles are supported!" in info.value.message


def test_bad_dtype_and_backend(backend, model_copy):
    assert "--dtype" in load_error(model_copy, backend, dtype="int3")
    with pytest.raises(UserError, match="Unknown backend"):
        load(str(model_copy), backend="tpu")


def test_sharded_checkpoint_loads_like_single_file(backend, tiny_model_dir, tmp_path):
    """An index.json with two shards gives the same logits as the single file."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    source = tiny_model_dir("qwen3")
    folder = tmp_path / "sharded"
    shutil.copytree(source, folder)
    weights = load_file(str(folder / "model.safetensors"))
    os.remove(folder / "model.safetensors")
    names = sorted(weights)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in halves.items():
        save_file({k: weights[k] for k in keys}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    prompt = list(range(10, 30))
    a = load(source, backend=backend, dtype="f32").generate(prompt).token_ids
    b = load(str(folder), backend=backend, dtype="f32").generate(prompt).token_ids
    assert a == b and len(a) > 0
    assert np.array_equal(a, b)


def test_load_errors_are_model_load_errors(backend, tmp_path):
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(ModelLoadError, match="JSON object"):
        load(str(tmp_path), backend=backend)
