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
FULL = re.compile(r"(?<![\w./\"-])qaie(?:\.[A-Za-z_]\w*)+")  # not inside a path, URL or string
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


SOURCES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("source", SOURCES, ids=[str(p.relative_to(SRC)) for p in SOURCES])
def test_every_dotted_name_and_path_in_the_source_resolves(source: Path) -> None:
    """Docstrings and comments name modules and paths the way the docs do (`qaie.quant.split`,
    `reference.exact_statistics`, `tests/test_x.py`): they must exist too."""
    text = source.read_text()
    broken = [name for name in sorted(dotted_names(text)) if not resolves(name)] + missing_paths(text)
    assert not broken, f"{source.relative_to(SRC)} names what the code does not have: {', '.join(broken)}"


def test_the_docs_check_sees_a_stale_name() -> None:
    """Control: moved and misspelt names are caught; file names, URLs and strings are not names."""
    text = (
        "`train.AtomicCheckpointIO`, qaie.export._xnnpack_friendly, `quant.predict.open_model`, "
        "`qaie.runtime.enhance.nothing_here`; qaie.tflite, `results.json`, `data.py`, "
        'https://example.com/qaie.git, src/qaie.cli, `np.float32`, "qaie.io.scale"'
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


# --- paths, test names and links -----------------------------------------------------------------

TESTS = REPO / "tests"
REPO_PATH = re.compile(r"(?<![\w/.-])((?:src/qaie|tests|tools|docs|\.ci)/[\w./-]*\w)(?:::(\w+))?")
TEST_NAME = re.compile(r"(?<![\w/])test_\w+")  # a test function's or test module's name
LINK = re.compile(r"\]\(([^)\s]+)\)")  # a Markdown link's target


def _defines(path: Path, name: str) -> bool:
    return path.is_file() and re.search(rf"^\s*def {name}\(", path.read_text(), re.M) is not None


def missing_paths(text: str) -> list[str]:
    """Repository paths (`src/qaie/...`, `tests/x.py::test_y`, `tools/...`) that do not exist, or
    whose `::name` the file does not define."""
    missing = []
    for m in REPO_PATH.finditer(text):
        path, name = REPO / m.group(1), m.group(2)
        if not path.exists() or (name and not _defines(path, name)):
            missing.append(m.group(0))
    return missing


def unknown_tests(text: str) -> list[str]:
    """`test_*` names that are neither a test module nor a function defined in tests/."""
    sources = list(TESTS.glob("*.py"))
    return sorted(
        name
        for name in {m.group(0) for m in TEST_NAME.finditer(text)}
        if not (TESTS / f"{name}.py").is_file() and not any(_defines(p, name) for p in sources)
    )


def heading_anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (outside code blocks)."""
    anchors, fenced = set(), False
    for line in doc.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def broken_links(doc: Path, text: str) -> list[str]:
    """Relative links of `doc` whose file does not exist or whose #anchor is no heading of it."""
    broken = []
    for target in (m.group(1) for m in LINK.finditer(text)):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        file, _, anchor = target.partition("#")
        path = (doc.parent / file) if file else doc
        if not path.exists() or (anchor and anchor not in heading_anchors(path)):
            broken.append(target)
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_path_test_and_link_in_the_docs_exists(doc: Path) -> None:
    text = doc.read_text()
    assert not missing_paths(text), f"{doc.name} names paths the repository does not have"
    assert not unknown_tests(text), f"{doc.name} names tests that do not exist"
    assert not broken_links(doc, text), f"{doc.name} has broken links"


def test_the_docs_check_sees_a_stale_path_test_or_link() -> None:
    """Control: each kind of stale mention is caught, the live ones are not."""
    text = (
        "`src/qaie/runtime/litert.py`, tests/test_api.py::test_no_such_test, tools/nothing.py, "
        "`test_enhance`, `test_12_megapixel_photo_stays_under_memory_budget`, test_gone_away, "
        "[a](docs/results.md#latency-and-memory), [b](docs/results.md#no-such-heading), [c](docs/gone.md), "
        "[d](https://example.com/x#y)"
    )
    assert missing_paths(text) == ["tests/test_api.py::test_no_such_test", "tools/nothing.py", "docs/gone.md"]
    assert unknown_tests(text) == ["test_gone_away", "test_no_such_test"]
    assert broken_links(REPO / "README.md", text) == ["docs/results.md#no-such-heading", "docs/gone.md"]


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
