"""The layers of docs/design: imports only ever point down.

Every import of a project module counts, at module level or inside a function:
a deferred import hides a cycle from Python's import machinery, not from the
reader, who still cannot understand either module without the other. Imports
under `if TYPE_CHECKING:` are left out; they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

from serve_app.paths import PROJECT_ROOT

PROJECT_PACKAGES = ("serve_app", "deployments")

# The bottom layers: settings are pure pydantic types and their loaders; errors,
# paths and ids are below everything.
LEAF_MODULES = ("serve_app.settings", "serve_app.errors", "serve_app.paths", "serve_app.ids")


def _is_leaf(module: str) -> bool:
    return any(module == leaf or module.startswith(leaf + ".") for leaf in LEAF_MODULES)


# Cycles tolerated for now, each with why it is not broken yet. Every entry is
# a frozenset of the modules on the cycle. Empty: keep it that way.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [*(PROJECT_ROOT / "serve_app").rglob("*.py"), *(PROJECT_ROOT / "deployments").glob("*.py")]
    return {_module_name(p): p for p in sorted(files)}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom, skipping the bodies of `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules an import statement loads (the most specific one that exists)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        # `from pkg import mod` loads pkg.mod; `from mod import name` loads mod.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name.split(".")[0] in PROJECT_PACKAGES:
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    graph: dict[str, set[str]] = {}
    for module, path in sources.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _import_nodes(tree):
            edges |= _targets(node, module, is_package, known)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan),
    written as a path a -> b -> ... -> a through that component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for component in components:
        start = min(component)
        # Shortest way back to `start` inside the component: the cycle to report.
        previous: dict[str, str] = {}
        frontier, seen = [start], {start}
        path = None
        while frontier and path is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w == start:
                        path = [start]
                        while v != start:
                            path.insert(1, v)
                            v = previous[v]
                        path.append(start)
                        break
                    if w not in seen:
                        seen.add(w)
                        previous[w] = v
                        nxt.append(w)
                if path:
                    break
            frontier = nxt
        cycles.append({"members": frozenset(component), "path": path})
    return cycles


def test_find_cycles_reports_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    [cycle] = find_cycles(graph)
    assert cycle["members"] == {"a", "b", "c"} and cycle["path"] == ["a", "b", "c", "a"]


def test_the_graph_sees_deferred_imports():
    # A guard against a test that passes because it sees nothing.
    graph = import_graph()
    assert "serve_app.config" in graph and "deployments.gateway" in graph
    assert "serve_app.settings.speed" in graph["serve_app.config"]


def test_no_import_cycles():
    cycles = [c for c in find_cycles(import_graph()) if c["members"] not in ALLOWED_CYCLES]
    assert not cycles, "import cycles:\n" + "\n".join(
        " -> ".join(c["path"]) + f"   (all of {sorted(c['members'])})" for c in cycles
    )


def test_allowed_cycles_still_exist():
    # An allowlist entry outliving its cycle would hide the next one.
    present = {c["members"] for c in find_cycles(import_graph())}
    assert set(ALLOWED_CYCLES) <= present, set(ALLOWED_CYCLES) - present


def test_leaf_layers_import_only_leaf_layers():
    bad = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if _is_leaf(module)
        for target in sorted(targets)
        if not _is_leaf(target)
    ]
    assert not bad, bad


# The composition root: docs/design's top layer, above deployments/, because
# it binds them into the graph. serve_config.yaml and configs/serve_gpu*.yaml
# name it as `import_path: serve_app.app:build_app`, so it stays where it is.
COMPOSITION_ROOT = "serve_app.app"


def test_serve_app_never_imports_deployments():
    bad = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if module.split(".")[0] == "serve_app" and module != COMPOSITION_ROOT
        for target in sorted(targets)
        if target.split(".")[0] == "deployments"
    ]
    assert not bad, bad


def test_nothing_imports_the_composition_root():
    # What may import deployments/ must itself be at the top, or the exemption above
    # lets serve_app reach deployments through it.
    bad = [module for module, targets in import_graph().items() if COMPOSITION_ROOT in targets]
    assert not bad, bad


# The one logger rule (docs/operations.md, "Logs"): every module logs through Ray Serve's
# logger. It is the one Serve sets up in a replica (its file, replica and request tags,
# the deployment's log level and encoding); a module's own `getLogger(__name__)` is not,
# and in a replica its INFO records were dropped.
SERVE_LOGGER = "ray.serve"
ROOT_LOGGER_CALLS = {"debug", "info", "warning", "error", "exception", "critical", "log", "basicConfig"}


def _logger_rule_breaks(source: str) -> tuple[int, list[str]]:
    """(getLogger calls seen, what breaks the rule) in one module's source."""
    calls, bad = 0, []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "logging":
            names = {alias.name for alias in node.names} & (ROOT_LOGGER_CALLS | {"getLogger"})
            if names:
                bad.append(f"line {node.lineno}: from logging import {', '.join(sorted(names))}")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id == "logging"):
            continue
        if node.func.attr == "getLogger":
            calls += 1
            named = len(node.args) == 1 and isinstance(node.args[0], ast.Constant) and not node.keywords
            if not named or node.args[0].value != SERVE_LOGGER:
                bad.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif node.func.attr in ROOT_LOGGER_CALLS:
            bad.append(f"line {node.lineno}: {ast.unparse(node)} (the root logger)")
    return calls, bad


def test_the_logger_rule_catches_what_it_forbids():
    assert _logger_rule_breaks('import logging\nlog = logging.getLogger("ray.serve")') == (1, [])
    for source in (
        "import logging\nlog = logging.getLogger(__name__)",
        "import logging\nlog = logging.getLogger()",
        "import logging\nlogging.warning('x')",
        "from logging import getLogger",
    ):
        assert _logger_rule_breaks(source)[1], source


def test_every_module_logs_through_ray_serves_logger():
    calls, bad = 0, []
    for module, path in _sources().items():
        found, breaks = _logger_rule_breaks(path.read_text())
        calls += found
        bad += [f"{module} {b}" for b in breaks]
    assert calls >= 20, f"only {calls} getLogger calls found: is the scan looking at the sources?"
    assert not bad, bad
