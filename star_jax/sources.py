"""The package's import graph, read from source with `ast` (nothing is imported).

`imports(module)` lists the star_jax modules one module imports (function-local imports too) and
the other modules' `_private` names it uses; `closure(*modules)` follows them transitively, with
the packages each module sits in; `code_digest(*modules)` fingerprints the source of a closure, so
a pipeline stage's key changes when any code the stage runs changes (docs/architecture.md,
decision 15).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent


class ModuleImports(NamedTuple):
    targets: frozenset[str]  # star_jax modules imported (a package import names the package)
    private: tuple[str, ...]  # "module._name" of other modules' private names this module uses


@functools.cache
def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> source file."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(("star_jax", *parts))] = path
    return found


def source(module: str) -> bytes:
    return modules()[module].read_bytes()


def imports(module: str) -> ModuleImports:
    return _imports(module, str(modules()[module]), source(module))


@functools.lru_cache(maxsize=1024)
def _imports(module: str, path: str, text: bytes) -> ModuleImports:
    # Keyed by the source itself: every stage's digest walks the same modules, and an edit is a new key.
    tree = ast.parse(text, path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    targets: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}  # local name -> the star_jax module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("star_jax"):
                    targets.add(a.name)
                    if a.asname:
                        aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            if not base.startswith("star_jax"):
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in modules():
                    targets.add(full)
                    aliases[a.asname or a.name] = full
                else:
                    targets.add(base)
                    if a.name.startswith("_") and base != module:
                        private.append(full)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and aliases[node.value.id] != module
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            private.append(f"{aliases[node.value.id]}.{node.attr}")
    targets.discard(module)
    return ModuleImports(frozenset(t for t in targets if t in modules()), tuple(private))


def closure(*roots: str) -> list[str]:
    """`roots` and every star_jax module they import, directly or not, with their packages."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(imports(m).targets)
        parts = m.split(".")
        parents = (".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b.c runs a and a.b
        todo.extend(p for p in parents if p in modules())
    return sorted(seen)


def code_digest(*roots: str) -> str:
    """sha256 over the names and source bytes of `closure(*roots)`."""
    h = hashlib.sha256()
    for m in closure(*roots):
        h.update(m.encode() + b"\0" + hashlib.sha256(source(m)).digest())
    return h.hexdigest()
