"""`qaie bench`: one fresh process per (size, threads), the rows it reports, its errors; --whole."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from qaie.cli import main
from qaie.runtime.bench import BenchRow, CompareRow, WholeRow, peak_rss_mb


def test_bench_json_rows(tmp_path, tiny_tflite, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", str(tiny_tflite), "--size", "96x96,80x60,200x300", "--threads", "1,2"]
    assert main([*args, "--runs", "3", "--warmup", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == str(tiny_tflite) and report["file_bytes"] == tiny_tflite.stat().st_size
    assert report["int8"] is False and report["cpus"] >= 1
    rows = report["rows"]
    assert [(r["size"], r["threads"]) for r in rows] == [
        (s, t) for s in ("96x96", "80x60", "200x300") for t in (1, 2)
    ]
    assert {tuple(r) for r in rows} == {tuple(f.name for f in dataclasses.fields(BenchRow))}
    modes = {r["size"]: (r["mode"], r["tile"], r["tiles"]) for r in rows}
    assert modes["96x96"] == ("direct", "96x96", 1)
    assert modes["80x60"] == ("padded", "96x96", 1)
    assert modes["200x300"][:2] == ("tiled", "192x256") and modes["200x300"][2] == 4
    for r in rows:
        assert r["runs"] == 3 and r["warmup"] == 1
        assert 0 < r["min_ms"] <= r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["max_ms"]
        assert r["peak_rss_mb"] > r["model_rss_mb"] >= 0  # growth of the high-water mark: 0 if tiny
    table = capsys.readouterr().out
    assert "tiled 192x256 x4" in table and table.count("\n") == 2 + len(rows)


def test_bench_json_to_stdout_defaults_to_exported_sizes(tiny_tflite, capsys):
    assert main(["bench", str(tiny_tflite), "--runs", "1", "--warmup", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["size"], r["threads"], r["mode"]) for r in rows] == [
        ("96x96", 1, "direct"),
        ("192x256", 1, "direct"),
    ]


def test_bench_takes_n_for_an_nxn_size(tiny_tflite, capsys):
    """(Bad arguments: test_cli_errors.)"""
    assert main(["bench", str(tiny_tflite), "--runs", "1", "--warmup", "0", "--size", "96"]) == 0
    assert "96x96" in capsys.readouterr().out


def test_bench_int8_model(tiny_int8_tflite, capsys):
    assert (
        main(["bench", str(tiny_int8_tflite), "--size", "96x96", "--runs", "1", "--warmup", "0", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["int8"] is True and [r["mode"] for r in report["rows"]] == ["direct"]


def test_bench_compare_alternates_in_one_process(tmp_path, tiny_tflite, tiny_int8_tflite, capsys):
    out = tmp_path / "compare.json"
    args = ["bench", str(tiny_int8_tflite), "--compare", str(tiny_tflite), "--threads", "1,2"]
    assert main([*args, "--runs", "3", "--warmup", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == str(tiny_int8_tflite) and report["other"] == str(tiny_tflite)
    assert len(report["load_avg"]) == 3
    rows = report["rows"]
    assert [(r["size"], r["threads"]) for r in rows] == [("96x96", 1), ("96x96", 2)]  # first shared size
    assert {tuple(r) for r in rows} == {tuple(f.name for f in dataclasses.fields(CompareRow))}
    for r in rows:
        assert r["runs"] == 3 and r["warmup"] == 1 and r["median_ms"] > 0 and r["other_median_ms"] > 0
        # the ratio of the unrounded medians: within what the recorded ones' rounding to 0.001 ms
        # allows (0.2% on this tiny model's sub-millisecond times), itself rounded to 0.0001
        a, b = r["median_ms"], r["other_median_ms"]
        assert (a - 5e-4) / (b + 5e-4) - 5e-5 <= r["ratio"] <= (a + 5e-4) / (b - 5e-4) + 5e-5
        assert 0 < r["ratio_p10"] <= r["paired_ratio"] <= r["ratio_p90"]
    table = capsys.readouterr().out
    assert "A/B" in table and "load average" in table and table.count("\n") == 4 + len(rows)


def test_bench_compare_pads_smaller_frames(tiny_tflite, capsys):
    """(A bad OTHER file: test_cli_errors.)"""
    code = main(["bench", str(tiny_tflite), "--compare", str(tiny_tflite), "--size", "80x60", "--runs", "1"])
    assert code == 0 and "80x60" in capsys.readouterr().out


def test_bench_whole_photo_beside_one_pass(tmp_path, whole_photo_models, capsys):
    """Numbers are of a width-4 test network; only their consistency is checked, not timing."""
    out = tmp_path / "whole.json"
    args = ["bench", str(whole_photo_models["qat"]), "--whole", "256x384", "--threads", "1,2"]
    assert main([*args, "--runs", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == str(whole_photo_models["qat"]) and report["int8"] is True
    assert len(report["load_avg"]) == 3
    rows = report["rows"]
    assert [(r["size"], r["threads"]) for r in rows] == [("256x384", 1), ("256x384", 2)]
    assert {tuple(r) for r in rows} == {tuple(f.name for f in dataclasses.fields(WholeRow))}
    for r in rows:
        assert r["runs"] == 3 and r["warmup"] == 1  # one warm-up by default
        assert r["window"] == "128x128" and r["one_pass_size"] == "128x128" and r["calls"] > 6
        assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert 0 < r["one_pass_p10_ms"] <= r["one_pass_median_ms"] <= r["one_pass_p90_ms"]
        assert r["s_per_mp"] == pytest.approx(r["median_ms"] / 1000 / (256 * 384 / 1e6), rel=1e-3)
        assert r["one_pass_s_per_mp"] == pytest.approx(
            r["one_pass_median_ms"] / 1000 / (128 * 128 / 1e6), rel=1e-3
        )
        assert r["one_pass_calls"] == 6  # 256x384 has the pixels of six 128x128 passes
        assert 0 < r["ratio_p10"] <= r["ratio"] <= r["ratio_p90"]
    table = capsys.readouterr().out
    assert "whole/one" in table and "128x128 x6 " in table and table.count("\n") == 2 + len(rows)
    row = rows[0]
    assert f"{row['ratio']:.2f} ({row['ratio_p10']:.2f}-{row['ratio_p90']:.2f})" in table


def test_bench_whole_needs_stage_signatures(tiny_tflite, capsys):
    assert main(["bench", str(tiny_tflite), "--whole", "256x384", "--runs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"qaie bench: error: {tiny_tflite}: no stage signatures (exported with --no-stages), so no "
        "whole-photo path to time; re-export without --no-stages, or time tiles with --size HxW"
    )


def test_bench_whole_refuses_an_exported_size(whole_photo_models, capsys):
    assert main(["bench", str(whole_photo_models["qat"]), "--whole", "128x128"]) == 2
    assert "an exported size, which runs in one pass" in capsys.readouterr().err


def test_bench_whole_takes_no_size_or_compare(capsys):
    """Checked before the file is opened."""
    for extra in (["--size", "96x96"], ["--compare", "other.tflite"]):
        assert main(["bench", "any.tflite", "--whole", "256x384", *extra]) == 2
        assert capsys.readouterr().err.strip() == (
            "qaie bench: error: --whole times one photo size of one file; it takes no --size or --compare"
        )


def test_a_child_reports_its_own_peak_not_its_parents():
    """getrusage's maxrss outlives vfork + exec, so a child of this (large) process would report
    this process's peak as its own: bench's per-configuration memory and the 12 MP memory test
    read `peak_rss_mb` in the child, which must not."""
    ballast = np.ones(512 * 2**20, np.uint8)  # 512 MiB touched here
    code = "from qaie.runtime.bench import peak_rss_mb; print(peak_rss_mb())"
    child = float(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    )
    assert peak_rss_mb() > 512 + child and ballast[-1] == 1
