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
def tiny_net():  # -> qaie.model.EnhanceNet (torch imported lazily)
    """A width-4 EnhanceNet made to behave like a trained one for the tiling tests.

    Its InstanceNorm scales are zeroed so the network is local (no per-image statistics): a
    tiled run must then reproduce the whole-image run away from tile borders, which isolates
    the tiling code. The head is scaled down so the output is a mild correction of the input
    (about 10/255 on average), like a trained model's rather than a random network's noise.
    """
    import torch

    from qaie.config import ModelConfig
    from qaie.model import EnhanceNet, InstanceNorm

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
    from qaie.checkpoint import save_model
    from qaie.export import export_tflite

    path = tmp_path_factory.mktemp("tiny") / "tiny_fp32.tflite"
    export_tflite(tiny_net, "fp32", [TINY_TILE, TINY_WHOLE], path)
    save_model(path.with_suffix(".ckpt"), tiny_net, tiny_net.config)  # for tiny_checkpoint
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_tflite: Path) -> Path:
    """The FP32 checkpoint of `tiny_tflite`'s network (same weights)."""
    return tiny_tflite.with_suffix(".ckpt")


@pytest.fixture(scope="session", params=["int8", "uint8"])
def tiny_int8_tflite(request, tiny_net, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_net` exported integer-only INT8 (PTQ on crops of a real photo) at the same sizes,
    with int8 I/O (zero point -128) or uint8 I/O (zero point 0, as shipped)."""
    import skimage.data
    import torch

    from qaie.export import export_tflite

    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 255  # (3, 512, 512)
    crops = [photo[:, y : y + 96, x : x + 96] for y in (0, 200, 400) for x in (0, 200, 400)]
    path = tmp_path_factory.mktemp("tiny") / f"tiny_int8_{request.param}_io.tflite"
    export_tflite(
        tiny_net, "int8", [TINY_TILE, TINY_WHOLE], path, uint8_io=request.param == "uint8",
        calibration=[torch.stack(crops)],
    )  # fmt: skip
    return path
