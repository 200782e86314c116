import json
from pathlib import Path

import numpy as np
import pytest
from browser import load_page
from PIL import Image

from qaie.errors import QaieError
from qaie.experiment.report import SAMPLE_COLUMNS, build_report
from qaie.experiment.results import MODELS


def _fake_run(run: Path, with_samples: bool = True) -> None:
    """A run folder with the shape `qaie demo` writes, filled with synthetic numbers and images."""
    rng = np.random.default_rng(0)
    results = {
        "data": "builtin",
        "seed": 0,
        "width": 8,
        "params": 12345,
        "macs_per_pixel": 4321.0,
        "input_psnr": 20.1,
        "input_ssim": 0.71,
        "versions": {"torch": "2.13.0"},
        "sensitivity": [
            {"layer": f"layer{i}", "psnr_drop": float(d)} for i, d in enumerate([0.3, 0.01, 1.2])
        ],
    }
    for i, name in enumerate(MODELS):
        results[name] = {
            "psnr": 24.0 - i * 0.3,
            "ssim": 0.8,
            "delta_psnr_vs_fp32": -i * 0.3,
            "file_bytes": 100_000,
            "latency_ms": {"64x64": {"1": 3.0 + i, "2": 2.0 + i}, "128x128": {"1": 9.0, "2": 6.0}},
        }
        if name != "fp32":  # (fp32: a results.json from before latency_runs_as)
            results[name] |= {"parity_psnr": 50.0, "float_ops": 0}
            results[name]["latency_runs_as"] = {
                "64x64": {"mode": "direct", "tile": "64x64", "calls": 1},
                "128x128": {"mode": "stages", "tile": "64x64", "calls": 27},
            }
    (run / "results.json").write_text(json.dumps(results))
    for name in ("fp32", "qat"):
        (run / name).mkdir()
        rows = ["epoch,step,train_loss,val_psnr,val_ssim"] + [
            f"{e},{e * 10},{1 - e / 10},{20 + e},0.7"
            for e in range(1, 4)  # as qaie.experiment.train writes
        ]
        (run / name / "metrics.csv").write_text("\n".join(rows) + "\n")
    if with_samples:
        sample = run / "samples" / "img0"
        sample.mkdir(parents=True)
        base = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        for col in SAMPLE_COLUMNS:
            noisy = np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(sample / f"{col}.png")


def test_report_has_every_section_and_markdown_links_exist(tmp_path: Path) -> None:
    _fake_run(tmp_path)
    result = build_report(tmp_path)
    names = {f.name for f in result.figures}
    assert names == {
        "training_curves.png",
        "quality.png",
        "sample_img0.png",
        "sensitivity.png",
        "latency.png",
    }
    md = result.markdown.read_text()
    assert "| QAT INT8 | 23.40 | 0.8000 | -0.60 | 50.0 | 0 |" in md
    assert "| 6 ms whole photo @ 128x128 in 64x64 windows, 2 thr |" in md  # what was timed
    assert "| 6 ms @ 128x128, 2 thr |" in md  # fp32: not known, not claimed
    for fig in result.figures:
        assert f"figures/{fig.name}" in md
        assert fig.stat().st_size > 1000
    assert not list(tmp_path.glob("**/*.tmp*"))


def test_report_html_loads_in_headless_chromium(tmp_path: Path) -> None:
    _fake_run(tmp_path)
    page = load_page(build_report(tmp_path).html)
    assert page.has_results_table
    assert page.images_total == 5
    assert page.images_loaded == page.images_total


def test_report_without_results_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QaieError, match=r"results\.json: not found"):
        build_report(tmp_path)
    (tmp_path / "results.json").write_text("{broken")
    with pytest.raises(QaieError, match="not valid JSON"):
        build_report(tmp_path)
