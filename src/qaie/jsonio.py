"""Strict JSON for everything qaie writes (files and `--json` output).

JSON has no Infinity or NaN, yet the PSNR of two identical images is infinite. qaie writes a
non-finite number as null (parity adds ``"identical": true``), and dumps with
``allow_nan=False``, so a value that slips through fails here rather than producing a file
that strict parsers reject.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(data: Any) -> Any:
    """`data` with every non-finite float (in dicts, lists and tuples) replaced by None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite(value) for value in data]
    return data


def dumps(data: Any, indent: int | None = 2) -> str:
    """Strict JSON text of `data`, ending in a newline."""
    return json.dumps(finite(data), indent=indent, allow_nan=False) + "\n"
