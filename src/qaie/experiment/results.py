"""results.json of a demo run: what it holds, how it is built, and how it is read back.

`qaie demo` builds it from its stages' JSON (`build_results`); the report reads it
(`read_results`) and shows only what is here, so `qaie report DIR` needs nothing else.
Strict JSON (qaie.jsonio): a PSNR of identical images is null.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qaie.config import ModelConfig, to_dict
from qaie.errors import QaieError

MODELS = ("fp32", "ptq_int8", "qat_int8")
RESULTS_FILE = "results.json"

# The schema: top-level keys, and the keys of each model's entry (results[name]); build_results
# checks what it builds against it (check_schema).
TOP_KEYS = {
    "data": "the data spec the run trained and tested on",
    "seed": "training seed",
    "width": "the network's base width c",
    "model_config": "the full ModelConfig",
    "params": "parameter count",
    "macs_per_pixel": "multiply-accumulates per input pixel",
    "test_images": "images in the test split",
    "input_psnr": "PSNR of the degraded input against the target (the baseline), dB",
    "input_ssim": "SSIM of the input",
    "sensitivity": "per-layer PTQ sensitivity, worst first (qaie.quant.sensitivity)",
    "convention": "the metric convention (qaie.nn.metrics.CONVENTION)",
    "versions": "Python and the stack",
    "demo_config": "the DemoConfig of the run",
}
MODEL_KEYS = {
    "psnr": "test PSNR of the deployed .tflite, dB",
    "ssim": "test SSIM",
    "delta_psnr_vs_fp32": "psnr minus the FP32 file's",
    "latency_ms": "{HxW: {threads: median ms}} from qaie bench",
    "latency_runs_as": "{HxW: {mode, tile, calls}}: what each latency timed (qaie.runtime.bench.frame_mode): "
    "direct (one pass of an exported size), padded (one pass of tile), tiled (calls tiles of tile) or "
    "stages (the whole-photo path in tile windows, calls interpreter calls)",
    "file_bytes": "size of the .tflite",
}
INT8_KEYS = {
    "float_ops": "ops computed in float (qaie inspect); 0 for integer-only",
    "parity_psnr": "PSNR of the .tflite against the quantized PyTorch reference, dB",
    "parity_max_abs_lsb": "largest pixel difference in that comparison",
}
VERSION_KEYS = ("qaie", "python", "torch", "torchao", "litert-torch", "ai-edge-litert")


def build_results(
    data: str,
    seed: int,
    model: ModelConfig,
    evaluation: dict,
    bench: dict,
    sensitivity: dict,
    file_bytes: dict[str, int],
    demo_config: dict,
) -> dict[str, Any]:
    """results.json from the demo stages' JSON (evaluate, bench, sensitivity) and the files."""
    from qaie.nn.metrics import CONVENTION
    from qaie.nn.model import EnhanceNet, macs_per_pixel, param_count
    from qaie.versions import versions

    ev = evaluation
    results: dict[str, Any] = {
        "data": data,
        "seed": seed,
        "width": model.width,
        "model_config": to_dict(model),
        "params": param_count(EnhanceNet(model)),
        "macs_per_pixel": macs_per_pixel(model),
        "test_images": ev["test_images"],
        "input_psnr": ev["input_psnr"],
        "input_ssim": ev["input_ssim"],
    }
    for name in MODELS:
        results[name] = {
            **ev[name],
            "delta_psnr_vs_fp32": ev[name]["psnr"] - ev["fp32"]["psnr"],
            "latency_ms": bench[name]["latency_ms"],
            "latency_runs_as": {
                row["size"]: {"mode": row["mode"], "tile": row["tile"], "calls": row["tiles"]}
                for row in bench[name]["rows"]
            },
            "file_bytes": file_bytes[name],
        }
    all_versions = versions()
    results |= {
        "sensitivity": sensitivity["layers"],
        "convention": CONVENTION,
        "versions": {k: all_versions[k] for k in VERSION_KEYS},
        "demo_config": demo_config,
    }
    check_schema(results)
    return results


def entry_keys(name: str) -> set[str]:
    """The schema's keys of results[name]: MODEL_KEYS, and INT8_KEYS for the INT8 models."""
    return MODEL_KEYS.keys() | (set() if name == "fp32" else INT8_KEYS.keys())


def check_schema(results: dict[str, Any]) -> None:
    """Raise ValueError if the keys of `results` differ from the schema above: what a demo stage
    writes and the schema have drifted apart (a bug in qaie, not a user error)."""
    found = [("results", results.keys(), TOP_KEYS.keys() | set(MODELS))]
    found += [(f"results[{name!r}]", results.get(name, {}).keys(), entry_keys(name)) for name in MODELS]
    problems = [
        f"{where}: {what} {', '.join(sorted(keys))}"
        for where, have, want in found
        for what, keys in (("missing", want - have), ("not in the schema", have - want))
        if keys
    ]
    if problems:
        raise ValueError(
            "results.json does not match its schema (qaie.experiment.results): " + "; ".join(problems)
        )


def read_results(run_dir: Path) -> dict[str, Any]:
    """RUN_DIR/results.json, or a one-line error saying what to run."""
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise QaieError(f"{path}: not found; run `qaie demo --out {run_dir}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise QaieError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
