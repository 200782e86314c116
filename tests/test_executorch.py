"""ExecuTorch (.pte, XNNPACK) export and runner: the same quantized graph, its scales, delegated.

Skipped where the executorch extra is not installed; the `dev` extra (what CI installs) includes it.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import QUANT_SIZES
from test_wholephoto import gradient_photo, psnr, reference

from qaie.cli import main
from qaie.errors import QaieError

pytest.importorskip(
    "executorch.runtime", reason="the executorch extra is not installed (pip install 'qaie[executorch]')"
)

INT8_PARITY_DB = 40.0  # as for .tflite and .onnx (tests/test_parity.py): a width-4 network
FP32_PARITY_DB = 55.0


@pytest.fixture(scope="module")
def pte_files(quant_models, tmp_path_factory: pytest.TempPathFactory):
    from qaie.quant.export_executorch import export_pte

    out = tmp_path_factory.mktemp("pte")
    paths = {"qat": out / "qat.pte", "fp32": out / "fp32.pte"}
    export_pte(quant_models.qat, "int8", QUANT_SIZES[:1], paths["qat"], source_checkpoint="qat.ckpt")
    export_pte(quant_models.fp32, "fp32", QUANT_SIZES[:1], paths["fp32"], source_checkpoint="fp32.ckpt")
    return paths


def test_int8_convolutions_are_delegated(pte_files):
    """In phase form (the default) every op is delegated: XNNPACK takes no upsample, which the
    phase form and the up1 + head fold remove."""
    from qaie.quant.export_executorch import inspect_pte
    from qaie.runtime.litert import read_sidecar

    table = inspect_pte(pte_files["qat"])
    assert table.delegate_calls >= 1
    assert not table.kernels, table.kernels
    assert read_sidecar(pte_files["qat"])["phases"] is True


def test_sidecar_names_each_methods_planned_memory(pte_files):
    """The memory ExecuTorch allocates for a whole program is its largest method's planned
    buffers: the sidecar gives each; the one pass holds at least one float image (its input and
    output may share planned memory: in phase form it reads 76,352 bytes at 64x64, one image
    and 27,200)."""
    from qaie.runtime.litert import read_sidecar

    sidecar = read_sidecar(pte_files["qat"])
    planned = sidecar["planned_bytes"]
    assert sorted(planned) == sorted(sidecar["methods"])
    h, w = QUANT_SIZES[0]
    assert planned[f"enhance_{h}x{w}"] >= 3 * h * w * 4
    assert all(size > 0 for size in planned.values())


def test_parity(quant_models, pte_files):
    from qaie.experiment.parity import run_parity

    int8 = run_parity(quant_models.ckpt["qat"], pte_files["qat"], "builtin", limit=3)
    fp32 = run_parity(quant_models.ckpt["fp32"], pte_files["fp32"], "builtin", limit=3)
    assert int8.overall.psnr >= INT8_PARITY_DB and fp32.overall.psnr >= FP32_PARITY_DB


class ReferenceTiles:
    """The quantized reference model in PyTorch on each tile of the .pte's size, as a
    `TileModel`: what `qaie enhance` with that file computes (no stages: tiles normalised alone)."""

    sizes = (QUANT_SIZES[0],)
    stages = None

    def __init__(self, net) -> None:
        self.net = net

    def run(self, tile: np.ndarray) -> np.ndarray:
        return reference(self.net, tile)


def test_cli_enhance_and_inspect(quant_models, pte_files, tmp_path, capsys):
    """A 100x132 photo in 64x64 tiles: the written pixels are the reference model's, tile by tile."""
    from PIL import Image

    from qaie.quant.reference import reference_model
    from qaie.runtime.litert import enhance_image

    pixels = gradient_photo(100, 132)
    Image.fromarray(pixels).save(tmp_path / "p.png")
    argv = [
        "enhance",
        str(tmp_path / "p.png"),
        "-o",
        str(tmp_path / "e.png"),
        "--model",
        str(pte_files["qat"]),
    ]
    assert main(argv) == 0
    enhanced = np.asarray(Image.open(tmp_path / "e.png"))
    expected = enhance_image(ReferenceTiles(reference_model(quant_models.qat)), pixels)
    assert psnr(enhanced, expected) >= INT8_PARITY_DB
    assert main(["inspect", str(pte_files["qat"])]) in (0, None)
    assert "XNNPACK delegate calls" in capsys.readouterr().out


def test_missing_extra_is_one_line(pte_files, monkeypatch):
    from qaie.quant.export_executorch import PteModel

    monkeypatch.setitem(sys.modules, "executorch.runtime", None)
    with pytest.raises(QaieError, match=r"pip install 'qaie\[executorch\]'"):
        PteModel(pte_files["qat"])


def test_cli_bench_times_a_pte_like_the_other_formats(pte_files, capsys):
    """`qaie bench F.pte`: each exported size and a larger, tiled frame, in fresh processes."""
    import json

    argv = ["bench", str(pte_files["qat"]), "--size", "64x64,64x128", "--runs", "2", "--warmup", "1"]
    assert main([*argv, "--json"]) in (0, None)
    report = json.loads(capsys.readouterr().out)
    assert report["int8"] is True and report["file_bytes"] == pte_files["qat"].stat().st_size
    rows = {r["size"]: r for r in report["rows"]}
    assert (rows["64x64"]["mode"], rows["64x64"]["tiles"]) == ("direct", 1)
    assert rows["64x128"]["mode"] == "tiled" and rows["64x128"]["tiles"] >= 2
    assert all(0 < r["min_ms"] <= r["median_ms"] and r["peak_rss_mb"] > 0 for r in rows.values())
