"""qaie: quantization-aware image enhancement for phones (QAT -> integer-only INT8 LiteRT)."""

__version__ = "0.1.0"
