"""Architecture rules checked on the source text of ``src/medkd`` (with ``ast``, nothing is imported).

1. The import graph of medkd has no cycle: every ``import medkd...`` / ``from medkd... import`` (and relative
   import), at module level AND inside functions, is an edge; imports under ``if TYPE_CHECKING:`` never run and
   are left out.
2. No function or method is longer than 80 lines.
3. Only ``medkd.run`` names the run folder's files (``split.json``, ``train_summary.json``, ``metrics.jsonl``,
   ``config.yaml``); every other module goes through it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "medkd"
MAX_FUNCTION_LINES = 80
RUN_FILES = ("split.json", "train_summary.json", "metrics.jsonl", "config.yaml")


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted name -> file of every module of the package under ``src``."""
    return {_module_name(p, src): p for p in sorted((src / PACKAGE).rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for child in node.body for n in ast.walk(child))
    return out


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` starts with (``a.b.c`` -> ``a.b`` when only that is a module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _import_targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]
                    ) -> Iterator[str]:
    """Modules of the package that one import statement of ``module`` loads."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE and (target := _resolve(alias.name, known)):
                yield target
        return
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != PACKAGE:
        return
    for alias in node.names:
        full = f"{source}.{alias.name}"
        target = full if full in known else _resolve(source, known)
        if target:
            yield target


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (module level and inside functions)."""
    modules = _modules(src)
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                is_package = path.name == "__init__.py"
                graph[module].update(t for t in _import_targets(node, module, is_package, known) if t != module)
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle through the first module of a strongly connected component (breadth-first)."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (first module repeated at the end) per strongly connected component of ``graph``."""
    return [_cycle_in(c, graph) for c in _strongly_connected(graph)]


def long_functions(src: Path = SRC, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:line name (N lines)`` of every function or method longer than ``limit`` lines."""
    out = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(src)}:{node.lineno} {node.name} ({n} lines)")
    return out


def run_file_names(src: Path = SRC) -> list[str]:
    """``file:line 'name'`` of every string constant naming a run-folder file outside ``medkd/run/``."""
    run_dir = src / PACKAGE / "run"
    out: list[str] = []
    for path in sorted((src / PACKAGE).rglob("*.py")):
        if run_dir in path.parents:
            continue
        hits: set[tuple[int, str]] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            if any(node.value == f or node.value.endswith("/" + f) for f in RUN_FILES):
                hits.add((node.lineno, node.value))
        out += [f"{path.relative_to(src)}:{line} {value!r}" for line, value in sorted(hits)]
    return out


# ---- the rules -------------------------------------------------------------------------------------------------


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles in medkd:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_function_longer_than_80_lines() -> None:
    offenders = long_functions()
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


def test_only_the_run_package_names_run_folder_files() -> None:
    offenders = run_file_names()
    assert not offenders, "run-folder files named outside medkd/run/:\n" + "\n".join(offenders)


# ---- the checkers themselves can fail --------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_import_graph_resolves_relative_lazy_and_package_imports(tmp_path: Path) -> None:
    src = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "from medkd.pkg import b\n",
        "pkg/__init__.py": "from .b import thing\n",
        "pkg/b.py": "def f():\n    from ..a import x\n    import medkd.pkg.c.missing\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from medkd import a\nimport os\n",
    })
    graph = import_graph(src)
    assert graph == {
        "medkd": set(),
        "medkd.a": {"medkd.pkg.b"},
        "medkd.pkg": {"medkd.pkg.b"},
        "medkd.pkg.b": {"medkd.a", "medkd.pkg.c"},
        "medkd.pkg.c": set(),
    }
    assert import_cycles(graph) == [["medkd.a", "medkd.pkg.b", "medkd.a"]]


def test_import_cycles_finds_a_three_module_loop_and_nothing_in_a_tree() -> None:
    loop = {"x": {"y"}, "y": {"z"}, "z": {"x", "w"}, "w": set()}
    assert import_cycles(loop) == [["x", "y", "z", "x"]]
    assert import_cycles({"x": {"y", "z"}, "y": {"z"}, "z": set()}) == []


def test_long_functions_and_run_file_names_flag_offenders(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    src = _write(tmp_path, {
        "long.py": f"def ok():\n    return 1\n\n\ndef too_long():\n{body}\n",
        "reader.py": '"""Reads split.json."""\nimport json\nSPLIT = json.loads(open("run/split.json").read())\n',
        "run/folder.py": 'NAME = "metrics.jsonl"\n',
    })
    assert long_functions(src) == ["medkd/long.py:5 too_long (81 lines)"]
    assert run_file_names(src) == ["medkd/reader.py:3 'run/split.json'"]


@pytest.mark.parametrize("name", RUN_FILES)
def test_run_file_names_flags_each_exact_name(tmp_path: Path, name: str) -> None:
    src = _write(tmp_path, {"m.py": f"PATH = {name!r}\nDOC = 'see {name} for details'\n"})
    assert run_file_names(src) == [f"medkd/m.py:1 {name!r}"]
