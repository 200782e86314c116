"""Models shipped inside the package (`qaie models`, and `qaie enhance` without --model).

A shipped model is an exported ``NAME.tflite`` in ``qaie/assets/models/`` with its export
sidecar (``NAME.tflite.json``) and a model card (``NAME.md``: data, recipe, measured numbers
and the command that reproduces them). Torch-free, like the rest of the runtime path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qaie.errors import QaieError
from qaie.runtime.litert import read_sidecar

MODELS_DIR = Path(__file__).parents[1] / "assets" / "models"


@dataclass(frozen=True)
class ShippedModel:
    name: str
    path: Path
    file_bytes: int
    card: str  # markdown; empty when the card is missing
    sidecar: dict[str, Any]  # what qaie export recorded: format, signatures, I/O, float_ops
    checkpoints: dict[str, Path]  # "qat" / "fp32": the checkpoints it was exported from or with

    def summary(self) -> dict[str, Any]:
        """The JSON `qaie models --json` prints for this model."""
        return {
            "name": self.name,
            "path": str(self.path),
            "file_bytes": self.file_bytes,
            "format": self.sidecar.get("format"),
            "quant": self.sidecar.get("quant"),
            "signatures": [s["name"] for s in self.sidecar.get("signatures", [])],
            "io_dtype": self.sidecar.get("io", {}).get("dtype"),
            "float_ops": self.sidecar.get("float_ops"),
            "checkpoints": {kind: str(path) for kind, path in self.checkpoints.items()},
            "card": self.card,
        }


def shipped_models(folder: Path | None = None) -> list[ShippedModel]:
    """The shipped models, by name (the first is the default)."""
    folder = folder or MODELS_DIR
    paths = sorted(folder.glob("*.tflite")) if folder.is_dir() else []
    return [_describe(p) for p in paths]


def default_model(folder: Path | None = None) -> Path:
    """The model `qaie enhance` uses when no --model is given."""
    models = shipped_models(folder)
    if not models:
        raise QaieError("no model is installed in the package; pass --model FILE.tflite")
    return models[0].path


def _describe(path: Path) -> ShippedModel:
    """A shipped NAME.tflite, its card NAME.md, and its checkpoints: for ``PREFIX-int8``,
    ``PREFIX-qat.ckpt`` (the QAT model it was exported from: run it with `qaie enhance
    --model ... --tile none` for the whole-photo reference) and ``PREFIX-fp32.ckpt``."""
    card = path.with_suffix(".md")
    prefix = path.stem.removesuffix("-int8")
    checkpoints = {kind: path.with_name(f"{prefix}-{kind}.ckpt") for kind in ("qat", "fp32")}
    return ShippedModel(
        name=path.stem,
        path=path,
        file_bytes=path.stat().st_size,
        card=card.read_text() if card.is_file() else "",
        sidecar=read_sidecar(path),
        checkpoints={kind: p for kind, p in checkpoints.items() if p.is_file()},
    )
