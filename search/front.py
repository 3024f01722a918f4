"""The Pareto front over every row, its CSV, the summary, the plot and the printed table."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Sequence


from core.files import atomic_path, atomic_write_text

from .space import CSV_COLUMNS, FRONT_CSV, PLOT_PNG, SUMMARY_JSON, SearchSpace, sweep_config
from .store import ResultStore, _rows_to_csv_text
from .evaluator import compute_of

logger = logging.getLogger("search")


def pareto_flags(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (f1, compute) points: True where no other point has f1 >= and compute <= with at
    least one strict (F1 maximised, compute minimised)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    flags = [False] * len(points)
    best_f1, best_compute = -math.inf, None
    for i in order:
        f1, compute = points[i]
        if f1 > best_f1:
            flags[i] = True
            best_f1, best_compute = f1, compute
        elif f1 == best_f1 and compute == best_compute:
            flags[i] = True  # an exact tie dominates nobody
    return flags





def finalize_outputs(store: ResultStore, objective: str, output_dir: Path, rates: Sequence[float],
                     space: SearchSpace, summary: dict) -> dict:
    """Recompute the pareto column over all rows, rewrite the CSV atomically, write
    pareto_front.csv, pareto.png and search_summary.json; returns the summary."""
    def mark_front(rows: list[dict]) -> None:  # over every worker's rows, under the lock
        flags = pareto_flags([(row["f1"], compute_of(row, objective)) for row in rows])
        for row, flag in zip(rows, flags):
            row["pareto"] = flag

    store.rewrite(mark_front)
    front = sorted((row for row in store.rows if row["pareto"]), key=lambda r: (r["macs"], -r["f1"]))
    atomic_write_text(output_dir / FRONT_CSV, _rows_to_csv_text(front))
    sweep = [store.get(sweep_config(space, r)) for r in rates]
    full = store.get(space.full_config)
    write_plot(store.rows, [r for r in sweep if r is not None], full, objective, output_dir / PLOT_PNG,
               space_name=space.name)
    summary = dict(summary)
    summary.update({
        "results_csv": str(store.path),
        "pareto_front_csv": str(output_dir / FRONT_CSV),
        "plot": str(output_dir / PLOT_PNG),
        "rows": len(store.rows),
        "rows_by_backend": {b: store.count(b) for b in sorted({r["backend"] for r in store.rows})},
        "pareto_front": [_summary_row(r) for r in front],
        "full": _summary_row(full) if full else None,
    })
    atomic_write_text(output_dir / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    return summary


def _summary_row(row: dict) -> dict:
    out = {key: row[key] for key in CSV_COLUMNS if key != "pareto"}
    out["length_config"] = list(row["length_config"])
    return out


def write_plot(rows: Sequence[dict], sweep: Sequence[dict], full: dict | None, objective: str,
               path: Path, space_name: str = "absolute") -> None:
    """F1 against compute: all trials, the Pareto front, the constant-rate sweep, the full model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = "MACs" if objective == "macs" else "evaluation seconds"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([compute_of(r, objective) for r in rows], [r["f1"] for r in rows], s=12, alpha=0.4,
               color="tab:gray", label="all trials")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: compute_of(r, objective))
    ax.plot([compute_of(r, objective) for r in front], [r["f1"] for r in front], "-o", ms=4,
            color="tab:blue", label="Pareto front")
    if sweep:
        sweep = sorted(sweep, key=lambda r: compute_of(r, objective))
        ax.plot([compute_of(r, objective) for r in sweep], [r["f1"] for r in sweep], "--s", ms=4,
                color="tab:orange", label="constant rate")
    if full is not None:
        ax.scatter([compute_of(full, objective)], [full["f1"]], marker="*", s=160, color="tab:red",
                   zorder=5, label="full length")
    ax.set_xlabel(label)
    ax.set_ylabel("F1")
    ax.set_title(f"{space_name} length configurations" if space_name != "absolute" else "")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


def format_front_table(front: Sequence[dict]) -> str:
    lines = [f"{'macs_ratio':>10} {'f1':>7} {'em':>7} {'seconds':>9}  length_config"]
    for row in front:
        lines.append(f"{row['macs_ratio']:>10.2f} {row['f1']:>7.2f} {row['exact_match']:>7.2f} "
                     f"{row['eval_seconds']:>9.2f}  {list(row['length_config'])}")
    return "\n".join(lines)
