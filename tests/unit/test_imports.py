"""Every module of `po` and `losses` imports, and the import graph has the shape docs/architecture.md
draws: no cycles, arrows one way (cli -> run -> trainer -> step/models -> data -> bottom modules, `losses` below all),
and no function-local import of a `po` module (those hide cycles)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import losses
import po
from tests.helpers.runs import REPO

PACKAGES = {"po": Path(po.__file__).parent, "losses": Path(losses.__file__).parent}
# Lower number = lower layer. A module may import only modules of its own layer or below.
LAYERS = {"losses": 0, "po": 1, "po.data": 2, "po.models": 3, "po.step": 3, "po.trainer": 4, "po.judge": 4, "po.run": 5,
          "po.report": 5, "po.cli": 6}


def modules() -> list[str]:
    found = []
    for name, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = (name, *path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__main__":
                continue
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def source(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin)


def layer(module: str) -> int:
    parts = module.split(".")
    key = ".".join(parts[:2]) if len(parts) > 2 or (len(parts) == 2 and ".".join(parts) in LAYERS) else parts[0]
    return LAYERS.get(key, LAYERS[parts[0]])


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported po/losses module, whether the import is inside a function) for every import in `module`."""
    tree = ast.parse(source(module).read_text())
    local_nodes = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(fn)}
    known = set(ALL)
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.append((name, id(node) in local_nodes))
    return out


ALL = modules()


def test_every_module_imports():
    """Every module, imported in a fresh interpreter (deepest first, so that a module whose import works only after
    some other module was imported is caught)."""
    order = sorted(ALL, key=lambda m: (-m.count("."), m))
    script = ("import importlib, sys\nbad = []\nfor name in sys.argv[1:]:\n    try:\n"
              "        importlib.import_module(name)\n    except Exception as exc:\n"
              "        bad.append(f'{name}: {type(exc).__name__}: {exc}')\nprint('\\n'.join(bad))\n")
    done = subprocess.run([sys.executable, "-c", script, *order], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr[-2000:]


def test_no_cycles_and_arrows_point_down():
    graph = {m: {dep for dep, _ in imports(m)} for m in ALL}
    upward = [(m, dep) for m, deps in graph.items() for dep in deps
              if layer(dep) > layer(m) and not m.startswith(dep + ".")]
    assert upward == [], f"imports that point up a layer: {upward}"
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph.get(m, ())):
            if dep.startswith(m + "."):
                continue  # a package importing its own submodule
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path + [m, dep])}")
            if dep not in state:
                visit(dep, path + [m])
        state[m] = 2

    for m in ALL:
        if m not in state:
            visit(m, [])


def test_no_function_local_imports_of_po():
    """Function-local imports stay only for heavy third-party modules, never to dodge a cycle among ours."""
    local = [(m, dep) for m in ALL for dep, inside in imports(m) if inside]
    assert local == [], f"function-local imports of po/losses modules: {local}"
