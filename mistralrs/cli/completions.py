"""`mistralrs completions <shell>`: print a shell completion script.

bash, zsh, fish and PowerShell get typer's scripts, which call `mistralrs` back
with `_MISTRALRS_COMPLETE` set to complete from the live command tree; Elvish
gets a generated static script.
"""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from mistralrs.cli.elvish_completion import elvish_script
from mistralrs.cli.options import GLOBAL, Options, with_options

Shell = Literal["bash", "zsh", "fish", "elvish", "powershell"]


def complete_var(prog_name: str) -> str:
    # The variable typer's scripts set when they call the program back for completions.
    return f"_{prog_name.replace('-', '_').upper()}_COMPLETE"


@with_options(GLOBAL)
def completions(
    shell: Annotated[Shell, typer.Argument(help="The shell to complete for.")],
    ctx: typer.Context,
    *,
    opts: Options,
) -> None:
    """Generate shell completions for your shell (print a script to install)."""
    root = ctx.find_root()
    prog_name = root.info_name or "mistralrs"
    if shell == "elvish":
        script = elvish_script(root.command, prog_name, list(ctx.help_option_names))
    else:
        from typer.completion import get_completion_script

        script = get_completion_script(prog_name=prog_name, complete_var=complete_var(prog_name), shell=shell)
    typer.echo(script)
