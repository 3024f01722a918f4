"""The offline backend: Optuna's multi-objective TPE with a shared storage (Intel's variant)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from errors import UsageError

from .common import SearchSpace, Units
from .cli import study_name_of
from .evaluator import Evaluator, FATAL_ERRORS
from .store import fingerprint_differences

logger = logging.getLogger("search")


def optuna_config_from_params(params: dict, space: SearchSpace) -> Units:
    """Optuna samples x0..x{L-1} independently in [min, max]; the grid point is those values
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
    check_study_measured_on(study, evaluator.measured_on, storage)

    # Tell the study about configurations measured before but unknown to it (a run interrupted
    # between measuring and telling, or a fresh storage): they count against the budget.
    known = {tuple(t.user_attrs.get("length_config", ()))
             for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    for row in evaluator.store.rows:
        if row["backend"] == "optuna" and row["length_config"] not in known:
            study.add_trial(optuna.trial.create_trial(
                params={f"x{i}": v for i, v in enumerate(space.units(row["length_config"]))},
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
        units = optuna_config_from_params(params, space)
        trial.set_user_attr("length_config", list(space.config(units)))
        try:
            row = evaluator(units, "optuna")
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


