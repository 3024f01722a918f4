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

Two spaces (``--search_length_space``): the paper's absolute token counts, or relative keep
fractions of each batch's longest sequence on a grid (evaluated on sorted, longest-padded
batches, as inference runs them). Every run also measures the full-length model and the
constant-rate sweep. Rows are appended and fsync'd as soon as they are measured, so an
interrupted search resumes without re-evaluating.
Modules: ``cli`` (flags, checks), ``common`` (file names, the search space, the sweep),
``store`` (the CSV shared by workers, the meta file), ``evaluator`` (cache, budget, baselines),
``backends`` (the ``SearchBackend`` interface and its four implementations: ``sigopt_backend``,
``optuna_backend``, ``evolution``, the constant sweep), ``front`` (Pareto front, plot, summary),
``runner`` (``run_search_from_args``), ``shared`` (every row in the Optuna study, for workers on
several machines), ``collect`` (``python -m search.collect``: the outputs from a shared study).

See docs/search.md for the design and the differences from the reference code.
"""
from .backends import BACKEND_TYPES, ConstantSweep, SearchBackend, backend_named  # noqa: F401
from .cli import (  # noqa: F401
    add_search_args, length_space_of, parse_rates, resolve_backend, resolve_batching, space_from_args, study_name_of,
    validate_args)
from .space import (  # noqa: F401
    BACKENDS, BATCHINGS, CSV_COLUMNS, DEFAULT_RATES, FRONT_CSV, LENGTH_SPACES, META_JSON, OBJECTIVES, PLOT_PNG,
    RESULT_KEYS, RESULTS_CSV, SEARCH_FILES, SIGOPT_STATE_JSON, SUMMARY_JSON, SWEEP_FLOOR, EvaluateFn, LengthConfig,
    SearchSpace, Units, sweep_config)
from .evaluator import FATAL_ERRORS, BudgetExhausted, Evaluator, compute_of, run_baselines  # noqa: F401
from .evolution import EvolutionSearch, run_evolution  # noqa: F401
from .front import finalize_outputs, format_front_table, pareto_flags, write_plot  # noqa: F401
from .optuna_backend import run_optuna  # noqa: F401
from .runner import run_search_from_args  # noqa: F401
from .study_rows import SharedRows, StudyRows  # noqa: F401
from .sigopt_backend import SigOptError, SigOptSession, run_sigopt  # noqa: F401
from .store import ResultStore, file_lock, prepare_results_folder, search_fingerprint  # noqa: F401
from core.errors import StoreError  # noqa: F401,E402  (caught by callers as search.StoreError)
