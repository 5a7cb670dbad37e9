"""The package's layers: a module imports (at run time) only from its own layer or the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "chatgpt_apiserver"
# Lowest first; README's code map lists the same order, top down.
LAYERS = [
    {"secret", "errors", "auth"},
    {"transport"},
    {"config", "ops", "endpoints", "call"},
    {"controllers"},
    {"state"},
    {"scheduling"},
    {"clients"},
    {"gateway"},
    {"relay"},
    {"web"},
    {"server", "cli", "__main__"},
]


def layer_of(module: str) -> int:
    top = module.split(".", maxsplit=1)[0]
    return next(index for index, names in enumerate(LAYERS) if top in names)


def runtime_imports(path: Path) -> list[str]:
    """Package modules imported by `path`, outside `if TYPE_CHECKING:` blocks, relative to the package."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(PACKAGE).with_suffix("").parts
    found = []
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            typing_only.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or id(node) in typing_only or not node.level:
            continue
        base = list(here[:-1])
        if node.level > 1:
            base = base[:len(base) - (node.level - 1)]
        target = ".".join([*base, *(node.module.split(".") if node.module else [])])
        if target:
            found.append(target)
        else:  # "from .. import x": modules of the package root
            found.extend(alias.name for alias in node.names if alias.name != "__version__")
    return found


def test_imports_go_one_way() -> None:
    wrong = []
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 40
    for path in modules:
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module == "__init__":
            continue
        for target in runtime_imports(path):
            if layer_of(target) > layer_of(module):
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_every_module_has_a_layer() -> None:
    tops = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in PACKAGE.glob("*")
            if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists())}
    tops.discard("__init__")
    assert tops == set().union(*LAYERS)
