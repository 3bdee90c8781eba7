"""Every `from selfalign... import name` in the package, the benchmarks and the data scripts names something that
exists. Many of them sit inside functions (imported when a stage or benchmark runs), where a moved module or a
renamed function would only fail at run time, an hour into a benchmark."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("selfalign/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("data/*.py")])


def selfalign_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of each `from selfalign... import name` in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "selfalign":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def test_the_scan_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from selfalign.run.results import Manifest, Nothing\n")
    assert selfalign_imports(source) == [(2, "selfalign.run.results", "Manifest"),
                                         (2, "selfalign.run.results", "Nothing")]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_selfalign_import_resolves(path):
    missing = []
    for line, module, name in selfalign_imports(path):
        try:
            found = importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{path.relative_to(ROOT)}:{line}: {module}: {e}")
            continue
        if not hasattr(found, name):
            try:
                importlib.import_module(f"{module}.{name}")  # a submodule: `from selfalign.run import children`
            except ImportError:
                missing.append(f"{path.relative_to(ROOT)}:{line}: {module} has no {name}")
    assert not missing, "\n".join(missing)
