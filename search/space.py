"""Names shared by the search's parts: file names, backends, objectives, the search space and
the constant-rate sweep's configurations."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence


import length_drop
from core.errors import UsageError

logger = logging.getLogger("search")

BACKENDS = ("sigopt", "optuna", "evolution", "constant")
OBJECTIVES = ("macs", "time")
LENGTH_SPACES = ("absolute", "relative")  # token counts (the paper's) or keep fractions
BATCHINGS = ("padded", "sorted")          # how configurations are evaluated and timed
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

LengthConfig = tuple[int, ...] | tuple[float, ...]  # token counts, or keep fractions (relative)
Units = tuple[int, ...]                            # a point of the backends' integer grid
EvaluateFn = Callable[[LengthConfig], dict]


@dataclass(frozen=True)
class SearchSpace:
    """The backends' integer grid: one value per layer, each in [min_length, max_length],
    non-increasing over layers. In the absolute space (the paper's) a value is a token count and
    the configuration itself. In the relative space (``fraction_step`` set) a value u stands for
    the keep fraction ``u * fraction_step``, so ``max_length`` is ``1 / fraction_step``; the
    backends (SigOpt's int parameters, Optuna, the evolution) search the same kind of grid in
    both spaces, and ``config``/``units`` translate at the evaluator and the store."""

    num_layers: int
    min_length: int
    max_length: int
    fraction_step: float | None = None

    @classmethod
    def relative(cls, num_layers: int, min_fraction: float, fraction_step: float) -> "SearchSpace":
        top = round(1.0 / fraction_step)
        return cls(num_layers, min(top, max(1, math.ceil(min_fraction / fraction_step - 1e-9))), top,
                   fraction_step)

    @property
    def is_relative(self) -> bool:
        return self.fraction_step is not None

    @property
    def name(self) -> str:
        return "relative" if self.is_relative else "absolute"

    def config(self, units: Sequence[int]) -> LengthConfig:
        """The length configuration a grid point stands for."""
        if not self.is_relative:
            return tuple(int(u) for u in units)
        return tuple(round(int(u) * self.fraction_step, 6) for u in units)

    def units(self, config: Sequence[int | float]) -> Units:
        """The grid point of a configuration (the nearest one, for a relative sweep's)."""
        if not self.is_relative:
            return tuple(int(x) for x in config)
        return tuple(int(round(float(x) / self.fraction_step)) for x in config)

    def normalise(self, config: Sequence[int | float]) -> LengthConfig:
        """A configuration as the store keys it: ints, or floats in the relative space."""
        if self.is_relative:
            return tuple(float(x) for x in config)
        return tuple(int(x) for x in config)

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
    def full(self) -> Units:
        return (self.max_length,) * self.num_layers

    @property
    def smallest(self) -> Units:
        return (self.min_length,) * self.num_layers

    @property
    def full_config(self) -> LengthConfig:
        """The full-length configuration: every layer at max_seq_length, or keep fraction 1.0."""
        return self.config(self.full)


def sweep_config(space: "SearchSpace", keep_rate: float) -> LengthConfig:
    """The constant-rate sweep's configuration (Intel's ``--measure_rate``): every layer keeps
    ``keep_rate`` of the previous layer's tokens, never fewer than 2 (may go below the search's
    min length). In the relative space the same rule on fractions: layer i keeps
    ``keep_rate ** (i + 1)`` of the batch's longest sequence (4 decimals; off the search's grid
    and below its lower bound if need be, as a baseline)."""
    if space.is_relative:
        return length_drop.sample_relative_length_configuration(space.num_layers,
                                                                length_drop_ratio=1.0 - keep_rate)
    return length_drop.constant_drop_config(space.max_length, space.num_layers, 1.0 - keep_rate, SWEEP_FLOOR)
