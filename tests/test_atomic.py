"""Atomic outputs: a writer that fails half way leaves the old file (or none) and no temporary file.

One test per writer family, each failing the real serializer after it wrote part of the file:
text/JSON/CSV (write_text_atomic), checkpoints (save_model and Lightning's checkpoint IO),
`.tflite` + sidecar (export_tflite), report figures and pages. Images: tests/test_imageio.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qaie.atomic import atomic_path, check_writable, write_text_atomic
from qaie.config import ModelConfig
from qaie.errors import QaieError
from qaie.nn.model import EnhanceNet


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _half_then(error: BaseException):
    """A stand-in serializer that writes half a file to its target, then fails."""

    def write(obj, target, *args, **kwargs) -> None:
        with open(target, "wb") as f:
            f.write(b"half a file")
        raise error

    return write


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_atomic_path_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, error: BaseException
) -> None:
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(type(error)), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".json"
        tmp.write_text("new, but not finished")
        raise error
    assert path.read_text() == "old"
    assert _files(tmp_path) == ["out.json"]


def test_write_errors_become_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while writing a JSON/CSV output: QaieError naming it; the old file stays."""
    path = tmp_path / "metrics.csv"
    write_text_atomic(path, "epoch\n1\n")

    def disk_full(self: Path, data: bytes) -> None:
        with self.open("wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(QaieError, match=r"^.*metrics\.csv: cannot write \(No space left on device\)$"):
        write_text_atomic(path, "epoch\n1\n2\n")
    monkeypatch.undo()
    assert path.read_text() == "epoch\n1\n"
    assert _files(tmp_path) == ["metrics.csv"]


def test_rename_onto_a_folder_is_a_clean_error(tmp_path: Path) -> None:
    (tmp_path / "out.json").mkdir()
    with pytest.raises(QaieError, match=r"out\.json: cannot write \(Is a directory\)"):
        write_text_atomic(tmp_path / "out.json", "{}")
    assert _files(tmp_path) == ["out.json"]


def test_check_writable(tmp_path: Path) -> None:
    (tmp_path / "taken.json").write_text("{}")
    check_writable(tmp_path / "taken.json")  # overwriting allowed by default
    with pytest.raises(QaieError, match="output exists; pass --overwrite"):
        check_writable(tmp_path / "taken.json", overwrite=False)
    with pytest.raises(QaieError, match="is a directory"):
        check_writable(tmp_path)
    with pytest.raises(QaieError, match=r"folder .*nodir does not exist"):
        check_writable(tmp_path / "nodir" / "out.json")
    if os.geteuid() != 0:  # root may write anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(QaieError, match="is not writable"):
            check_writable(tmp_path / "ro" / "out.json")


def test_failed_checkpoint_save_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qaie.experiment.callbacks import AtomicCheckpointIO
    from qaie.quant.checkpoint import load_model, save_model

    config = ModelConfig(width=4)
    path = tmp_path / "last.ckpt"
    save_model(path, EnhanceNet(config), config)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _half_then(RuntimeError("PytorchStreamWriter failed")))
    with pytest.raises(RuntimeError):
        save_model(path, EnhanceNet(config), config)
    with pytest.raises(RuntimeError):  # what `qaie train` writes best.ckpt and last.ckpt with
        AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "best.ckpt")
    monkeypatch.undo()
    assert path.read_bytes() == before and load_model(path).config == config
    assert _files(tmp_path) == ["last.ckpt"]


def test_failed_export_leaves_no_model_and_no_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The op table is read from the written temporary file; if that fails nothing is kept."""
    from qaie.quant import export

    monkeypatch.setattr(export, "_convert", lambda graphs, int8: b"not a flatbuffer")  # skip conversion
    with pytest.raises(QaieError, match="not a TFLite model"):
        export.export_tflite(EnhanceNet(ModelConfig(width=4)), "fp32", [(32, 32)], tmp_path / "m.tflite")
    assert _files(tmp_path) == []


def test_failed_report_figure_keeps_the_old_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure

    from qaie.experiment.report import build_report

    (tmp_path / "results.json").write_text('{"fp32": {"psnr": 25.0, "ssim": 0.8}}')
    (tmp_path / "report.html").write_text("old report")
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", _half_then(OSError(28, "No space left on device"))
    )
    with pytest.raises(QaieError, match=r"quality\.png: cannot write \(No space left on device\)"):
        build_report(tmp_path)
    assert (tmp_path / "report.html").read_text() == "old report"
    assert _files(tmp_path) == ["figures", "report.html", "results.json"]
    assert _files(tmp_path / "figures") == []
