"""The layers' import rules (docs/architecture.md), read from every module's imports with ``ast``:

* ``core`` imports only the paper's top-level modules and itself;
* ``training``, ``search`` and ``serving`` import ``core`` and the paper's modules, never each
  other, except that training's pipeline drives the search (``training`` may import ``search``).

A test fails naming each offending import, file and line. ``STILL_CROSSING`` lists the imports
that still cross a side today, so that none is added and each removed one is struck off."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO_ROOT

SIDES = ("core", "training", "search", "serving")
ALLOWED = {"core": {"core"}, "training": {"core", "training", "search"}, "search": {"core", "search"},
           "serving": {"core", "serving"}}


# serving's API still runs training's sorted-batch evaluation loop and reads the menu through the
# search's module; both move into core (the one batching) and serving (the menu reader).
STILL_CROSSING = {"serving/api.py: serving imports search"}


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


def without_line(violation: str) -> str:
    path, _, what = violation.split(":", 2)
    return f"{path}:{what}"


@pytest.mark.parametrize("side", SIDES)
def test_each_side_imports_only_what_its_layer_may(side):
    found = [v for v in violations() if v.split(":", 2)[2].strip().startswith(side + " ")]
    new = [v for v in found if without_line(v) not in STILL_CROSSING]
    assert new == [], "\n".join(new)


def test_the_imports_still_crossing_are_still_there():
    """Strike an entry off ``STILL_CROSSING`` when its import is gone."""
    assert {without_line(v) for v in violations()} >= STILL_CROSSING
