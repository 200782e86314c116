"""`qaie quantize`: a trained FP32 model and a folder of photos -> an INT8 file at FP32 quality.

For the common case of a user with a model (their own, or the paper's release through `qaie
import`) and photos, but not the labelled pairs it was trained on:

1. PTQ: the FP32 network, its norms' input channels equalized (`qaie.quant.equalize`: the same
   function, int8 statistics that hold on flat photos), calibrated on the training photos at
   the size it will run at;
2. label-free QAT (`--qat-epochs N`): the fake-quant network of PTQ's (equalized) weights, its
   ranges PTQ's (set at that size; then trained by their scales, `--learn-ranges`, or frozen),
   trained to reproduce the FP32 output (`qaie train --qat --data photos:`, teacher = the FP32
   model) on frames of that size from the training photos,
   average-pooled by `shrink` (whole-frame norm statistics at a quarter of the cost; crops
   show the norms other statistics and made it worse, docs/results.md); its best epoch on the
   validation photos is used only if its exported file is closer to FP32 there than PTQ's
   (files, not checkpoints: the export folds and rewrites convolutions, docs/results.md);
3. export of the result to .tflite, .onnx or .pte;
4. fidelity of the exported *file* to the FP32 network on the held-out test photos at that size,
   for PTQ and QAT alike, and parity of the file with its checkpoint.

The photos are split by a hash of their names (qaie.data.datasets, `held_out`): training,
validation (checkpoint choice) and test (the reported fidelity) never share a photo.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from qaie.data.datasets import VAL_SEED, make_dataset
from qaie.errors import QaieError
from qaie.experiment.evaluate import FidelityResult, checkpoint_predictor, evaluate_fidelity, tflite_predictor
from qaie.experiment.parity import ParityReport, run_parity
from qaie.experiment.train import TrainConfig, train
from qaie.imageio import Size
from qaie.quant.calibrate import calibrate_checkpoint
from qaie.quant.checkpoint import load_model
from qaie.quant.predict import Predictor
from qaie.runtime import registry

LABEL_FREE_LR = 5e-5  # Adam on frames at half size (docs/results.md, "Label-free QAT")
RANGES_LR = 1e-4  # the activations' scales (docs/results.md, "Learned ranges")
SHRINK_FROM = 512  # frames this large train pooled 2x by default


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything `qaie quantize` does.

    Args:
        checkpoint: the FP32 checkpoint (qaie's, or `qaie import`'s of the official release).
        photos: folder of unlabelled photos.
        size: (H, W) the model runs at (the exported size; calibration and fidelity frames).
        out: .tflite, .onnx or .pte to write.
        work: folder for the PTQ checkpoint and the QAT run (resumable).
        qat_epochs: label-free QAT epochs after PTQ (one frame per training photo each); 0
            exports the PTQ model.
        shrink: QAT frames average-pooled by this factor; None: 2 for frames of at least
            SHRINK_FROM px a side (the norms' statistics barely move), else 1 (pooling a patch
            changes what it shows).
        lr, loss: QAT training settings (`qaie train`'s; mean squared error is what PSNR
            measures, docs/results.md).
        learn_ranges: QAT trains the activations' scales at this learning rate (`qaie train
            --learn-ranges`); None keeps PTQ's ranges.
        crops: windows of `size` per photo: calibration, each QAT epoch, validation and test
            (for a size much smaller than the photos, e.g. 100x100 patches); 1: one frame each,
            the centre one for validation and test.
        test_limit: report fidelity on the first N test photos only.
        norm_passes: 2 quantizes the norms in two passes (`qaie.nn.model.SecondPass`): the same
            FP32 function, int8 statistics fitted to each map. The default: on the official
            weights it gained 1.6-2.3 dB on 200 held-out BSDS500 photos, for patches and frames
            alike, at 6% more latency (docs/results.md); 1 is the plain form.
    """

    checkpoint: Path
    photos: Path
    size: Size
    out: Path
    work: Path
    qat_epochs: int = 7
    shrink: int | None = None
    lr: float = LABEL_FREE_LR
    loss: str = "mse"
    learn_ranges: float | None = RANGES_LR
    crops: int = 1
    test_limit: int | None = None
    norm_passes: int = 2

    def __post_init__(self) -> None:
        if registry.find(self.out) is None:
            raise QaieError(f"{self.out}: the output must end in {', '.join(registry.DEPLOYED_SUFFIXES)}")
        if self.qat_epochs < 0:
            raise QaieError(f"--qat-epochs must be >= 0, got {self.qat_epochs}")
        if self.crops < 1:
            raise QaieError(f"--crops must be >= 1, got {self.crops}")
        if self.shrink is None:
            object.__setattr__(self, "shrink", 2 if min(self.size) >= SHRINK_FROM else 1)

    @property
    def data(self) -> str:
        return f"photos:{self.photos}"


@dataclass
class QuantizeResult:
    """What `quantize_from_photos` made and measured (fidelity: the exported file vs FP32)."""

    out: Path
    checkpoint: Path  # the PTQ or QAT checkpoint exported
    fidelity: FidelityResult
    parity: ParityReport
    ptq_fidelity: FidelityResult | None = None  # with QAT: the PTQ file's, for comparison
    validation: dict[str, float] = field(default_factory=dict)  # with QAT: the files' val PSNR
    minutes: dict[str, float] = field(default_factory=dict)
    crops: int = 1  # windows per photo: fidelity.n_images counts windows
    norm_passes: int = 1  # the quantized norms' form (ModelConfig.norm_passes)

    @property
    def test_photos(self) -> int:
        return self.fidelity.n_images // self.crops


def quantize_from_photos(config: QuantizeConfig) -> QuantizeResult:
    """PTQ, label-free QAT, export and measurement (module docstring)."""
    loaded = load_model(config.checkpoint)
    if loaded.quant is not None:
        raise QaieError(f"{config.checkpoint}: already quantized ({loaded.quant}); give the FP32 checkpoint")
    model = dataclasses.replace(loaded.config, norm_passes=config.norm_passes)  # ModelConfig checks it
    registry.runtime(config.out).check_output(config.out, True)
    # every split checked before any work (too few photos, or smaller than --size)
    photos = {
        s: len(make_dataset(config.data, s, crop=config.size, held_out=True))
        for s in ("train", "val", "test")
    }
    config.work.mkdir(parents=True, exist_ok=True)
    minutes: dict[str, float] = {}

    started = time.perf_counter()
    ptq = config.work / "ptq.ckpt"
    if not ptq.exists():
        calibrate_checkpoint(
            config.checkpoint, config.data, ptq, images=photos["train"] * config.crops, crop=config.size,
            held_out=True, equalize=True, norm_passes=config.norm_passes,
        )  # fmt: skip
    minutes["ptq"] = (time.perf_counter() - started) / 60

    chosen, ptq_fidelity, validation = ptq, None, {}
    if config.qat_epochs:
        started = time.perf_counter()
        qat = TrainConfig(
            data=config.data,
            epochs=config.qat_epochs,
            batch_size=1,
            lr=config.lr,
            warmup_epochs=0,
            crop=config.size,
            repeats=config.crops,
            shrink=config.shrink,
            loss=config.loss,
            val_crop=config.size,
            qat=True,
            init=str(config.checkpoint),  # the teacher; weights and ranges are PTQ's
            ranges=str(ptq),
            learn_ranges=config.learn_ranges,
        )
        run = config.work / "qat"
        result = train(model, qat, run, resume=(run / "last.ckpt").exists())
        candidates = {"ptq": ptq, "qat": result.best}
        # each candidate's file, not its checkpoint: the export computes in another form (the
        # full-size convolutions folded, phase form), 1.9 dB closer to FP32 on the official weights
        files = {k: (config.work / config.out.name).with_stem(k) for k in candidates}
        for k, c in candidates.items():
            export_file(c, files[k], config.size)
        validation = {k: fidelity(tflite_predictor(f), str(f), config, "val").psnr for k, f in files.items()}
        chosen = candidates[max(validation, key=validation.get)]  # a tie keeps PTQ
        minutes["qat"] = (time.perf_counter() - started) / 60
        ptq_fidelity = fidelity(tflite_predictor(files["ptq"]), str(files["ptq"]), config, "test")

    started = time.perf_counter()
    export_file(chosen, config.out, config.size)
    minutes["export"] = (time.perf_counter() - started) / 60
    started = time.perf_counter()
    measured = fidelity(tflite_predictor(config.out), str(config.out), config, "test")
    parity = run_parity(chosen, config.out, config.data, limit=2)
    minutes["measure"] = (time.perf_counter() - started) / 60
    return QuantizeResult(
        config.out,
        chosen,
        measured,
        parity,
        ptq_fidelity,
        validation,
        minutes,
        config.crops,
        config.norm_passes,
    )


def export_file(checkpoint: Path, out: Path, size: Size) -> None:
    """A QAT/PTQ checkpoint as an INT8 file of `out`'s format, at `size` (.tflite with its
    whole-photo stages, .pte one method; .onnx takes any size)."""
    runtime = registry.runtime(out)
    sizes = [size] if registry.SIZE in runtime.options else None
    runtime.export(load_model(checkpoint).net, "int8", out, sizes=sizes, source_checkpoint=str(checkpoint))


def fidelity(predict: Predictor, name: str, config: QuantizeConfig, split: str) -> FidelityResult:
    """PSNR/SSIM of `predict`'s output against the FP32 network's on the photos of `split` at
    the size (the test split: the reported fidelity; val: the choice between PTQ and QAT)."""
    limit = config.test_limit if split == "test" else None
    photos = make_dataset(
        config.data, split, crop=config.size, seed=VAL_SEED, repeats=config.crops, limit=limit, held_out=True
    )
    return evaluate_fidelity(
        predict,
        checkpoint_predictor(config.checkpoint),
        photos,
        model=name,
        reference_name=str(config.checkpoint),
        data=config.data,
        split=split,
    )


def summary(result: QuantizeResult) -> dict:
    """JSON-ready numbers of a run."""
    data = {
        "out": str(result.out),
        "checkpoint": str(result.checkpoint),
        "fidelity_psnr": result.fidelity.psnr,
        "fidelity_ssim": result.fidelity.ssim,
        "test_photos": result.test_photos,
        "test_windows": result.fidelity.n_images,
        "norm_passes": result.norm_passes,
        "parity_psnr": result.parity.overall.psnr,
        "parity_max_abs_lsb": result.parity.overall.max_abs_lsb,
        "minutes": result.minutes,
    }
    if result.ptq_fidelity is not None:
        data["ptq_fidelity_psnr"] = result.ptq_fidelity.psnr
    if result.validation:
        data["validation_psnr"] = result.validation
    return data
