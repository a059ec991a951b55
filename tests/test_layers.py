"""The library as layers without loops, read from the source (no module is imported, torch neither).

Layers, bottom to top: ``utils/runtime`` (0); ``utils/models`` and ``utils/data`` (1, siblings);
``utils/training`` (2); ``utils/apps`` (3); the scripts: the root ``*.py``, ``benchmarks/``, ``tools/``
(4). A module imports only from layers below its own (or from its own layer); models and data never
import each other; a script imports only ``utils``, never another script; and no modules import
each other in a circle. Every import counts, also one inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYER_RANKS = {"runtime": 0, "models": 1, "data": 1, "training": 2, "apps": 3}
SCRIPT_RANK = 4
SCRIPT_FOLDERS = ("benchmarks", "tools")


def project_files(root: Path) -> list[Path]:
    """The checked files: everything under utils/, the root scripts, benchmarks/ and tools/ (not tests/)."""
    files = sorted((root / "utils").rglob("*.py")) + sorted(root.glob("*.py"))
    for folder in SCRIPT_FOLDERS:
        files += sorted((root / folder).glob("*.py"))
    return files


def module_name(root: Path, path: Path) -> str:
    """``utils/apps/evaluation.py`` -> ``utils.apps.evaluation``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_script(module: str) -> bool:
    return not module.startswith("utils.") and module != "utils"


def layer_of(module: str) -> str | None:
    """``utils.models.spdnet`` -> ``models``; a script -> ``script``; a module of utils in no layer -> None."""
    if is_script(module):
        return "script"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYER_RANKS else None


def rank_of(module: str) -> int:
    layer = layer_of(module)
    return SCRIPT_RANK if layer == "script" else LAYER_RANKS.get(layer, 0)


def imported_modules(node: ast.AST, importer: str, importer_path: Path, modules: set[str]) -> list[str]:
    """The project's modules one import statement loads (the deepest module each name resolves to)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importer's package
            package = importer.split(".")
            package = package if importer_path.name == "__init__.py" else package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if base else alias.name for alias in node.names] + [base]
    found = []
    for name in names:
        candidates = [name]
        if is_script(importer) and "." in importer:  # benchmarks/x.py run as a file sees its own folder's files
            candidates.append(importer.rsplit(".", 1)[0] + "." + name)
        for candidate in candidates:
            parts = candidate.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts:
                found.append(".".join(parts))
                break
    # "from utils.apps import evaluation" names utils.apps.evaluation; the package utils.apps it passes
    # through adds nothing
    return [module for module in dict.fromkeys(found) if not any(other.startswith(module + ".") for other in found)]


def import_graph(root: Path) -> tuple[dict[str, Path], dict[str, dict[str, tuple[int, str]]]]:
    """Each module's file, and its imports: {importer: {imported: (line, the import's source text)}}."""
    files = {module_name(root, path): path for path in project_files(root)}
    modules = set(files)
    graph: dict[str, dict[str, tuple[int, str]]] = {}
    for module, path in files.items():
        source = path.read_text()
        edges: dict[str, tuple[int, str]] = {}
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for imported in imported_modules(node, module, path, modules):
                    if imported != module and imported not in edges:
                        edges[imported] = (node.lineno, ast.get_source_segment(source, node).replace("\n", " "))
        graph[module] = edges
    return files, graph


def where(root: Path, files: dict[str, Path], graph, importer: str, imported: str) -> str:
    line, text = graph[importer][imported]
    return f"{files[importer].relative_to(root).as_posix()}:{line} `{text}`"


def layer_problems(root: Path) -> list[str]:
    """Imports that break the layer rules, one line each naming the file, the line and the import."""
    files, graph = import_graph(root)
    problems = []
    for importer in sorted(graph):
        layer = layer_of(importer)
        if layer is None and importer != "utils":
            problems.append(f"{files[importer].relative_to(root).as_posix()}: a library module outside the layer "
                            f"folders ({', '.join(LAYER_RANKS)})")
            continue
        for imported in sorted(graph[importer]):
            at = where(root, files, graph, importer, imported)
            other = layer_of(imported)
            if layer == "script":
                if is_script(imported):
                    problems.append(f"{at}: a script imports another script ({imported}); scripts import only utils")
                continue
            if other is None or other == layer:
                continue
            if rank_of(imported) > rank_of(importer):
                problems.append(f"{at}: {layer} (rank {rank_of(importer)}) imports {imported} from the layer above, "
                                f"{other} (rank {rank_of(imported)})")
            elif rank_of(imported) == rank_of(importer):
                problems.append(f"{at}: {layer} imports {imported} from its sibling layer {other}; siblings "
                                f"import neither each other")
    return problems


def import_circles(root: Path) -> list[str]:
    """Every circle of imports (one per strongly connected group of modules), as ``a -> b -> a`` with
    each step's import."""
    files, graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph[module]:
            if imported not in index:
                connect(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            connect(module)
    circles = []
    for group in groups:
        start, members = group[0], set(group)
        paths = {start: [start]}  # breadth first from start, back to start, inside the group
        queue = [start]
        circle = None
        while queue and circle is None:
            module = queue.pop(0)
            for imported in sorted(graph[module]):
                if imported == start:
                    circle = paths[module] + [start]
                    break
                if imported in members and imported not in paths:
                    paths[imported] = paths[module] + [imported]
                    queue.append(imported)
        steps = "; ".join(where(root, files, graph, a, b) for a, b in zip(circle, circle[1:]))
        circles.append(f"import circle among {', '.join(group)}: {' -> '.join(circle)} ({steps})")
    return circles


def test_no_import_circles():
    circles = import_circles(ROOT)
    assert not circles, "\n".join(circles)


def test_each_layer_imports_only_layers_below():
    problems = layer_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_the_checked_files_are_the_project():
    files, graph = import_graph(ROOT)
    assert {"utils.runtime.config", "utils.apps.pipelines", "Infer", "benchmarks.bench",
            "tools.demo_table"} <= set(files)
    assert not any(module.startswith("tests") for module in files)
    assert "utils.runtime.config" in graph["Infer"]  # a top-level import is seen
    assert "utils.apps.pipelines" in graph["Infer"]  # and one inside main()


# The checks themselves, on small made-up projects.

def make_project(root: Path, sources: dict[str, str]) -> Path:
    for name in ("utils/__init__.py", *(f"utils/{layer}/__init__.py" for layer in LAYER_RANKS)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    for name, source in sources.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source)
    return root


@pytest.mark.parametrize("sources, expected", [
    ({"utils/models/a.py": "def f():\n    from utils.apps import b\n", "utils/apps/b.py": ""},
     "utils/models/a.py:2 `from utils.apps import b`: models (rank 1) imports utils.apps.b from the layer above, "
     "apps (rank 3)"),
    ({"utils/runtime/a.py": "import utils.training.b\n", "utils/training/b.py": ""},
     "utils/runtime/a.py:1 `import utils.training.b`: runtime (rank 0) imports utils.training.b from the layer above"),
    ({"utils/data/a.py": "from utils.models.b import thing\n", "utils/models/b.py": ""},
     "utils/data/a.py:1 `from utils.models.b import thing`: data imports utils.models.b from its sibling layer models"),
    ({"Infer.py": "def main():\n    import Check_Data\n", "Check_Data.py": ""},
     "Infer.py:2 `import Check_Data`: a script imports another script (Check_Data)"),
    ({"benchmarks/b.py": "from bench import run\n", "benchmarks/bench.py": ""},
     "benchmarks/b.py:1 `from bench import run`: a script imports another script (benchmarks.bench)"),
    ({"tools/t.py": "from benchmarks.bench import run\n", "benchmarks/bench.py": ""},
     "tools/t.py:1 `from benchmarks.bench import run`: a script imports another script (benchmarks.bench)"),
    ({"utils/helpers.py": ""}, "utils/helpers.py: a library module outside the layer folders"),
])
def test_layer_problems_are_found_and_named(tmp_path, sources, expected):
    problems = layer_problems(make_project(tmp_path, sources))
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_allowed_imports_pass(tmp_path):
    root = make_project(tmp_path, {
        "utils/runtime/a.py": "import os\nfrom . import b\n", "utils/runtime/b.py": "",
        "utils/models/m.py": "from utils.runtime import a\n", "utils/data/d.py": "from utils.runtime.a import x\n",
        "utils/training/t.py": "from utils.models import m\nfrom utils.data.d import y\n",
        "utils/apps/p.py": "from utils.training.t import z\nimport utils.runtime.b\n",
        "Infer.py": "def main():\n    from utils.apps import p\n", "tools/t.py": "from utils.runtime.a import x\n",
    })
    assert layer_problems(root) == []
    assert import_circles(root) == []


def test_a_circle_is_found_and_named(tmp_path):
    root = make_project(tmp_path, {
        "utils/apps/a.py": "from utils.apps import b\n", "utils/apps/b.py": "def f():\n    from .c import g\n",
        "utils/apps/c.py": "import utils.apps.a\n", "utils/apps/d.py": "from utils.apps import a\n",
    })
    circles = import_circles(root)
    assert circles == ["import circle among utils.apps.a, utils.apps.b, utils.apps.c: "
                       "utils.apps.a -> utils.apps.b -> utils.apps.c -> utils.apps.a "
                       "(utils/apps/a.py:1 `from utils.apps import b`; utils/apps/b.py:2 `from .c import g`; "
                       "utils/apps/c.py:1 `import utils.apps.a`)"]
