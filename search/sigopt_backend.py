"""The paper's backend: a SigOpt multi-metric experiment through the real client."""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from core.errors import SearchBackendError, UsageError
from core.files import atomic_write_text

from .space import SIGOPT_STATE_JSON, SearchSpace, Units
from .cli import study_name_of
from .evaluator import Evaluator, FATAL_ERRORS
from .study_rows import SharedRows
from .store import _parse_csv_row

logger = logging.getLogger("search")


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
    top = max((p.bounds.max for p in experiment.parameters if p.bounds is not None), default=space.max_length)
    if int(round(top)) != space.max_length:  # e.g. an absolute (tokens) experiment joined by a relative search
        raise UsageError(f"SigOpt experiment {experiment.id} ({source}): parameters go up to {top}, but this "
                         f"search's {space.name} space goes up to {space.max_length}")
    metrics = {m.name for m in experiment.metrics or []}
    if metrics != {"f1", metric}:
        raise UsageError(f"SigOpt experiment {experiment.id} ({source}): metrics {sorted(metrics)} do "
                         f"not match --search_objective {metric!r} ({['f1', metric]})")


def _observation_count(experiment) -> int:
    progress = experiment.progress
    return int(progress.observation_count or 0) if progress is not None else 0


# What an observation carries beyond its two metric values, so that every worker can rebuild the
# rows of the others from the experiment (ObservationRows).
ROW_METADATA = ("backend", "macs", "macs_ratio", "exact_match", "eval_seconds", "questions")


def _observation(row: dict, evaluator: Evaluator, metric: str) -> dict:
    """An observation's values (F1 and the compute metric) and the row's other fields as metadata."""
    return {"values": [{"name": "f1", "value": row["f1"]}, {"name": metric, "value": evaluator.compute(row)}],
            "metadata": {key: row[key] for key in ROW_METADATA}}


class ObservationRows(SharedRows):
    """The rows of every worker sharing the experiment: its observations that carry a row's
    metadata (the full-length and sweep rows are not observations: each worker measures them)."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.session: SigOptSession | None = None
        self.experiment_id: str | None = None

    def attach(self, session: "SigOptSession", experiment_id: str) -> None:
        self.session, self.experiment_id = session, experiment_id

    def rows(self) -> list[dict]:
        if self.session is None:
            return []
        bound = self.session.experiment(self.experiment_id)
        pages = self.session.call("list the observations", bound.observations().fetch)
        rows = []
        for observation in pages.iterate_pages():
            metadata = dict(observation.metadata or {})
            if observation.failed or any(key not in metadata for key in ROW_METADATA):
                continue  # failed, or reported by a worker that did not record rows
            config = self.space.config(_assignments_to_config(observation.assignments, self.space))
            fields = dict(metadata, f1=next(v.value for v in observation.values if v.name == "f1"),
                          length_config=json.dumps(list(config)), trial=0, pareto="")
            rows.append(_parse_csv_row(fields, f"SigOpt experiment {self.experiment_id}: observation "
                                               f"{observation.id}", self.space))
        return rows

    def publish(self, row: dict) -> None:
        """Nothing: the loop reports each measured row as an observation itself."""


def _save_experiment_id(state_path: Path, experiment_id: str, url: str) -> None:
    atomic_write_text(state_path, json.dumps({"experiment_id": experiment_id, "api_url": url}) + "\n")


def _assignments_to_config(assignments, space: SearchSpace) -> Units:
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
                         assignments={f"x{i}": v for i, v in enumerate(space.units(row["length_config"]))},
                         **_observation(row, evaluator, metric))
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
        row = evaluator.cached(_assignments_to_config(suggestion.assignments, space))
        if row is not None:
            session.call("report an observation", bound.observations().create,
                         suggestion=suggestion.id, **_observation(row, evaluator, metric))


def run_sigopt(args: argparse.Namespace, evaluator: Evaluator, space: SearchSpace,
               output_dir: Path) -> dict:
    """Intel's SigOpt loop: suggestion -> evaluate -> observation, until the observation budget
    of the (possibly shared) experiment is used. Failed evaluations become failed observations.

    The experiment is --sigopt_experiment_id if given, else the one recorded in
    <output_dir>/sigopt_experiment.json by an earlier run, else a new one."""
    session = SigOptSession(evaluator.store.path)
    shared = evaluator.store.shared
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

    if isinstance(shared, ObservationRows):  # other workers' rows from now on, and at the end
        shared.attach(session, experiment_id)
        evaluator.store.refresh()
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
                             suggestion=suggestion.id, **_observation(row, evaluator, metric))
            experiment = session.call("fetch the experiment", bound.fetch)
            bar.update(_observation_count(experiment) - bar.n)  # SigOpt's count: other workers' too
    return {"experiment_id": experiment_id, "api_url": session.url, "observation_budget": budget,
            "observations": _observation_count(experiment), "failed_observations": failed}
