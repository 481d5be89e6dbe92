"""The house's rules (docs/architecture.md), checked on the source: the import-linter contract,
no import circles (imports inside functions count), at most 15 entries at the top of the
package, no module over 800 lines, and imports inside functions only where they keep start-up
light."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "attnviz"
# Libraries that cost start-up time or are optional: a function may import these (or a module
# of ours that imports one at its top) when it runs.
HEAVY = {"torch", "matplotlib", "transformers", "pandas", "tokenizers", "tiktoken", "rich",
         "huggingface_hub", "safetensors", "IPython", "dask", "distributed", "PIL", "isal",
         "jinja2", "gguf", "webbrowser", "typer"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """The modules an import statement names (``from pkg import module`` names the module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert node.level == 0, "attnviz uses absolute imports only"
    return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
            for a in node.names]


def imports(path: Path, known: set[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(modules imported at the top, [(line, modules) of each import inside a function])."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside: list[tuple[int, list[str]]] = []
    nested = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in nested:
                    nested.add(id(node))
                    inside.append((node.lineno, imported(node, known)))
    top = [name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
           and id(node) not in nested for name in imported(node, known)]
    return top, inside


def test_the_import_linter_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stdout[-3000:]
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") >= 4


def test_no_import_circles_counting_imports_inside_functions():
    grimp = pytest.importorskip("grimp")  # installed with import-linter (the test extra)
    graph = grimp.build_graph("attnviz")
    circles = sorted((a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                     if graph.chain_exists(importer=b, imported=a))
    assert circles == []


def test_the_top_of_the_package_reads_as_the_architecture():
    entries = [p.name for p in PACKAGE.iterdir()
               if (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))
               or (p.is_dir() and (p / "__init__.py").exists())]
    assert len(entries) <= 15, sorted(entries)
    too_long = {name: n for name, path in modules().items()
                if (n := len(path.read_text(encoding="utf-8").splitlines())) > 800}
    assert too_long == {}


def test_imports_inside_functions_only_keep_start_up_light():
    """A function imports a module only when importing it at the top would load a heavy
    library (``HEAVY``; numpy too for the modules ``import attnviz`` loads), or in the
    commands and the API (``attnviz --help`` and ``import attnviz`` load none of them)."""
    found = modules()
    known = set(found)
    tops = {name: imports(path, known)[0] for name, path in found.items()}
    loads: dict[str, set[str]] = {}

    def heavy_roots(name: str, seen: frozenset = frozenset()) -> set[str]:
        """The heavy libraries importing ``name`` loads (through its top-level imports)."""
        if name in loads:
            return loads[name]
        root = name.split(".")[0]
        if root != "attnviz":
            return {root} & (HEAVY | {"numpy"})
        found_here: set[str] = set()
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for target in tops.get(name, []) + parents:
            if target not in seen and target != name:
                found_here |= heavy_roots(target, seen | {name})
        loads[name] = found_here
        return found_here

    code = "import sys, attnviz; print(' '.join(m for m in sys.modules if m.startswith('attnviz')))"
    light_path = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.split())
    wrong = []
    for name, path in found.items():
        if name.startswith("attnviz.cli") or name in ("attnviz", "attnviz.api"):
            continue
        heavy = HEAVY | ({"numpy"} if name in light_path else set())
        for line, targets in imports(path, known)[1]:
            if not any(heavy_roots(t) & heavy for t in targets):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(targets)}")
    assert wrong == [], "import these at the top of the module:\n" + "\n".join(wrong)


@pytest.mark.parametrize("old, new", [("analysis", "analyses.attention"),
                                      ("attention", "core.attention"),
                                      ("plot", "pictures.plot"), ("reporting", "display.report_contents")])
def test_old_import_paths_name_the_moved_modules(old, new):
    code = (f"import importlib, attnviz.{old} as old, attnviz.{new} as new; "
            f"print(old is new, new.__spec__.name, importlib.reload(new) is new)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", f"attnviz.{new}", "True"]


def test_the_book_classes_and_analyze_keep_their_documented_paths():
    from attnviz.analysis import analyze
    from attnviz.attention import MultiHeadAttention

    import attnviz

    assert analyze is attnviz.analyses.attention.analyze
    assert MultiHeadAttention.__module__ == "attnviz.core.attention"
    assert attnviz.analyze("one two", heads=2, d_model=8).weights.shape == (1, 2, 2, 2)
