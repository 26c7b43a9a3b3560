"""The package's imports point one way (docs/design.md §Layers and naming).

Every ``.py`` under ``dapkernels/`` is parsed (not imported) and every import of a
``dapkernels`` module is checked, deferred ones inside functions included:

* it must point down the layers of :data:`LAYERS`, or stay inside its own room: an import of a
  higher layer, or of a sibling room on the same layer, fails;
* it must not take a ``_private`` name (or a ``_private`` module) from another room, except
  the low-level private modules of :data:`LOW_LEVEL`;
* the import graph has no cycle.

A room is a set of modules that work together (a package such as ``dapkernels.bench``, or a
module such as ``dapkernels.losses``); a module belongs to the room of its longest matching
pattern (a pattern ending in ``*`` matches any name that starts with it).  A module that no
pattern places fails the test: a new room is placed here and in docs/design.md together.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dapkernels"

#: Layers from the bottom up: (layer, {room: module patterns}).  A module may import modules of
#: its own room and of any lower layer.
LAYERS: list[tuple[str, dict[str, tuple[str, ...]]]] = [
    ("compiled core", {"_C": ("dapkernels._C",)}),
    ("foundation", {
        "kernels": ("dapkernels.kernels",),
        "_validation": ("dapkernels._validation",),
        "_version": ("dapkernels._version",),
        "_torch_private": ("dapkernels._torch_private",),
        "_machine": ("dapkernels._machine",),
    }),
    ("reference backend", {
        "backends.reference": ("dapkernels.backends.reference*",),
        "backends.torch": ("dapkernels.backends.torch*",),
    }),
    ("device backends", {
        "backends.cpu": ("dapkernels.backends.cpu*",),
        "backends.triton": ("dapkernels.backends.triton",),
    }),
    ("backend selection", {"backends": ("dapkernels.backends",)}),
    ("ops", {"ops": ("dapkernels.ops",)}),
    ("global-batch ops", {"distributed": ("dapkernels.distributed",)}),
    ("functional", {
        "functional": ("dapkernels.functional",),
        "covariance": ("dapkernels.covariance",),
    }),
    ("modules", {"losses": ("dapkernels.losses",)}),
    ("adversarial modules", {"adversarial": ("dapkernels.adversarial",)}),
    ("consumers of the API", {
        "metrics": ("dapkernels.metrics",),
        "baselines": ("dapkernels.baselines",),
    }),
    ("public API", {"dapkernels": ()}),  # the package's __init__ only
    ("applications", {
        "bench": ("dapkernels.bench",),
        "train": ("dapkernels.train",),
    }),
    ("demo", {"demo": ("dapkernels.demo",)}),
    ("command line", {"cli": ("dapkernels.cli", "dapkernels.__main__")}),
]

#: private modules every room may import (and take names from).
LOW_LEVEL = {"dapkernels._C", "dapkernels._validation", "dapkernels._version",
             "dapkernels._torch_private", "dapkernels._machine"}


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return module.startswith(pattern[:-1])
    return module == pattern or module.startswith(pattern + ".")


def place(module: str) -> tuple[int, str]:
    """``(layer index, room)`` of a dotted module name."""
    if module == "dapkernels":
        return next(i for i, (_, rooms) in enumerate(LAYERS) if "dapkernels" in rooms), "dapkernels"
    best: tuple[int, int, str] | None = None
    for i, (_, rooms) in enumerate(LAYERS):
        for room, patterns in rooms.items():
            for pattern in patterns:
                if _matches(module, pattern) and (best is None or len(pattern) > best[0]):
                    best = (len(pattern), i, room)
    if best is None:
        raise LookupError(f"{module} is in no room of tests/test_layering.py LAYERS "
                          f"(place it there and in docs/design.md §Layers and naming)")
    return best[1], best[2]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()
KNOWN = set(MODULES) | {"dapkernels._C"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def imports_of(module: str, path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, imported module, imported name or None)`` for each dapkernels import of
    ``module``, whose source is ``path``; an attribute read through an imported module
    (``F._helper`` after ``from . import functional as F``) counts as importing that name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[int, str, str | None]] = []
    aliases: dict[str, str] = {}  # local name → module, for ``from package import module``
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None) for a in node.names
                    if a.name.split(".")[0] == "dapkernels"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "dapkernels":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in KNOWN:  # ``from package import submodule``
                    out.append((node.lineno, sub, None))
                    aliases[alias.asname or alias.name] = sub
                else:
                    out.append((node.lineno, source, alias.name))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            out.append((node.lineno, aliases[node.value.id], node.attr))
    return out


def _private_module(module: str) -> bool:
    return any(_is_private(part) for part in module.split("."))


def violations(modules: dict[str, Path] = MODULES) -> list[str]:
    found = []
    for module, path in modules.items():
        layer, room = place(module)
        for line, target, name in imports_of(module, path):
            where = f"{os.path.relpath(path, PACKAGE.parent)}:{line}"
            t_layer, t_room = place(target)
            if t_room != room and t_layer >= layer:
                kind = "a sibling room" if t_layer == layer else "a higher layer"
                found.append(f"{where}: {module} ({room}) imports {target} ({t_room}), "
                             f"{kind}")
            if t_room != room and target not in LOW_LEVEL:
                if _private_module(target):
                    found.append(f"{where}: {module} imports the private module {target}")
                elif name is not None and _is_private(name):
                    found.append(f"{where}: {module} imports the private name {name} of "
                                 f"{target}")
    return found


def cycles(extra: dict[str, list[str]] | None = None) -> list[list[str]]:
    """Import cycles among the package's modules (``extra``: edges added for a test)."""
    graph = {m: sorted({t for _, t, _ in imports_of(m, p) if t in MODULES}
                       | set((extra or {}).get(m, ())))
             for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    return found


def test_every_module_has_a_room():
    for module in MODULES:
        place(module)


def test_imports_point_down_and_take_no_private_names():
    assert violations() == []


def test_no_import_cycles():
    assert cycles() == []


@pytest.mark.parametrize("source, expected", [
    ("from .train.config import TrainConfig\n", "a higher layer"),
    ("from .covariance import RunningCovariance\n", "a sibling room"),
    ("def f():\n    from .ops.mmd import _mmd_forward\n", "private name _mmd_forward"),
    ("from .ops import _autograd\n", "private module dapkernels.ops._autograd"),
    ("from .ops import mmd as M\nM._mmd_forward\n", "private name _mmd_forward"),
])
def test_the_checker_catches(tmp_path, source, expected):
    """Each rule fires on an import planted in ``dapkernels.functional`` (deferred ones too)."""
    planted = tmp_path / "functional.py"
    planted.write_text(source)
    assert any(expected in v for v in violations({"dapkernels.functional": planted}))


def test_the_cycle_check_catches():
    found = cycles({"dapkernels.train.adaptation": ["dapkernels.train.dann"]})
    assert ["dapkernels.train.adaptation", "dapkernels.train.dann",
            "dapkernels.train.adaptation"] in found
