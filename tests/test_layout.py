"""The package's rooms: no module reaches into another's private names, and the Space stands below the
quickstart and the sweep (it imports neither, directly or through another module)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mprm_hf"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {
        module_name(path): ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the `mprm_hf` module or object it is bound to, at any depth (lazy imports too)."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mprm_hf"):
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mprm_hf"):
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name
    return bound


def private_uses(name: str, tree: ast.Module) -> list[str]:
    """`from mprm_hf.x import _name`, and `x._name` on a name imported from mprm_hf, in module `name`."""
    bound = imported_names(tree)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("mprm_hf")
            and node.module != name
        ):
            found += [
                f"{name}: from {node.module} import {alias.name}"
                for alias in node.names
                if is_private(alias.name)
            ]
        if isinstance(node, ast.Attribute) and is_private(node.attr) and isinstance(node.value, ast.Name):
            owner = bound.get(node.value.id)
            if owner is not None and owner != name:
                found.append(f"{name}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    """What two modules need is public in one of them."""
    assert [use for name, tree in modules().items() for use in private_uses(name, tree)] == []


def test_the_scan_sees_a_private_import() -> None:
    """The check above finds both forms (so that its silence means something)."""
    tree = ast.parse(
        "from mprm_hf.data import rollout\nfrom mprm_hf.scan import _x\nrollout._typed_rollout(1)\n"
    )
    bound = imported_names(tree)
    assert bound["rollout"] == "mprm_hf.data.rollout" and bound["_x"] == "mprm_hf.scan._x"
    attributes = [
        node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and is_private(node.attr)
    ]
    assert attributes == ["_typed_rollout"]


def mprm_imports(tree: ast.Module) -> set[str]:
    """The `mprm_hf` modules a module imports, at any depth of its code."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mprm_hf"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mprm_hf"))
    return found


def test_the_space_imports_neither_the_quickstart_nor_the_sweep() -> None:
    trees = modules()
    reached, todo = set(), ["mprm_hf.space"]
    while todo:
        name = todo.pop()
        if name in reached or name not in trees:
            continue
        reached.add(name)
        todo += sorted(mprm_imports(trees[name]))
    assert "mprm_hf.embedded" in reached  # where the default model is found or built
    assert not reached & {"mprm_hf.quickstart", "mprm_hf.sweep"}, sorted(reached)
