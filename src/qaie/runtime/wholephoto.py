"""Whole-photo enhancement in tiles: the network's output on the whole photo, in bounded memory.

The network's instance norms take their statistics over the whole image, so enhancing tiles
independently computes a different function per tile (tile-shaped tone and colour casts).
`qaie.quant.split` cuts the network into stages at those statistics; here the stages run one after
another over overlapping windows of the photo:

    stage 0 over every window -> feature maps (whole photo, int8 for INT8 models)
    statistics of norm 1 over the whole map -> stage 1 over every window -> ...
    stage 5 over every window -> the enhanced photo

Each stage is local, so a window's pixels at least `halo` from its inner edges are exact (the
halo the stages' meta records, `qaie.quant.split.halo`); the
fewest windows that leave every owned pixel that far from an inner edge are run, and each pixel
is taken from the window that owns it. The statistics are those of the whole map as the
reference model computes them (each step quantized at its trained scale, from a per-channel
histogram of the int8 map, counted window by window as the map is stored). Memory: the maps
that cross stages (at most about 50 bytes per pixel for c=32 INT8, reused by later maps of the same
shape) plus one window's activations, never every activation of the photo.

Torch-free: the runners implement `StageRunner`, for LiteRT files in qaie.runtime.litert and for
checkpoints in PyTorch as qaie.quant.reference.TorchStageRunner (used by qaie.quant.predict).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from qaie.errors import QaieError
from qaie.imageio import Size, to_uint8
from qaie.runtime.codec import Codec, look_up

# The network's coarsest scale is S/8: windows and tiles start on this grid, so each pixel is
# computed with the same stride phases as in a whole-image run.
ALIGN = 8
# Pixels at a window's inner edge that a stage may not compute exactly, for stages whose meta
# does not record their own `halo` (`qaie.quant.split.halo`: 24 for the full network, 32 for
# every ModelConfig): exports made before it was recorded.
HALO = 32
# Without a MapPool, a photo whose maps took more bytes than this has the runtime free its
# tensors after it. Kept, every stage's tensors are resident at once while the next photo's
# maps peak: a folder of 12 MP photos (636 MB of maps with the shipped model) peaks at 1.50 GB
# instead of 1.27, for 2-4% of its time; a 2 MP photo (106 MB) that freed them was 12-33% slower,
# since the next one pages its tensors in anew (docs/performance.md).
RELEASE_AFTER_MAPS = 256 * 2**20
IMAGE = "image"
OUTPUT = "enhanced"


class StageRunner(Protocol):
    """What whole-photo enhancement needs from a model split into stages (`qaie.quant.split`)."""

    meta: dict  # Stages.meta: stages (inputs, outputs), maps, norms
    window_sizes: tuple[Size, ...]  # window sizes the stages can run at

    def quant(self, name: str) -> Codec:
        """How the stage tensor `name` (a map, mean{k}, rstd{k}, the image or output) is stored."""
        ...

    def run(self, stage: int, size: Size, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Stage `stage` on one window: NHWC (1, h, w, C) arrays by name -> arrays by name.
        The inputs may be strided views; the outputs may be views of the runtime's own memory,
        valid until its next run (the caller copies what it keeps before that)."""
        ...


# --- statistics ------------------------------------------------------------------------------------


def _codes(values: np.ndarray, q: list) -> np.ndarray:
    """Real values -> their int8 codes on the grid [scale, zero_point], rounded as torch rounds."""
    scale, zero_point = q
    return np.clip(np.rint(values * (1.0 / scale)) + zero_point, -128, 127).astype(np.int64)


def _fake_quant(values: np.ndarray, q: list | None) -> np.ndarray:
    """Round to an int8 grid [scale, zero_point] as torch's quantize/dequantize do."""
    if q is None:
        return values
    return _values(_codes(values, q), q)


def _values(codes: np.ndarray, q: list) -> np.ndarray:
    """The real values of int8 codes on the grid [scale, zero_point] (as `Codec.decode`)."""
    return (codes - q[1]) * q[0]


def _exact_mean(counts: np.ndarray, codes: np.ndarray, q: list) -> np.ndarray:
    """Per-channel mean of a map given as (C, K) counts of K codes at [scale, zero_point]: the
    sum of codes is an exact integer, so the result does not depend on any summation order."""
    scale, zero_point = q
    total = (counts * (codes - zero_point)).sum(axis=-1)  # int64, exact
    return total * scale / counts.sum(axis=-1)


def _band_histograms(mode: str, column: np.ndarray) -> np.ndarray:
    """Pillow's 256 counts per band of a contiguous array read as one row of `mode` pixels."""
    return np.asarray(Image.frombuffer(mode, (column.size, 1), column, "raw", mode, 0, 1).histogram())


class Histogram:
    """Per-channel counts of the 256 codes of an 8-bit map, accumulated over parts of it
    (each window's share as it is stored).

    Counted by Pillow's histogram of 4-band images: each group of four channels becomes one
    contiguous row of 32-bit pixels, read as RGBA. The rows come from one transposing copy of
    the map seen as 32-bit words, 0.12 ns a code on a window's owned part (a strided view),
    where gathering each group on its own took 0.63; Pillow then counts at 0.31 ns a code,
    where numpy's bincount took 1.8 (it widens every index to 64 bits and takes a min/max pass
    first)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self._counts = np.zeros((channels, 256), np.int64)  # [channel, code & 255]

    def add(self, codes: np.ndarray) -> None:
        """Count an 8-bit (H, W, C) map (any strides: a window's owned part is a view, an NCHW
        runtime's output a transposed one); a signed code q is counted at q & 255."""
        if codes.strides[-1] != 1:  # channels apart: gathered once into pixels of C codes
            codes = np.ascontiguousarray(codes)
        octets = codes.view(np.uint8)
        quads = self.channels - self.channels % 4
        if quads:  # (C/4, H, W) words: each group of four channels one contiguous row
            rows = np.ascontiguousarray(np.moveaxis(octets[..., :quads].view("<u4"), -1, 0))
            for g, row in enumerate(rows):
                self._counts[4 * g : 4 * g + 4] += _band_histograms("RGBA", row).reshape(4, 256)
        for c in range(quads, self.channels):  # a map whose width is not a multiple of 4
            self._counts[c] += _band_histograms("L", np.ascontiguousarray(octets[..., c]))

    def by_code(self, signed: bool) -> np.ndarray:
        """(C, 256) counts of the codes from the lowest (-128 for signed maps, else 0) up."""
        return np.roll(self._counts, 128, axis=1) if signed else self._counts.copy()


Statistics = dict[str, np.ndarray]  # by name: mean, rstd (and mean_second, rstd_second), (C,) each


def norm_statistics(values: np.ndarray, quant: Codec, norm: dict) -> Statistics:
    """Mean and 1/sqrt(var + eps) per channel of a whole (H, W, C) map, as real values, and
    those of a second pass (`qaie.nn.model.SecondPass`) if the norm has one.

    FP32 (no chain): float64 moments; a second pass then has mean 0 and rstd
    1/sqrt((var + eps) rstd^2), as it computes them. Quantized: `chain_statistics` of the map's
    code histogram (a float map of on-grid values, as the PyTorch reference model passes, is
    encoded to its codes first).
    """
    chain = norm["chain"]
    if chain is None:
        flat = values.reshape(-1, values.shape[-1])
        mean = flat.mean(axis=0, dtype=np.float64)
        var = np.zeros_like(mean)
        for start in range(0, len(flat), 1 << 16):
            d = flat[start : start + (1 << 16)].astype(np.float64) - mean
            var += (d * d).sum(axis=0)
        var /= len(flat)
        stats = {"mean": mean, "rstd": 1.0 / np.sqrt(var + norm["eps"])}
        if norm.get("passes", 1) == 2:
            stats |= {
                "mean_second": np.zeros_like(mean),
                "rstd_second": 1.0 / np.sqrt((var + norm["eps"]) * stats["rstd"] ** 2),
            }
        return stats
    quant = map_codec(quant, norm)
    histogram = Histogram(values.shape[-1])
    histogram.add(quant.encode(values) if values.dtype != quant.dtype else values)
    return chain_statistics(histogram, quant, norm)


def map_codec(quant: Codec, norm: dict) -> Codec:
    """The int8 codec of a norm's input map: its own, or the chain's for a float map."""
    return quant if quant.is_int else Codec(np.dtype(np.int8), *norm["chain"]["input"])


def chain_statistics(histogram: Histogram, quant: Codec, norm: dict) -> Statistics:
    """Mean and rstd per channel of a quantized map from its code histogram: the reference
    model's steps, each rounded to its scale (mean, x - mean, its square, their mean, + eps,
    rsqrt), evaluated on the 256 possible codes weighted by their counts. Both means are sums
    of integer codes, so every CPU computes the same codes (the quantized reference model
    computes its statistics here too: `qaie.quant.reference.exact_statistics`). A second pass
    takes the same steps on y = (x - mean) x rstd, a function of x's code, so the same counts
    weigh it: no second look at the map."""
    chain = norm["chain"]
    signed = quant.dtype.kind == "i"
    counts = histogram.by_code(signed)  # (C, 256)
    lowest = -128 if signed else 0
    codes = np.arange(lowest, lowest + 256)
    q = [quant.scale, quant.zero_point]
    eps = _fake_quant(np.float64(norm["eps"]), chain["eps"])
    mean, rstd, y = _pass(counts, codes, q, chain, eps)
    stats = {"mean": mean, "rstd": rstd}
    if "second" in chain:
        second = chain["second"]
        y_codes = _codes(y, second["scaled"])  # (C, 256): y of each code of x
        rstd_square = _fake_quant(rstd * rstd, second["rstd_square"])
        eps_rstd = _fake_quant(
            rstd_square * _fake_quant(np.float64(norm["eps"]), second["eps"]), second["eps_rstd"]
        )
        stats["mean_second"], stats["rstd_second"], _ = _pass(
            counts, y_codes, second["scaled"], second, eps_rstd
        )
    return stats


def _pass(
    counts: np.ndarray, codes: np.ndarray, q: list, chain: dict, eps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass of a norm's statistics over a map given as `counts` of its `codes` on the grid
    `q`: the mean, rstd = 1/sqrt(var + eps), each step rounded as `chain` says, and
    (x - mean) x rstd of each code, unrounded."""
    mean = _fake_quant(_exact_mean(counts, codes, q), chain["mean"])  # (C,)
    centered = _fake_quant(_values(codes, q) - mean[:, None], chain["centered"])  # (C, 256)
    square = _codes(centered * centered, chain["square"])
    var = _fake_quant(_exact_mean(counts, square, chain["square"]), chain["var"])
    var_eps = _fake_quant(var + eps, chain["var_eps"])
    with np.errstate(divide="ignore"):
        rstd = _fake_quant(1.0 / np.sqrt(var_eps), chain["rstd"])  # 1/0 -> the largest code
    return mean, rstd, centered * rstd[:, None]


# --- windows ----------------------------------------------------------------------------------------

MIN_WINDOW = 2 * HALO + 3 * ALIGN  # two halos, the overlap's slack and an owned core


def is_window(size: Size) -> bool:
    """Whether stages can run in windows of `size`: sides on the ALIGN grid, room for halos."""
    return all(side % ALIGN == 0 and side >= MIN_WINDOW for side in size)


def check_window(size: Size) -> None:
    if not is_window(size):
        raise QaieError(
            f"--tile {size[0]}x{size[1]}: windows need sides that are multiples of {ALIGN} and at "
            f"least {MIN_WINDOW}"
        )


@dataclass(frozen=True)
class AxisWindow:
    """One window along an axis: it starts at `start`; it owns [own_start, own_end)."""

    start: int
    own_start: int
    own_end: int


def grid_starts(length: int, window: int, n: int) -> list[int]:
    """Where n windows (or tiles) of `window` pixels go along an axis of `length`: the first at
    0, the last at length - window, the others evenly between, rounded down to the ALIGN grid."""
    if n == 1:
        return [0]
    step = (length - window) / (n - 1)
    return [int(i * step) // ALIGN * ALIGN for i in range(n - 1)] + [length - window]


def own(starts: list[int], length: int, window: int, halo: int = HALO) -> list[AxisWindow] | None:
    """Windows at `starts` with ownership changing hands mid-overlap on the grid; None unless
    each owns a part of itself and every owned pixel is at least `halo` from an inner edge."""
    cuts = [0] + [(a + window + b) // 2 // ALIGN * ALIGN for a, b in itertools.pairwise(starts)] + [length]
    windows = [AxisWindow(s, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]
    for i, w in enumerate(windows):
        inner_start = i > 0 and w.own_start - w.start < halo
        inner_end = i < len(windows) - 1 and w.start + window - w.own_end < halo
        outside = not w.start <= w.own_start < w.own_end <= w.start + window
        if inner_start or inner_end or outside:
            return None
    return windows


def plan_axis(length: int, window: int, halo: int = HALO) -> list[AxisWindow]:
    """The fewest windows of `window` pixels covering `length` (both multiples of ALIGN), placed
    by `grid_starts`, that own every pixel at least `halo` from their inner edges (`own`):
    fewer windows, fewer pixels computed twice."""
    assert length % ALIGN == 0 and window % ALIGN == 0 and window <= length, (length, window)
    if window == length:
        return [AxisWindow(0, 0, length)]
    if window - 2 * halo - 2 * ALIGN <= 0:
        raise QaieError(f"window {window} is too small for a halo of {halo} pixels")
    n = math.ceil((length - window) / (window - 2 * halo)) + 1  # neighbours share >= 2 halos
    while (windows := own(grid_starts(length, window, n), length, window, halo)) is None:
        n += 1
    return windows


def window_cost(padded: Size, window: Size, halo: int = HALO) -> int | None:
    """Pixels the stages compute for a (padded) photo in windows of `window`; None if the
    window does not fit or is too small to leave an owned core."""
    if window[0] > padded[0] or window[1] > padded[1]:
        return None
    try:
        rows, cols = plan_axis(padded[0], window[0], halo), plan_axis(padded[1], window[1], halo)
    except QaieError:
        return None
    return len(rows) * len(cols) * window[0] * window[1]


def choose_window(sizes: tuple[Size, ...], padded: Size, halo: int = HALO) -> Size | None:
    """The window size that computes the fewest pixels for the (padded) photo (overlaps are
    the overhead; the larger window on a tie), None if none fits."""
    costs = {s: window_cost(padded, s, halo) for s in sizes}
    usable = [s for s, cost in costs.items() if cost is not None]
    return min(usable, key=lambda s: (costs[s], -s[0] * s[1])) if usable else None


def padded_size(h: int, w: int, sizes: tuple[Size, ...], halo: int = HALO) -> Size:
    """Up to the ALIGN grid, and up to the smallest window where the photo is smaller."""
    ph, pw = -(-h // ALIGN) * ALIGN, -(-w // ALIGN) * ALIGN
    if choose_window(sizes, (ph, pw), halo) is None:
        smallest = min(sizes, key=lambda s: s[0] * s[1])
        ph, pw = max(ph, smallest[0]), max(pw, smallest[1])
    return ph, pw


@dataclass(frozen=True)
class WindowPlan:
    """How a photo runs through a model's stages: padded to `padded`, in windows of `window`
    placed at `rows` x `cols`."""

    padded: Size
    window: Size
    rows: list[AxisWindow]
    cols: list[AxisWindow]


def plan_windows(runner: StageRunner, photo: Size, window: Size | None = None) -> WindowPlan:
    """The plan for a photo of size `photo` with the halo the runner's stages record: in
    windows of `window`, or by default of the size that computes the fewest pixels."""
    halo = runner.meta.get("halo", HALO)
    padded = padded_size(*photo, runner.window_sizes, halo)
    window = window or choose_window(runner.window_sizes, padded, halo)
    if window not in runner.window_sizes:
        raise QaieError(f"window {window} is not a stage size of the model")
    rows, cols = plan_axis(padded[0], window[0], halo), plan_axis(padded[1], window[1], halo)
    return WindowPlan(padded, window, rows, cols)


# --- the stages over the windows --------------------------------------------------------------------


class MapPool:
    """The maps' arrays of one photo, kept for the next photo of the same padded size.

    A fresh photo-sized map is new memory that the kernel pages in at its first write: on the
    2-core VM of docs/performance.md, 0.4-1.1 s of a 12 MP photo's 3.6-4.5 s (636 MB of maps),
    and most of its variance. A caller that enhances photos one after
    another in one process (`bench --whole`, a server) can keep the arrays instead, at the price
    of holding them between photos: every map one photo allocated, which within a photo is what
    a photo without a pool has alive at its peak (the shipped model at 12 MP: 636 MB both ways).
    `qaie enhance` of a folder does not: held while the next file is decoded and the last one
    encoded, they raised its peak from 1.50 to 1.65 GB for three 12 MP PNGs."""

    def __init__(self) -> None:
        self.padded: Size | None = None
        self.free: dict[tuple, list[np.ndarray]] = {}

    def spare(self, padded: Size) -> dict[tuple, list[np.ndarray]]:
        """The arrays kept for a photo of padded size `padded`, by (shape, dtype); another
        size's are dropped first."""
        if padded != self.padded:
            self.free.clear()
            self.padded = padded
        return self.free


class _Maps:
    """What crosses the stages of one photo: the maps (whole photo, padded), the histograms of
    the quantized norms' inputs and the output photo, filled window by window by `store`."""

    def __init__(self, runner: StageRunner, photo: Size, padded: Size, pool: MapPool | None) -> None:
        self.runner, self.photo, self.padded = runner, photo, padded
        meta = runner.meta
        self.scales = {name: m["scale"] for name, m in meta["maps"].items()} | {IMAGE: 1, OUTPUT: 1}
        self.last_use = {name: k for k, stage in enumerate(meta["stages"]) for name in stage["inputs"]}
        # the maps whose statistics are counted as they are stored (quantized norms)
        self.counted = {n["input"]: n for n in meta["norms"] if n["chain"] is not None}
        self.histograms: dict[str, Histogram] = {}
        self.maps: dict[str, np.ndarray] = {}
        # maps no longer read, for a later map of their shape (of this photo or, pooled, the next)
        self.spare: dict[tuple, list[np.ndarray]] = pool.spare(padded) if pool is not None else {}
        self.keep_all = pool is not None
        self.allocated = 0  # bytes of new maps this photo took
        self.output_table = runner.quant(OUTPUT).pixel_table()
        self.result = np.empty((*padded, 3), np.uint8)

    def statistics(self, stage: int) -> dict[str, np.ndarray]:
        """The encoded statistics that stage `stage` (> 0) takes: of its norm's whole input map."""
        norm = self.runner.meta["norms"][stage - 1]
        name = norm["input"]
        quant = self.runner.quant(name)
        if name in self.histograms:
            stats = chain_statistics(self.histograms.pop(name), map_codec(quant, norm), norm)
        else:
            s = self.scales[name]
            photo = self.maps[name][: -(-self.photo[0] // s), : -(-self.photo[1] // s)]
            stats = norm_statistics(photo, quant, norm)
        encoded = {}
        for stat, value in stats.items():
            key = f"{stat}{stage}"
            encoded[key] = self.runner.quant(key).encode(value.reshape(1, 1, 1, -1))
        return encoded

    def window(self, name: str, row: AxisWindow, col: AxisWindow, size: Size) -> np.ndarray:
        """Map `name` under a window of `size` at (row.start, col.start) (a view, (1, h, w, C))."""
        s = self.scales[name]
        y, x = row.start // s, col.start // s
        return self.maps[name][None, y : y + size[0] // s, x : x + size[1] // s]

    def store(
        self, outputs: dict[str, np.ndarray], row: AxisWindow, col: AxisWindow
    ) -> list[tuple[str, np.ndarray]]:
        """Copy the owned part of a window's outputs into the maps or, decoded to pixels, into
        the output photo. Returns the photo's own pixels of what it stored in the maps whose
        histograms `count` adds them to."""
        counted = []
        for name, out in outputs.items():
            s = self.scales[name]
            y0, y1 = row.own_start // s, row.own_end // s
            x0, x1 = col.own_start // s, col.own_end // s
            owned = out[
                0, y0 - row.start // s : y1 - row.start // s, x0 - col.start // s : x1 - col.start // s
            ]
            if name == OUTPUT:
                self.result[y0:y1, x0:x1] = (
                    to_uint8(self.runner.quant(OUTPUT).decode(owned))
                    if self.output_table is None
                    else look_up(self.output_table, owned)
                )
                continue
            if name not in self.maps:
                shape = (self.padded[0] // s, self.padded[1] // s, out.shape[-1])
                free = self.spare.get((shape, out.dtype))
                if free:
                    self.maps[name] = free.pop()
                else:
                    self.maps[name] = np.empty(shape, out.dtype)
                    self.allocated += self.maps[name].nbytes
            self.maps[name][y0:y1, x0:x1] = owned
            if name in self.counted:
                photo = (-(-self.photo[0] // s), -(-self.photo[1] // s))
                counted.append((name, self.maps[name][y0 : min(y1, photo[0]), x0 : min(x1, photo[1])]))
        return counted

    def count(self, parts: list[tuple[str, np.ndarray]]) -> None:
        """Add parts of the maps to their histograms."""
        for name, part in parts:
            if part.size == 0:
                continue
            codec = map_codec(self.runner.quant(name), self.counted[name])
            if name not in self.histograms:
                self.histograms[name] = Histogram(part.shape[-1])
            self.histograms[name].add(part if part.dtype == codec.dtype else codec.encode(part))

    def release(self, stage: int) -> None:
        """Drop the maps that no stage after `stage` reads; one of the shape of a later map lends
        it its memory (already paged in), and with a pool every one is kept."""
        maps = self.runner.meta["maps"]
        for name in [n for n in self.maps if self.last_use.get(n, -1) <= stage]:
            done = self.maps.pop(name)
            if self.keep_all or any(
                m["stage"] > stage
                and (m["scale"], m["channels"]) == (maps[name]["scale"], maps[name]["channels"])
                for m in maps.values()
            ):
                self.spare.setdefault((done.shape, done.dtype), []).append(done)


def enhance_whole(
    runner: StageRunner,
    pixels: np.ndarray,
    *,
    window: Size | None = None,
    progress: Callable[[int, int], None] | None = None,
    pool: MapPool | None = None,
) -> np.ndarray:
    """Enhance an RGB photo: uint8 (H, W, 3) -> uint8 (H, W, 3), the whole-photo output.

    The photo is reflect-padded to the ALIGN grid (and to the smallest window when it is
    smaller); statistics are taken over the photo's own pixels only, of quantized maps as each
    window's share is stored. `window`: the stage size to use (default: the one that computes
    the fewest pixels). `progress(done, total)` after each window run.
    `pool`: the maps' arrays are taken from it and left in it for the next photo, and the
    runtime keeps its tensors; without one, a photo whose maps took more than
    RELEASE_AFTER_MAPS bytes calls the runner's `release` (when it has one, as LiteRT's).

    A window's owned outputs are copied into the maps straight from the runtime's memory
    (one copy), then counted into the histograms by a second thread from the maps while the
    next window runs (the runtimes release the GIL while they compute, Pillow while it counts).
    """
    h, w = pixels.shape[:2]
    plan = plan_windows(runner, (h, w), window)
    (ph, pw), window, rows, cols = plan.padded, plan.window, plan.rows, plan.cols
    if (ph, pw) != (h, w):
        pixels = np.pad(pixels, ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect")
    stages = runner.meta["stages"]
    maps = _Maps(runner, (h, w), (ph, pw), pool)
    image_table = runner.quant(IMAGE).image_table()  # pixel -> input value, window by window
    total, done = len(stages) * len(rows) * len(cols), 0
    with ThreadPoolExecutor(max_workers=1) as counter:
        for k, stage in enumerate(stages):
            stats = maps.statistics(k) if k > 0 else {}
            counted: list[Future] = []
            for row, col in itertools.product(rows, cols):
                inputs = dict(stats)
                for name in stage["inputs"]:
                    if name == IMAGE:
                        part = pixels[
                            None, row.start : row.start + window[0], col.start : col.start + window[1]
                        ]
                        inputs[name] = look_up(image_table, part)
                    elif name not in stats:
                        inputs[name] = maps.window(name, row, col, window)
                parts = maps.store(runner.run(k, window, inputs), row, col)
                counted.append(counter.submit(maps.count, parts))
                done += 1
                if progress:
                    progress(done, total)
            for future in counted:
                future.result()  # every part counted (or raise here)
            maps.release(k)
    release = getattr(runner, "release", None)  # a runtime that holds memory between photos
    if pool is None and release is not None and maps.allocated > RELEASE_AFTER_MAPS:
        release()
    return maps.result[:h, :w]
