"""FP32 and QAT training on PyTorch Lightning: `qaie train`.

Lightning owns the loop, devices, precision, DDP, gradient clipping and checkpoint/resume
bookkeeping; this module adds what is specific to us:

- `TrainConfig`: every setting of a run, frozen, saved in each checkpoint and RUN_DIR/config.json;
- reproducible data order: the sampler and the dataset draw all randomness from
  (seed, epoch, index), so a run resumed from `last.ckpt` ends with the same metrics as an
  uninterrupted one (also with DataLoader workers, and under DDP: the sampler is a
  DistributedSampler seeded per epoch);
- atomic checkpoint writes, `best.ckpt` (by validation PSNR) and `last.ckpt` after each
  epoch's validation, a metrics CSV kept in step with them, a progress bar on stderr;
- QAT: the network is a PT2E fake-quant GraphModule (`qaie.quant.quantize.prepare_qat`), trained at
  a lower learning rate, observers frozen after a number of steps.

Checkpoints are written at the end of each epoch's validation and nowhere else: SIGKILL loses
at most the epoch in progress, and SIGINT (at the next batch boundary, then Lightning's
graceful shutdown) keeps the last finished epoch in `last.ckpt`, so resumed runs never start
mid-epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics import MeanMetric

from qaie.atomic import write_text_atomic
from qaie.config import ModelConfig, from_dict, to_dict
from qaie.errors import QaieError
from qaie.experiment.callbacks import AtomicCheckpointIO, DeferredInterrupt, MetricsLog, ProgressBar
from qaie.imageio import MIN_IMAGE_SIDE
from qaie.jsonio import dumps
from qaie.nn.losses import LOSSES, MSSSIM_MIN_SIZE, make_loss
from qaie.nn.metrics import psnr, ssim
from qaie.nn.model import EnhanceNet
from qaie.quant import checkpoint
from qaie.runtime.litert import parse_size

FP32_LR = 1e-4
QAT_LR = 1e-5  # the paper's QAT fine-tuning rate
PRECISIONS = ("32", "bf16-mixed")
STRATEGIES = ("auto", "ddp", "ddp_spawn")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu")
# Settings a resumed run may change: where and how long it runs, not what it learns.
RESUMABLE = ("epochs", "devices", "num_nodes", "strategy", "accelerator", "num_workers")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (the network's architecture is a ModelConfig).

    Args:
        data: data spec (`qaie.data.datasets`): builtin, synthetic:FOLDER, pairs:FOLDER, dped:FOLDER.
        epochs: total epochs of the run.
        batch_size: crops per step and device.
        lr: peak learning rate (Adam), reached after the warm-up.
        warmup_epochs: linear warm-up, then cosine decay to 0, per step.
        crop: training crop size (random crops and flips from the dataset); (H, W) for photos:
            data (label-free QAT on frames of the size the model will run at).
        repeats: crops drawn per image per epoch (small datasets); photos: data also validates
            on that many fixed windows per photo (patches: a few photos, many windows each).
        loss: name in qaie.nn.losses.LOSSES.
        seed: seeds the weights, crops, degradations and sample order.
        val_crop: centre crop for validation, or (H, W) as `crop`; None: whole images (batch 1).
        val_limit: validate on the first N images only.
        precision: "32" or "bf16-mixed".
        devices, num_nodes, strategy, accelerator: Lightning's, e.g. DDP on 2 GPUs of 4 nodes.
        num_workers: DataLoader worker processes.
        grad_clip: gradient-norm clipping threshold.
        qat: train the fake-quantized graph (quantization-aware training).
        init: FP32 checkpoint to start from (QAT fine-tuning); None: fresh weights.
        freeze_observers_after: QAT: freeze the quantization observers after this many steps.
        teacher: FP32 checkpoint whose output on each crop is the target (distillation). For
            photos: data (no labels) under --qat it defaults to --init: label-free QAT, the
            fake-quant model learns to reproduce its own FP32 network.
        calibrate_size: QAT: "HxW"; before the first step the quantization ranges are set by
            PTQ's observers (`QuantSpecs.build`) on training photos of this size (the size the
            model will run at) and stay frozen.
        ranges: QAT: a PTQ checkpoint of the same network (`qaie calibrate`, `qaie quantize`'s
            ptq.ckpt), or a QAT one; the fake-quant starts from its weights and ranges and keeps
            the ranges (as calibrate_size, without calibrating again); --init stays the teacher.
            A QAT checkpoint with --teacher FP32.ckpt distils its own FP32 network into it.
        shrink: average-pool each training batch (input and target) by this factor: frames at
            1/shrink² of the cost, their norms still seeing whole-frame statistics.
        learn_ranges: QAT from frozen ranges (calibrate_size or ranges): train each ordinary
            activation's scale at this learning rate (`quantize.learn_scales`, LSQ); None: the
            ranges stay as set.
    """

    data: str
    epochs: int
    batch_size: int = 16
    lr: float = FP32_LR
    warmup_epochs: int = 1
    crop: int | tuple[int, int] = 100
    repeats: int = 1
    loss: str = "paper"
    seed: int = 0
    val_crop: int | tuple[int, int] | None = 128
    val_limit: int | None = None
    precision: str = "32"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    accelerator: str = "auto"
    num_workers: int = 0
    grad_clip: float = 1.0
    qat: bool = False
    init: str | None = None
    freeze_observers_after: int | None = None
    teacher: str | None = None
    calibrate_size: str | None = None
    ranges: str | None = None
    shrink: int = 1
    learn_ranges: float | None = None

    def __post_init__(self) -> None:
        for name in ("crop", "val_crop"):  # (H, W) comes back from JSON as a list
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "shrink": self.shrink}
        positive |= {"repeats": self.repeats, "devices": self.devices, "num_nodes": self.num_nodes}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise QaieError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise QaieError(f"--lr must be > 0, got {self.lr!r}")
        for name, value in (("warmup_epochs", self.warmup_epochs), ("num_workers", self.num_workers)):
            if value < 0:
                raise QaieError(f"--{name.replace('_', '-')} must be >= 0, got {value!r}")
        if self.seed < 0:
            raise QaieError(f"--seed must be >= 0, got {self.seed!r}")
        for flag, crop in (("--crop", self.crop), ("--val-crop", self.val_crop)):
            if crop is None:
                continue
            sides = crop if isinstance(crop, tuple) else (crop,)
            if not all(isinstance(side, int) for side in sides) or min(sides) < MIN_IMAGE_SIDE:
                raise QaieError(
                    f"{flag} must be at least {MIN_IMAGE_SIDE} (the network's minimum size), got {crop}"
                )
            if isinstance(crop, tuple) and not self.labels_free:
                raise QaieError(f"{flag} {crop[0]}x{crop[1]}: an HxW crop applies to photos: data only")
        if min(self.crop_size) // self.shrink < MIN_IMAGE_SIDE:
            raise QaieError(
                f"--shrink {self.shrink}: the {self.crop} crop would fall below {MIN_IMAGE_SIDE} px"
            )
        if self.val_limit is not None and self.val_limit < 1:
            raise QaieError(f"--val-limit must be at least 1, got {self.val_limit}")
        if self.loss not in LOSSES:
            raise QaieError(f"--loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.loss == "msssim" and min(self.crop_size) // self.shrink < MSSSIM_MIN_SIZE:
            raise QaieError(f"--loss msssim needs --crop {MSSSIM_MIN_SIZE} or more, got {self.crop}")
        for flag, value, allowed in (
            ("--precision", self.precision, PRECISIONS),
            ("--strategy", self.strategy, STRATEGIES),
            ("--accelerator", self.accelerator, ACCELERATORS),
        ):
            if value not in allowed:
                raise QaieError(f"{flag} {value!r}: choose one of {', '.join(allowed)}")
        if self.qat and self.precision != "32":
            raise QaieError("--qat trains in float32 (fake quantization); drop --precision bf16-mixed")
        if self.freeze_observers_after is not None and not self.qat:
            raise QaieError("--freeze-observers-after applies to --qat only")
        if self.calibrate_size is not None and self.ranges is not None:
            raise QaieError("--calibrate-size and --ranges both set the ranges; pass one")
        if self.calibrate_size is not None:
            parse_size(self.calibrate_size, "--calibrate-size")
        for flag, value in (("--calibrate-size", self.calibrate_size), ("--ranges", self.ranges)):
            if value is None:
                continue
            if not self.qat:
                raise QaieError(f"{flag} applies to --qat only")
            if self.freeze_observers_after is None:  # ranges of the deployment size: keep them
                object.__setattr__(self, "freeze_observers_after", 0)
        if self.learn_ranges is not None:
            if not self.learn_ranges > 0:
                raise QaieError(f"--learn-ranges must be a learning rate > 0, got {self.learn_ranges!r}")
            if self.freeze_observers_after != 0:
                raise QaieError(
                    "--learn-ranges trains ranges that are set before the first step: pass --qat with "
                    "--ranges CKPT or --calibrate-size HxW"
                )
        if self.labels_free:
            if not self.qat:
                raise QaieError(
                    f"{self.data}: photos have no targets, so training on them would teach the "
                    "network its own input; use --qat --init FP32.ckpt (label-free QAT: the targets "
                    "are that network's outputs) or labelled data"
                )
            if self.init is None and self.teacher is None:
                raise QaieError(f"{self.data}: label-free QAT needs the FP32 model: pass --init FP32.ckpt")
            if self.teacher is None:
                object.__setattr__(self, "teacher", self.init)

    @property
    def crop_size(self) -> tuple[int, int]:
        """(H, W) of the training crops."""
        return self.crop if isinstance(self.crop, tuple) else (self.crop, self.crop)

    @property
    def labels_free(self) -> bool:
        """photos: data, whose batches hold the input where a target would be."""
        return self.data.partition(":")[0] == "photos"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, data)


@dataclass
class TrainResult:
    """What a `train` call did.

    Args:
        run_dir: the run folder (best.ckpt, last.ckpt, metrics.csv, config.json).
        epochs_done: epochs finished and saved in last.ckpt.
        history: the metrics.csv rows, one per epoch.
        interrupted: stopped by SIGINT; last.ckpt holds the last finished epoch.
        already_finished: resumed a run that had already done its epochs; nothing was run.
        rank: this process's global rank (DDP runs call `train` once per process).
        wall_s: seconds this call took.
    """

    run_dir: Path
    epochs_done: int
    history: list[dict[str, float]]
    rank: int = 0
    interrupted: bool = False
    already_finished: bool = False
    wall_s: float = 0.0

    @property
    def best(self) -> Path:
        return self.run_dir / "best.ckpt"

    @property
    def last(self) -> Path:
        return self.run_dir / "last.ckpt"

    @property
    def best_val_psnr(self) -> float | None:
        return max((row["val_psnr"] for row in self.history), default=None)


# --- Lightning pieces ------------------------------------------------------------------------------


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine from 1 to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class EnhanceModule(L.LightningModule):
    """The network plus its loss, validation metrics, optimizer and checkpoint header.

    Args:
        net: EnhanceNet, or its QAT-prepared GraphModule.
        model_config: the architecture (stored in checkpoints).
        config: the run's settings.
    """

    def __init__(self, net: nn.Module, model_config: ModelConfig, config: TrainConfig) -> None:
        super().__init__()
        self.net = net
        self.model_config, self.config = model_config, config
        self.loss = make_loss(config.loss)
        self.teacher = _teacher(config.teacher, model_config) if config.teacher else None
        self.train_loss = MeanMetric()  # epoch means, synchronised across DDP ranks
        self.val_psnr = MeanMetric()
        self.val_ssim = MeanMetric()
        self.learned_scales: list[torch.Tensor] = []  # --learn-ranges: set by configure_optimizers

    def targets(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target): the data's target, or the teacher's output on the input."""
        x, y = batch  # (B, 3, h, w) each, in [0, 1]
        if self.teacher is not None:
            with torch.no_grad():
                y = self.teacher(x)
        return x, y

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
        if self.config.shrink > 1:
            batch = tuple(F.avg_pool2d(t, self.config.shrink) for t in batch)
        x, y = self.targets(batch)
        loss = self.loss(self.net(x), y)
        self.train_loss.update(loss.detach(), weight=x.shape[0])
        return loss

    def on_train_batch_start(self, _batch: Any, _index: int) -> None:
        after = self.config.freeze_observers_after
        if after is not None and self.global_step == after:
            from qaie.quant.quantize import freeze_observers

            freeze_observers(self.net)

    def on_after_backward(self) -> None:
        """Under DDP, the learned scales' gradients averaged over the ranks, as DDP does the
        weights': the scales are buffers, which it does not reduce, so each rank would step on
        its own and the next forward would broadcast rank 0's, dropping the other ranks' data."""
        scales = self.learned_scales
        if not scales or self.trainer.world_size == 1:
            return
        grads = torch.cat([torch.zeros_like(s) if s.grad is None else s.grad for s in scales])
        mean = self.trainer.strategy.reduce(grads, reduce_op="mean")
        for scale, grad in zip(scales, mean.split([s.numel() for s in scales]), strict=True):
            scale.grad = grad.view_as(scale).clone()

    def on_train_batch_end(self, *_args: Any) -> None:
        if self.config.learn_ranges is not None:
            from qaie.quant.quantize import sync_learned_ranges

            sync_learned_ranges(self.net)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> None:
        x, y = self.targets(batch)  # with a teacher: fidelity to it on held-out images
        pred = self.net(x).float()
        self.val_psnr.update(psnr(pred, y))
        self.val_ssim.update(ssim(pred, y))
        self.log("val_psnr", self.val_psnr, on_epoch=True, batch_size=x.shape[0])
        self.log("val_ssim", self.val_ssim, on_epoch=True, batch_size=x.shape[0])

    def on_validation_start(self) -> None:
        if self.config.qat:  # validation must not move the quantization ranges
            from torchao.quantization.pt2e import disable_observer

            self.net.apply(disable_observer)

    def on_validation_end(self) -> None:
        after = self.config.freeze_observers_after
        if self.config.qat and (after is None or self.global_step < after):
            from torchao.quantization.pt2e import enable_observer

            self.net.apply(enable_observer)

    def configure_optimizers(self) -> dict[str, Any]:
        groups = [{"params": list(self.net.parameters())}]
        if self.config.learn_ranges is not None:
            from qaie.quant.quantize import learn_scales

            self.learned_scales = learn_scales(self.net)
            groups.append({"params": self.learned_scales, "lr": self.config.learn_ranges})
        optimizer = torch.optim.Adam(groups, lr=self.config.lr)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = self.config.warmup_epochs * max(1, total // self.config.epochs)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(warmup_cosine, warmup=warmup, total=total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, ckpt: dict[str, Any]) -> None:
        # The net's own state dict (no "net." prefix, no teacher) plus the header: a qaie checkpoint.
        state = ckpt["state_dict"]
        ckpt["state_dict"] = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
        quant = "qat" if self.config.qat else None
        ckpt.update(checkpoint.header(self.model_config, quant, to_dict(self.config)))

    def on_load_checkpoint(self, ckpt: dict[str, Any]) -> None:
        ckpt["state_dict"] = {f"net.{k}": v for k, v in ckpt["state_dict"].items()}
        if self.teacher is not None:  # not saved: it is the --teacher file
            ckpt["state_dict"] |= {f"teacher.{k}": v for k, v in self.teacher.state_dict().items()}


def _teacher(path: str, model_config: ModelConfig) -> nn.Module:
    """The frozen FP32 network whose outputs are the targets (any width: a wider teacher is fine)."""
    loaded = checkpoint.load_model(path)
    if loaded.quant is not None:
        raise QaieError(f"{path}: is a {loaded.quant} checkpoint; the teacher must be an FP32 one")
    teacher = loaded.net.eval()
    teacher.requires_grad_(False)
    return teacher


class EpochSampler(DistributedSampler):
    """Sample order from (seed, epoch), sharded over DDP ranks; passes the epoch to the dataset.

    Lightning keeps a DistributedSampler as it is and calls `set_epoch` at each epoch start.
    """

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)


class PairData(L.LightningDataModule):
    """Train/val loaders; built per process, where the DDP rank is known.

    Args:
        start_epoch: the epoch the run starts at. A resumed run's first loader (and its
            workers) is created before Lightning's first `set_epoch`, so it is set here.
    """

    def __init__(self, train_set: Any, val_set: Any, config: TrainConfig, start_epoch: int) -> None:
        super().__init__()
        self.train_set, self.val_set, self.config, self.start_epoch = train_set, val_set, config, start_epoch

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(
            self.train_set,
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            shuffle=True,
            seed=self.config.seed,
        )
        sampler.set_epoch(self.start_epoch)
        return DataLoader(
            self.train_set, self.config.batch_size, sampler=sampler, num_workers=self.config.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        batch = self.config.batch_size if self.config.val_crop else 1  # whole images differ in size
        return DataLoader(self.val_set, batch, num_workers=self.config.num_workers)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banners and tips (and warnings that do not apply) for the duration."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    ignored = (
        ".*does not have many workers.*",
        ".*exists and is not empty.*",
        ".*LeafSpec.*",
        ".*module\\(s\\) in eval mode.*",  # the distillation teacher, frozen on purpose
    )
    with warnings.catch_warnings():
        for message in ignored:
            warnings.filterwarnings("ignore", message=message)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


# --- the run ---------------------------------------------------------------------------------------


def initial_net(model_config: ModelConfig, config: TrainConfig, resume: bool = False) -> nn.Module:
    """EnhanceNet (fresh, or the --init checkpoint's weights), QAT-prepared under --qat.

    A resumed run only needs the structure (its weights come from last.ckpt): --init is not read.
    Fresh networks start from the identity: the head's weights at zero make delta 0, so the
    first output is the input. With the Kaiming init of every conv, 90-98% of the output
    pixels sit at the clamp to [0, 1] (measured at c=4 and c=32), where no gradient flows.
    """
    net = EnhanceNet(model_config)
    if config.init is None:
        nn.init.zeros_(net.head.weight)  # the bias is already zero
    elif not resume:
        loaded = checkpoint.load_model(config.init, expect=model_config)
        if loaded.quant is not None:
            raise QaieError(f"{config.init}: is a {loaded.quant} checkpoint; --init needs an FP32 one")
        net.load_state_dict(loaded.net.state_dict())
    if config.qat:
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        from qaie.quant.quantize import prepare_qat

        # Batch 2: torch.export specializes a dimension whose example is 1, even if marked dynamic.
        qat = prepare_qat(net, torch.rand(2, 3, *config.crop_size))  # size-dynamic graph
        if config.ranges is not None and not resume:
            _adopt_checkpoint_ranges(qat, config.ranges, model_config)
        elif config.calibrate_size is not None and not resume:
            _calibrate_at_size(qat, net, config)
        allow_exported_model_train_eval(qat)  # Lightning calls .train() / .eval()
        return qat
    return net


CALIBRATE_PHOTOS = 32  # training photos (at most) the observers see at --calibrate-size


def _calibrate_at_size(net: nn.Module, fp32: EnhanceNet, config: TrainConfig) -> None:
    """Ranges set from training photos at the deployment size, then frozen: the fake-quant
    model trains on the grids the deployed model will use (crops alone would set them from
    crop-sized norm statistics). PTQ's observers set them (the observer study's policy, 2.8 dB
    better than QAT's moving averages on the official weights: docs/results.md)."""
    from qaie.data.datasets import make_dataset
    from qaie.quant.calibrate import calibration_batches
    from qaie.quant.quantize import adopt_ranges, calibrate, freeze_observers, prepare_ptq

    size = parse_size(config.calibrate_size, "--calibrate-size")
    photos = len(make_dataset(config.data, "train", crop=None, held_out=True))
    images = min(photos, CALIBRATE_PHOTOS)
    observed = prepare_ptq(fp32, torch.rand(2, 3, *config.crop_size))
    calibrate(
        observed, calibration_batches(config.data, images=images, crop=size, seed=config.seed, held_out=True)
    )
    adopt_ranges(net, observed)
    freeze_observers(net)


def _adopt_checkpoint_ranges(net: nn.Module, path: str, model_config: ModelConfig) -> None:
    """The PTQ or QAT checkpoint `path`'s weights and its ranges, frozen (`_calibrate_at_size`
    without the calibration: `qaie quantize` has just made them, or a QAT run trained them). The
    ranges were set on those weights, which may differ from --init's by an exact rescaling
    (`qaie.quant.equalize`)."""
    from qaie.quant.quantize import adopt_ranges, freeze_observers

    loaded = checkpoint.load_model(path, expect=model_config)
    if loaded.quant is None:
        raise QaieError(
            f"{path}: --ranges needs a PTQ or QAT checkpoint (qaie calibrate, qaie train --qat), not FP32"
        )
    weights = {k: v for k, v in loaded.net.state_dict().items() if "activation_post_process" not in k}
    net.load_state_dict(weights, strict=False)
    adopt_ranges(net, loaded.net)
    freeze_observers(net)


def _check_resumable(path: Path, ckpt: dict[str, Any], model_config: ModelConfig, config: TrainConfig) -> int:
    """Epochs `path` holds; QaieError if the run was made with other settings than these."""
    checkpoint.checkpoint_config(path, ckpt, model_config)
    stored = ckpt.get("train_config")
    if stored is None:
        raise QaieError(f"{path}: has no training state (not written by qaie train); start a new run")
    for name, value in to_dict(config).items():
        if name not in RESUMABLE and stored.get(name) != value:
            raise QaieError(
                f"{path}: the run was trained with {name}={stored.get(name)!r}, not {value!r}; "
                "resume with the run's settings (see config.json)"
            )
    # Our checkpoints are written at the end of an epoch's validation, so epoch e is done.
    return int(ckpt["epoch"]) + 1


def train(
    model_config: ModelConfig, config: TrainConfig, run_dir: str | Path, *, resume: bool = False
) -> TrainResult:
    """Train (or resume) a run in `run_dir`: best.ckpt, last.ckpt, metrics.csv, config.json.

    Every process of a DDP run calls this; rank 0 writes the files.
    """
    from qaie.data.datasets import VAL_SEED, make_dataset

    started = time.perf_counter()
    run_dir = Path(run_dir)
    last = run_dir / "last.ckpt"
    if run_dir.exists() and not run_dir.is_dir():
        raise QaieError(f"{run_dir}: exists and is not a folder; choose another --out")
    start_epoch = 0
    if resume:
        ckpt = checkpoint.read_checkpoint(last)
        start_epoch = _check_resumable(last, ckpt, model_config, config)
        if start_epoch >= config.epochs:
            return TrainResult(run_dir, start_epoch, _saved_history(ckpt), already_finished=True)
    elif last.exists():
        raise QaieError(
            f"{run_dir}: holds a run already (last.ckpt); pass --resume to continue it or choose another --out"
        )

    held_out = config.labels_free  # photos: data, split by name for training
    train_set = make_dataset(
        config.data, "train", crop=config.crop, seed=config.seed, repeats=config.repeats, held_out=held_out
    )
    val_set = make_dataset(
        config.data,
        "val",
        crop=config.val_crop,
        seed=VAL_SEED,
        repeats=config.repeats if held_out and config.val_crop is not None else 1,
        limit=config.val_limit,
        held_out=held_out,
    )
    L.seed_everything(config.seed, workers=True, verbose=False)
    net = initial_net(model_config, config, resume)

    metrics_log = MetricsLog(run_dir / "metrics.csv")
    interrupt = DeferredInterrupt()
    checkpoints = [
        ModelCheckpoint(
            dirpath=run_dir, filename="best", monitor="val_psnr", mode="max", enable_version_counter=False
        ),
        # last.ckpt from a checkpoint of its own, written after every validation: Lightning 2.6's
        # save_last=True writes it only in epochs that improve the best, so it lagged behind.
        ModelCheckpoint(dirpath=run_dir, filename="last", enable_version_counter=False),
    ]
    with _quiet_lightning():
        trainer = L.Trainer(
            max_epochs=config.epochs,
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            precision=config.precision,
            gradient_clip_val=config.grad_clip,
            gradient_clip_algorithm="norm",
            callbacks=[metrics_log, ProgressBar(), interrupt, *checkpoints],
            plugins=[AtomicCheckpointIO()],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=run_dir,
        )
        if trainer.is_global_zero:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise QaieError(f"{run_dir}: cannot create the run folder ({err.strerror})") from err
            write_text_atomic(run_dir / "config.json", _config_json(model_config, config))
        module = EnhanceModule(net, model_config, config)
        data = PairData(train_set, val_set, config, start_epoch)
        previous_sigint = signal.getsignal(signal.SIGINT)
        if previous_sigint is not signal.SIG_IGN and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, interrupt.handler)  # ignored stays ignored (nohup, `&`)
        interrupted = False
        try:
            trainer.fit(module, datamodule=data, ckpt_path=last if resume else None)
        except SystemExit:
            # Lightning turns Ctrl-C into a graceful shutdown ending in sys.exit(1).
            if not trainer.interrupted:
                raise
            interrupted = True
        except QaieError as err:  # e.g. a corrupt image met while training
            short = _one_line(err)
            if short is err:
                raise
            raise short from err
        finally:
            signal.signal(signal.SIGINT, previous_sigint)
    # Read back what last.ckpt holds: with ddp_spawn the training ran in other processes.
    history = _saved_history(checkpoint.read_checkpoint(last)) if last.exists() else []
    done = int(history[-1]["epoch"]) if history else 0
    wall_s = time.perf_counter() - started
    return TrainResult(run_dir, done, history, trainer.global_rank, interrupted, wall_s=wall_s)


def _one_line(err: QaieError) -> QaieError:
    """The error as its one-line message. torch re-raises an error from a DataLoader worker
    with the worker's traceback as the message; its last line is the original message."""
    lines = str(err).strip().splitlines()
    if len(lines) < 2:
        return err
    return QaieError(lines[-1].removeprefix(f"{QaieError.__module__}.{QaieError.__qualname__}: "))


def _saved_history(ckpt: dict[str, Any]) -> list[dict[str, float]]:
    return list(ckpt["callbacks"][MetricsLog.__qualname__]["rows"])


def _config_json(model_config: ModelConfig, config: TrainConfig) -> str:
    quant = "qat" if config.qat else None
    data = {"model_config": to_dict(model_config), "train_config": to_dict(config), "quant": quant}
    return dumps(data)
