"""lmtrain's layout is its architecture: no import cycles, each layer importing only the layers below
it, and no alignment method importing another method's module (imports read with `ast`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "lmtrain"
METHODS = {"lmtrain.align.sft", "lmtrain.align.reward", "lmtrain.align.dpo", "lmtrain.align.ppo", "lmtrain.align.rloo",
           "lmtrain.align.evaluate"}
# each layer may import itself and the layers before it in this list
LAYERS = ["config", "tokenizer", "progress", "runtime", "data", "models", "pretrain", "inference", "align",
          "evaluate"]


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every lmtrain module `path` imports, anywhere in the file (functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lmtrain")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmtrain"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    known = {module_of(p) for p in PKG.rglob("*.py")}
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    return {module_of(p): imports(p) - {module_of(p)} for p in PKG.rglob("*.py")}


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "lmtrain"


def test_lmtrain_has_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(g.get(m, ())):
            if n.startswith(m + ".") and m.count(".") < n.count("."):
                continue  # a package importing its own submodules is not a cycle
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n] if n in stack else [m, n])
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_no_alignment_method_imports_another():
    g = graph()
    for m in METHODS:
        assert not g[m] & (METHODS - {m}), (m, g[m] & METHODS)


def test_each_layer_imports_only_layers_below_it():
    for m, deps in graph().items():
        if layer(m) not in LAYERS:
            continue
        mine = LAYERS.index(layer(m))
        for d in deps:
            if layer(d) in LAYERS:
                assert LAYERS.index(layer(d)) <= mine, f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"


def test_library_never_imports_flows_prefect_or_dvc():
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("flows", "prefect", "dvc", "polars"), (path, name)
