"""`mistralrs doctor`: a stable JSON schema, warnings (never errors or hangs) when the hub is
unreachable, a rendered table, exit code 1 only for errors, and the individual verdicts.

CLI runs are subprocesses: huggingface_hub reads HF_HUB_OFFLINE / HF_ENDPOINT / HF_HOME
at import time. The hub is never reached: it is either off or pointed at a closed port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import namedtuple

import pytest

from mistralrs.cli import doctor_checks, doctor_hub
from mistralrs.cli.doctor_checks import ERROR, OK, STATUSES, WARN

CLOSED_PORT = "http://127.0.0.1:9"  # discard: nothing listens there, so connecting fails at once
HUB_CHECKS = ("Hugging Face Hub", "Hugging Face token")


def doctor(tmp_path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), COLUMNS="200", TERM="dumb", **env_extra)
    return subprocess.run([sys.executable, "-m", "mistralrs.cli.main", "doctor", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def report(done: subprocess.CompletedProcess) -> dict:
    data = json.loads(done.stdout)
    assert set(data) == {"version", "checks", "summary"} and data["version"] == 1
    assert set(data["summary"]) == set(STATUSES)
    for check in data["checks"]:
        assert set(check) == {"name", "status", "message", "suggestion"}
        assert check["status"] in STATUSES and check["message"]
    counts = {s: sum(c["status"] == s for c in data["checks"]) for s in STATUSES}
    assert data["summary"] == counts
    # The exit code follows the errors, whatever this machine's disk or backends say.
    assert done.returncode == (1 if counts[ERROR] else 0), done.stderr
    return {c["name"]: c for c in data["checks"]}


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": CLOSED_PORT}], ids=["offline", "closed"])
def test_json_offline_is_warnings_not_errors(tmp_path, env):
    start = time.monotonic()
    checks = report(doctor(tmp_path, "--json", **env))
    assert time.monotonic() - start < 30  # short timeouts: no hang on a dead network
    for name in HUB_CHECKS:
        assert checks[name]["status"] == WARN, checks[name]
    expected = {"CPU extensions", "Backends", "HF cache", "Disk space", "Fused attention", *HUB_CHECKS}
    assert expected <= set(checks)
    assert checks["HF cache"]["status"] == OK  # a fresh HF_HOME under tmp_path can be created


def test_human_output_renders(tmp_path):
    done = doctor(tmp_path, HF_HUB_OFFLINE="1")
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr
    for text in ("Check", "Status", "CPU extensions", "Hugging Face Hub", "WARN", "warning(s)"):
        assert text in done.stdout


def test_a_failing_check_exits_1(tmp_path):
    # An unset --token-source variable is an error the doctor reports, rather than exit 2.
    done = doctor(tmp_path, "--json", "--token-source", "env:MISTRALRS_TEST_UNSET_VAR", HF_HUB_OFFLINE="1")
    checks = report(done)
    assert checks["Hugging Face token"]["status"] == ERROR and done.returncode == 1


# ---- the verdicts, in-process with the probes replaced ----------------------------------------


@pytest.mark.parametrize("machine, flags, status", [
    ("x86_64", {"avx", "avx2", "fma", "avx512f"}, OK),
    ("x86_64", {"avx", "sse4_2"}, WARN),
    ("aarch64", {"asimd", "fp"}, OK),
    ("x86_64", None, WARN),
])
def test_cpu_extensions(monkeypatch, machine, flags, status):
    monkeypatch.setattr(doctor_checks.platform, "machine", lambda: machine)
    monkeypatch.setattr(doctor_checks, "_cpu_flags", lambda: flags)
    assert doctor_checks.cpu_extensions().status == status


def test_cpu_only_torch_on_an_nvidia_machine_warns(monkeypatch):
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(doctor_checks, "has_nvidia_gpu", lambda: True)
    check = doctor_checks.torch_matches_hardware()
    assert check.status == WARN and "CPU-only" in check.message and check.suggestion


def test_quantized_kernels_on_cuda_need_triton(monkeypatch):
    monkeypatch.setattr(doctor_checks, "_cuda_usable", lambda: False)
    assert doctor_checks.quantized_kernels() is None  # nothing to say without CUDA
    monkeypatch.setattr(doctor_checks, "_cuda_usable", lambda: True)
    real_find_spec = doctor_checks.importlib.util.find_spec
    monkeypatch.setattr(doctor_checks.importlib.util, "find_spec",
                        lambda name: None if name == "triton" else real_find_spec(name))
    check = doctor_checks.quantized_kernels()
    assert check.status == WARN and "dequantized" in check.message and "pip install triton" in check.suggestion


def test_no_backend_is_an_error(monkeypatch):
    monkeypatch.setattr(doctor_checks, "installed", lambda module: False)
    assert doctor_checks.backends_installed().status == ERROR


Usage = namedtuple("Usage", "total used free")


@pytest.mark.parametrize("free_gb, status", [(50, OK), (5, WARN), (0.5, ERROR)])
def test_disk_space_thresholds(monkeypatch, free_gb, status):
    monkeypatch.setattr(doctor_hub.shutil, "disk_usage", lambda path: Usage(0, 0, int(free_gb * 1e9)))
    assert doctor_hub.disk_space().status == status


def test_unwritable_cache_is_an_error(monkeypatch, tmp_path):
    # A file where the cache folder should be: not writable even for root, unlike chmod.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setattr(doctor_hub.constants, "HF_HUB_CACHE", str(blocker / "hub"))
    check = doctor_hub.cache_writable()
    assert check.status == ERROR and "HF_HOME" in check.suggestion


def test_a_crashing_probe_becomes_an_error_check(monkeypatch):
    def broken():
        raise ImportError("libcudart.so.12: cannot open shared object file")

    monkeypatch.setattr(doctor_checks, "fused_attention", broken)
    checks = {c.name: c for c in doctor_checks.machine_checks()}
    assert checks["Fused attention"].status == ERROR and "libcudart" in checks["Fused attention"].message
    assert "CPU extensions" in checks  # the other probes still ran
