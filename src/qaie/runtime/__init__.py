"""The deployed model, torch-free: LiteRT files, whole photos, shipped models, benchmarks."""
