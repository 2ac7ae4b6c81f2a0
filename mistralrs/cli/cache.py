"""`mistralrs cache list|delete`: the Hugging Face hub cache, read and pruned by huggingface_hub.

The cache is the folder downloads go to: --hf-cache when given (as for `run`),
else huggingface_hub's HF_HUB_CACHE (which follows HF_HUB_CACHE and HF_HOME).
Only model repos are shown; datasets and spaces in the same cache are left alone.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from huggingface_hub import CachedRepoInfo, HFCacheInfo, constants, scan_cache_dir
from huggingface_hub.errors import CacheNotFound
from rich.console import Console
from rich.table import Table

from mistralrs.cli.options import GLOBAL, Options, with_options
from mistralrs.errors import UserError

cache_app = typer.Typer(
    name="cache",
    help="Manage the Hugging Face model cache.",
    no_args_is_help=True,
    add_completion=False,
)

HfCacheOption = Annotated[Path | None, typer.Option(
    "--hf-cache", metavar="PATH", help="Hugging Face cache directory (default: HF_HUB_CACHE, or $HF_HOME/hub).")]


@cache_app.command("list")
@with_options(GLOBAL)
def list_models(hf_cache: HfCacheOption = None, *, opts: Options) -> None:
    """List all cached models with their sizes and last used times."""
    folder = cache_dir(hf_cache)
    info = _scan(folder)
    repos = _models(info)
    console = Console()
    console.print("Hugging Face Model Cache", style="bold")
    if repos:
        table = Table()
        table.add_column("Model")
        table.add_column("Size", justify="right")
        table.add_column("Last Used")
        now = time.time()
        for repo in sorted(repos, key=lambda r: r.repo_id.lower()):
            table.add_row(repo.repo_id, human_size(repo.size_on_disk), last_used(_last_used(repo), now))
        console.print(table)
    else:
        console.print("No models cached.")
    total = sum(r.size_on_disk for r in repos)
    console.print(f"Total: {len(repos)} model{'' if len(repos) == 1 else 's'}, {human_size(total)}")
    console.print(f"Cache directory: {folder}", soft_wrap=True)  # one line, so it can be copied
    if info and info.warnings:
        # Folders huggingface_hub cannot parse (interrupted downloads, stray files) are not
        # counted above; say so rather than under-report silently.
        Console(stderr=True).print(f"Skipped {len(info.warnings)} unreadable cache entries, "
                                   f"e.g. {info.warnings[0]}", style="dim", soft_wrap=True)


@cache_app.command("delete")
@with_options(GLOBAL)
def delete_model(
    model_id: Annotated[str, typer.Option("-m", "--model-id", metavar="ID", help="The model to delete.")],
    hf_cache: HfCacheOption = None,
    *,
    opts: Options,
) -> None:
    """Delete a model from the cache."""
    folder = cache_dir(hf_cache)
    info = _scan(folder)
    repos = _models(info)
    repo = _find(repos, model_id, folder)
    # Deleting every revision makes huggingface_hub remove the whole repo folder, blobs included.
    strategy = info.delete_revisions(*(rev.commit_hash for rev in repo.revisions))
    freed = strategy.expected_freed_size
    strategy.execute()
    typer.echo(f"Deleted {repo.repo_id} ({human_size(freed)} freed).")


# ---- helpers -------------------------------------------------------------------------------------


def cache_dir(hf_cache: Path | None) -> Path:
    return Path(hf_cache).expanduser() if hf_cache else Path(constants.HF_HUB_CACHE)


def _scan(folder: Path) -> HFCacheInfo | None:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"The Hugging Face cache {folder} is not a folder; point --hf-cache at the cache folder.")
    try:
        return scan_cache_dir(folder)
    except CacheNotFound:
        return None  # nothing downloaded yet: an empty cache, not an error


def _models(info: HFCacheInfo | None) -> list[CachedRepoInfo]:
    return [repo for repo in (info.repos if info else ()) if repo.repo_type == "model"]


def _find(repos: list[CachedRepoInfo], model_id: str, folder: Path) -> CachedRepoInfo:
    exact = [r for r in repos if r.repo_id == model_id]
    # Hub ids are case-insensitive, so `qwen/qwen3-4b` names `Qwen/Qwen3-4B` when only one matches.
    loose = [r for r in repos if r.repo_id.lower() == model_id.lower()]
    found = exact or (loose if len(loose) == 1 else [])
    if found:
        return found[0]
    cached = ", ".join(sorted(r.repo_id for r in repos)) or "nothing"
    raise UserError(f"{model_id} is not in the cache {folder}; cached: {cached}. "
                    "See `mistralrs cache list`.", param="model_id")


def _last_used(repo: CachedRepoInfo) -> float:
    # Access times are often not updated (noatime mounts); a later download also counts as use.
    return max(repo.last_accessed, repo.last_modified)


def human_size(size: float) -> str:
    """Decimal units, as the hub shows model sizes: 8.5 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def last_used(timestamp: float, now: float) -> str:
    """'today', 'yesterday', '3 days ago', '1 week ago', '2 months ago', '1 year ago'."""
    # Calendar days in local time: something used last night is "yesterday" even 8 hours later.
    days = max(0, (date.fromtimestamp(now) - date.fromtimestamp(timestamp)).days)
    if days == 0:
        return "today"
    if days == 1:
        return "yesterday"
    # The largest unit that fits; days >= 2 here, so "day" always does.
    length, unit = next((n, u) for n, u in ((365, "year"), (30, "month"), (7, "week"), (1, "day")) if days >= n)
    count = days // length
    return f"{count} {unit}{'' if count == 1 else 's'} ago"
