"""Latency and memory of an exported model in its runtime (`qaie bench`): LiteRT, ONNX Runtime
or ExecuTorch, whichever `qaie.runtime.registry` gives the file.

Each (frame size, threads) configuration runs in a fresh Python process, so its peak RSS
(`peak_rss_mb`, not inherited from this one) belongs to that configuration alone: `peak_rss_mb` is the whole
process, `model_rss_mb` the growth over the process after importing the runtime (the
interpreter, its tensor arenas, the frame and the tiling buffers). A frame of an exported size
is one interpreter call; a smaller one is padded, a larger one enhanced stage by stage in
windows (a file with stage signatures) or in tiles (`enhance_image`), which is what a user of
that frame size gets. Times include the
uint8 <-> model-tensor conversion; warm-up runs are excluded.

`compare` times two files in one process, alternately (A B, then B A, ...), so that a load
that comes and goes on a shared machine falls on both: their ratio is the number to quote,
not either absolute time.

`whole` (`qaie bench F.tflite --whole HxW`) times the whole-photo path of a file with stage
signatures (what `qaie enhance` runs on a photo of that size: `enhance_image`, stage by stage
in windows) against one pass of its largest exported signature, warm and alternately in this
process, both in seconds per megapixel: their ratio, taken round by round on as many pixels
each way, is what the whole-photo path costs per pixel over one pass (window overlap,
padding, the stage boundaries and the statistics). Warm
means the maps' memory too: it is kept between photos (`wholephoto.MapPool`) as the one pass's
tensors are, not paged in anew for each photo as in a one-photo `qaie enhance`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qaie.errors import QaieError
from qaie.imageio import Size
from qaie.jsonio import dumps
from qaie.runtime import registry
from qaie.runtime.litert import TFLiteModel, TileModel, choose_tile, enhance_image, format_size, plan_tiles
from qaie.runtime.wholephoto import MapPool, plan_windows


@dataclass(frozen=True)
class BenchRow:
    """One (frame size, threads) measurement; times in milliseconds over `runs` timed runs."""

    size: str  # frame "HxW"
    threads: int
    mode: str  # "direct" (an exported size), "padded" (smaller) or "tiled" (larger)
    tile: str  # exported size the interpreter runs
    tiles: int  # interpreter calls per frame
    runs: int
    warmup: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    peak_rss_mb: float
    model_rss_mb: float


@dataclass(frozen=True)
class BenchReport:
    model: str
    file_bytes: int
    int8: bool
    machine: str
    cpus: int
    rows: list[BenchRow]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CompareRow:
    """Two files timed alternately on one frame in one process; times in milliseconds."""

    size: str
    threads: int
    runs: int
    warmup: int
    median_ms: float  # the model
    other_median_ms: float  # the other file
    ratio: float  # median_ms / other_median_ms
    paired_ratio: float  # median over runs of (model time / other's time in the same round)
    ratio_p10: float  # spread of the per-round ratios
    ratio_p90: float


@dataclass(frozen=True)
class CompareReport:
    model: str
    other: str
    machine: str
    cpus: int
    load_avg: tuple[float, float, float]  # 1, 5, 15 min, taken before the first case
    rows: list[CompareRow]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class WholeRow:
    """The whole-photo path and one pass, alternately in one process; times in milliseconds."""

    size: str  # the photo "HxW"
    threads: int
    runs: int
    warmup: int
    window: str  # the stage window the photo runs in
    calls: int  # interpreter calls per photo (windows x stages)
    median_ms: float  # the whole-photo path on the photo
    p10_ms: float
    p90_ms: float
    one_pass_size: str  # the largest exported signature
    one_pass_calls: int  # one passes per round: about the photo's pixels, so both sides do alike
    one_pass_median_ms: float  # one interpreter call of it (a round's mean)
    one_pass_p10_ms: float
    one_pass_p90_ms: float
    s_per_mp: float  # median_ms per megapixel of the photo, in seconds
    one_pass_s_per_mp: float  # one_pass_median_ms per megapixel of the signature
    ratio: float  # median over rounds of (whole-photo s/MP / one-pass s/MP in the same round)
    ratio_p10: float  # spread of the per-round ratios
    ratio_p90: float


@dataclass(frozen=True)
class WholeReport:
    model: str
    file_bytes: int
    int8: bool
    machine: str
    cpus: int
    load_avg: tuple[float, float, float]  # 1, 5, 15 min, taken before the first case
    rows: list[WholeRow]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def frame_mode(model: TileModel, size: Size) -> tuple[str, Size, int]:
    """How a frame of `size` runs: mode, the exported size used (tile, or stage window), and
    interpreter calls per frame."""
    fits = getattr(model, "fits_one_pass", None)  # any size (ONNX): one call within its budget
    if model.sizes is None and (fits is None or fits(size)):
        return "direct", size, 1
    if model.stages is not None and (model.sizes is None or size not in model.sizes):
        plan = plan_windows(model.stages, size)
        return "stages", plan.window, len(plan.rows) * len(plan.cols) * len(model.stages.meta["stages"])
    tile = choose_tile(model.sizes, size)
    plan = plan_tiles(size, tile)
    mode = "direct" if size == tile else "padded" if plan.count == 1 else "tiled"
    return mode, tile, plan.count


def bench(
    path: str | os.PathLike, sizes: list[Size] | None, threads: list[int], *, runs: int = 10, warmup: int = 2
) -> BenchReport:
    """Measure every (size, threads) pair, each in a fresh process (default sizes: the exported ones)."""
    path = Path(path)
    if runs < 1 or warmup < 0:
        raise QaieError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    model = registry.open_deployed(path, num_threads=1)  # fails here, once, on a bad file
    if not sizes and model.sizes is None:
        raise QaieError(f"{path}: takes any frame size; pass --size HxW[,HxW...]")
    rows = []
    for size in sizes or list(model.sizes):
        frame_mode(model, size)  # a bad size fails before any run
        for n in threads:
            rows.append(_measure_in_subprocess(path, size, n, runs, warmup))
    return BenchReport(
        str(path), path.stat().st_size, model.is_int8, platform.platform(), os.cpu_count() or 1, rows
    )


def compare(
    path: str | os.PathLike,
    other: str | os.PathLike,
    sizes: list[Size] | None,
    threads: list[int],
    *,
    runs: int = 10,
    warmup: int = 2,
) -> CompareReport:
    """Time `path` against `other`, alternately, in one fresh process per (size, threads)
    (default size: the first exported size both files run directly)."""
    path, other = Path(path), Path(other)
    if runs < 1 or warmup < 0:
        raise QaieError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    a, b = TFLiteModel(path, num_threads=1), TFLiteModel(other, num_threads=1)
    if not sizes:
        common = [s for s in a.sizes if s in b.sizes]
        if not common:
            raise QaieError(f"{path} and {other} share no exported size; pass --size HxW")
        sizes = common[:1]
    for size in sizes:  # a bad size fails before any run
        frame_mode(a, size)
        frame_mode(b, size)
    load = tuple(round(x, 2) for x in os.getloadavg())
    rows = [_compare_in_subprocess(path, other, size, n, runs, warmup) for size in sizes for n in threads]
    return CompareReport(str(path), str(other), platform.platform(), os.cpu_count() or 1, load, rows)


def whole(
    path: str | os.PathLike, size: Size, threads: list[int], *, runs: int = 10, warmup: int = 1
) -> WholeReport:
    """Time the whole-photo path on a synthetic photo of `size` against one pass of the file's
    largest exported signature, warm, in this process, for each thread count."""
    path = Path(path)
    if runs < 1 or warmup < 0:
        raise QaieError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    model = TFLiteModel(path, num_threads=1)  # fails here, once, on a bad file
    if model.stages is None:
        raise QaieError(
            f"{path}: no stage signatures (exported with --no-stages), so no whole-photo path to time; "
            "re-export without --no-stages, or time tiles with --size HxW"
        )
    if size in model.sizes:
        raise QaieError(
            f"--whole {format_size(size)}: an exported size, which runs in one pass; pass a larger photo"
        )
    load = tuple(round(x, 2) for x in os.getloadavg())
    rows = [measure_whole(path, size, n, runs, warmup) for n in threads]
    return WholeReport(
        str(path), path.stat().st_size, model.is_int8, platform.platform(), os.cpu_count() or 1, load, rows
    )


def synthetic_photo(size: Size, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients and a bright disc with mild noise (tests/test_wholephoto.py's
    gradient_photo): photo-like content for the whole-photo path, uint8 (H, W, 3)."""
    h, w = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    disc = ((y - 0.3) ** 2 + (x - 0.6) ** 2 < 0.02) * 90
    rgb = np.stack([40 + 180 * x + disc, 30 + 150 * y, 200 - 120 * x * y + disc / 2], axis=-1)
    return np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)


def measure_whole(path: Path, size: Size, threads: int, runs: int, warmup: int) -> WholeRow:
    """The whole-photo path and one pass of the largest signature in rounds, in one interpreter:
    each round runs the photo once and the one pass about as many times as the photo has its
    pixels (whole first on even rounds, the one passes first on odd ones). A round's ratio
    compares work of the same size taken at the same moment, so a load that comes and goes
    moves both sides of it; one pass per round, its single short call made the ratio of two
    medians move by 10% between calls."""
    model = TFLiteModel(path, num_threads=threads)
    mode, window, calls = frame_mode(model, size)
    assert mode == "stages", mode
    one = max(model.sizes, key=lambda s: s[0] * s[1])  # the first of equal areas
    repeats = max(1, round(size[0] * size[1] / (one[0] * one[1])))
    frames = [synthetic_photo(size), synthetic_photo(one)]
    pool = MapPool()  # warm: the maps' memory stays paged in between photos, as the one pass's does

    def timed(job: Callable[[], object], n: int) -> float:
        """Mean milliseconds of n calls."""
        start = time.perf_counter()
        for _ in range(n):
            job()
        return (time.perf_counter() - start) * 1000 / n

    jobs = [lambda: enhance_image(model, frames[0], pool=pool), lambda: model.run(frames[1])]
    times: list[list[float]] = [[], []]
    for i in range(warmup + runs):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            ms = timed(jobs[k], 1 if k == 0 else repeats)
            if i >= warmup:
                times[k].append(ms)
    (p10, med, p90), (op10, omed, op90) = (np.percentile(t, [10, 50, 90]) for t in times)
    mp, one_mp = size[0] * size[1] / 1e6, one[0] * one[1] / 1e6
    ratios = (np.array(times[0]) / mp) / (np.array(times[1]) / one_mp)
    rp10, ratio, rp90 = np.percentile(ratios, [10, 50, 90])
    return WholeRow(
        format_size(size), threads, runs, warmup, format_size(window), calls,
        *(round(float(t), 3) for t in (med, p10, p90)),
        format_size(one), repeats, *(round(float(t), 3) for t in (omed, op10, op90)),
        round(float(med / 1000 / mp), 6), round(float(omed / 1000 / one_mp), 6),
        *(round(float(r), 4) for r in (ratio, rp10, rp90)),
    )  # fmt: skip


def format_whole(report: WholeReport) -> str:
    """The whole-photo path beside one pass, one row per thread count."""
    kind = "INT8" if report.int8 else "float"
    load = ", ".join(f"{x:.2f}" for x in report.load_avg)
    lines = [
        f"{report.model}: {kind}, {report.file_bytes / 1e6:.2f} MB; {report.machine}, {report.cpus} CPUs, "
        f"load average {load}; warm, alternating runs in one process",
        f"{'photo':>11} {'thr':>3} {'runs':>4}  {'whole photo in windows':<24} {'s/MP (p10-p90)':>22}  "
        f"{'one pass':<14} {'s/MP (p10-p90)':>22} {'whole/one (p10-p90)':>19}",
    ]
    for r in report.rows:
        mp, one_mp = _megapixels(r.size), _megapixels(r.one_pass_size)
        how = f"{r.window} x{r.calls} calls"
        spread = f"{r.s_per_mp:.3f} ({r.p10_ms / mp / 1000:.3f}-{r.p90_ms / mp / 1000:.3f})"
        one = (
            f"{r.one_pass_s_per_mp:.3f} ({r.one_pass_p10_ms / one_mp / 1000:.3f}-"
            f"{r.one_pass_p90_ms / one_mp / 1000:.3f})"
        )
        ratio = f"{r.ratio:.2f} ({r.ratio_p10:.2f}-{r.ratio_p90:.2f})"
        lines.append(
            f"{r.size:>11} {r.threads:>3} {r.runs:>4}  {how:<24} {spread:>22}  "
            f"{f'{r.one_pass_size} x{r.one_pass_calls}':<14} {one:>22} {ratio:>19}"
        )
    return "\n".join(lines)


def _megapixels(size: str) -> float:
    h, w = (int(v) for v in size.split("x"))
    return h * w / 1e6


def format_compare(report: CompareReport) -> str:
    """The comparison as a text table, one row per (size, threads)."""
    load = ", ".join(f"{x:.2f}" for x in report.load_avg)
    lines = [
        f"A = {report.model}\nB = {report.other}",
        f"{report.machine}, {report.cpus} CPUs, load average {load}; alternating runs in one process",
        f"{'size':>11} {'thr':>3} {'runs':>4} {'A median ms':>11} {'B median ms':>11} {'A/B':>6} "
        f"{'paired A/B (p10-p90)':>21}",
    ]
    for r in report.rows:
        paired = f"{r.paired_ratio:.3f} ({r.ratio_p10:.3f}-{r.ratio_p90:.3f})"
        lines.append(
            f"{r.size:>11} {r.threads:>3} {r.runs:>4} {r.median_ms:>11.1f} {r.other_median_ms:>11.1f} "
            f"{r.ratio:>6.3f} {paired:>21}"
        )
    return "\n".join(lines)


def format_table(report: BenchReport) -> str:
    """The report as a text table, one row per configuration."""
    kind = "INT8" if report.int8 else "float"
    lines = [
        f"{report.model}: {kind}, {report.file_bytes / 1e6:.2f} MB; {report.machine}, {report.cpus} CPUs",
        f"{'size':>11} {'thr':>3}  {'run as':<22} {'median ms':>9} {'p10-p90 ms':>15} {'min ms':>8} {'peak MB':>7}",
    ]
    for r in report.rows:
        how = f"{r.mode} {r.tile}" + (f" x{r.tiles}" if r.tiles > 1 else "")
        spread = f"{r.p10_ms:.1f}-{r.p90_ms:.1f}"
        lines.append(
            f"{r.size:>11} {r.threads:>3}  {how:<22} {r.median_ms:>9.1f} {spread:>15} {r.min_ms:>8.1f} "
            f"{r.peak_rss_mb:>7.0f}"
        )
    return "\n".join(lines)


def _measure_in_subprocess(path: Path, size: Size, threads: int, runs: int, warmup: int) -> BenchRow:
    args = [sys.executable, "-m", "qaie.runtime.bench", str(path), *map(str, (*size, threads, runs, warmup))]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise QaieError(f"{path}: benchmark of {format_size(size)} with {threads} threads failed: {last}")
    return BenchRow(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _compare_in_subprocess(
    path: Path, other: Path, size: Size, threads: int, runs: int, warmup: int
) -> CompareRow:
    args = [sys.executable, "-m", "qaie.runtime.bench", "--compare", str(path), str(other)]
    args += [str(x) for x in (*size, threads, runs, warmup)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise QaieError(
            f"{path} vs {other}: comparison at {format_size(size)}, {threads} threads failed: {last}"
        )
    return CompareRow(**json.loads(proc.stdout.strip().splitlines()[-1]))


def measure_pair(path: Path, other: Path, size: Size, threads: int, runs: int, warmup: int) -> CompareRow:
    """Time two files on the same frame in this process, alternating which goes first."""
    models = [TFLiteModel(p, num_threads=threads) for p in (path, other)]
    tiles = [None if m == "stages" else t for m, t, _ in (frame_mode(m, size) for m in models)]
    frame = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    times: list[list[float]] = [[], []]
    for i in range(warmup + runs):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            start = time.perf_counter()
            enhance_image(models[k], frame, tile=tiles[k])
            if i >= warmup:
                times[k].append((time.perf_counter() - start) * 1000)
    a, b = (float(np.median(t)) for t in times)
    ratios = np.array(times[0]) / np.array(times[1])
    p10, paired, p90 = (float(x) for x in np.percentile(ratios, [10, 50, 90]))
    return CompareRow(
        format_size(size), threads, runs, warmup, round(a, 3), round(b, 3), round(a / b, 4),
        round(paired, 4), round(p10, 4), round(p90, 4),
    )  # fmt: skip


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    Linux's `getrusage` maxrss survives `exec`: a child started by `subprocess` (vfork, then
    exec) reports at least its parent's peak. /proc's VmHWM belongs to the address space the
    process runs in now, so it is read where it exists.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(path: Path, size: Size, threads: int, runs: int, warmup: int) -> BenchRow:
    """Time one configuration in this process (call it in a fresh one for honest memory)."""
    base_mb = peak_rss_mb()
    model = registry.open_deployed(path, num_threads=threads)
    mode, tile, tiles = frame_mode(model, size)
    frame = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)  # content-independent
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        enhance_image(model, frame, tile=None if mode == "stages" else tile)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    peak_mb = peak_rss_mb()
    return BenchRow(
        format_size(size), threads, mode, format_size(tile), tiles, runs, warmup,
        *(round(float(t), 3) for t in (median, p10, p90, min(times), max(times))),
        round(peak_mb, 1), round(peak_mb - base_mb, 1),
    )  # fmt: skip


if __name__ == "__main__":  # the fresh process of one configuration: prints its row as JSON
    if sys.argv[1] == "--compare":  # two files, alternately: prints their CompareRow as JSON
        import ai_edge_litert.interpreter  # noqa: F401

        first, second, h, w, n_threads, n_runs, n_warmup = sys.argv[2:]
        pair = measure_pair(
            Path(first), Path(second), (int(h), int(w)), int(n_threads), int(n_runs), int(n_warmup)
        )
        print(dumps(dataclasses.asdict(pair), indent=None), end="")
        sys.exit(0)
    model_path, h, w, n_threads, n_runs, n_warmup = sys.argv[1:]
    # (the runtime is imported before the baseline RSS is taken)
    importlib.import_module(registry.runtime(model_path).native)
    row = measure(Path(model_path), (int(h), int(w)), int(n_threads), int(n_runs), int(n_warmup))
    print(dumps(dataclasses.asdict(row), indent=None), end="")
