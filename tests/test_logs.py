"""What a user's log holds: `qaie demo` and `qaie export` with their output redirected to a
file print qaie's own lines only: no third-party warnings, native log lines or escape codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# qaie's lines: demo stages, progress lines, indented details, the results table, summaries
QAIE_LINE = re.compile(r"\[\d+/\d+\] |[\w .,/-]+: +\d+%\||\s|\| |\|---|wrote |/\S+: results\.json")
GLOG_LINE = re.compile(r"^[IWEF]\d{4} ")  # absl / glog / torch._logging: I1204 12:00:00.0 file.cc:1]


def run_logged(args: list[str], log: Path) -> str:
    """`qaie ARGS` in a fresh process, stdout and stderr into `log` (not a terminal)."""
    # a user's environment: not --debug, nor the log level TensorFlow sets in this test process
    env = {k: v for k, v in os.environ.items() if k not in ("QAIE_DEBUG", "TF_CPP_MIN_LOG_LEVEL")}
    with log.open("wb") as out:
        done = subprocess.run([sys.executable, "-m", "qaie.cli", *args], stdout=out, stderr=out, env=env)
    text = log.read_text(errors="replace")
    assert done.returncode == 0, text[-3000:]
    return text


def assert_only_qaie_lines(text: str) -> None:
    assert "\x1b" not in text, "terminal escape codes in a log file"
    for line in text.splitlines():
        assert not GLOG_LINE.match(line) and "WARNING" not in line and "Warning" not in line, line
        assert QAIE_LINE.match(line), f"not a qaie line: {line!r}"


def test_demo_log_is_qaie_lines_only(tmp_path: Path) -> None:
    text = run_logged(["demo", "--quick", "--out", str(tmp_path / "run")], tmp_path / "demo.log")
    assert "[9/9] results and report: done" in text
    assert_only_qaie_lines(text)


@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_export_log_is_qaie_lines_only(quant_models, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"m{suffix}"
    args = ["export", str(quant_models.ckpt["qat"]), "--format", "int8", "--out", str(out)]
    text = run_logged(args + (["--size", "128x128"] if suffix == ".tflite" else []), tmp_path / "export.log")
    assert out.is_file() and text.startswith(f"wrote {out}")
    assert_only_qaie_lines(text)


def test_debug_shows_the_converters_own_lines(quant_models, tmp_path: Path) -> None:
    """The hidden lines are one flag away: --debug passes native output through."""
    out = tmp_path / "m.tflite"
    args = ["--debug", "export", str(quant_models.ckpt["qat"]), "--format", "int8", "--size", "64x64"]
    text = run_logged([*args, "--out", str(out), "--no-stages"], tmp_path / "export.log")
    assert "Estimated count of arithmetic ops" in text
