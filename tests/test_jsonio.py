"""Strict JSON out (no Infinity/NaN) and progress that stays readable in a log file."""

from __future__ import annotations

import io
import json
import math

import pytest

from qaie.experiment.parity import ParityReport, ParityStats
from qaie.jsonio import dumps
from qaie.progress import progress


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_null() -> None:
    data = {"psnr": math.inf, "rows": [1.5, -math.inf, {"x": math.nan}], "pair": (2, 3), "name": "a"}
    assert _strict(dumps(data)) == {
        "psnr": None,
        "rows": [1.5, None, {"x": None}],
        "pair": [2, 3],
        "name": "a",
    }
    with pytest.raises(ValueError, match="Infinity"):
        _strict(json.dumps(data))  # control: the standard library writes Infinity


def test_parity_of_identical_outputs_is_null_and_flagged() -> None:
    same = ParityStats(math.inf, 0.0, 0, 12)
    report = ParityReport("a.ckpt", "a.tflite", "fp32", 1, same, {"96x96": same})
    data = _strict(dumps(report.to_json()))
    assert data["parity_psnr"] is None and data["identical"] is True
    assert data["sizes"]["96x96"]["psnr"] is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_is_a_few_plain_lines() -> None:
    log = io.StringIO()
    for _ in progress(range(5000), desc="evaluate", unit="image", file=log):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 1 <= len(lines) <= 3, lines
    assert lines[-1].startswith("evaluate: 100%") and "5000/5000" in lines[-1]


def test_progress_on_a_terminal_redraws_in_place() -> None:
    tty = _Terminal()
    for _ in progress(range(50), desc="evaluate", file=tty, mininterval=0):
        pass
    assert tty.getvalue().count("\r") > 10
