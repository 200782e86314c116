"""The package's layers, read from the import graph of src/qaie (every import, also those
inside functions): imports only go down the layers, nothing imports the CLI, there are no
cycles, and the runtime never imports torch."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

import qaie

SRC = Path(qaie.__file__).parent
# Each layer may import itself and the layers listed; "base" is the top-level helper modules.
MAY_IMPORT = {
    "base": {"base"},
    "runtime": {"base", "runtime"},
    "nn": {"base", "nn"},
    "data": {"base", "data"},
    "quant": {"base", "runtime", "nn", "data", "quant"},
    "experiment": {"base", "runtime", "nn", "data", "quant", "experiment"},
    "api": {"base", "runtime", "nn", "quant", "api"},
    "web": {"base", "runtime", "nn", "quant", "api", "web"},
    "cli": {"base", "runtime", "nn", "data", "quant", "experiment", "web", "cli"},
}
SUBPACKAGES = ("runtime", "nn", "data", "quant", "experiment")
TOP = {"cli": "cli", "api": "api", "web": "web"}
TORCH = {"torch", "torchao", "lightning", "litert_torch", "torchmetrics"}


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "api"  # the package itself: qaie/__init__.py
    if parts[0] in SUBPACKAGES:
        return parts[0]
    return TOP.get(parts[0], "base")


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names), wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from qaie.x import y`
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


GRAPH = _graph()


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go up (or sideways) the layers."""
    return [
        f"{m} ({_layer(m)}) imports {dep}"
        for m, deps in sorted(graph.items())
        for dep in sorted(deps)
        if _layer(dep) not in MAY_IMPORT[_layer(m)]
    ]


def test_imports_go_down_the_layers() -> None:
    assert len(GRAPH) > 30
    assert _upward(GRAPH) == []


def test_nothing_imports_the_cli() -> None:
    """No module outside the CLI package imports any module of it (qaie.cli.__main__ imports main)."""
    outside = [m for m, deps in GRAPH.items() if _layer(m) != "cli" and any(_layer(d) == "cli" for d in deps)]
    assert outside == []


def test_no_import_cycles() -> None:
    try:
        tuple(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as err:
        pytest.fail("import cycle: " + " -> ".join(err.args[1]))


def test_runtime_never_imports_torch() -> None:
    runtime = [p for p in SRC.rglob("*.py") if _layer(_module(p)) in ("runtime", "base")]
    assert len(runtime) >= 6
    bad = {
        _module(p): sorted(i for i in _imports(p) if i.split(".")[0] in TORCH)
        for p in runtime
        if any(i.split(".")[0] in TORCH for i in _imports(p))
    }
    assert bad == {}


def test_the_layering_check_sees_a_bad_import() -> None:
    """Control: the runtime reaching up into quant, and quant into experiment, are caught."""
    graph = {"qaie.runtime.enhance": {"qaie.quant.predict"}, "qaie.quant.export": {"qaie.experiment.demo"}}
    assert len(_upward(graph)) == 2
    assert _upward({"qaie.quant.export": {"qaie.runtime.litert", "qaie.imageio"}}) == []


def test_the_lite_rt_path_loads_no_torch(tmp_path: Path) -> None:
    """`import qaie` and enhancing with the shipped .tflite, in a fresh process."""
    code = (
        "import sys, numpy as np, qaie\n"
        "assert 'torch' not in sys.modules and 'ai_edge_litert' not in sys.modules\n"
        "out = qaie.enhance(np.full((96, 128, 3), 100, np.uint8))\n"
        "assert out.shape == (96, 128, 3), out.shape\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(TORCH)!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
