"""The offline backend: Optuna's multi-objective TPE with a shared storage (Intel's variant)."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import logging
import os
import random
import socket
import time
import warnings
from pathlib import Path

from tqdm import tqdm

from core.errors import StoreError, UsageError, first_line

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


# Errors of workers that create the tables of a new database (or one folder's SQLite file) at
# once: the loser of each race finds the table, type or index made by the winner, and opens the
# storage again.
_CREATION_RACE = ("IntegrityError", "DuplicateTable", "DuplicateObject", "UniqueViolation",
                  "already exists", "database is locked")


def _is_creation_race(err: BaseException) -> bool:
    text = ""
    while err is not None:
        text += f"{type(err).__name__}: {err} "
        err = err.__cause__ or err.__context__
    return any(mark in text for mark in _CREATION_RACE)


def open_storage(url: str, heartbeat: int | None = None):
    """The RDB storage at ``url`` and the URL without its password. With ``heartbeat`` (seconds),
    a worker killed in a trial stops beating; the next worker to start a trial marks it failed and
    queues its configuration again (at most twice). Workers that create the storage's tables at
    the same moment retry until the winner's tables are there."""
    import optuna

    retry = {}
    if heartbeat is not None:
        # The heartbeat is "experimental" in Optuna since 2.9; its retry callback was renamed in 4.9.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
            retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)}
        else:
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=2)}
    attempts = 8
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, **retry), redact_url(url)
        except Exception as err:  # a bad URL, a missing driver, a server that cannot be reached
            if attempt < attempts - 1 and _is_creation_race(err):
                time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
                continue
            cause = redact_text(f"{type(err).__name__}: {first_line(err)}", url)
            raise UsageError(f"--search_storage: cannot open {redact_url(url)} ({cause})") from None


def sampler_seed(args, first_worker: bool = True) -> int:
    """--search_seed for the worker that creates the study; any other worker (on any storage, the
    folder's own SQLite file too) mixes it with the host and process, so that workers started with
    one command do not all draw the same configurations in the same order."""
    if first_worker:
        return args.search_seed
    worker = f"{args.search_seed}:{socket.gethostname()}:{os.getpid()}".encode()
    return int.from_bytes(hashlib.sha256(worker).digest()[:4], "little")


def _create_or_load(study_name: str, storage):
    """The study and whether this call created it: one worker wins the creation (the storage's
    unique study name), and only it records what the study is measured on."""
    import optuna
    from optuna.study import StudyDirection

    directions = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    try:
        storage.create_new_study(directions, study_name=study_name)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    return optuna.load_study(study_name=study_name, storage=storage), created


def open_study(args, output_dir: Path, space: SearchSpace, measured: dict | None, description: dict):
    """Create or load the study (several workers: the same storage and study name), check it holds
    this model's and search's rows, and return it with its rows (``StudyRows``)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = args.search_storage or f"sqlite:///{(output_dir / 'search.db').resolve()}"
    storage, where = open_storage(url, args.search_heartbeat)
    with storage_errors(where):
        study, created = _create_or_load(study_name_of(args), storage)
    seed = sampler_seed(args, first_worker=created)
    # constant_liar: a running trial counts as a poor result, so parallel workers spread out.
    study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    rows = StudyRows(study, space, f"Optuna study {study.study_name!r} in {where}")
    rows.join(measured, description, created)
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
        """(finished, running) trials; first fail the trials whose worker stopped beating (or
        never beat)."""
        optuna.storages.fail_stale_trials(study)
        fail_trials_without_heartbeat(study)
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
    where = details.get("storage", "the storage")
    with storage_errors(where):
        finished, running = counts()
    tries_left = max(args.search_budget - finished, 0)
    with tqdm(total=args.search_budget, initial=min(finished, args.search_budget), desc="optuna search",
              unit="trial") as bar, storage_errors(where):
        while tries_left and not fatal and finished < args.search_budget:
            if finished + running >= args.search_budget:  # other workers' trials may still fail
                time.sleep(min(args.search_heartbeat, 5))
            else:
                if optimize_one(study, objective):  # not a late result dropped (it was measured)
                    tries_left -= 1
            finished, running = counts()
            bar.update(min(finished, args.search_budget) - bar.n)
    if fatal:
        raise fatal[0]
    return dict(details, trials=finished)


def fail_trials_without_heartbeat(study, now: datetime.datetime | None = None) -> list[int]:
    """Fail (and queue again, like a stale trial) the RUNNING trials that never beat: a worker
    killed between Optuna creating its trial and the trial's first heartbeat. Optuna's own check
    passes over a trial without a heartbeat row, which would then hold its budget for ever. A
    trial counts once it is older than the grace period (twice the heartbeat). Returns their
    numbers."""
    import copy

    import optuna
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    storage = study._storage
    rdb = getattr(storage, "_backend", storage)  # under Optuna's cache
    interval = getattr(rdb, "heartbeat_interval", None)
    if not hasattr(rdb, "scoped_session") or not interval:  # an RDB storage with a heartbeat
        return []
    grace = datetime.timedelta(seconds=rdb.grace_period or 2 * interval)
    now = now or datetime.datetime.now()
    with _create_scoped_session(rdb.scoped_session) as session:
        orphans = [(trial.trial_id, trial.number) for trial in
                   session.query(models.TrialModel)
                   .filter(models.TrialModel.study_id == study._study_id)
                   .filter(models.TrialModel.state == TrialState.RUNNING).all()
                   if not trial.heartbeats and trial.datetime_start is not None
                   and now - trial.datetime_start.replace(tzinfo=None) > grace]
    failed = []
    for trial_id, number in orphans:
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(number)
                logger.warning("trial %d never sent a heartbeat (its worker stopped as it began); "
                               "failed and queued again", number)
                callback = storage.get_heartbeat_stale_trial_callback()
                if callback is not None:
                    callback(study, copy.deepcopy(storage.get_trial(trial_id)))
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            pass
    return failed


def optimize_one(study, objective) -> bool:
    """One trial of ``study.optimize``. A worker stalled past the grace period (a suspended
    machine) may find its trial failed and queued again by another worker: Optuna then cannot
    tell its result ("Cannot tell a FAIL trial"); that result is dropped with a warning (its row
    is in the CSV and the study already) and the search goes on."""
    import optuna

    before = {t.number for t in study.get_trials(deepcopy=False)}
    try:
        study.optimize(objective, n_trials=1, catch=(Exception,))
        return True
    except (ValueError, RuntimeError, AssertionError) as err:  # UpdateFinishedTrialError is a RuntimeError
        late = (isinstance(err, optuna.exceptions.UpdateFinishedTrialError)
                or "Cannot tell" in str(err) or "Should not reach" in str(err))
        if not late:
            raise
        mine = sorted({t.number for t in study.get_trials(deepcopy=False)} - before)
        logger.warning("trial %s was failed and queued again by another worker while this one was "
                       "stalled; its late result is dropped (%s)", mine[0] if mine else "?", first_line(err))
        return False


@contextlib.contextmanager
def storage_errors(where: str):
    """The storage going away mid-search (a server stopped, the connection lost) stops the worker
    with one line: the rows are kept in the CSV and the study, and the same command goes on once
    the storage is back."""
    import optuna
    import sqlalchemy.exc

    lost = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)
    try:
        yield
    except (*lost, UnboundLocalError) as err:  # UnboundLocalError: optuna's tell after its storage call failed
        cause = err.__context__ if isinstance(err, UnboundLocalError) else err
        if not isinstance(cause, lost):
            raise
        raise StoreError(f"lost the Optuna storage {where} ({type(cause).__name__}: {first_line(cause)}); "
                         f"the rows so far are kept: run the same command again once the storage is back") from None


def _password_of(url: str) -> str | None:
    """The password in a SQLAlchemy URL, given after the user name or as a query parameter."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy can read: look for "user:password@" by hand
        rest = url.split("://", 1)[-1]
        if "@" in rest and ":" in rest.rsplit("@", 1)[0]:
            return rest.rsplit("@", 1)[0].split(":", 1)[1]
        return None
    if parsed.password:
        return str(parsed.password)
    for key, value in parsed.query.items():
        if key.lower() in ("password", "passwd", "pwd"):
            return value if isinstance(value, str) else (value[0] if value else None)
    return None


def redact_text(text: str, url: str) -> str:
    """``text`` (a message that may quote ``url``) with the URL's password, as given and as it
    would be quoted in a URL, replaced by ``***``."""
    from urllib.parse import quote, quote_plus

    password = _password_of(url)
    if not password:
        return text
    for form in sorted({password, quote(password, safe=""), quote_plus(password)}, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def redact_url(url: str) -> str:
    """A SQLAlchemy URL without its password (after the user name or as ``?password=``), for the
    summary, the collector's output and error lines."""
    return redact_text(url, url)
