"""The package's layout promises: no import cycle between its modules, and tasks named in one place only.

Both read the source (``ast``), import nothing and run in well under a second.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("multimodal", "encoders", "fusion")
TASK_CLASSES = re.compile(r"\bProduct(Tagger|Retriever|Captioner)\b")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _top_level_imports(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """Modules imported when the module itself is imported (function bodies and ``TYPE_CHECKING`` blocks run later
    or never, so they cannot close a cycle at import time)."""
    found: set[str] = set()
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and not _is_type_checking(node):
            todo += [*node.body, *node.orelse]
        elif isinstance(node, ast.Try):
            todo += [*node.body, *node.orelse, *node.finalbody, *(s for h in node.handlers for s in h.body)]
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found |= {f"{base}.{a.name}" for a in node.names} | {base}
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it names in its module-level imports (``from a.b import c`` names ``a.b.c``
    when that is a module, else ``a.b``; a package's ``__init__`` importing its own modules is a re-export, not
    a cycle, so the parent packages an import runs first are left out)."""
    sources = _sources()
    graph: dict[str, set[str]] = {}
    for name, path in sources.items():
        graph[name] = _top_level_imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = (graph[name] & sources.keys()) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def _all_imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_artefact_types_and_onnx_runtime_stand_apart_from_the_loader() -> None:
    """Counting the imports made inside functions too, the artefact types, the task contract and the ONNX Runtime
    are in no cycle: the runtime builds a ``Loaded`` from the leaf, and only the loader reaches into ONNX (where it
    dispatches ``--runtime onnx``) and the export back into the loader (to rebuild the checkpoint it exports)."""
    sources = _sources()
    graph = {n: (_all_imports(ast.parse(p.read_text())) & sources.keys()) - {n} for n, p in sources.items()}
    leaves = {"multimodal.artefact", "multimodal.task", "multimodal.onnx.runtime", "multimodal.onnx.manifest"}
    assert [c for c in cycles(graph) if leaves & set(c)] == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes (prose may name a class; code must not)."""
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    return {
        id(n.body[0].value)
        for n in nodes
        if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
    }


def _exempt(tree: ast.Module) -> set[int]:
    """ids of the strings of ``MOVED_CLASSES`` (class paths stored in old checkpoints, kept as they were) and of
    ``__all__`` (a module listing its own names)."""
    return {
        id(c)
        for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) in ("MOVED_CLASSES", "__all__") for t in n.targets)
        for c in ast.walk(n.value)
    }


def test_task_class_names_only_in_task_declarations() -> None:
    """Loader, predict, serve, the Python API and the ONNX export dispatch through the task contract
    (:mod:`multimodal.task`), so a task's class name is written in its own ``task.py`` and nowhere else."""
    offenders = []
    for name, path in _sources().items():
        if name.endswith(".task") and name != "multimodal.task":
            continue
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree) | _exempt(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                if TASK_CLASSES.search(node.value):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_every_task_declares_what_it_names() -> None:
    """Every import path of every task's declaration resolves, and the declared class is the task's identity."""
    from multimodal.task import resolve, task_of, task_of_command, tasks

    for task in tasks():
        assert resolve(task.model).__name__ == task.class_name
        assert resolve(task.api).task_name == task.model
        assert callable(resolve(task.job))
        assert task.serving is None or callable(resolve(task.serving.api))
        onnx = [] if task.onnx is None else [task.onnx.graphs, task.onnx.settings, task.onnx.runtime]
        assert all(callable(resolve(p)) for p in onnx if p is not None)
        assert task_of(task.class_name) is task
    assert task_of_command("predict") is None
    assert {t.command for t in tasks()} - {None} == {"export", "caption"}


def test_task_registration_is_read_in_one_place() -> None:
    """Tasks from other packages are found by :mod:`multimodal.task` alone (its entry point group and environment
    variable); the loader, ``serve`` and ``--help`` ask it, so no other module names either."""
    from multimodal.task import ENTRY_POINT_GROUP, TASKS_VARIABLE

    offenders = []
    for name, path in _sources().items():
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in (ENTRY_POINT_GROUP, TASKS_VARIABLE):
                if id(node) not in skip and name != "multimodal.task":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert offenders == []
