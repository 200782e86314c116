"""Shared fixtures. Real data under ../shared/data is optional: tests that need it skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("QAIE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $QAIE_SHARED_DATA); skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA} (set QAIE_SHARED_DATA to use it)")
    return SHARED_DATA


# --- tiny exported models for the runtime, enhance and bench tests -------------------------------

TINY_TILE = (96, 96)  # a tile size
TINY_WHOLE = (192, 256)  # big enough to run a whole test image: the reference for tiling


@pytest.fixture(scope="session")
def tiny_net():  # -> qaie.nn.model.EnhanceNet (torch imported lazily)
    """A width-4 EnhanceNet made to behave like a trained one for the tiling tests.

    Its InstanceNorm scales are zeroed so the network is local (no per-image statistics): a
    tiled run must then reproduce the whole-image run away from tile borders, which isolates
    the tiling code. The head is scaled down so the output is a mild correction of the input
    (about 10/255 on average), like a trained model's rather than a random network's noise.
    """
    import torch

    from qaie.config import ModelConfig
    from qaie.nn.model import EnhanceNet, InstanceNorm

    torch.manual_seed(0)
    net = EnhanceNet(ModelConfig(width=4)).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, InstanceNorm):
                module.weight.zero_()
        net.head.weight *= 0.05
        net.head.bias *= 0.05
    return net


@pytest.fixture(scope="session")
def tiny_tflite(tiny_net, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_net` exported FP32 with signatures `enhance_96x96` and `enhance_192x256`."""
    from qaie.quant.checkpoint import save_model
    from qaie.quant.export import export_tflite

    path = tmp_path_factory.mktemp("tiny") / "tiny_fp32.tflite"
    export_tflite(tiny_net, "fp32", [TINY_TILE, TINY_WHOLE], path, stages=False)  # tiles (test_runtime)
    save_model(path.with_suffix(".ckpt"), tiny_net, tiny_net.config)  # for tiny_checkpoint
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_tflite: Path) -> Path:
    """The FP32 checkpoint of `tiny_tflite`'s network (same weights)."""
    return tiny_tflite.with_suffix(".ckpt")


@pytest.fixture(scope="session")
def one_pass(tiny_checkpoint: Path):  # -> Callable[[np.ndarray, Size], np.ndarray]
    """`tiny_net` in PyTorch, one pass over a photo reflect-padded to `padded` (H, W) and cropped
    back: what padding and tiling a `tiny_tflite` must reproduce (the network is local)."""
    import numpy as np

    from qaie.quant.predict import CheckpointModel

    net = CheckpointModel(tiny_checkpoint, window=None)

    def run(image: np.ndarray, padded: tuple[int, int]) -> np.ndarray:
        h, w = image.shape[:2]
        pad = ((0, padded[0] - h), (0, padded[1] - w), (0, 0))
        return net.run(np.pad(image, pad, mode="reflect"))[:h, :w]

    return run


@pytest.fixture(scope="session", params=["int8", "uint8"])
def tiny_int8_tflite(request, tiny_net, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_net` exported integer-only INT8 (PTQ on crops of a real photo) at the same sizes,
    with int8 I/O (zero point -128) or uint8 I/O (zero point 0, as shipped)."""
    import skimage.data
    import torch

    from qaie.quant.export import export_tflite

    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 255  # (3, 512, 512)
    crops = [photo[:, y : y + 96, x : x + 96] for y in (0, 200, 400) for x in (0, 200, 400)]
    path = tmp_path_factory.mktemp("tiny") / f"tiny_int8_{request.param}_io.tflite"
    export_tflite(
        tiny_net, "int8", [TINY_TILE, TINY_WHOLE], path, uint8_io=request.param == "uint8",
        calibration=[torch.stack(crops)], stages=False,
    )  # fmt: skip
    return path


# --- quantized tiny models: FP32, PTQ and QAT checkpoints and their exports (built once) ---------

QUANT_SIZES = [(64, 64), (48, 80)]  # two signatures per exported file


@pytest.fixture(scope="session")
def quant_models(tmp_path_factory: pytest.TempPathFactory):  # -> QuantModels (torch imported lazily)
    """A width-4 network trained briefly on builtin crops (a random network is chaotic: its
    output changes by tens of LSB for half-LSB input noise, unlike a trained one), then
    PTQ-calibrated and QAT fine-tuned; the three checkpoints and their `.tflite` exports at
    QUANT_SIZES (INT8 with int8 I/O; FP32 at the first size only).
    """
    from dataclasses import dataclass

    import torch

    from qaie.config import ModelConfig
    from qaie.data.datasets import make_dataset
    from qaie.nn.model import EnhanceNet
    from qaie.quant import quantize
    from qaie.quant.checkpoint import save_model
    from qaie.quant.export import export_tflite

    @dataclass(frozen=True)
    class QuantModels:
        fp32: EnhanceNet
        ptq: torch.fx.GraphModule
        qat: torch.fx.GraphModule
        crops: torch.Tensor  # (N, 3, 32, 32) training inputs
        ckpt: dict[str, Path]  # fp32 / ptq / qat
        tflite: dict[str, Path]  # fp32 / ptq / qat

    torch.manual_seed(0)
    data = make_dataset("builtin", "train", crop=32, repeats=16)
    pairs = [data[i] for i in range(len(data))]
    x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])  # (112, 3, 32, 32)

    def train(net: torch.nn.Module, steps: int, lr: float, freeze_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(net.parameters(), lr)
        for step in range(steps):
            if step == freeze_at:
                quantize.freeze_observers(net)
            idx = torch.randint(0, len(x), (16,), generator=g)
            loss = (net(x[idx]) - y[idx]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    config = ModelConfig(width=4)
    fp32 = EnhanceNet(config)
    train(fp32, steps=400, lr=2e-3)
    fp32.eval()
    ptq = quantize.prepare_ptq(fp32, x[:2])
    quantize.calibrate(ptq, x[:64].split(16))
    qat = quantize.prepare_qat(fp32, x[:2])
    train(qat, steps=100, lr=2e-4, freeze_at=50)
    quantize.freeze_observers(qat)

    out = tmp_path_factory.mktemp("quant")
    ckpt = {"fp32": out / "fp32.ckpt", "ptq": out / "ptq.ckpt", "qat": out / "qat.ckpt"}
    save_model(ckpt["fp32"], fp32, config)
    save_model(ckpt["ptq"], ptq, config, "ptq")
    save_model(ckpt["qat"], qat, config, "qat")
    tflite = {name: out / f"{name}.tflite" for name in ("fp32", "ptq", "qat")}
    for name, net in (("fp32", fp32), ("ptq", ptq), ("qat", qat)):  # whole signatures (parity)
        sizes = QUANT_SIZES[:1] if name == "fp32" else QUANT_SIZES
        fmt = "fp32" if name == "fp32" else "int8"
        export_tflite(net, fmt, sizes, tflite[name], source_checkpoint=str(ckpt[name]), stages=False)
    return QuantModels(fp32, ptq, qat, x, ckpt, tflite)


WINDOW = (128, 128)  # the stage window of the whole-photo exports


@pytest.fixture(scope="session")
def whole_photo_models(quant_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`quant_models`' QAT and FP32 networks exported with stage signatures (qaie.quant.split) at
    WINDOW: .tflite files that enhance any photo as a whole photo. Without the phase form
    (qaie.quant.phases): the same int8 weights as the checkpoint's stages and the .onnx and
    .pte they are compared with (tests/test_phases.py exports the phase form's stages)."""
    from qaie.quant.export import export_tflite

    out = tmp_path_factory.mktemp("whole")
    paths = {"qat": out / "qat.tflite", "fp32": out / "fp32.tflite"}
    export_tflite(quant_models.qat, "int8", [WINDOW], paths["qat"], phases=False)
    export_tflite(quant_models.fp32, "fp32", [WINDOW], paths["fp32"], phases=False)
    return paths


SHARED_MODELS = Path(os.environ.get("QAIE_SHARED_MODELS", REPO.parent / "shared" / "models"))


@pytest.fixture(scope="session")
def official_models() -> Path:
    """../shared/models/qatie: the paper's official INT8 files (never copied into the repo);
    skips the test where it is absent."""
    folder = SHARED_MODELS / "qatie"
    if not (folder / "model_with_qat_c32_int8_100x100.tflite").is_file():
        pytest.skip(f"the paper's official .tflite files are not present at {folder}")
    return folder
