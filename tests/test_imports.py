"""The import graph of clapcomp (read with `ast`, counting function-local imports and module names
given as strings to importlib) has no cycles and follows the dependency rules of the architecture:
models / losses / audio are pure JAX, data never reaches up into models or train, torch and
transformers stay in convert/, and `clapcomp.load` needs no training or data packages."""

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "clapcomp"
MODULE_STRING = re.compile(r"clapcomp(\.\w+)+(:\w+)?")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, bool]]:
    """[(imported module, at module level?)] of one clapcomp module; a `from pkg import sub` names the
    submodule when `pkg.sub` is a module; a string naming a clapcomp module counts as an import."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, top: bool):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            top = False
        if isinstance(node, ast.Import):
            found.extend((a.name, top) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from . import x` / `from ..y import x`
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for a in node.names:
                found.append((f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base, top))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.fullmatch(node.value):
            module = node.value.partition(":")[0]
            if module in MODULES:
                found.append((module, False))
        for child in ast.iter_child_nodes(node):
            visit(child, top)

    visit(ast.parse(path.read_text(), str(path)), True)
    return [(m, top) for m, top in found if m != "__future__"]


GRAPH = {name: _imports(name) for name in MODULES}


def _edges(name: str, *, top_only: bool = False) -> set[str]:
    return {m for m, top in GRAPH[name] if m in MODULES and m != name and (top or not top_only)}


def _cycles() -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []

    def strongconnect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(_edges(v)):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(set(scc))

    for v in sorted(MODULES):
        if v not in index:
            strongconnect(v)
    cycles = []
    for scc in sccs:  # walk from the smallest name back to itself inside its component
        start = min(scc)
        path, seen = [start], {start}
        while True:
            nxt = sorted(_edges(path[-1]) & scc)
            if start in nxt and len(path) > 1:
                cycles.append([*path, start])
                break
            step = next((w for w in nxt if w not in seen), start)
            path.append(step)
            seen.add(step)
            if step == start:
                cycles.append(path)
                break
    return cycles


def test_the_graph_reader_sees_local_imports_and_importlib_strings():
    assert "clapcomp.inference" in _edges("clapcomp")  # `load()` imports it inside the function
    assert "clapcomp.evaluate.run" in _edges("clapcomp.cli")  # COMMANDS names modules as strings
    assert "clapcomp.models.configs" in _edges("clapcomp.models.clap", top_only=True)


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def _under(prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in MODULES if m in prefixes or m.startswith(tuple(p + "." for p in prefixes))]


PURE = ("clapcomp.models", "clapcomp.losses", "clapcomp.audio")
RULES = [  # (modules, what they must not import, why)
    (
        PURE,
        (
            "clapcomp.data",
            "clapcomp.train",
            "clapcomp.evaluate",
            "grain",
            "tensorflow_datasets",
            "orbax",
            "torch",
            "transformers",
            "ml_collections",
        ),
        "models / losses / audio are pure JAX/Flax",
    ),
    (("clapcomp.losses",), ("clapcomp.models",), "losses take embeddings, not models"),
    (("clapcomp.audio",), ("clapcomp",), "audio is a leaf"),
    (("clapcomp.data",), ("clapcomp.models", "clapcomp.train", "clapcomp.evaluate"), "data sits below models"),
    (
        ("clapcomp.use",),
        ("clapcomp.train", "clapcomp.data", "clapcomp.evaluate", "clapcomp.convert", "grain", "orbax", "torch"),
        "use/ works through inference.py only",
    ),
]


@pytest.mark.parametrize(("prefixes", "forbidden", "why"), RULES, ids=[r[2] for r in RULES])
def test_dependency_rules(prefixes, forbidden, why):
    bad = [
        f"{m} imports {i}"
        for m in _under(prefixes)
        for i, _ in GRAPH[m]
        if i in forbidden or i.startswith(tuple(f + "." for f in forbidden))
    ]
    assert not bad, f"{why}:\n" + "\n".join(bad)


def test_torch_and_transformers_only_lazily_in_convert():
    bad = [
        f"{m} imports {i}" + ("" if m.startswith("clapcomp.convert.") else " outside convert/")
        for m in MODULES
        for i, top in GRAPH[m]
        if i.split(".")[0] in ("torch", "transformers") and (top or not m.startswith("clapcomp.convert."))
    ]
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_faces():
    faces = {"clapcomp.cli", "clapcomp.train.loop"}
    commands = {"clapcomp.cli", "clapcomp.demo"}  # `clapcomp demo` runs the training loop
    bad = [f"{m} imports {face}" for m in MODULES if m not in commands for face in faces & _edges(m)]
    assert not bad, "\n".join(bad)


def test_load_needs_only_the_core_install():
    """`clapcomp.load` of an HF dir or an export, and the export readers, import at module level only
    packages of the core install (the training-workdir path, train/checkpoint.py, needs `[train]`)."""
    core = {"jax", "jaxlib", "flax", "numpy", "safetensors", "tokenizers", "soxr", "soundfile", "flatbuffers"}
    reached = set()
    todo = ["clapcomp", "clapcomp.inference", "clapcomp.export", "clapcomp.convert.hf", "clapcomp._stablehlo_loader"]
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo.extend(_edges(m, top_only=True))
    bad = {m: sorted(_third_party_top(m) - core) for m in sorted(reached) if _third_party_top(m) - core}
    assert not bad, f"module-level imports outside the core install: {bad}"


def _third_party_top(name: str) -> set[str]:
    roots = {m.split(".")[0] for m, top in GRAPH[name] if top}
    return {r for r in roots if r != "clapcomp" and r not in sys.stdlib_module_names}
