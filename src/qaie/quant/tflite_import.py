"""Import an INT8 LiteRT file of the paper's network as an FP32 EnhanceNet checkpoint.

The authors' release (GenAI4E/QATIE, `ckpts/*.tflite`) holds the trained network only as
post-training-quantized INT8 files. Their 35 convolutions carry per-channel int8 weights and
int32 biases; the instance norms are MEAN / SQUARED_DIFFERENCE / RSQRT / MUL / ADD with the
affine as constant MUL (gamma) and ADD (beta) tensors. Dequantizing those gives back the FP32
weights up to int8 rounding: the closest FP32 network to what the authors deployed.

Tensors are matched to EnhanceNet's parameters by the order the converter writes the ops in
(the network's forward order, the same in both released files) and checked by shape, stride
and count, so another network is refused rather than loaded wrongly.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qaie.config import ModelConfig
from qaie.errors import QaieError
from qaie.nn.model import EnhanceNet
from qaie.quant.tflite_ops import read_tflite

_REFINE = ("conv_norm", "conv_point", "conv_a", "project", "conv_b")  # converter's op order
_BLOCKS = ("refine2", "refine4", "bottleneck", "dec4.refine", "dec2.refine")
FUSED = "reduce"  # the decoders' 1x1 conv over concat(up, refined, a|b): reduce + reduce_skip
STRIDED = {"enc2.conv_a", "enc2.conv_b", "enc4.conv_a", "enc4.conv_b"}


def conv_order() -> list[str]:
    """EnhanceNet's convolutions in the order the converter writes them (module paths; the
    decoders' fused 1x1 conv is `dec*.reduce`, split into reduce and reduce_skip on import)."""
    names = ["enc2.conv_a", "enc2.conv_b", *(f"refine2.{c}" for c in _REFINE)]
    names += ["enc4.conv_a", "enc4.conv_b", *(f"refine4.{c}" for c in _REFINE)]
    names += [f"bottleneck.{c}" for c in _REFINE]
    for dec in ("dec4", "dec2"):
        names += [f"{dec}.up.conv", f"{dec}.{FUSED}", *(f"{dec}.refine.{c}" for c in _REFINE)]
    return [*names, "up1.conv", "head"]


@dataclass(frozen=True)
class ImportedModel:
    """An EnhanceNet rebuilt from a .tflite, and where it came from (stored in the checkpoint)."""

    net: EnhanceNet
    config: ModelConfig
    source: dict


def import_tflite(path: str | os.PathLike) -> ImportedModel:
    """The FP32 EnhanceNet an INT8 .tflite of the paper's network holds; QaieError (one line)
    for anything else: not a .tflite, a float model, another network."""
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    data, model = read_tflite(
        path,
        lambda data: (data, schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))),
        advice="give an official INT8 .tflite",
    )
    graph = TFLiteGraph(model)
    convs = graph.ops("CONV_2D")
    if any(graph.dtype(op.inputs[1]) != "INT8" for op in convs):
        raise QaieError(
            f"{path}: float convolutions; qaie import reads INT8 files (per-channel int8 weights)"
        )
    order = conv_order()
    if len(convs) != len(order) or not convs:
        raise QaieError(
            f"{path}: {len(convs)} convolutions, the paper's network has {len(order)}; not its INT8 file"
        )
    slopes = {round(float(op.builtinOptions.alpha), 6) for op in graph.ops("LEAKY_RELU")}
    if len(slopes) != 1:
        raise QaieError(f"{path}: expected one LeakyReLU slope, found {sorted(slopes) or 'none'}")
    config = ModelConfig(width=int(graph.shape(convs[0].inputs[1])[0]), relu_slope=slopes.pop())
    net = EnhanceNet(config)
    params = dict(net.named_parameters())
    state = {}
    for name, op in zip(order, convs, strict=True):
        weight = torch.from_numpy(
            graph.dequantized(op.inputs[1]).transpose(0, 3, 1, 2).copy()
        )  # OHWI -> OIHW
        bias = torch.from_numpy(graph.dequantized(op.inputs[2]))
        stride = int(op.builtinOptions.strideH)
        if stride != (2 if name in STRIDED else 1):
            raise QaieError(f"{path}: convolution for {name} has stride {stride}; not the paper's network")
        if name.endswith(f".{FUSED}"):
            split = params[f"{name}.weight"].shape[1]
            pieces = {f"{name}.weight": weight[:, :split], f"{name}_skip.weight": weight[:, split:]}
        else:
            pieces = {f"{name}.weight": weight}
        pieces[f"{name}.bias"] = bias
        for key, value in pieces.items():
            if key not in params or params[key].shape != value.shape:
                expected = tuple(params[key].shape) if key in params else "none"
                raise QaieError(
                    f"{path}: {key} would be {tuple(value.shape)}, the paper's network (width "
                    f"{config.width}) has {expected}; not its INT8 file"
                )
        state.update(pieces)
    gammas, betas = graph.affine_constants("MUL"), graph.affine_constants("ADD")
    if len(gammas) != len(_BLOCKS) or len(betas) != len(_BLOCKS):
        raise QaieError(
            f"{path}: {len(gammas)} instance-norm scales and {len(betas)} shifts, the paper's "
            f"network has {len(_BLOCKS)}; not its INT8 file"
        )
    for block, gamma, beta in zip(_BLOCKS, gammas, betas, strict=True):
        for key, value in ((f"{block}.norm.weight", gamma), (f"{block}.norm.bias", beta)):
            if params[key].shape != value.shape:
                raise QaieError(
                    f"{path}: {key} would be {tuple(value.shape)}, expected {tuple(params[key].shape)}"
                )
            state[key] = torch.from_numpy(value)
    net.load_state_dict(state)
    net.eval()
    source = {
        "kind": "tflite-int8",
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "how": "per-channel int8 conv weights and int32 biases dequantized; instance-norm MUL/ADD "
        "constants as the affine",
    }
    return ImportedModel(net, config, source)


class TFLiteGraph:
    """The first subgraph of a TFLite model (object API: `schema.ModelT`, as
    `flatbuffer_utils.read_model` gives it), with the lookups the import needs."""

    def __init__(self, model) -> None:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils as fb

        self.model, self.graph = model, model.subgraphs[0]
        ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
        self.names = [
            ops.get(fb.get_builtin_code_from_operator_code(c), "CUSTOM") for c in model.operatorCodes
        ]

    def kind(self, op) -> str:
        return self.names[op.opcodeIndex]

    def ops(self, name: str) -> list:
        return [op for op in self.graph.operators if self.kind(op) == name]

    def dtype(self, index: int) -> str:
        return self.types[self.graph.tensors[index].type]

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.graph.tensors[index].shape)

    def constant(self, index: int) -> np.ndarray | None:
        data = self.model.buffers[self.graph.tensors[index].buffer].data
        if data is None or len(data) == 0:
            return None
        dtype = {"INT8": np.int8, "INT32": np.int32, "FLOAT32": np.float32}[self.dtype(index)]
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape(self.shape(index))

    def dequantized(self, index: int) -> np.ndarray:
        """A constant's real values: (q - zero_point) * scale, per channel along axis 0 or per tensor."""
        q, quant = self.constant(index), self.graph.tensors[index].quantization
        assert q is not None and quant is not None and quant.scale is not None, index
        scale, zero = np.asarray(quant.scale, np.float64), np.asarray(quant.zeroPoint, np.float64)
        if scale.size > 1:  # per-channel: the quantized dimension is the output channels here
            shape = (-1,) + (1,) * (q.ndim - 1)
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return ((q.astype(np.float64) - zero) * scale).astype(np.float32)

    def affine_constants(self, name: str) -> list[np.ndarray]:
        """Dequantized 1-D constant operands of every `name` op (MUL: gammas, ADD: betas), in order."""
        found = []
        for op in self.ops(name):
            for index in op.inputs:
                if len(self.shape(index)) == 1 and self.constant(index) is not None:
                    found.append(self.dequantized(index))
        return found
