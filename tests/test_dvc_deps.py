"""Every DVC stage depends on every library file whose change could change its outputs.

A stage's code is the flow module its `cmd` runs plus the library files and folders it lists; the
files those import (module level, transitively) must be listed too, or lie in a listed folder.
Otherwise editing them leaves committed outputs and metrics stale without a word. Imports are read
with `ast`; nothing is imported or run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("lmdata", "lmtrain")
PACKAGES = (*LIBRARIES, "flows")


def module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_nodes(tree: ast.Module):
    """Statements run at import time (inside if/try too), not function or class bodies."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path) -> set[str]:
    """The project modules `path` imports at module level (the longest prefix that is a file)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in module_level_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base]) if base else ".".join(up)
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] not in PACKAGES:
                continue
            for k in range(len(parts), 0, -1):
                if module_file(".".join(parts[:k])):
                    found.add(".".join(parts[:k]))
                    break
    found.discard(me)
    return found


def import_closure(roots: set[str]) -> set[Path]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen or module_file(module) is None:
            continue
        seen.add(module)
        todo.extend(imported_modules(module_file(module)))
    return {module_file(m) for m in seen}


def expanded_stages() -> dict[str, dict]:
    """dvc.yaml's stages with `foreach` expanded (only `${item}` is substituted)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        # a params reference (`${evaluate.models}`) stands for one stage: every item has the same code deps
        items = stage["foreach"] if isinstance(stage["foreach"], list) else ["params"]
        for item in items:
            text = yaml.safe_dump(stage["do"]).replace("${item}", str(item))
            out[f"{name}@{item}"] = yaml.safe_load(text)
    return out


def missing_deps(stage: dict) -> list[str]:
    deps = [str(d).rstrip("/") for d in stage.get("deps", [])]
    roots: set[str] = set()
    match = re.search(r"python -m ([\w.]+)", stage["cmd"])
    if match:
        roots.add(match.group(1))
    for dep in deps:
        path = ROOT / dep
        if dep.split("/")[0] not in LIBRARIES:
            continue
        if path.is_file() and path.suffix == ".py":
            roots.add(module_name(path))
        elif path.is_dir():
            roots.update(module_name(f) for f in path.rglob("*.py"))
    reached = sorted(str(f.relative_to(ROOT)) for f in import_closure(roots))

    def covered(f: str) -> bool:
        return any(f == d or f.startswith(d + "/") for d in deps)

    return [f for f in reached if f.split("/")[0] in LIBRARIES and not f.endswith("__init__.py")
            and not covered(f)]


STAGES = expanded_stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_it_imports(name):
    missing = missing_deps(STAGES[name])
    assert not missing, f"dvc.yaml stage {name!r} imports {missing} but does not list them in deps"


def test_every_python_stage_is_checked():
    """The check above starts from each stage's flow module: every stage must name one."""
    without = [n for n, s in STAGES.items() if not re.search(r"python -m flows\.\w+", s["cmd"])]
    assert not without, f"stages whose cmd runs no flow module: {without}"


def test_the_check_finds_a_missing_import(tmp_path):
    """A stage listing only lmdata/dedup.py misses what dedup.py imports (minhash, stage)."""
    missing = missing_deps({"cmd": "python -m flows.fetch", "deps": ["lmdata/dedup.py"]})
    assert "lmdata/minhash.py" in missing and "lmdata/stage.py" in missing
