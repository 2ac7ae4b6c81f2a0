"""`mistralrs bench`: prefill and decode speed of one sequence, as a table.

The prompt is `--prompt-len` random token ids (seeded by --seed, else 0), so the
measure does not depend on a tokenizer or a chat template; generation is greedy
with EOS ignored so every run decodes exactly `--gen-len` tokens.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from mistralrs.cli.loading import check_loading_options, load_model
from mistralrs.cli.options import GLOBAL, MODEL_LOADING, ModelType, ModelTypeArgument, Options, with_options
from mistralrs.cli.request_log import RequestLog
from mistralrs.errors import UserError

if TYPE_CHECKING:
    from mistralrs.engine.params import Completion

PANEL = "Benchmark"


@dataclass
class Measure:
    """Mean and sample standard deviation of one quantity over the iterations."""

    mean: float
    std: float

    @classmethod
    def of(cls, values: list[float]) -> Measure:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


@with_options(*MODEL_LOADING, GLOBAL)
def bench(
    model_type: ModelTypeArgument = ModelType.auto,
    prompt_len: Annotated[int, typer.Option(
        "--prompt-len", min=1, metavar="N", rich_help_panel=PANEL,
        help="Number of tokens in the prompt (prefill test).")] = 512,
    gen_len: Annotated[int, typer.Option(
        "--gen-len", min=1, metavar="N", rich_help_panel=PANEL,
        help="Number of tokens to generate (decode test).")] = 128,
    iterations: Annotated[int, typer.Option(
        "--iterations", min=1, metavar="N", rich_help_panel=PANEL, help="Number of benchmark iterations.")] = 3,
    warmup: Annotated[int, typer.Option(
        "--warmup", min=0, metavar="N", rich_help_panel=PANEL, help="Number of warmup runs (discarded).")] = 1,
    *,
    opts: Options,
) -> None:
    """Run performance benchmarks: prefill and decode speed."""
    check_loading_options(opts, model_type)
    log = RequestLog(opts.log)
    try:
        llm = load_model(opts)
        if prompt_len + gen_len > llm.context_length:
            raise UserError(
                f"--prompt-len {prompt_len} plus --gen-len {gen_len} is more than the model's context of "
                f"{llm.context_length} tokens; lower them (or raise --max-seq-len if the model supports more)."
            )
        runs = _measure(llm, prompt_len, gen_len, iterations, warmup, opts.seed or 0, log)
    finally:
        log.close()
    print_results(opts.model_id, prompt_len, gen_len, runs)


def _measure(llm, prompt_len, gen_len, iterations, warmup, seed, log: RequestLog) -> list[Completion]:
    import numpy as np

    from mistralrs.engine.params import SamplingParams

    prompt = np.random.default_rng(seed).integers(0, llm.vocab_size, size=prompt_len).tolist()
    params = SamplingParams(temperature=0.0, max_tokens=gen_len, ignore_eos=True)
    runs = []
    for index in range(warmup + iterations):
        is_warmup = index < warmup
        _status(f"Warmup {index + 1}/{warmup}" if is_warmup else f"Iteration {index - warmup + 1}/{iterations}")
        log.request(model=llm.model_id, prompt_token_ids=prompt, sampling=params, warmup=is_warmup)
        completion = llm.generate(prompt, params)
        log.response(model=llm.model_id, usage=completion.usage, timing=completion.timing, warmup=is_warmup)
        if not is_warmup:
            runs.append(completion)
    _status("")
    return runs


def _status(message: str) -> None:
    # A transient progress line, only where someone watches it.
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[2K" + message)
        sys.stderr.flush()


def print_results(model_id: str, prompt_len: int, gen_len: int, runs: list[Completion]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    prefill = Measure.of([run.timing.prefill_tok_s(prompt_len) for run in runs])
    ttft_ms = statistics.fmean(run.timing.ttft_s * 1000 for run in runs)
    table = Table(box=box.SQUARE)
    for header in ("Test", "T/s", "Latency"):
        table.add_column(header)
    table.add_row(f"Prefill ({prompt_len} tokens)", f"{prefill.mean:.1f} ± {prefill.std:.1f}", f"{ttft_ms:.2f} ms (TTFT)")
    if gen_len > 1:
        decode = Measure.of([run.timing.decode_tok_s(gen_len) for run in runs])
        ms_per_token = statistics.fmean(run.timing.decode_s * 1000 / (gen_len - 1) for run in runs)
        table.add_row(f"Decode ({gen_len} tokens)", f"{decode.mean:.1f} ± {decode.std:.1f}", f"{ms_per_token:.2f} ms/T")
    else:  # one token is all prefill: there is no decode step to time
        table.add_row(f"Decode ({gen_len} tokens)", "n/a", "n/a")
    console = Console(highlight=False)
    console.print("Benchmark Results\n=================\n", markup=False)
    console.print(f"Model: {model_id}\nIterations: {len(runs)}\n", markup=False)
    console.print(table)
