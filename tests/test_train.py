"""Training on Lightning: tiny real runs on the builtin data (width 4, 32-px crops, seconds each).

One uninterrupted 3-epoch run is the reference: a run resumed after 1 epoch, a run killed
with SIGKILL and resumed, and one stopped with SIGINT and resumed must all end with its metrics.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_process import qaie_process

from qaie.config import ModelConfig
from qaie.data.datasets import VAL_SEED, make_dataset
from qaie.errors import QaieError
from qaie.experiment.evaluate import evaluate
from qaie.experiment.train import QAT_LR, TrainConfig, TrainResult, train, warmup_cosine
from qaie.quant.checkpoint import load_model, read_checkpoint
from qaie.quant.predict import checkpoint_predictor

TINY = ModelConfig(width=4)
CONFIG = TrainConfig(
    data="builtin", epochs=3, batch_size=4, lr=2e-3, crop=32, repeats=2, val_crop=32, accelerator="cpu"
)
# The same run from the command line (the CLI must build exactly CONFIG).
FLAGS = ["--data", "builtin", "--width", "4", "--batch-size", "4", "--lr", "2e-3", "--crop", "32"]
FLAGS += ["--repeats", "2", "--val-crop", "32", "--accelerator", "cpu"]
METRICS = ("epoch", "step", "train_loss", "val_psnr", "val_ssim", "lr")


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def assert_same_metrics(got: list[dict], want: list[dict]) -> None:
    assert [int(r["epoch"]) for r in got] == [int(r["epoch"]) for r in want]
    for a, b in zip(got, want, strict=True):
        for key in METRICS:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), (key, a, b)


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The uninterrupted 3-epoch run."""
    return train(TINY, CONFIG, tmp_path_factory.mktemp("reference") / "run")


def test_training_lowers_the_loss_and_logs_each_epoch(reference: TrainResult) -> None:
    rows = read_csv(reference.run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and list(rows[0]) == [*METRICS, "time"]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert_same_metrics(rows, reference.history)
    steps = [int(r["step"]) for r in rows]
    assert steps == [4, 8, 12]  # 7 builtin photos x 2 repeats in batches of 4
    # Warm-up over epoch 1, cosine to 0 at the last step.
    assert float(rows[0]["lr"]) == pytest.approx(CONFIG.lr)
    assert float(rows[2]["lr"]) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(0, 4, 12) == 0.25 and warmup_cosine(8, 4, 12) == pytest.approx(0.5)


def test_checkpoints_reload_with_their_config_and_reproduce_validation(reference: TrainResult) -> None:
    best_epoch = max(reference.history, key=lambda r: r["val_psnr"])["epoch"]
    best, last = read_checkpoint(reference.best), read_checkpoint(reference.last)
    assert best["epoch"] + 1 == best_epoch and last["epoch"] + 1 == 3
    assert best["quant"] is None and TrainConfig.from_dict(best["train_config"]) == CONFIG

    loaded = load_model(reference.best)
    assert loaded.config == TINY and loaded.quant is None and not loaded.net.training
    # Validation metrics recomputed from each reloaded checkpoint equal those the trained
    # in-memory network logged at that checkpoint's epoch.
    val = make_dataset("builtin", "val", crop=32, seed=VAL_SEED)
    for path, epoch in ((reference.best, best_epoch), (reference.last, 3)):
        logged = reference.history[epoch - 1]
        result = evaluate(checkpoint_predictor(path), val, model=path.stem, data="builtin", split="val")
        assert result.psnr == pytest.approx(logged["val_psnr"], abs=1e-4), path
        assert result.ssim == pytest.approx(logged["val_ssim"], abs=1e-5), path
    assert not list(reference.run_dir.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_resume_continues_the_epoch_count_to_the_same_metrics(reference: TrainResult, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = train(TINY, dataclasses.replace(CONFIG, epochs=1), run)
    assert first.epochs_done == 1 and len(read_csv(run / "metrics.csv")) == 1
    # Resumed with DataLoader workers: their dataset copies must see the resumed epoch too.
    resumed = train(TINY, dataclasses.replace(CONFIG, num_workers=2), run, resume=True)
    assert resumed.epochs_done == 3
    assert_same_metrics(read_csv(run / "metrics.csv"), reference.history)

    again = train(TINY, CONFIG, run, resume=True)
    assert again.already_finished and again.epochs_done == 3


def test_run_folder_guards(reference: TrainResult, tmp_path: Path) -> None:
    with pytest.raises(QaieError, match="--resume"):
        train(TINY, CONFIG, reference.run_dir)  # would clobber a run
    with pytest.raises(QaieError, match="loss="):
        train(TINY, dataclasses.replace(CONFIG, loss="l1"), reference.run_dir, resume=True)
    with pytest.raises(QaieError, match="width 4 but --width 8"):
        train(ModelConfig(width=8), CONFIG, reference.run_dir, resume=True)
    with pytest.raises(QaieError, match="not found"):
        train(TINY, CONFIG, tmp_path / "nothing", resume=True)


def test_config_validation_names_the_flag() -> None:
    with pytest.raises(QaieError, match="--loss"):
        dataclasses.replace(CONFIG, loss="nope")
    with pytest.raises(QaieError, match="--batch-size"):
        dataclasses.replace(CONFIG, batch_size=0)
    with pytest.raises(QaieError, match="bf16"):
        dataclasses.replace(CONFIG, qat=True, precision="bf16-mixed")


@pytest.mark.slow
def test_sigkill_then_resume_ends_like_an_uninterrupted_run(reference: TrainResult, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = qaie_process("train", *FLAGS, "--epochs", "3", "--out", str(run))
    wait_for(run / "last.ckpt", proc)  # epoch 1 saved; kill inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_checkpoint(run / "last.ckpt")["epoch"] in (0, 1)  # a whole checkpoint, never half
    resumed = train(TINY, CONFIG, run, resume=True)
    assert resumed.epochs_done == 3
    assert_same_metrics(read_csv(run / "metrics.csv"), reference.history)


@pytest.mark.slow
def test_sigint_stops_cleanly_with_last_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # Many epochs: a tiny run can finish its last ones before the signal lands (seen on CPU).
    proc = qaie_process("train", *FLAGS, "--epochs", "200", "--out", str(run))
    wait_for(run / "last.ckpt", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "continue with --resume" in stderr and "Traceback" not in stderr
    epochs = read_checkpoint(run / "last.ckpt")["epoch"] + 1
    assert epochs < 200 and len(read_csv(run / "metrics.csv")) == epochs
    assert not list(run.glob(".*tmp*"))  # resuming it is test_sigkill_then_resume's business


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    """Lightning's DDP strategy (gloo) from the command line: 2 processes, each half the data."""
    run = tmp_path / "run"
    env = {**os.environ, "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    proc = qaie_process(
        "train", *FLAGS, "--epochs", "1", "--out", str(run), "--devices", "2", "--strategy", "ddp", env=env
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = read_csv(run / "metrics.csv")
    assert len(rows) == 1 and int(rows[0]["step"]) == 2  # 14 crops over 2 ranks in batches of 4
    assert read_checkpoint(run / "best.ckpt")["train_config"]["devices"] == 2
    assert out.count("best val PSNR") == 1  # only rank 0 reports


# Runs `qaie` recording, on each rank, the learned scales after every step (argv: prefix, qaie args).
SCALES_PROBE = """
import json, sys
from qaie.cli import main
from qaie.experiment import train
from qaie.quant.quantize import LearnedScaleFakeQuantize

step_end = train.EnhanceModule.on_train_batch_end

def record(self, *args):
    step_end(self, *args)
    learned = [m for m in self.net.modules() if isinstance(m, LearnedScaleFakeQuantize) and m.learning]
    with open(f"{sys.argv[1]}.rank{self.global_rank}", "a") as f:
        f.write(json.dumps([float(m.scale) for m in learned]) + "\\n")

train.EnhanceModule.on_train_batch_end = record
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_ddp_learns_one_set_of_scales(reference: TrainResult, tmp_path: Path) -> None:
    """--learn-ranges under DDP: the scales (buffers, which DDP does not reduce) step on the
    gradient averaged over both ranks, so each rank holds the same scales after every step."""
    probe, record = tmp_path / "probe.py", tmp_path / "scales"
    probe.write_text(SCALES_PROBE)
    args = ["train", *FLAGS, "--epochs", "1", "--out", str(tmp_path / "run"), "--devices", "2"]
    args += ["--strategy", "ddp", "--qat", "--init", str(reference.best), "--lr", str(QAT_LR)]
    args += ["--calibrate-size", "64x64", "--learn-ranges", "1e-3"]
    env = {**os.environ, "MASTER_PORT": str(29500 + (os.getpid() + 1) % 1000)}
    proc = subprocess.run(
        [sys.executable, str(probe), str(record), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    ranks = [
        [json.loads(line) for line in Path(f"{record}.rank{r}").read_text().splitlines()] for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 2 and len(ranks[0][0]) > 10  # 2 steps, every activation
    assert ranks[0] == ranks[1]  # rank 1's own step would differ (seen: 0.0068 against 0.0078)
    assert ranks[0][0] != ranks[0][1]  # and they learn


@pytest.mark.slow
def test_qat_fine_tunes_an_fp32_checkpoint_into_a_reloadable_graph(
    reference: TrainResult, tmp_path: Path
) -> None:
    config = dataclasses.replace(
        CONFIG, epochs=1, lr=QAT_LR, qat=True, init=str(reference.best), freeze_observers_after=2
    )
    result = train(TINY, config, tmp_path / "qat")
    ckpt = read_checkpoint(result.best)
    assert ckpt["quant"] == "qat" and TrainConfig.from_dict(ckpt["train_config"]) == config
    frozen = [v.item() for k, v in ckpt["state_dict"].items() if k.endswith("observer_enabled")]
    assert frozen and not any(frozen)  # observers frozen after step 2, and saved so

    loaded = load_model(result.best)
    assert loaded.quant == "qat" and isinstance(loaded.net, torch.fx.GraphModule)
    # The reloaded fake-quant graph reproduces the logged validation PSNR. Not bit for bit:
    # training validates in batches, evaluate image by image, and a float difference in the
    # last bit can move a fake-quant rounding by one step (seen: 2e-4 dB on CI, 2.7e-3 dB here).
    val = make_dataset("builtin", "val", crop=32, seed=VAL_SEED)
    fake_quant = evaluate(torch.no_grad()(loaded.net), val, model="qat", data="builtin", split="val")
    assert fake_quant.psnr == pytest.approx(result.best_val_psnr, abs=5e-3)  # seen: 2.7e-3 dB, loaded machine
    # evaluate runs the quantized reference model (qaie.quant.reference: what gets exported, computed exactly):
    # it is the model QAT trained.
    converted = evaluate(checkpoint_predictor(result.best), val, model="qat", data="builtin", split="val")
    assert converted.psnr == pytest.approx(fake_quant.psnr, abs=0.05)
