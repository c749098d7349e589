"""The package's module-level imports run one way (config → model/data → stepper → backends → engine):
no module imports, at import time, a module that imports it back."""
import ast
from pathlib import Path

import grokfast

PACKAGE = Path(grokfast.__file__).parent


def module_imports(path: Path, name: str) -> set[str]:
    """grokfast modules imported by the top-level statements of a module (not inside functions)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] == "grokfast"}


def package_graph() -> dict[str, set[str]]:
    modules = {}
    for path in sorted(PACKAGE.glob("*.py")):
        name = "grokfast" if path.name == "__init__.py" else f"grokfast.{path.stem}"
        modules[name] = path
    return {name: {m for m in module_imports(path, name) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = package_graph()
    assert "grokfast.engine" in graph and "grokfast.stepper" in graph["grokfast.engine"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_stepper_contract_depends_on_config_and_errors_only():
    assert package_graph()["grokfast.stepper"] == {"grokfast.config", "grokfast.errors"}


def imports_anywhere(path: Path, name: str) -> dict[str, set[str]]:
    """grokfast modules imported anywhere in a module (functions included), by enclosing function."""
    pkg = name.rpartition(".")[0]
    found: dict[str, set[str]] = {}
    for fn in [n for n in ast.walk(ast.parse(path.read_text()))
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and node.level:
                found.setdefault(fn.name, set()).add(f"{pkg}.{node.module}" if node.module else pkg)
    return found


def test_backends_and_the_contract_never_reach_back_into_the_engine():
    # reference.train is grokfast.train with backend="reference": the one door back, by design.
    allowed = {("grokfast.reference", "train")}
    for stem in ("stepper", "model", "data", "filters", "reference", "torch_backend", "triton_backend",
                 "torch_paths", "optim", "grad_filters", "torch_loss", "torch_stats", "sharded"):
        name = f"grokfast.{stem}"
        for fn, mods in imports_anywhere(PACKAGE / f"{stem}.py", name).items():
            if (name, fn) not in allowed:
                assert "grokfast.engine" not in mods, f"{name}.{fn} imports grokfast.engine"
