"""Counters and histograms the engine and the server record into, readable as Prometheus text.

Small and dependency-free on purpose: a few series, written from the engine
thread and the HTTP threads, read by /metrics. Each metric takes a lock, because
`+=` on a dict entry is not atomic across threads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable

Labels = tuple[tuple[str, str], ...]

# Seconds, spanning a fast GPU's inter-token gap to a long queue wait.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(labels: dict[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


def _format_labels(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help_text: str):
        self.name, self.help = name, help_text
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, labels: dict[str, str] | None = None) -> None:
        key = _labels(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, labels: dict[str, str] | None = None) -> float:
        return self._values.get(_labels(labels), 0.0)

    def samples(self, extra: Labels = ()) -> Iterable[str]:
        with self._lock:
            items = sorted(self._values.items()) or [((), 0.0)]  # a counter reads 0 before its first event
        for labels, value in items:
            yield f"{self.name}{_format_labels(labels, extra)} {_number(value)}"


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name, self.help = name, help_text
        self.buckets = tuple(buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def samples(self, extra: Labels = ()) -> Iterable[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative = 0
        for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
            cumulative += count
            yield f"{self.name}_bucket{_format_labels(extra, (('le', _number(bound)),))} {cumulative}"
        yield f"{self.name}_sum{_format_labels(extra)} {_number(total)}"
        yield f"{self.name}_count{_format_labels(extra)} {cumulative}"


class Gauge:
    """A value read when scraped (e.g. a queue's length), so it is never stale."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read):
        self.name, self.help = name, help_text
        self.read = read

    def samples(self, extra: Labels = ()) -> Iterable[str]:
        yield f"{self.name}{_format_labels(extra)} {_number(self.read())}"


def render(metrics: Iterable, extra_labels: dict[str, str] | None = None) -> str:
    """Prometheus text exposition format (version 0.0.4) of `metrics`."""
    extra = _labels(extra_labels)
    lines = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        lines.extend(metric.samples(extra))
    return "\n".join(lines) + "\n"


class EngineMetrics:
    """What a scheduler records: tokens in and out, and the latencies a user feels."""

    def __init__(self):
        self.prompt_tokens = Counter("mistralrs_prompt_tokens_total", "Prompt tokens prefilled.")
        self.generated_tokens = Counter("mistralrs_generated_tokens_total", "Tokens generated.")
        self.time_to_first_token = Histogram("mistralrs_time_to_first_token_seconds",
                                             "From a request's arrival to its first generated token.")
        self.inter_token_latency = Histogram("mistralrs_inter_token_latency_seconds",
                                             "Time between consecutive tokens of one sequence.")

    def all(self) -> list:
        return [self.prompt_tokens, self.generated_tokens, self.time_to_first_token, self.inter_token_latency]
