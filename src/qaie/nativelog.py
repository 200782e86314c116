"""Native libraries' log lines (TensorFlow's converter, LiteRT, absl) kept out of qaie's output.

They write to file descriptor 2 from C++, past Python's `sys.stderr` and `logging`, and no
setting of theirs turns all of them off (the converter's op count, oneDNN's banner, absl's
"before InitializeLog" notice, LiteRT's XNNPACK line). Around the calls that print them, fd 2
goes to a temporary file; its lines are shown only with `qaie --debug` (QAIE_DEBUG=1), or
when the call fails, so that nothing a failure said is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator


def debug() -> bool:
    """Whether the user asked for every library's output (`qaie --debug`)."""
    return bool(os.environ.get("QAIE_DEBUG"))


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hold what native code writes to fd 2 during the block; replay it on failure or --debug."""
    if debug():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Python loggers that torch (re)configures at import, at ERROR during the block unless
    --debug (e.g. torch.onnx's line for each torchvision op it skips)."""
    loggers = [] if debug() else [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
