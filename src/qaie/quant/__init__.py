"""Quantization (torchao PT2E), checkpoints, export to LiteRT and its op tables."""
