"""Paired and unlabelled photo datasets and the synthetic camera model."""
