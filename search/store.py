"""The results file: CSV rows, the lock shared by workers, the store that appends and fsyncs
each row, and what the rows were measured on (meta file, --search_restart)."""
from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence


from core.errors import StoreError, UsageError
from core.files import atomic_write_text
from length_drop import check_length_config, is_relative

from .space import CSV_COLUMNS, LengthConfig, META_JSON, RESULTS_CSV, SEARCH_FILES, SearchSpace

logger = logging.getLogger("search")


def _row_to_csv_fields(row: dict) -> dict:
    fields = dict(row)
    fields["length_config"] = json.dumps(list(row["length_config"]))
    fields["pareto"] = "" if row.get("pareto") is None else int(bool(row["pareto"]))
    return {key: fields.get(key, "") for key in CSV_COLUMNS}


def _parse_csv_row(raw: dict, where: str, space: "SearchSpace | None" = None) -> dict:
    """One row from its CSV fields; ``where`` names it in errors (file and line, or study and key)."""
    try:
        config = json.loads(raw["length_config"])
        if not isinstance(config, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in config):
            raise UsageError("length_config is not a JSON list of numbers")
        if space is not None:
            _check_row_config(config, space)
        return {
            "trial": int(raw["trial"]),
            "backend": raw["backend"],
            "length_config": space.normalise(config) if space is not None else tuple(config),
            "macs": int(raw["macs"]),
            "macs_ratio": float(raw["macs_ratio"]),
            "f1": float(raw["f1"]),
            "exact_match": float(raw["exact_match"]),
            "eval_seconds": float(raw["eval_seconds"]),
            "questions": int(raw["questions"]),
            "pareto": None if raw.get("pareto") in ("", None) else bool(int(raw["pareto"])),
        }
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"{where}: malformed row ({err})") from err


def _check_row_config(config: list, space: "SearchSpace") -> None:
    """A stored configuration must fit the model and the space: one length per layer, each in
    [1, max] (the constant-rate sweep may go below --search_min_length, never below 1), or in the
    relative space one keep fraction per layer in (0, 1]; never the other space's kind."""
    if is_relative(config) != space.is_relative:
        kind = "keep fractions" if is_relative(config) else "token counts"
        raise UsageError(f"length_config holds {kind}, but this is a search of the {space.name} space")
    try:
        check_length_config(config, space.num_layers, None if space.is_relative else space.max_length,
                            non_increasing=False, name="length_config")
    except ValueError as err:
        raise UsageError(str(err)) from None


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


MEASURED = ("backend", "macs", "macs_ratio", "f1", "exact_match", "eval_seconds", "questions")


class ResultStore:
    """``search_results.csv``: one row per measured configuration, appended and fsync'd at once.

    Reading it back on start is what makes a search resumable: measured configurations are
    served from here instead of being evaluated again. Several workers may share the file: every
    read and write holds ``file_lock``, and each write first merges the rows others appended.
    ``space``, when given, is what every stored configuration must fit.

    ``shared`` (``search.study_rows.SharedRows``): the rows of workers on other machines (an Optuna
    study). Each sync merges them into the file, where they count as measured; its version of a
    configuration wins over this folder's; each new row is stored there after the file.
    """

    def __init__(self, path: Path, space: "SearchSpace | None" = None, shared=None):
        self.path = Path(path)
        self.space = space
        self.shared = shared
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
        rows = [_parse_csv_row(raw, f"{self.path}: line {index + 2}", self.space) for index, raw in enumerate(reader)]
        return rows, torn

    def _sync(self, keep_without_shared: bool = False) -> None:
        """(Under the lock.) Take the file's rows, keep this process's rows the file lost (a
        writer without the lock), and repair the file if needed. ``keep_without_shared``: when
        the shared rows cannot be read (the storage went away), go on with the file's alone."""
        file_rows, needs_write = self._read_file()
        in_file = {row["length_config"] for row in file_rows}
        lost = [row for row in self.rows if row["length_config"] not in in_file]
        merged = [self._by_config.get(row["length_config"], row) for row in file_rows] + lost
        if self.shared is not None:
            try:
                shared_rows = self.shared.rows()
            except StoreError:
                if not keep_without_shared:
                    raise
                shared_rows = []
            merged, changed = _merge_shared(merged, shared_rows)
            needs_write = needs_write or changed
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
        row: another worker's, if it measured the same configuration meanwhile. A shared storage
        that went away does not lose the row: it is kept in the file, then publishing it fails."""
        with file_lock(self.path):
            self._sync(keep_without_shared=True)
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
        if self.shared is not None:  # after the file: a row the study could not take is kept there
            self.shared.publish(row)
        return row

    def publish_unshared(self) -> int:
        """Store in ``shared`` this folder's rows it lacks (measured before the folder joined
        it, or by a worker stopped between the file and the study); returns how many."""
        if self.shared is None:
            return 0
        with file_lock(self.path):
            self._sync()
            known = {row["length_config"] for row in self.shared.rows()}
            missing = [row for row in self.rows if row["length_config"] not in known]
            for row in missing:
                self.shared.publish(row)
        return len(missing)

    def rewrite(self, update: Callable[[list[dict]], None] | None = None) -> None:
        """Rewrite the file atomically with every worker's rows, after ``update(rows)`` (e.g.
        the Pareto flags) has run on them, all under the lock."""
        with file_lock(self.path):
            self._sync()
            if update is not None:
                update(self.rows)
            atomic_write_text(self.path, _rows_to_csv_text(self.rows))


def _merge_shared(rows: list[dict], shared_rows: list[dict]) -> tuple[list[dict], bool]:
    """``rows`` with the shared version of each configuration's measurements (two workers that
    measured one configuration at once keep the study's), then the shared rows they lack, under
    new trial numbers; and whether anything changed."""
    by_config = {row["length_config"]: row for row in shared_rows}
    merged, changed = [], False
    for row in rows:
        other = by_config.pop(row["length_config"], None)
        if other is not None and any(other[key] != row[key] for key in MEASURED):
            row, changed = dict(row, **{key: other[key] for key in MEASURED}), True
        merged.append(row)
    trial = max((row["trial"] for row in merged), default=-1) + 1
    for offset, row in enumerate(by_config.values()):
        merged.append(dict(row, trial=trial + offset, pareto=None))
        changed = True
    return merged, changed


# ----------------------------------------------------------------------------------------------
# What the rows were measured on (search_results.meta.json) and --search_restart
# ----------------------------------------------------------------------------------------------

def search_fingerprint(args: argparse.Namespace, space: SearchSpace, full_macs: int,
                       measured_on: dict | None, max_seq_length: int | None = None,
                       batching: str = "padded") -> dict:
    """Everything a row's F1 and MACs depend on: the model's layers and MACs, the lengths, the
    questions scored, and the caller's own fingerprints (weights, data file). The length space
    and the batching are recorded only when they are not the paper's (absolute, padded), so
    earlier searches' meta files still match; a search of the other space never reuses rows."""
    fingerprint = {"num_hidden_layers": space.num_layers,
                   "max_seq_length": space.max_length if max_seq_length is None else max_seq_length,
                   "full_macs": int(full_macs), "search_subset": args.search_subset}
    if space.is_relative:
        fingerprint["length_space"] = "relative"
    if batching != "padded":
        fingerprint["batching"] = batching
    fingerprint.update(measured_on or {})
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
