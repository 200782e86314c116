"""Versions of Python and the stack: recorded in sidecars and results, printed by `qaie env`."""

from __future__ import annotations

import platform
from importlib import metadata

STACK = ("qaie", "torch", "torchao", "litert-torch", "ai-edge-litert", "lightning", "numpy")


def package_versions(*dists: str) -> dict[str, str]:
    """Installed versions of `dists`, read from package metadata (imports nothing heavy)."""
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def versions() -> dict[str, str]:
    """Python, the platform and the stack: what a bug report needs."""
    return {"python": platform.python_version(), "platform": platform.platform(), **package_versions(*STACK)}
