"""`qaie demo`: the paper's experiment end to end, measured on the deployed artifacts.

FP32 training, PTQ calibration and QAT fine-tuning from the FP32 weights; then the three
`.tflite` files a phone would run, evaluated in the LiteRT interpreter on the held-out test
split (checkpoints are selected on validation only), benchmarked, analysed layer by layer,
and reported. The run folder:

    demo.json                         the DemoConfig of the run (a rerun must match it)
    fp32/, qat/                       training runs (qaie.experiment.train): best.ckpt, last.ckpt, metrics.csv
    ptq.ckpt                          fp32/best.ckpt calibrated on training crops (PTQ)
    fp32.tflite, ptq_int8.tflite, qat_int8.tflite   (+ .json sidecars; INT8 with uint8 I/O)
    stages/evaluate.json, stages/bench.json, stages/sensitivity.json   each stage's numbers
    samples/<image>/{input,fp32,ptq_int8,qat_int8,target}.png
    results.json, report.html, report.md, figures/   (schema and layout: qaie.experiment.report)

Re-running resumes: a stage whose outputs exist and are newer than its inputs is reused
(make's rule), an interrupted training run continues from its last.ckpt, and a stage whose
inputs were rewritten is redone.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qaie.atomic import write_text_atomic
from qaie.config import ModelConfig, to_dict
from qaie.errors import QaieError
from qaie.experiment.report import ReportResult, build_report
from qaie.experiment.results import MODELS, build_results
from qaie.imageio import Size, to_uint8
from qaie.jsonio import dumps
from qaie.progress import progress
from qaie.runtime.litert import format_size

Log = Callable[[str], None]

STAGES = (
    "train FP32",
    "calibrate PTQ",
    "fine-tune QAT",
    "export .tflite",
    "evaluate on test",
    "benchmark",
    "layer sensitivity",
    "samples",
    "results and report",
)
TFLITE = {name: f"{name}.tflite" for name in MODELS}
# Everything a demo run writes into its folder (what --overwrite removes, and nothing else).
OUTPUTS = (
    "demo.json",
    "fp32",
    "qat",
    "ptq.ckpt",
    "stages",
    "samples",
    "figures",
    "results.json",
    "report.html",
    "report.md",
    *TFLITE.values(),
    *(f"{f}.json" for f in TFLITE.values()),
)


@dataclass(frozen=True)
class DemoConfig:
    """Everything a demo run depends on; stored in DIR/demo.json.

    Defaults fit about 10 minutes on 2 CPU cores with the builtin data; `demo_config(quick=True)`
    is the 1-2 minute version the test suite runs.

    Args:
        data: data spec (`qaie.data.datasets`) for the train, val and test splits.
        model: the architecture (width and the paper's ablation switches).
        seed: seeds the weights, training crops, degradations and calibration crops.
        epochs, lr, batch_size, crop, repeats, val_crop: FP32 training (`qaie.experiment.train.TrainConfig`).
        qat_epochs, qat_lr, freeze_observers_after: QAT fine-tuning from the FP32 best.ckpt
            (same batch size and crops).
        calibrate_images: PTQ calibration crops from the training split.
        export_sizes: the (H, W) signatures of each `.tflite`; larger images run in tiles.
        bench_sizes, bench_threads, bench_runs: median latency of every (size, threads) pair.
        parity_images: validation images per exported size for fake-quant vs LiteRT parity.
        sensitivity_images, sensitivity_crop: test centre crops for the per-layer PTQ sensitivity.
        samples: test images shown before/after in the report.
    """

    data: str = "builtin"
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    epochs: int = 16
    lr: float = 1e-3  # 448 steps: 1e-4 (the paper's, for 60k steps) barely leaves the identity
    batch_size: int = 16
    crop: int = 64
    repeats: int = 64
    val_crop: int | None = None  # whole validation images
    qat_epochs: int = 3
    qat_lr: float = 1e-4  # in 84 steps the paper's 1e-5 recovers less of the fake-quant loss
    freeze_observers_after: int | None = None
    calibrate_images: int = 128
    export_sizes: tuple[Size, ...] = ((256, 256),)
    bench_sizes: tuple[Size, ...] = ((256, 256), (1080, 1920))
    bench_threads: tuple[int, ...] = (1, 2)
    bench_runs: int = 3
    parity_images: int = 4
    sensitivity_images: int = 4
    sensitivity_crop: int = 128
    samples: int = 3

    def __post_init__(self) -> None:
        from qaie.quant.quantize import MIN_TRACED_SIDE

        counts = {
            "calibrate_images": self.calibrate_images,
            "bench_runs": self.bench_runs,
            "parity_images": self.parity_images,
            "sensitivity_images": self.sensitivity_images,
            "samples": self.samples,
            "qat_epochs": self.qat_epochs,
        }
        for name, value in counts.items():
            if not isinstance(value, int) or value < 1:
                raise QaieError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not self.qat_lr > 0:
            raise QaieError(f"--qat-lr must be > 0, got {self.qat_lr!r}")
        if not self.bench_threads or min(self.bench_threads) < 1:
            raise QaieError(f"--threads must be positive integers, got {self.bench_threads!r}")
        for flag, sizes in (("--export-size", self.export_sizes), ("--bench-size", self.bench_sizes)):
            if not sizes or min(min(s) for s in sizes) < MIN_TRACED_SIDE:
                raise QaieError(
                    f"{flag} needs sizes HxW with both sides at least {MIN_TRACED_SIDE}, got {sizes!r}"
                )
        if self.sensitivity_crop < MIN_TRACED_SIDE:
            raise QaieError(
                f"--sensitivity-crop must be at least {MIN_TRACED_SIDE}, got {self.sensitivity_crop}"
            )
        self.train_configs("fp32/best.ckpt")  # validates the training settings now, not minutes later

    def train_configs(self, init: str):  # -> tuple[TrainConfig, TrainConfig] (lazy import)
        """The FP32 and the QAT run's TrainConfig; QAT starts from `init` (the FP32 best.ckpt)."""
        from qaie.experiment.train import TrainConfig

        common = dict(
            data=self.data,
            batch_size=self.batch_size,
            crop=self.crop,
            repeats=self.repeats,
            seed=self.seed,
            val_crop=self.val_crop,
        )
        fp32 = TrainConfig(epochs=self.epochs, lr=self.lr, **common)
        qat = TrainConfig(
            epochs=self.qat_epochs,
            lr=self.qat_lr,
            warmup_epochs=0,  # fine-tuning trained weights: no warm-up
            qat=True,
            init=init,
            freeze_observers_after=self.freeze_observers_after,
            **common,
        )
        return fp32, qat


# The quick preset: every stage and every results.json key, in a minute or two.
QUICK = {
    "model": ModelConfig(width=8),
    "epochs": 2,
    "crop": 32,
    "repeats": 32,
    "val_crop": 64,
    "qat_epochs": 1,
    "calibrate_images": 16,
    "export_sizes": ((64, 64),),
    "bench_sizes": ((64, 64), (128, 128)),
    "bench_runs": 2,
    "parity_images": 2,
    "sensitivity_images": 2,
    "sensitivity_crop": 64,
    "samples": 2,
}


def demo_config(quick: bool = False, **overrides: object) -> DemoConfig:
    """The default (or quick) DemoConfig with the `overrides` that are not None (CLI flags)."""
    values = dict(QUICK) if quick else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return DemoConfig(**values)


@dataclass(frozen=True)
class StageLog:
    """What one stage did: `reused` its outputs, or ran for `seconds`."""

    name: str
    reused: bool
    seconds: float
    note: str = ""


@dataclass
class DemoResult:
    out_dir: Path
    results: dict
    report: ReportResult
    stages: list[StageLog]
    wall_s: float


def run_demo(
    config: DemoConfig, out_dir: str | Path, *, overwrite: bool = False, log: Log | None = None
) -> DemoResult:
    """Run (or resume) the demo in `out_dir`; `log` receives one line per stage.

    A folder made with another DemoConfig is refused unless `overwrite`, which removes that
    run's outputs (only the names in OUTPUTS) and starts over.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _claim(out_dir, config, overwrite)
    run = _Run(config, out_dir, log or (lambda _line: None))
    run.all_stages()
    results = json.loads((out_dir / "results.json").read_text())
    return DemoResult(out_dir, results, run.report_result, run.stages, time.perf_counter() - started)


# --- the run folder -----------------------------------------------------------------------------


def _config_json(config: DemoConfig) -> dict:
    return json.loads(json.dumps(to_dict(config)))  # tuples as lists, as read back from disk


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def _claim(out_dir: Path, config: DemoConfig, overwrite: bool) -> None:
    """Make `out_dir` this config's run folder: new, empty, or a run of the same config."""
    record = out_dir / "demo.json"
    wanted = _config_json(config)
    if out_dir.exists() and not out_dir.is_dir():
        raise QaieError(f"{out_dir}: exists and is not a folder; choose another --out")
    if record.is_file():
        try:
            stored = json.loads(record.read_text()).get("config")
        except (json.JSONDecodeError, AttributeError):
            stored = None
        if stored == wanted:
            return
        if not overwrite:
            old, new = _flat(stored or {}), _flat(wanted)
            key = next((k for k in new if old.get(k) != new[k]), "config")
            raise QaieError(
                f"{out_dir}: holds a demo run made with {key}={old.get(key)!r}, not {new.get(key)!r}; "
                "rerun with its settings, pass --overwrite to start over, or choose another --out"
            )
        for name in OUTPUTS:
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise QaieError(
            f"{out_dir}: not empty and not a qaie demo folder (no demo.json); choose a new or empty --out"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise QaieError(f"{out_dir}: cannot create the run folder ({err.strerror})") from err
    write_text_atomic(record, dumps({"config": wanted}))


def _fresh(outputs: Iterable[Path], inputs: Iterable[Path]) -> bool:
    """make's rule: every output exists and none is older than any input."""
    outputs, inputs = list(outputs), list(inputs)
    if not all(p.is_file() for p in outputs):
        return False
    newest_input = max((p.stat().st_mtime_ns for p in inputs), default=0)
    return min(p.stat().st_mtime_ns for p in outputs) >= newest_input


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, dumps(data))


def _pixels(image: torch.Tensor):  # -> np.ndarray uint8 (H, W, 3)
    """(3, H, W) in [0, 1] -> uint8 (H, W, 3), rounded as a camera would store it."""
    return to_uint8(image.permute(1, 2, 0))


class _Run:
    """The stages of one demo run, in order; each reuses its outputs when they are fresh."""

    def __init__(self, config: DemoConfig, out_dir: Path, log: Log) -> None:
        self.config, self.dir, self.log = config, out_dir, log
        self.stages: list[StageLog] = []
        self.fp32_best = out_dir / "fp32" / "best.ckpt"
        self.qat_best = out_dir / "qat" / "best.ckpt"
        self.ptq = out_dir / "ptq.ckpt"
        self.ckpt = {"fp32": self.fp32_best, "ptq_int8": self.ptq, "qat_int8": self.qat_best}
        self.tflite = {name: out_dir / file for name, file in TFLITE.items()}
        self.stage_json = {s: out_dir / "stages" / f"{s}.json" for s in ("evaluate", "bench", "sensitivity")}
        self.report_result: ReportResult | None = None

    def all_stages(self) -> None:
        steps = (
            self.train_fp32,
            self.calibrate_ptq,
            self.finetune_qat,
            self.export,
            self.evaluate,
            self.bench,
            self.sensitivity,
            self.samples,
            self.results_and_report,
        )
        for index, (name, step) in enumerate(zip(STAGES, steps, strict=True), 1):
            self.log(f"[{index}/{len(STAGES)}] {name}")
            started = time.perf_counter()
            reused, note = step()
            seconds = time.perf_counter() - started
            self.stages.append(StageLog(name, reused, seconds, note))
            done = "reused" if reused else f"done in {seconds:.0f} s"
            self.log(f"[{index}/{len(STAGES)}] {name}: {done}" + (f"; {note}" if note else ""))

    # --- 1-3: training and calibration ------------------------------------------------------------

    def _train(self, qat: bool) -> tuple[bool, str]:
        from qaie.experiment.train import train

        fp32_config, qat_config = self.config.train_configs(str(self.fp32_best.resolve()))
        run_dir = self.dir / ("qat" if qat else "fp32")
        last = run_dir / "last.ckpt"
        if qat and last.exists() and not _fresh([last], [self.fp32_best]):
            shutil.rmtree(run_dir)  # fine-tuned from an FP32 model that has since been rewritten
        result = train(self.config.model, qat_config if qat else fp32_config, run_dir, resume=last.exists())
        if result.interrupted:
            raise KeyboardInterrupt
        return result.already_finished, f"best val PSNR {result.best_val_psnr:.2f} dB"

    def train_fp32(self) -> tuple[bool, str]:
        return self._train(qat=False)

    def finetune_qat(self) -> tuple[bool, str]:
        return self._train(qat=True)

    def calibrate_ptq(self) -> tuple[bool, str]:
        if _fresh([self.ptq], [self.fp32_best]):
            return True, ""
        from qaie.quant.calibrate import calibrate_checkpoint

        c = self.config
        calibrate_checkpoint(
            self.fp32_best, c.data, self.ptq, images=c.calibrate_images, crop=c.crop, seed=c.seed
        )
        return False, f"{c.calibrate_images} training crops"

    # --- 4-6: the deployed artifacts ----------------------------------------------------------------

    def export(self) -> tuple[bool, str]:
        from qaie.quant.checkpoint import load_model
        from qaie.quant.export import export_tflite
        from qaie.runtime.litert import sidecar_path

        reused = True
        for name in MODELS:
            out, ckpt = self.tflite[name], self.ckpt[name]
            if _fresh([out, sidecar_path(out)], [ckpt]):
                continue
            reused = False
            self.log(f"      {name}: {ckpt.relative_to(self.dir)} -> {out.name}")
            export_tflite(
                load_model(ckpt).net,
                "fp32" if name == "fp32" else "int8",
                list(self.config.export_sizes),
                out,
                uint8_io=name != "fp32",  # as shipped: camera pixels in, display pixels out
                source_checkpoint=str(ckpt.relative_to(self.dir)),
            )
        return reused, ", ".join(format_size(s) for s in self.config.export_sizes)

    def evaluate(self) -> tuple[bool, str]:
        out = self.stage_json["evaluate"]
        if _fresh([out], [*self.tflite.values(), self.ptq, self.qat_best]):
            return True, ""
        from qaie.data.datasets import VAL_SEED, make_dataset
        from qaie.experiment.evaluate import evaluate, tflite_predictor
        from qaie.experiment.parity import run_parity
        from qaie.quant.tflite_ops import inspect_tflite

        c = self.config
        test = make_dataset(c.data, "test", crop=None, seed=VAL_SEED)
        data: dict = {"test_images": len(test)}
        for name in MODELS:
            result = evaluate(
                tflite_predictor(self.tflite[name]), test, model=name, data=c.data, split="test"
            )
            entry = {"psnr": result.psnr, "ssim": result.ssim}
            if name != "fp32":
                entry["float_ops"] = inspect_tflite(self.tflite[name]).float_ops
                parity = run_parity(self.ckpt[name], self.tflite[name], c.data, limit=c.parity_images)
                entry |= {
                    "parity_psnr": parity.overall.psnr,
                    "parity_max_abs_lsb": parity.overall.max_abs_lsb,
                }
            data[name] = entry
            data |= {"input_psnr": result.input_psnr, "input_ssim": result.input_ssim}
        _write_json(out, data)
        return False, "  ".join(f"{name} {data[name]['psnr']:.2f} dB" for name in MODELS)

    def bench(self) -> tuple[bool, str]:
        out = self.stage_json["bench"]
        if _fresh([out], self.tflite.values()):
            return True, ""
        from qaie.runtime.bench import bench

        c = self.config
        data = {}
        for name in progress(MODELS, desc="benchmark", unit="model", leave=False):
            report = bench(
                self.tflite[name], list(c.bench_sizes), list(c.bench_threads), runs=c.bench_runs, warmup=1
            )
            latency: dict[str, dict[str, float]] = {}
            for row in report.rows:
                latency.setdefault(row.size, {})[str(row.threads)] = row.median_ms
            data[name] = {"latency_ms": latency, "rows": [dataclasses.asdict(r) for r in report.rows]}
        _write_json(out, data)
        return False, ""

    # --- 7-9: analysis and report ---------------------------------------------------------------------

    def sensitivity(self) -> tuple[bool, str]:
        out = self.stage_json["sensitivity"]
        if _fresh([out], [self.fp32_best]):
            return True, ""
        from qaie.data.datasets import VAL_SEED, make_dataset
        from qaie.quant import calibrate
        from qaie.quant.checkpoint import load_model
        from qaie.quant.sensitivity import layer_sensitivity

        c = self.config
        test = make_dataset(
            c.data, "test", crop=c.sensitivity_crop, seed=VAL_SEED, limit=c.sensitivity_images
        )
        pairs = [test[i] for i in range(len(test))]
        x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])  # (N, 3, s, s)
        batches = calibrate.calibration_batches(c.data, c.calibrate_images, c.crop, seed=c.seed)
        result = layer_sensitivity(load_model(self.fp32_best).net, batches, x, y)
        _write_json(out, dataclasses.asdict(result) | {"images": len(test), "crop": c.sensitivity_crop})
        worst = result.layers[0]
        return False, f"{len(result.layers)} layers; worst {worst['layer']} (-{worst['psnr_drop']:.2f} dB)"

    def _sample_names(self) -> list[str]:
        from qaie.data.datasets import VAL_SEED, make_dataset

        c = self.config
        return make_dataset(c.data, "test", crop=None, seed=VAL_SEED, limit=c.samples).names

    def _sample_paths(self) -> list[Path]:
        from qaie.experiment.report import SAMPLE_COLUMNS

        root = self.dir / "samples"
        return [root / name / f"{col}.png" for name in self._sample_names() for col in SAMPLE_COLUMNS]

    def samples(self) -> tuple[bool, str]:
        if _fresh(self._sample_paths(), self.tflite.values()):
            return True, ""
        from qaie.data.datasets import VAL_SEED, make_dataset
        from qaie.experiment.evaluate import tflite_predictor
        from qaie.imageio import write_image

        c = self.config
        test = make_dataset(c.data, "test", crop=None, seed=VAL_SEED, limit=c.samples)
        predictors = {name: tflite_predictor(self.tflite[name]) for name in MODELS}
        for i in progress(range(len(test)), desc="samples", unit="image", leave=False):
            x, y = test[i]  # (3, H, W) each
            folder = self.dir / "samples" / test.names[i]
            folder.mkdir(parents=True, exist_ok=True)
            images = {"input": _pixels(x), "target": _pixels(y)}
            images |= {name: predict(x[None]) for name, predict in predictors.items()}
            for col, pixels in images.items():
                write_image(folder / f"{col}.png", pixels)
        return False, f"{len(test)} test images"

    def results_and_report(self) -> tuple[bool, str]:
        results_path = self.dir / "results.json"
        reports = [self.dir / "report.html", self.dir / "report.md"]
        curves = [self.dir / run / "metrics.csv" for run in ("fp32", "qat")]
        inputs = [*self.stage_json.values(), *self.tflite.values(), *curves]
        if _fresh([results_path, *reports], [*inputs, *self._sample_paths()]):
            self.report_result = ReportResult(
                reports[0], reports[1], sorted((self.dir / "figures").glob("*.png"))
            )
            return True, ""
        ev, bench, sens = (json.loads(p.read_text()) for p in self.stage_json.values())
        c = self.config
        results = build_results(
            c.data, c.seed, c.model, ev, bench, sens,
            {name: path.stat().st_size for name, path in self.tflite.items()}, _config_json(c),
        )  # fmt: skip
        _write_json(results_path, results)
        self.report_result = build_report(self.dir)
        return False, f"{self.report_result.html.name}, {self.report_result.markdown.name}"
