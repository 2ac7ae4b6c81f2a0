"""scripts/fixtures.py's command line: which fixtures it fetches, and what it rejects."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import fixtures  # noqa: E402


@pytest.fixture
def fetched(monkeypatch):
    """Stand-ins for the fetchers (no registry is asked): the names fetched, in order."""
    names = []
    targets = {name: (lambda dtype, name=name: names.append(name) or f"/cache/{name}") for name in fixtures.TARGETS}
    monkeypatch.setattr(fixtures, "TARGETS", targets)
    return names


def test_no_target_fetches_every_fixture(fetched, capsys):
    assert fixtures.main([]) == 0
    assert fetched == list(fixtures.TARGETS)
    assert "smollm2-hf: /cache/smollm2-hf" in capsys.readouterr().out


def test_named_targets_and_all(fetched):
    assert fixtures.main(["gemma3-gguf", "smollm2-gguf"]) == 0
    assert fetched == ["gemma3-gguf", "smollm2-gguf"]
    fetched.clear()
    assert fixtures.main(["all"]) == 0
    assert fetched == list(fixtures.TARGETS)


def test_an_unknown_target_is_rejected_with_the_valid_ones(fetched, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fixtures.main(["smollm3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown target 'smollm3'" in err and "smollm2-hf" in err
    assert fetched == []
