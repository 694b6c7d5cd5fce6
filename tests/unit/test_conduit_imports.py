"""The conduit/ tooling imports cleanly: no import cycles, no private names shared between its modules, and
imports of its own modules only at module top (so none hides a cycle inside a function)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "conduit"
CLI_MODULES = ["cli", "cli_run", "cli_tables", "demo", "jobs"]


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def conduit_imports(tree: ast.Module, names: set[str]):
    """(imported module, imported names, top_level) for every import of a conduit module in the tree."""
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                target = node.module
            elif node.level == 0 and node.module and node.module.split(".")[0] == "conduit":
                target = node.module.partition(".")[2] or None
            else:
                continue
            if target is None:  # from . import workflow, jobs
                for alias in node.names:
                    if alias.name in names:
                        yield alias.name, [], id(node) in top
            else:
                yield target.split(".")[0], [a.name for a in node.names], id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "conduit" and len(parts) > 1:
                    yield parts[1], [], id(node) in top


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {t for t, _, _ in conduit_imports(tree, set(mods)) if t in mods and t != name}
            for name, tree in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_static_import_graph_of_conduit_has_no_cycle():
    graph = import_graph()
    assert graph["cli_run"] >= {"jobs", "demo"} and "jobs" in graph["demo"] and "jobs" in graph["cli_tables"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_no_private_names_and_no_function_local_imports_between_conduit_modules():
    mods = modules()
    problems = []
    for name, tree in mods.items():
        for target, imported, top_level in conduit_imports(tree, set(mods)):
            private = [n for n in imported if n.startswith("_")]
            if private:
                problems.append(f"{name} imports private {', '.join(private)} from {target}")
            if not top_level:
                problems.append(f"{name} imports {target} inside a function or block")
    assert not problems, problems


@pytest.mark.parametrize("module", CLI_MODULES)
def test_each_cli_module_imports_in_a_fresh_interpreter(module):
    proc = subprocess.run([sys.executable, "-c", f"import conduit.{module}"], cwd=PACKAGE.parent,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
