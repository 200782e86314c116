"""The ONNX Runtime runtime: run an exported `.onnx` (qaie.quant.export_onnx) on photos of any size.

Torch-free (onnxruntime and numpy), like the LiteRT runtime. A file exported by qaie has
dynamic H and W, so a photo runs in one pass, the network's whole-photo output (`sizes` is
None for `enhance_image`); a file with a fixed size takes photos of that size, padded or tiled.
One pass holds every activation of the photo, so a photo whose one pass would need more than
a memory budget (DEFAULT_MEMORY_BUDGET) runs the file's stages instead (`FILE.onnx.stages/`,
see qaie.quant.export_onnx), in windows, with the same whole-photo output in bounded memory.
A file without stages (exported before them, or with --no-stages) runs every photo in one pass.
Input and output are NCHW: int8 at the scale and zero point the file's metadata records
(keys "qaie.io.scale", "qaie.io.zero_point"), or float32 in [0, 1].
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qaie.errors import QaieError
from qaie.imageio import Size
from qaie.runtime.codec import Codec
from qaie.runtime.floatstages import FloatIoStages
from qaie.runtime.litert import model_file, read_sidecar
from qaie.runtime.optable import OpRow, format_rows, op_rows

INPUT_NAME = "image"
OUTPUT_NAME = "enhanced"
IO_META = "qaie.io."  # metadata_props prefix of the I/O quantization
INSTALL_HINT = "ONNX needs the onnx extra: pip install 'qaie[onnx]'"
_FLOAT = ("float", "double", "float16")
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}
DEFAULT_MEMORY_BUDGET = 1.5e9  # bytes: a photo whose one pass would need more runs in stages
# One pass's peak memory per pixel and per channel of the network's width (`model_config.width`),
# an upper bound of what /usr/bin/time -v measured for the shipped c32 INT8 export: 1.59 GB at
# 1080x1920, 2.09 GB at 1536x2048, 7.9 GB at 3000x4000 (estimated 1.66, 2.48, 9.3 GB).
ONE_PASS_BYTES_PER_PIXEL_CHANNEL = 24.0
ONE_PASS_BASE_BYTES = 65e6  # the interpreter and the session, before a run


def stage_folder(path: Path) -> Path:
    """Where the stage files of `FILE.onnx` go: ``FILE.onnx.stages/``."""
    return path.with_name(path.name + ".stages")


def import_onnxruntime():
    """onnxruntime, or a one-line error naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise QaieError(INSTALL_HINT) from None
    return onnxruntime


def _session(path: Path, threads: int, profile: str | None = None, arena: bool = True):
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    options.enable_cpu_mem_arena = arena  # (an arena keeps its peak after a run)
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for bad files
        reason = str(err).strip().splitlines()[0][:160]
        raise QaieError(f"{path}: not an ONNX model ONNX Runtime can load ({reason})") from None


class OnnxStages(FloatIoStages):
    """The stage files of an exported `.onnx` (``FILE.onnx.stages/stage{k}_{H}x{W}.onnx``) as a
    `wholephoto.StageRunner`. Sessions open at first use and without ONNX Runtime's memory
    arena, so memory is one window's activations of the stage running."""

    def __init__(self, folder: Path, meta: dict, windows: list[list[int]], threads: int) -> None:
        n = len(meta["stages"])
        files = {(k, (h, w)): folder / f"stage{k}_{h}x{w}.onnx" for h, w in windows for k in range(n)}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise QaieError(f"{missing[0]}: stage file missing; export the model again")
        self._files, self._threads = files, threads
        self._sessions: dict[tuple[int, Size], object] = {}
        super().__init__(meta, tuple(sorted({tuple(w) for w in windows})), self._run_graph)

    def _run_graph(self, stage: int, size: Size, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = (stage, size)
        if key not in self._sessions:
            self._sessions[key] = _session(self._files[key], self._threads, arena=False)
        session = self._sessions[key]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))


class OnnxModel:
    """An exported enhancement model in ONNX Runtime (CPU).

    Args:
        path: the `.onnx` file.
        num_threads: intra-op threads (default: all cores this process may use).
        memory_budget: bytes a photo's one pass may take (estimated from its pixels); larger
            photos run in the file's stages, when it has them.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        num_threads: int | None = None,
        memory_budget: float = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        self.path, self.num_threads = model_file(path, num_threads)
        self.memory_budget = memory_budget
        self._session = _session(self.path, self.num_threads)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        shape = tuple(inputs[0].shape) if len(inputs) == 1 else ()
        if len(inputs) != 1 or len(outputs) != 1 or len(shape) != 4 or shape[:2] != (1, 3):
            raise QaieError(
                f"{self.path}: not an image model (one (1, 3, H, W) input and output); export it with `qaie export`"
            )
        meta = self._session.get_modelmeta().custom_metadata_map
        self._input_name, self._output_name = inputs[0].name, outputs[0].name
        self.input = self._codec(inputs[0].type, meta)
        self.output = self._codec(outputs[0].type, meta)
        fixed = all(isinstance(d, int) for d in shape[2:])
        self.sizes: tuple[Size, ...] | None = ((shape[2], shape[3]),) if fixed else None
        sidecar = read_sidecar(self.path)
        self._width = int(sidecar.get("model_config", {}).get("width", 32))
        meta, windows = sidecar.get("stages"), sidecar.get("stage_windows")
        self.stages = (
            OnnxStages(stage_folder(self.path), meta, windows, self.num_threads) if meta and windows else None
        )

    def one_pass_bytes(self, size: Size) -> float:
        """Estimated peak memory of one pass over an (H, W) photo (measured per pixel)."""
        return ONE_PASS_BASE_BYTES + ONE_PASS_BYTES_PER_PIXEL_CHANNEL * self._width * size[0] * size[1]

    def fits_one_pass(self, size: Size) -> bool:
        """Whether an (H, W) photo runs in one pass: within the memory budget, or no stages."""
        return self.stages is None or self.one_pass_bytes(size) <= self.memory_budget

    def _codec(self, ort_type: str, meta: dict[str, str]) -> Codec:
        dtype = _ORT_TYPES.get(ort_type)
        if dtype is None:
            raise QaieError(f"{self.path}: image tensors of type {ort_type} are not supported")
        if np.dtype(dtype).kind == "f":
            return Codec(np.dtype(dtype))
        try:
            return Codec(np.dtype(dtype), float(meta[IO_META + "scale"]), int(meta[IO_META + "zero_point"]))
        except (KeyError, ValueError):
            raise QaieError(
                f"{self.path}: integer I/O without its scale and zero point ({IO_META}*)"
            ) from None

    @property
    def is_int8(self) -> bool:
        return self.input.dtype.kind in "iu" or self.output.dtype.kind in "iu"

    def run(self, tile: np.ndarray) -> np.ndarray:
        """Enhance one image: uint8 (H, W, 3) -> uint8 (H, W, 3)."""
        assert tile.ndim == 3 and tile.shape[2] == 3 and tile.dtype == np.uint8, tile.shape
        x = np.ascontiguousarray(self.input.encode_pixels(tile).transpose(2, 0, 1)[None])  # (1, 3, H, W)
        (y,) = self._session.run([self._output_name], {self._input_name: x})
        return self.output.decode_pixels(y[0].transpose(1, 2, 0))


def onnx_op_table(model) -> dict[str, int]:
    """Op type -> count over the nodes of an onnx.ModelProto's main graph."""
    return dict(Counter(_op_name(n) for n in model.graph.node))


def _op_name(node) -> str:
    return f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _is_float(op: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> bool:
    """Computes in float: a float output, or QuantizeLinear (float in); the float scales that
    integer kernels such as QLinearConv take do not count."""
    return op == "QuantizeLinear" or any(t in _FLOAT for t in outputs)


@dataclass(frozen=True)
class OnnxOpTable:
    """`qaie inspect F.onnx`: the ops in the file and the kernels ONNX Runtime runs after its
    graph optimizations (QDQ groups fused into integer kernels), with their types."""

    file_ops: dict[str, int]
    kernels: list[OpRow]
    inputs: list[dict]
    outputs: list[dict]

    @property
    def float_ops(self) -> int:
        """Kernels that compute in float (QuantizeLinear/DequantizeLinear included)."""
        return sum(r.count for r in self.kernels if r.is_float)

    @property
    def total_ops(self) -> int:
        return sum(r.count for r in self.kernels)

    def to_json(self) -> dict:
        return {
            "file_ops": self.file_ops,
            "kernels": [asdict(r) for r in self.kernels],
            "total_ops": self.total_ops,
            "float_ops": self.float_ops,
            "inputs": self.inputs,
            "outputs": self.outputs,
        }


def inspect_onnx(path: str | os.PathLike, size: Size = (64, 64)) -> OnnxOpTable:
    """What ONNX Runtime runs for `path`: one profiled run on a `size` image (one thread)."""
    path = Path(path)
    if not path.is_file():
        raise QaieError(f"{path}: cannot read (no such file); give an existing .onnx file")
    try:
        import onnx
    except ImportError:
        raise QaieError(INSTALL_HINT) from None
    try:
        model = onnx.load(str(path))
    except Exception:  # protobuf's DecodeError and friends
        raise QaieError(f"{path}: not an ONNX model (it does not parse); give a .onnx file") from None
    runner = OnnxModel(path, 1)
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(path, 1, profile=str(Path(tmp) / "profile"))
        x = runner.input.encode_pixels(np.zeros((*size, 3), np.uint8)).transpose(2, 0, 1)[None]
        session.run(None, {runner._input_name: np.ascontiguousarray(x)})
        events = json.loads(Path(session.end_profiling()).read_text())
    counts: Counter[tuple[str, tuple[str, ...], tuple[str, ...]]] = Counter()
    for event in events:
        args = event.get("args", {})
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        types = [
            tuple(next(iter(t)) for t in args.get(key, []))
            for key in ("input_type_shape", "output_type_shape")
        ]
        counts[(args.get("op_name", "?"), *types)] += 1
    rows = op_rows(counts, _is_float)

    def io(values) -> list[dict]:
        return [
            {"name": v.name, "dtype": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower(),
             "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}
            for v in values
        ]  # fmt: skip

    return OnnxOpTable(onnx_op_table(model), rows, io(model.graph.input), io(model.graph.output))


def format_onnx_table(table: OnnxOpTable) -> str:
    """Human-readable table (what `qaie inspect F.onnx` prints without --json)."""
    lines = ["in the file: " + ", ".join(f"{op} {n}" for op, n in sorted(table.file_ops.items()))]
    lines.append("as ONNX Runtime (CPU) runs it, after fusing QDQ groups:")
    lines += format_rows(table.kernels, "kernel")
    lines.append(f"total kernels: {table.total_ops}  float: {table.float_ops}")
    for kind, values in (("input ", table.inputs), ("output", table.outputs)):
        lines += [f"{kind} {v['name']} {v['shape']} {v['dtype']}" for v in values]
    return "\n".join(lines)
