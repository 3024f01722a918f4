"""The offline backend: Optuna's multi-objective TPE with a shared storage (Intel's variant)."""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import socket
import time
import warnings
from pathlib import Path

from tqdm import tqdm

from core.errors import UsageError

from .space import SearchSpace, Units
from .cli import study_name_of
from .evaluator import Evaluator, FATAL_ERRORS
from .study_rows import StudyRows

logger = logging.getLogger("search")


def optuna_config_from_params(params: dict, space: SearchSpace) -> Units:
    """Optuna samples x0..x{L-1} independently in [min, max]; the grid point is those values
    sorted in descending order (uniform over non-increasing configurations)."""
    values = [params[f"x{i}"] for i in range(space.num_layers)]
    return tuple(sorted((int(v) for v in values), reverse=True))


def open_storage(url: str, heartbeat: int | None = None):
    """The RDB storage at ``url`` and the URL without its password. With ``heartbeat`` (seconds),
    a worker killed in a trial stops beating; the next worker to start a trial marks it failed and
    queues its configuration again (at most twice)."""
    import optuna

    retry = {}
    if heartbeat is not None:
        # The heartbeat is "experimental" in Optuna since 2.9; its retry callback was renamed in 4.9.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
            retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)}
        else:
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=2)}
    for attempt in range(3):  # workers that create the tables of a new database at once may collide
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, **retry), _redact_url(url)
        except Exception as err:  # a bad URL, a missing driver, a server that cannot be reached
            if attempt < 2 and "IntegrityError" in type(err).__name__ + repr(err.__cause__):
                time.sleep(1 + attempt)
                continue
            first_line = f"{type(err).__name__}: {err}".splitlines()[0]
            raise UsageError(f"--search_storage: cannot open {_redact_url(url)} ({first_line})") from err


def sampler_seed(args) -> int:
    """--search_seed for a search in its own folder's storage; on a storage given with
    --search_storage (shared by workers) mixed with the host and process, so that workers started
    with one command do not all draw the same first configurations."""
    if args.search_storage is None:
        return args.search_seed
    worker = f"{args.search_seed}:{socket.gethostname()}:{os.getpid()}".encode()
    return int.from_bytes(hashlib.sha256(worker).digest()[:4], "little")


def open_study(args, output_dir: Path, space: SearchSpace, measured: dict | None, description: dict):
    """Create or load the study (several workers: the same storage and study name), check it holds
    this model's and search's rows, and return it with its rows (``StudyRows``)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = args.search_storage or f"sqlite:///{(output_dir / 'search.db').resolve()}"
    storage, where = open_storage(url, args.search_heartbeat)
    seed = sampler_seed(args)
    # constant_liar: a running trial counts as a poor result, so parallel workers spread out.
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=args.search_storage is not None)
    study = optuna.create_study(study_name=study_name_of(args), storage=storage, sampler=sampler,
                                directions=["maximize", "minimize"], load_if_exists=True)
    rows = StudyRows(study, space, f"Optuna study {study.study_name!r} in {where}")
    rows.join(measured, description)
    return study, rows, {"storage": where, "study_name": study.study_name, "sampler_seed": seed}


def _trial_config(trial) -> tuple:
    return tuple(trial.user_attrs.get("length_config", ()))


def budget_taken_before(trials, number: int, budget: int) -> bool:
    """Whether the trials numbered below ``number`` that finished, run or wait fill ``budget``.

    Workers that start trials at the same moment give the budget to the earlier numbers. A queued
    (WAITING) trial counts: the retry of a killed worker's trial is numbered when it is queued, so
    it may start after a higher-numbered trial has passed this check; without it both would run.
    """
    from optuna.trial import TrialState

    ahead = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    return sum(t.number < number and t.state in ahead for t in trials) >= budget


def run_optuna(args: argparse.Namespace, evaluator: Evaluator, space: SearchSpace, study, details: dict) -> dict:
    """Multi-objective TPE (maximise F1, minimise compute) on a shared Optuna storage.

    Several workers (processes or machines) share one study through ``--search_storage``
    (``load_if_exists``); the budget is the number of finished trials in the study. A worker starts
    a trial only while the finished and running trials leave budget; else it waits for the running
    ones (they may fail, or be a killed worker's: its heartbeat stops and the trial is queued again).
    """
    import optuna
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState

    distributions = {f"x{i}": IntDistribution(space.min_length, space.max_length)
                     for i in range(space.num_layers)}

    # Tell the study about configurations measured before but unknown to it (a run interrupted
    # between measuring and telling, or a fresh storage): they count against the budget. A
    # running or queued trial (a killed worker's, queued again) will tell it itself.
    known = {_trial_config(t) for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING))}
    for row in evaluator.store.rows:
        if row["backend"] == "optuna" and row["length_config"] not in known:
            study.add_trial(optuna.trial.create_trial(
                params={f"x{i}": v for i, v in enumerate(space.units(row["length_config"]))},
                distributions=distributions,
                values=[row["f1"], evaluator.compute(row)],
                user_attrs={"length_config": list(row["length_config"])}))

    def counts() -> tuple[int, int]:
        """(finished, running) trials; first fail the trials whose worker stopped beating."""
        optuna.storages.fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))]
        return states.count(TrialState.COMPLETE), states.count(TrialState.RUNNING)

    fatal: list[BaseException] = []

    def objective(trial: "optuna.Trial") -> tuple[float, float]:
        if budget_taken_before(study.get_trials(deepcopy=False), trial.number, args.search_budget):
            raise optuna.TrialPruned("the budget is taken by earlier trials")
        params = {name: trial.suggest_int(name, space.min_length, space.max_length) for name in distributions}
        units = optuna_config_from_params(params, space)
        trial.set_user_attr("length_config", list(space.config(units)))
        try:
            row = evaluator(units, "optuna")
        except FATAL_ERRORS as err:  # optuna would catch it as a failed trial and go on
            fatal.append(err)
            raise
        return row["f1"], evaluator.compute(row)

    # The budget counts completed trials (cached ones too). A failed or interrupted trial does not
    # use budget; each run still tries at most the remaining budget, so failures cannot loop.
    finished, running = counts()
    tries_left = max(args.search_budget - finished, 0)
    with tqdm(total=args.search_budget, initial=min(finished, args.search_budget), desc="optuna search",
              unit="trial") as bar:
        while tries_left and not fatal and finished < args.search_budget:
            if finished + running >= args.search_budget:  # other workers' trials may still fail
                time.sleep(min(args.search_heartbeat, 5))
            else:
                study.optimize(objective, n_trials=1, catch=(Exception,))
                tries_left -= 1
            finished, running = counts()
            bar.update(min(finished, args.search_budget) - bar.n)
    if fatal:
        raise fatal[0]
    return dict(details, trials=finished)


def _redact_url(url: str) -> str:
    """Hide a password in a SQLAlchemy URL before it is written to the summary."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


