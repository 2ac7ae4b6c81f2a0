"""Running the `mistralrs` command in-process, as the CLI tests do."""

from __future__ import annotations

import pytest

from mistralrs.cli.main import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mistralrs ARGS...`."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err
