"""Export EnhanceNet to ExecuTorch (`.pte`) with the XNNPACK backend, and run and inspect it.

INT8 is the PT2E reference graph (`qaie.quant.quantize.convert`) lowered as it is, with the
QAT/PTQ scales, its weight quantizes folded into int8 constants (torchao's `constant_fold`,
what `convert_pt2e(fold_quantize=True)` does: the same integers): XNNPACK's partitioner
takes each quantize -> op -> dequantize group it has an int8 kernel for (with float weights
it takes no convolution); what it does not take runs in ExecuTorch's portable kernels (`qaie
inspect F.pte` lists them). FP32 is the float network, delegated the same way.

One method per exported size, ``enhance_{H}x{W}`` (fixed shapes, as for `.tflite`); input
and output are float32 NCHW in [0, 1] (an INT8 method quantizes its input at scale 1/255,
zero point -128 inside the delegate, which maps every 8-bit pixel exactly, and dequantizes
its output likewise). Beside each, for sizes that can be windows (`wholephoto.is_window`), the
six stages of `qaie.quant.split` as methods ``stage{k}_{H}x{W}`` (float32 NCHW I/O, maps through
their own quantize and dequantize: `qaie.runtime.floatstages`), with which a photo of any other
size gets the whole-photo output in windows instead of tiles each normalised by its own
statistics. Beside every `FILE.pte` a sidecar `FILE.pte.json` (with the stages' meta).

ExecuTorch's Python runtime is built on torch, so the runner lives here, not in the
torch-free `qaie.runtime`.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.fx import GraphModule

from qaie.errors import QaieError
from qaie.imageio import Size
from qaie.nativelog import quiet_native_stderr
from qaie.nn.model import EnhanceNet
from qaie.quant import export_base
from qaie.quant.export import signature_name, stage_signature_name  # .pte methods: as .tflite
from qaie.runtime.floatstages import FloatIoStages
from qaie.runtime.litert import STAGE_SIGNATURE, check_pixels, read_sidecar
from qaie.runtime.wholephoto import is_window

INSTALL_HINT = "ExecuTorch needs the executorch extra: pip install 'qaie[executorch]'"
_METHOD = re.compile(r"enhance_(\d+)x(\d+)")


@dataclass(frozen=True)
class PteExportResult:
    path: Path
    sidecar: Path
    format: str
    quant: str | None
    methods: list[str]
    io: dict
    file_bytes: int
    seconds: float
    ops: PteOpTable
    planned: dict[str, int]  # method -> bytes of its memory-planned buffers

    def summary(self) -> list[str]:
        """What `qaie export` prints below its `wrote` line."""
        largest = max(self.planned, key=self.planned.get)
        return [
            f"  methods {', '.join(self.methods)}; {export_base.io_summary(self.io)}",
            f"  planned memory {self.planned[largest] / 2**20:.0f} MiB, allocated when the file "
            f"loads and shared by every method: {largest}'s (export fewer or smaller sizes for less)",
        ]


def check_pte_output(out: Path, overwrite: bool = True) -> None:
    """Fail before any work if the executorch extra is missing or `out` or its sidecar cannot be written."""
    _lowering()
    export_base.check_outputs(out, overwrite)


def _lowering():  # -> (to_edge_transform_and_lower, XnnpackPartitioner)
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise QaieError(INSTALL_HINT) from None
    return to_edge_transform_and_lower, XnnpackPartitioner


def _vector_scalars(graph: GraphModule) -> None:
    """0-d constants (the instance norms' quantized eps) -> shape (1,), the same under
    broadcasting: XNNPACK's channels-last pass indexes every quantized constant's first dim."""
    for node in graph.graph.nodes:
        if node.op != "get_attr":
            continue
        owner, _, name = node.target.rpartition(".")
        module = graph.get_submodule(owner) if owner else graph
        value = getattr(module, name)
        if isinstance(value, Tensor) and value.dim() == 0:
            setattr(module, name, value.reshape(1))
    graph.recompile()


def export_pte(
    source: EnhanceNet | GraphModule,
    fmt: str,
    sizes: list[Size],
    out: Path,
    *,
    calibration: Iterable[Tensor] | None = None,
    source_checkpoint: str | None = None,
    stages: bool = True,
    phases: bool = True,
) -> PteExportResult:
    """Write `source` to `out` (.pte), one XNNPACK-delegated method per (H, W) in `sizes`, and
    (`stages`) the stage methods of each size that can be a window.

    Args mirror `qaie.quant.export_onnx.export_onnx`; `sizes`, `stages` and `phases` as for
    `export_tflite` (without the phase form, XNNPACK takes no upsample: ExecuTorch runs them in
    its portable kernels, in float).
    """
    from torchao.quantization.pt2e.constant_fold import constant_fold
    from torchao.quantization.pt2e.quantize_pt2e import _quant_node_constraint

    to_edge_transform_and_lower, XnnpackPartitioner = _lowering()
    out = Path(out)
    check_pte_output(out)
    sizes = export_base.export_sizes(sizes)
    net = export_base.source_for(fmt, source, calibration, phases)

    def folded(graph: torch.nn.Module) -> torch.nn.Module:
        if net.prepared is not None:
            _vector_scalars(graph)
            constant_fold(graph, _quant_node_constraint)  # int8 weights: what XNNPACK delegates
            graph.recompile()
        return graph

    programs, meta = {}, None
    for size in sizes:
        example = torch.rand(1, 3, *size)
        programs[signature_name(size)] = torch.export.export(folded(net.at(size)), (example,))
        if stages and is_window(size):
            graphs, meta = export_base.stage_graphs(net.at(size), size, net.config)
            for k, (graph, samples) in enumerate(graphs):
                folded(graph.stage)
                programs[stage_signature_name(k, size)] = torch.export.export(graph, samples)
    edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()])
    data = edge.to_executorch().buffer
    io = {
        "layout": "NCHW",
        "dtype": "float32",
        "scale": None,
        "zero_point": None,
        "input": "image",
        "output": "enhanced",
    }
    ops, planned = pte_op_table(data), planned_bytes(data)
    sidecar = export_base.write_export(
        out,
        data,
        lambda _: {
            **export_base.common_sidecar(out, net, io, len(data), source_checkpoint),
            "runtime": "executorch",
            "backend": "xnnpack",
            "methods": list(programs),
            "stages": meta,
            "phases": net.phases,
            "ops": ops.to_json(),
            "planned_bytes": planned,
        },
        ("executorch",),
    )
    return PteExportResult(
        out,
        sidecar,
        fmt,
        net.quant,
        list(programs),
        io,
        len(data),
        time.perf_counter() - net.started,
        ops,
        planned,
    )


# --- inspecting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PteOpTable:
    """What each method of a `.pte` calls: XNNPACK delegate calls, and the kernels outside it
    (ExecuTorch's portable kernels; those not named quantized_decomposed compute in float)."""

    delegate_calls: int
    kernels: dict[str, int]  # operator name -> calls, outside the delegate

    @property
    def float_ops(self) -> int:
        """Kernel calls outside the delegate: ExecuTorch's portable kernels, not XNNPACK's int8
        ones (for this network the nearest resizes, which copy)."""
        return sum(self.kernels.values())

    def to_json(self) -> dict:
        return {**asdict(self), "float_ops": self.float_ops}


def planned_bytes(data: bytes) -> dict[str, int]:
    """Each method's memory-planned buffers (its inputs, outputs and the values between its
    kernels). ExecuTorch's runtime allocates one set for a program, the largest method's, when
    the program loads: a whole photo in small windows pays for a large one-pass method too."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(data).program
    return {plan.name: sum(plan.non_const_buffer_sizes) for plan in program.execution_plan}


def pte_op_table(data: bytes) -> PteOpTable:
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import DelegateCall, KernelCall

    program = deserialize_pte_binary(data).program
    delegates, kernels = 0, Counter()
    for plan in program.execution_plan:
        for chain in plan.chains:
            for instruction in chain.instructions:
                args = instruction.instr_args
                if isinstance(args, DelegateCall):
                    delegates += 1
                elif isinstance(args, KernelCall):
                    op = plan.operators[args.op_index]
                    kernels[f"{op.name}.{op.overload}" if op.overload else op.name] += 1
    return PteOpTable(delegates, dict(sorted(kernels.items())))


def inspect_pte(path: str | os.PathLike) -> PteOpTable:
    """`qaie inspect F.pte`: a file ExecuTorch's loader takes (`check_pte`), read by its schema."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise QaieError(f"{path}: cannot read ({err.strerror}); give an existing .pte file") from None
    _lowering()
    check_pte(path)
    try:
        return pte_op_table(data)
    except Exception:  # flatbuffer parsing of a damaged file fails anywhere
        raise QaieError(f"{path}: not an ExecuTorch program (it does not parse); give a .pte file") from None


def format_pte_table(table: PteOpTable) -> str:
    lines = [f"XNNPACK delegate calls: {table.delegate_calls}", "kernels outside the delegate:"]
    lines += [f"{n:>5}  {op}" for op, n in table.kernels.items()] or ["    (none)"]
    lines.append(f"float_ops: {table.float_ops}")
    return "\n".join(lines)


# --- running -------------------------------------------------------------------------------------


class PteModel:
    """An exported `.pte` in ExecuTorch's runtime (XNNPACK), one method per exported size.

    Args:
        path: the `.pte` file.
        num_threads: XNNPACK threads (ExecuTorch's Python runtime uses its own thread pool;
            None leaves its default).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise QaieError(f"{self.path}: model file not found")
        try:
            from executorch.runtime import Runtime
        except ImportError:
            raise QaieError(INSTALL_HINT) from None
        check_pte(self.path)
        with quiet_native_stderr():  # ExecuTorch's log lines (cpuinfo, XNNPACK) only with --debug
            if num_threads is not None:
                _set_threads(num_threads)
            self._program = Runtime.get().load_program(self.path)
            self._methods: dict[Size, str] = {}  # loaded at first use: each plans its own memory
            self._loaded = None
            for name in self._program.method_names:
                match = _METHOD.fullmatch(name)
                if match:
                    self._methods[tuple(map(int, match.groups()))] = name
        if not self._methods:
            raise QaieError(f"{self.path}: no enhance_HxW method; export it with `qaie export`")
        self.sizes: tuple[Size, ...] = tuple(sorted(self._methods))
        sidecar = read_sidecar(self.path)
        self.is_int8 = sidecar.get("format") == "int8"
        meta = sidecar.get("stages")
        stages = PteStages(self._program, meta) if meta else None
        self.stages: PteStages | None = stages if stages and stages.window_sizes else None

    def run(self, tile: np.ndarray) -> np.ndarray:
        """Enhance one tile of an exported size: uint8 (H, W, 3) -> uint8 (H, W, 3)."""
        check_pixels(tile)
        x = torch.from_numpy(np.ascontiguousarray(tile)).permute(2, 0, 1)[None].float() / 255
        size = tile.shape[:2]
        if self._loaded is None or self._loaded[0] != size:
            self._loaded = None  # (frees the previous method first)
            with quiet_native_stderr():
                self._loaded = (size, self._program.load_method(self._methods[size]))
        (y,) = self._loaded[1].execute([x.contiguous()])
        return (y[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


class PteStages(FloatIoStages):
    """The stage methods of a `.pte` (``stage{k}_{H}x{W}``) as a `wholephoto.StageRunner`. One
    method is loaded at a time (its planned memory is one window's activations of one stage):
    stages run in order over every window, so each loads once per photo."""

    def __init__(self, program, meta: dict) -> None:
        self._program = program
        found = {}
        for name in program.method_names:
            match = STAGE_SIGNATURE.fullmatch(name)
            if match:
                k, h, w = map(int, match.groups())
                found[k, (h, w)] = name
        n = len(meta["stages"])
        windows = tuple(sorted({s for _, s in found if all((k, s) in found for k in range(n))}))
        self._names, self._loaded = found, None
        super().__init__(meta, windows, self._run_graph)

    def _run_graph(self, stage: int, size: Size, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._loaded is None or self._loaded[0] != (stage, size):
            if self._loaded is not None:
                # The Program caches every method it loads, with its XNNPACK runtime and
                # workspace: the previous stage's is dropped before the next one loads.
                self._program._methods[self._names[self._loaded[0]]] = None
                self._loaded = None
            with quiet_native_stderr():
                self._loaded = ((stage, size), self._program.load_method(self._names[stage, size]))
        spec = self.meta["stages"][stage]
        outputs = self._loaded[1].execute([torch.from_numpy(inputs[name]) for name in spec["inputs"]])
        return {name: value.numpy() for name, value in zip(spec["outputs"], outputs, strict=True)}


# Loads the program and every method in a child process: ExecuTorch's Python bindings send its
# C++ log to Python's sys.stderr, and a log line quoting the bytes of a damaged file (a bad
# program or XNNPACK identifier, say) is not UTF-8: pybind11 then throws inside a destructor
# and the process aborts (`terminate called after throwing ... error_already_set`). A child
# that dies of it costs nothing but the probe (under a second: the bindings load without torch).
_PROBE = """
import sys
try:
    from executorch.extension.pybindings import _C
except ImportError:  # builds whose bindings need libtorch loaded first
    import torch
    from executorch.extension.pybindings import _C
try:
    program = _C._load_program(sys.argv[1], program_verification=_C.Verification.InternalConsistency)
    for i in range(program.num_methods()):
        program.load_method(program.get_method_name(i))
except Exception as err:
    print((str(err).strip().splitlines() or [type(err).__name__])[0][:160])
    sys.exit(1)
"""
_IDENTIFIER = b"ET"  # bytes 4..5 of every ExecuTorch flatbuffer ("ET12" for this schema)
_EXTENDED_HEADER = b"eh00"  # bytes 8..11: header length, program size, segment offset and size


def check_pte(path: Path) -> None:
    """One-line QaieError unless `path` is an ExecuTorch program its loader takes: the header
    (identifier, the sizes the extended header records against the file's), then the
    program and its methods loaded in a child process (`_PROBE`), so that no file, however
    damaged, can abort this one."""
    import struct
    import subprocess
    import sys

    head = path.read_bytes()[:40] if path.is_file() else b""
    size = path.stat().st_size
    if size == 0:
        raise QaieError(f"{path}: file is empty (0 bytes); give an exported .pte file")
    if len(head) < 8 or head[4:6] != _IDENTIFIER:
        raise QaieError(f"{path}: not an ExecuTorch program (no ET identifier); give an exported .pte file")
    if head[8:12] == _EXTENDED_HEADER and len(head) >= 36:
        _, program_size, segment_offset, segment_size = struct.unpack_from("<IQQQ", head, 12)
        expected = segment_offset + segment_size if segment_size else program_size
        if size < expected:
            raise QaieError(
                f"{path}: truncated ExecuTorch program ({size} of {expected} bytes); export it again"
            )
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    if proc.returncode != 0:
        said = proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines()[-1:]
        reason = (
            said[-1]
            if said and proc.returncode == 1
            else f"ExecuTorch's loader aborts on it, status {proc.returncode}"
        )
        raise QaieError(f"{path}: corrupt ExecuTorch program ({reason}); export it again")


def _set_threads(n: int) -> None:
    """XNNPACK's thread pool size, where the installed runtime exposes it."""
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return
    setter = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if setter is not None:
        setter(n)
