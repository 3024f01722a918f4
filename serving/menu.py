"""The length menu's reader: a model's searched length configurations (``<model>/length_configs.json``,
written by the search, ``search.menu``) and the choice of one for a speed or accuracy budget.

* ``--speedup X``: the most accurate configuration at least X times faster than full length;
* ``--max_f1_drop D``: the fastest configuration whose F1 is within D points of full length.

Every field is checked as it is read; an error names the file and the field. The file format is in
docs/search.md ("The length menu").
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import length_drop
from core.checks import DROP_CRITERIA, describe_selection, token_selection
from core.errors import UsageError
from core.menu_format import FORMAT, MENU_FILE, SPEEDUP_BASES, TOLERANCE, VERSION

logger = logging.getLogger("length_menu")


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
    # core.checks.token_selection of the searched model (menus that do not say: the paper's criterion)
    selection: dict = dataclasses.field(default_factory=lambda: token_selection({}))

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
    criterion = raw.get("drop_criterion", "attention")
    if criterion not in DROP_CRITERIA:
        check.fail("drop_criterion", f"must be one of {list(DROP_CRITERIA)}, got {criterion!r}")
    before = raw.get("select_before_attention", False)
    if not isinstance(before, bool):
        check.fail("select_before_attention", f"must be true or false, got {before!r}")
    return Menu(path=path, length_space=space, speedup_basis=basis,
                batching=check.choice(raw, "batching", ("padded", "sorted")),
                batch_size=check.integer(raw, "batch_size"), max_seq_length=max_seq_length,
                doc_stride=check.integer(raw, "doc_stride", optional=True),
                max_query_length=check.integer(raw, "max_query_length", optional=True),
                questions=check.integer(raw, "questions"),
                weights_sha256=check.string(raw, "weights_sha256", optional=True), full=full, entries=entries,
                selection={"drop_criterion": criterion, "select_before_attention": before})


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
         menu=None, selection: dict | None = None) -> Choice | None:
    """The menu's choice for ``--speedup``/``--max_f1_drop`` (None when neither is given); the
    menu is ``menu`` or ``<folder>/length_configs.json``. Reads no weights. ``selection``: the
    model's ``core.checks.token_selection``; a menu searched with another is refused."""
    if not check_budget_flags(length_config, speedup, max_f1_drop, menu):
        return None
    loaded = load_menu(menu_path_of(folder, menu), num_hidden_layers, given=menu is not None)
    if selection is not None and loaded.selection != selection:
        raise UsageError(f"{loaded.path} was searched with {describe_selection(loaded.selection)}, but the model's "
                         f"config.json asks for {describe_selection(selection)}: its F1 and speedups do not "
                         "describe this model; run the search again")
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
