"""The `mistralrs` command: the typer app, its commands, and how errors leave it.

Every error a user can fix ends the same way: one `error: ...` line on stderr
and exit code 2 (usage errors, bad values, UserError from the engine, features
not built yet). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import typer
from typer import _click as click  # the click typer vendors; its exceptions are the ones raised

import mistralrs
from mistralrs.cli.bench import bench
from mistralrs.cli.cache import cache_app
from mistralrs.cli.completions import completions
from mistralrs.cli.doctor import doctor
from mistralrs.cli.from_config import from_config
from mistralrs.cli.login import login
from mistralrs.cli.options import GLOBAL, Options, with_options
from mistralrs.cli.quantize import quantize
from mistralrs.cli.run import run
from mistralrs.cli.serve import serve
from mistralrs.cli.tune import tune
from mistralrs.errors import UserError

PROG = "mistralrs"

app = typer.Typer(
    name=PROG,
    help="Fast LLM inference: chat with a model, serve it, benchmark it.",
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every subcommand
    no_args_is_help=True,
    add_completion=False,  # `mistralrs completions <shell>` replaces typer's --install-completion
    pretty_exceptions_enable=False,
)
app.command("run")(run)
app.command("serve")(serve)
app.command("from-config")(from_config)
app.command("quantize")(quantize)
app.command("tune")(tune)
app.command("doctor")(doctor)
app.command("login")(login)
app.add_typer(cache_app, name="cache")
app.command("bench")(bench)
app.command("completions")(completions)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {mistralrs.__version__}")
        raise typer.Exit()


@app.callback()
@with_options(GLOBAL)
def root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option(
        "-V", "--version", is_eager=True, callback=_print_version, help="Print version information and exit.")] = False,
    *,
    opts: Options,
) -> None:
    # Global options typed before the command name; each command falls back on these.
    ctx.obj = dict(opts.items())


def main(argv: list[str] | None = None) -> NoReturn:
    from typer.completion import completion_init

    completion_init()  # registers typer's completion classes, which the scripts' callbacks use
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError:
        code = 2  # building the exception already printed the help
    except click.exceptions.ClickException as exc:
        _print_error(exc.format_message() + _help_hint(exc))
        code = exc.exit_code
    except typer.Abort:
        code = 130  # Ctrl-C or Ctrl-D at one of click's own prompts
    except UserError as exc:
        _print_error(exc.message)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


def _help_hint(exc: click.exceptions.ClickException) -> str:
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.exceptions.UsageError) and ctx is not None:
        return f" (see `{ctx.command_path} --help`)"
    return ""


def _print_error(message: str) -> None:
    # One line: usage errors from click can span lines (choices, suggestions). Typer prefixes
    # choice errors with its validator's "Value error, ", which says nothing to a user.
    message = " ".join(message.replace("Value error, ", "").split())
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    main()
