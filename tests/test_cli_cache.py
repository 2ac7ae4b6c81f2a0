"""`mistralrs cache list|delete` on a hub cache laid out as huggingface_hub writes it.

The CLI runs in a subprocess because huggingface_hub reads HF_HOME / HF_HUB_CACHE
once, at import time; the hub itself is never contacted.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

SIZES = {"org/a": 3_000_000, "other/b-model": 1_500_000}  # bytes of weights per model
CONFIG = b'{"model_type": "llama"}'  # every model also has this small file


def write_repo(hub: str, repo_id: str, weight_bytes: int, revision: str, used_days_ago: float) -> None:
    """models--org--name/{blobs, refs/main, snapshots/<rev>/<file> -> ../../blobs/<hash>}."""
    repo = os.path.join(hub, "models--" + repo_id.replace("/", "--"))
    for sub in ("blobs", "refs", os.path.join("snapshots", revision)):
        os.makedirs(os.path.join(repo, sub), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(revision)
    files = {"config.json": CONFIG, "model.safetensors": os.urandom(weight_bytes)}
    stamp = time.time() - used_days_ago * 86400
    for name, data in files.items():
        blob = os.path.join(repo, "blobs", hashlib.sha256(data).hexdigest())
        with open(blob, "wb") as f:
            f.write(data)
        os.utime(blob, (stamp, stamp))
        os.symlink(os.path.join("..", "..", "blobs", os.path.basename(blob)),
                   os.path.join(repo, "snapshots", revision, name))


@pytest.fixture
def hf_home(tmp_path):
    home = tmp_path / "hf"
    hub = home / "hub"
    write_repo(str(hub), "org/a", SIZES["org/a"], "a" * 40, used_days_ago=0)
    write_repo(str(hub), "other/b-model", SIZES["other/b-model"], "b" * 40, used_days_ago=9)
    return home


def cli(env_home, *args: str, hf_hub_cache: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(env_home), HF_HUB_OFFLINE="1", COLUMNS="200", TERM="dumb")
    if hf_hub_cache:
        env["HF_HUB_CACHE"] = hf_hub_cache
    return subprocess.run([sys.executable, "-m", "mistralrs.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def expected_size(repo_id: str) -> int:
    return SIZES[repo_id] + len(CONFIG)


def test_list_shows_models_sizes_last_used_and_total(hf_home):
    done = cli(hf_home, "cache", "list")
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in done.stdout.splitlines() if line.count("│") == 4 and "Model" not in line}
    assert rows == {"org/a": ["3.0 MB", "today"], "other/b-model": ["1.5 MB", "1 week ago"]}
    total = (expected_size("org/a") + expected_size("other/b-model")) / 1e6
    assert f"Total: 2 models, {total:.1f} MB" in done.stdout
    assert f"Cache directory: {hf_home / 'hub'}" in done.stdout


def test_delete_removes_one_model(hf_home):
    done = cli(hf_home, "cache", "delete", "-m", "org/a")
    assert done.returncode == 0, done.stderr
    assert "Deleted org/a" in done.stdout
    assert not (hf_home / "hub" / "models--org--a").exists()
    assert (hf_home / "hub" / "models--other--b-model").exists()
    listed = cli(hf_home, "cache", "list").stdout
    assert "org/a" not in listed.replace("other/b-model", "") and "Total: 1 model," in listed


def test_deleting_an_unknown_model_exits_2_listing_the_cache(hf_home):
    done = cli(hf_home, "cache", "delete", "-m", "nobody/nothing")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "nobody/nothing" in lines[0] and "org/a" in lines[0] and "other/b-model" in lines[0]


def test_hf_cache_option_and_hf_hub_cache_env(hf_home, tmp_path):
    hub = str(hf_home / "hub")
    empty_home = tmp_path / "empty"
    # --hf-cache wins over HF_HOME...
    via_option = cli(empty_home, "cache", "list", "--hf-cache", hub)
    assert "Total: 2 models" in via_option.stdout, via_option.stderr
    # ...and HF_HUB_CACHE is honoured like huggingface_hub does.
    assert "Total: 2 models" in cli(empty_home, "cache", "list", hf_hub_cache=hub).stdout
    done = cli(empty_home, "cache", "delete", "--hf-cache", hub, "-m", "other/b-model")
    assert done.returncode == 0, done.stderr
    assert not (hf_home / "hub" / "models--other--b-model").exists()


def test_empty_or_missing_cache(tmp_path):
    done = cli(tmp_path / "nothing-here", "cache", "list")
    assert done.returncode == 0, done.stderr
    assert "No models cached." in done.stdout and "Total: 0 models, 0 B" in done.stdout
    assert cli(tmp_path / "nothing-here", "cache", "delete", "-m", "org/a").returncode == 2


def test_last_used_wording():
    from mistralrs.cli.cache import human_size, last_used

    now = time.time()
    words = [last_used(now - days * 86400, now) for days in (0, 2, 7, 16, 45, 800)]
    assert words == ["today", "2 days ago", "1 week ago", "2 weeks ago", "1 month ago", "2 years ago"]
    assert [human_size(n) for n in (512, 8.5e9)] == ["512 B", "8.5 GB"]
