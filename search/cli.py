"""The search's flags (LAT's evolution flags keep their names and defaults) and their checks."""
from __future__ import annotations

import argparse
import logging
import os


from core.errors import UsageError

from .space import BACKENDS, BATCHINGS, DEFAULT_RATES, LENGTH_SPACES, OBJECTIVES, SearchSpace

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
                       help="Configurations the search backend evaluates (cached ones count; Intel's SigOpt "
                            "observation_budget / Optuna n_trials).")
    group.add_argument("--search_min_length", type=int, default=91,
                       help="Smallest number of tokens a layer may keep (Intel: 91).")
    group.add_argument("--search_objective", default="macs", choices=OBJECTIVES,
                       help="Compute to minimise: 'macs' (deterministic) or 'time' (measured "
                            "evaluation seconds, Intel's evalTime; on sorted batches the model's "
                            "forward seconds).")
    group.add_argument("--search_length_space", default="absolute", choices=LENGTH_SPACES,
                       help="absolute: token counts out of --max_seq_length (the paper's); relative: "
                            "keep fractions of each batch's longest real sequence, on a grid of "
                            "--search_fraction_step from --search_min_fraction to 1.")
    group.add_argument("--search_min_fraction", type=float, default=0.25,
                       help="Relative space: smallest keep fraction a layer may have "
                            "(--search_min_length's counterpart).")
    group.add_argument("--search_fraction_step", type=float, default=0.01,
                       help="Relative space: the grid of keep fractions.")
    group.add_argument("--search_batching", default=None, choices=BATCHINGS,
                       help="How configurations are evaluated and timed: 'padded' (file order, every "
                            "batch padded to --max_seq_length, the paper's) or 'sorted' (sorted by "
                            "length, each batch padded to its longest, as inference.py runs). Default: "
                            "padded in the absolute space, sorted in the relative one (which needs it).")
    group.add_argument("--search_menu", default=None,
                       help="Where run_squad.py writes the length menu (the front, for inference.py "
                            "--speedup/--max_f1_drop); default <model folder>/length_configs.json.")
    group.add_argument("--search_subset", type=int, default=None,
                       help="Evaluate on the first N dev questions only (CSV column 'questions').")
    group.add_argument("--search_storage", default=None,
                       help="Optuna storage URL (any SQLAlchemy URL, e.g. postgresql://...); "
                            "default sqlite:///<output_dir>/search.db.")
    group.add_argument("--search_study_name", default=None,
                       help="Optuna study / SigOpt experiment name "
                            "(default dynamic-tinybert-<objective>).")
    group.add_argument("--search_heartbeat", type=int, default=60,
                       help="Optuna: seconds between a running trial's heartbeats; a trial silent for "
                            "twice as long (its worker was killed) is marked failed and its "
                            "configuration queued for another worker (default 60).")
    group.add_argument("--search_restart", action="store_true",
                       help="Start afresh: move the folder's earlier search files (CSV, Optuna "
                            "search.db, SigOpt experiment id, plot) to previous_search_<time>/.")
    group.add_argument("--search_seed", type=int, default=42, help="Seed of the search sampler.")
    group.add_argument("--search_retime_repeats", type=int, default=3,
                       help="On sorted batches: before the length menu is written, time the full model and "
                            "every configuration on the F1-against-time or F1-against-MACs front again, "
                            "interleaved, this many times (the median counts), so that one machine load "
                            "applies to all; 0 keeps the search's one-by-one times (default 3).")
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


def length_space_of(args) -> str:
    return getattr(args, "search_length_space", None) or "absolute"


def resolve_batching(args) -> str:
    """--search_batching, else sorted for the relative space and padded for the absolute one."""
    batching = getattr(args, "search_batching", None)
    if batching is None:
        batching = "sorted" if length_space_of(args) == "relative" else "padded"
    return batching


def space_from_args(args, num_hidden_layers: int, max_seq_length: int) -> SearchSpace:
    if length_space_of(args) == "relative":
        return SearchSpace.relative(num_hidden_layers, args.search_min_fraction, args.search_fraction_step)
    return SearchSpace(num_hidden_layers, args.search_min_length, max_seq_length)


def _validate_space(args, max_seq_length: int) -> None:
    space = length_space_of(args)
    if space not in LENGTH_SPACES:
        raise UsageError(f"--search_length_space: expected one of {LENGTH_SPACES}, got {space!r}")
    batching = resolve_batching(args)
    if batching not in BATCHINGS:
        raise UsageError(f"--search_batching: expected one of {BATCHINGS}, got {batching!r}")
    if space == "absolute":
        if args.search_min_length < 1:
            raise UsageError(f"--search_min_length must be >= 1, got {args.search_min_length}")
        if args.search_min_length > max_seq_length:
            raise UsageError(f"--search_min_length ({args.search_min_length}) is larger than "
                             f"--max_seq_length ({max_seq_length})")
        return
    if batching != "sorted":
        raise UsageError("--search_batching padded: relative configurations keep fractions of each batch's "
                         "longest sequence, so they are evaluated on sorted batches (as inference.py runs "
                         "them); leave --search_batching out or give sorted")
    step = args.search_fraction_step
    if not 0 < step <= 0.5 or abs(round(1 / step) * step - 1) > 1e-9:
        raise UsageError(f"--search_fraction_step must divide 1 into at least 2 steps (e.g. 0.01, 0.05), "
                         f"got {step}")
    if not step <= args.search_min_fraction <= 1:
        raise UsageError(f"--search_min_fraction must lie in [--search_fraction_step ({step}), 1], "
                         f"got {args.search_min_fraction}")


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
    _validate_space(args, max_seq_length)
    if args.search_budget < 1:
        raise UsageError(f"--search_budget must be >= 1, got {args.search_budget}")
    if args.search_subset is not None and args.search_subset < 1:
        raise UsageError(f"--search_subset must be >= 1, got {args.search_subset}")
    parse_rates(args.search_rates)
    if backend == "sigopt" and not os.environ.get("SIGOPT_API_TOKEN"):
        raise UsageError("--search_backend sigopt needs the API token in env SIGOPT_API_TOKEN "
                         "(or use --search_backend optuna to search offline)")
    if args.search_retime_repeats < 0:
        raise UsageError(f"--search_retime_repeats must be >= 0, got {args.search_retime_repeats}")
    if args.search_heartbeat < 1:
        raise UsageError(f"--search_heartbeat must be >= 1 second, got {args.search_heartbeat}")
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
    """The Optuna study / SigOpt experiment name (the relative space's has its own default)."""
    suffix = "-relative" if length_space_of(args) == "relative" else ""
    return args.search_study_name or f"dynamic-tinybert-{args.search_objective}{suffix}"
