"""Progress bars for loops that a caller owns: training and its evaluations, likelihood over a data
set, the apps' sampling.

A bar is shown only when it is asked for and stderr is a terminal (`progress_enabled`), so logs, CI
output and piped runs stay clean. Library sampler loops never draw one: they call the optional
`callback(i, t_next, x)`, and `StepProgress.callback` is such a callback; it touches no tensor, so it
adds no host-device sync to the loop.
"""
from __future__ import annotations

import sys
from typing import Optional

__all__ = ["progress_enabled", "StepProgress"]


def progress_enabled(requested: bool, stream=None) -> bool:
    """Whether to draw a bar: `requested` and `stream` (default: the current `sys.stderr`) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(requested) and callable(isatty) and bool(isatty())


class StepProgress:
    """A tqdm bar advanced once per sampler step through the sampler's `callback(i, t_next, x)`.

    Disabled (a no-op that still counts `steps`) when `enabled` is false. Use as a context manager
    or call `close()`.

    Args:
        enabled: draw the bar (see `progress_enabled`).
        total: the expected number of steps (None: unknown, e.g. an adaptive sampler).
        desc: the bar's label.
    """

    def __init__(self, enabled: bool, total: Optional[int], desc: str):
        from tqdm import tqdm

        self.steps = 0
        self._bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, disable=not enabled, leave=False)

    def callback(self, i, t_next, x) -> None:
        self.steps += 1
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
