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


# --- a tiny float .tflite for the runtime, enhance and bench tests ------------------------------

TINY_TILE = (96, 96)  # a tile size
TINY_WHOLE = (192, 256)  # big enough to run a whole test image: the reference for tiling


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A width-4 EnhanceNet as an FP32 NHWC `.tflite` with signatures `enhance_96x96` and
    `enhance_192x256` (same weights), converted once per session.

    Its InstanceNorm scales are zeroed so the network is local (no per-image statistics): a
    tiled run must then reproduce the whole-image run away from tile borders, which isolates
    the tiling code. The head is scaled down so the output is a mild correction of the input
    (about 10/255 on average), like a trained model's rather than a random network's noise.
    """
    import litert_torch
    import torch

    from qaie.checkpoint import save_model
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
    nhwc = _NHWC(net).eval()
    converter = litert_torch
    for h, w in (TINY_TILE, TINY_WHOLE):
        converter = converter.signature(f"enhance_{h}x{w}", nhwc, (torch.rand(1, h, w, 3),))
    path = tmp_path_factory.mktemp("tiny") / "tiny_fp32.tflite"
    converter.convert().export(str(path))
    save_model(path.with_suffix(".ckpt"), net, net.config)  # the same weights, for tiny_checkpoint
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_tflite: Path) -> Path:
    """The FP32 checkpoint of `tiny_tflite`'s network (same weights)."""
    return tiny_tflite.with_suffix(".ckpt")


def _NHWC(net):  # -> torch.nn.Module (torch imported lazily)
    from torch import nn

    class NHWC(nn.Module):
        """(1, H, W, 3) in and out, as the exported models' contract says."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    return NHWC()
