"""The package imports one way only (docs/architecture.md, "Layers"): no module imports a layer
above its own, no import cycle exists inside `star_jax`, and no module uses another module's
`_private` name. `star_jax.sources` reads the imports from source, function-local ones too."""

from __future__ import annotations

import pytest

from star_jax import sources

# Lowest first; a module may import its own layer and those below it.
CORE = {"config", "errors", "fileio", "parallel", "tracking", "checkpoint", "metrics", "train_loop",
        "sources", "watchdog"}
LAYERS = (
    ("core", lambda parts: parts == () or (len(parts) == 1 and parts[0] in CORE)),
    ("data", lambda parts: parts[0] == "data"),
    ("llm/graph/store", lambda parts: parts[0] in ("llm", "graph", "store")),
    ("gnn", lambda parts: parts[0] == "gnn"),
    ("eval", lambda parts: parts[0] == "eval"),
    ("pipeline", lambda parts: parts[0] == "pipeline"),
    ("cli", lambda parts: parts[0] == "cli"),
)


MODULES = sources.modules()


def layer(module: str) -> int:
    parts = tuple(module.split(".")[1:])
    for i, (_, member) in enumerate(LAYERS):
        if member(parts):
            return i
    raise AssertionError(f"{module}: no layer; add it to LAYERS in {__file__}")


IMPORTS = {m: sources.imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        layer(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    up = [t for t in sorted(IMPORTS[module].targets) if t in MODULES and layer(t) > layer(module)]
    assert not up, f"{module} ({LAYERS[layer(module)][0]}) imports a higher layer: {up}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module):
    assert not IMPORTS[module].private, f"{module} uses private names {IMPORTS[module].private}"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _package_edges() -> dict[str, set[str]]:
    # `star_jax.store` (the package) re-exports its modules; an import of the package is an import
    # of what it re-exports, so the package node keeps its own edges and nothing else is special.
    return {m: {t for t in IMPORTS[m].targets if t in MODULES} for m in MODULES}


def test_no_import_cycles():
    assert cycles(_package_edges()) == []


def test_the_checker_finds_a_cycle_and_a_private_name():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert layer("star_jax.gnn.model") > layer("star_jax.graph.batch") > layer("star_jax.data.schema")


def test_imports_are_read_from_source(tmp_path, monkeypatch):
    """Against hand-written modules: relative, aliased, function-local and private imports."""
    fake = {"star_jax.a": "from star_jax import b as bee\nfrom .c import _hidden\ndef f():\n"
                          "    import star_jax.d\n    return bee._x, star_jax.d\n",
            "star_jax.b": "", "star_jax.c": "_hidden = 1\n", "star_jax.d": "from star_jax.b import *\n"}
    paths = {}
    for name, text in fake.items():
        paths[name] = tmp_path / f"{name.split('.')[-1]}.py"
        paths[name].write_text(text)
    monkeypatch.setattr(sources, "modules", lambda: paths)
    found = sources.imports("star_jax.a")
    assert found.targets == {"star_jax.b", "star_jax.c", "star_jax.d"}
    assert sorted(found.private) == ["star_jax.b._x", "star_jax.c._hidden"]
    assert sources.closure("star_jax.d") == ["star_jax.b", "star_jax.d"]
    before = sources.code_digest("star_jax.d")
    assert sources.code_digest("star_jax.a") != before
    paths["star_jax.b"].write_text("x = 1\n")  # an edit to an imported module changes the digest
    assert sources.code_digest("star_jax.d") != before
