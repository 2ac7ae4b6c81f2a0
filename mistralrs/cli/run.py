"""`mistralrs run`: chat with a model in the terminal (or answer piped prompts line by line)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from mistralrs.cli.line_input import LineReader, history_path
from mistralrs.cli.loading import check_loading_options, load_model
from mistralrs.cli.options import (
    GLOBAL,
    MODEL_LOADING,
    RUNTIME,
    ModelType,
    ModelTypeArgument,
    Options,
    with_options,
)
from mistralrs.cli.request_log import RequestLog
from mistralrs.errors import UserError


@with_options(RUNTIME, *MODEL_LOADING, GLOBAL)
def run(
    model_type: ModelTypeArgument = ModelType.auto,
    enable_thinking: Annotated[
        bool, typer.Option("--enable-thinking", help="Enable thinking mode for models that support it.")
    ] = False,
    *,
    opts: Options,
) -> None:
    r"""Run a model in interactive mode. Type \help in the chat for its commands."""
    check_loading_options(opts, model_type)
    chat(opts, enable_thinking=enable_thinking)


def chat(opts: Options, *, enable_thinking: bool) -> None:
    """Load the model and chat with it in the terminal (also `from-config`'s `command = "run"`)."""
    # Imported here: the chat pulls in numpy, jinja2 and tokenizers, which --help and
    # shell completion (a new process per TAB) should not wait for.
    from mistralrs.cli.chat_output import ChatOutput
    from mistralrs.cli.chat_repl import ChatSession

    log = RequestLog(opts.log)
    try:
        llm = load_model(opts)
        if llm.template is None:
            raise UserError(
                f"{opts.model_id} has no chat template, so it cannot chat; pass one with -c/--chat-template "
                "(a .jinja file, or a .json with a chat_template key)."
            )
        interactive = sys.stdin.isatty()
        output = ChatOutput(interactive)
        if enable_thinking and not llm.template.thinks:
            output.note(f"The chat template of {opts.model_id} has no thinking mode; --enable-thinking changes nothing.")
        if interactive:
            output.note(f"{llm.model_id} ({llm.arch}, {llm.dtype}, {llm.backend}). "
                        r"Type \help for commands, \exit or Ctrl-D to quit.")
        session = ChatSession(llm, output, enable_thinking=enable_thinking, seed=opts.seed, log=log)
        session.run(LineReader(interactive, history_path()))
    finally:
        log.close()
