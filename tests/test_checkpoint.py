"""Checkpoints: one self-describing format; every bad file is one clear QaieError naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qaie.config import ModelConfig
from qaie.errors import QaieError
from qaie.nn.model import EnhanceNet
from qaie.quant.checkpoint import FORMAT, load_model, save_model

TINY = ModelConfig(width=4)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EnhanceNet]:
    torch.manual_seed(0)
    net = EnhanceNet(TINY).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    save_model(path, net, TINY, train_config={"note": "anything"})
    return path, net


def test_fp32_round_trip_rebuilds_from_its_own_config(fp32: tuple[Path, EnhanceNet]) -> None:
    path, net = fp32
    loaded = load_model(path)
    assert loaded.config == TINY and loaded.quant is None and loaded.path == path
    assert loaded.train_config == {"note": "anything"} and not loaded.net.training
    x = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        assert torch.equal(loaded.net(x), net(x))
    raw = torch.load(path, weights_only=True)  # plain data only: safe to load
    assert raw["format"] == FORMAT and raw["model_config"]["width"] == 4
    assert not list(path.parent.glob(".*tmp*"))


def test_ptq_graph_round_trip(tmp_path: Path) -> None:
    from qaie.quant.quantize import calibrate, convert, prepare_ptq

    torch.manual_seed(0)
    prepared = prepare_ptq(EnhanceNet(TINY), torch.rand(2, 3, 32, 32))
    calibrate(prepared, [torch.rand(4, 3, 32, 32)])
    save_model(tmp_path / "ptq.ckpt", prepared, TINY, quant="ptq")
    loaded = load_model(tmp_path / "ptq.ckpt")
    assert loaded.quant == "ptq" and isinstance(loaded.net, torch.fx.GraphModule)
    x = torch.rand(1, 3, 48, 40)  # another size than calibrated at: the graph is size-dynamic
    with torch.no_grad():
        assert torch.equal(convert(loaded.net)(x), convert(prepared)(x))


def test_another_width_than_the_flags_say(fp32: tuple[Path, EnhanceNet]) -> None:
    path, _ = fp32
    with pytest.raises(QaieError, match=r"tiny.ckpt: checkpoint is width 4 but --width 8 was given"):
        load_model(path, expect=ModelConfig(width=8))
    with pytest.raises(QaieError, match="output_residual=True but the flags give False"):
        load_model(path, expect=ModelConfig(width=4, output_residual=False))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda good: good[: len(good) // 2], "checkpoint is truncated"),
        (lambda good: b"", "checkpoint file is empty"),
        (lambda good: b"not a checkpoint at all\n" * 10, "not a checkpoint"),
        (lambda good: good[:100] + bytes(200) + good[300:], "not a qaie checkpoint, or corrupt"),
    ],
    ids=["truncated", "empty", "text", "corrupt"],
)
def test_unreadable_files(fp32: tuple[Path, EnhanceNet], tmp_path: Path, make, message: str) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(make(fp32[0].read_bytes()))
    with pytest.raises(QaieError, match=message) as info:
        load_model(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_foreign_and_inconsistent_checkpoints(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(QaieError, match="not a qaie checkpoint"):
        load_model(foreign)

    torch.manual_seed(0)
    save_model(tmp_path / "w4.ckpt", EnhanceNet(TINY), TINY)
    edited = torch.load(tmp_path / "w4.ckpt", weights_only=True)
    edited["model_config"]["width"] = 8  # header says 8, weights are width 4
    torch.save(edited, tmp_path / "edited.ckpt")
    with pytest.raises(QaieError, match="weights do not match the checkpoint's own config"):
        load_model(tmp_path / "edited.ckpt")
    edited["model_config"]["depth"] = 3
    torch.save(edited, tmp_path / "unknown.ckpt")
    with pytest.raises(QaieError, match="unknown ModelConfig keys"):
        load_model(tmp_path / "unknown.ckpt")
    with pytest.raises(QaieError, match="not found"):
        load_model(tmp_path / "missing.ckpt")
