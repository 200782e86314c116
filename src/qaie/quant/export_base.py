"""What every export (`.tflite`, `.onnx`, `.pte`) does around its own conversion.

The checks before any work (format, sizes, outputs writable), the network at each exported
size (FP32: the float network; INT8: the QAT/PTQ graph converted at that size, PTQ first for
an FP32 source), and the atomic write of the file and its strict-JSON sidecar
``FILE.EXT.json``. Each runtime's module keeps only its conversion of those graphs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.fx import GraphModule

from qaie.atomic import atomic_path, check_writable, write_text_atomic
from qaie.config import ModelConfig, to_dict
from qaie.errors import QaieError
from qaie.imageio import Size
from qaie.jsonio import dumps
from qaie.nn.model import EnhanceNet
from qaie.quant import calibrate, quantize, split
from qaie.quant import phases as phase_form
from qaie.runtime.litert import sidecar_path
from qaie.versions import package_versions

Format = Literal["fp32", "int8"]


class StageGraph(nn.Module):
    """One stage of `qaie.quant.split` as exporters trace it: NCHW tensors in the order of
    `inputs`, a tuple of `outputs` back (ONNX and ExecuTorch name them by position)."""

    def __init__(self, graph: GraphModule, inputs: list[str], outputs: list[str]) -> None:
        super().__init__()
        self.stage = graph  # (not `graph`: an exported module's own FX graph has that name)
        self.inputs, self.outputs = inputs, outputs

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        out = self.stage(*tensors)
        return tuple(out[name] for name in self.outputs)


def stage_graphs(
    static: nn.Module, size: Size, config: ModelConfig
) -> tuple[list[tuple[StageGraph, tuple[Tensor, ...]]], dict]:
    """The six stages of `static` (`Source.at(size)`) in windows of `size` (`qaie.quant.split`:
    the converted graph's trained scales, nothing re-quantized), each with NCHW sample inputs,
    and the split's meta."""
    graph = static if isinstance(static, GraphModule) else split.static_graph(static, size)
    stages = split.split(graph, config)
    graphs = []
    for k, (module, stage) in enumerate(zip(stages.graphs, stages.meta["stages"], strict=True)):
        samples = split.sample_inputs(stages.meta, k, size)
        graph = StageGraph(module, stage["inputs"], stage["outputs"])
        graphs.append((graph, tuple(samples[name] for name in stage["inputs"])))
    return graphs, stages.meta


def check_outputs(out: Path, overwrite: bool = True) -> None:
    """Fail before any work if `out` or its sidecar cannot be written (or exist, unless `overwrite`)."""
    check_writable(out, overwrite)
    check_writable(sidecar_path(out), overwrite)


def export_sizes(sizes: Iterable[Size]) -> list[Size]:
    """The distinct sizes in order; one line when there is none."""
    unique = list(dict.fromkeys(tuple(s) for s in sizes))
    if not unique:
        raise QaieError("no export size given; pass --size HxW[,HxW...]")
    return unique


@dataclass
class Source:
    """The network an export converts: FP32 (`net`), or the prepared QAT/PTQ graph (`prepared`).

    With `phases`, each nearest 2x upsample + conv3x3 is converted in phase form
    (`qaie.quant.phases`: the same FP32 function in 4/9 of its multiply-adds).
    """

    fmt: Format
    config: ModelConfig
    quant: str | None  # "qat" | "ptq" for INT8
    net: EnhanceNet | None = None
    prepared: GraphModule | None = None
    started: float = field(default_factory=time.perf_counter)
    phases: bool = False

    def at(self, size: Size) -> nn.Module:
        """The network with fixed shapes at `size`: the FP32 net (its static graph with
        `phases`), or the INT8 graph converted for it."""
        if self.net is not None:
            if not self.phases:
                return self.net
            static = split.static_graph(self.net, size)
            phase_form.rewrite(static)
            return static
        example = torch.rand(1, 3, *size)
        return quantize.convert(quantize.reprepare(self.prepared, example, dynamic=False), self.phases)

    def converted(self) -> GraphModule:
        """The INT8 graph converted with dynamic H and W."""
        return quantize.convert(self.prepared)


def source_for(
    fmt: str, source: EnhanceNet | GraphModule, calibration: Iterable[Tensor] | None, phases: bool = False
) -> Source:
    """Check the format and the source (FP32 needs an FP32 network); INT8 of an FP32 network
    runs PTQ on `calibration` first. `phases`: see `Source`. The export's clock starts here."""
    if fmt == "fp32":
        if not isinstance(source, EnhanceNet):
            raise QaieError("FP32 export needs an FP32 checkpoint, not a quantized (QAT/PTQ) one")
        return Source("fp32", source.config, None, net=copy.deepcopy(source).eval(), phases=phases)
    if fmt != "int8":
        raise QaieError(f"format {fmt!r}: expected fp32 or int8")
    started = time.perf_counter()
    prepared = calibrate.quantized_graph(source, calibration)
    config, quant = quantize.graph_info(prepared)
    return Source("int8", config, quant, prepared=prepared, started=started, phases=phases)


def write_export(
    out: Path, data: bytes, sidecar: Callable[[Path], dict], runtime_packages: tuple[str, ...]
) -> Path:
    """Write the model bytes, then its sidecar: `sidecar(the written file)` plus the versions of
    qaie, torch, torchao and `runtime_packages`. Both atomically; returns the sidecar's path."""
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
        meta = sidecar(tmp)
    meta["versions"] = package_versions("qaie", "torch", "torchao", *runtime_packages)
    write_text_atomic(sidecar_path(out), dumps(meta))
    return sidecar_path(out)


def common_sidecar(
    out: Path, source: Source, io: dict, file_bytes: int, source_checkpoint: str | None
) -> dict:
    """The sidecar fields every format records."""
    return {
        "file": out.name,
        "format": source.fmt,
        "quant": source.quant,
        "model_config": to_dict(source.config),
        "io": io,
        "file_bytes": file_bytes,
        "source_checkpoint": source_checkpoint,
    }


def io_summary(io: dict, shape: str = "") -> str:
    """`qaie export`'s words about the file's I/O (`shape`, e.g. "(1, H, W, 3) ", before the layout)."""
    q = f" scale {io['scale']:.8g} zero point {io['zero_point']}" if io["scale"] else ""
    return f"I/O: {io['input']} -> {io['output']}, {shape}{io['layout']} {io['dtype']}{q}"
