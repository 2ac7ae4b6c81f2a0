"""UQFF 1.2 files: bit-identical round trips, shard sets, multi-file specs and every bad input."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from mistralrs.errors import UserError
from mistralrs.quant import afq, ggml_blocks, uqff
from mistralrs.quant import safetensors_io as sio
from mistralrs.quant.qtensor import AfqTensor, GgmlTensor


def weights(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, cols)) * 0.02).astype(np.float32)


def ggml(kind: str, rows: int = 8, cols: int = 256, seed: int = 0) -> GgmlTensor:
    return GgmlTensor(kind, (rows, cols), ggml_blocks.quantize(weights(rows, cols, seed), kind))


def bf16_exact(a: np.ndarray) -> np.ndarray:
    return afq.round_to_bfloat16(a)


def model_layers() -> dict:
    """A small model's worth of layers, one of each kind we store."""
    return {
        "model.layers.0.self_attn.q_proj": ggml("Q4_0", 8, 64, 1),
        "model.layers.0.self_attn.k_proj": ggml("Q8_0", 4, 64, 2),
        "model.layers.0.mlp.up_proj": ggml("Q4_K", 8, 256, 3),
        "model.layers.0.mlp.down_proj": ggml("Q6_K", 4, 512, 4),
        "model.layers.1.self_attn.q_proj": afq.quantize(weights(8, 128, 5), 4, 64, dtype="bfloat16"),
        "model.layers.1.mlp.down_proj": afq.quantize(weights(4, 256, 6), 8, 32),
        "model.layers.1.mlp.gate_proj": afq.quantize(weights(4, 96, 7), 3, 32, dtype="float16"),
        "lm_head": bf16_exact(weights(6, 64, 8)),
    }


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, GgmlTensor):
        assert (a.kind, a.shape) == (b.kind, b.shape) and np.array_equal(a.data, b.data)
    elif isinstance(a, AfqTensor):
        assert (a.bits, a.group_size, a.shape) == (b.bits, b.group_size, b.shape)
        for x, y in ((a.weight, b.weight), (a.scales, b.scales), (a.biases, b.biases)):
            assert x.dtype == y.dtype and np.array_equal(x, y)
    else:
        assert np.array_equal(a, b)


def raw_header(path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def rewrite(path, header: dict, body: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def edit_tensors(path, edit) -> None:
    """Rewrite a safetensors file after `edit(tensors: dict name -> (dtype, array), metadata)`."""
    f = sio.SafetensorsFile(path)
    tensors = {n: (f.entries[n].dtype, np.array(f.raw(n))) for n in f.keys()}
    meta = dict(f.metadata)
    f.close()
    edit(tensors, meta)
    sio.write_file(path, tensors, meta)


# ----------------------------------------------------------------------------- round trips


def test_round_trip_every_kind(tmp_path):
    layers = model_layers()
    biases = {"model.layers.0.self_attn.k_proj": bf16_exact(weights(1, 4, 9)[0]),
              "model.layers.1.self_attn.q_proj": weights(1, 8, 10)[0]}
    paths = uqff.write_uqff(tmp_path / "mixed", layers, biases)
    assert [p.name for p in paths] == ["mixed-0.uqff"]
    with uqff.open_uqff(paths[0]) as r:
        assert r.version == (1, 2, 0) and sorted(r.keys()) == sorted(layers)
        assert r.metadata["uqff.producer"] == "mistralrs-py" and r.metadata["uqff.version"] == "1.2.0"
        for key, value in layers.items():
            layer = r.layer(key)
            assert layer.key == key and layer.file == paths[0]
            assert_same(value, layer.weight)
            assert layer.shape == value.shape
            if key in biases:
                assert np.array_equal(layer.bias, biases[key])
            else:
                assert layer.bias is None
        assert r.label("model.layers.0.mlp.up_proj") == "Q4_K"
        assert r.counts() == {"Q4_0": 1, "Q8_0": 1, "Q4_K": 1, "Q6_K": 1, "AFQ4": 1, "AFQ8": 1, "AFQ3": 1, "BF16": 1}
        assert r.get("model.norm") is None and "model.norm" not in r


def test_layout_is_what_mistralrs_writes(tmp_path):
    layers = {"a.q": ggml("Q4_K"), "a.k": afq.quantize(weights(4, 64), 4, 64, dtype="bfloat16"),
              "a.o": bf16_exact(weights(2, 32))}
    (path,) = uqff.write_uqff(tmp_path / "t.uqff", layers, {"a.q": np.zeros(8, np.float32)})
    assert path.name == "t-0.uqff"
    header, body = raw_header(path)
    meta = header.pop("__metadata__")
    assert meta["uqff.producer"] == "mistralrs-py" and meta["uqff.version"] == "1.2.0"
    spec = {k: (v["dtype"], v["shape"]) for k, v in header.items()}
    assert spec == {
        "uqff.version.major": ("U32", []), "uqff.version.minor": ("U32", []), "uqff.version.patch": ("U32", []),
        "a.q.weight": ("U8", [8 * 144]), "a.q.weight.dtype": ("U32", []), "a.q.weight.shape": ("U32", [2]),
        "a.q.weight.format": ("U8", []), "a.q.bias": ("BF16", [8]),
        "a.k.weight": ("U32", [4, 8]), "a.k.weight.scales": ("BF16", [4, 1]), "a.k.weight.biases": ("BF16", [4, 1]),
        "a.k.weight.bits": ("U8", []), "a.k.weight.group_size": ("U8", []), "a.k.weight.format": ("U8", []),
        "a.o.weight": ("BF16", [2, 32]), "a.o.weight.format": ("U8", []),
    }  # fmt: skip
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    ranks = [["U8", "BF16", "U32"].index(header[k]["dtype"]) for k in order]
    assert ranks == sorted(ranks, reverse=True)  # safetensors' order: widest dtype first
    assert len(json.dumps(header)) and (8 + struct.unpack("<Q", path.read_bytes()[:8])[0]) % 8 == 0

    def scalar(name):
        b, e = header[name]["data_offsets"]
        return int.from_bytes(body[b:e], "little")

    assert [scalar(k) for k in uqff.VERSION_KEYS] == [1, 2, 0]
    assert scalar("a.q.weight.dtype") == 12 and scalar("a.q.weight.format") == 0
    assert scalar("a.k.weight.format") == 4 and scalar("a.k.weight.bits") == 4
    assert scalar("a.k.weight.group_size") == 64 and scalar("a.o.weight.format") == 1
    # a generic safetensors reader agrees
    safetensors = pytest.importorskip("safetensors.torch")
    loaded = safetensors.load_file(str(path))
    assert loaded["a.q.weight"].numpy().tobytes() == layers["a.q"].data.tobytes()
    assert np.array_equal(loaded["a.o.weight"].float().numpy(), layers["a.o"])


def test_dtype_choice(tmp_path):
    a = weights(4, 64)
    layers = {"x": afq.quantize(a, 4, 64), "y": a, "z": a.astype(np.float16), "w": bf16_exact(a)}
    (path,) = uqff.write_uqff(tmp_path / "d", layers)
    header, _ = raw_header(path)
    assert header["x.weight.scales"]["dtype"] == "F32" and header["y.weight"]["dtype"] == "F32"
    assert header["z.weight"]["dtype"] == "F16" and header["w.weight"]["dtype"] == "BF16"
    r = uqff.open_uqff(path)
    assert r.layer("z").weight.dtype == np.float16 and r.layer("w").weight.dtype == np.float32
    (path,) = uqff.write_uqff(tmp_path / "e", {"y": a}, dtype="bf16")
    assert np.array_equal(uqff.open_uqff(path).layer("y").weight, bf16_exact(a))


def test_stacked_experts_and_streamed_layers(tmp_path):
    experts = ggml("Q4_K", 3 * 4, 256)  # 3 experts of (4, 256), rows stacked
    afq_experts = afq.quantize(weights(3 * 8, 64), 4, 32)
    dense = bf16_exact(weights(6, 32)).reshape(2, 3, 32)
    bias = bf16_exact(weights(3, 4))
    stream = iter([("moe.experts.up_proj", experts), ("moe.experts.down_proj", afq_experts),
                   ("moe.experts.gate_proj", dense)])
    (path,) = uqff.write_uqff(tmp_path / "x", stream, {"moe.experts.up_proj": bias},
                              shapes={"moe.experts.up_proj": (3, 4, 256), "moe.experts.down_proj": (3, 8, 64)})
    header, _ = raw_header(path)
    assert header["moe.experts.down_proj.weight"]["shape"] == [3, 8, 8]
    assert header["moe.experts.down_proj.weight.scales"]["shape"] == [3, 8, 2]
    r = uqff.open_uqff(path)
    assert r.shape("moe.experts.up_proj") == (3, 4, 256) and r.shape("moe.experts.down_proj") == (3, 8, 64)
    assert r.shape("moe.experts.gate_proj") == (2, 3, 32)
    assert_same(r.layer("moe.experts.up_proj").weight, experts)
    assert_same(r.layer("moe.experts.down_proj").weight, afq_experts)
    assert np.array_equal(r.layer("moe.experts.gate_proj").weight, dense)
    assert np.array_equal(r.layer("moe.experts.up_proj").bias, bias)
    with pytest.raises(UserError, match=r"stacked shape \(2, 4, 256\) does not match"):
        uqff.write_uqff(tmp_path / "y", {"e": experts}, shapes={"e": (2, 4, 256)})


def test_failed_write_leaves_nothing(tmp_path):
    def layers():
        yield "m.a", ggml("Q8_0", 8, 64)
        yield "m.b", ggml("Q8_0", 8, 64)
        yield "m.a", ggml("Q8_0", 8, 64)

    with pytest.raises(UserError, match="Layer m.a is given twice"):
        uqff.write_uqff(tmp_path / "q", layers(), shard_limit=1)
    assert list(tmp_path.iterdir()) == []


def test_dense_gguf_entries(tmp_path):
    a = bf16_exact(weights(4, 8))
    tensors = {k: v for k, v in zip(uqff.VERSION_KEYS, [("U32", np.array(v, np.uint32).reshape(())) for v in (1, 0, 0)],
                                    strict=True)}
    encodings = {"f32": (0, a.view(np.uint8)), "f16": (1, a.astype(np.float16).view(np.uint8)),
                 "bf16": (30, sio.float32_to_bf16_bits(a).view(np.uint8))}
    for name, (type_id, data) in encodings.items():
        tensors[f"{name}.weight"] = ("U8", data.reshape(-1))
        tensors[f"{name}.weight.dtype"] = ("U32", np.array(type_id, np.uint32).reshape(()))
        tensors[f"{name}.weight.shape"] = ("U32", np.array([4, 8], np.uint32))
        tensors[f"{name}.weight.format"] = ("U8", np.array(0, np.uint8).reshape(()))
    sio.write_file(tmp_path / "dense.uqff", tensors)
    r = uqff.open_uqff(tmp_path / "dense.uqff")
    assert r.version == (1, 0, 0) and r.counts() == {"F32": 1, "F16": 1, "BF16": 1}
    for name in encodings:
        assert np.array_equal(r.layer(name).weight, a) and r.layer(name).weight.shape == (4, 8)


def test_residual_round_trip(tmp_path):
    tensors = {"model.norm.weight": bf16_exact(weights(1, 64)[0]), "model.embed_tokens.weight": weights(16, 8),
               "model.rotary.inv_freq": np.arange(4, dtype=np.float32), "ids": np.arange(3, dtype=np.int64)}
    path = uqff.write_residual(tmp_path, tensors)
    assert path.name == "residual.safetensors"
    back = uqff.read_residual(tmp_path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert np.array_equal(back[k], v)
    header, _ = raw_header(path)
    assert header["model.norm.weight"]["dtype"] == "BF16" and header["ids"]["dtype"] == "I64"
    with pytest.raises(UserError, match="not a UQFF file"):
        uqff.open_uqff(path)


# ----------------------------------------------------------------------------- sets and specs


def test_sharded_set_found_from_shard_zero(tmp_path):
    layers = {f"model.layers.{i}.mlp.up_proj": ggml("Q8_0", 8, 256, i) for i in range(5)}
    one = 8 * ggml_blocks.row_bytes("Q8_0", 256)
    paths = uqff.write_uqff(tmp_path / "q8_0", layers, shard_limit=2 * one + 100)
    assert [p.name for p in paths] == ["q8_0-0.uqff", "q8_0-1.uqff", "q8_0-2.uqff"]
    assert "uqff.version.major" in raw_header(paths[0])[0] and "uqff.version.major" not in raw_header(paths[1])[0]
    assert all(p.stat().st_size <= 2 * one + 2000 for p in paths)
    for spec in (paths[0], str(paths[0]), "q8_0-0.uqff", "q8_0.uqff"):
        r = uqff.open_uqff(spec, base_dir=tmp_path) if not str(spec).startswith("/") else uqff.open_uqff(spec)
        assert r.files == paths and r.keys() == list(layers)
        assert_same(r.layer("model.layers.4.mlp.up_proj").weight, layers["model.layers.4.mlp.up_proj"])
        assert r.layer("model.layers.4.mlp.up_proj").file == paths[2]
    # writing a smaller set over it removes the stale shards
    uqff.write_uqff(tmp_path / "q8_0-0.uqff", dict(list(layers.items())[:1]))
    assert sorted(p.name for p in tmp_path.glob("q8_0-*.uqff")) == ["q8_0-0.uqff"]


def test_layer_straddling_two_shards(tmp_path):
    """mistral.rs cuts shards per tensor, so one layer's entries may sit in two files."""
    layers = {"m.a": afq.quantize(weights(4, 64), 4, 64), "m.b": afq.quantize(weights(4, 64, 1), 8, 64)}
    paths = uqff.write_uqff(tmp_path / "afq", layers, shard_limit=1)
    moved = {}

    def take(tensors, meta):
        for name in ("m.a.weight.scales", "m.a.weight.biases"):
            moved[name] = tensors.pop(name)

    def give(tensors, meta):
        tensors.update(moved)

    edit_tensors(paths[0], take)
    edit_tensors(paths[1], give)
    r = uqff.open_uqff(paths[0])
    assert_same(r.layer("m.a").weight, layers["m.a"])
    assert r.layer("m.a").file == paths[0]


def test_multi_type_spec(tmp_path):
    a = {"model.layers.0.mlp.up_proj": ggml("Q4_K"), "model.layers.0.mlp.down_proj": ggml("Q6_K", 4, 512)}
    b = {"model.layers.0.self_attn.q_proj": afq.quantize(weights(8, 128), 8, 64),
         "model.layers.0.self_attn.o_proj": afq.quantize(weights(8, 128, 1), 2, 128)}
    pa = uqff.write_uqff(tmp_path / "q4k", a, shard_limit=1)  # one layer per shard
    pb = uqff.write_uqff(tmp_path / "afq8", b)
    assert len(pa) == 2
    r = uqff.open_uqff(f"{pa[0]} ; {pb[0]};")
    assert r.files == pa + pb and set(r.keys()) == set(a) | set(b)
    for key, value in {**a, **b}.items():
        assert_same(r.layer(key).weight, value)
    # naming a later shard explicitly too is harmless
    assert uqff.open_uqff([pa[0], pa[1], pb[0]]).files == pa + pb


def test_report_lists_shards(tmp_path):
    layers = {"m.a": ggml("Q4_0", 8, 64), "m.b": ggml("Q4_0", 8, 64, 1)}
    paths = uqff.write_uqff(tmp_path / "q4_0", layers, shard_limit=1)
    out = uqff.report_output("q4_0", paths, layers, targets={"m.b": "q6k"})
    report = uqff.write_report(tmp_path, [out], base_model="tiny/model")
    data = json.loads(report.read_text())
    assert data["schema"] == 1 and data["uqff_version"] == "1.2.0" and data["base_model"] == "tiny/model"
    (o,) = data["outputs"]
    assert o["shards"] == ["q4_0-0.uqff", "q4_0-1.uqff"] and o["layers"] == 2
    assert o["actual_counts"] == {"q4_0": 2} and o["fallback_count"] == 0
    assert o["layer_details"][1] == {"module": "m.b", "default_target": "q4_0", "resolved_target": "q6k",
                                     "stored": "q4_0", "shape": [8, 64]}
    # a second quant type merges into the report
    p8 = uqff.write_uqff(tmp_path / "q8_0", {"m.a": ggml("Q8_0", 8, 64)})
    uqff.write_report(tmp_path, [uqff.report_output("q8_0", p8, {"m.a": ggml("Q8_0", 8, 64)})])
    assert [o["quant"] for o in json.loads(report.read_text())["outputs"]] == ["q4_0", "q8_0"]
    # the report's shard list is authoritative: custom names work
    renamed = tmp_path / "custom-part-b.uqff"
    paths[1].rename(renamed)
    data["outputs"][0]["shards"] = ["q4_0-0.uqff", renamed.name]
    report.write_text(json.dumps(data))
    assert uqff.open_uqff(paths[0]).files == [paths[0], renamed]
    assert uqff.stored_label(ggml("Q6_K")) == "q6k" and uqff.stored_label(afq.quantize(weights(1, 32), 6, 32)) == "afq6"


def test_check_model_shapes(tmp_path):
    (p,) = uqff.write_uqff(tmp_path / "q", {"m.q": ggml("Q8_0", 8, 64), "m.k": ggml("Q8_0", 4, 64)})
    r = uqff.open_uqff(p)
    assert uqff.check_model_shapes(r, {"m.q": (8, 64), "m.k": [4, 64], "m.v": (4, 64)}) == ["m.v"]
    with pytest.raises(UserError, match=r"different model: layer m.q has shape \(8, 64\) but the model expects "
                                        r"\(16, 64\)"):
        uqff.check_model_shapes(r, {"m.q": (16, 64), "m.k": (4, 64)})
    with pytest.raises(UserError, match="layer m.k is not in this model"):
        uqff.check_model_shapes(r, {"m.q": (8, 64)})


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def good(tmp_path):
    (path,) = uqff.write_uqff(tmp_path / "q4k", {"m.a": ggml("Q4_K"), "m.b": afq.quantize(weights(4, 64), 4, 64)})
    return path


def test_truncated_and_garbage_files(good, tmp_path):
    data = good.read_bytes()
    good.write_bytes(data[:-10])
    with pytest.raises(UserError, match=r"q4k-0.uqff is not a valid UQFF file: it is truncated"):
        uqff.open_uqff(good)
    good.write_bytes(data[:100])
    with pytest.raises(UserError, match="header claims"):
        uqff.open_uqff(good)
    good.write_bytes(data[:5])
    with pytest.raises(UserError, match="only 5 bytes"):
        uqff.open_uqff(good)
    good.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(UserError, match="not valid JSON"):
        uqff.open_uqff(good)
    good.write_bytes(data + b"xx")
    with pytest.raises(UserError, match="2 bytes follow the last tensor"):
        uqff.open_uqff(good)
    with pytest.raises(UserError, match="does not exist"):
        uqff.open_uqff(tmp_path / "nothing-0.uqff")
    with pytest.raises(UserError, match="is a folder"):
        uqff.open_uqff(tmp_path)
    with pytest.raises(UserError, match="No UQFF file"):
        uqff.open_uqff(" ; ")


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    sio.write_file(path, {"model.layers.0.self_attn.q_proj.weight": ("F32", weights(4, 4))}, {"format": "pt"})
    with pytest.raises(UserError, match="model.safetensors is not a UQFF file.*ordinary safetensors checkpoint"):
        uqff.open_uqff(path)


def test_legacy_and_missing_versions(good, tmp_path):
    legacy = tmp_path / "old.uqff"
    sio.write_file(legacy, {"0": ("U8", np.zeros(10, np.uint8)), "1": ("U8", np.zeros(4, np.uint8))})
    with pytest.raises(UserError, match="legacy UQFF 0.x"):
        uqff.open_uqff(legacy)

    def drop_versions(tensors, meta):
        for k in uqff.VERSION_KEYS:
            del tensors[k]

    edit_tensors(good, drop_versions)
    with pytest.raises(UserError, match="no uqff.version tensors: it was written before UQFF 1.0"):
        uqff.open_uqff(good)


def test_later_shard_alone(tmp_path):
    paths = uqff.write_uqff(tmp_path / "q", {"m.a": ggml("Q8_0", 8, 64), "m.b": ggml("Q8_0", 8, 64)}, shard_limit=1)
    with pytest.raises(UserError, match="q-1.uqff is shard 1 of a UQFF set.*Pass q-0.uqff"):
        uqff.open_uqff(paths[1])


@pytest.mark.parametrize(("version", "message"), [
    ((2, 0, 0), r"is UQFF 2.0.0; mistralrs reads UQFF 1.0 to 1.2"),
    ((1, 3, 0), r"is UQFF 1.3.0, newer than this mistralrs reads \(UQFF 1.0 to 1.2\)"),
])  # fmt: skip
def test_unsupported_versions(good, version, message):
    def set_version(tensors, meta):
        for k, v in zip(uqff.VERSION_KEYS, version, strict=True):
            tensors[k] = ("U32", np.array(v, np.uint32).reshape(()))

    edit_tensors(good, set_version)
    with pytest.raises(UserError, match=message):
        uqff.open_uqff(good)


def test_older_minor_is_accepted(good):
    def set_minor(tensors, meta):
        tensors["uqff.version.minor"] = ("U32", np.array(1, np.uint32).reshape(()))

    edit_tensors(good, set_minor)
    assert uqff.open_uqff(good).version == (1, 1, 0)


def test_missing_shards(tmp_path):
    layers = {f"m.{i}": ggml("Q8_0", 8, 64, i) for i in range(4)}
    paths = uqff.write_uqff(tmp_path / "q8_0", layers, shard_limit=1)
    paths[2].unlink()
    with pytest.raises(UserError, match=r"set q8_0 .* is incomplete: q8_0-2.uqff is missing but q8_0-3.uqff exists"):
        uqff.open_uqff(paths[0])
    uqff.write_report(tmp_path, [uqff.report_output("q8_0", paths, layers)])
    with pytest.raises(UserError, match=r"uqff_report.json lists .*q8_0-2.uqff as part of the set"):
        uqff.open_uqff(paths[0])
    (tmp_path / "uqff_report.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid UQFF report"):
        uqff.open_uqff(paths[0])


def test_key_in_two_files(tmp_path):
    (a,) = uqff.write_uqff(tmp_path / "q4_0", {"m.a": ggml("Q4_0", 8, 64)})
    (b,) = uqff.write_uqff(tmp_path / "q8_0", {"m.a": ggml("Q8_0", 8, 64)})
    with pytest.raises(UserError, match=r"Layer m.a is in both .*q4_0-0.uqff and .*q8_0-0.uqff"):
        uqff.open_uqff(f"{a};{b}")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.__setitem__("m.a.weight.dtype", ("U32", np.array(99, np.uint32).reshape(()))),
     "stored as ggml type 99"),
    (lambda t: t.__setitem__("m.a.weight.dtype", ("U32", np.array(14, np.uint32).reshape(()))),
     r"\(Q6_K \[8, 256\]\) should hold 1680 bytes but has 1152"),
    (lambda t: t.__setitem__("m.a.weight.shape", ("U32", np.array([8, 200], np.uint32))),
     r"\(Q4_K \[8, 200\]\) is impossible"),
    (lambda t: t.__setitem__("m.a.weight.dtype", ("U8", np.array(12, np.uint8).reshape(()))),
     r"m.a.weight.dtype \(the ggml type id\) must be a U32 scalar, got U8"),
    (lambda t: t.__setitem__("m.a.weight", ("U32", t["m.a.weight"][1].view(np.uint32))),
     r"has weight U32 \[288\]; a ggml entry is 1-D U8"),
    (lambda t: t.pop("m.a.weight.shape"), r"is a gguf entry with the wrong set of tensors \(missing weight.shape\)"),
    (lambda t: t.__setitem__("m.a.weight.zeros", ("U8", np.zeros(1, np.uint8))), r"unexpected weight.zeros"),
    (lambda t: t.__setitem__("m.b.weight.bits", ("U8", np.array(7, np.uint8).reshape(()))), "AFQ bits 7"),
    (lambda t: t.__setitem__("m.b.weight.scales", ("F32", np.zeros((4, 2), np.float32))),
     r"has weight.scales F32 \[4, 2\]; expected a float tensor \[4, 1\]"),
    (lambda t: t.__setitem__("m.b.weight.format", ("U8", np.array(9, np.uint8).reshape(()))), "format code 9"),
    (lambda t: t.pop("m.b.weight.format"), r"has m.b.weight.* but no m.b.weight.format"),
    (lambda t: t.__setitem__("m.b.bias", ("F32", np.zeros(5, np.float32))), r"has bias F32 \[5\]"),
    (lambda t: t.__setitem__("stray", ("F32", np.zeros(5, np.float32))), r"tensor 'stray' is neither a layer entry"),
    (lambda t: t.__setitem__("m.c.weight.format", ("U8", np.array(3, np.uint8).reshape(()))),
     r"1 FP8 layer\(s\) \(e.g. m.c\)"),
])  # fmt: skip
def test_bad_entries(good, edit, message):
    edit_tensors(good, lambda tensors, meta: edit(tensors))
    with pytest.raises(UserError, match=message) as info:
        uqff.open_uqff(good)
    assert "q4k-0.uqff" in info.value.message


def test_bad_writer_input(tmp_path):
    with pytest.raises(UserError, match="without .weight/.bias"):
        uqff.write_uqff(tmp_path / "x", {"m.a.weight": ggml("Q8_0", 8, 64)})
    with pytest.raises(UserError, match=r"bias must have shape \[8\], got \[3\]"):
        uqff.write_uqff(tmp_path / "x", {"m.a": ggml("Q8_0", 8, 64)}, {"m.a": np.zeros(3, np.float32)})
    with pytest.raises(UserError, match="not being written"):
        uqff.write_uqff(tmp_path / "x", {"m.a": ggml("Q8_0", 8, 64)}, {"m.z": np.zeros(8, np.float32)})
    with pytest.raises(UserError, match="cannot store a list"):
        uqff.write_uqff(tmp_path / "x", {"m.a": [1, 2]})
    with pytest.raises(UserError, match="names shard 2"):
        uqff.write_uqff(tmp_path / "x-2.uqff", {"m.a": ggml("Q8_0", 8, 64)})
    with pytest.raises(UserError, match="does not exist"):
        uqff.write_uqff(tmp_path / "no" / "x", {"m.a": ggml("Q8_0", 8, 64)})
    with pytest.raises(UserError, match="Unknown float dtype"):
        uqff.write_uqff(tmp_path / "x", {"m.a": weights(2, 2)}, dtype="fp8")
