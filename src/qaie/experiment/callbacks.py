"""Lightning callbacks of `qaie train`: atomic checkpoint writes, the metrics CSV, the
progress bar and Ctrl-C at batch boundaries. Apart from the training loop (`train`) so each
reads alone; `train.train` wires them in.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from tqdm import tqdm

from qaie.atomic import atomic_path, write_text_atomic
from qaie.progress import progress

CSV_FIELDS = ("epoch", "step", "train_loss", "val_psnr", "val_ssim", "lr", "time")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same folder, then renamed (qaie.atomic).

    Lightning's own save goes through an fsspec transaction that writes the temporary file in
    the system temp folder and moves it: across file systems that move is a copy, and a kill
    during it leaves a truncated checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class MetricsLog(Callback):
    """One row per epoch in RUN_DIR/metrics.csv, kept in step with last.ckpt.

    The rows live in this callback's checkpoint state and the CSV is rewritten from them, so a
    resumed run's CSV holds exactly the epochs its checkpoint holds.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = []
        self.elapsed = 0.0  # seconds of training before this process started
        self.started = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()
        self._write(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before ModelCheckpoint's hook (Lightning orders checkpoint callbacks last).
        train_loss = float(pl_module.train_loss.compute())  # all ranks: it synchronises
        pl_module.train_loss.reset()
        self.rows.append(
            {
                "epoch": trainer.current_epoch + 1,
                "step": trainer.global_step,
                "train_loss": train_loss,
                "val_psnr": float(trainer.callback_metrics["val_psnr"]),
                "val_ssim": float(trainer.callback_metrics["val_ssim"]),
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "time": round(self._seconds(), 2),
            }
        )
        self._write(trainer)

    def _seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    def _write(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        text = io.StringIO()
        writer = csv.DictWriter(text, CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, text.getvalue())

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "elapsed": self._seconds()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows, self.elapsed = list(state["rows"]), float(state["elapsed"])


class ProgressBar(Callback):
    """tqdm on stderr (rank 0): one bar per epoch with loss and images/s, then validation scores."""

    def __init__(self) -> None:
        self.bars: dict[str, tqdm] = {}  # "epoch", "val"
        self.postfix: dict[str, str] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._open(trainer, "epoch", trainer.num_training_batches, leave=True)
        self.images, self.started = 0, time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, _i: int
    ) -> None:
        self.images += len(batch[0]) * trainer.world_size
        rate = self.images / max(1e-9, time.perf_counter() - self.started)
        self.postfix = {"loss": f"{float(outputs['loss']):.4f}", "img/s": f"{rate:.1f}"}
        self._update("epoch")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._open(trainer, "val", sum(trainer.num_val_batches), leave=False)

    def on_validation_batch_end(self, trainer: L.Trainer, *_args: Any) -> None:
        self._update("val")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close("val")
        metrics = trainer.callback_metrics
        self.postfix |= {
            "val_psnr": f"{float(metrics['val_psnr']):.2f}",
            "val_ssim": f"{float(metrics['val_ssim']):.4f}",
        }
        self._update("epoch", steps=0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close("epoch")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        for name in list(self.bars):
            self._close(name)

    def _open(self, trainer: L.Trainer, name: str, total: int, leave: bool) -> None:
        if trainer.is_global_zero:
            desc = (
                f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}" if name == "epoch" else "validate"
            )
            self.bars[name] = progress(total=total, desc=desc, unit="batch", leave=leave)

    def _update(self, name: str, steps: int = 1) -> None:
        if name in self.bars:
            if name == "epoch":
                self.bars[name].set_postfix(self.postfix, refresh=False)
            self.bars[name].update(steps)

    def _close(self, name: str) -> None:
        if name in self.bars:
            self.bars.pop(name).close()


class DeferredInterrupt(Callback):
    """Ctrl-C takes effect at the next batch boundary: the SIGINT handler only records it, and
    the next batch hook raises KeyboardInterrupt there, where Lightning's graceful shutdown
    takes over. Raised at an arbitrary point, it could cut a progress bar's or checkpoint
    writer's bookkeeping in half (seen: a traceback from tqdm.__del__). A second Ctrl-C
    interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def _check(self, *_args: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt

    on_train_batch_start = on_train_batch_end = _check
    on_validation_batch_start = on_validation_batch_end = _check
