"""The search's flags (LAT's evolution flags keep their names and defaults) and their checks."""
from __future__ import annotations

import argparse
import logging
import os


from errors import UsageError

from .common import BACKENDS, DEFAULT_RATES, OBJECTIVES

logger = logging.getLogger("search")


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


def study_name_of(args: argparse.Namespace) -> str:
    """The Optuna study / SigOpt experiment name."""
    return args.search_study_name or f"dynamic-tinybert-{args.search_objective}"
