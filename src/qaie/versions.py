"""Versions of Python and the stack: recorded in sidecars and results, printed by `qaie env`."""

from __future__ import annotations

import platform
from importlib import metadata


def versions() -> dict[str, str]:
    """Versions of Python and the stack, read from package metadata (imports nothing heavy)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("qaie", "torch", "torchao", "litert-torch", "ai-edge-litert", "lightning", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
