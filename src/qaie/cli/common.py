"""Argument helpers that several commands share: the network's options and plain output."""

from __future__ import annotations

import argparse

from qaie.jsonio import dumps


def print_json_or_lines(data: dict, as_json: bool) -> None:
    if as_json:
        print(dumps(data), end="")
    else:
        for key, value in data.items():
            print(f"{key}: {value}")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Width and the paper's ablation switches, shared by every command that builds a network."""
    p.add_argument("--width", type=int, default=32, help="base channel count c (default 32)")
    p.add_argument("--no-encoder-refiners", action="store_true", help="ablation: 3x3 conv instead")
    p.add_argument("--no-fusion-refiners", action="store_true", help="ablation: 3x3 conv instead")
    p.add_argument("--no-output-residual", action="store_true", help="ablation: y = clamp(delta)")


def model_config_from_args(args: argparse.Namespace):  # -> ModelConfig (lazy import)
    from qaie.config import ModelConfig

    return ModelConfig(
        width=args.width,
        encoder_refiners=not args.no_encoder_refiners,
        fusion_refiners=not args.no_fusion_refiners,
        output_residual=not args.no_output_residual,
    )
