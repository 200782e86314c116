"""`qaie ARGS` in a child process that takes SIGINT as a terminal's Ctrl-C would.

A suite run in the background by a shell inherits SIGINT ignored, and Python keeps an ignored
SIGINT ignored (as `nohup` wants), so a test that sends SIGINT must restore the default first."""

from __future__ import annotations

import signal
import subprocess
import sys


def qaie_process(*args: str, **kwargs) -> subprocess.Popen:
    """`python -m qaie.cli ARGS` with text pipes for stdout and stderr."""
    return subprocess.Popen(
        [sys.executable, "-m", "qaie.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )
