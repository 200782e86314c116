"""Label-free QAT and `qaie quantize`: a trained FP32 model and unlabelled photos -> an INT8
file, with the FP32 model's own outputs as the targets (never the photos themselves)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torchao.quantization.pt2e import FixedQParamsFakeQuantize

from qaie.cli import main
from qaie.config import ModelConfig
from qaie.data.datasets import VAL_SEED, make_dataset
from qaie.errors import QaieError
from qaie.experiment.quantize_photos import QuantizeConfig
from qaie.experiment.train import EnhanceModule, TrainConfig, initial_net
from qaie.nn.model import EnhanceNet
from qaie.quant import quantize
from qaie.quant.calibrate import calibrate_checkpoint
from qaie.quant.checkpoint import load_model
from qaie.quant.tflite_ops import inspect_tflite

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "immunohistochemistry")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven real photos that scikit-image ships, as JPEG files (grey ones as RGB)."""
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        pixels = getattr(skimage.data, name)()
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        Image.fromarray(pixels[..., :3]).save(folder / f"{name}.jpg", quality=92)
    return folder


def test_photos_are_never_their_own_target(photo_folder: Path, capsys) -> None:
    """photos: data returns the input where a target would be: FP32 training on it is refused,
    QAT on it needs the FP32 model whose outputs become the targets."""
    with pytest.raises(QaieError, match="its own input"):
        TrainConfig(data=f"photos:{photo_folder}", epochs=1)
    with pytest.raises(QaieError, match="--init"):
        TrainConfig(data=f"photos:{photo_folder}", epochs=1, qat=True)
    config = TrainConfig(data=f"photos:{photo_folder}", epochs=1, qat=True, init="fp32.ckpt")
    assert config.teacher == "fp32.ckpt"  # label-free QAT: the teacher defaults to --init
    assert main(["train", "--data", f"photos:{photo_folder}", "--out", "unused", "--epochs", "1"]) == 2
    assert "its own input" in capsys.readouterr().err


def test_label_free_targets_are_the_teachers_output(quant_models, photo_folder: Path) -> None:
    fp32 = str(quant_models.ckpt["fp32"])
    config = TrainConfig(data=f"photos:{photo_folder}", epochs=1, qat=True, init=fp32, crop=64)
    module = EnhanceModule(torch.nn.Identity(), ModelConfig(width=4), config)
    x = torch.rand(2, 3, 64, 64)
    inputs, targets = module.targets((x, x))  # what a photos: batch holds
    teacher = load_model(fp32).net.eval()
    with torch.no_grad():
        assert torch.equal(targets, teacher(x)) and not torch.equal(targets, x)
    assert inputs is x


@pytest.mark.parametrize("flag, passes", [([], 2), (["--norm-passes", "1"], 1)], ids=["default", "one-pass"])
def test_quantize_end_to_end(
    quant_models, photo_folder: Path, tmp_path: Path, capsys, flag: list[str], passes: int
) -> None:
    """PTQ, one epoch of label-free QAT, export, and the file's fidelity to FP32 on held-out photos
    (two windows of each: `--crops 2`); the norms in two passes by default, or one (`--norm-passes 1`)."""
    out, report = tmp_path / "m.tflite", tmp_path / "m.json"
    args = ["quantize", str(quant_models.ckpt["fp32"]), "--photos", str(photo_folder), "--size", "128x128"]
    args += [
        "--out",
        str(out),
        "--qat-epochs",
        "1",
        "--crops",
        "2",
        "--shrink",
        "2",
        "--json",
        str(report),
        *flag,
    ]  # frames of 128x128 pooled to 64x64
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "fidelity to FP32 on 2 held-out windows" in printed
    result = json.loads(report.read_text())
    assert result["test_photos"] == 1 and result["test_windows"] == 2 and result["norm_passes"] == passes
    validation = result["validation_psnr"]  # QAT's best epoch is used only if it beats PTQ there
    assert validation.keys() == {"ptq", "qat"} and "chosen on the validation photos" in printed
    chosen = "qat/best.ckpt" if validation["qat"] > validation["ptq"] else "ptq.ckpt"
    assert result["checkpoint"] == str(tmp_path / "m.tflite.work" / chosen)
    assert result["fidelity_psnr"] > 20 and result["ptq_fidelity_psnr"] > 20  # a width-4 network
    # parity of a width-4 network after one epoch on 5 photos: 41.2 dB under ATEN_CPU_CAPABILITY=
    # default, above 45 with AVX-512 (its QAT weights differ); trained networks reach 45+
    assert result["parity_max_abs_lsb"] == 0 or result["parity_psnr"] >= 35
    assert inspect_tflite(out).float_ops == 0
    saved = torch.load(tmp_path / "m.tflite.work/qat/best.ckpt", weights_only=False)["state_dict"]
    assert not any(key.startswith("teacher") for key in saved)  # the teacher stays its own file


def test_patches_many_fixed_windows_per_photo(photo_folder: Path, tmp_path: Path, capsys) -> None:
    """`--crops N`: held-out photos give N windows each, at places that stay put (patch fidelity
    needs many patches of few photos); one crop is the centre one. (`qaie quantize --crops` runs
    in test_quantize_end_to_end.)"""
    data = f"photos:{photo_folder}"
    windows = make_dataset(data, "test", crop=(64, 64), seed=VAL_SEED, repeats=4, held_out=True)
    again = make_dataset(data, "test", crop=(64, 64), seed=VAL_SEED, repeats=4, held_out=True)
    again.set_epoch(3)  # held-out windows do not move with the epoch
    crops = [windows[i][0] for i in range(len(windows))]
    assert len(crops) == 4 and all(torch.equal(a, again[i][0]) for i, a in enumerate(crops))
    assert len({c.sum().item() for c in crops}) == 4  # four different places
    photo = torch.from_numpy(np.array(Image.open(windows.paths[0]).convert("RGB"))).permute(2, 0, 1)
    (h, w), centre = photo.shape[1:], make_dataset(data, "test", crop=(64, 64), held_out=True)[0][0]
    assert torch.equal(
        centre, photo[:, (h - 64) // 2 : (h - 64) // 2 + 64, (w - 64) // 2 : (w - 64) // 2 + 64] / 255
    )

    args = ["quantize", "f.ckpt", "--photos", str(photo_folder), "--size", "64x64"]
    assert main([*args, "--crops", "0", "--out", str(tmp_path / "p.tflite")]) == 2
    assert "--crops must be >= 1" in capsys.readouterr().err
    # QAT pools whole frames 2x by default, patches not at all
    frames = {"checkpoint": Path("f.ckpt"), "photos": photo_folder, "out": Path("m.tflite"), "work": tmp_path}
    assert QuantizeConfig(size=(1920, 1080), **frames).shrink == 2
    assert QuantizeConfig(size=(100, 100), crops=64, **frames).shrink == 1


def test_qat_starts_from_ptq_ranges() -> None:
    """Label-free QAT trains on the ranges PTQ's observers set (the study's policy), not on
    QAT's own moving averages: every fake-quant takes the scale of the observer of its tensor."""
    torch.manual_seed(0)
    net = EnhanceNet(ModelConfig(width=4)).eval()
    frames = [torch.rand(2, 3, 64, 64) for _ in range(3)]
    observed = quantize.prepare_ptq(net, frames[0])
    quantize.calibrate(observed, frames)
    fake_quant = quantize.prepare_qat(net, frames[0])
    quantize.adopt_ranges(fake_quant, observed)
    watched, observers = quantize._watchers(fake_quant), quantize._watchers(observed)
    assert watched.keys() == observers.keys()
    adopted = 0
    for node, fq in watched.items():
        observer = observers[node]
        if isinstance(fq, FixedQParamsFakeQuantize):
            continue
        scale, zero_point = observer.calculate_qparams()
        assert torch.equal(fq.scale, scale) and torch.equal(fq.zero_point, zero_point.to(fq.zero_point)), node
        adopted += 1
    assert adopted > 50  # every activation and weight of the network, not a few


def test_qat_keeps_a_ptq_checkpoints_ranges(quant_models, photo_folder: Path, tmp_path: Path) -> None:
    """--ranges PTQ.ckpt (what `qaie quantize` passes): the fake-quant takes that checkpoint's
    weights (qaie quantize's are equalized, not --init's) and its scales, and keeps the scales;
    so does a QAT checkpoint; an FP32 one is refused."""
    ckpt = quant_models.ckpt
    config = TrainConfig(
        data=f"photos:{photo_folder}",
        epochs=1,
        qat=True,
        init=str(ckpt["fp32"]),
        crop=32,
        ranges=str(ckpt["ptq"]),
    )
    assert config.freeze_observers_after == 0
    net = initial_net(ModelConfig(width=4), config)
    observers = quantize._watchers(load_model(ckpt["ptq"]).net)
    learned = 0
    for node, fq in quantize._watchers(net).items():
        if isinstance(fq, FixedQParamsFakeQuantize):
            continue
        scale, _ = observers[node].calculate_qparams()
        assert torch.equal(fq.scale, scale) and not fq.observer_enabled[0], node
        learned += 1
    assert learned > 50
    ptq_weights = load_model(ckpt["ptq"]).net.state_dict()
    init_weights = load_model(ckpt["fp32"]).net.state_dict()
    changed = dict(ptq_weights) | {"enc2.conv_a.weight": ptq_weights["enc2.conv_a.weight"] * 2}
    ptq_file = tmp_path / "ptq.ckpt"
    torch.save(torch.load(ckpt["ptq"], weights_only=True) | {"state_dict": changed}, ptq_file)
    net = initial_net(ModelConfig(width=4), dataclasses.replace(config, ranges=str(ptq_file)))
    assert torch.equal(net.state_dict()["enc2.conv_a.weight"], changed["enc2.conv_a.weight"])
    assert not torch.equal(net.state_dict()["enc2.conv_a.weight"], init_weights["enc2.conv_a.weight"])
    # a QAT checkpoint continues with its own weights and scales (a fine-tune with another
    # objective, e.g. distillation from --teacher); an FP32 one has no ranges
    net = initial_net(ModelConfig(width=4), dataclasses.replace(config, ranges=str(ckpt["qat"])))
    qat = load_model(ckpt["qat"]).net
    trained = quantize._watchers(qat)
    for node, fq in quantize._watchers(net).items():
        assert torch.equal(fq.scale, trained[node].scale) and not fq.observer_enabled[0], node
    assert torch.equal(net.state_dict()["enc2.conv_a.weight"], qat.state_dict()["enc2.conv_a.weight"])
    with pytest.raises(QaieError, match="needs a PTQ or QAT checkpoint"):
        initial_net(ModelConfig(width=4), dataclasses.replace(config, ranges=str(ckpt["fp32"])))
    with pytest.raises(QaieError, match="pass one"):
        dataclasses.replace(config, calibrate_size="64x64")


def test_learned_ranges_move_and_reach_the_converted_graph(
    quant_models, photo_folder: Path, tmp_path: Path, capsys
) -> None:
    """--learn-ranges: from PTQ's frozen ranges, one epoch moves the scales of the ordinary
    activations only; the checkpoint's observers give those scales back, so the converted
    graph (what the converter writes into the file) quantizes at them."""
    ckpt = quant_models.ckpt
    with pytest.raises(QaieError, match="--ranges CKPT or --calibrate-size"):
        TrainConfig(data=f"photos:{photo_folder}", epochs=1, qat=True, init="f.ckpt", learn_ranges=1e-3)
    with pytest.raises(QaieError, match="learning rate > 0"):
        TrainConfig(
            data=f"photos:{photo_folder}",
            epochs=1,
            qat=True,
            init="f.ckpt",
            ranges="p.ckpt",
            learn_ranges=0.0,
        )
    out = tmp_path / "run"
    args = ["train", "--data", f"photos:{photo_folder}", "--width", "4", "--qat", "--init", str(ckpt["fp32"])]
    args += ["--ranges", str(ckpt["ptq"]), "--learn-ranges", "1e-2", "--epochs", "1", "--batch-size", "2"]
    args += ["--crop", "64x64", "--val-crop", "64x64", "--lr", "1e-5", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    ptq, learned = load_model(ckpt["ptq"]).net, load_model(out / "last.ckpt").net
    before, after = quantize._watchers(ptq), quantize._watchers(learned)
    moved, kept = set(), set()
    for node, fq in after.items():
        if isinstance(fq, FixedQParamsFakeQuantize) or fq.scale.numel() > 1:
            continue  # fixed grids; per-channel weights
        scale, zero_point = fq.activation_post_process.calculate_qparams()
        assert torch.allclose(scale, fq.scale, rtol=1e-6) and torch.equal(zero_point, fq.zero_point), node
        old, _ = before[node].calculate_qparams()
        (moved if not torch.allclose(old, scale, rtol=1e-6) else kept).add(node)
    assert len(moved) > 30  # the ordinary activations
    assert kept and not any(n.startswith(("mean", "rsqrt", "sub")) for n in moved)  # the norms' chain
    converted = quantize.convert(learned)
    used = torch.tensor(
        [float(n.args[1]) for n in converted.graph.nodes if "quantize_per_tensor" in str(n.target)]
    )
    for node in moved:
        assert (used / after[node].scale - 1).abs().min() < 1e-6, node


def test_train_takes_the_norm_form_of_its_ranges(
    quant_models, photo_folder: Path, tmp_path: Path, capsys
) -> None:
    """`qaie train --qat --ranges` of a two-pass PTQ checkpoint (`qaie quantize`'s ptq.ckpt)
    trains the two-pass network (it was refused: the flags' form was always one pass);
    --norm-passes 1 against it is a one-line error."""
    ptq = tmp_path / "ptq2.ckpt"
    calibrate_checkpoint(quant_models.ckpt["fp32"], "builtin", ptq, images=8, crop=32, norm_passes=2)
    args = ["train", "--data", f"photos:{photo_folder}", "--width", "4", "--qat", "--init"]
    args += [str(quant_models.ckpt["fp32"]), "--ranges", str(ptq), "--epochs", "1", "--batch-size", "2"]
    args += ["--crop", "64x64", "--val-crop", "64x64", "--lr", "1e-5"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    assert load_model(tmp_path / "run" / "last.ckpt").config.norm_passes == 2
    capsys.readouterr()
    assert main([*args, "--norm-passes", "1", "--out", str(tmp_path / "one")]) == 2
    assert capsys.readouterr().err.strip().endswith("norm_passes=2 but the flags give 1")


def test_frames_only_for_photos(photo_folder: Path) -> None:
    """An HxW training crop is a frame of photos: data; shrinking may not go below the network's minimum."""
    with pytest.raises(QaieError, match="photos: data only"):
        TrainConfig(data="builtin", epochs=1, crop=(64, 96))
    with pytest.raises(QaieError, match="--shrink 16"):
        TrainConfig(
            data=f"photos:{photo_folder}", epochs=1, qat=True, init="f.ckpt", crop=(64, 96), shrink=16
        )
    config = TrainConfig.from_dict(
        {"data": f"photos:{photo_folder}", "epochs": 1, "qat": True, "init": "f.ckpt", "crop": [64, 96]}
    )
    assert config.crop == (64, 96) and config.crop_size == (64, 96)  # as config.json gives it back
