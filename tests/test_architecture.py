"""The arrows of DESIGN.md, checked on the source: no import cycles, no forbidden imports.

The import graph is built from the ``ast`` of every module of ``lstc/``, ``data_prep/``,
``pipelines/`` and ``tuning/`` — imports inside functions included, since a lazy import is
still a dependency — so a cycle or a wrong-way arrow fails here before it confuses anyone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lstc", "data_prep", "pipelines", "tuning")

#: third-party or first-party top-level packages each package must not import
FORBIDDEN_TOP = {
    "lstc": {"ray", "mlflow", "optuna", "data_prep", "pipelines", "tuning"},
    "data_prep": {"mlflow", "optuna", "torch", "pipelines", "tuning", "lstc"},
    "pipelines": {"tuning", "optuna"},
    "tuning": set(),
}

#: layers inside ``pipelines``: a module may import modules of a lower layer, or of its own
#: layer only inside the same sub-package (so ``train`` and ``eval`` never import each other)
PIPELINE_LAYERS: dict[str, float] = {
    "pipelines.config": 0,
    "pipelines.ray_setup": 0,
    "pipelines.jobs": 1,
    "pipelines.data": 1,
    "pipelines.checkpoint": 1,
    "pipelines.motion_pretrain": 1,  # lstc pretrain-temporal: data_prep + lstc only
    "pipelines.inference": 2,
    "pipelines.predict": 2.5,  # video prediction on top of inference, used by mlops serving
    "pipelines.mlops": 3,
    "pipelines.train": 4,
    "pipelines.eval": 4,
    "pipelines.demo": 5,
    "pipelines.cli": 6,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """First-party modules imported anywhere in ``path`` (``from a import b`` counts ``a.b``
    when ``a.b`` is a module), plus top-level names of third-party imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            for a in node.names:
                if f"{mod}.{a.name}" in known:
                    out.add(f"{mod}.{a.name}")
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = source_modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def first_party(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(edges.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def layer_of(mod: str) -> tuple[str, float] | None:
    for prefix, layer in PIPELINE_LAYERS.items():
        if mod == prefix or mod.startswith(prefix + "."):
            return prefix, layer
    return None


def test_graph_is_complete(graph):
    """Sanity of the checker itself: it sees the modules and their known arrows."""
    assert {"lstc.model", "data_prep.prep", "pipelines.train.driver", "pipelines.cli"} <= set(graph)
    assert "lstc.cmam" in graph["lstc.model"]
    assert "pipelines.checkpoint" in graph["pipelines.inference"]


def test_no_import_cycles(graph):
    cycle = find_cycle(first_party(graph))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_find_cycle_detects_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


#: exceptions to FORBIDDEN_TOP: the console script sits above ``tuning`` (``lstc sweep``)
ALLOWED_TOP = {"pipelines.cli": {"tuning"}}


def allowed_top(mod: str) -> set[str]:
    return {
        top
        for prefix, tops in ALLOWED_TOP.items()
        if mod == prefix or mod.startswith(prefix + ".")
        for top in tops
    }


def test_packages_respect_design_arrows(graph):
    bad = []
    for mod, deps in graph.items():
        forbidden = FORBIDDEN_TOP[mod.split(".")[0]] - allowed_top(mod)
        bad += [f"{mod} -> {d}" for d in sorted(deps) if d.split(".")[0] in forbidden]
    assert not bad, "forbidden imports (see the layout table of DESIGN.md):\n" + "\n".join(bad)


def test_pipelines_layers(graph):
    every = set(PIPELINE_LAYERS)
    unplaced = [m for m in graph if m.startswith("pipelines.") and layer_of(m) is None]
    assert not unplaced, f"modules without a layer in PIPELINE_LAYERS: {unplaced} ({every})"
    bad = []
    for mod, deps in first_party(graph).items():
        src = layer_of(mod)
        for d in deps:
            dst = layer_of(d)
            if src is None or dst is None:
                continue
            if dst[1] > src[1] or (dst[1] == src[1] and dst[0] != src[0]):
                bad.append(f"{mod} (layer {src[1]}) -> {d} (layer {dst[1]})")
    assert not bad, "pipelines layer violations:\n" + "\n".join(sorted(bad))


def test_nothing_imports_the_cli(graph):
    users = [
        m
        for m, deps in graph.items()
        if not m.startswith("pipelines.cli")
        and any(d == "pipelines.cli" or d.startswith("pipelines.cli.") for d in deps)
    ]
    assert not users, f"only the console script may import pipelines.cli: {users}"


def test_system_exit_only_in_the_cli():
    offenders = []
    for mod, path in source_modules().items():
        if mod.startswith("pipelines.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            text = ast.unparse(node) if isinstance(node, ast.Raise | ast.Call) else ""
            if isinstance(node, ast.Raise) and "SystemExit" in text:
                offenders.append(f"{mod}:{node.lineno} {text}")
            elif isinstance(node, ast.Call) and text.startswith("sys.exit("):
                offenders.append(f"{mod}:{node.lineno} {text}")
    assert not offenders, "library code must raise an error the CLI turns into an exit code:\n" + (
        "\n".join(offenders)
    )
