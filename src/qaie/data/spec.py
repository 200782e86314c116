"""The data spec syntax of `--data` (parsed by `qaie.data.datasets.parse_spec`), torch-free so
that the command line's help texts can name every spec without importing torch."""

from __future__ import annotations

KINDS = ("builtin", "synthetic", "pairs", "dped", "photos")
PHONES = ("iphone", "blackberry", "sony")
SPEC_SYNTAX = (
    "builtin | synthetic:FOLDER | pairs:FOLDER | dped:FOLDER[:iphone|blackberry|sony] | photos:FOLDER"
)
