"""Progress bars that suit where stderr goes.

On a terminal: a tqdm bar redrawn in place. Anywhere else (a log file, CI, a pipe), tqdm's
carriage-return frames would become hundreds of lines, so the same bar is written as a plain
line at most every LOG_INTERVAL seconds, plus its first and last state.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between progress lines off a terminal


_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # cursor moves of nested bars


class _Lines:
    """A file for tqdm off a terminal: each frame it draws becomes one line (repeats dropped,
    terminal escape codes removed)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last = ""

    def write(self, text: str) -> None:
        for frame in re.split(r"[\r\n]", _ESCAPE.sub("", text)):
            frame = frame.strip()
            if frame and frame != self.last:
                self.out.write(frame + "\n")
                self.last = frame

    def flush(self) -> None:
        self.out.flush()


def progress(iterable: Iterable | None = None, *, file: TextIO | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr (or `file`): in place on a terminal, a few plain lines elsewhere.
    Takes tqdm's arguments; `disable=True` turns it off, `disable=None` shows it on a terminal
    only (for commands whose stderr is otherwise one line per problem, like `qaie enhance`)."""
    file = file or sys.stderr
    if kwargs.get("disable", False) is None:
        kwargs["disable"] = not file.isatty()
    if file.isatty():
        return tqdm(iterable, file=file, dynamic_ncols=True, **kwargs)
    return tqdm(iterable, file=_Lines(file), mininterval=LOG_INTERVAL, ncols=100, ascii=True, **kwargs)
