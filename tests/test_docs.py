"""The documentation names what the code has now.

Every dotted name of the package in README.md and docs/*.md must resolve: `qaie.x.y` anywhere
(in backticks or not), and a short name in backticks that starts with one of the package's
module names (`quant.predict.open_model`, `checkpoint.save_model`) as that module's full name.
File names (`qaie.tflite`, `results.json`, `data.py`) are not names. A name resolves when the
longest importable module prefix imports and the rest are attributes of it. And the help texts
of the commands name every model format and data spec the commands take.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

import qaie
from qaie.cli import main
from qaie.data.datasets import SPEC_SYNTAX

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SRC = Path(qaie.__file__).parent

# A final component that makes a dotted word a file name, not a Python name.
FILE_EXTENSIONS = {
    "py", "md", "json", "csv", "html", "txt", "toml", "yaml", "yml", "cfg", "tflite", "onnx", "pte",
    "ckpt", "pt", "pth", "png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp", "gif", "zip", "gz",
}  # fmt: skip
FULL = re.compile(r"(?<![\w./-])qaie(?:\.[A-Za-z_]\w*)+")  # not inside a path or URL
SHORT = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)")  # a dotted name opening a code span


def _module_names() -> dict[str, str]:
    """Each module's last name -> its full name (`predict` -> `qaie.quant.predict`)."""
    names: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if parts[:2] == ("qaie", "cli") and len(parts) > 2:
            continue  # the CLI's command modules (cli.quantize, ...) would make quant.quantize ambiguous
        names.setdefault(parts[-1], []).append(".".join(parts))
    return {short: full[0] for short, full in names.items() if len(full) == 1}  # unambiguous only


MODULES = _module_names()


def dotted_names(text: str) -> set[str]:
    """The package's dotted names in a Markdown text, as full names."""
    found = {m.group(0) for m in FULL.finditer(text)}
    for m in SHORT.finditer(text):
        first, _, rest = m.group(1).partition(".")
        if first in MODULES:
            found.add(f"{MODULES[first]}.{rest}")
    return {name for name in found if name.rsplit(".", 1)[-1].lower() not in FILE_EXTENSIONS}


def resolves(name: str) -> bool:
    """Import the longest importable module prefix of `name`, then look up the rest in it. A
    class or function must be named where it is defined: a plain module that merely imports it
    (`train.AtomicCheckpointIO`, defined in callbacks) does not count; a package's __init__
    re-exporting it (`qaie.load`) does."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            owner, obj = obj, getattr(obj, attr)
            imported = inspect.ismodule(owner) and not hasattr(owner, "__path__")
            defined = inspect.isclass(obj) or inspect.isfunction(obj)
            if imported and defined and obj.__module__ != owner.__name__:
                return False
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_dotted_name_in_the_docs_resolves(doc: Path) -> None:
    broken = [name for name in sorted(dotted_names(doc.read_text())) if not resolves(name)]
    assert not broken, f"{doc.name} names what the code does not have (now): {', '.join(broken)}"


def test_the_docs_check_sees_a_stale_name() -> None:
    """Control: moved and misspelt names are caught; file names and URLs are not names."""
    text = (
        "`train.AtomicCheckpointIO`, qaie.export._xnnpack_friendly, `quant.predict.open_model`, "
        "`qaie.runtime.enhance.nothing_here`; qaie.tflite, `results.json`, `data.py`, "
        "https://example.com/qaie.git, src/qaie.cli, `np.float32`"
    )
    names = dotted_names(text)
    assert names == {
        "qaie.experiment.train.AtomicCheckpointIO",
        "qaie.export._xnnpack_friendly",
        "qaie.quant.predict.open_model",
        "qaie.runtime.enhance.nothing_here",
    }
    assert [name for name in sorted(names) if resolves(name)] == ["qaie.quant.predict.open_model"]
    assert len(DOCS) >= 5 and all(doc.is_file() for doc in DOCS)


# --- help texts --------------------------------------------------------------------------------

DATA_COMMANDS = [
    "train",
    "evaluate",
    "calibrate",
    "parity",
    "demo",
    "figure",
    "export",
]  # export: --calibrate
FORMATS = {
    "evaluate": (".tflite", ".onnx", ".pte", ".ckpt"),
    "parity": (".tflite", ".onnx", ".pte"),
    "enhance": (".tflite", ".onnx", ".pte", ".ckpt"),
    "figure": (".tflite", ".onnx", ".pte"),
    "export": (".tflite", ".onnx", ".pte"),
    "inspect": (".tflite", ".onnx", ".pte"),
    "bench": (".tflite", ".onnx"),
}


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("command", DATA_COMMANDS)
def test_data_help_names_every_spec(command: str, capsys) -> None:
    assert SPEC_SYNTAX in _help(command, capsys)


@pytest.mark.parametrize("command", list(FORMATS))
def test_model_help_names_every_format(command: str, capsys) -> None:
    text = _help(command, capsys)
    assert [suffix for suffix in FORMATS[command] if suffix not in text] == []
