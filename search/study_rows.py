"""Rows shared by workers on several machines, through the search's Optuna study.

Every measured row (configuration, F1, EM, MACs, seconds, questions) is one user attribute of the
study, ``row:<length_config as JSON>``, so workers that share ``--search_storage`` and
``--search_study_name`` each end with every worker's rows, and ``python -m search.collect`` can
write the outputs from the study alone. The study also records what its rows were measured on
(``measured_on``, checked by every worker) and the search they belong to (``search``: objective,
space, sweep rates, and the length menu's details), which is what the collector needs.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import os
import socket
import time

from core.errors import StoreError, UsageError

from .space import SearchSpace
from .store import CSV_COLUMNS, _parse_csv_row, _row_to_csv_fields, fingerprint_differences

ROW_PREFIX = "row:"
SEARCH_ATTR = "search"
MEASURED_ON_ATTR = "measured_on"


class SharedRows(abc.ABC):
    """Where workers on other machines find the rows measured so far (``ResultStore(shared=)``)."""

    @abc.abstractmethod
    def rows(self) -> list[dict]:
        """Every shared row, in the order they were stored."""

    @abc.abstractmethod
    def publish(self, row: dict) -> None:
        """Store ``row`` for the other workers."""


def search_description(objective: str, space: SearchSpace, rates, menu_info: dict | None) -> dict:
    """What ``search.collect`` needs besides the rows: the front's objective, the space (its
    full configuration and what a row must fit), the sweep (the plot's line), the menu's details."""
    return {"objective": objective, "space": dataclasses.asdict(space), "rates": list(rates),
            "menu": menu_info}


class StudyRows(SharedRows):
    """The rows in an Optuna study's user attributes (any storage: SQLite, PostgreSQL, ...).
    ``where`` names the study in messages (its URL without the password)."""

    def __init__(self, study, space: SearchSpace, where: str):
        self.study = study
        self.space = space
        self.where = where
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def _attrs(self) -> dict:
        return self._call("read the study", lambda: self.study.user_attrs)

    def _call(self, what: str, fn):
        """Storage errors (server gone, connection lost) stop the search with a clear line."""
        import optuna
        import sqlalchemy.exc

        try:
            return fn()
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as err:
            raise StoreError(f"cannot {what} {self.where}: {type(err).__name__}: {err}".splitlines()[0]) from err

    def rows(self) -> list[dict]:
        stored = [(value.get("measured_at", 0.0), key, value) for key, value in self._attrs().items()
                  if key.startswith(ROW_PREFIX)]
        rows = []
        for _, key, value in sorted(stored, key=lambda item: item[:2]):
            fields = dict(value, length_config=key[len(ROW_PREFIX):], trial=0, pareto="")
            rows.append(_parse_csv_row(fields, f"{self.where}: {key}", self.space))
        return rows

    def publish(self, row: dict) -> None:
        fields = _row_to_csv_fields(row)
        value = {key: row[key] for key in CSV_COLUMNS if key not in ("trial", "length_config", "pareto")}
        value.update(measured_at=time.time(), worker=self.worker)
        self._call("store a row in", lambda: self.study.set_user_attr(ROW_PREFIX + fields["length_config"], value))

    def _recorded(self, attrs: dict) -> bool:
        """Whether the study's creator has recorded it (or it holds rows or trials already)."""
        return (MEASURED_ON_ATTR in attrs or any(key.startswith(ROW_PREFIX) for key in attrs)
                or bool(self._call("read the trials of", lambda: self.study.get_trials(deepcopy=False))))

    def join(self, measured: dict | None, description: dict, created: bool = False,
             wait: float = 30.0) -> None:
        """Record what this worker measures on and its search, or stop (UsageError) when the
        study holds rows of another model, data, objective or space.

        Only the worker that created the study records them (the search, then ``measured_on``);
        the others wait for that record and compare theirs with it, so workers of two models that
        start one new study at once never both pass. A study whose creator stopped before
        recording (or one from an earlier version) is claimed after ``wait`` seconds."""
        way_out = "give another --search_study_name or --search_storage"
        attrs = self._attrs()
        if created:
            self._call("record the search in", lambda: self.study.set_user_attr(SEARCH_ATTR, description))
            self._call("record measured_on in", lambda: self.study.set_user_attr(MEASURED_ON_ATTR, measured))
            return
        deadline = time.monotonic() + wait
        while not self._recorded(attrs) and time.monotonic() < deadline:
            time.sleep(0.2)
            attrs = self._attrs()
        recorded = attrs.get(MEASURED_ON_ATTR)
        if measured is not None:
            differences = fingerprint_differences(recorded, measured) if recorded is not None else []
            if differences:
                raise UsageError(f"{self.where} holds trials measured on something else "
                                 f"({'; '.join(differences)}); {way_out}")
            if recorded is None:
                self._call("record measured_on in", lambda: self.study.set_user_attr(MEASURED_ON_ATTR, measured))
        searched = attrs.get(SEARCH_ATTR)
        if searched is None:
            self._call("record the search in", lambda: self.study.set_user_attr(SEARCH_ATTR, description))
            return
        for key, flag in (("objective", "--search_objective"), ("space", "the length space's flags")):
            if json.loads(json.dumps(searched.get(key))) != json.loads(json.dumps(description[key])):
                raise UsageError(f"{self.where} is a search with {key} {json.dumps(searched.get(key))}, this "
                                 f"worker's {flag} give {json.dumps(description[key])}; {way_out}")


def space_of(description: dict) -> SearchSpace:
    return SearchSpace(**description["space"])
