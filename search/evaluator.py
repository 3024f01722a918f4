"""Evaluation with cache: each configuration measured once, then served from the results file;
the full-length model and the constant-rate sweep every search measures first."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from core.errors import DiskFullError, StoreError, UsageError
from core.files import is_disk_full

from .space import EvaluateFn, LengthConfig, RESULT_KEYS, SearchSpace, sweep_config
from .store import ResultStore

logger = logging.getLogger("search")


class BudgetExhausted(Exception):
    """Raised when a backend asks for a new evaluation after its budget is spent."""


# Errors that end the search; the backends report other evaluation errors as failed trials.
FATAL_ERRORS = (DiskFullError, StoreError)


def store_write_error(err: BaseException, path: Path) -> Exception:
    """A clear error for a failed write of ``path``: DiskFullError when the disk is full."""
    if is_disk_full(err, path.parent):
        return DiskFullError(f"no space left on {path.parent} (writing {path.name}); the rows measured "
                             f"so far are kept in {path}")
    return StoreError(f"cannot write {path}: {err}")


def compute_of(row: dict, objective: str) -> float:
    """The compute metric being minimised: MACs, or measured evaluation seconds."""
    return float(row["macs"]) if objective == "macs" else float(row["eval_seconds"])


class Evaluator:
    """Evaluates a length configuration once; afterwards serves it from the results file.

    Backends hand it points of the space's integer grid (``__call__``, ``cached``); the baselines
    hand it configurations (``measure``). ``space`` translates (None: the grid is the
    configuration, as in the absolute space)."""

    def __init__(self, evaluate_fn: EvaluateFn, store: ResultStore, full_macs: int, objective: str,
                 measured_on: dict | None = None, space: SearchSpace | None = None):
        self.evaluate_fn = evaluate_fn
        self.store = store
        self.space = space
        self.full_macs = int(full_macs)
        self.objective = objective
        self.measured_on = measured_on  # what the rows depend on (the search's fingerprint)
        self.evaluated = 0
        self.cache_hits = 0
        self.failures = 0
        self.progress: tqdm | None = None  # a bar that counts new evaluations (the evolution's)

    def config_of(self, units: Sequence[int]) -> LengthConfig:
        return self.space.config(units) if self.space is not None else tuple(int(x) for x in units)

    def cached(self, units: Sequence[int]) -> dict | None:
        """The stored row of a grid point, or None."""
        return self.store.get(self.config_of(units))

    def __call__(self, units: Sequence[int], backend: str, budget: int | None = None) -> dict:
        """The row for the grid point ``units``: cached if measured before, else measured and
        appended. ``budget``: refuse (BudgetExhausted) to measure a new configuration for
        ``backend`` once that many of its rows (plus failures in this run) exist."""
        return self.measure(self.config_of(units), backend, budget)

    def measure(self, config: Sequence[int | float], backend: str, budget: int | None = None) -> dict:
        """As ``__call__``, for a configuration (token counts or keep fractions)."""
        config = self.space.normalise(config) if self.space is not None else tuple(int(x) for x in config)
        cached = self.store.get(config)
        if cached is None:  # another worker sharing the folder may have measured it
            self.store.refresh()
            cached = self.store.get(config)
        if cached is not None:
            self.cache_hits += 1
            return cached
        if budget is not None and self.store.count(backend) + self.failures >= budget:
            raise BudgetExhausted(backend)
        try:
            result = self.evaluate_fn(config)
        except Exception:
            self.failures += 1
            raise
        if self.progress is not None:
            self.progress.update(1)
        row = self._make_row(config, backend, result)
        try:
            row = self.store.append(row)
        except OSError as err:  # the search cannot go on without its results file
            raise store_write_error(err, self.store.path) from err
        self.evaluated += 1
        logger.info("trial %d [%s] %s: f1 %.2f, macs %d (x%.2f), %.1fs", row["trial"], backend,
                    list(config), row["f1"], row["macs"], row["macs_ratio"], row["eval_seconds"])
        return row

    def _make_row(self, config: LengthConfig, backend: str, result: dict) -> dict:
        if not isinstance(result, dict):
            raise TypeError(f"evaluate_fn must return a dict, got {type(result).__name__}")
        missing = [key for key in RESULT_KEYS if key not in result]
        if missing:
            raise KeyError(f"evaluate_fn result lacks key(s) {missing}; expected {list(RESULT_KEYS)}")
        macs = int(result["macs"])
        if macs <= 0:
            raise UsageError(f"evaluate_fn returned macs={macs} for {list(config)}; expected > 0")
        return {
            "trial": self.store.next_trial(),
            "backend": backend,
            "length_config": config,
            "macs": macs,
            "macs_ratio": self.full_macs / macs,  # speedup: > 1 means cheaper than full length
            "f1": float(result["f1"]),
            "exact_match": float(result["exact_match"]),
            "eval_seconds": float(result["eval_seconds"]),
            "questions": int(result["questions"]),
            "pareto": None,
        }

    def compute(self, row: dict) -> float:
        return compute_of(row, self.objective)


# ----------------------------------------------------------------------------------------------
# Constant-rate sweep (Intel's --measure_rate) and the full-length model
# ----------------------------------------------------------------------------------------------

def run_baselines(evaluator: Evaluator, space: SearchSpace, rates: Sequence[float]) -> None:
    """Measure the full-length model (backend "full") and every constant keep rate ("constant").

    A configuration already measured (e.g. rate 1.0 == full length) is not measured twice.
    """
    evaluator.measure(space.full_config, "full")
    for rate in tqdm(rates, desc="constant-rate sweep", unit="config"):
        evaluator.measure(sweep_config(space, rate), "constant")
