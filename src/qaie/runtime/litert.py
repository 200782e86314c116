"""The LiteRT runtime: run an exported `.tflite` on photos of any size.

Torch-free by design (ai-edge-litert and numpy; Pillow through qaie.imageio), so `qaie
enhance` runs wherever the interpreter does. Exported models have fixed input sizes (one signature per size, NHWC, float in
[0, 1] or integers with a scale/zero point); a photo is reflect-padded up to a size or cut
into overlapping tiles whose outputs are blended with raised-cosine weights.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from qaie.errors import QaieError
from qaie.imageio import MIN_IMAGE_SIDE, Size
from qaie.nativelog import quiet_native_stderr
from qaie.runtime.codec import Codec
from qaie.runtime.wholephoto import ALIGN, MapPool, StageRunner, enhance_whole, grid_starts

DEFAULT_OVERLAP = 32


def sidecar_path(path: Path) -> Path:
    """Where `qaie export` records a .tflite's metadata: ``FILE.tflite.json``."""
    return path.with_name(path.name + ".json")


def read_sidecar(path: Path) -> dict:
    """The export sidecar of the .tflite `path` (format, model_config, signatures, I/O,
    float_ops); {} when there is none or it cannot be read (it only informs)."""
    try:
        data = json.loads(sidecar_path(Path(path)).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def parse_size(text: str, what: str = "size") -> Size:
    """'HxW' (or 'N' for NxN) -> (H, W); the form every `--size`/`--tile` flag takes.
    `what` names the flag in the error."""
    parts = text.strip().lower().split("x")
    try:
        h, w = (int(parts[0]),) * 2 if len(parts) == 1 else map(int, parts)
    except ValueError:  # not integers, or more than two parts
        h = w = 0
    if min(h, w) < MIN_IMAGE_SIDE:
        raise QaieError(
            f"{what} {text!r}: expected HxW with both sides at least {MIN_IMAGE_SIDE} (e.g. 256x256)"
        )
    return h, w


def parse_sizes(text: str, what: str = "size") -> list[Size]:
    """'HxW[,HxW...]' -> [(H, W), ...]."""
    return [parse_size(part, what) for part in text.split(",")]


def parse_counts(text: str, what: str) -> list[int]:
    """'1,2' -> [1, 2]: positive integers such as thread counts; `what` names the flag."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise QaieError(f"{what} {text!r}: expected positive integers separated by commas (e.g. 1,2)")
    return counts


def format_size(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


# LiteRT's C++ logger writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." to file
# descriptor 2 at the first call of the process: that call runs under quiet_native_stderr.
_native_log_pending = True


def _call(runner: Callable[..., dict[str, np.ndarray]], **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Run a signature runner (the first call of the process without LiteRT's log line)."""
    global _native_log_pending
    if not _native_log_pending:
        return runner(**inputs)
    _native_log_pending = False
    with quiet_native_stderr():
        return runner(**inputs)


def default_threads() -> int:
    """CPU cores this process may use (the interpreter itself defaults to one thread)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_file(path: str | os.PathLike, num_threads: int | None) -> tuple[Path, int]:
    """A deployed file that exists and a valid thread count (default: all cores this process
    may use): what every runtime checks before it opens a file."""
    threads = default_threads() if num_threads is None else num_threads
    if not isinstance(threads, int) or threads < 1:
        raise QaieError(f"thread count must be a positive integer, got {threads!r}")
    if not Path(path).is_file():
        raise QaieError(f"{path}: model file not found")
    return Path(path), threads


@dataclass(frozen=True)
class Signature:
    """One exported size: a signature with one (1, H, W, 3) input and one output of that shape."""

    key: str
    size: Size
    input_name: str
    output_name: str
    input: Codec  # holds pixel / 255
    output: Codec
    output_nchw: bool = False  # (1, 3, H, W) output, as in the paper's official 100x100 file


def _usable_signature(key: str, runner) -> Signature | None:
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        return None
    (in_name, in_det), (out_name, out_det) = *inputs.items(), *outputs.items()
    shape = tuple(int(d) for d in in_det["shape"])
    out_shape = tuple(int(d) for d in out_det["shape"])
    nchw = len(shape) == 4 and out_shape == (1, 3, *shape[1:3])
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or (out_shape != shape and not nchw):
        return None
    codec_in, codec_out = Codec.from_details(in_det), Codec.from_details(out_det)
    if codec_in is None or codec_out is None:
        return None
    return Signature(key, (shape[1], shape[2]), in_name, out_name, codec_in, codec_out, nchw)


class TileModel(Protocol):
    """What enhancing a photo needs from a model: its fixed sizes (None: any size in one run)
    and a run on an image of such a size; `stages` (a `wholephoto.StageRunner`), when the
    model has them, computes whole-photo outputs in windows instead."""

    @property
    def sizes(self) -> tuple[Size, ...] | None: ...

    @property
    def stages(self) -> StageRunner | None: ...

    def run(self, tile: np.ndarray) -> np.ndarray: ...


STAGE_SIGNATURE = re.compile(r"stage(\d+)_(\d+)x(\d+)")


class TFLiteStages:
    """The stage signatures of an exported file (``stage{k}_{H}x{W}``, see qaie.quant.split), as a
    `wholephoto.StageRunner`: whole-photo enhancement in windows of each exported size."""

    def __init__(self, open_interpreter: Callable[[], Any], meta: dict) -> None:
        self.meta = meta
        self._open = open_interpreter
        self._load()
        n = len(meta["stages"])
        self.window_sizes = tuple(
            sorted({size for _, size in self._runners if all((k, size) in self._runners for k in range(n))})
        )
        self._quant: dict[str, Codec] = {}
        for runner in self._runners.values():
            for details in (runner.get_input_details(), runner.get_output_details()):
                for name, d in details.items():
                    codec = Codec.from_details(d)
                    if codec is None:
                        raise QaieError(f"stage tensor {name}: integers without a scale")
                    self._quant[name] = codec

    def _load(self) -> None:
        # The stages have an interpreter of their own, so that `release` can drop it whole.
        self._interpreter = self._open()
        # (a runner allocates its subgraph's tensors at its first call: only the window
        # sizes a photo uses take memory)
        self._runners: dict[tuple[int, Size], Any] = {}
        self._ready: set[tuple[int, Size]] = set()  # runners called once: tensors allocated
        for key in self._interpreter.get_signature_list():
            match = STAGE_SIGNATURE.fullmatch(key)
            if match:
                k, h, w = map(int, match.groups())
                self._runners[k, (h, w)] = self._interpreter.get_signature_runner(key)

    def release(self) -> None:
        """Free the tensors the stages allocated, by opening the file anew (about 60 ms): LiteRT's
        Python API cannot free a signature's tensors (see wholephoto.RELEASE_AFTER_MAPS)."""
        if self._ready:
            self._load()

    def quant(self, name: str) -> Codec:
        return self._quant[name]

    def run(self, stage: int, size: Size, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runner = self._runners[stage, size]
        if (stage, size) not in self._ready:  # the signature runner allocates the tensors
            outputs = _call(runner, **{k: np.ascontiguousarray(v) for k, v in inputs.items()})
            self._ready.add((stage, size))
            return outputs
        # Later windows are copied straight into the input tensors (window slices are strided
        # views: one copy instead of a contiguous copy and the runner's own), through the
        # runner's own fields (ai-edge-litert is pinned); the outputs are returned as views of
        # the output tensors, which the caller copies from before the next call.
        wrapper, subgraph = runner._interpreter_wrapper, runner._subgraph_index
        for name, value in inputs.items():
            np.copyto(wrapper.tensor(self._interpreter, runner._inputs[name], subgraph), value)
        wrapper.Invoke(subgraph)
        return {name: wrapper.tensor(self._interpreter, index, subgraph) for name, index in runner._outputs}


class TFLiteModel:
    """An exported enhancement model in the LiteRT interpreter.

    Args:
        path: the `.tflite` file.
        num_threads: interpreter threads (default: all cores this process may use).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        self.path, self.num_threads = model_file(path, num_threads)
        self._interpreter = self._open()
        self._runners = {}
        signatures = {}
        for key in self._interpreter.get_signature_list():
            if STAGE_SIGNATURE.fullmatch(key):
                continue
            runner = self._interpreter.get_signature_runner(key)
            sig = _usable_signature(key, runner)
            if sig is not None and sig.size not in signatures:
                signatures[sig.size], self._runners[sig.size] = sig, runner
        if not signatures:
            raise QaieError(
                f"{self.path}: no signature with one (1, H, W, 3) image input and output; "
                "export it with `qaie export`"
            )
        self.signatures: dict[Size, Signature] = dict(sorted(signatures.items(), key=lambda kv: kv[0]))
        meta = read_sidecar(self.path).get("stages")
        stages = TFLiteStages(self._open, meta) if meta else None
        self.stages: TFLiteStages | None = stages if stages and stages.window_sizes else None

    def _open(self) -> Any:
        """A new interpreter of the file; the stages open theirs with it (`TFLiteStages.release`)."""
        from ai_edge_litert.interpreter import Interpreter

        try:
            return Interpreter(model_path=str(self.path), num_threads=self.num_threads)
        except (ValueError, RuntimeError) as err:
            reason = str(err).split(".")[0]
            raise QaieError(f"{self.path}: not a TFLite model ({reason}); pass an exported .tflite") from None

    @property
    def sizes(self) -> tuple[Size, ...]:
        """Exported (H, W) sizes, ascending."""
        return tuple(self.signatures)

    @property
    def is_int8(self) -> bool:
        """True when the model takes and returns integers (an INT8 export)."""
        return any(
            s.input.dtype.kind in "iu" or s.output.dtype.kind in "iu" for s in self.signatures.values()
        )

    def run(self, tile: np.ndarray) -> np.ndarray:
        """Enhance one tile: uint8 (H, W, 3) of an exported size -> uint8 (H, W, 3)."""
        size = tile.shape[:2]
        sig = self.signatures.get(size)
        assert sig is not None and tile.shape[2:] == (3,) and tile.dtype == np.uint8, tile.shape
        result = _call(
            self._runners[size], **{sig.input_name: sig.input.encode_pixels(tile)[None]}
        )  # (1, H, W, 3)
        out = result[sig.output_name][0]
        return sig.output.decode_pixels(out.transpose(1, 2, 0) if sig.output_nchw else out)


def check_tile(model: TileModel, tile: Size) -> None:
    if model.sizes is None:
        raise QaieError("--tile: this model runs the whole photo in one pass (--tile none)")
    if tile not in model.sizes:
        available = ", ".join(format_size(s) for s in model.sizes)
        raise QaieError(f"tile {format_size(tile)} is not an exported size of the model ({available})")


def check_pixels(pixels: np.ndarray) -> Size:
    """(H, W) of an RGB uint8 image the network can take; QaieError for too small images."""
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8, pixels.shape
    h, w = pixels.shape[:2]
    if h < MIN_IMAGE_SIDE or w < MIN_IMAGE_SIDE:
        raise QaieError(
            f"image is {w}x{h} pixels; the network needs at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
        )
    return h, w


def choose_tile(sizes: tuple[Size, ...], image: Size) -> Size:
    """The smallest exported size that holds the whole image, else the largest (fewest seams)."""
    fitting = [s for s in sizes if s[0] >= image[0] and s[1] >= image[1]]
    return min(fitting, key=lambda s: s[0] * s[1]) if fitting else max(sizes, key=lambda s: s[0] * s[1])


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image go: the reflect-padded size and each axis' tile starts."""

    tile: Size
    padded: Size
    ys: list[int]
    xs: list[int]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def plan_tiles(image: Size, tile: Size, overlap: int | None = None) -> TilePlan:
    """Tile an (H, W) image with tiles that overlap by at least `overlap` pixels (default
    DEFAULT_OVERLAP, less for small tiles); an image that fits gets one padded tile."""
    (h, w), (th, tw) = image, tile
    ph, pw = _padded_length(h, th), _padded_length(w, tw)
    if (ph, pw) != (th, tw):
        max_overlap = min(th, tw) - 3 * ALIGN  # keeps tile starts distinct on the ALIGN grid
        if max_overlap < 0:
            raise QaieError(
                f"tile {format_size(tile)} is too small to tile a {w}x{h} image; "
                f"tiles need both sides at least {3 * ALIGN}"
            )
        overlap = min(DEFAULT_OVERLAP, max_overlap) if overlap is None else overlap
        if not 0 <= overlap <= max_overlap:
            raise QaieError(
                f"overlap {overlap} must be between 0 and {max_overlap} for tile {format_size(tile)}"
            )
    return TilePlan(tile, (ph, pw), tile_starts(ph, th, overlap or 0), tile_starts(pw, tw, overlap or 0))


def _padded_length(length: int, tile: int) -> int:
    """Pad up to the tile, or so that the last tile (at length - tile) starts on the ALIGN grid."""
    return tile if length <= tile else length + (tile - length) % ALIGN


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis of (padded) `length`, placed by `wholephoto.grid_starts`, as
    many as make neighbours overlap by more than `overlap`."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile - overlap - ALIGN)) + 1  # step <= that: gaps < tile - overlap
    return grid_starts(length, tile, n)


def _ramp(n: int) -> np.ndarray:
    """Raised cosine rising over n pixels, never exactly 0 (its mirror sums with it to 1)."""
    return (np.sin(np.pi / 2 * (np.arange(n, dtype=np.float32) + 0.5) / n) ** 2).astype(np.float32)


def axis_weights(starts: list[int], tile: int) -> list[np.ndarray]:
    """Per-tile 1-D blending weights along one axis: ramps across the overlap with each
    neighbour, 1 elsewhere, so image borders keep full weight and tile borders fade out."""
    weights = []
    for k, start in enumerate(starts):
        w = np.ones(tile, np.float32)
        if k > 0:
            n = starts[k - 1] + tile - start
            w[:n] *= _ramp(n)
        if k < len(starts) - 1:
            n = start + tile - starts[k + 1]
            w[tile - n :] *= _ramp(n)[::-1]
        weights.append(w)
    return weights


def _axis_total(starts: list[int], weights: list[np.ndarray], length: int) -> np.ndarray:
    total = np.zeros(length, np.float32)
    for start, w in zip(starts, weights, strict=True):
        total[start : start + len(w)] += w
    return total


def enhance_image(
    model: TileModel,
    pixels: np.ndarray,
    *,
    tile: Size | None = None,
    overlap: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    pool: MapPool | None = None,
) -> np.ndarray:
    """Enhance an RGB photo of any size: uint8 (H, W, 3) -> uint8 (H, W, 3).

    A model of any size (`sizes` None) runs the photo in one pass, unless its `fits_one_pass`
    (size) says the photo is over its memory budget: then its stages run, as for a larger photo
    than a fixed-size model's. An image that fits an exported size is reflect-padded to it and cropped back. A larger one
    is cut into overlapping tiles of `tile` (default: the largest exported size; see
    plan_tiles); each tile's output is weighted by a separable raised-cosine window and
    accumulated, so seams fade across the whole overlap. Memory: one float32 accumulator the
    size of the image, tile-sized temporaries, never whole-image activations.
    `progress(done, total)` is called after each tile. `pool`: the whole-photo path's maps
    kept between photos of one size (`wholephoto.MapPool`), for a caller with several photos.
    """
    h, w = check_pixels(pixels)
    stages = getattr(model, "stages", None)
    fits = getattr(model, "fits_one_pass", None)  # a dynamic-size model with stages: by budget
    if (model.sizes is None and (fits is None or fits((h, w)))) or (
        model.sizes is not None and (h, w) in model.sizes and tile in (None, (h, w))
    ):
        out = model.run(pixels)  # one pass over the whole photo: any size, or an exported one
        if progress:
            progress(1, 1)
        return out
    if stages is not None:
        return enhance_whole(stages, pixels, window=tile, progress=progress, pool=pool)
    tile = tile or choose_tile(model.sizes, (h, w))
    check_tile(model, tile)
    plan = plan_tiles((h, w), tile, overlap)
    (th, tw), (ph, pw) = tile, plan.padded
    if (ph, pw) != (h, w):
        pixels = np.pad(pixels, ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect")  # (ph, pw, 3)
    if plan.count == 1:
        out = model.run(pixels)[:h, :w]
        if progress:
            progress(1, 1)
        return out
    wys, wxs = axis_weights(plan.ys, th), axis_weights(plan.xs, tw)
    rows, cols = list(zip(plan.ys, wys, strict=True)), list(zip(plan.xs, wxs, strict=True))
    acc = np.zeros((ph, pw, 3), np.float32)  # sum of weighted tile outputs
    for done, ((y, wy), (x, wx)) in enumerate(itertools.product(rows, cols), 1):
        out = model.run(np.ascontiguousarray(pixels[y : y + th, x : x + tw]))  # (th, tw, 3) uint8
        acc[y : y + th, x : x + tw] += out * (wy[:, None, None] * wx[None, :, None])
        if progress:
            progress(done, plan.count)
    # The window is separable, so the total weight is an outer product of 1-D sums.
    acc /= _axis_total(plan.ys, wys, ph)[:, None, None]
    acc /= _axis_total(plan.xs, wxs, pw)[None, :, None]
    result = acc[:h, :w]
    np.rint(result, out=result)
    return np.clip(result, 0, 255, out=result).astype(np.uint8)
