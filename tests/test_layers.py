"""The package's layers hold: each layer imports only the layers below it, no module imports
inside a function except an optional dependency, and the modules' imports form no circle."""

from __future__ import annotations

import ast
from pathlib import Path

import secptune

PACKAGE = Path(secptune.__file__).parent

#: each layer, and the layers of the package it may import (bottom up); `runfolder` is a
#: utility every layer may use
BELOW = {
    "runfolder": set(),
    "mpc": {"runfolder"},
    "nn": {"mpc"},
    "data": set(),
    "models": {"nn", "mpc"},
    "tuning": {"models", "nn", "mpc", "data", "runfolder"},
    "conversion": {"models", "nn", "mpc", "data", "runfolder"},
    "baselines": {"tuning", "models", "nn", "mpc", "data", "runfolder"},
    "parties": {"tuning", "models", "nn", "mpc", "data", "runfolder"},
}
#: what a module may import inside a function: optional dependencies, and those whose import
#: must follow a setting (matplotlib's backend)
LOCAL_IMPORTS_ALLOWED = {"matplotlib", "matplotlib.pyplot", "pyarrow", "pyarrow.ipc"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ("secptune", *parts), path.name == "__init__.py"


def _imports(path: Path, name: tuple[str, ...], is_package: bool):
    """(imported module, line, inside a function) for every import of `path`."""
    tree = ast.parse(path.read_text(), str(path))
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    local = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    here = name if is_package else name[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in local
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                module = ".".join((*base, node.module)) if node.module else ".".join(base)
            else:
                module = node.module
            if module == "__future__":
                continue
            # "from . import x" may name a submodule
            for alias in node.names:
                yield (f"{module}.{alias.name}" if not node.module or module == "secptune" else module,
                       node.lineno, id(node) in local)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "secptune" or len(parts) == 1 or parts[1].startswith("__"):
        return None                                   # outside the package, or its top (__version__)
    return parts[1]


def test_each_layer_imports_only_the_layers_below_it():
    wrong = set()
    for path, name, is_package in _modules():
        layer = _layer(".".join(name))
        if layer is None or layer not in BELOW:          # the package's top and the CLI use all
            continue
        for module, line, _ in _imports(path, name, is_package):
            target = _layer(module)
            if target is not None and target != layer and target not in BELOW[layer]:
                wrong.add(f"{path.relative_to(PACKAGE)}:{line} ({layer}) imports {module} ({target})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_imports_inside_a_function_but_optional_dependencies():
    local = {f"{path.relative_to(PACKAGE)}:{line} imports {module}"
             for path, name, is_package in _modules()
             for module, line, inside in _imports(path, name, is_package)
             if inside and module not in LOCAL_IMPORTS_ALLOWED}
    assert not local, "\n".join(sorted(local))


def test_the_modules_imports_form_no_circle():
    known = {".".join(name) for _, name, _ in _modules()}
    # C extensions (mpc/_native.c) are modules too, and import nothing of the package
    known |= {".".join(("secptune", *path.relative_to(PACKAGE).with_suffix("").parts))
              for path in PACKAGE.rglob("*.c")}
    graph = {}
    for path, name, is_package in _modules():
        edges = set()
        for module, _, _ in _imports(path, name, is_package):
            # an import of a package's member names the package; of a module, the module
            while module and module not in known:
                module = module.rpartition(".")[0]
            if module and module != ".".join(name) and module != "secptune":
                edges.add(module)
        graph[".".join(name)] = edges
    # a package's __init__ re-exports its modules: an edge into a package is one into the
    # modules it imports, so circles through re-exports count too; Tarjan's strongly
    # connected components, each of more than one module a circle
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, "\n".join(" <-> ".join(c) for c in circles)
