"""The network, its losses and its metrics (PyTorch)."""
