"""Enhance photo files: files and folders in, enhanced 8-bit RGB images out (`qaie enhance`).

Everything that can be checked before work starts is checked first (inputs exist, outputs
do not clash or exist, the model loads), so a run fails fast and whole. Each file is then
read, enhanced and written atomically; a bad file is reported and skipped, never half written.
Torch-free: the model comes opened (`qaie.quant.predict.open_model`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from qaie.atomic import check_writable
from qaie.errors import QaieError
from qaie.imageio import IMAGE_EXTENSIONS, Size, list_images, read_rgb, write_image
from qaie.runtime.litert import TileModel, check_tile, enhance_image


@dataclass(frozen=True)
class Job:
    """One input file and where its enhanced image goes."""

    src: Path
    dst: Path


def plan_jobs(
    inputs: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    fmt: str | None = None,
    overwrite: bool = False,
) -> list[Job]:
    """Map inputs to outputs and refuse clashes, before any work (and without side effects).

    One input file: `out` is the output file (format from its extension; its folder must
    exist), or a folder when it is one or has no extension. Several inputs or a folder: `out`
    is a folder (created when the first image is written; its parent must exist) and each
    output keeps its input's name, with the extension of `fmt` if given.
    """
    out = Path(out)
    sources = _collect_inputs([Path(p) for p in inputs])
    ext = _extension(fmt, f"--format {fmt}") if fmt else None
    if len(inputs) == 1 and sources[0] == Path(inputs[0]) and out.suffix and not out.is_dir():
        if ext and _canonical(out.suffix) != _canonical(ext):
            raise QaieError(f"{out}: extension disagrees with --format {fmt}; drop one of them")
        _extension(out.suffix, out)  # one imageio can write
        jobs = [Job(sources[0], out)]
    elif out.is_dir():
        jobs = _folder_jobs(sources, out, ext)
    elif out.exists() or out.suffix.lower() in IMAGE_EXTENSIONS:
        raise QaieError(f"{out}: names a file, but several inputs need an output folder")
    else:
        jobs = _folder_jobs(sources, out, ext)
        check_writable(out)  # the folder to create: its parent must exist and be writable
    _check_clashes(jobs)
    for job in jobs:
        if job.dst == out or job.dst.parent.is_dir():  # (outputs in a folder to create are new)
            check_writable(job.dst, overwrite)
    return jobs


def _folder_jobs(sources: list[Path], folder: Path, ext: str | None) -> list[Job]:
    return [Job(src, folder / (src.stem + (ext or _extension(src.suffix, src)))) for src in sources]


def _collect_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded to their images (sorted)."""
    sources = []
    for path in paths:
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise QaieError(f"{path}: no images in folder (looked for {_known()})")
            sources += found
        elif path.exists():
            sources.append(path)
        else:
            raise QaieError(f"{path}: no such file or folder")
    return sources


def _extension(fmt_or_suffix: str, owner: object) -> str:
    """'.JPG', 'jpg' -> '.jpg'; refuses what imageio cannot write, naming `owner` (file or flag)."""
    ext = "." + fmt_or_suffix.lower().lstrip(".")
    if ext not in IMAGE_EXTENSIONS:
        raise QaieError(f"{owner}: unknown image extension {ext!r}; use one of {_known()}")
    return ext


def _canonical(ext: str) -> str:
    ext = ext.lower()
    return {".jpeg": ".jpg", ".tiff": ".tif"}.get(ext, ext)


def _known() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


def _check_clashes(jobs: list[Job]) -> None:
    """No two inputs may share an output, and no output may replace its input."""
    seen: dict[Path, Path] = {}
    for job in jobs:
        key = job.dst.resolve()
        if key == job.src.resolve():
            raise QaieError(f"{job.dst}: output would replace its input; choose another output")
        if key in seen:
            raise QaieError(f"{job.dst}: both {seen[key]} and {job.src} would be written here; rename one")
        seen[key] = job.src


@dataclass(frozen=True)
class FileResult:
    """What happened to one input: written (with a note on input conversions) or an error."""

    job: Job
    note: str | None = None
    error: str | None = None


def enhance_files(
    jobs: list[Job],
    model: TileModel,
    *,
    quality: int = 95,
    tile: Size | None = None,
    overlap: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[FileResult]:
    """Enhance each job's image and write it atomically; yields one result per job.

    A bad file (unreadable, too small, unwritable) yields its error and the batch goes on.
    `progress(done, total)` is called after each tile of each image.
    """
    if not 1 <= quality <= 100:
        raise QaieError(f"quality must be in 1..100, got {quality}")
    if tile is not None:
        check_tile(model, tile)
    for job in jobs:
        try:
            image = read_rgb(job.src)
            try:
                pixels = enhance_image(model, image.pixels, tile=tile, overlap=overlap, progress=progress)
            except QaieError as err:
                raise QaieError(f"{job.src}: {err}") from None
            job.dst.parent.mkdir(exist_ok=True)  # plan_jobs checked that its parent exists
            write_image(job.dst, pixels, quality=quality)
            yield FileResult(job, note=image.note)
        except QaieError as err:
            yield FileResult(job, error=str(err))
