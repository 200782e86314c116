"""`qaie demo --quick` end to end (once per module), its resume rules, and `qaie report`."""

import json
import os
from pathlib import Path

import pytest
from browser import load_page

from qaie.cli import main
from qaie.config import ModelConfig
from qaie.errors import QaieError
from qaie.experiment.demo import STAGES, DemoResult, _claim, demo_config, run_demo
from qaie.experiment.report import SAMPLE_COLUMNS
from qaie.experiment.results import INT8_KEYS, MODEL_KEYS, MODELS, TOP_KEYS, build_results, entry_keys


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    return run_demo(demo_config(quick=True), tmp_path_factory.mktemp("demo") / "run")


def _files(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_results_json_has_every_key(demo: DemoResult) -> None:
    results = json.loads((demo.out_dir / "results.json").read_text())
    assert results == demo.results
    assert results.keys() == TOP_KEYS.keys() | set(MODELS)  # the schema, exactly
    assert {"torch", "torchao", "litert-torch", "ai-edge-litert"} <= results["versions"].keys()
    assert results["data"] == "builtin" and results["width"] == 8
    config = demo_config(quick=True)
    for name in MODELS:
        entry = results[name]
        assert entry.keys() == (
            MODEL_KEYS.keys() if name == "fp32" else MODEL_KEYS.keys() | INT8_KEYS.keys()
        ), name
        assert 5 < entry["psnr"] < 60 and 0 < entry["ssim"] <= 1
        assert entry["delta_psnr_vs_fp32"] == pytest.approx(entry["psnr"] - results["fp32"]["psnr"])
        assert entry["file_bytes"] == (demo.out_dir / f"{name}.tflite").stat().st_size
        sizes = {f"{h}x{w}" for h, w in config.bench_sizes}
        assert entry["latency_ms"].keys() == entry["latency_runs_as"].keys() == sizes
        for per_thread in entry["latency_ms"].values():
            assert per_thread.keys() == {str(t) for t in config.bench_threads}
            assert all(ms > 0 for ms in per_thread.values())
    for name in ("ptq_int8", "qat_int8"):
        assert results[name]["float_ops"] == 0, name
        parity = results[name]  # identical outputs: infinite PSNR, null in JSON
        assert parity["parity_max_abs_lsb"] == 0 or parity["parity_psnr"] >= 45, name


def test_build_results_checks_the_schema() -> None:
    """Fast (no demo run): build_results builds exactly the schema's keys, and refuses stage JSON
    with a key the schema lacks or without one it has."""
    ev: dict = {"test_images": 2, "input_psnr": 20.0, "input_ssim": 0.5}
    for name in MODELS:
        ev[name] = {"psnr": 25.0, "ssim": 0.8}
        if name != "fp32":
            ev[name] |= {"float_ops": 0, "parity_psnr": None, "parity_max_abs_lsb": 0}
    row = {"size": "96x96", "threads": 1, "mode": "stages", "tile": "64x64", "tiles": 12, "median_ms": 3.0}
    bench = {name: {"latency_ms": {"96x96": {"1": 3.0}}, "rows": [row]} for name in MODELS}
    args = ("builtin", 0, ModelConfig(width=4), ev, bench, {"layers": []}, dict.fromkeys(MODELS, 10), {})
    results = build_results(*args)
    assert results.keys() == TOP_KEYS.keys() | set(MODELS)
    assert [set(results[name]) for name in MODELS] == [entry_keys(name) for name in MODELS]
    assert results["fp32"]["latency_runs_as"] == {"96x96": {"mode": "stages", "tile": "64x64", "calls": 12}}
    ev["qat_int8"]["extra"] = 1
    del ev["fp32"]["ssim"]
    with pytest.raises(
        ValueError, match=r"\['fp32'\]: missing ssim; .*\['qat_int8'\]: not in the schema extra"
    ):
        build_results(*args)


def test_sensitivity_covers_the_layers_worst_first(demo: DemoResult) -> None:
    rows = demo.results["sensitivity"]
    layers = [r["layer"] for r in rows]
    assert len(layers) == len(set(layers))
    assert {"input", "output", "enc2.conv_a", "head", "bottleneck.norm"} <= set(layers)
    drops = [r["psnr_drop"] for r in rows]
    assert drops == sorted(drops, reverse=True)


def test_run_folder_has_training_logs_artifacts_and_samples(demo: DemoResult) -> None:
    out = demo.out_dir
    for run in ("fp32", "qat"):
        assert (out / run / "metrics.csv").read_text().count("\n") == 1 + {"fp32": 2, "qat": 1}[run]
    for name in MODELS:
        assert (out / f"{name}.tflite").is_file() and (out / f"{name}.tflite.json").is_file()
    samples = sorted(p for p in (out / "samples").iterdir())
    assert len(samples) == demo_config(quick=True).samples
    for sample in samples:
        assert {p.stem for p in sample.glob("*.png")} == set(SAMPLE_COLUMNS)
    assert [s.name for s in demo.stages] == list(STAGES)
    assert not any(s.reused for s in demo.stages)
    assert not list(out.glob("**/.*tmp*"))


def test_report_loads_in_headless_chromium_with_every_image(demo: DemoResult) -> None:
    page = load_page(demo.report.html)
    assert page.has_results_table
    # training curves, quality, one grid per sample, sensitivity, latency
    assert page.images_total == 4 + demo_config(quick=True).samples
    assert page.images_loaded == page.images_total


def test_rerun_reuses_every_stage_and_rewrites_nothing(demo: DemoResult, capsys) -> None:
    before = _files(demo.out_dir)
    assert main(["demo", "--quick", "--out", str(demo.out_dir)]) == 0
    err = capsys.readouterr().err
    assert err.count(": reused") == len(STAGES), err
    assert _files(demo.out_dir) == before


def test_a_rewritten_input_redoes_only_the_stages_after_it(demo: DemoResult) -> None:
    bench = demo.out_dir / "stages" / "bench.json"
    os.utime(bench)  # as if the benchmark had just been rerun
    result = run_demo(demo_config(quick=True), demo.out_dir)
    redone = [s.name for s in result.stages if not s.reused]
    assert redone == ["results and report"]
    assert (demo.out_dir / "results.json").stat().st_mtime_ns >= bench.stat().st_mtime_ns


def test_report_command_rebuilds_the_report(demo: DemoResult, capsys) -> None:
    """From results.json alone, the same report the demo wrote."""
    pages = {name: (demo.out_dir / name).read_text() for name in ("report.html", "report.md")}
    for name in pages:
        (demo.out_dir / name).unlink()
    assert main(["report", str(demo.out_dir)]) == 0
    out = capsys.readouterr().out
    assert "| QAT INT8 |" in out
    assert {name: (demo.out_dir / name).read_text() for name in pages} == pages


def test_a_run_folder_of_other_settings_is_refused(demo: DemoResult, capsys) -> None:
    assert main(["demo", "--quick", "--epochs", "3", "--out", str(demo.out_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epochs=2, not 3" in err and "--overwrite" in err


def test_overwrite_removes_only_the_previous_runs_outputs(tmp_path: Path) -> None:
    _claim(tmp_path, demo_config(quick=True, epochs=99), overwrite=False)
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "last.ckpt").write_text("old")
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    config = demo_config(quick=True)
    with pytest.raises(QaieError, match="epochs=99"):
        _claim(tmp_path, config, overwrite=False)
    _claim(tmp_path, config, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "notes.txt"]
    assert json.loads((tmp_path / "demo.json").read_text())["config"]["epochs"] == config.epochs


def test_bad_settings_fail_before_any_work() -> None:
    with pytest.raises(QaieError, match="--qat-epochs"):
        demo_config(quick=True, qat_epochs=0)
    with pytest.raises(QaieError, match="--export-size"):
        demo_config(quick=True, export_sizes=((8, 8),))
