"""The length menu: a model's searched length configurations, stored with its checkpoint, and the
choice of one for a speed or accuracy budget.

Step 5 (``run_squad.py --do_search``, ``run-sigopt-search.sh``) writes ``<model>/length_configs.json``
(or ``--search_menu PATH``) atomically at its end: the Pareto front of F1 against speedup over
every measured row, the full-length row, and what they were measured on. So a checkpoint carries
its own menu, and ``inference.py`` picks from it:

* ``--speedup X``: the most accurate configuration at least X times faster than full length;
* ``--max_f1_drop D``: the fastest configuration whose F1 is within D points of full length.

**Speedup**: the measured one where the search timed sorted, longest-padded batches (what
inference runs): the full-length model's forward seconds over the configuration's, on the same
features, batch size and run (``speedup_basis`` "measured"); else (padded batches, whose times are
not what inference runs) the MACs ratio (``speedup_basis`` "macs_ratio"). The file format is in
docs/search.md ("The length menu").
"""
from __future__ import annotations

import errno
import json
import logging
import math
import numbers
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from core import files
import length_drop
from core.errors import UsageError

logger = logging.getLogger("length_menu")

MENU_FILE = "length_configs.json"
FORMAT = "dynamic-tinybert-length-menu"
VERSION = 1
SPEEDUP_BASES = ("measured", "macs_ratio")
SPEEDUP_DEFINITIONS = {
    "measured": "full-length forward seconds / this configuration's forward seconds, measured by the "
                "search on the same sorted, longest-padded batches",
    "macs_ratio": "MACs of the full-length model / MACs of this configuration (the search timed padded "
                  "batches, which are not what inference runs)",
}
TOLERANCE = 1e-9  # budgets are compared with this slack (a speedup written as 2.0 meets --speedup 2)


@dataclass(frozen=True)
class MenuEntry:
    length_config: tuple
    f1: float
    exact_match: float
    macs_ratio: float
    measured_speedup: float | None
    speedup: float           # measured_speedup or macs_ratio, per the menu's speedup_basis
    source: str              # the search row's backend: full, constant, optuna, ...


@dataclass(frozen=True)
class Menu:
    path: Path
    length_space: str
    speedup_basis: str
    batching: str
    batch_size: int
    max_seq_length: int
    doc_stride: int | None
    max_query_length: int | None
    questions: int
    weights_sha256: str | None
    full: MenuEntry
    entries: tuple[MenuEntry, ...]  # the front, fastest last

    @property
    def candidates(self) -> list[MenuEntry]:
        """The front and the full-length configuration, each once."""
        seen = {entry.length_config for entry in self.entries}
        return list(self.entries) + ([self.full] if self.full.length_config not in seen else [])


@dataclass(frozen=True)
class Choice:
    menu: Menu
    entry: MenuEntry
    budget: str  # the flag that chose it, e.g. "--speedup 2"

    def describe(self) -> str:
        e, menu = self.entry, self.menu
        basis = "measured" if menu.speedup_basis == "measured" else "MACs ratio"
        return (f"{self.budget}: length configuration {list(e.length_config)} from {menu.path}: "
                f"{e.speedup:.2f}x faster than full length ({basis}), F1 {e.f1:.2f} (full length "
                f"{menu.full.f1:.2f}) on {menu.questions} questions")


# --------------------------------------------------------------------------------------------
# Writing (step 5)
# --------------------------------------------------------------------------------------------

def build_menu(rows: Sequence[dict], full_config: Sequence, info: dict) -> dict:
    """The menu's JSON object from the search's rows (every row of search_results.csv).

    ``info``: length_space, batching, batch_size, max_seq_length, doc_stride, max_query_length,
    num_hidden_layers, objective, weights_sha256, predict_file_sha256, search_results (the CSV)."""
    from search import pareto_flags  # the search's own dominance rule

    full_row = next((r for r in rows if tuple(r["length_config"]) == tuple(full_config)), None)
    if full_row is None:
        raise ValueError("the search has no full-length row to measure speedups against")
    measured = info["batching"] == "sorted" and all(r["eval_seconds"] > 0 for r in rows)
    basis = "measured" if measured else "macs_ratio"

    def entry(row: dict) -> dict:
        speed = full_row["eval_seconds"] / row["eval_seconds"] if measured else None
        return {"length_config": list(row["length_config"]), "f1": row["f1"], "exact_match": row["exact_match"],
                "macs_ratio": row["macs_ratio"], "measured_speedup": speed,
                "speedup": speed if measured else row["macs_ratio"], "eval_seconds": row["eval_seconds"],
                "source": row["backend"]}

    entries = [entry(row) for row in rows]
    flags = pareto_flags([(e["f1"], -e["speedup"]) for e in entries])
    front = sorted((e for e, keep in zip(entries, flags) if keep), key=lambda e: (e["speedup"], -e["f1"]))
    questions = {row["questions"] for row in rows}
    return {
        "format": FORMAT, "version": VERSION,
        "about": "Length configurations of this model on the Pareto front of F1 against speedup, written "
                 "by run_squad.py --do_search (step 5); inference.py --speedup X / --max_f1_drop D "
                 "choose from them. Format: docs/search.md, 'The length menu'.",
        "length_space": info["length_space"],
        "speedup_basis": basis, "speedup_definition": SPEEDUP_DEFINITIONS[basis],
        "batching": info["batching"], "batch_size": info["batch_size"],
        "max_seq_length": info["max_seq_length"], "doc_stride": info.get("doc_stride"),
        "max_query_length": info.get("max_query_length"), "num_hidden_layers": info["num_hidden_layers"],
        "questions": max(questions), "objective": info.get("objective"),
        "retime_repeats": info.get("retime_repeats"),
        "weights_sha256": info.get("weights_sha256"), "predict_file_sha256": info.get("predict_file_sha256"),
        "search_results": info.get("search_results"),
        "full": entry(full_row),
        "configurations": front,
    }


def retime_front(rows: Sequence[dict], full_config: Sequence, time_fn, repeats: int) -> list[dict]:
    """The full-length row and every row on the front of F1 against time or of F1 against MACs,
    with new ``eval_seconds``: each timed by ``time_fn(config)`` ``repeats`` times, round-robin (so
    a change of machine load touches all alike), the median kept. A search times its
    configurations one by one, minutes apart; on a machine whose load changes, those times
    disagree by more than the speedups they measure. The other rows are left out, so that none
    of their one-by-one times can enter the menu's front."""
    from search import pareto_flags  # the search's own dominance rule

    by_time = pareto_flags([(r["f1"], r["eval_seconds"]) for r in rows])
    by_macs = pareto_flags([(r["f1"], -r["macs_ratio"]) for r in rows])
    chosen = [i for i, r in enumerate(rows)
              if by_time[i] or by_macs[i] or tuple(r["length_config"]) == tuple(full_config)]
    times = {i: [] for i in chosen}
    with tqdm(total=repeats * len(chosen), desc="timing the front again", unit="config") as bar:
        for _ in range(repeats):
            for i in chosen:
                times[i].append(time_fn(tuple(rows[i]["length_config"])))
                bar.update(1)
    logger.info("length menu: %d front configurations timed again, %d times each, interleaved", len(chosen), repeats)
    return [dict(rows[i], eval_seconds=statistics.median(times[i])) for i in chosen]


def write_search_menu(rows: Sequence[dict], full_config: Sequence, info: dict, csv_path: Path, path: Path,
                      fallback_dir: Path | None = None) -> Path:
    """The menu of a search's rows (``csv_path``: their file, recorded in the menu), written as
    ``write_menu`` does; returns where it went."""
    menu = build_menu(rows, full_config, dict(info, search_results=str(Path(csv_path).resolve())))
    written = write_menu(menu, path, fallback_dir)
    logger.info("length menu (%d configurations, speedup %s): %s", len(menu["configurations"]),
                menu["speedup_basis"], written)
    return written


def write_menu(menu: dict, path: Path, fallback_dir: Path | None = None) -> Path:
    """Write the menu atomically at ``path``; if that folder cannot be written (a read-only model
    folder), into ``fallback_dir`` instead, with a warning. Returns where it went."""
    path = Path(path)
    try:
        files.atomic_write_json(path, menu)
        return path
    except OSError as err:  # a read-only model folder: keep the menu beside the search's files
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise  # a full disk and the like: run_squad says so
        if fallback_dir is None:
            raise UsageError(f"cannot write the length menu {path} ({err})") from None
        fallback = Path(fallback_dir) / MENU_FILE
        files.atomic_write_json(fallback, menu)
        logger.warning("cannot write %s (%s); the length menu is in %s: give inference.py --menu %s",
                       path, err, fallback, fallback)
        return fallback


# --------------------------------------------------------------------------------------------
# Reading and choosing (inference)
# --------------------------------------------------------------------------------------------

def menu_path_of(folder, menu=None) -> Path:
    return Path(menu) if menu is not None else Path(folder) / MENU_FILE


def load_menu(path, num_hidden_layers: int | None = None, given: bool = False) -> Menu:
    """The menu at ``path``, every field checked; a UsageError names the file and the field.
    ``given``: the path is ``--menu``'s (else the model folder's default menu)."""
    path = Path(path)
    if given and path.is_dir():
        raise UsageError(f"--menu {path}: is a folder; give the menu file ({path / MENU_FILE} if it is there)")
    if given and not path.is_file():
        raise UsageError(f"--menu {path}: no such file")
    if not path.is_file():
        raise UsageError(f"no length menu at {path}: run the length-configuration search on this model "
                         f"first (step 5: MODEL_DIR={path.parent} bash run-sigopt-search.sh), or give "
                         "--length_config")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UsageError(f"{path}: not a readable JSON file ({err})") from None
    check = _Checker(path)
    check.object(raw, "")
    if raw.get("format") != FORMAT:
        raise UsageError(f"{path}: field format is {raw.get('format')!r}, expected {FORMAT!r}")
    if raw.get("version") != VERSION:
        raise UsageError(f"{path}: field version is {raw.get('version')!r}; this code reads version {VERSION}")
    space = check.choice(raw, "length_space", ("absolute", "relative"))
    basis = check.choice(raw, "speedup_basis", SPEEDUP_BASES)
    max_seq_length = check.integer(raw, "max_seq_length")
    layers = check.integer(raw, "num_hidden_layers")
    if num_hidden_layers is not None and layers != num_hidden_layers:
        raise UsageError(f"{path}: field num_hidden_layers is {layers}, but the model has {num_hidden_layers} "
                         "layers (a menu of another model)")
    entry_of = lambda value, where: check.entry(value, where, space, basis, layers, max_seq_length)  # noqa: E731
    full = entry_of(check.field(raw, "full"), "full")
    configurations = check.field(raw, "configurations")
    if not isinstance(configurations, list) or not configurations:
        raise UsageError(f"{path}: field configurations must be a non-empty list")
    entries = tuple(entry_of(value, f"configurations[{i}]") for i, value in enumerate(configurations))
    return Menu(path=path, length_space=space, speedup_basis=basis,
                batching=check.choice(raw, "batching", ("padded", "sorted")),
                batch_size=check.integer(raw, "batch_size"), max_seq_length=max_seq_length,
                doc_stride=check.integer(raw, "doc_stride", optional=True),
                max_query_length=check.integer(raw, "max_query_length", optional=True),
                questions=check.integer(raw, "questions"),
                weights_sha256=check.string(raw, "weights_sha256", optional=True), full=full, entries=entries)


class _Checker:
    """Field checks whose errors name the file and the field (e.g. ``configurations[2].f1``)."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, what: str):
        raise UsageError(f"{self.path}: field {where} {what}")

    def object(self, value, where: str) -> dict:
        if not isinstance(value, dict):
            raise UsageError(f"{self.path}: {('field ' + where) if where else 'the file'} must be a JSON object, "
                             f"got {type(value).__name__}")
        return value

    def field(self, obj: dict, key: str, where: str = "", optional: bool = False):
        if key not in obj or (obj[key] is None and not optional):
            if optional:
                return None
            self.fail(where + key, "is missing")
        return obj[key]

    def number(self, obj, key, where="", optional=False, positive=False) -> float | None:
        value = self.field(obj, key, where, optional)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            self.fail(where + key, f"must be a finite number, got {value!r}")
        if positive and value <= 0:
            self.fail(where + key, f"must be positive, got {value!r}")
        return float(value)

    def integer(self, obj, key, optional=False) -> int | None:
        value = self.field(obj, key, "", optional)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(key, f"must be a positive integer, got {value!r}")
        return value

    def string(self, obj, key, optional=False) -> str | None:
        value = self.field(obj, key, "", optional)
        if value is not None and not isinstance(value, str):
            self.fail(key, f"must be a string, got {value!r}")
        return value

    def choice(self, obj, key, choices) -> str:
        value = self.field(obj, key)
        if value not in choices:
            self.fail(key, f"must be one of {list(choices)}, got {value!r}")
        return value

    def entry(self, value, where: str, space: str, basis: str, layers: int, max_seq_length: int) -> MenuEntry:
        self.object(value, where)
        prefix = where + "."
        config = self.field(value, "length_config", prefix)
        try:
            config = length_drop.check_length_config(config, layers, max_seq_length, name="length_config")
        except ValueError as err:
            self.fail(prefix + "length_config", f"is not a valid configuration ({err})")
        if length_drop.is_relative(config) != (space == "relative"):
            self.fail(prefix + "length_config", f"holds {'keep fractions' if space == 'absolute' else 'token counts'}"
                                                f" but length_space is {space!r}")
        measured = self.number(value, "measured_speedup", prefix, optional=basis != "measured", positive=True)
        return MenuEntry(length_config=config, f1=self.number(value, "f1", prefix),
                         exact_match=self.number(value, "exact_match", prefix),
                         macs_ratio=self.number(value, "macs_ratio", prefix, positive=True),
                         measured_speedup=measured, speedup=self.number(value, "speedup", prefix, positive=True),
                         source=str(value.get("source", "")))


def choose(menu: Menu, speedup: float | None = None, max_f1_drop: float | None = None) -> MenuEntry:
    """``speedup``: the most accurate configuration at least that many times faster than full
    length (ties: the faster, then the first in the file). ``max_f1_drop``: the fastest whose F1
    is at least full length's minus that many points (ties: the more accurate, then the first).
    Exactly one of the two. Nothing meets the budget: a UsageError naming the fastest."""
    if (speedup is None) == (max_f1_drop is None):
        raise UsageError("give exactly one of --speedup and --max_f1_drop")
    candidates = menu.candidates
    if speedup is not None:
        meeting = [e for e in candidates if e.speedup >= speedup - TOLERANCE]
        if not meeting:
            fastest = max(candidates, key=lambda e: (e.speedup, e.f1))
            raise UsageError(f"--speedup {speedup:g}: no configuration in {menu.path} is {speedup:g}x faster than "
                             f"full length; the fastest is {list(fastest.length_config)} at {fastest.speedup:.2f}x "
                             f"with F1 {fastest.f1:.2f} (full length {menu.full.f1:.2f})")
        return max(meeting, key=lambda e: (e.f1, e.speedup))  # max keeps the first of equals
    meeting = [e for e in candidates if e.f1 >= menu.full.f1 - max_f1_drop - TOLERANCE]
    return max(meeting, key=lambda e: (e.speedup, e.f1))  # full length always meets it


def check_budget_flags(length_config, speedup, max_f1_drop, menu) -> bool:
    """Whether a menu choice is asked for; a UsageError for flags that cannot go together."""
    given = [flag for flag, value in (("--length_config", length_config), ("--speedup", speedup),
                                      ("--max_f1_drop", max_f1_drop)) if value is not None]
    if len(given) > 1:
        raise UsageError(f"give one of --length_config, --speedup and --max_f1_drop, not {' and '.join(given)}")
    if speedup is not None and not (math.isfinite(speedup) and speedup > 0):
        raise UsageError(f"--speedup must be a positive number, got {speedup}")
    if max_f1_drop is not None and not (math.isfinite(max_f1_drop) and max_f1_drop >= 0):
        raise UsageError(f"--max_f1_drop must be a number of F1 points >= 0, got {max_f1_drop}")
    if menu is not None and speedup is None and max_f1_drop is None:
        raise UsageError("--menu is read only with --speedup or --max_f1_drop")
    return speedup is not None or max_f1_drop is not None


def pick(folder, num_hidden_layers: int, length_config=None, speedup=None, max_f1_drop=None,
         menu=None) -> Choice | None:
    """The menu's choice for ``--speedup``/``--max_f1_drop`` (None when neither is given); the
    menu is ``menu`` or ``<folder>/length_configs.json``. Reads no weights."""
    if not check_budget_flags(length_config, speedup, max_f1_drop, menu):
        return None
    loaded = load_menu(menu_path_of(folder, menu), num_hidden_layers, given=menu is not None)
    budget = f"--speedup {speedup:g}" if speedup is not None else f"--max_f1_drop {max_f1_drop:g}"
    return Choice(loaded, choose(loaded, speedup, max_f1_drop), budget)


def choice_config(choice: Choice, num_hidden_layers: int, max_seq_length: int) -> tuple:
    """The chosen configuration, checked against these ``--max_seq_length`` (a menu searched at a
    longer one can hold counts above it); the UsageError names the menu and the flags."""
    try:
        return length_drop.parse_length_config(list(choice.entry.length_config), num_hidden_layers, max_seq_length)
    except ValueError as err:
        raise UsageError(f"{choice.budget}: the choice {list(choice.entry.length_config)} of {choice.menu.path} "
                         f"does not fit --max_seq_length {max_seq_length} (the menu's is "
                         f"{choice.menu.max_seq_length}): {err}") from None


def check_menu_weights(menu: Menu, weights_sha256: str) -> None:
    """A UsageError when the menu was measured on other weights than ``weights_sha256``."""
    if menu.weights_sha256 is not None and weights_sha256 != menu.weights_sha256:
        raise UsageError(f"{menu.path} was measured on other weights (field weights_sha256 differs from the "
                         "model's): its F1 and speedups do not describe this model; run the search again")


def check_choice_fits(choice: Choice, weights_sha256: str, max_seq_length: int, doc_stride: int,
                      max_query_length: int, batch_size: int) -> list[str]:
    """Once the weights' hash is known (``core.hashing.weights_sha256`` of the model, or the one an
    ONNX file records): a UsageError when the menu was measured on other weights; the settings
    that differ from the search's (its F1 and speedups hold at the search's), as warnings, which
    are also returned."""
    menu = choice.menu
    check_menu_weights(menu, weights_sha256)
    differences = [f"{name} {ours} (the menu's {theirs})" for name, ours, theirs in (
        ("max_seq_length", max_seq_length, menu.max_seq_length), ("doc_stride", doc_stride, menu.doc_stride),
        ("max_query_length", max_query_length, menu.max_query_length),
        ("batch_size", batch_size, menu.batch_size if menu.batching == "sorted" else batch_size))
        if theirs is not None and ours != theirs]
    if differences:
        logger.warning("%s was measured at other settings than these: %s; its F1 and speedups may differ here",
                       menu.path, ", ".join(differences))
    return differences
