"""The Python API (`qaie.load`, `qaie.enhance`, `qaie.create_model`, `qaie.list_models`) on
real files: the shipped INT8 model in LiteRT, tiny checkpoints, photos on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

import qaie
from qaie.cli import main
from qaie.errors import QaieError
from qaie.imageio import read_rgb
from qaie.quant.predict import CHECKPOINT_TILE, CheckpointModel
from qaie.runtime.litert import TFLiteModel
from qaie.runtime.models import default_model
from qaie.runtime.wholephoto import plan_windows

SHIPPED = "qaie-c32-int8"


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 120x160 photo-like JPEG stored sideways with EXIF orientation 6 (shown as 160x120)."""
    pixels = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((160, 120)))
    path = tmp_path_factory.mktemp("api") / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    return path


@pytest.fixture(scope="module")
def shipped() -> TFLiteModel:
    return qaie.load()


def test_list_models_names_widths_then_shipped_models() -> None:
    names = qaie.list_models()
    assert names[:4] == ["qaie_c16", "qaie_c24", "qaie_c32", "qaie_c64"]
    assert SHIPPED in names[4:]


def test_create_model_by_name_or_width() -> None:
    from qaie.nn.model import param_count

    assert param_count(qaie.create_model("qaie_c32")) == param_count(qaie.create_model(32)) == 915_331
    net = qaie.create_model(8, encoder_refiners=False)
    assert net.config.width == 8 and not net.config.encoder_refiners and not net.training
    assert param_count(net) < param_count(qaie.create_model(8))


def test_create_model_pretrained_has_the_shipped_weights() -> None:
    from qaie.quant.checkpoint import load_model

    net = qaie.create_model("qaie_c32", pretrained=True)
    shipped = load_model(default_model().with_name("qaie-c32-fp32.ckpt")).net.state_dict()
    assert all(np.array_equal(v.numpy(), shipped[k].numpy()) for k, v in net.state_dict().items())
    assert not np.array_equal(
        qaie.create_model(32).head.weight.detach().numpy(), net.head.weight.detach().numpy()
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("qaie_c99",), {}, "unknown model 'qaie_c99'"),
        ((0,), {}, "width must be a positive integer"),
        ((32,), {"refiners": False}, "unexpected keyword argument 'refiners'"),
        ((16,), {"pretrained": True}, "no pretrained weights for width 16"),
    ],
)
def test_create_model_errors(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(QaieError, match=message):
        qaie.create_model(*args, **kwargs)


def test_load_takes_a_name_a_path_none_or_a_loaded_model(shipped: TFLiteModel, tiny_checkpoint: Path) -> None:
    assert isinstance(shipped, TFLiteModel) and shipped.path == default_model()
    assert qaie.load(SHIPPED).path == default_model() == qaie.load(str(default_model())).path
    assert qaie.load(shipped) is shipped
    assert isinstance(qaie.load(tiny_checkpoint), CheckpointModel)
    with pytest.raises(QaieError, match="not a model file or a shipped model"):
        qaie.load("qaie-c99-int8")


def test_enhance_takes_a_path_a_pil_image_or_an_array(photo: Path, shipped: TFLiteModel) -> None:
    upright = read_rgb(photo).pixels  # EXIF applied: (160, 120, 3)
    assert upright.shape == (160, 120, 3)
    from_path = qaie.enhance(photo, shipped)
    assert from_path.shape == upright.shape and from_path.dtype == np.uint8
    with Image.open(photo) as im:
        from_pil = qaie.enhance(im, shipped)
    assert np.array_equal(from_path, from_pil)
    assert np.array_equal(from_path, qaie.enhance(upright, shipped))
    assert np.abs(from_path.astype(int) - upright).mean() > 1  # it did enhance


def test_enhance_is_what_the_cli_writes(photo: Path, shipped: TFLiteModel, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    assert main(["enhance", str(photo), "-o", str(out)]) == 0
    assert np.array_equal(read_rgb(out).pixels, qaie.enhance(photo, shipped))


@pytest.fixture(scope="module")
def normed_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A width-4 FP32 checkpoint whose instance norms act (unlike `tiny_checkpoint`'s): its output
    depends on statistics of the whole photo, which windows that normalised themselves would miss."""
    import torch

    from qaie.config import ModelConfig
    from qaie.nn.model import EnhanceNet
    from qaie.quant.checkpoint import save_model

    torch.manual_seed(0)
    config = ModelConfig(width=4)
    path = tmp_path_factory.mktemp("api") / "normed.ckpt"
    save_model(path, EnhanceNet(config).eval(), config)
    return path


def test_enhance_with_a_checkpoint_is_its_whole_photo_output(
    normed_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint runs stage by stage in windows of CHECKPOINT_TILE; a photo spanning 2x3 of them
    gets the one-pass output over the whole photo (FP32: within a rounding step)."""
    # (600, 1096, 3): sides on the S/8 grid, where the one-pass network needs no padding
    image = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((1096, 600)))
    model = qaie.load(normed_checkpoint)
    assert model.stages is not None and model.stages.window_sizes == (CHECKPOINT_TILE,)
    calls: list[int] = []
    run = model.stages.run
    monkeypatch.setattr(model.stages, "run", lambda k, *args: calls.append(k) or run(k, *args))
    staged = qaie.enhance(image, model).astype(int)
    plan = plan_windows(model.stages, (600, 1096))
    windows = len(plan.rows) * len(plan.cols)
    stages = len(model.stages.meta["stages"])
    assert windows == 6 and sorted(calls) == sorted(list(range(stages)) * windows)
    whole = CheckpointModel(normed_checkpoint, window=None).run(image).astype(int)
    assert np.abs(staged - whole).max() <= 1
    assert np.abs(staged - image).mean() > 1


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((64, 64, 3), np.float32), "expected an \\(H, W, 3\\) uint8 array"),
        (np.zeros((64, 64), np.uint8), "expected an \\(H, W, 3\\) uint8 array"),
        ([1, 2, 3], "expected a path, a PIL image or an"),
        ("no/such/photo.jpg", "no/such/photo.jpg"),
    ],
)
def test_enhance_refuses_what_it_cannot_read(image: object, message: str, shipped: TFLiteModel) -> None:
    with pytest.raises(QaieError, match=message):
        qaie.enhance(image, shipped)
