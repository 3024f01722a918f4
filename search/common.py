"""Names shared by the search's parts: file names, backends, objectives, the search space and
the constant-rate sweep's configurations."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence


import length_drop
from errors import UsageError

logger = logging.getLogger("search")


logger = logging.getLogger(__name__)

BACKENDS = ("sigopt", "optuna", "evolution", "constant")
OBJECTIVES = ("macs", "time")
CSV_COLUMNS = ("trial", "backend", "length_config", "macs", "macs_ratio", "f1", "exact_match",
               "eval_seconds", "questions", "pareto")
RESULT_KEYS = ("f1", "exact_match", "macs", "eval_seconds", "questions")
RESULTS_CSV = "search_results.csv"
FRONT_CSV = "pareto_front.csv"
PLOT_PNG = "pareto.png"
SUMMARY_JSON = "search_summary.json"
SIGOPT_STATE_JSON = "sigopt_experiment.json"
META_JSON = "search_results.meta.json"
# One search's files in its folder; --search_restart moves them aside together.
SEARCH_FILES = (RESULTS_CSV, META_JSON, FRONT_CSV, PLOT_PNG, SUMMARY_JSON, SIGOPT_STATE_JSON, "search.db")
# LAT's sample_length_configuration never goes below 2 tokens; the constant-rate sweep keeps it.
SWEEP_FLOOR = 2
DEFAULT_RATES = "1.0,0.95,0.9,0.85,0.8,0.75,0.7"

LengthConfig = tuple[int, ...]
EvaluateFn = Callable[[LengthConfig], dict]



@dataclass(frozen=True)
class SearchSpace:
    """One length per layer, each in [min_length, max_length], non-increasing over layers."""

    num_layers: int
    min_length: int
    max_length: int

    def contains(self, config: Sequence[int]) -> bool:
        return (len(config) == self.num_layers
                and all(self.min_length <= length <= self.max_length for length in config)
                and all(a >= b for a, b in zip(config, config[1:])))

    def repair(self, lengths: Iterable[float]) -> LengthConfig:
        """Round, clip to the bounds and make non-increasing (running minimum)."""
        repaired, previous = [], self.max_length
        for length in lengths:
            length = min(max(int(round(length)), self.min_length), previous)
            repaired.append(length)
            previous = length
        if len(repaired) != self.num_layers:
            raise UsageError(f"length configuration has {len(repaired)} layers, expected {self.num_layers}")
        return tuple(repaired)

    @property
    def full(self) -> LengthConfig:
        return (self.max_length,) * self.num_layers

    @property
    def smallest(self) -> LengthConfig:
        return (self.min_length,) * self.num_layers


def sweep_config(space: "SearchSpace", keep_rate: float) -> LengthConfig:
    """The constant-rate sweep's configuration (Intel's ``--measure_rate``): every layer keeps
    ``keep_rate`` of the previous layer's tokens, never fewer than 2 (may go below the search's
    min length)."""
    return length_drop.constant_drop_config(space.max_length, space.num_layers, 1.0 - keep_rate, SWEEP_FLOOR)
