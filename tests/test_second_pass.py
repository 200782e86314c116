"""Norms in two passes (qaie.nn.model.SecondPass): the same FP32 function as one pass; quantized,
the second pass's statistics on fixed ranges, computed from the int8 maps' codes like the
first's, so the staged whole-photo path is still the reference model bit for bit."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WINDOW
from test_wholephoto import gradient_photo, psnr, reference

from qaie.quant import quantize
from qaie.quant.calibrate import calibrate_checkpoint
from qaie.quant.checkpoint import load_model
from qaie.quant.export import export_tflite
from qaie.quant.reference import TorchStageRunner, reference_model
from qaie.quant.split import find_norms
from qaie.quant.tflite_ops import inspect_tflite
from qaie.runtime.codec import Codec
from qaie.runtime.litert import TFLiteModel, enhance_image
from qaie.runtime.registry import open_deployed
from qaie.runtime.wholephoto import enhance_whole, norm_statistics


@pytest.fixture(scope="module")
def two_pass(quant_models, tmp_path_factory: pytest.TempPathFactory):
    """`quant_models`' FP32 checkpoint calibrated (PTQ) with its norms in two passes, through
    the checkpoint (what `qaie quantize --norm-passes 2` does), and its FP32 network in that form."""
    out = tmp_path_factory.mktemp("two_pass") / "ptq.ckpt"
    calibrate_checkpoint(quant_models.ckpt["fp32"], "builtin", out, images=32, crop=32, norm_passes=2)
    ptq = load_model(out)
    fp32 = load_model(quant_models.ckpt["fp32"], expect=ptq.config).net
    return fp32, ptq


def test_a_second_pass_keeps_the_fp32_function(quant_models, two_pass):
    fp32, ptq = two_pass
    assert ptq.config.norm_passes == 2 and all(m.second is not None for m in _norms(fp32))
    assert all(m.second is None for m in _norms(quant_models.fp32))
    x = quant_models.crops[:8]
    with torch.no_grad():
        torch.testing.assert_close(fp32(x), quant_models.fp32(x), atol=1e-5, rtol=0)


def _norms(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for name, m in net.named_modules() if name.endswith(".norm")]


def test_the_second_pass_statistics_have_their_fixed_ranges(two_pass):
    """In float they are the constants 0 and 1, which no observer can range: fixed ones."""
    _, ptq = two_pass
    converted = quantize.convert(ptq.net)
    norms = find_norms(converted.graph, converted)
    assert len(norms) == 5 and all(n.second is not None for n in norms)
    for norm in norms:
        chain = norm.chain()["second"]
        for step, (low, high) in quantize.SECOND_PASS_RANGES.items():
            scale, zero = chain[step]
            assert scale == pytest.approx((high - low) / 255)
            assert (-128 - zero) * scale == pytest.approx(low, abs=scale)  # zero on the integer grid
        assert chain["var_eps"] == chain["var"]


def test_second_pass_statistics_follow_the_reference_chain():
    """From the map's code histogram, as the chain computed on every pixel in torch (each step
    rounded to its scale, in float64 as the histogram's chain): the same codes for the second
    pass's mean and rstd."""
    rng = np.random.default_rng(0)
    codes = rng.normal(-20, 30, (37, 53, 5)).clip(-128, 127).astype(np.int8)
    q = {"input": [0.05, -10], "mean": [0.01, 3], "centered": [0.04, 0], "square": [0.5, -128],
         "var": [0.4, -128], "var_eps": [0.4, -128], "rstd": [0.02, -128], "eps": [1e-7, -128]}  # fmt: skip
    second = {"scaled": [0.03, 2], "mean": [1 / 255, 0], "centered": [0.03, 1], "square": [0.06, -128],
              "var": [4 / 255, -128], "rstd_square": [0.01, -128], "eps_rstd": [1e-7, -128],
              "var_eps": [4 / 255, -128], "rstd": [4 / 255, -128], "eps": [1e-7, -128]}  # fmt: skip
    norm = {"eps": 1e-5, "chain": q | {"second": second}}

    def fq(t: torch.Tensor, step: list) -> torch.Tensor:  # in float64, where ties stay ties
        scale, zero = step
        return ((t * (1.0 / scale)).round() + zero).clamp(-128, 127).sub(zero).mul(scale)

    def one_pass(x: torch.Tensor, chain: dict, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mean = fq(x.mean(dim=(0, 1)), chain["mean"])
        centered = fq(x - mean, chain["centered"])
        var = fq(fq(centered * centered, chain["square"]).mean(dim=(0, 1)), chain["var"])
        rstd = fq(torch.rsqrt(fq(var + eps, chain["var_eps"])), chain["rstd"])
        return mean, rstd, centered * rstd

    x = (torch.from_numpy(codes).double() - q["input"][1]) * q["input"][0]  # (H, W, C)
    eps = torch.tensor(1e-5).double()
    _, rstd, y = one_pass(x, q, fq(eps, q["eps"]))
    eps_rstd = fq(fq(rstd * rstd, second["rstd_square"]) * fq(eps, second["eps"]), second["eps_rstd"])
    mean, rstd, _ = one_pass(fq(y, second["scaled"]), second, eps_rstd)
    got = norm_statistics(codes, Codec(np.dtype(np.int8), *q["input"]), norm)
    for name, want, step in (("mean_second", mean, "mean"), ("rstd_second", rstd, "rstd")):
        scale = second[step][0]
        np.testing.assert_array_equal(np.rint(got[name] / scale), np.rint(want.numpy() / scale))
    assert len(np.unique(got["rstd_second"])) > 1  # the channels differ: not a constant that always matches


@pytest.mark.slow
def test_two_pass_stages_are_the_reference_model_exactly(two_pass):
    """Stage by stage in windows, both passes' statistics from the int8 maps' histograms: bit for
    bit the quantized reference model on the whole photo; FP32 stages the network."""
    fp32, ptq = two_pass
    photo = gradient_photo(264, 336)
    whole = reference(reference_model(ptq.net), photo)
    assert np.array_equal(enhance_whole(TorchStageRunner(ptq.net, [WINDOW]), photo), whole)
    staged = enhance_whole(TorchStageRunner(fp32, [WINDOW]), photo)
    assert np.abs(staged.astype(int) - reference(fp32, photo)).max() <= 1  # float rounding of the statistics


@pytest.mark.slow
def test_two_pass_int8_file_is_integer_only_and_whole_photo(two_pass, tmp_path):
    _, ptq = two_pass
    path = tmp_path / "two_pass.tflite"
    export_tflite(ptq.net, "int8", [WINDOW], path, phases=False)
    ops = inspect_tflite(path)
    assert ops.float_ops == 0 and ops.quantize_ops == 0 and ops.dequantize_ops == 0
    photo = gradient_photo(336, 520)
    out = enhance_image(TFLiteModel(path, num_threads=2), photo)
    assert psnr(out, reference(reference_model(ptq.net), photo)) >= 40


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "executorch"])
def test_two_pass_stages_in_every_runtime(two_pass, tmp_path, runtime: str):
    """`qaie quantize --out F.onnx|.pte` quantizes in two passes by default: ONNX Runtime's and
    ExecuTorch's stages in windows against the reference model's whole-photo output."""
    pytest.importorskip(runtime, reason=f"the {runtime} extra is not installed")
    from qaie.quant.export_executorch import export_pte
    from qaie.quant.export_onnx import export_onnx

    _, ptq = two_pass
    path = tmp_path / ("two_pass.onnx" if runtime == "onnxruntime" else "two_pass.pte")
    if runtime == "onnxruntime":
        export_onnx(ptq.net, "int8", path, stage_windows=[WINDOW], phases=False)
    else:
        export_pte(ptq.net, "int8", [WINDOW], path, phases=False)
    model = open_deployed(path, 2)
    model.memory_budget = 0  # stages for every photo
    for seed, (h, w) in enumerate([(264, 336), (392, 520)]):
        photo = gradient_photo(h, w, seed)
        out = enhance_image(model, photo)
        # measured 74-81 dB: this trained width-4 network (a random one's ONNX stages: 37 dB)
        assert psnr(out, reference(reference_model(ptq.net), photo)) >= 60


def test_qat_saturates_a_zero_second_variance_as_int8_does(quant_models):
    """A flat channel can round var + eps x rstd^2 to 0 as well: once the ranges are fixed, QAT
    must hand rsqrt a value whose rsqrt clamps to the top of its range, as the int8 model's
    does, not 0 (inf, then 0 x inf: NaN gradients)."""
    config = dataclasses.replace(quant_models.fp32.config, norm_passes=2)
    qat = quantize.prepare_qat(
        load_model(quant_models.ckpt["fp32"], expect=config).net, quant_models.crops[:2]
    )
    quantize.freeze_observers(qat)
    rsqrts = [
        n for n in qat.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.rsqrt.default
    ]
    second = [n for n in rsqrts if quantize._in_second_pass(n)]
    assert len(second) == len(rsqrts) // 2 == 5
    for rsqrt in second:
        var_eps = getattr(qat, rsqrt.args[0].target)  # its input's fake-quant
        out = var_eps(torch.zeros(1, 4, 1, 1))
        assert torch.all(out == quantize.SATURATING_INPUT), rsqrt.name


def test_qat_starts_from_the_two_pass_ptq_ranges(quant_models, two_pass):
    """`qaie quantize` trains from PTQ's ranges: once frozen, each fake-quant computes with its
    observer's scale and zero point, and the second pass's fixed ones with theirs (a fixed var + eps
    once kept the fake-quant's initial scale 1: QAT trained on another grid than the file's)."""
    fp32, ptq = two_pass
    qat = quantize.prepare_qat(fp32, quant_models.crops[:2])
    quantize.adopt_ranges(qat, ptq.net)
    quantize.freeze_observers(qat)
    ours, theirs = quantize._watchers(qat), quantize._watchers(ptq.net)
    assert ours.keys() == theirs.keys()
    for name, fq in ours.items():
        want = getattr(theirs[name], "activation_post_process", theirs[name]).calculate_qparams()
        for got, expected in zip((fq.scale, fq.zero_point), want, strict=True):
            torch.testing.assert_close(got.reshape(-1).float(), expected.reshape(-1).float(), msg=name)


def test_norm_statistics_tool_finds_every_op_of_both_passes(two_pass):
    """`tools/norm_statistics.py` unquantizes each chosen op in every norm, the second pass's
    under their own names; a choice that matched nothing would score the model unchanged."""
    path = Path(__file__).parents[1] / "tools" / "norm_statistics.py"
    spec = importlib.util.spec_from_file_location("norm_statistics", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    fp32, ptq = two_pass
    norms = len(_norms(fp32))
    per_norm = {"mean": 2, "centered": 1, "square": 1, "eps": 1, "rsqrt": 1, "scaled": 1}
    per_norm |= {f"{kind}2": n for kind, n in per_norm.items()} | {"rstd_sq2": 1, "eps_rstd2": 1}
    counts = {kind: tool.float_norm_ops(ptq.net, kind)[1] for kind in per_norm}
    assert counts == {kind: n * norms for kind, n in per_norm.items()}
    assert tool.float_norm_ops(ptq.net, "stats2")[1] == 9 * norms
