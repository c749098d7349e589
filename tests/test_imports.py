"""The package's imports run one way, counting every import, inside functions too:

    kernels (import nothing of the package)
      → ground (errors, config, data, model, filters, profiling, plotting, inputs, numerics)
      → backends/, store/, theory/   (none of the three imports another)
      → tracking/ (loggers: TensorBoard) → engine/ → sweeps/ → reproduce/ → cli/ → the package's public face (grokfast, grokfast.reference)

No module imports a module of a higher layer or of another room of its own layer, no import circle
exists anywhere, and the kernels import nothing of the package but themselves.
"""
import ast
from pathlib import Path

import grokfast

PACKAGE = Path(grokfast.__file__).parent
KERNELS = Path(grokfast.kernels.__file__).parent if hasattr(grokfast, "kernels") else None

# room → layer. A module's room is the first entry its dotted name starts with (longest first).
ROOMS = {
    "grokfast.errors": ("ground", 0), "grokfast.config": ("ground", 0),
    "grokfast.data": ("ground", 0), "grokfast.model": ("ground", 0),
    "grokfast.filters": ("ground", 0), "grokfast.profiling": ("ground", 0),
    "grokfast.plotting": ("ground", 0), "grokfast.inputs": ("ground", 0),
    "grokfast.numerics": ("ground", 0),
    "grokfast.kernels": ("kernels", -1),
    "grokfast.backends": ("backends", 1), "grokfast.store": ("store", 1),
    "grokfast.theory": ("theory", 1),
    "grokfast.tracking": ("tracking", 1.5),
    "grokfast.engine": ("engine", 2),
    "grokfast.sweeps": ("sweeps", 3),
    "grokfast.reproduce": ("reproduce", 4),
    "grokfast.cli": ("cli", 5),
    "grokfast.reference": ("public", 6), "grokfast.__main__": ("public", 6), "grokfast": ("public", 6),
}


def room(module: str) -> tuple:
    for prefix in sorted(ROOMS, key=len, reverse=True):
        if module == prefix or (prefix != "grokfast" and module.startswith(prefix + ".")):
            return ROOMS[prefix]
    raise AssertionError(f"{module} is in no room of the layer table: add it to ROOMS")


def package_modules() -> dict[str, Path]:
    """Every module of grokfast/ and kernels/ (installed as grokfast.kernels) → its file."""
    import grokfast.kernels
    found = {}
    for top, base in ((PACKAGE, "grokfast"), (Path(grokfast.kernels.__file__).parent, "grokfast.kernels")):
        for path in sorted(top.rglob("*.py")):
            parts = list(path.relative_to(top).with_suffix("").parts)
            if base == "grokfast" and parts and parts[0] == "kernels":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([base, *parts])] = path
    return found


def imports_of(source: str, name: str, is_package: bool, modules) -> set[str]:
    """The package modules a module imports anywhere in its source (functions included):
    `from X import y` counts X.y when that is a module, else X."""
    pkg = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def package_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(path.read_text(), name, path.name == "__init__.py", modules)
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


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points up a layer, across rooms of one layer, or out of the kernels."""
    bad = []
    for a, targets in graph.items():
        (ra, la) = room(a)
        for b in sorted(targets):
            (rb, lb) = room(b)
            if ra == "kernels" and rb != "kernels":
                bad.append(f"{a} → {b}: the kernels import nothing of the package")
            elif lb > la or (lb == la and rb != ra):
                bad.append(f"{a} ({ra}, layer {la}) → {b} ({rb}, layer {lb})")
    return bad


def test_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_inside_functions_count():
    modules = {"grokfast.engine.loop", "grokfast.store.result", "grokfast.config"}
    src = "from grokfast.config import Config\ndef f():\n    from ..store import result\n"
    assert imports_of(src, "grokfast.engine.loop", False, modules) == {"grokfast.config",
                                                                       "grokfast.store.result"}
    up = {"grokfast.store.result": {"grokfast.engine.loop"}, "grokfast.engine.loop": set()}
    assert wrong_way(up) == ["grokfast.store.result (store, layer 1) → grokfast.engine.loop "
                             "(engine, layer 2)"]
    assert wrong_way({"grokfast.kernels.triton.launch": {"grokfast.errors"}, "grokfast.errors": set()})
    assert wrong_way({"grokfast.store.checkpoint": {"grokfast.backends.base"},
                      "grokfast.backends.base": set()})


def test_every_module_has_a_room_and_the_graph_is_whole():
    graph = package_graph()
    for name in graph:
        room(name)
    assert "grokfast.backends.registry" in graph["grokfast.engine.loop"]
    assert "grokfast.kernels.cpu.grad" in graph["grokfast.backends.torch.buffers"]  # in a function
    assert "grokfast.kernels.triton.fused" in graph["grokfast.backends.triton.stepper"]


def test_no_import_cycle_anywhere():
    cycle = find_cycle(package_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_every_import_points_down():
    bad = wrong_way(package_graph())
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_stepper_contract_depends_on_config_and_errors_only():
    assert package_graph()["grokfast.backends.base"] == {"grokfast.config", "grokfast.errors"}
