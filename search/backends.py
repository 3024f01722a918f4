"""The search backends behind one interface: each proposes length configurations and has the
shared ``Evaluator`` measure them (cached rows, the budget, the CSV and the lock come with it)."""
from __future__ import annotations

import abc
from pathlib import Path

from .common import BACKENDS
from .evaluator import Evaluator
from .evolution import run_evolution
from .optuna_backend import run_optuna
from .sigopt_backend import run_sigopt


class SearchBackend(abc.ABC):
    """One way to search. ``args`` is a ``settings.SearchSettings`` (or a Namespace with the
    search flags' names)."""

    name: str

    @abc.abstractmethod
    def search(self, args, evaluator: Evaluator, space, output_dir: Path) -> dict | None:
        """Ask ``evaluator(config, self.name, budget=...)`` for each configuration to measure;
        return what ``search_summary.json`` records under "search" (None: nothing)."""


class ConstantSweep(SearchBackend):
    """Only the full model and the constant-rate sweep, which every search measures first."""

    name = "constant"

    def search(self, args, evaluator, space, output_dir):
        return None


class OptunaSearch(SearchBackend):
    name = "optuna"

    def search(self, args, evaluator, space, output_dir):
        return run_optuna(args, evaluator, space, output_dir)


class SigOptSearch(SearchBackend):
    name = "sigopt"

    def search(self, args, evaluator, space, output_dir):
        return run_sigopt(args, evaluator, space, output_dir)


class EvolutionSearchBackend(SearchBackend):
    name = "evolution"

    def search(self, args, evaluator, space, output_dir):
        return run_evolution(args, evaluator, space, output_dir)


BACKEND_TYPES = {backend.name: backend for backend in (SigOptSearch, OptunaSearch, EvolutionSearchBackend,
                                                        ConstantSweep)}
assert tuple(BACKEND_TYPES) == BACKENDS  # the flag's choices, in order


def backend_named(name: str) -> SearchBackend:
    return BACKEND_TYPES[name]()
