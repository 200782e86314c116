"""Configuration dataclasses: the one source of truth stored in every checkpoint and sidecar.

Frozen dataclasses validate themselves on construction so a bad value fails where it is
given, with a message that names the value and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from qaie.errors import QaieError

T = TypeVar("T")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the gated multi-scale network.

    Args:
        width: base channel count c (S/2 has c channels, S/4 2c, S/8 4c).
        encoder_refiners: refinement blocks after each gated encoder (ablation: 3x3 conv).
        fusion_refiners: refinement blocks after each decoder fusion (ablation: 3x3 conv).
        output_residual: predict y = clamp(x + delta) (ablation: y = clamp(delta)).
        relu_slope: negative slope of every LeakyReLU.
        norm_passes: 2 makes every InstanceNorm take its statistics a second time, from its
            normalised map (`qaie.nn.model.InstanceNorm`): the same function in float, int8
            statistics fitted to each map once quantized. The weights do not change.
    """

    width: int = 32
    encoder_refiners: bool = True
    fusion_refiners: bool = True
    output_residual: bool = True
    relu_slope: float = 0.2
    norm_passes: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or self.width < 1:
            raise QaieError(f"width must be a positive integer, got {self.width!r}")
        if self.norm_passes not in (1, 2):
            raise QaieError(f"norm_passes must be 1 or 2, got {self.norm_passes!r}")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a config dataclass from a dict, rejecting unknown keys (strict loading)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise QaieError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(names)}")
    return cls(**data)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-dict form of a config dataclass, for checkpoints and JSON sidecars."""
    return dataclasses.asdict(config)
