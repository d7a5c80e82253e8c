"""Seconds per stage of one coding call: where a decode's time goes (``make bench`` prints the
shares; ``CodingReport.stats["stage_seconds"]``)."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator


class StageClock:
    """Accumulates wall seconds under stage names; nested stages are not subtracted."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.plan: str | None = None  # the memory plan the decoder ran (tokenizer_io.FrameEmitter)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def as_dict(self) -> dict[str, float]:
        return {name: round(seconds, 6) for name, seconds in self.seconds.items()}
