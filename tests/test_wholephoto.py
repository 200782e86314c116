"""Whole-photo enhancement: the network split at its norm statistics (qaie.quant.split), run stage
by stage over windows (qaie.runtime.wholephoto), must give the network's whole-image output."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import WINDOW
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from qaie.config import ModelConfig
from qaie.errors import QaieError
from qaie.quant import split
from qaie.quant.checkpoint import load_model
from qaie.quant.predict import open_model
from qaie.quant.reference import TorchStageRunner, reference_model
from qaie.quant.tflite_ops import inspect_tflite
from qaie.runtime import wholephoto
from qaie.runtime.codec import Codec
from qaie.runtime.litert import TFLiteModel, enhance_image
from qaie.runtime.wholephoto import (
    ALIGN,
    HALO,
    Histogram,
    MapPool,
    enhance_whole,
    grid_starts,
    norm_statistics,
    own,
    plan_axis,
    plan_windows,
)

pytestmark = pytest.mark.slow


def gradient_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients and a bright disc, with mild noise: low-frequency content
    whose statistics differ from window to window, where per-window norms show as casts."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    disc = ((y - 0.3) ** 2 + (x - 0.6) ** 2 < 0.02) * 90
    rgb = np.stack([40 + 180 * x + disc, 30 + 150 * y, 200 - 120 * x * y + disc / 2], axis=-1)
    return np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)


def reference(net: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    """The network (FP32, or a quantized reference model) on the whole photo in one pass."""
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = net(x)[0].permute(1, 2, 0)
    return (y * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float("inf") if np.array_equal(a, b) else peak_signal_noise_ratio(a, b)


@pytest.mark.parametrize("length", [128, 136, 200, 264, 512, 1000, 2048])
@pytest.mark.parametrize("window", [128, 256])
def test_windows_own_every_pixel_once_away_from_inner_edges(length, window):
    if window > length:
        pytest.skip("a window larger than the photo is never planned")
    windows = plan_axis(length, window)
    owned = np.zeros(length, int)
    for i, w in enumerate(windows):
        assert w.start % ALIGN == 0 and w.own_start % ALIGN == 0 and 0 <= w.start <= length - window
        assert w.start <= w.own_start < w.own_end <= w.start + window
        assert i == 0 or w.own_start - w.start >= HALO  # inner edges are HALO away
        assert i == len(windows) - 1 or w.start + window - w.own_end >= HALO
        owned[w.own_start : w.own_end] += 1
    assert (owned == 1).all()
    fewer = len(windows) - 1  # the fewest windows: one fewer cannot keep the halos
    assert fewer == 0 or own(grid_starts(length, window, fewer), length, window) is None


def test_windows_are_as_few_as_the_halos_allow():
    """A 12 MP photo in the shipped model's 808x1064 windows: 4 rows of 808 cover 3000 with
    every inner edge a halo away (5 by the bound that adds a grid step to each overlap)."""
    assert len(plan_axis(3000, 808)) == 4 and len(plan_axis(4000, 1064)) == 4


@pytest.mark.parametrize("channels", [1, 3, 4, 6, 32])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_histogram_counts_each_channel_of_strided_parts(channels, dtype):
    """Counts per channel, code by code from the lowest, of a map added as owned parts of
    windows (strided views, one of channel planes, one empty): what np.bincount counts channel by channel."""
    rng = np.random.default_rng(channels)
    info = np.iinfo(dtype)
    window = rng.integers(info.min, info.max + 1, (29, 41, channels)).astype(dtype)
    planes = np.ascontiguousarray(window.transpose(2, 0, 1)).transpose(1, 2, 0)  # as NCHW outputs
    parts = [window[3:17, 5:33], window[17:, :9], planes[:3, 40:], window[5:5]]
    histogram = Histogram(channels)
    for part in parts:
        histogram.add(part)
    got = histogram.by_code(signed=info.min < 0)
    for c in range(channels):
        codes = np.concatenate([p[..., c].ravel() for p in parts]).astype(np.int64) - info.min
        np.testing.assert_array_equal(got[c], np.bincount(codes, minlength=256))


def test_norm_statistics_follow_the_reference_chain():
    """From the map's code histogram, each step rounded to its scale as torch's fake-quant
    rounds it: the same mean and rstd codes as the chain computed on every pixel in torch."""
    rng = np.random.default_rng(0)
    codes = rng.normal(-20, 30, (37, 53, 5)).clip(-128, 127).astype(np.int8)
    q = {"input": [0.05, -10], "mean": [0.01, 3], "centered": [0.04, 0], "square": [0.5, -128],
         "var": [0.4, -128], "var_eps": [0.4, -128], "rstd": [0.02, -128], "eps": [1e-7, -128]}  # fmt: skip
    norm = {"eps": 1e-5, "chain": q}

    def fq(t: torch.Tensor, step: str) -> torch.Tensor:
        scale, zero_point = q[step]
        return torch.fake_quantize_per_tensor_affine(t, scale, zero_point, -128, 127)

    x = (torch.from_numpy(codes).double() - q["input"][1]) * q["input"][0]  # (H, W, C)
    mean = fq(x.mean(dim=(0, 1)), "mean")
    centered = fq(x - mean, "centered")
    var = fq(fq(centered * centered, "square").mean(dim=(0, 1)), "var")
    rstd = fq(torch.rsqrt(fq(var + fq(torch.tensor(1e-5).double(), "eps"), "var_eps")), "rstd")
    stats = norm_statistics(codes, Codec(np.dtype(np.int8), *q["input"]), norm)
    got_mean, got_rstd = stats["mean"], stats["rstd"]
    for got, want, step in ((got_mean, mean, "mean"), (got_rstd, rstd, "rstd")):  # the same codes
        np.testing.assert_array_equal(np.rint(got / q[step][0]), np.rint(want.numpy() / q[step][0]))
    assert len(np.unique(got_rstd)) > 1  # the channels differ: not a constant that always matches


def test_quantized_stages_are_the_reference_model_exactly(quant_models):
    """Stage by stage in 128x128 windows, with the statistics computed from the int8 maps'
    histograms: bit for bit the quantized reference model on the whole 264x336 photo."""
    photo = gradient_photo(264, 336)
    whole = reference(reference_model(quant_models.qat), photo)
    staged = enhance_whole(TorchStageRunner(quant_models.qat, [WINDOW]), photo)
    assert np.array_equal(staged, whole)


def test_fp32_stages_are_the_network(quant_models):
    photo = gradient_photo(200, 344, seed=1)  # 200: padded to 200 (on the grid), 344 wide
    whole = reference(quant_models.fp32, photo)
    staged = enhance_whole(TorchStageRunner(quant_models.fp32, [WINDOW]), photo)
    assert np.abs(staged.astype(int) - whole).max() <= 1  # float rounding of the statistics


def test_statistics_are_what_makes_tiles_differ(quant_models, monkeypatch):
    """The control: the same windows with each window's own statistics (what tiling did)
    are far from the whole-photo output, so the exact match above is the statistics."""
    import qaie.runtime.wholephoto as wholephoto

    photo = gradient_photo(264, 336)
    whole = reference(quant_models.fp32, photo)
    runner = TorchStageRunner(quant_models.fp32, [WINDOW])
    per_window = {}

    def window_statistics(values, quant, norm):  # statistics of the first window only
        key = norm["input"]
        per_window.setdefault(key, original(values[: WINDOW[0] // 2, : WINDOW[1] // 2], quant, norm))
        return per_window[key]

    original = wholephoto.norm_statistics
    monkeypatch.setattr(wholephoto, "norm_statistics", window_statistics)
    assert psnr(enhance_whole(runner, photo), whole) < 40


def test_int8_file_is_integer_only_and_whole_photo(quant_models, whole_photo_models):
    """The deployed path: the INT8 .tflite in LiteRT, stage by stage in windows, against the
    QAT checkpoint's fake-quant model on the whole photo (the `--tile none` reference)."""
    ops = inspect_tflite(whole_photo_models["qat"])
    assert ops.float_ops == 0 and ops.quantize_ops == 0 and ops.dequantize_ops == 0
    model = TFLiteModel(whole_photo_models["qat"], num_threads=2)
    assert model.stages is not None and model.stages.window_sizes == (WINDOW,)
    photo = gradient_photo(600, 808)
    whole = reference(reference_model(quant_models.qat), photo)
    calls = []
    out = enhance_image(model, photo, progress=lambda done, total: calls.append((done, total)))
    plan = plan_windows(model.stages, (600, 808))  # the file's own halo: 24, not the default 32
    assert model.stages.meta["halo"] == 24 and (len(plan.rows), len(plan.cols)) == (7, 10)
    assert calls[-1][0] == calls[-1][1] == 6 * len(plan.rows) * len(plan.cols)
    assert psnr(out, whole) >= 40  # measured: 50.4 dB (LiteRT's int8 kernels vs torch)


def test_a_pool_lends_one_photos_maps_to_the_next_of_its_size(whole_photo_models):
    """The maps' arrays serve the next photo of the same size (no fresh memory to page in)
    and leave nothing of the last photo in its output; another size gets arrays of its own."""
    model = TFLiteModel(whole_photo_models["qat"], num_threads=2)
    pool = MapPool()

    def held() -> list[np.ndarray]:
        return [a for arrays in pool.free.values() for a in arrays]

    def ids(arrays: list[np.ndarray]) -> set[int]:
        return {id(a) for a in arrays}  # identities while `kept` holds its arrays alive

    first, second = gradient_photo(600, 808), gradient_photo(600, 808, seed=1)[::-1]
    assert np.array_equal(enhance_image(model, first, pool=pool), enhance_image(model, first))
    kept = held()
    assert kept
    assert np.array_equal(enhance_image(model, second, pool=pool), enhance_image(model, second))
    assert ids(held()) == ids(kept)
    enhance_image(model, gradient_photo(336, 520), pool=pool)
    assert held() and not ids(held()) & ids(kept)


def test_a_photo_with_large_maps_frees_the_stages_tensors_after_it(whole_photo_models, monkeypatch):
    """LiteRT keeps a signature's tensors from its first call on. After a photo whose maps took
    more than RELEASE_AFTER_MAPS, and that has no pool, the stages move to a fresh interpreter
    with nothing allocated; a smaller photo, or one with a pool, leaves them allocated for the
    next. The output is the same every way."""
    model = TFLiteModel(whole_photo_models["qat"], num_threads=2)
    stages, photo = model.stages, gradient_photo(600, 808)
    first = stages._interpreter
    out = enhance_image(model, photo)
    assert stages._interpreter is first and stages._ready
    monkeypatch.setattr(wholephoto, "RELEASE_AFTER_MAPS", 0)
    assert np.array_equal(enhance_image(model, photo, pool=MapPool()), out)
    assert stages._interpreter is first
    assert np.array_equal(enhance_image(model, photo), out)
    assert stages._interpreter is not first and not stages._ready
    assert np.array_equal(enhance_image(model, photo), out)  # the fresh interpreter computes it


def test_fp32_file_is_whole_photo(quant_models, whole_photo_models):
    model = TFLiteModel(whole_photo_models["fp32"], num_threads=2)
    photo = gradient_photo(336, 520)
    assert psnr(enhance_image(model, photo), reference(quant_models.fp32, photo)) >= 40


def test_off_grid_photo_is_run_on_the_grid(quant_models, whole_photo_models):
    """333x517 is reflect-padded to 336x520 (windows start on the S/8 grid; statistics still
    over the photo's own pixels). The file computes what the checkpoint's stages compute. The
    network on 333x517 itself is another function: its S/8 -> S/4 resize maps rows with a
    shift (nearest, 41 -> 84 is not 2x), which no aligned window reproduces."""
    model = TFLiteModel(whole_photo_models["fp32"], num_threads=2)
    photo = gradient_photo(333, 517)
    out = enhance_image(model, photo)
    assert out.shape == photo.shape
    staged = enhance_whole(TorchStageRunner(quant_models.fp32, [WINDOW]), photo)
    assert np.abs(out.astype(int) - staged).max() <= 1
    # measured: 25.0 dB for this small model, 44.7 dB for the shipped model on a real
    # 1531x2043 crop (README); on the grid the two are the same function (tests above)
    assert psnr(out, reference(quant_models.fp32, photo)) >= 20


def test_checkpoint_windows_match_tile_none(quant_models):
    """`qaie enhance --model CKPT` (stages in windows) vs `--tile none` (one pass): the same
    function, bit for bit (convolutions, tanh and statistics from the int8 codes, exactly)."""
    photo = gradient_photo(392, 520, seed=2)
    windowed = open_model(quant_models.ckpt["qat"], tile=WINDOW)
    whole = open_model(quant_models.ckpt["qat"], whole=True)
    assert whole.sizes is None and whole.stages is None
    assert np.array_equal(enhance_image(windowed, photo), enhance_image(whole, photo))


def test_each_architecture_records_the_halo_its_stages_need():
    """The probed reach of the stages: 24 pixels for the full network (its S/8 bottleneck seen
    through the S/4 decoder's convolutions), 32 without the decoder's refinement blocks
    (nothing stops at a norm from S/8 to the output)."""
    assert split.halo(ModelConfig(width=4)) == 24
    assert split.halo(ModelConfig(width=4, fusion_refiners=False)) == 32


def test_windows_owned_at_the_recorded_halo_are_exact_and_no_closer(quant_models):
    """Two 152-pixel windows over a 256-pixel side own their pixels exactly the recorded 24
    pixels from the inner edge: bit for bit the one-pass output. Planned with 16 (144-pixel
    windows), the stages differ: the halo is needed, not a margin."""
    photo = gradient_photo(256, 256, seed=3)
    whole = enhance_image(open_model(quant_models.ckpt["qat"], whole=True), photo)
    windowed = open_model(quant_models.ckpt["qat"], tile=(152, 152))
    assert windowed.stages.meta["halo"] == 24
    plan = plan_windows(windowed.stages, (256, 256))
    assert [w.own_start - w.start for w in plan.rows[1:]] == [24]
    assert np.array_equal(enhance_image(windowed, photo), whole)

    closer = open_model(quant_models.ckpt["qat"], tile=(144, 144))
    closer.stages.meta["halo"] = 16
    assert len(plan_windows(closer.stages, (256, 256)).rows) == 2
    assert not np.array_equal(enhance_image(closer, photo), whole)


# ATen's kernel set and oneDNN's ISA, as on CPUs without AVX-512 (a Zen 3) or without AVX2
KERNELS = {"default": "SSE41", "avx2": "AVX2", "avx512": "AVX512_CORE"}
_EXACT_RUN = """
import hashlib, sys
import numpy as np
from qaie.quant.predict import open_model
from qaie.runtime.litert import enhance_image
photo = np.load(sys.argv[2])
windowed = enhance_image(open_model(sys.argv[1], tile=(128, 128)), photo)
whole = enhance_image(open_model(sys.argv[1], whole=True), photo)
print(np.array_equal(windowed, whole), hashlib.sha256(whole.tobytes()).hexdigest())
"""


def test_the_same_output_with_every_cpu_kernel_set(quant_models, tmp_path):
    """The exactness claims hold on any x86-64 CPU: under each kernel set this CPU can run
    (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA), windows equal one pass, and every kernel set
    computes the same bytes."""
    import os

    supported = list(KERNELS)[: list(KERNELS).index(torch.backends.cpu.get_cpu_capability().lower()) + 1]
    np.save(tmp_path / "photo.npy", gradient_photo(264, 336, seed=3))
    digests = {}
    for aten, onednn in ((k, KERNELS[k]) for k in supported):
        env = os.environ | {"ATEN_CPU_CAPABILITY": aten, "ONEDNN_MAX_CPU_ISA": onednn}
        cmd = [sys.executable, "-c", _EXACT_RUN, str(quant_models.ckpt["qat"]), str(tmp_path / "photo.npy")]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        equal, digests[aten] = done.stdout.split()[-2:]
        assert equal == "True", aten
    assert len(set(digests.values())) == 1, digests


def test_tile_none_is_for_checkpoints(whole_photo_models):
    with pytest.raises(QaieError, match="--tile none runs a checkpoint"):
        open_model(whole_photo_models["qat"], whole=True)


@pytest.mark.shared_data
def test_real_iphone_photo(shared_data, quant_models, whole_photo_models):
    """A real 2048x1536 photo: the INT8 file (windows) and the checkpoint (windows) against
    the checkpoint on the whole photo."""
    photo = np.asarray(Image.open(shared_data / "dped-iphone-fullsize" / "12.jpg").convert("RGB"))
    whole = reference(reference_model(quant_models.qat), photo)
    deployed = enhance_image(TFLiteModel(whole_photo_models["qat"], num_threads=2), photo)
    assert psnr(deployed, whole) >= 40
    checkpoint = open_model(quant_models.ckpt["qat"], tile=(512, 512))
    assert np.array_equal(enhance_image(checkpoint, photo), whole)


def test_cli_tile_none_writes_the_reference(tmp_path, quant_models):
    photo = gradient_photo(136, 200)
    src = tmp_path / "in.png"
    Image.fromarray(photo).save(src)
    out = tmp_path / "out.png"
    cmd = [sys.executable, "-m", "qaie.cli", "enhance", str(src), "-o", str(out)]
    done = subprocess.run(
        [*cmd, "--model", str(quant_models.ckpt["fp32"]), "--tile", "none"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert np.array_equal(
        np.asarray(Image.open(out)), reference(load_model(quant_models.ckpt["fp32"]).net, photo)
    )
