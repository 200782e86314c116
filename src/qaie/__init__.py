"""qaie: quantization-aware image enhancement for phones (QAT -> integer-only INT8 LiteRT).

    >>> import qaie
    >>> out = qaie.enhance("photo.jpg")  # (H, W, 3) uint8, the shipped INT8 model in LiteRT

The API (`load`, `enhance`, `create_model`, `list_models`; see `qaie.api`) is imported on
first use (PEP 562), so `import qaie` loads neither torch nor LiteRT, and the LiteRT path
never loads torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["create_model", "enhance", "list_models", "load"]

if TYPE_CHECKING:
    from qaie.api import create_model, enhance, list_models, load


def __getattr__(name: str) -> Any:
    if name in __all__:
        from qaie import api

        return getattr(api, name)
    raise AttributeError(f"module 'qaie' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
