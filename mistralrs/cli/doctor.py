"""`mistralrs doctor`: system diagnostics, as a table or as JSON.

The JSON schema is stable (scripts and bug reports read it):
{"version": 1, "checks": [{"name", "status", "message", "suggestion"}],
 "summary": {"ok": n, "warn": n, "error": n}}. The exit code is 1 when any
check is an error, else 0.
"""

from __future__ import annotations

import json as jsonlib
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mistralrs.cli.doctor_checks import ERROR, OK, STATUSES, WARN, Check, guarded, machine_checks
from mistralrs.cli.doctor_hub import hub_checks
from mistralrs.cli.options import GLOBAL, Options, with_options

SCHEMA_VERSION = 1
STYLES = {OK: "green", WARN: "yellow", ERROR: "bold red"}


@with_options(GLOBAL)
def doctor(
    json: Annotated[bool, typer.Option("--json", help="Output JSON instead of human-readable text.")] = False,
    *,
    opts: Options,
) -> None:
    """Run system diagnostics and environment checks."""
    hub = guarded(lambda: hub_checks(opts.token_source), "Hugging Face checks")
    checks = machine_checks() + (hub if isinstance(hub, list) else [hub])
    summary = {status: sum(c.status == status for c in checks) for status in STATUSES}
    if json:
        report = {"version": SCHEMA_VERSION, "checks": [c.to_json() for c in checks], "summary": summary}
        typer.echo(jsonlib.dumps(report, indent=2))
    else:
        _print_table(checks, summary)
    if summary[ERROR]:
        raise typer.Exit(1)


def _print_table(checks: list[Check], summary: dict[str, int]) -> None:
    console = Console()
    table = Table(title="mistralrs doctor", title_justify="left", show_lines=False)
    table.add_column("Check", style="bold", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Details")
    for check in checks:
        details = Text(check.message)
        if check.suggestion and check.status != OK:
            details.append("\n→ " + check.suggestion, style="dim")
        table.add_row(check.name, Text(check.status.upper(), style=STYLES[check.status]), details)
    console.print(table)
    console.print(f"{summary[OK]} ok, {summary[WARN]} warning(s), {summary[ERROR]} error(s)")
