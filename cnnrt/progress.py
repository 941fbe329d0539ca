"""Progress bars for long work, on stderr, only when a person is watching.

tqdm draws them when it is installed (`pip install 'cnnrt[progress]'`); without it, or when stderr
is not a terminal, or with --quiet, there is no bar at all. Reporting progress never changes
what runs: a runner calls `progress(done)` between chunks of work it does anyway.
"""
from __future__ import annotations

import sys


def enabled(quiet: bool = False, stream=None) -> bool:
    stream = stream if stream is not None else sys.stderr
    if quiet:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Bar:
    """`bar(done)` moves the bar to `done` of `total`; `bar.close()` ends it. A no-op when off."""

    def __init__(self, total: int, desc: str, unit: str = "img", quiet: bool = False, min_total: int = 0):
        self._tqdm = None
        self.done = 0
        if total < max(min_total, 1) or not enabled(quiet):
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        try:
            import os
            sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
        except (OSError, ValueError, AttributeError):
            sized = False
        # a terminal that reports no size (a bare pseudo-terminal) gets 80x24: tqdm draws nothing in 0x0
        size = {"dynamic_ncols": True} if sized else {"ncols": 80, "nrows": 24}
        self._tqdm = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                          unit_scale=total >= 10000, **size)

    @property
    def on(self) -> bool:
        return self._tqdm is not None

    def __call__(self, done: int) -> None:
        if self._tqdm is not None and done > self.done:
            self._tqdm.update(done - self.done)
        self.done = max(self.done, done)

    def step(self, n: int = 1) -> None:
        self(self.done + n)

    def stage(self, text: str) -> None:
        """Name the step now running beside the bar (a bar over a few named steps, such as import's)."""
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(text)

    def write(self, text: str) -> None:
        """A log line on stderr that does not break the bar."""
        if self._tqdm is not None:
            self._tqdm.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bar(total: int, desc: str, unit: str = "img", quiet: bool = False, min_total: int = 0) -> Bar:
    return Bar(total, desc, unit=unit, quiet=quiet, min_total=min_total)
