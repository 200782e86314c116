"""The stage path in ONNX Runtime and ExecuTorch: `.onnx` and `.pte` files carry the stages of
`qaie.quant.split` and compute the whole-photo output in windows, as the `.tflite` does."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import WINDOW
from test_wholephoto import gradient_photo, psnr

from qaie.cli import main
from qaie.errors import QaieError
from qaie.imageio import read_rgb, write_image
from qaie.quant.reference import TorchStageRunner
from qaie.runtime.litert import enhance_image, plan_tiles
from qaie.runtime.registry import open_deployed
from qaie.runtime.wholephoto import enhance_whole, plan_windows

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'qaie[onnx]')")
pytest.importorskip("executorch", reason="the executorch extra is not installed")
pytestmark = pytest.mark.slow

PHOTOS = [(264, 336), (392, 520)]  # in several windows of 128x128


@pytest.fixture(scope="module")
def staged_files(quant_models, tmp_path_factory: pytest.TempPathFactory):
    """The QAT model as .onnx (stages in WINDOW windows) and .pte (one pass and stages at WINDOW),
    both without the phase form: the same int8 weights as the reference's stages (as
    `whole_photo_models`)."""
    from qaie.quant.export_executorch import export_pte
    from qaie.quant.export_onnx import export_onnx

    out = tmp_path_factory.mktemp("staged")
    paths = {"onnx": out / "qat.onnx", "pte": out / "qat.pte"}
    export_onnx(quant_models.qat, "int8", paths["onnx"], stage_windows=[WINDOW], phases=False)
    export_pte(quant_models.qat, "int8", [WINDOW], paths["pte"], phases=False)
    return paths


def staged(model, photo: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`enhance_image`'s output and its progress calls."""
    calls: list[tuple[int, int]] = []
    out = enhance_image(model, photo, progress=lambda done, total: calls.append((done, total)))
    return out, calls


def test_every_runtime_computes_the_same_whole_photo(quant_models, whole_photo_models, staged_files):
    """.onnx and .pte stages in windows against the .tflite's and the quantized reference model's
    (the checkpoint's stages, which equal its one pass bit for bit: tests/test_wholephoto.py).
    Not bit for bit: the stages carry the same int8 scales, but the runtimes' kernels round
    some ties one code apart, and this width-4 network amplifies that (as in its parity tests,
    40 dB). Two families: ONNX Runtime's integer kernels compute what LiteRT's do (66 dB, 0.05%
    of pixels more than 2 LSB apart), ExecuTorch's XNNPACK what the reference does (70 dB);
    between the families 40.6 dB. The shipped model: docs/performance.md."""
    onnx = open_deployed(staged_files["onnx"], 2)
    onnx.memory_budget = 0  # stages for every photo
    pte = open_deployed(staged_files["pte"], 2)
    litert = open_deployed(whole_photo_models["qat"], 2)
    reference = TorchStageRunner(quant_models.qat, [WINDOW])
    for seed, (h, w) in enumerate(PHOTOS):
        photo = gradient_photo(h, w, seed)
        ref = enhance_whole(reference, photo)
        outputs = {}
        for name, model in (("onnx", onnx), ("pte", pte), ("tflite", litert)):
            outputs[name], calls = staged(model, photo)
            assert calls[-1] == (_stage_calls(model, (h, w)),) * 2, name
        for name, out in outputs.items():
            for other, against in (("reference", ref), *outputs.items()):
                assert psnr(out, against) >= 40, (name, other)  # measured 40.6 dB at least
        # measured 66.1 and 69.6 dB at least; .pte vs reference 50.2 dB with ATEN_CPU_CAPABILITY=default
        for a, b in (("onnx", "tflite"), ("pte", "reference")):
            assert psnr(outputs[a], ref if b == "reference" else outputs[b]) >= 45, (a, b)


def _stage_calls(model, photo: tuple[int, int]) -> int:
    """Stage calls for a photo: six per window of the plan with the file's recorded halo."""
    plan = plan_windows(model.stages, photo)
    assert model.stages.meta["halo"] == 24
    return 6 * len(plan.rows) * len(plan.cols)


def test_onnx_chooses_stages_above_its_memory_budget(staged_files):
    """One pass while the estimate of its peak fits the budget; stages above it. The two
    compute the same function (statistics: the stages' exact ones, ONNX Runtime's float means)."""
    model = open_deployed(staged_files["onnx"], 2)
    photo = gradient_photo(*PHOTOS[0])
    need = model.one_pass_bytes(PHOTOS[0])
    model.memory_budget = need
    one_pass, calls = staged(model, photo)
    assert calls == [(1, 1)]
    model.memory_budget = need - 1
    windows, calls = staged(model, photo)
    assert calls[-1][0] == _stage_calls(model, PHOTOS[0])
    assert psnr(windows, one_pass) >= 40


def test_default_budget_runs_small_photos_in_one_pass(staged_files):
    """The default budget (1.5 GB) holds a 2 MP photo's one pass of this width-4 network, not a
    48 MP one's (the shipped width-32 network's at 2 MP already: docs/performance.md)."""
    model = open_deployed(staged_files["onnx"], 2)
    assert model.fits_one_pass((1080, 1920)) and model.stages is not None
    assert not model.fits_one_pass((6000, 8000))  # 48 MP: 4.7 GB estimated


def test_files_without_stages(staged_files, tmp_path):
    """Files exported before the stages (no `stages` in the sidecar): an .onnx runs every photo
    in one pass, a .pte tiles at its sizes; an .onnx whose stage files are gone says so."""
    for kind in ("onnx", "pte"):
        src = staged_files[kind]
        old = tmp_path / src.name
        shutil.copy(src, old)
        sidecar = json.loads(src.with_name(src.name + ".json").read_text())
        del sidecar["stages"]
        old.with_name(old.name + ".json").write_text(json.dumps(sidecar))
        model = open_deployed(old, 2)
        assert model.stages is None
        model.memory_budget = 0  # (ignored by the .pte, which has no budget)
        out, calls = staged(model, gradient_photo(*PHOTOS[0]))
        tiles = len(plan_tiles(PHOTOS[0], WINDOW).ys) * len(plan_tiles(PHOTOS[0], WINDOW).xs)
        assert out.shape == (*PHOTOS[0], 3) and calls[-1][0] == (1 if kind == "onnx" else tiles)
    src = staged_files["onnx"]
    moved = tmp_path / "moved.onnx"
    shutil.copy(src, moved)
    shutil.copy(src.with_name(src.name + ".json"), moved.with_name("moved.onnx.json"))
    with pytest.raises(QaieError, match="stage file missing"):
        open_deployed(moved, 2)


def test_cli_enhance_with_a_memory_budget(staged_files, tmp_path, capsys):
    """`qaie enhance --model F.onnx --memory-budget GB`: the stages under a tiny budget, the
    same bytes as the library; refused for a format without a budget."""
    photo_path = tmp_path / "photo.png"
    write_image(photo_path, gradient_photo(*PHOTOS[0]))
    out = tmp_path / "out.png"
    argv = ["enhance", str(photo_path), "-o", str(out), "--model", str(staged_files["onnx"])]
    assert main([*argv, "--memory-budget", "1e-9", "--threads", "2"]) in (0, None)
    model = open_deployed(staged_files["onnx"], 2)
    model.memory_budget = 1
    assert np.array_equal(read_rgb(out).pixels, staged(model, gradient_photo(*PHOTOS[0]))[0])
    pte_argv = [
        "enhance",
        str(photo_path),
        "-o",
        str(tmp_path / "b.png"),
        "--model",
        str(staged_files["pte"]),
    ]
    assert main([*pte_argv, "--memory-budget", "1"]) == 2
    assert "--memory-budget" in capsys.readouterr().err


def test_pte_stages_keep_one_method_loaded(staged_files):
    """ExecuTorch's Program caches every method it loads, each with its XNNPACK workspace; the
    stage runner drops the previous stage's, so a photo holds one stage's memory at a time."""
    pte = open_deployed(staged_files["pte"], 2)
    enhance_image(pte, gradient_photo(*PHOTOS[0], 0))
    loaded = [name for name, method in pte.stages._program._methods.items() if method is not None]
    assert loaded == [f"stage5_{WINDOW[0]}x{WINDOW[1]}"]
