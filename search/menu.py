"""The length menu's writer (step 5): a model's searched length configurations, stored with its
checkpoint.

Step 5 (``run_squad.py --do_search``, ``run-sigopt-search.sh``) writes ``<model>/length_configs.json``
(or ``--search_menu PATH``) atomically at its end: the Pareto front of F1 against speedup over
every measured row, the full-length row, and what they were measured on. So a checkpoint carries
its own menu, and ``inference.py`` picks from it (``serving.menu``).

**Speedup**: the measured one where the search timed sorted, longest-padded batches (what
inference runs): the full-length model's forward seconds over the configuration's, on the same
features, batch size and run (``speedup_basis`` "measured"); else (padded batches, whose times are
not what inference runs) the MACs ratio (``speedup_basis`` "macs_ratio"). The file format is in
docs/search.md ("The length menu").
"""
from __future__ import annotations

import errno
import logging
import statistics
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from core import files
from core.errors import UsageError
from core.menu_format import FORMAT, MENU_FILE, SPEEDUP_DEFINITIONS, VERSION

logger = logging.getLogger("length_menu")


def build_menu(rows: Sequence[dict], full_config: Sequence, info: dict) -> dict:
    """The menu's JSON object from the search's rows (every row of search_results.csv).

    ``info``: length_space, batching, batch_size, max_seq_length, doc_stride, max_query_length,
    num_hidden_layers, objective, drop_criterion and select_before_attention (the model's token
    selection; the paper's criterion when absent), weights_sha256, predict_file_sha256,
    search_results (the CSV)."""
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
        "drop_criterion": info.get("drop_criterion", "attention"),
        "select_before_attention": bool(info.get("select_before_attention", False)),
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
