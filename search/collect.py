"""Write a shared search's outputs from its study alone, on any machine that reaches the storage:

    python -m search.collect --search_storage postgresql://user:pw@host/db \
        --search_study_name NAME --output_dir DIR [--search_menu PATH] [--search_restart]

The study holds every worker's rows (``search.study_rows``), what they were measured on and the
search's settings, so no model is needed: DIR gets search_results.csv (every row once),
pareto_front.csv, pareto.png, search_summary.json, search_results.meta.json, and the length menu
(``--search_menu``, default DIR/length_configs.json; copy it into the model folder for
inference.py). A DIR that holds rows measured on something else is refused, as a search would.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.menu_format import MENU_FILE
from search import menu as length_menu
from core import files
from core.errors import UsageError, cli_main
from core.files import check_output_dir, check_output_file

from .space import RESULTS_CSV
from .front import finalize_outputs, format_front_table
from .optuna_backend import open_storage
from .study_rows import MEASURED_ON_ATTR, SEARCH_ATTR, StudyRows, space_of
from .store import ResultStore, prepare_results_folder

logger = logging.getLogger("search")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m search.collect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search_storage", required=True, help="the workers' Optuna storage URL")
    p.add_argument("--search_study_name", required=True, help="the workers' study name")
    p.add_argument("--output_dir", required=True, help="folder for the outputs")
    p.add_argument("--search_menu", default=None, help="where to write the length menu "
                   "(default <output_dir>/length_configs.json)")
    p.add_argument("--search_restart", action="store_true",
                   help="move earlier search files in --output_dir to previous_search_<time>/ first")
    return p


def load_study(url: str, study_name: str):
    """The study and its name in messages; a UsageError names the study names there instead."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, where = open_storage(url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = sorted(optuna.get_all_study_names(storage))
        raise UsageError(f"--search_study_name: no study {study_name!r} in {where} (studies there: "
                         f"{', '.join(names) or 'none'})") from None
    return study, f"Optuna study {study_name!r} in {where}"


def collect(url: str, study_name: str, output_dir: Path, menu_path: Path | None = None,
            restart: bool = False) -> dict:
    """Write the outputs of the shared study into ``output_dir``; returns the summary."""
    output_dir = Path(output_dir)
    # run_squad.py's up-front checks of the same places, before the storage opens
    check_output_dir(output_dir)
    menu_target = Path(menu_path) if menu_path else output_dir / MENU_FILE
    check_output_file(menu_target, "--search_menu")
    study, where = load_study(url, study_name)
    attrs = study.user_attrs
    description = attrs.get(SEARCH_ATTR)
    if not isinstance(description, dict):
        raise UsageError(f"{where} records no search (not written by run_squad.py --do_search "
                         "--search_backend optuna)")
    space = space_of(description)
    output_dir.mkdir(parents=True, exist_ok=True)
    measured = attrs.get(MEASURED_ON_ATTR)
    if measured is not None:
        prepare_results_folder(output_dir, measured, restart)
    store = ResultStore(output_dir / RESULTS_CSV, space, shared=StudyRows(study, space, where))
    if not store.rows:
        raise UsageError(f"{where} holds no measured rows yet")
    summary = {"collected_from": where, "objective": description["objective"], "length_space": space.name,
               "rates": description["rates"], "measured_on": measured}
    summary = finalize_outputs(store, description["objective"], output_dir, description["rates"], space, summary)
    if description.get("menu") and store.get(space.full_config) is not None:
        summary["length_menu"] = str(length_menu.write_search_menu(store.rows, space.full_config,
                                                                   description["menu"], store.path, menu_target))
    return summary


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    def disk_full(err: OSError) -> str | None:  # as run_squad.py says it
        if not files.is_disk_full(err, args.output_dir):
            return None
        return f"no space left on {args.output_dir} ({err}); files already written are complete"

    return cli_main("search.collect", lambda: report(collect(
        args.search_storage, args.search_study_name, Path(args.output_dir), args.search_menu, args.search_restart)),
        disk_full)


def report(summary: dict) -> None:
    print(f"{summary['rows']} rows from {summary['collected_from']} in {summary['results_csv']}; "
          f"Pareto front ({summary['objective']}):")
    print(format_front_table(summary["pareto_front"]))
    if "length_menu" in summary:
        print(f"length menu: {summary['length_menu']}")


if __name__ == "__main__":
    sys.exit(main())
