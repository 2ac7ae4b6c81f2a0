"""Stop strings over a text stream: hold back what could still become a stop string."""

from __future__ import annotations


class StopStrings:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add newly decoded text; return (text safe to emit, whether a stop string was hit).

        The stop string itself and anything after it are never emitted.
        """
        if not self.stops:
            return text, False
        self.held += text
        hits = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if hits:
            emit, self.held = self.held[: min(hits)], ""
            return emit, True
        keep = self._partial_suffix()
        emit = self.held[: len(self.held) - keep]
        self.held = self.held[len(self.held) - keep :]
        return emit, False

    def flush(self) -> str:
        """At the end of generation, what was held back was not a stop string after all."""
        out, self.held = self.held, ""
        return out

    def _partial_suffix(self) -> int:
        return max(held_prefix_length(self.held, stop) for stop in self.stops)


def held_prefix_length(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`.

    A streamed tag (a stop string, `</think>`, `<tool_call>`) can arrive split across
    chunks; that many trailing characters must be held back until the next chunk.
    """
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0
