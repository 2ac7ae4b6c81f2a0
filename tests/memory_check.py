"""Estimated against measured memory: what `tune` predicts a model takes, and what loading it takes.

Loading runs in a fresh interpreter, so the measure is the model's alone: anonymous resident
memory (Linux RssAnon) just before and just after `load`. File-backed pages are left out on
purpose: safetensors are memory-mapped, and clean pages of a mapped file are page cache the
kernel reclaims under pressure, not memory the model holds.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np

MEASURE = r"""
import gc, json, sys
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
folder, backend, quant, compile = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4] == "1"
from mistralrs.engine import api
from mistralrs.engine import chat_template, tokenizer  # imports are not the model's memory
import mistralrs.models
from mistralrs.backends import get_ops
get_ops(backend, cpu=True)  # nor is the backend library's own start-up
gc.collect()
before = anon()
extra = {"isq": quant} if quant else {}
llm = api.load(folder, backend=backend, cpu=True, compile=compile, **extra)
gc.collect()
print(json.dumps({"before": before, "after": anon()}))
"""


def measured_load_bytes(folder: str, backend: str, quant: str | None = None, compile: bool = False) -> int:
    """Anonymous resident memory that loading `folder` with `backend` (and `quant`) adds; `compile`
    compiles the decoder layers as a default torch CPU load does (tests otherwise run eagerly)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", MEASURE, folder, backend, quant or "", "1" if compile else "0"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["after"] - result["before"]


def estimated_load_bytes(folder: str, backend: str, quant: str | None = None) -> int:
    """What tune estimates for `folder` loaded as `quant` (None: unquantized at the checkpoint's dtype)."""
    from mistralrs.tune.machine import Machine
    from mistralrs.tune.metadata import read_metadata
    from mistralrs.tune.quant_types import lookup
    from mistralrs.tune.recommend import analyse

    meta = read_metadata(folder)
    cpu = Machine("cpu", "test", 1 << 40, 1 << 40)
    analysis = analyse(meta, cpu, backend=backend, profile="quality")
    name = quant or analysis.compute_dtype
    return next(o.size_bytes for o in analysis.options if o.quant.name == lookup(name).name)


def write_sized_qwen3(folder: str, tokenizer_from: str, *, hidden: int, layers: int, intermediate: int,
                      heads: int, kv_heads: int, head_dim: int = 64, vocab: int, seed: int = 0) -> str:
    """A Qwen3 checkpoint of the given shape with random bf16 weights (std 0.02), written with numpy.

    Big enough for the weights to dominate memory, without transformers' slow initialisation.
    """
    import shutil

    os.makedirs(folder, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_from, name), os.path.join(folder, name))
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "self_attn.q_norm.weight": (head_dim,), p + "self_attn.k_norm.weight": (head_dim,),
            p + "mlp.gate_proj.weight": (intermediate, hidden), p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
        })
    rng = np.random.default_rng(seed)
    header, blobs, offset = {}, [], 0
    for name, shape in shapes.items():
        if len(shape) == 1:
            values = np.ones(shape, np.float32)
        else:
            values = rng.standard_normal(shape, np.float32) * 0.02
        bf16 = (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()  # bf16 = the top half of f32
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + len(bf16)]}
        blobs.append(bf16)
        offset += len(bf16)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for blob in blobs:
            f.write(blob)
    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "vocab_size": vocab, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 2048, "rope_theta": 1000000.0, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "hidden_act": "silu", "attention_bias": False,
        "bos_token_id": 0, "eos_token_id": 2,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return folder
