"""The package's shape: the import-linter contracts in pyproject.toml hold, and no import cycle exists in
carnet_core counting every import statement, those inside functions included."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "carnet_core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the carnet_core modules it imports anywhere in its source (module level, functions,
    TYPE_CHECKING blocks). ``from pkg import name`` counts as importing ``pkg.name`` when that is a module."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_carnet_core_counting_imports_inside_functions():
    graph = import_graph()
    assert len(graph) > 30 and graph["carnet_core.inference.predict"]  # the walk sees the package
    assert find_cycle(graph) is None


def test_the_import_linter_contracts_hold():
    importlinter = pytest.importorskip("importlinter.cli")
    assert importlinter.lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0


def test_imports_inside_functions_are_lazy_loads_of_heavy_dependencies_each_with_its_reason():
    """An import inside a function is there to keep a heavy or optional dependency off the import path of those who
    do not need it; the first import of each block says why (``# lazy: …`` on it or on the line above). Those of
    carnet_core modules are the worker's training loop and the loggers only: none hides an import cycle."""
    unexplained, internal = [], []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            imports = sorted((n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))),
                             key=lambda n: n.lineno)
            previous_end = None
            for node in imports:
                if previous_end is None or node.lineno - 1 > previous_end:  # the first of a block
                    said = "# lazy" in lines[node.lineno - 1] or "# lazy" in lines[node.end_lineno - 1] or \
                        lines[node.lineno - 2].strip().startswith("# lazy")
                    if not said:
                        unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                previous_end = node.end_lineno
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("carnet_core"):
                    internal.append(f"{_module_name(path)}.{fn.name} -> {node.module}")
    assert unexplained == []
    assert sorted(internal) == ["carnet_core.training.jobs.run_worker -> carnet_core.training.config",
                                "carnet_core.training.jobs.run_worker -> carnet_core.training.trainer",
                                "carnet_core.training.parts.fabric_loggers -> carnet_core.training.loggers"]
