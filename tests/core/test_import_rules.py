"""The layers' import rules (docs/architecture.md), read from every module's imports with ``ast``:

* ``core`` imports only the paper's top-level modules and itself;
* ``training``, ``search`` and ``serving`` import ``core`` and the paper's modules, never each
  other, except that training's pipeline drives the search (``training`` may import ``search``).

A test fails naming each offending import, file and line; another names every Python module at the
top level that is not one of the paper's modules or the two commands (the rooms of the sides are
their packages)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

SIDES = ("core", "training", "search", "serving")
ALLOWED = {"core": {"core"}, "training": {"core", "training", "search"}, "search": {"core", "search"},
           "serving": {"core", "serving"}}


# The design card's modules and the serving command; everything else lives in a side's package.
TOP_LEVEL = {"run_squad.py", "modeling_bert.py", "utils_squad.py", "evaluate_squad.py", "length_drop.py",
             "inference.py"}


def imported_packages(path: Path, package: str):
    """(line, imported top-level project package) of every import in the file of ``package``,
    those inside functions too."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in SIDES:
                yield node.lineno, top


def violations(root: Path = REPO_ROOT) -> list[str]:
    found = []
    for side in SIDES:
        for path in sorted((root / side).rglob("*.py")):
            for line, target in imported_packages(path, side):
                if target not in ALLOWED[side]:
                    found.append(f"{path.relative_to(root)}:{line}: {side} imports {target}")
    return found


@pytest.mark.parametrize("side", SIDES)
def test_each_side_imports_only_what_its_layer_may(side):
    found = [v for v in violations() if v.split(":", 2)[2].strip().startswith(side + " ")]
    assert found == [], "\n".join(found)


def test_the_top_level_holds_only_the_paper_modules_and_the_commands():
    extra = sorted(p.name for p in REPO_ROOT.glob("*.py") if p.name not in TOP_LEVEL)
    assert extra == [], f"modules at the top level that belong in a side's package: {extra}"
