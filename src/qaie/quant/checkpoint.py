"""One checkpoint format for FP32, QAT and PTQ models; every command loads through `load_model`.

A checkpoint carries its own configuration, so it rebuilds itself (as nanoGPT's do). It is a
`torch.save`d dict that loads with ``weights_only=True`` (plain data and tensors only):

    format        FORMAT (an int, bumped on incompatible changes)
    model_config  dict of qaie.config.ModelConfig
    train_config  dict of qaie.experiment.train.TrainConfig, or None (e.g. written by PTQ calibration)
    quant         None (FP32 EnhanceNet) | "qat" | "ptq" (a prepared PT2E GraphModule)
    state_dict    the network's state dict (no prefix): EnhanceNet's, or the prepared graph's
                  (weights plus fake-quant / observer scales)
    source        optional: where imported weights came from (`qaie import`: file, sha256, how)

Checkpoints written by `qaie train` are Lightning checkpoints with these keys added at the
top level (plus Lightning's own: epoch, optimizer and scheduler states, callbacks, loops),
so `--resume` works through Lightning and everything else through this module.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qaie.atomic import atomic_path
from qaie.config import ModelConfig, from_dict, to_dict
from qaie.errors import QaieError
from qaie.nn.model import EnhanceNet

FORMAT = 1
QUANT_MODES = (None, "qat", "ptq")
# Prepared graphs are size-dynamic (qaie.quant.quantize): the example only has to be a valid input.
EXAMPLE_SIZE = (64, 64)
ZIP_MAGIC = b"PK\x03\x04"  # what every torch.save file starts with


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint, in eval mode.

    Args:
        net: EnhanceNet (quant None) or the prepared PT2E GraphModule (quant "qat"/"ptq").
        config: the checkpoint's architecture.
        quant: None, "qat" or "ptq".
        train_config: the TrainConfig as a dict (`qaie.experiment.train.TrainConfig.from_dict`), or None.
        path: where it was loaded from.
    """

    net: nn.Module
    config: ModelConfig
    quant: str | None
    train_config: dict[str, Any] | None
    path: Path


def header(
    config: ModelConfig, quant: str | None = None, train_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The self-describing keys of a checkpoint (everything but the state dict)."""
    assert quant in QUANT_MODES, quant
    return {"format": FORMAT, "model_config": to_dict(config), "train_config": train_config, "quant": quant}


def save_model(
    path: str | os.PathLike,
    net: nn.Module,
    config: ModelConfig,
    quant: str | None = None,
    *,
    train_config: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> None:
    """Write `net` (EnhanceNet or a prepared GraphModule) as a checkpoint, atomically."""
    checkpoint = header(config, quant, train_config)
    if source is not None:
        checkpoint["source"] = source
    checkpoint["state_dict"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_plain(path: Path, refused: str, content: bytes | None = None) -> Any:
    """torch.load with weights_only=True of `path` (or of its `content`, already read): a
    checkpoint is data, never code. One-line errors name the file; `refused` says why a file
    that needs arbitrary unpickling is not loaded."""
    try:
        return torch.load(
            io.BytesIO(content) if content is not None else path, map_location="cpu", weights_only=True
        )
    except pickle.UnpicklingError as err:  # weights_only met a class it does not allow
        raise QaieError(f"{path}: {refused}") from err
    except Exception as err:  # torch raises many types for damaged archives
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise QaieError(f"{path}: checkpoint is corrupt ({reason})") from err


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict, checked to be a qaie checkpoint; QaieError naming the file if not."""
    path = Path(path)
    if path.is_dir():
        raise QaieError(f"{path}: is a folder, expected a checkpoint file")
    if not path.is_file():
        raise QaieError(f"{path}: checkpoint not found")
    _check_archive(path)
    checkpoint = load_plain(
        path, "not a qaie checkpoint, or corrupt (it holds Python objects, not only tensors and plain data)"
    )
    if not isinstance(checkpoint, dict) or not {"model_config", "state_dict"} <= checkpoint.keys():
        raise QaieError(
            f"{path}: not a qaie checkpoint (no model_config/state_dict); train one with qaie train"
        )
    if checkpoint.get("format") != FORMAT:
        raise QaieError(f"{path}: checkpoint format {checkpoint.get('format')!r}, this qaie reads {FORMAT}")
    if checkpoint.get("quant") not in QUANT_MODES:
        raise QaieError(
            f"{path}: unknown quant mode {checkpoint.get('quant')!r}; expected one of {QUANT_MODES}"
        )
    return checkpoint


def _check_archive(path: Path) -> None:
    """torch.save writes a zip archive: tell a foreign file from a truncated checkpoint before
    torch.load does (its messages for both are long and cryptic)."""
    try:
        with path.open("rb") as f:
            head = f.read(len(ZIP_MAGIC))
        whole = zipfile.is_zipfile(path)  # finds the archive's end record
    except OSError as err:
        raise QaieError(f"{path}: cannot read checkpoint ({err.strerror})") from err
    if not head:
        raise QaieError(f"{path}: checkpoint file is empty (0 bytes)")
    if head != ZIP_MAGIC:
        raise QaieError(
            f"{path}: not a checkpoint (not a torch.save zip archive); pass a .ckpt written by qaie"
        )
    if not whole:
        raise QaieError(f"{path}: checkpoint is truncated (its zip archive has no end); use a complete copy")


def checkpoint_config(
    path: Path, checkpoint: dict[str, Any], expect: ModelConfig | None = None
) -> ModelConfig:
    """The checkpoint's ModelConfig; QaieError if `expect` (what the flags say) differs."""
    try:
        config = from_dict(ModelConfig, checkpoint["model_config"])
    except (QaieError, TypeError) as err:
        raise QaieError(f"{path}: bad model_config in checkpoint ({err})") from err
    if expect is not None and checkpoint.get("quant") is None:
        # FP32 weights are the same function in either norm form: the flags choose it
        config = dataclasses.replace(config, norm_passes=expect.norm_passes)
    if expect is not None and expect != config:
        field = next(
            f.name
            for f in dataclasses.fields(ModelConfig)
            if getattr(config, f.name) != getattr(expect, f.name)
        )
        flag = "--" + field.replace("_", "-")
        raise QaieError(
            f"{path}: checkpoint is {field} {getattr(config, field)} but {flag} {getattr(expect, field)} was given"
            if field == "width"
            else f"{path}: checkpoint has {field}={getattr(config, field)} but the flags give {getattr(expect, field)}"
        )
    return config


def build_net(
    config: ModelConfig, quant: str | None, example_size: tuple[int, int] = EXAMPLE_SIZE
) -> nn.Module:
    """A fresh network of this kind: EnhanceNet, or EnhanceNet prepared for QAT/PTQ."""
    net = EnhanceNet(config)
    if quant is None:
        return net
    from qaie.quant import quantize  # torchao: only for quantized checkpoints

    example = torch.rand(2, 3, *example_size)  # batch 2: torch.export specializes size-1 dims
    return quantize.prepare_qat(net, example) if quant == "qat" else quantize.prepare_ptq(net, example)


def load_model(
    path: str | os.PathLike,
    example_size: tuple[int, int] | None = None,
    expect: ModelConfig | None = None,
) -> LoadedModel:
    """Rebuild the network a checkpoint holds, in eval mode, on the CPU.

    Args:
        path: a checkpoint written by `save_model` or `qaie train`.
        example_size: (H, W) of the example a quantized graph is traced with (the graph takes
            any size >= qaie.quant.quantize.MIN_TRACED_SIDE); ignored for FP32.
        expect: the architecture the command line asks for; a mismatch is an error (the
            checkpoint's own config is used when None).
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    config = checkpoint_config(path, checkpoint, expect)
    quant = checkpoint["quant"]
    net = build_net(config, quant, example_size or EXAMPLE_SIZE)
    try:
        net.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0][:160]
        raise QaieError(f"{path}: weights do not match the checkpoint's own config ({reason})") from err
    if quant is None:
        net.eval()
    else:  # scales stay as trained/calibrated while the model is used
        from qaie.quant.quantize import freeze_observers

        freeze_observers(net)
    return LoadedModel(net, config, quant, checkpoint.get("train_config"), path)
