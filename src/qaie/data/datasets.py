"""Datasets of (input, target) photo pairs, chosen on the command line by a short spec.

    builtin                         synthetic pairs from sample photos shipped by scikit-image
                                    and scikit-learn (runs on a fresh machine, no downloads)
    synthetic:FOLDER                clean photos degraded by the camera model (qaie.data.degrade)
    pairs:FOLDER                    FOLDER/input/NAME.ext with FOLDER/target/NAME.ext
    dped:FOLDER[:iphone|blackberry|sony]   the DPED patch layout (default phone: iphone)
    photos:FOLDER                   unlabelled photos, no targets (calibration, fidelity to a
                                    reference model; qaie.data.photos)

Every source becomes a list of `Sample`s served by one `PairDataset`. Pairs are matched by
file stem, never by directory order, and checked when the dataset is built (partners, sizes
from the image headers) so a bad folder fails before training starts; DPED (160k files) is
checked lazily instead. All randomness comes from `np.random.default_rng([seed, epoch, index])`
(train) or `[seed, hash(name)]` (val/test): resumed runs and DataLoader workers draw exactly
what an uninterrupted single-process run draws. docs/data.md describes layouts and splits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from qaie.data.base import PhotoItems
from qaie.data.degrade import CameraModel, Frame, degrade, psf_radius
from qaie.data.photos import PhotoDataset
from qaie.data.spec import KINDS, PHONES, SPEC_SYNTAX
from qaie.errors import QaieError, QaieWarning
from qaie.imageio import MIN_IMAGE_SIDE, image_size, list_images, read_header

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
VAL_SEED = 0  # val/test degradations are fixed by this seed, so runs with any --seed compare

# Flat folders without train/val/test subfolders are split by a hash of the file stem: files
# ordered by hash, the first VAL_PERCENT go to val, the next TEST_PERCENT to test, the rest to
# train (at least one each, so 8 FiveK pairs still give 6/1/1). DPED has only train and test
# folders, so validation is carved out of its training data the same way.
VAL_PERCENT, TEST_PERCENT = 10, 10
DPED_VAL_PERCENT = 2
# Decoded images are kept in memory when the whole source fits in this (bsds500: ~0.3 GB).
CACHE_BYTES = 2 * 1024**3

# Natural colour photos that installed packages ship: (name, package, path in the package).
# Left out: grayscale, microscopy, retina, astronomy, charts, and motorcycle_right (the stereo
# twin of motorcycle_left: the same scene would sit in two splits).
BUILTIN_PHOTOS = (
    ("astronaut", "skimage", "data/astronaut.png"),
    ("chelsea", "skimage", "data/chelsea.png"),
    ("coffee", "skimage", "data/coffee.png"),
    ("motorcycle", "skimage", "data/motorcycle_left.png"),
    ("rocket", "skimage", "data/rocket.jpg"),
    ("china", "sklearn", "datasets/images/china.jpg"),
    ("flower", "sklearn", "datasets/images/flower.jpg"),
)
# With 7 photos, whole-photo splits would leave 1 photo each for val and test. Instead each
# photo gives a vertical strip of this share of its width to val (top half) and test (bottom
# half), alternating right and left; the rest is train. No pixel is in two splits.
BUILTIN_HOLDOUT = 0.3


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec; `str(spec)` gives back a spec that parses to the same value."""

    kind: str
    path: Path | None = None
    phone: str | None = None

    def __str__(self) -> str:
        if self.kind == "builtin":
            return "builtin"
        return f"{self.kind}:{self.path}" + (f":{self.phone}" if self.kind == "dped" else "")


class Region(NamedTuple):
    """A rectangle of a photo, in pixels."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class Sample:
    """One underlying image or pair.

    Args:
        name: unique within its split (the file stem, or the builtin photo's name).
        target: the clean / DSLR photo.
        input: the phone photo; None for synthetic pairs (the input is `degrade(target)`).
        region: the part of the target photo that belongs to this split (None: all of it).
    """

    name: str
    target: Path
    input: Path | None = None
    region: Region | None = None


def parse_spec(text: str) -> DataSpec:
    """Parse `builtin`, `synthetic:FOLDER`, `pairs:FOLDER` or `dped:FOLDER[:PHONE]`."""
    kind, _, rest = text.partition(":")
    if kind == "builtin" and not rest:
        return DataSpec("builtin")
    if kind not in KINDS or kind == "builtin" or not rest:
        raise QaieError(f"data spec {text!r}: expected {SPEC_SYNTAX}")
    phone = None
    if kind == "dped":
        head, sep, tail = rest.rpartition(":")
        if sep and tail in PHONES:
            rest, phone = head, tail
        elif sep and not Path(rest).expanduser().exists():
            raise QaieError(f"data spec {text!r}: unknown phone {tail!r}; use one of {', '.join(PHONES)}")
    path = Path(rest).expanduser()
    if not path.is_dir():
        raise QaieError(f"{path}: data folder does not exist (data spec {text!r})")
    if kind == "dped" and phone is None:  # dped:<root>/sony means the sony data
        phone = path.name if path.name in PHONES and not (path / path.name).is_dir() else "iphone"
    return DataSpec(kind, path, phone)


def make_dataset(
    spec: str | DataSpec,
    split: Split,
    *,
    crop: int | tuple[int, int] | None,
    seed: int = 0,
    repeats: int = 1,
    limit: int | None = None,
    camera: CameraModel | None = None,
    held_out: bool = False,
) -> PairDataset | PhotoDataset:
    """The `split` of the data `spec` names, checked and ready to serve.

    Args:
        crop: train: random crop size (DPED: 100); val/test: fixed centre crop. None: whole images.
            (H, W): a rectangle, for photos: data only (it turns photos to the crop's orientation).
        seed: all randomness derives from it (with the epoch and index in training).
        repeats: crops drawn per image per epoch (small datasets); photos: data's val/test: that
            many windows per photo at fixed places (patches) instead of the centre crop.
        limit: keep the first `limit` names (sorted), for quick runs.
        camera: the synthetic camera's ranges (builtin and synthetic sources).
        held_out: photos: data split into train/val/test by a hash of the file stem, as flat
            pair folders are (training on photos: label-free QAT). Otherwise every split of
            photos: data is the whole folder (calibration, fidelity on a folder kept apart).
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if split not in SPLITS:
        raise QaieError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    crop_hw = (crop, crop) if isinstance(crop, int) else crop
    if crop_hw is not None and min(crop_hw) < MIN_IMAGE_SIDE:
        raise QaieError(
            f"crop must be at least {MIN_IMAGE_SIDE} pixels (the network's minimum size), got {crop}"
        )
    for name, value, least in (("seed", seed, 0), ("repeats", repeats, 1), ("limit", limit, 1)):
        if value is not None and value < least:
            raise QaieError(f"{name} must be at least {least}, got {value}")
    if spec.kind == "photos":
        return _photo_dataset(spec, split, crop_hw, seed, repeats, limit, held_out)
    if crop_hw is not None and crop_hw[0] != crop_hw[1]:
        raise QaieError(f"crop {crop_hw[0]}x{crop_hw[1]}: rectangular crops are for photos: data only")
    crop = crop_hw[0] if crop_hw else None

    if spec.kind == "builtin":
        samples = _builtin_samples(split)
    elif spec.kind == "synthetic":
        samples = _synthetic_samples(spec.path, split)
    elif spec.kind == "pairs":
        samples = _paired_samples(spec.path, split)
    else:
        samples = _dped_samples(spec.path, spec.phone, split)
    samples = samples[:limit]
    if not samples:
        raise QaieError(f"{spec}: the {split} split is empty; see docs/data.md for the layout and splits")

    # DPED's 160k patches are checked as they load (and never cached); others here, from headers.
    cache = False
    if spec.kind != "dped":
        decoded, converted = _check_headers(samples, crop)
        cache = decoded <= CACHE_BYTES
        if converted:  # one line for the whole split, however many files
            (path, note), more = converted[0], len(converted) - 1
            also = f"; {more} more {split} images are converted on reading too" if more else ""
            warnings.warn(QaieWarning(f"{path}: {note}{also}"), stacklevel=2)
    return PairDataset(samples, split, crop, seed, repeats, camera or CameraModel(), cache)


class PairDataset(PhotoItems):
    """(input, target) float32 tensors (3, h, w) in [0, 1].

    Train: random crops and flips; synthetic inputs from a freshly sampled camera. Val/test:
    deterministic (centre crop or whole image, camera fixed by seed and name).
    """

    def __init__(
        self,
        samples: list[Sample],
        split: Split,
        crop: int | None,
        seed: int,
        repeats: int,
        camera: CameraModel,
        cache: bool,
    ) -> None:
        super().__init__(len(samples), repeats, cache)
        self.samples = samples
        self.names = [s.name for s in samples]
        self.split, self.crop, self.seed, self.camera = split, crop, seed, camera

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[self._item(index)]
        train = self.split == "train"
        rng = np.random.default_rng(
            [self.seed, self.epoch, index] if train else [self.seed, _stable_int(sample.name)]
        )
        target = self._load(sample.target)  # uint8 (H, W, 3), the whole photo
        region = sample.region or Region(0, 0, *target.shape[:2])
        window = self._window(sample.target, region, rng)
        if sample.input is None:
            x = self._shoot(target, region, window, rng)
        else:
            phone = self._load(sample.input)
            _check_same_size(sample.input, phone.shape[1::-1], sample.target, target.shape[1::-1])
            x = _cut(phone, window).astype(np.float32) / 255
        y = _cut(target, window).astype(np.float32) / 255
        if train:
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            if rng.random() < 0.5:
                x, y = x[::-1], y[::-1]
        return _to_tensor(x), _to_tensor(y)

    def _window(self, path: Path, region: Region, rng: np.random.Generator) -> Region:
        """The crop to serve, in photo coordinates: random in training, centred otherwise."""
        if self.crop is None:
            return region
        _check_fits(path, region, self.crop)
        if self.split == "train":
            dy = int(rng.integers(0, region.height - self.crop + 1))
            dx = int(rng.integers(0, region.width - self.crop + 1))
        else:
            dy, dx = (region.height - self.crop) // 2, (region.width - self.crop) // 2
        return Region(region.top + dy, region.left + dx, self.crop, self.crop)

    def _shoot(
        self, photo: np.ndarray, region: Region, window: Region, rng: np.random.Generator
    ) -> np.ndarray:
        """The synthetic camera's picture of `window`, float32 (h, w, 3).

        Degrades the window plus the PSF's reach around it (within this split's region, so
        no other split's pixels leak in), with vignetting placed by the whole photo's frame.
        """
        params = self.camera.sample(rng)
        r = psf_radius(params)
        top, left = max(region.top, window.top - r), max(region.left, window.left - r)
        bottom = min(region.top + region.height, window.top + window.height + r)
        right = min(region.left + region.width, window.left + window.width + r)
        context = Region(top, left, bottom - top, right - left)
        clean = _cut(photo, context).astype(np.float32) / 255
        shot = degrade(clean, params, Frame(top, left, photo.shape[0], photo.shape[1]))
        inner = Region(window.top - top, window.left - left, window.height, window.width)
        return _cut(shot, inner)


# --- sources ------------------------------------------------------------------------------------


def _photo_dataset(
    spec: DataSpec,
    split: Split,
    crop: tuple[int, int] | None,
    seed: int,
    repeats: int,
    limit: int | None,
    held_out: bool,
) -> PhotoDataset:
    """The whole folder for every split (qaie.data.photos), or with `held_out` the split's share."""
    by_stem = _by_stem(spec.path)
    if held_out and by_stem:
        splits = _hash_split(spec.path, list(by_stem), VAL_PERCENT, TEST_PERCENT)
        by_stem = {stem: path for stem, path in by_stem.items() if splits[stem] == split}
    paths = list(by_stem.values())[:limit]
    if not paths:
        raise QaieError(f"{spec.path}: no images (photos:FOLDER takes a folder of photos)")
    decoded = 0
    for path in paths:
        header = read_header(path)
        decoded += header.width * header.height * 3
    return PhotoDataset(paths, split, crop, seed, repeats, cache=decoded <= CACHE_BYTES)


def _builtin_samples(split: Split) -> list[Sample]:
    samples = []
    for k, (name, package, relative) in enumerate(BUILTIN_PHOTOS):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise QaieError(f"builtin data: package {package} is not installed; pip install {package}")
        path = Path(spec.submodule_search_locations[0]) / relative
        w, h = image_size(path)
        samples.append(Sample(name, path, region=builtin_region(k, h, w, split)))
    return samples


def builtin_region(k: int, height: int, width: int, split: Split) -> Region:
    """The part of builtin photo number `k` that belongs to `split` (see BUILTIN_HOLDOUT)."""
    strip = round(BUILTIN_HOLDOUT * width)
    strip_left = width - strip if k % 2 == 0 else 0
    if split == "train":
        return Region(0, 0 if k % 2 == 0 else strip, height, width - strip)
    half = height // 2
    return (
        Region(0, strip_left, half, strip)
        if split == "val"
        else Region(half, strip_left, height - half, strip)
    )


def _synthetic_samples(path: Path, split: Split) -> list[Sample]:
    if _has_split_folders(path):
        return [Sample(stem, file) for stem, file in _by_stem(_split_folder(path, split)).items()]
    files = _by_stem(path)
    splits = _hash_split(path, list(files), VAL_PERCENT, TEST_PERCENT)
    return [Sample(stem, file) for stem, file in files.items() if splits[stem] == split]


def _paired_samples(path: Path, split: Split) -> list[Sample]:
    if (path / "input").is_dir() or not _has_split_folders(path):
        folder, hashed = path, True
    else:
        folder, hashed = _split_folder(path, split), False
    pairs = _match(folder / "input", folder / "target")
    if hashed:
        splits = _hash_split(folder, list(pairs), VAL_PERCENT, TEST_PERCENT)
        pairs = {stem: pair for stem, pair in pairs.items() if splits[stem] == split}
    return [Sample(stem, target, phone) for stem, (phone, target) in pairs.items()]


def _dped_samples(path: Path, phone: str, split: Split) -> list[Sample]:
    root = path / phone if (path / phone).is_dir() else path
    folder = root / "test_data" / "patches" if split == "test" else root / "training_data"
    if not folder.is_dir():
        raise QaieError(
            f"{folder}: no such folder; dped:FOLDER expects FOLDER/{phone}/training_data/{{{phone},canon}} "
            f"and FOLDER/{phone}/test_data/patches/{{{phone},canon}}"
        )
    pairs = _match(folder / phone, folder / "canon")
    if split != "test":  # validation: a fixed 2% of the training pairs, by name
        splits = _hash_split(folder, list(pairs), DPED_VAL_PERCENT, 0)
        pairs = {stem: pair for stem, pair in pairs.items() if splits[stem] == split}
    return [Sample(stem, target, phone_file) for stem, (phone_file, target) in pairs.items()]


# --- helpers ------------------------------------------------------------------------------------


def _by_stem(folder: Path) -> dict[str, Path]:
    """Image files of `folder` by stem, sorted; two files with one stem are ambiguous."""
    files: dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in files:
            raise QaieError(f"{path}: same name as {files[path.stem].name}; keep one file per name")
        files[path.stem] = path
    return dict(sorted(files.items()))


def _match(inputs: Path, targets: Path) -> dict[str, tuple[Path, Path]]:
    """{stem: (input, target)}, matched by file name; a file without a partner is an error."""
    if not inputs.is_dir() or not targets.is_dir():
        missing = inputs if not inputs.is_dir() else targets
        raise QaieError(
            f"{missing}: no such folder (expected {inputs.name}/ and {targets.name}/ side by side)"
        )
    a, b = _by_stem(inputs), _by_stem(targets)
    for stem in sorted(a.keys() ^ b.keys()):
        lonely, other = (a[stem], targets) if stem in a else (b[stem], inputs)
        raise QaieError(f"{lonely}: no partner named {stem}.* in {other} (pairs are matched by name)")
    return {stem: (a[stem], b[stem]) for stem in a}


def _has_split_folders(path: Path) -> bool:
    return any((path / s).is_dir() for s in SPLITS)


def _split_folder(path: Path, split: Split) -> Path:
    folder = path / split
    if not folder.is_dir():
        present = [s for s in SPLITS if (path / s).is_dir()]
        raise QaieError(
            f"{folder}: no such folder ({path} has {', '.join(present)}); add it or use a flat folder"
        )
    return folder


def _stable_int(name: str) -> int:
    """A hash of `name` that is the same in every process and Python version (unlike hash())."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def _hash_split(folder: Path, stems: list[str], val_percent: int, test_percent: int) -> dict[str, Split]:
    """{stem: split}: stems ordered by hash; val first, then test, then train (>= 1 each)."""
    order = sorted(stems, key=lambda stem: (_stable_int(stem), stem))
    n_val = max(1, round(len(order) * val_percent / 100))
    n_test = max(1, round(len(order) * test_percent / 100)) if test_percent else 0
    if n_val + n_test >= len(order):
        raise QaieError(
            f"{folder}: {len(order)} images are too few to split into train/val/test; add images "
            "or put them in train/, val/ and test/ subfolders"
        )
    splits: list[Split] = ["val"] * n_val + ["test"] * n_test + ["train"] * (len(order) - n_val - n_test)
    return dict(zip(order, splits, strict=True))


def _check_headers(samples: list[Sample], crop: int | None) -> tuple[int, list[tuple[Path, str]]]:
    """Check sizes from image headers (readable, partners alike, crop fits).

    Returns the decoded bytes and the files `read_rgb` will convert, with what it converts.
    """
    total, converted = 0, []
    for sample in samples:
        target = read_header(sample.target)
        w, h = target.width, target.height
        headers = [(sample.target, target)]
        if sample.input is not None:
            phone = read_header(sample.input)
            _check_same_size(sample.input, (phone.width, phone.height), sample.target, (w, h))
            headers.append((sample.input, phone))
        _check_fits(sample.target, sample.region or Region(0, 0, h, w), crop)
        total += h * w * 3 * len(headers)
        converted += [(path, header.note) for path, header in headers if header.note]
    return total, converted


def _check_same_size(
    phone: Path, phone_wh: tuple[int, int], target: Path, target_wh: tuple[int, int]
) -> None:
    if tuple(phone_wh) != tuple(target_wh):
        raise QaieError(
            f"{phone}: size {phone_wh[0]}x{phone_wh[1]} differs from its partner {target} "
            f"({target_wh[0]}x{target_wh[1]}); pairs must be aligned images of one size"
        )


def _check_fits(path: Path, region: Region, crop: int | None) -> None:
    if crop is not None and min(region.height, region.width) < crop:
        raise QaieError(
            f"{path}: {region.width}x{region.height} pixels are fewer than the {crop}x{crop} crop; "
            "use a smaller --crop or remove the image"
        )


def _cut(image: np.ndarray, r: Region) -> np.ndarray:
    return image[r.top : r.top + r.height, r.left : r.left + r.width]


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float32 -> (3, H, W) contiguous tensor."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))
