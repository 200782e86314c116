"""Every data source on real files: pairing by name, clear errors, disjoint splits, determinism."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qaie.data.datasets import (
    BUILTIN_PHOTOS,
    DataSpec,
    PairDataset,
    builtin_region,
    make_dataset,
    parse_spec,
)
from qaie.errors import QaieError


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A textured colour image, uint8 (H, W, 3), different for each seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 90 * np.sin(xx[..., None] / (3 + seed % 5) + yy[..., None] / 4 + rng.random(3) * 6)
    return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def _save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _same(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _check_item(item: tuple[torch.Tensor, torch.Tensor], shape: tuple[int, ...] | None = None) -> None:
    x, y = item
    assert x.dtype == y.dtype == torch.float32 and x.shape == y.shape and x.shape[0] == 3
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    if shape is not None:
        assert tuple(x.shape) == shape


# --- specs --------------------------------------------------------------------------------------


def test_parse_spec_round_trips_and_infers_the_phone(tmp_path: Path) -> None:
    (tmp_path / "sony" / "training_data").mkdir(parents=True)
    for text in ["builtin", f"synthetic:{tmp_path}", f"pairs:{tmp_path}", f"dped:{tmp_path}:blackberry"]:
        assert str(parse_spec(text)) == text
        assert parse_spec(str(parse_spec(text))) == parse_spec(text)
    assert parse_spec(f"dped:{tmp_path}") == DataSpec("dped", tmp_path, "iphone")
    assert parse_spec(f"dped:{tmp_path / 'sony'}").phone == "sony"


@pytest.mark.parametrize("text", ["", "bsds", "builtin:x", "synthetic", "synthetic:", "dped"])
def test_bad_spec_syntax_is_refused_with_the_syntax(text: str) -> None:
    with pytest.raises(QaieError, match="expected builtin"):
        parse_spec(text)


def test_missing_folders_and_phones_are_refused(tmp_path: Path) -> None:
    with pytest.raises(QaieError, match=r"nowhere: data folder does not exist"):
        parse_spec(f"pairs:{tmp_path / 'nowhere'}")
    with pytest.raises(QaieError, match="unknown phone 'nokia'"):
        parse_spec(f"dped:{tmp_path}:nokia")


# --- builtin ------------------------------------------------------------------------------------


def test_builtin_regions_partition_every_photo() -> None:
    for k, (h, w) in enumerate([(512, 512), (300, 451), (640, 427), (321, 481)]):
        owner = np.zeros((h, w), np.int64)
        for split in ("train", "val", "test"):
            top, left, height, width = builtin_region(k, h, w, split)
            owner[top : top + height, left : left + width] += 1
            assert min(height, width) >= 100  # a DPED-size crop fits in every split
        assert (owner == 1).all()  # each pixel in exactly one split


def test_builtin_source_serves_all_splits() -> None:
    names = [name for name, _, _ in BUILTIN_PHOTOS]
    train = make_dataset("builtin", "train", crop=100, repeats=2)
    assert train.names == names and len(train) == 2 * len(names)
    _check_item(train[0], (3, 100, 100))
    for split in ("val", "test"):
        whole = make_dataset("builtin", split, crop=None)
        assert whole.names == names
        x, y = whole[0]
        _check_item((x, y))
        assert x.shape[1] >= 100 and x.shape[2] >= 100
        assert float((x - y).abs().mean()) > 0.01  # the synthetic camera changed the input


def test_builtin_eval_is_reproducible_and_seeded() -> None:
    a = make_dataset("builtin", "val", crop=64, seed=3)
    b = make_dataset("builtin", "val", crop=64, seed=3)
    c = make_dataset("builtin", "val", crop=64, seed=4)
    assert _same(a[1], b[1])
    assert not _same(a[1], c[1])
    assert torch.equal(a[1][1], c[1][1])  # same centre crop of the target, different camera


# --- training randomness ------------------------------------------------------------------------


def test_training_samples_depend_only_on_seed_epoch_and_index() -> None:
    ds = make_dataset("builtin", "train", crop=48, seed=1)
    first = ds[2]
    assert _same(first, make_dataset("builtin", "train", crop=48, seed=1)[2])  # a fresh process
    ds[5]  # reading other items does not move any state
    assert _same(first, ds[2])
    ds.set_epoch(1)
    later = ds[2]
    assert not torch.equal(first[1], later[1])  # another crop in another epoch
    ds.set_epoch(0)
    assert _same(first, ds[2])
    assert not _same(first, make_dataset("builtin", "train", crop=48, seed=2)[2])


def test_dataloader_workers_draw_what_direct_indexing_draws() -> None:
    ds = make_dataset("builtin", "train", crop=32, seed=5, repeats=2)
    ds.set_epoch(3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    xs = torch.cat([x for x, _ in loader])
    expected = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.equal(xs, expected)
    assert not torch.equal(xs[0], xs[len(BUILTIN_PHOTOS)])  # repeats draw different crops


# --- synthetic ----------------------------------------------------------------------------------


def test_synthetic_flat_folder_is_split_by_name(tmp_path: Path) -> None:
    for i in range(20):
        _save(tmp_path / f"img{i:02d}.{'png' if i % 2 else 'jpg'}", _photo(40, 48, i))
    (tmp_path / "notes.txt").write_text("ignored")
    splits = {s: make_dataset(f"synthetic:{tmp_path}", s, crop=None).names for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    assert sorted(itertools.chain(*splits.values())) == [f"img{i:02d}" for i in range(20)]
    train = make_dataset(f"synthetic:{tmp_path}", "train", crop=32)
    _check_item(train[0], (3, 32, 32))
    x, y = make_dataset(f"synthetic:{tmp_path}", "test", crop=None)[0]
    assert x.shape == (3, 40, 48) and float((x - y).abs().mean()) > 0.01


def test_synthetic_split_subfolders_and_too_small_images(tmp_path: Path) -> None:
    for split, n in [("train", 3), ("val", 2), ("test", 1)]:
        for i in range(n):
            _save(tmp_path / split / f"{split}{i}.png", _photo(40, 40, i))
    assert make_dataset(f"synthetic:{tmp_path}", "val", crop=None).names == ["val0", "val1"]
    with pytest.raises(QaieError, match=r"train0\.png: 40x40 pixels are fewer than the 64x64 crop"):
        make_dataset(f"synthetic:{tmp_path}", "train", crop=64)
    with pytest.raises(QaieError, match="at least 8"):
        make_dataset(f"synthetic:{tmp_path}", "train", crop=4)


def test_synthetic_too_few_or_unreadable_files(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", _photo(20, 20, 0))
    with pytest.raises(QaieError, match="too few to split"):
        make_dataset(f"synthetic:{tmp_path}", "train", crop=None)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(QaieError, match=r"broken\.jpg: not an image"):
        make_dataset(f"synthetic:{tmp_path}", "val", crop=None)
    with pytest.raises(QaieError, match=r"test: no such folder"):
        make_dataset(f"synthetic:{tmp_path}", "test", crop=None)


def test_synthetic_on_bsds500(shared_data: Path) -> None:
    spec = f"synthetic:{shared_data / 'photos' / 'bsds500'}"
    sizes = {s: len(make_dataset(spec, s, crop=None).names) for s in ("train", "val", "test")}
    assert sizes == {"train": 200, "val": 100, "test": 200}
    _check_item(make_dataset(spec, "train", crop=100, limit=2)[1], (3, 100, 100))
    x, _ = make_dataset(spec, "test", crop=None, limit=1)[0]
    assert sorted(x.shape[1:]) == [321, 481]


# --- pairs --------------------------------------------------------------------------------------


def _pairs_folder(root: Path, ids: list[int], size: tuple[int, int] = (24, 32)) -> Path:
    """input/<id>.png holds level id*5, target/<id>.bmp level id*5+2; written in shuffled order."""
    for i in np.random.default_rng(0).permutation(ids):
        _save(root / "input" / f"{i}.png", np.full((*size, 3), i * 5, np.uint8))
        _save(root / "target" / f"{i}.bmp", np.full((*size, 3), i * 5 + 2, np.uint8))
    return root


def test_pairs_are_matched_by_name_not_directory_order(tmp_path: Path) -> None:
    ids = [1, 2, 3, 10, 11, 20, 30, 31, 40, 41]  # "10" sorts before "2": numbering mismatched
    root = _pairs_folder(tmp_path, ids)
    seen = []
    for split in ("train", "val", "test"):
        ds = make_dataset(f"pairs:{root}", split, crop=None)
        for name, (x, y) in zip(ds.names, (ds[i] for i in range(len(ds))), strict=True):
            assert round(float(x[0, 0, 0]) * 255) == int(name) * 5
            assert round(float(y[0, 0, 0]) * 255) == int(name) * 5 + 2
        seen += ds.names
    assert sorted(map(int, seen)) == ids and len(set(seen)) == len(ids)  # disjoint, complete


def test_pairs_train_crops_and_flips_both_images_alike(tmp_path: Path) -> None:
    root = tmp_path / "p"
    for i in range(10):
        pixels = _photo(40, 40, i)
        _save(root / "input" / f"{i}.png", pixels)
        _save(root / "target" / f"{i}.png", 255 - pixels)
    ds = make_dataset(f"pairs:{root}", "train", crop=24, repeats=4)
    for i in range(len(ds)):
        x, y = ds[i]
        assert torch.allclose(x, 1 - y, atol=1e-6)


def test_pairs_with_split_subfolders(tmp_path: Path) -> None:
    for split, ids in [("train", [1, 2]), ("val", [3]), ("test", [4])]:
        _pairs_folder(tmp_path / split, ids)
    assert make_dataset(f"pairs:{tmp_path}", "test", crop=None).names == ["4"]
    assert make_dataset(f"pairs:{tmp_path}", "train", crop=16).names == ["1", "2"]


def test_pairs_errors_name_the_file(tmp_path: Path) -> None:
    root = _pairs_folder(tmp_path / "a", list(range(10)))
    _save(root / "input" / "99.png", np.zeros((24, 32, 3), np.uint8))
    with pytest.raises(QaieError, match=r"input/99\.png: no partner named 99\.\* in .*target"):
        make_dataset(f"pairs:{root}", "train", crop=None)

    root = _pairs_folder(tmp_path / "b", list(range(10)))
    _save(root / "target" / "7.bmp", np.zeros((24, 30, 3), np.uint8))
    with pytest.raises(
        QaieError, match=r"input/7\.png: size 32x24 differs from its partner .*7\.bmp \(30x24\)"
    ):
        for split in ("train", "val", "test"):
            make_dataset(f"pairs:{root}", split, crop=None)

    root = _pairs_folder(tmp_path / "c", list(range(10)))
    (root / "target" / "5.bmp").write_text("garbage")
    with pytest.raises(QaieError, match=r"5\.bmp: not an image"):
        for split in ("train", "val", "test"):  # whichever split holds "5" refuses it
            make_dataset(f"pairs:{root}", split, crop=None)

    root = _pairs_folder(tmp_path / "d", list(range(10)))
    _save(root / "target" / "3.png", np.zeros((24, 32, 3), np.uint8))
    with pytest.raises(QaieError, match=r"3\.(png|bmp): same name as 3\.(png|bmp)"):
        make_dataset(f"pairs:{root}", "train", crop=None)

    (tmp_path / "e" / "input").mkdir(parents=True)
    with pytest.raises(QaieError, match=r"target: no such folder"):
        make_dataset(f"pairs:{tmp_path / 'e'}", "train", crop=None)


def test_empty_split_folder_is_refused(tmp_path: Path) -> None:
    _pairs_folder(tmp_path / "train", [1, 2])
    (tmp_path / "val" / "input").mkdir(parents=True)
    (tmp_path / "val" / "target").mkdir(parents=True)
    with pytest.raises(QaieError, match="the val split is empty"):
        make_dataset(f"pairs:{tmp_path}", "val", crop=None)


@pytest.mark.parametrize("name", ["fivek-expertc", "euvp-underwater"])
def test_real_paired_folders(shared_data: Path, name: str) -> None:
    spec = f"pairs:{shared_data / 'pairs' / name}"
    names = [make_dataset(spec, s, crop=None).names for s in ("train", "val", "test")]
    assert all(names) and len(set(itertools.chain(*names))) == sum(map(len, names))
    _check_item(make_dataset(spec, "train", crop=100, limit=1)[0], (3, 100, 100))
    _check_item(make_dataset(spec, "val", crop=None)[0])


# --- DPED ---------------------------------------------------------------------------------------


def _fake_dped(root: Path, n_train: int = 50, n_test: int = 4, size: int = 32) -> Path:
    """root/iphone/{training_data,test_data/patches}/{iphone,canon}/N.jpg, shuffled order."""
    for folder, n in [("training_data", n_train), ("test_data/patches", n_test)]:
        for i in np.random.default_rng(1).permutation(n):
            photo = _photo(size, size, int(i))
            _save(root / "iphone" / folder / "iphone" / f"{i}.jpg", photo // 2)
            _save(root / "iphone" / folder / "canon" / f"{i}.jpg", photo)
    return root


def test_dped_layout_and_splits(tmp_path: Path) -> None:
    root = _fake_dped(tmp_path / "dped")
    train = make_dataset(f"dped:{root}", "train", crop=32)
    val = make_dataset(f"dped:{root}", "val", crop=None)
    test = make_dataset(f"dped:{root / 'iphone'}", "test", crop=None)
    assert (len(train), len(val), len(test)) == (49, 1, 4)
    assert not set(train.names) & set(val.names)
    assert test.names == ["0", "1", "2", "3"]
    x, y = test[2]  # the phone half as bright as its DSLR partner of the same number
    _check_item((x, y), (3, 32, 32))
    assert abs(float(x.mean()) - float(y.mean()) / 2) < 0.02
    assert isinstance(train, PairDataset) and train._cache is None  # DPED is never cached


def test_dped_errors(tmp_path: Path) -> None:
    root = _fake_dped(tmp_path / "dped", n_train=10)
    with pytest.raises(QaieError, match=r"sony.*no such folder|no such folder.*sony"):
        make_dataset(f"dped:{root}:sony", "train", crop=None)
    (root / "iphone" / "test_data" / "patches" / "canon" / "3.jpg").unlink()
    with pytest.raises(QaieError, match=r"iphone/3\.jpg: no partner"):
        make_dataset(f"dped:{root}", "test", crop=None)
    # Sizes are checked lazily for DPED (160k files): on load, naming the file.
    _save(root / "iphone" / "training_data" / "canon" / "4.jpg", _photo(30, 32, 4))
    ds = make_dataset(f"dped:{root}", "train", crop=None)
    with pytest.raises(QaieError, match=r"iphone/4\.jpg: size 32x32 differs"):
        for i in range(len(ds)):
            ds[i]
