"""docs/architecture.md's layers, checked against the imports of every module.

The layers are read from the diagram in docs/architecture.md; the imports from the
source (`ast`, every `import` anywhere in a file, lazy ones included). A subpackage
(`tasks`, `recipes`) is one unit; `opd_lab_app` (the app) is one unit above the library.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARCHITECTURE = REPO / "docs" / "architecture.md"
OUTSIDE_THE_PACKAGE = {"notebooks", "bench"}  # entry points the diagram names that are not modules


def documented_layers(text: str) -> list[tuple[str, list[str]]]:
    """`[(layer, [units])]`, top layer first, from the diagram: a line that starts at the
    margin opens a layer, indented lines continue it; descriptions in parentheses (which
    may run over lines) and `──►` arrows are not units; a unit named twice in one layer
    (`tasks ──► instructions` below `tasks`) counts once."""
    block = text.split("```", 2)[1]
    texts: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line.strip() and not line[0].isspace():
            label, _, line = re.split(r"(\s{2,})", line, maxsplit=1)
            texts.append((label, ""))
        if texts:
            texts[-1] = (texts[-1][0], texts[-1][1] + " " + line)
    layers = []
    for label, names in texts:
        for _ in range(2):  # a description may hold one level of parentheses
            names = re.sub(r"\([^()]*\)", " ", names)
        units = [name.strip("/") for name in re.split(r"[\s,]+", names.replace("──►", " ")) if name.strip()]
        layers.append((label, list(dict.fromkeys(units))))
    return layers


def _unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "opd_lab_app":
        return "opd_lab_app"
    if parts[0] != "opd_lab" or len(parts) == 1:
        return None
    return parts[1]


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Unit -> the units it imports (itself excluded), for `opd_lab/` and `opd_lab_app/`."""
    graph: dict[str, set[str]] = {}
    for path in sorted([*root.glob("opd_lab/**/*.py"), *root.glob("opd_lab_app/*.py")]):
        parts = path.relative_to(root).with_suffix("").parts
        unit = _unit(".".join(part for part in parts if part != "__init__"))
        if unit is None:  # opd_lab/__init__.py
            continue
        targets = graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from opd_lab import runs` imports the module opd_lab.runs
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names
                                         if node.module == "opd_lab"]
            else:
                continue
            targets.update(found for name in names if (found := _unit(name)) not in (None, unit))
    return graph


def upward_imports(graph: dict[str, set[str]], layers: list[tuple[str, list[str]]]) -> list[str]:
    """Every import from a unit into a layer above its own, as "a (layer) imports b (layer)"."""
    level = {unit: index for index, (_, units) in enumerate(layers) for unit in units}
    names = {index: label for index, (label, _) in enumerate(layers)}
    return [f"{unit} ({names[level[unit]]}) imports {target} ({names[level[target]]})"
            for unit, targets in sorted(graph.items()) for target in sorted(targets)
            if level[target] < level[unit]]


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles found by a depth-first walk (each as the path that closes it)."""
    circles, state = [], {}

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = "open"
        for target in sorted(graph.get(unit, ())):
            if state.get(target) == "open":
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[unit] = "done"

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [unit])
    return circles


def test_every_module_is_in_exactly_one_documented_layer():
    layers = documented_layers(ARCHITECTURE.read_text(encoding="utf-8"))
    placed = [unit for _, units in layers for unit in units if unit not in OUTSIDE_THE_PACKAGE]
    assert len(placed) == len(set(placed)), f"placed twice: {sorted({u for u in placed if placed.count(u) > 1})}"
    modules = set(import_graph())
    assert set(placed) - modules == set(), "the diagram names modules that do not exist"
    assert modules - set(placed) == set(), "modules missing from docs/architecture.md's layers"


def test_no_import_runs_up_a_layer_and_there_is_no_circle():
    layers = documented_layers(ARCHITECTURE.read_text(encoding="utf-8"))
    graph = import_graph()
    assert upward_imports(graph, layers) == []
    assert import_circles(graph) == []


def test_the_library_never_imports_the_app():
    assert [unit for unit, targets in import_graph().items() if unit != "opd_lab_app" and "opd_lab_app" in targets] == []


def test_the_checks_catch_an_upward_import_and_a_circle():
    layers = documented_layers("```\ntop    a (uses b)\n       c\nbottom  b, d ──► e\n```")
    assert layers == [("top", ["a", "c"]), ("bottom", ["b", "d", "e"])]
    assert upward_imports({"a": {"b"}, "b": {"e"}, "d": {"c"}}, layers) == ["d (bottom) imports c (top)"]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert import_circles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_lazy_imports_count(tmp_path):
    package = tmp_path / "opd_lab"
    package.mkdir()
    (package / "low.py").write_text("def f():\n    from opd_lab import high\n")
    (package / "high.py").write_text("import opd_lab.low\n")
    graph = import_graph(tmp_path)
    assert graph == {"low": {"high"}, "high": {"low"}}
    assert import_circles(graph) == [["high", "low", "high"]]


def test_the_app_reads_run_folders_and_never_imports_the_engine():
    """The metrics schema (`PHASES`...) lives with the run folder, so the app needs no engine module."""
    assert import_graph()["opd_lab_app"] & {"train", "trainer", "sharding", "distributed", "teacher_scoring"} == set()
