"""ONNX (QDQ) export and the ONNX Runtime runner: the same quantized graph, its scales, any size."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from test_wholephoto import gradient_photo, psnr, reference

from qaie.cli import main
from qaie.errors import QaieError
from qaie.quant import quantize

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'qaie[onnx]')")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install 'qaie[onnx]')")

# As for the .tflite files (tests/test_parity.py): this width-4 network amplifies the rare
# rounding near-ties of the integer kernels; the shipped model measures 49.1 dB (README).
INT8_PARITY_DB = 40.0
FP32_PARITY_DB = 55.0
FLOAT_IN_ORT = {"Tanh", "ReduceMean", "Sub", "Sqrt", "Reciprocal", "QuantizeLinear", "DequantizeLinear"}


@pytest.fixture(scope="module")
def onnx_files(quant_models, tmp_path_factory: pytest.TempPathFactory):
    """The QAT model exported INT8 by the library, the FP32 one by `qaie export` (the exports
    are the slow part of these tests: two, shared)."""
    from qaie.quant.export_onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    paths = {"qat": out / "qat.onnx", "fp32": out / "fp32.onnx"}
    export_onnx(quant_models.qat, "int8", paths["qat"], source_checkpoint=str(quant_models.ckpt["qat"]))
    argv = ["export", str(quant_models.ckpt["fp32"]), "--format", "fp32", "--out", str(paths["fp32"])]
    assert main(argv) in (0, None)
    return paths


def test_int8_file_is_qdq_with_the_trained_scales(onnx_files):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_files["qat"]))
    assert model.opset_import[0].version >= 18
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim[2:]] == ["height", "width"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    producer = {o: n for n in model.graph.node for o in n.output}
    for conv in convs:  # weights stored as integers behind a DequantizeLinear, biases int32
        weight = producer[conv.input[1]]
        assert weight.op_type == "DequantizeLinear" and inits[weight.input[0]].dtype == np.uint8
        if len(conv.input) > 2:
            assert inits[producer[conv.input[2]].input[0]].dtype == np.int32
    sidecar = json.loads(onnx_files["qat"].with_name("qat.onnx.json").read_text())
    assert sidecar["quant"] == "qat" and sidecar["io"]["scale"] == quantize.IO_SCALE
    assert sidecar["io"]["zero_point"] == 0 and sidecar["dynamic_size"]


def test_int8_runs_integer_kernels(onnx_files):
    """Every convolution, add, multiply, concatenation and LeakyReLU runs as an integer
    kernel; in float: tanh and the instance norms' statistics (ONNX Runtime has no integer
    kernels for them), between a DequantizeLinear and a QuantizeLinear."""
    from qaie.runtime.onnxrt import inspect_onnx

    table = inspect_onnx(onnx_files["qat"])
    ran = {r.op for r in table.kernels}
    assert "QLinearConv" in ran and "Conv" not in ran
    assert {r.op for r in table.kernels if r.is_float} <= FLOAT_IN_ORT
    convs = sum(r.count for r in table.kernels if r.op == "QLinearConv")
    assert convs == table.file_ops["Conv"]


def test_parity(quant_models, onnx_files):
    """`qaie parity`: each builtin validation image whole, at its own size (no fitting)."""
    from qaie.experiment.parity import run_parity

    int8 = run_parity(quant_models.ckpt["qat"], onnx_files["qat"], "builtin", limit=3)
    fp32 = run_parity(quant_models.ckpt["fp32"], onnx_files["fp32"], "builtin", limit=3)
    assert list(int8.per_size) == ["whole"] and int8.overall.psnr >= INT8_PARITY_DB
    assert fp32.overall.psnr >= FP32_PARITY_DB


def test_whole_photo_any_size_matches_tile_none(quant_models, onnx_files):
    """One pass over a photo of any size, off the S/8 grid too: the network on that exact
    photo, which is what `qaie enhance --model CKPT --tile none` computes."""
    from qaie.runtime.litert import enhance_image
    from qaie.runtime.registry import open_deployed

    model = open_deployed(onnx_files["qat"], 2)
    assert model.sizes is None and model.stages is not None and model.fits_one_pass((203, 261))
    ref = quantize.convert(quant_models.qat)
    for h, w in ((200, 264), (203, 261)):
        photo = gradient_photo(h, w)
        out = enhance_image(model, photo)
        assert out.shape == photo.shape and psnr(out, reference(ref, photo)) >= INT8_PARITY_DB
    fp32 = open_deployed(onnx_files["fp32"], 2)
    photo = gradient_photo(203, 261)
    assert psnr(enhance_image(fp32, photo), reference(quant_models.fp32, photo)) >= FP32_PARITY_DB


def test_cli_enhance_evaluate_bench_inspect(quant_models, onnx_files, tmp_path, capsys):
    """Each command's numbers, not only its exit status: the enhanced photo against the quantized
    reference, evaluate's PSNR against the checkpoint's, its fidelity to the checkpoint."""
    from PIL import Image

    from qaie.data.datasets import VAL_SEED, make_dataset
    from qaie.experiment.evaluate import evaluate
    from qaie.quant.predict import checkpoint_predictor

    out, ckpt = onnx_files["qat"], quant_models.ckpt["qat"]
    pixels = gradient_photo(100, 132)
    Image.fromarray(pixels).save(tmp_path / "p.png")
    assert main(["enhance", str(tmp_path / "p.png"), "-o", str(tmp_path / "e.png"), "--model", str(out)]) == 0
    enhanced = np.asarray(Image.open(tmp_path / "e.png"))
    assert psnr(enhanced, reference(quantize.convert(quant_models.qat), pixels)) >= INT8_PARITY_DB

    data = ["--data", "builtin", "--limit", "2"]
    assert main(["evaluate", str(out), *data, "--json", str(tmp_path / "ev.json")]) in (0, None)
    file = json.loads((tmp_path / "ev.json").read_text())
    test = make_dataset("builtin", "test", crop=None, seed=VAL_SEED, limit=2)
    torch_ref = evaluate(checkpoint_predictor(ckpt), test, model="qat", data="builtin", split="test")
    assert file["n_images"] == 2 and file["input_psnr"] == pytest.approx(torch_ref.input_psnr)
    assert file["psnr"] == pytest.approx(torch_ref.psnr, abs=0.05)  # 40+ dB apart: the same quality
    assert file["psnr"] > file["input_psnr"]  # the trained network enhances
    argv = ["evaluate", str(out), *data, "--reference", str(ckpt), "--json", str(tmp_path / "fid.json")]
    assert main(argv) in (0, None)
    assert json.loads((tmp_path / "fid.json").read_text())["psnr"] >= INT8_PARITY_DB
    capsys.readouterr()
    assert main(["bench", str(out), "--size", "64x64", "--runs", "1", "--warmup", "0", "--json"]) in (0, None)
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["mode"] == "direct" and row["tiles"] == 1
    assert main(["inspect", str(out)]) in (0, None)
    assert "QLinearConv" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "x.onnx", "--size", "64x64"], "an .onnx file takes any size"),
        (["--out", "x.bin"], "must end in .tflite, .onnx, .pte"),
        (["--out", "x.onnx", "--runtime", "litert"], "a .onnx file is for onnx, not --runtime litert"),
        (["--out", "x.pte"], "--size is required for a .pte file"),
    ],
)
def test_export_errors(quant_models, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(quant_models.ckpt["qat"]), "--format", "int8", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_missing_extra_is_one_line(onnx_files, monkeypatch):
    from qaie.runtime.onnxrt import OnnxModel

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(QaieError, match=r"pip install 'qaie\[onnx\]'"):
        OnnxModel(onnx_files["qat"])


def test_ptq_export_of_an_fp32_checkpoint(quant_models, tmp_path, capsys):
    """`qaie export FP32.ckpt --format int8 --calibrate SPEC` to .onnx: PTQ first, then QDQ."""
    out = tmp_path / "ptq.onnx"
    argv = ["export", str(quant_models.ckpt["fp32"]), "--format", "int8", "--out", str(out)]
    assert main([*argv, "--calibrate", "builtin", "--calibrate-images", "2", "--calibrate-crop", "32"]) in (
        0,
        None,
    )
    assert "int8 (ptq)" in capsys.readouterr().out
    assert json.loads(out.with_name("ptq.onnx.json").read_text())["quant"] == "ptq"
