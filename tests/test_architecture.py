"""The layout's rules, read from the source (docs/development.md, "Layout"): no import cycles,
the training engine imported by the training commands alone, short functions, imports inside
functions only with a reason written beside them, and each run-directory file name spelled in
one module."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import cifar100

SRC = Path(cifar100.__file__).parent
# The commands that train: `train`, `bench` (which times the engine's training step), the
# Python API's train (cifar100.train), which imports it when called, and `audit`, whose
# cross-validation trains heads on cached features as features mode does, `lr-find`, which
# takes the training step at rising rates, and `tune`, whose trials are training runs; and the
# package, whose `cifar100.Callback` is the engine's (looked up on first use).
ENGINE_USERS = {"cifar100.cli.train", "cifar100.cli.bench", "cifar100.api", "cifar100.audit",
                "cifar100.audit.folds", "cifar100.cli.lr_find", "cifar100.tune.trial",
                "cifar100"}  # fmt: skip
MAX_FUNCTION_LINES = 80
# Every file a run directory holds, spelled in runtime/run_dir.py alone.
RUN_FILES = {"config.json", "environment.json", "metrics.jsonl", "evaluation.json",
             "predictions.npz", "last.pt", "best.pt", "report.html", ".lock",
             "tracking.json"}  # fmt: skip
# config.json is also a member of a .keras archive: the Keras format's, not a run's.
KERAS_ARCHIVE = {"cifar100.export.keras_file", "cifar100.weights.keras_h5"}


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = (path, ast.parse(path.read_text(encoding="utf-8")))
    return found


MODULES = _modules()


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The cifar100 modules an import statement loads (a `from a import b` of a submodule b
    counts as importing a.b)."""
    if isinstance(node, ast.Import):
        names = {a.name for a in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        names = {base} | {f"{base}.{a.name}" for a in node.names}
    return {n for n in names if n in MODULES}


def _graph() -> dict[str, set[str]]:
    graph = {name: set() for name in MODULES}
    for name, (path, tree) in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name] |= _targets(name, path, node) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_counting_imports_inside_functions():
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_training_engine_is_imported_by_the_training_commands_alone():
    graph = _graph()
    users = {
        name
        for name, targets in graph.items()
        if not name.startswith("cifar100.engine")
        and any(t.startswith("cifar100.engine") for t in targets)
    }
    assert users <= ENGINE_USERS, users - ENGINE_USERS


def test_the_runtime_imports_neither_the_engine_nor_export():
    graph = _graph()
    below = [n for n in graph if n.startswith("cifar100.runtime")]
    assert below
    for name in below:
        assert not {t for t in graph[name] if t.startswith(("cifar100.engine", "cifar100.export"))}


def test_no_function_is_longer_than_80_lines():
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, (_, tree) in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_imports_inside_functions_say_why():
    """An import inside a function keeps the CLI's start fast (or a heavy optional library out
    of a light path): a comment says so, beside its run of imports or on the line above it; or
    it is an optional dependency, tried with an ImportError handler."""
    silent = []
    for path, tree in MODULES.values():
        lines = path.read_text(encoding="utf-8").splitlines()
        for func in ast.walk(tree):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                silent += [
                    f"{path.relative_to(SRC.parent)}:{run[0].lineno}"
                    for run, parent in _import_runs(func)
                    if not _explained(lines, run, parent)
                ]
    assert silent == []


def _import_runs(func: ast.AST):
    """Each run of consecutive import statements in `func`'s blocks, with the statement whose
    block holds it."""
    for parent in ast.walk(func):
        for block in ("body", "orelse", "finalbody"):
            statements = getattr(parent, block, None)
            if not isinstance(statements, list):  # a lambda's or an if-expression's body
                continue
            run = []
            for node in [*statements, None]:
                if isinstance(node, ast.Import | ast.ImportFrom):
                    run.append(node)
                elif run:
                    yield run, parent
                    run = []


def _explained(lines: list[str], run: list[ast.stmt], parent: ast.AST) -> bool:
    if isinstance(parent, ast.Try) and any(
        "ImportError" in ast.unparse(h.type or ast.Constant(None)) for h in parent.handlers
    ):
        return True  # an optional dependency
    if any("#" in lines[i - 1] for n in run for i in range(n.lineno, n.end_lineno + 1)):
        return True
    i = run[0].lineno - 2
    while i >= 0 and not lines[i].strip():
        i -= 1
    return i >= 0 and "#" in lines[i]


def test_each_run_file_name_is_spelled_in_one_module():
    spelled = defaultdict(set)
    for name, (_, tree) in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in RUN_FILES:
                spelled[node.value].add(name)
    for file, where in spelled.items():
        where -= KERAS_ARCHIVE if file == "config.json" else set()
        assert where == {"cifar100.runtime.run_dir"}, (file, where)
