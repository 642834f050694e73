"""The house's layering: the apps sit on top, nothing in the library imports them, and the
module-level imports of the package form no circle (lazy imports inside functions are allowed only
for optional or heavy dependencies and registries, never for an app)."""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "sde_gen"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path, top_level_only: bool):
    """Absolute names of the sde_gen modules `path` imports (module level, or everywhere)."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # `if __name__ == "__main__":` blocks
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sde_gen")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("sde_gen"):
                found.add(mod)
                found |= {f"{mod}.{a.name}" for a in node.names}
    return found


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str):
    """The module a dotted import name refers to (a from-import may name an attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith("sde_gen.apps")))
def test_the_library_never_imports_an_app(name):
    # the python -m shims (sde_gen/<app>.py) start an app only under `if __name__ == "__main__"`
    apps = sorted(i for i in _imports(MODULES[name], top_level_only=True) if i.startswith("sde_gen.apps"))
    assert not apps, f"{name} imports {apps}"
    if name.count(".") >= 1 and MODULES[name].stem not in ("train", "sample", "evaluate", "report", "demo", "export"):
        lazy = sorted(i for i in _imports(MODULES[name], top_level_only=False) if i.startswith("sde_gen.apps"))
        assert not lazy, f"{name} imports {lazy} inside a function"


def test_module_level_imports_form_no_circle():
    graph = {}
    for name, path in MODULES.items():
        targets = {_resolve(i) for i in _imports(path, top_level_only=True)}
        # a package's __init__ re-exports its children; a child importing a sibling through the
        # package is the same edge, so edges into one's own package __init__ are not a circle
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
