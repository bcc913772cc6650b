"""The audit's progress: the stage and an ETA, drawn on a terminal, logged otherwise.

Why: an audit of 50,000 samples runs for many minutes in several stages (the main sample, the birthday
trials, the reference faces, the pair statistics, the report). On a terminal the bar of
:func:`indexer.progress.progress_bar` shows the stage (its description) and tqdm's ETA; off a terminal
(a log file, a CI job) a bar would be thousands of carriage returns, so :class:`LogBar` writes a log
line at INFO every ``every`` seconds instead, with the same stage, count, rate and ETA.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from indexer.progress import is_terminal, progress_bar

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0  # seconds between progress log lines off a terminal


def eta_words(seconds: float | None) -> str:
    """An ETA for people: '—' when unknown, else seconds, minutes or hours."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class LogBar:
    """The few methods of a tqdm bar the audit calls (``update``, ``set_description``, ``close``), as log
    lines: the stage, done/total, the rate and the ETA, at most one line per ``every`` seconds."""

    def __init__(self, total: int, desc: str = "", unit: str = "it", every: float = LOG_EVERY_S, **_: Any):
        self.total, self.desc, self.unit, self.every = int(total), desc, unit, every
        self.n = 0
        self.t0 = self.last = time.perf_counter()

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (time.perf_counter() if now is None else now) - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 and self.total else None
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        done = f"{self.n:,}/{self.total:,} {self.unit}{share}"
        return f"{self.desc}: {done}, {rate:.1f} {self.unit}/s, ETA {eta_words(eta)}"

    def set_description(self, desc: str, refresh: bool = True) -> None:
        if desc != self.desc:
            log.info("stage: %s (%s)", desc, self.line())
        self.desc = desc

    def close(self) -> None:
        log.info("%s: done, %s %s in %.1f s", self.desc, f"{self.n:,}", self.unit, time.perf_counter() - self.t0)


def stage_bar(*, total: int, desc: str, unit: str, enabled: bool = True, file: IO | None = None) -> Any:
    """A tqdm bar on a terminal, a :class:`LogBar` off one (when ``enabled``), else a silent bar."""
    stream = sys.stderr if file is None else file
    if enabled and not is_terminal(stream):
        return LogBar(total=total, desc=desc, unit=unit)
    return progress_bar(total=total, desc=desc, unit=unit, enabled=enabled, file=stream)


class Stages:
    """Named steps of one stage (the statistics), each timed: the bar's description is the step,
    its count the steps done, so a terminal shows which statistic runs and tqdm's ETA; ``seconds``
    keeps each step's time (the report's ``timing.statistics_stages``)."""

    def __init__(self, names: list[str], desc: str, enabled: bool = True):
        self.desc = desc
        self.bar = stage_bar(total=len(names), desc=desc, unit="step", enabled=enabled)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.bar.set_description(f"{self.desc}: {name}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            log.debug("%s: %s in %.2f s", self.desc, name, self.seconds[name])
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
