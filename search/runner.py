"""The entry point: validate, measure the full model and the sweep, run the backend, write the
outputs (also after an error, so measured rows are never lost)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path


from core.errors import DiskFullError
from core.files import is_disk_full

from .space import EvaluateFn, RESULTS_CSV, SearchSpace
from .cli import parse_rates, resolve_backend, resolve_batching, space_from_args, validate_args
from .store import ResultStore, prepare_results_folder, search_fingerprint
from .evaluator import Evaluator, FATAL_ERRORS, run_baselines
from .front import finalize_outputs, format_front_table
from .backends import backend_named
from .study_rows import search_description
from .sigopt_backend import SigOptError

logger = logging.getLogger("search")


def run_search_from_args(args: argparse.Namespace, evaluate_fn: EvaluateFn, num_hidden_layers: int,
                         max_seq_length: int, full_macs: int, output_dir,
                         measured_on: dict | None = None, menu_info: dict | None = None) -> Path:
    """Validate the flags, measure the full model and the constant-rate sweep, run the search
    backend, and write search_results.csv, pareto_front.csv, pareto.png, search_summary.json.

    ``measured_on``: what the caller's evaluations depend on beyond the search's own settings
    (weights and data fingerprints, lengths); rows in the CSV are reused only when it matches.
    ``menu_info``: the length menu's details (``search.menu.build_menu``'s ``info``), kept with a
    shared study so that ``search.collect`` can write the menu.
    Returns the path of search_results.csv. On a backend error the rows already measured stay in
    the CSV (and the outputs are refreshed) before the error propagates.
    """
    validate_args(args, num_hidden_layers, max_seq_length)
    output_dir = Path(output_dir)
    space = space_from_args(args, num_hidden_layers, max_seq_length)
    measured = search_fingerprint(args, space, full_macs, measured_on, max_seq_length=max_seq_length,
                                  batching=resolve_batching(args))
    try:
        return _run_search(args, evaluate_fn, space, full_macs, output_dir, measured, menu_info)
    except (ValueError, SigOptError, *FATAL_ERRORS):
        raise
    except Exception as err:  # e.g. SQLite's "database or disk is full" as Optuna's AssertionError
        if is_disk_full(err, output_dir):
            raise DiskFullError(f"no space left on {output_dir} ({type(err).__name__}: {err}); the rows "
                                f"measured so far are kept in {output_dir / RESULTS_CSV}") from err
        raise


def _run_search(args: argparse.Namespace, evaluate_fn: EvaluateFn, space: SearchSpace, full_macs: int,
                output_dir: Path, measured: dict, menu_info: dict | None) -> Path:
    backend = resolve_backend(args)
    searcher = backend_named(backend)
    rates = parse_rates(args.search_rates)
    output_dir.mkdir(parents=True, exist_ok=True)
    prepare_results_folder(output_dir, measured, restart=getattr(args, "search_restart", False))
    shared = searcher.shared_rows(args, output_dir, space, measured,
                                  search_description(args.search_objective, space, rates, menu_info))
    store = ResultStore(output_dir / RESULTS_CSV, space, shared=shared)
    published = store.publish_unshared()
    if published:
        logger.info("stored %d rows of %s in the shared study", published, store.path)
    evaluator = Evaluator(evaluate_fn, store, full_macs, args.search_objective, measured_on=measured, space=space)
    cached_before = len(store.rows)
    bounds = ({"min_fraction": space.config(space.smallest)[0], "fraction_step": space.fraction_step}
              if space.is_relative else {"min_length": space.min_length})
    summary = {
        "backend": backend, "objective": args.search_objective, "budget": args.search_budget,
        "length_space": space.name, "batching": measured.get("batching", "padded"), **bounds,
        "max_seq_length": measured["max_seq_length"],
        "num_hidden_layers": space.num_layers, "full_macs": int(full_macs),
        "subset": args.search_subset, "seed": args.search_seed, "rates": rates,
        "macs_ratio": "full_macs / macs (speedup over the full-length model)",
        "measured_on": measured,
    }
    error: BaseException | None = None
    try:
        run_baselines(evaluator, space, rates)
        found = searcher.search(args, evaluator, space, output_dir)
        if found is not None:
            summary["search"] = found
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
