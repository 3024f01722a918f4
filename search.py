"""Per-layer length-configuration search for Dynamic-TinyBERT (Drop-and-Restore at inference).

A *length configuration* gives, for each transformer layer, how many tokens that layer keeps
(LAT's ``length_config``). The search looks for configurations that trade SQuAD F1 against
compute, for any budget, and writes every measured configuration to ``search_results.csv``.

The module knows nothing about the model: it is handed ``evaluate_fn(length_config) -> dict``
with keys ``f1``, ``exact_match``, ``macs``, ``eval_seconds``, ``questions``.

Backends (``--search_backend``):

* ``sigopt``: the paper's SigOpt multi-metric experiment (real ``sigopt`` client).
* ``optuna``: Intel's offline variant, multi-objective TPE with a shared storage.
* ``evolution``: LAT's evolutionary search (mutation + crossover on the Pareto front).
* ``constant``: only the constant-rate sweep (Intel's ``--measure_rate``).

Every run also measures the full-length model and the constant-rate sweep. Rows are appended and
fsync'd as soon as they are measured, so an interrupted search resumes without re-evaluating.
See docs/search.md for the design and the differences from the reference code.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import io
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm import tqdm

import length_drop
from errors import DiskFullError, SearchBackendError, StoreError, UsageError
from utils_squad import atomic_path, atomic_write_text, is_disk_full

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


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def add_search_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the search flags (LAT's evolution flags keep their names and defaults)."""
    group = parser.add_argument_group("length-configuration search")
    group.add_argument("--do_search", action="store_true",
                       help="Search per-layer length configurations (F1 vs compute).")
    group.add_argument("--search_backend", default=None, choices=BACKENDS,
                       help="sigopt | optuna | evolution | constant. Default, decided when the "
                            "search starts: sigopt if env SIGOPT_API_TOKEN is set, else optuna.")
    group.add_argument("--search_budget", type=int, default=150,
                       help="Configurations the search backend evaluates (cached ones count). "
                            "Default 150 as Intel's SigOpt observation_budget / Optuna n_trials.")
    group.add_argument("--search_min_length", type=int, default=91,
                       help="Smallest number of tokens a layer may keep (Intel: 91).")
    group.add_argument("--search_objective", default="macs", choices=OBJECTIVES,
                       help="Compute to minimise: 'macs' (deterministic) or 'time' (measured "
                            "evaluation seconds, Intel's evalTime).")
    group.add_argument("--search_subset", type=int, default=None,
                       help="Evaluate on the first N dev questions only (CSV column 'questions').")
    group.add_argument("--search_storage", default=None,
                       help="Optuna storage URL (any SQLAlchemy URL, e.g. postgresql://...); "
                            "default sqlite:///<output_dir>/search.db.")
    group.add_argument("--search_study_name", default=None,
                       help="Optuna study / SigOpt experiment name "
                            "(default dynamic-tinybert-<objective>).")
    group.add_argument("--search_restart", action="store_true",
                       help="Start afresh: move the folder's earlier search files (CSV, Optuna "
                            "search.db, SigOpt experiment id, plot) to previous_search_<time>/.")
    group.add_argument("--search_seed", type=int, default=42, help="Seed of the search sampler.")
    group.add_argument("--search_rates", default=DEFAULT_RATES,
                       help="Comma list of keep rates for the constant-rate sweep: each layer "
                            "keeps this fraction of the previous layer's tokens.")
    group.add_argument("--sigopt_parallel_bandwidth", type=int, default=1,
                       help="SigOpt parallel_bandwidth (number of workers).")
    group.add_argument("--sigopt_experiment_id", default=None,
                       help="Join / resume this existing SigOpt experiment.")
    group.add_argument("--sigopt_project", default=None, help="SigOpt project id.")
    # LAT (drop_and_restore_utils.add_search_args): same names and defaults.
    group.add_argument("--evo_iter", type=int, default=100, help="Evolution iterations (LAT).")
    group.add_argument("--population_size", type=int, default=20,
                       help="Initial constant-ratio population (LAT).")
    group.add_argument("--mutation_size", type=int, default=30, help="Mutations per iteration (LAT).")
    group.add_argument("--mutation_prob", type=float, default=0.5,
                       help="Per-layer mutation probability (LAT).")
    group.add_argument("--crossover_size", type=int, default=30,
                       help="Crossovers per iteration (LAT).")
    return parser


def resolve_backend(args: argparse.Namespace) -> str:
    """The backend asked for, or sigopt when SIGOPT_API_TOKEN is set, else optuna."""
    backend = getattr(args, "search_backend", None)
    if backend is None:
        backend = "sigopt" if os.environ.get("SIGOPT_API_TOKEN") else "optuna"
    return backend


def parse_rates(text: str) -> list[float]:
    """``"1.0,0.9"`` -> ``[1.0, 0.9]``; each rate must lie in (0, 1]."""
    try:
        rates = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError as err:
        raise UsageError(f"--search_rates: expected a comma list of numbers, got {text!r}") from err
    if not rates or any(not 0.0 < rate <= 1.0 for rate in rates):
        raise UsageError(f"--search_rates: every keep rate must lie in (0, 1], got {text!r}")
    return rates


def validate_args(args: argparse.Namespace, num_hidden_layers: int, max_seq_length: int) -> None:
    """Raise UsageError naming the flag for any setting the search cannot run with."""
    backend = resolve_backend(args)
    if backend not in BACKENDS:
        raise UsageError(f"--search_backend: unknown backend {backend!r}; expected one of {BACKENDS}")
    if args.search_objective not in OBJECTIVES:
        raise UsageError(f"--search_objective: expected one of {OBJECTIVES}, got {args.search_objective!r}")
    if num_hidden_layers < 1:
        raise UsageError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
    if max_seq_length < 1:
        raise UsageError(f"--max_seq_length must be >= 1, got {max_seq_length}")
    if args.search_min_length < 1:
        raise UsageError(f"--search_min_length must be >= 1, got {args.search_min_length}")
    if args.search_min_length > max_seq_length:
        raise UsageError(f"--search_min_length ({args.search_min_length}) is larger than "
                         f"--max_seq_length ({max_seq_length})")
    if args.search_budget < 1:
        raise UsageError(f"--search_budget must be >= 1, got {args.search_budget}")
    if args.search_subset is not None and args.search_subset < 1:
        raise UsageError(f"--search_subset must be >= 1, got {args.search_subset}")
    parse_rates(args.search_rates)
    if backend == "sigopt" and not os.environ.get("SIGOPT_API_TOKEN"):
        raise UsageError("--search_backend sigopt needs the API token in env SIGOPT_API_TOKEN "
                         "(or use --search_backend optuna to search offline)")
    if args.sigopt_parallel_bandwidth < 1:
        raise UsageError(f"--sigopt_parallel_bandwidth must be >= 1, got {args.sigopt_parallel_bandwidth}")
    for flag in ("evo_iter", "mutation_size", "crossover_size"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    if args.population_size < 0:
        raise UsageError(f"--population_size must be >= 0, got {args.population_size}")
    if not 0.0 <= args.mutation_prob <= 1.0:
        raise UsageError(f"--mutation_prob must lie in [0, 1], got {args.mutation_prob}")


# ----------------------------------------------------------------------------------------------
# Search space
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Pareto front
# ----------------------------------------------------------------------------------------------

def pareto_flags(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (f1, compute) points: True where no other point has f1 >= and compute <= with at
    least one strict (F1 maximised, compute minimised)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    flags = [False] * len(points)
    best_f1, best_compute = -math.inf, None
    for i in order:
        f1, compute = points[i]
        if f1 > best_f1:
            flags[i] = True
            best_f1, best_compute = f1, compute
        elif f1 == best_f1 and compute == best_compute:
            flags[i] = True  # an exact tie dominates nobody
    return flags


# ----------------------------------------------------------------------------------------------
# Results file
# ----------------------------------------------------------------------------------------------

def _row_to_csv_fields(row: dict) -> dict:
    fields = dict(row)
    fields["length_config"] = json.dumps(list(row["length_config"]))
    fields["pareto"] = "" if row.get("pareto") is None else int(bool(row["pareto"]))
    return {key: fields.get(key, "") for key in CSV_COLUMNS}


def _parse_csv_row(raw: dict, path: Path, line: int, space: "SearchSpace | None" = None) -> dict:
    try:
        config = json.loads(raw["length_config"])
        if not isinstance(config, list) or not all(isinstance(x, int) for x in config):
            raise UsageError("length_config is not a JSON list of integers")
        if space is not None:
            _check_row_config(config, space)
        return {
            "trial": int(raw["trial"]),
            "backend": raw["backend"],
            "length_config": tuple(config),
            "macs": int(raw["macs"]),
            "macs_ratio": float(raw["macs_ratio"]),
            "f1": float(raw["f1"]),
            "exact_match": float(raw["exact_match"]),
            "eval_seconds": float(raw["eval_seconds"]),
            "questions": int(raw["questions"]),
            "pareto": None if raw.get("pareto") in ("", None) else bool(int(raw["pareto"])),
        }
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"{path}: line {line}: malformed row ({err})") from err


def _check_row_config(config: list, space: "SearchSpace") -> None:
    """A stored configuration must fit the model: one length per layer, each in [1, max]
    (the constant-rate sweep may go below --search_min_length, never below 1)."""
    if len(config) != space.num_layers:
        raise UsageError(f"length_config has {len(config)} layers, the model has {space.num_layers}")
    if not all(1 <= x <= space.max_length for x in config):
        raise UsageError(f"length_config {config} has lengths outside [1, {space.max_length}]")


def _rows_to_csv_text(rows: Iterable[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_row_to_csv_fields(row))
    return buffer.getvalue()


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive ``flock`` on ``<path>.lock``: several workers (processes) may share one
    output folder, and each reads, appends and rewrites the CSV only while holding it."""
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class ResultStore:
    """``search_results.csv``: one row per measured configuration, appended and fsync'd at once.

    Reading it back on start is what makes a search resumable: measured configurations are
    served from here instead of being evaluated again. Several workers may share the file: every
    read and write holds ``file_lock``, and each write first merges the rows others appended.
    ``space``, when given, is what every stored configuration must fit.
    """

    def __init__(self, path: Path, space: "SearchSpace | None" = None):
        self.path = Path(path)
        self.space = space
        self.rows: list[dict] = []
        self._by_config: dict[LengthConfig, dict] = {}
        self.refresh()

    def refresh(self) -> None:
        """Merge the rows other workers appended since the last read."""
        with file_lock(self.path):
            self._sync()

    def _read_file(self) -> tuple[list[dict], bool]:
        """The file's rows, and whether it must be rewritten (missing, empty or torn)."""
        if not self.path.is_file():
            return [], True
        text = self.path.read_text(encoding="utf-8")
        torn = bool(text) and not text.endswith("\n")
        if torn:  # killed mid-write: the last line is incomplete even if it parses; measure it again
            logger.warning("%s: dropping a partially written last row", self.path)
            text = text[:text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:  # empty file
            return [], True
        if tuple(reader.fieldnames) != CSV_COLUMNS:
            raise UsageError(f"{self.path}: unexpected header {reader.fieldnames}; expected {list(CSV_COLUMNS)}")
        rows = [_parse_csv_row(raw, self.path, index + 2, self.space) for index, raw in enumerate(reader)]
        return rows, torn

    def _sync(self) -> None:
        """(Under the lock.) Take the file's rows, keep this process's rows the file lost (a
        writer without the lock), and repair the file if needed."""
        file_rows, needs_write = self._read_file()
        in_file = {row["length_config"] for row in file_rows}
        lost = [row for row in self.rows if row["length_config"] not in in_file]
        merged = [self._by_config.get(row["length_config"], row) for row in file_rows] + lost
        self.rows, self._by_config = [], {}
        for row in merged:
            self._remember(row)
        if needs_write or lost:
            atomic_write_text(self.path, _rows_to_csv_text(self.rows))

    def _remember(self, row: dict) -> None:
        self.rows.append(row)
        self._by_config.setdefault(tuple(row["length_config"]), row)

    def get(self, config: Sequence[int]) -> dict | None:
        return self._by_config.get(tuple(config))

    def count(self, backend: str) -> int:
        return sum(1 for row in self.rows if row["backend"] == backend)

    def next_trial(self) -> int:
        return max((row["trial"] for row in self.rows), default=-1) + 1

    def append(self, row: dict) -> dict:
        """Append one row and fsync it, so a crash right after loses nothing. Returns the stored
        row: another worker's, if it measured the same configuration meanwhile."""
        with file_lock(self.path):
            self._sync()
            existing = self.get(row["length_config"])
            if existing is not None:
                return existing
            row = dict(row, trial=self.next_trial())
            line = _rows_to_csv_text([row]).split("\n", 1)[1]
            size = self.path.stat().st_size
            try:
                with open(self.path, "a", encoding="utf-8", newline="") as handle:
                    handle.write(line)
                    handle.flush()
                    os.fsync(handle.fileno())
            except BaseException:
                with contextlib.suppress(OSError):  # take back a row that may be half on disk
                    os.truncate(self.path, size)
                raise
            self._remember(row)
        return row

    def rewrite(self, update: Callable[[list[dict]], None] | None = None) -> None:
        """Rewrite the file atomically with every worker's rows, after ``update(rows)`` (e.g.
        the Pareto flags) has run on them, all under the lock."""
        with file_lock(self.path):
            self._sync()
            if update is not None:
                update(self.rows)
            atomic_write_text(self.path, _rows_to_csv_text(self.rows))


# ----------------------------------------------------------------------------------------------
# What the rows were measured on (search_results.meta.json) and --search_restart
# ----------------------------------------------------------------------------------------------

def search_fingerprint(args: argparse.Namespace, space: SearchSpace, full_macs: int,
                       measured_on: dict | None) -> dict:
    """Everything a row's F1 and MACs depend on: the model's layers and MACs, the lengths, the
    questions scored, and the caller's own fingerprints (weights, data file)."""
    fingerprint = {"num_hidden_layers": space.num_layers, "max_seq_length": space.max_length,
                   "full_macs": int(full_macs), "search_subset": args.search_subset, **(measured_on or {})}
    return json.loads(json.dumps(fingerprint))  # as it reads back from the sidecar


def _shown(value) -> str:
    text = json.dumps(value)
    return text[:15] + '..."' if len(text) > 20 else text


def fingerprint_differences(recorded: dict, current: dict) -> list[str]:
    return [f"{key} {_shown(recorded.get(key))} there, {_shown(current.get(key))} now"
            for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]


def _csv_has_rows(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, encoding="utf-8") as handle:
        return len(handle.readlines(1 << 16)) > 1


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def move_previous_search_aside(output_dir: Path) -> Path | None:
    """--search_restart: move an earlier search's files into ``previous_search_<time>/``
    (nothing is deleted); returns that folder, or None when there was nothing to move."""
    present = [output_dir / name for name in SEARCH_FILES if (output_dir / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = output_dir / f"previous_search_{stamp}", 1
    while target.exists():
        target, n = output_dir / f"previous_search_{stamp}-{n}", n + 1
    target.mkdir()
    for path in present:
        os.replace(path, target / path.name)
    logger.warning("--search_restart: the earlier search's files were moved to %s", target)
    return target


def prepare_results_folder(output_dir: Path, measured: dict, restart: bool) -> None:
    """Reuse the CSV's rows only if they were measured on ``measured``; else stop with the
    difference and the way out. Records ``measured`` beside a CSV without rows."""
    csv_path, meta_path = output_dir / RESULTS_CSV, output_dir / META_JSON
    way_out = ("use another --output_dir, or --search_restart to start afresh (the earlier files are "
               "moved to previous_search_<time>/, nothing is deleted)")
    with file_lock(csv_path):
        if restart:
            move_previous_search_aside(output_dir)
        recorded = _read_json(meta_path)
        if _csv_has_rows(csv_path):
            if not isinstance(recorded, dict):
                raise UsageError(f"{csv_path} holds rows but {meta_path.name} does not say what they were "
                                 f"measured on, so they cannot be reused; {way_out}")
            differences = fingerprint_differences(recorded, measured)
            if differences:
                raise UsageError(f"{csv_path} holds rows measured on something else ("
                                 f"{'; '.join(differences)}); {way_out}")
        elif recorded != measured:
            atomic_write_text(meta_path, json.dumps(measured, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# Evaluation with cache
# ----------------------------------------------------------------------------------------------

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
    """Evaluates a length configuration once; afterwards serves it from the results file."""

    def __init__(self, evaluate_fn: EvaluateFn, store: ResultStore, full_macs: int, objective: str):
        self.evaluate_fn = evaluate_fn
        self.store = store
        self.full_macs = int(full_macs)
        self.objective = objective
        self.evaluated = 0
        self.cache_hits = 0
        self.failures = 0
        self.progress: tqdm | None = None  # a bar that counts new evaluations (the evolution's)

    def __call__(self, config: Sequence[int], backend: str, budget: int | None = None) -> dict:
        """The row for ``config``: cached if measured before, else measured and appended.

        ``budget``: refuse (BudgetExhausted) to measure a new configuration for ``backend`` once
        that many of its rows (plus failures in this run) exist.
        """
        config = tuple(int(x) for x in config)
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
    evaluator(space.full, "full")
    for rate in tqdm(rates, desc="constant-rate sweep", unit="config"):
        evaluator(sweep_config(space, rate), "constant")


# ----------------------------------------------------------------------------------------------
# Optuna backend
# ----------------------------------------------------------------------------------------------

def optuna_config_from_params(params: dict, space: SearchSpace) -> LengthConfig:
    """Optuna samples x0..x{L-1} independently in [min, max]; the configuration is those values
    sorted in descending order (uniform over non-increasing configurations)."""
    values = [params[f"x{i}"] for i in range(space.num_layers)]
    return tuple(sorted((int(v) for v in values), reverse=True))


def run_optuna(args: argparse.Namespace, evaluator: Evaluator, space: SearchSpace,
               output_dir: Path) -> dict:
    """Multi-objective TPE (maximise F1, minimise compute) on a shared Optuna storage.

    Several workers (processes or machines) share one study through ``--search_storage``
    (``load_if_exists``); the budget is the number of finished trials in the study.
    """
    import optuna
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = args.search_storage or f"sqlite:///{(output_dir / 'search.db').resolve()}"
    study_name = study_name_of(args)
    sampler = optuna.samplers.TPESampler(seed=args.search_seed)
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler,
                                directions=["maximize", "minimize"], load_if_exists=True)
    distributions = {f"x{i}": IntDistribution(space.min_length, space.max_length)
                     for i in range(space.num_layers)}
    check_study_measured_on(study, getattr(evaluator, "measured_on", None), storage)

    # Tell the study about configurations measured before but unknown to it (a run interrupted
    # between measuring and telling, or a fresh storage): they count against the budget.
    known = {tuple(t.user_attrs.get("length_config", ()))
             for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    for row in evaluator.store.rows:
        if row["backend"] == "optuna" and row["length_config"] not in known:
            study.add_trial(optuna.trial.create_trial(
                params={f"x{i}": v for i, v in enumerate(row["length_config"])},
                distributions=distributions,
                values=[row["f1"], evaluator.compute(row)],
                user_attrs={"length_config": list(row["length_config"])}))

    # The budget counts completed trials (cached ones too). A failed or interrupted trial does not
    # use budget; each run still tries at most the remaining budget, so failures cannot loop.
    finished = (TrialState.COMPLETE,)

    def n_finished() -> int:
        return len(study.get_trials(deepcopy=False, states=finished))

    fatal: list[BaseException] = []

    def objective(trial: "optuna.Trial") -> tuple[float, float]:
        params = {name: trial.suggest_int(name, space.min_length, space.max_length) for name in distributions}
        config = optuna_config_from_params(params, space)
        trial.set_user_attr("length_config", list(config))
        try:
            row = evaluator(config, "optuna")
        except FATAL_ERRORS as err:  # optuna would catch it as a failed trial and go on
            fatal.append(err)
            trial.study.stop()
            raise
        return row["f1"], evaluator.compute(row)

    remaining = max(args.search_budget - n_finished(), 0)
    with tqdm(total=args.search_budget, initial=args.search_budget - remaining, desc="optuna search",
              unit="trial") as bar:
        def on_trial_end(study_, trial_):
            bar.update(1)
            if n_finished() >= args.search_budget:
                study_.stop()  # other workers may have finished trials too

        if remaining:
            study.optimize(objective, n_trials=remaining, callbacks=[on_trial_end], catch=(Exception,))
    if fatal:
        raise fatal[0]
    return {"storage": _redact_url(storage), "study_name": study_name, "trials": n_finished()}


def check_study_measured_on(study, measured: dict | None, storage: str) -> None:
    """A shared study must hold trials of the same model and data: record what this worker
    measures on, or stop when the study was started on something else."""
    if measured is None:
        return
    recorded = study.user_attrs.get("measured_on")
    if recorded is None:
        study.set_user_attr("measured_on", measured)
        return
    differences = fingerprint_differences(recorded, measured)
    if differences:
        raise UsageError(f"Optuna study {study.study_name!r} in {_redact_url(storage)} holds trials "
                         f"measured on something else ({'; '.join(differences)}); give another "
                         "--search_study_name or --search_storage")


def _redact_url(url: str) -> str:
    """Hide a password in a SQLAlchemy URL before it is written to the summary."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def study_name_of(args: argparse.Namespace) -> str:
    return args.search_study_name or f"dynamic-tinybert-{args.search_objective}"


# ----------------------------------------------------------------------------------------------
# SigOpt backend
# ----------------------------------------------------------------------------------------------

class SigOptError(SearchBackendError):
    """SigOpt could not be reached or refused the request; measured rows are kept."""


def sigopt_metric_name(objective: str) -> str:
    """Intel named the time metric 'evalTime'; the MACs metric is 'macs'."""
    return "macs" if objective == "macs" else "evalTime"


def sigopt_experiment_meta(args: argparse.Namespace, space: SearchSpace) -> dict:
    """The experiment: one int parameter per layer, x{i+1} <= x{i} as linear constraints."""
    meta = {
        "name": study_name_of(args),
        "parameters": [{"name": f"x{i}", "type": "int",
                        "bounds": {"min": space.min_length, "max": space.max_length}}
                       for i in range(space.num_layers)],
        "metrics": [{"name": "f1", "objective": "maximize", "strategy": "optimize"},
                    {"name": sigopt_metric_name(args.search_objective), "objective": "minimize",
                     "strategy": "optimize"}],
        # -x_k + x_{k+1} <= 0, as Intel wrote it.
        "linear_constraints": [{"type": "less_than", "threshold": 0,
                                "terms": [{"name": f"x{k}", "weight": -1},
                                          {"name": f"x{k + 1}", "weight": 1}]}
                               for k in range(space.num_layers - 1)],
        "observation_budget": args.search_budget,
        "parallel_bandwidth": args.sigopt_parallel_bandwidth,
    }
    if args.sigopt_project:
        meta["project"] = args.sigopt_project
    return meta


class SigOptSession:
    """The calls the search makes, with SigOpt's exceptions turned into clear errors."""

    def __init__(self, csv_path: Path):
        try:
            from sigopt import Connection
        except ImportError as err:
            raise SigOptError("--search_backend sigopt needs the 'sigopt' package (pip install sigopt)") from err
        token = os.environ.get("SIGOPT_API_TOKEN")
        if not token:
            raise UsageError("--search_backend sigopt needs the API token in env SIGOPT_API_TOKEN "
                             "(or use --search_backend optuna to search offline)")
        self.conn = Connection(client_token=token)
        self.url = self.conn.impl.driver.api_url
        self.csv_path = csv_path

    def call(self, what: str, fn: Callable, **kwargs):
        from sigopt.exception import ApiException, ConnectionException

        try:
            return fn(**kwargs)
        except ConnectionException as err:
            raise SigOptError(f"cannot reach the SigOpt API at {self.url} (env SIGOPT_API_URL) while "
                              f"trying to {what}; rows already measured are kept in {self.csv_path}. "
                              f"Cause: {err}") from err
        except ApiException as err:
            if err.status_code in (401, 403):
                raise SigOptError(f"the SigOpt API at {self.url} refused the API token (env "
                                  f"SIGOPT_API_TOKEN, HTTP {err.status_code}) while trying to {what}; "
                                  f"rows already measured are kept in {self.csv_path}. "
                                  f"Server said: {err.message}") from err
            raise SigOptError(f"the SigOpt API at {self.url} answered HTTP {err.status_code} while trying "
                              f"to {what}: {err.message}; rows already measured are kept in "
                              f"{self.csv_path}") from err

    def experiment(self, experiment_id: str):
        return self.conn.experiments(experiment_id)


def _check_joined_experiment(experiment, space: SearchSpace, metric: str, source: str) -> None:
    """A joined experiment must have this model's parameters and this objective's metrics."""
    names = sorted(p.name for p in experiment.parameters or [])
    expected = sorted(f"x{i}" for i in range(space.num_layers))
    if names != expected:
        raise UsageError(f"SigOpt experiment {experiment.id} ({source}): parameters {names} do not "
                         f"match this model's {space.num_layers} layers ({expected})")
    metrics = {m.name for m in experiment.metrics or []}
    if metrics != {"f1", metric}:
        raise UsageError(f"SigOpt experiment {experiment.id} ({source}): metrics {sorted(metrics)} do "
                         f"not match --search_objective {metric!r} ({['f1', metric]})")


def _observation_count(experiment) -> int:
    progress = experiment.progress
    return int(progress.observation_count or 0) if progress is not None else 0


def _sigopt_values(row: dict, evaluator: Evaluator, metric: str) -> list[dict]:
    return [{"name": "f1", "value": row["f1"]}, {"name": metric, "value": evaluator.compute(row)}]


def _save_experiment_id(state_path: Path, experiment_id: str, url: str) -> None:
    atomic_write_text(state_path, json.dumps({"experiment_id": experiment_id, "api_url": url}) + "\n")


def _assignments_to_config(assignments, space: SearchSpace) -> LengthConfig:
    return space.repair(assignments[f"x{i}"] for i in range(space.num_layers))


def _create_experiment(args, session: "SigOptSession", evaluator: Evaluator, space: SearchSpace,
                       metric: str, state_path: Path) -> str:
    """Create the experiment, remember its id, and report this folder's earlier SigOpt rows."""
    experiment = session.call("create the experiment", session.conn.experiments().create,
                              **sigopt_experiment_meta(args, space))
    _save_experiment_id(state_path, experiment.id, session.url)
    logger.info("created SigOpt experiment %s", experiment.id)
    observations = session.experiment(experiment.id).observations()
    for row in evaluator.store.rows:
        if row["backend"] == "sigopt":
            session.call("report a cached observation", observations.create,
                         assignments={f"x{i}": v for i, v in enumerate(row["length_config"])},
                         values=_sigopt_values(row, evaluator, metric))
    return experiment.id


def _join_experiment(experiment_id: str, source: str, session: "SigOptSession", evaluator: Evaluator,
                     space: SearchSpace, metric: str, state_path: Path) -> None:
    """Check an existing experiment fits, and report its open suggestions that are already
    measured (this worker was stopped before reporting them). Other open suggestions may belong
    to a running worker and are left alone."""
    experiment = session.call("fetch the experiment", session.experiment(experiment_id).fetch)
    _check_joined_experiment(experiment, space, metric, source)
    if not state_path.is_file():
        _save_experiment_id(state_path, experiment_id, session.url)
    bound = session.experiment(experiment_id)
    open_suggestions = session.call("list open suggestions", bound.suggestions().fetch, state="open")
    for suggestion in list(open_suggestions.iterate_pages()):
        row = evaluator.store.get(_assignments_to_config(suggestion.assignments, space))
        if row is not None:
            session.call("report an observation", bound.observations().create,
                         suggestion=suggestion.id, values=_sigopt_values(row, evaluator, metric))


def run_sigopt(args: argparse.Namespace, evaluator: Evaluator, space: SearchSpace,
               output_dir: Path) -> dict:
    """Intel's SigOpt loop: suggestion -> evaluate -> observation, until the observation budget
    of the (possibly shared) experiment is used. Failed evaluations become failed observations.

    The experiment is --sigopt_experiment_id if given, else the one recorded in
    <output_dir>/sigopt_experiment.json by an earlier run, else a new one."""
    session = SigOptSession(evaluator.store.path)
    metric = sigopt_metric_name(args.search_objective)
    state_path = output_dir / SIGOPT_STATE_JSON
    experiment_id, source = args.sigopt_experiment_id, "--sigopt_experiment_id"
    if experiment_id is None and state_path.is_file():
        experiment_id = json.loads(state_path.read_text(encoding="utf-8"))["experiment_id"]
        source = str(state_path)
        logger.info("resuming SigOpt experiment %s recorded in %s", experiment_id, state_path)
    if experiment_id is None:
        experiment_id = _create_experiment(args, session, evaluator, space, metric, state_path)
    else:
        _join_experiment(experiment_id, source, session, evaluator, space, metric, state_path)

    bound = session.experiment(experiment_id)
    experiment = session.call("fetch the experiment", bound.fetch)
    budget = experiment.observation_budget
    failed = 0
    with tqdm(total=budget, initial=_observation_count(experiment), desc="sigopt search", unit="obs") as bar:
        while _observation_count(experiment) < budget:
            suggestion = session.call("create a suggestion", bound.suggestions().create)
            config = _assignments_to_config(suggestion.assignments, space)
            try:
                row = evaluator(config, "sigopt")
            except FATAL_ERRORS:
                raise
            except Exception as err:  # reported to SigOpt as a failed observation
                failed += 1
                logger.warning("evaluation of %s failed: %r; reporting a failed observation", list(config), err)
                session.call("report a failed observation", bound.observations().create,
                             suggestion=suggestion.id, failed=True)
            else:
                session.call("report an observation", bound.observations().create,
                             suggestion=suggestion.id, values=_sigopt_values(row, evaluator, metric))
            experiment = session.call("fetch the experiment", bound.fetch)
            bar.update(_observation_count(experiment) - bar.n)  # SigOpt's count: other workers' too
    return {"experiment_id": experiment_id, "api_url": session.url, "observation_budget": budget,
            "observations": _observation_count(experiment), "failed_observations": failed}


# ----------------------------------------------------------------------------------------------
# Evolutionary search (LAT)
# ----------------------------------------------------------------------------------------------

def length_fraction(config: Sequence[int], max_length: int) -> float:
    """LAT's ``approx_ratio``: tokens processed relative to the full model (sum / (n * max))."""
    return sum(config) / (len(config) * max_length)


def drop_ratio_for_fraction(target: float, space: SearchSpace) -> float:
    """LAT's ``inverse``: bisect the constant drop ratio whose configuration (floored at the
    search's min length) has length fraction ``target``; uses the real layers / max length."""
    low, high = 0.0, 1.0
    while high - low > 1e-12:
        mid = (low + high) / 2
        config = length_drop.constant_drop_config(space.max_length, space.num_layers, mid, space.min_length)
        if target <= length_fraction(config, space.max_length):
            low = mid
        else:
            high = mid
    return low


class EvolutionSearch:
    """LAT's evolutionary search: keep the Pareto front as population, grow it by mutation and
    crossover, for ``evo_iter`` iterations or until the budget of new evaluations is spent."""

    def __init__(self, args: argparse.Namespace, evaluator: Evaluator, space: SearchSpace):
        self.args = args
        self.evaluator = evaluator
        self.space = space
        self.rng = random.Random(args.search_seed)
        self.population: list[LengthConfig] = []
        self.iterations_done = 0

    def score(self, gene: LengthConfig) -> tuple[float, float]:
        row = self.evaluator.store.get(gene)
        return self.evaluator.compute(row), row["f1"]

    def add_gene(self, gene: LengthConfig) -> bool:
        """Measure ``gene`` (or reuse its row) and add it to the population if new there."""
        assert self.space.contains(gene), gene
        try:
            self.evaluator(gene, "evolution", budget=self.args.search_budget)
        except (BudgetExhausted, *FATAL_ERRORS):
            raise
        except Exception as err:
            logger.warning("evaluation of %s failed: %r", list(gene), err)
            return False
        if gene in self.population:
            return False
        self.population.append(gene)
        return True

    def pareto_frontier(self) -> list[LengthConfig]:
        """Keep only non-dominated genes, sorted by compute."""
        points = [(self.score(g)[1], self.score(g)[0]) for g in self.population]
        flags = pareto_flags(points)
        front = [g for g, keep in zip(self.population, flags) if keep]
        self.population = sorted(front, key=self.score)
        return self.population

    def mutate(self) -> bool:
        """Re-draw each layer with probability mutation_prob between its neighbours' lengths."""
        parent = self.rng.choice(self.population)
        child: list[int] = []
        last = self.space.num_layers - 1
        for i in range(self.space.num_layers):
            if self.rng.random() < self.args.mutation_prob:
                upper = self.space.max_length if i == 0 else child[i - 1]
                lower = self.space.min_length if i == last else parent[i + 1]
                child.append(self.rng.randint(lower, upper))
            else:
                child.append(parent[i])
        return self.add_gene(tuple(child))

    def crossover(self) -> bool:
        """Layer-wise mean of two parents, rounded up (stays non-increasing and in bounds)."""
        if len(self.population) < 2:
            return False
        first, second = self.rng.sample(self.population, 2)
        return self.add_gene(tuple((a + b + 1) // 2 for a, b in zip(first, second)))

    def _grow(self, operator: Callable[[], bool], size: int) -> None:
        """Call ``operator`` until it added ``size`` genes; give up after 100 * size tries
        (LAT looped forever when no new gene could be produced)."""
        added, tries = 0, 0
        while added < size and tries < 100 * max(size, 1):
            tries += 1
            added += bool(operator())

    def initial_genes(self) -> list[LengthConfig]:
        """Smallest and full configuration, then ``population_size`` constant-drop configurations
        whose length fractions are evenly spaced between the two (LAT)."""
        space = self.space
        lowest = length_fraction(space.smallest, space.max_length)
        count = self.args.population_size
        genes = [space.smallest, space.full]
        for k in range(1, count + 1):
            target = lowest + (1.0 - lowest) * k / (count + 1)
            ratio = drop_ratio_for_fraction(target, space)
            genes.append(length_drop.constant_drop_config(space.max_length, space.num_layers, ratio,
                                                          space.min_length))
        return genes

    def run(self) -> dict:
        try:
            for gene in self.initial_genes():
                self.add_gene(gene)
            for iteration in range(self.args.evo_iter + 1):
                front = self.pareto_frontier()
                logger.info("evolution iteration %d: front size %d, evaluated %d", iteration, len(front),
                            self.evaluator.store.count("evolution"))
                self.iterations_done = iteration
                if iteration == self.args.evo_iter:
                    break
                self._grow(self.mutate, self.args.mutation_size)
                self._grow(self.crossover, self.args.crossover_size)
        except BudgetExhausted:
            logger.info("evolution: budget of %d evaluations reached", self.args.search_budget)
        return {"iterations": self.iterations_done, "front_size": len(self.pareto_frontier())}


def run_evolution(args: argparse.Namespace, evaluator: Evaluator, space: SearchSpace,
                  output_dir: Path) -> dict:
    """LAT's evolution with a progress bar over the evaluation budget (``output_dir`` unused:
    same signature as the other backends)."""
    with tqdm(total=args.search_budget, desc="evolution search", unit="config") as bar:
        evaluator.progress = bar
        try:
            return EvolutionSearch(args, evaluator, space).run()
        finally:
            evaluator.progress = None


# ----------------------------------------------------------------------------------------------
# Outputs: Pareto flags, front, plot, summary, table
# ----------------------------------------------------------------------------------------------

def finalize_outputs(store: ResultStore, objective: str, output_dir: Path, rates: Sequence[float],
                     space: SearchSpace, summary: dict) -> dict:
    """Recompute the pareto column over all rows, rewrite the CSV atomically, write
    pareto_front.csv, pareto.png and search_summary.json; returns the summary."""
    def mark_front(rows: list[dict]) -> None:  # over every worker's rows, under the lock
        flags = pareto_flags([(row["f1"], compute_of(row, objective)) for row in rows])
        for row, flag in zip(rows, flags):
            row["pareto"] = flag

    store.rewrite(mark_front)
    front = sorted((row for row in store.rows if row["pareto"]), key=lambda r: (r["macs"], -r["f1"]))
    atomic_write_text(output_dir / FRONT_CSV, _rows_to_csv_text(front))
    sweep = [store.get(sweep_config(space, r)) for r in rates]
    write_plot(store.rows, [r for r in sweep if r is not None], store.get(space.full), objective,
               output_dir / PLOT_PNG)
    summary = dict(summary)
    summary.update({
        "results_csv": str(store.path),
        "pareto_front_csv": str(output_dir / FRONT_CSV),
        "plot": str(output_dir / PLOT_PNG),
        "rows": len(store.rows),
        "rows_by_backend": {b: store.count(b) for b in sorted({r["backend"] for r in store.rows})},
        "pareto_front": [_summary_row(r) for r in front],
        "full": _summary_row(store.get(space.full)) if store.get(space.full) else None,
    })
    atomic_write_text(output_dir / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    return summary


def _summary_row(row: dict) -> dict:
    out = {key: row[key] for key in CSV_COLUMNS if key != "pareto"}
    out["length_config"] = list(row["length_config"])
    return out


def write_plot(rows: Sequence[dict], sweep: Sequence[dict], full: dict | None, objective: str,
               path: Path) -> None:
    """F1 against compute: all trials, the Pareto front, the constant-rate sweep, the full model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = "MACs" if objective == "macs" else "evaluation seconds"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([compute_of(r, objective) for r in rows], [r["f1"] for r in rows], s=12, alpha=0.4,
               color="tab:gray", label="all trials")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: compute_of(r, objective))
    ax.plot([compute_of(r, objective) for r in front], [r["f1"] for r in front], "-o", ms=4,
            color="tab:blue", label="Pareto front")
    if sweep:
        sweep = sorted(sweep, key=lambda r: compute_of(r, objective))
        ax.plot([compute_of(r, objective) for r in sweep], [r["f1"] for r in sweep], "--s", ms=4,
                color="tab:orange", label="constant rate")
    if full is not None:
        ax.scatter([compute_of(full, objective)], [full["f1"]], marker="*", s=160, color="tab:red",
                   zorder=5, label="full length")
    ax.set_xlabel(label)
    ax.set_ylabel("F1")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


def format_front_table(front: Sequence[dict]) -> str:
    lines = [f"{'macs_ratio':>10} {'f1':>7} {'em':>7} {'seconds':>9}  length_config"]
    for row in front:
        lines.append(f"{row['macs_ratio']:>10.2f} {row['f1']:>7.2f} {row['exact_match']:>7.2f} "
                     f"{row['eval_seconds']:>9.2f}  {list(row['length_config'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

SEARCHES = {"optuna": run_optuna, "sigopt": run_sigopt, "evolution": run_evolution}


def run_search_from_args(args: argparse.Namespace, evaluate_fn: EvaluateFn, num_hidden_layers: int,
                         max_seq_length: int, full_macs: int, output_dir,
                         measured_on: dict | None = None) -> Path:
    """Validate the flags, measure the full model and the constant-rate sweep, run the search
    backend, and write search_results.csv, pareto_front.csv, pareto.png, search_summary.json.

    ``measured_on``: what the caller's evaluations depend on beyond the search's own settings
    (weights and data fingerprints, lengths); rows in the CSV are reused only when it matches.
    Returns the path of search_results.csv. On a backend error the rows already measured stay in
    the CSV (and the outputs are refreshed) before the error propagates.
    """
    validate_args(args, num_hidden_layers, max_seq_length)
    output_dir = Path(output_dir)
    space = SearchSpace(num_hidden_layers, args.search_min_length, max_seq_length)
    measured = search_fingerprint(args, space, full_macs, measured_on)
    try:
        return _run_search(args, evaluate_fn, space, full_macs, output_dir, measured)
    except (ValueError, SigOptError, *FATAL_ERRORS):
        raise
    except Exception as err:  # e.g. SQLite's "database or disk is full" as Optuna's AssertionError
        if is_disk_full(err, output_dir):
            raise DiskFullError(f"no space left on {output_dir} ({type(err).__name__}: {err}); the rows "
                                f"measured so far are kept in {output_dir / RESULTS_CSV}") from err
        raise


def _run_search(args: argparse.Namespace, evaluate_fn: EvaluateFn, space: SearchSpace, full_macs: int,
                output_dir: Path, measured: dict) -> Path:
    backend = resolve_backend(args)
    rates = parse_rates(args.search_rates)
    output_dir.mkdir(parents=True, exist_ok=True)
    prepare_results_folder(output_dir, measured, restart=getattr(args, "search_restart", False))
    store = ResultStore(output_dir / RESULTS_CSV, space)
    evaluator = Evaluator(evaluate_fn, store, full_macs, args.search_objective)
    evaluator.measured_on = measured
    cached_before = len(store.rows)
    summary = {
        "backend": backend, "objective": args.search_objective, "budget": args.search_budget,
        "min_length": space.min_length, "max_seq_length": space.max_length,
        "num_hidden_layers": space.num_layers, "full_macs": int(full_macs),
        "subset": args.search_subset, "seed": args.search_seed, "rates": rates,
        "macs_ratio": "full_macs / macs (speedup over the full-length model)",
        "measured_on": measured,
    }
    error: BaseException | None = None
    try:
        run_baselines(evaluator, space, rates)
        if backend != "constant":
            summary["search"] = SEARCHES[backend](args, evaluator, space, output_dir)
    except BaseException as err:  # refresh the outputs, then re-raise
        error = err
        raise
    finally:
        summary.update({"evaluated_this_run": evaluator.evaluated, "cache_hits": evaluator.cache_hits,
                        "failed_evaluations": evaluator.failures, "rows_at_start": cached_before,
                        "completed": error is None})
        if store.rows:
            try:
                summary = finalize_outputs(store, args.search_objective, output_dir, rates, space, summary)
                print(f"\nPareto front ({args.search_objective}), {len(store.rows)} configurations "
                      f"in {store.path}:")
                front = sorted((r for r in store.rows if r["pareto"]), key=lambda r: r["macs"])
                print(format_front_table(front))
            except Exception as finalize_error:  # never hide the original error
                if error is None:
                    raise
                logger.error("could not refresh the search outputs: %r", finalize_error)
    return store.path
