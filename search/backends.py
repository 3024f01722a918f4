"""The search backends behind one interface: each proposes length configurations and has the
shared ``Evaluator`` measure them (cached rows, the budget, the CSV and the lock come with it)."""
from __future__ import annotations

import abc
from pathlib import Path

from .space import BACKENDS
from .evaluator import Evaluator
from .evolution import run_evolution
from .optuna_backend import open_study, run_optuna
from .study_rows import SharedRows
from .sigopt_backend import ObservationRows, run_sigopt


class SearchBackend(abc.ABC):
    """One way to search. ``args`` is a ``settings.SearchSettings`` (or a Namespace with the
    search flags' names)."""

    name: str

    def shared_rows(self, args, output_dir: Path, space, measured: dict | None, description: dict) -> SharedRows | None:
        """Where this backend's workers on other machines share their rows (None: only the
        output folder). Called before anything is measured; ``description``: ``search_description``."""
        return None

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
    """Every worker's rows live in the study too (``StudyRows``)."""

    name = "optuna"

    def shared_rows(self, args, output_dir, space, measured, description):
        self.study, rows, self.details = open_study(args, output_dir, space, measured, description)
        return rows

    def search(self, args, evaluator, space, output_dir):
        return run_optuna(args, evaluator, space, self.study, self.details)


class SigOptSearch(SearchBackend):
    """Every worker's search rows come back from the experiment's observations."""

    name = "sigopt"

    def shared_rows(self, args, output_dir, space, measured, description):
        return ObservationRows(space)

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
