"""What a training run tells the user: a tqdm bar per epoch on a terminal, plain lines otherwise.

* stderr is a TTY and not ``quiet``: a tqdm bar per epoch showing running metrics
  (e.g. loss, acc), images/s, and tqdm's ETA.
* not a TTY (logs, CI, tests) and not ``quiet``: a plain line every ~10% of the epoch.
* always: one summary line per epoch on stdout.
Only the main process reports; other ranks get a silent reporter.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Mapping, TextIO

from tqdm import tqdm


def format_metrics(metrics: Mapping[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}" if abs(value) < 1e4 else f"{key} {value:.0f}")
        else:
            parts.append(f"{key} {value}")
    return "  ".join(parts)


class EpochProgress:
    """Progress of one epoch: call :meth:`update` after each step, :meth:`close` at the end."""

    def __init__(self, *, desc: str, total: int, mode: str, stream: TextIO) -> None:
        self.desc, self.total, self.mode, self.stream = desc, total, mode, stream
        self.step, self.images = 0, 0
        self.start = time.perf_counter()
        self.every = max(1, total // 10)
        self.bar = tqdm(total=total, desc=desc, file=stream, dynamic_ncols=True, leave=False) if mode == "bar" else None

    @property
    def images_per_s(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def update(self, images: int, metrics: Mapping[str, float]) -> None:
        self.step += 1
        self.images += images
        if self.bar is not None:
            self.bar.set_postfix_str(format_metrics({**metrics, "img/s": self.images_per_s}), refresh=False)
            self.bar.update(1)
        elif self.mode == "lines" and (self.step % self.every == 0 or self.step == self.total):
            elapsed = time.perf_counter() - self.start
            eta = elapsed / self.step * max(self.total - self.step, 0)
            print(
                f"{self.desc} [{self.step}/{self.total}] {format_metrics(metrics)}  "
                f"img/s {self.images_per_s:.1f}  eta {eta:.0f}s",
                file=self.stream, flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ProgressReporter:
    """Creates :class:`EpochProgress` objects and prints summaries; silent when ``enabled`` is False."""

    def __init__(self, *, enabled: bool = True, quiet: bool = False, stream: TextIO | None = None,
                 summary_stream: TextIO | None = None) -> None:
        self.enabled, self.quiet = enabled, quiet
        self.stream = stream if stream is not None else sys.stderr
        self.summary_stream = summary_stream if summary_stream is not None else sys.stdout

    def _mode(self) -> str:
        if not self.enabled or self.quiet:
            return "off"
        isatty = getattr(self.stream, "isatty", lambda: False)
        return "bar" if isatty() else "lines"

    def epoch(self, *, desc: str, total: int) -> EpochProgress:
        return EpochProgress(desc=desc, total=total, mode=self._mode(), stream=self.stream)

    def summary(self, text: str) -> None:
        """One line on stdout, printed even with ``quiet`` (the per-epoch summary, the final result)."""
        if self.enabled:
            print(text, file=self.summary_stream, flush=True)

    def info(self, text: str) -> None:
        """A status line on stderr (skipped when quiet)."""
        if self.enabled and not self.quiet:
            print(text, file=self.stream, flush=True)

    def warn(self, text: str) -> None:
        """A warning on stderr, printed even with ``quiet``."""
        if self.enabled:
            print(f"warning: {text}", file=self.stream, flush=True)
