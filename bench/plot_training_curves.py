"""F1 against training steps, at full length and at each configuration tracked during training
(``run_squad.py --track_length_configs``), from a run's ``eval_results.json``.

    python -m bench.plot_training_curves OUTPUT_DIR/eval_results.json --output curves.png \\
        [--parent_f1 68.47 --parent_label "step-1 parent"] [--parent_eval parent_eval.json] \\
        [--then STAGE2_DIR/eval_results.json ...]

``--then``: a later stage, trained from the earlier stage's final model; its steps continue those
of the stage before (offset by that stage's last evaluated step), and a dashed line marks where
each stage begins.

``--parent_eval``: a JSON file with ``rows`` of ``length_config`` and ``f1`` (the parent evaluated
at the same configurations); each tracked configuration's parent F1 is drawn as a dotted line in
its colour, so the plot shows whether training made a configuration better than it already was.

Prints the table (step, full-length F1, each tracked configuration's F1 and MACs ratio) and writes
the plot, plus the same rows as CSV beside it (``.csv``).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

from core import files


FULL = "full length (padded eval)"


def label(config) -> str:
    return "[" + ", ".join(f"{v:g}" for v in config) + "]"


def curves(history: list[dict]) -> tuple[list[int], dict[str, list[float]], dict[str, float]]:
    """(steps, {name: F1 per step}, {name: MACs ratio}) from eval_results.json's history."""
    entries = [e for e in history if e.get("step") is not None]
    steps = [e["step"] for e in entries]
    # The run's own evaluation is at full length, or at the --length_config it trained at.
    own_config = entries[0].get("length_config") if entries else None
    own = FULL if own_config is None else label(own_config)
    lines = {own: [e["f1"] for e in entries]}
    ratios = {own: entries[0].get("macs_ratio", 1.0) if entries else 1.0}
    for entry in entries:
        for tracked in entry.get("tracked", ()):
            name = label(tracked["length_config"])
            if name == own:  # the run's own evaluation already draws it
                continue
            lines.setdefault(name, []).append(tracked["f1"])
            ratios[name] = tracked["macs_ratio"]
    return steps, {k: v for k, v in lines.items() if len(v) == len(steps)}, ratios


def chained(histories: list[list[dict]]) -> tuple[list[dict], list[int]]:
    """One history from consecutive stages' histories: each stage's steps offset by the previous
    stage's last evaluated step. Returns (entries, the step at which each later stage begins)."""
    entries, boundaries, offset = [], [], 0
    for number, history in enumerate(histories):
        stage = [e for e in history if e.get("step") is not None]
        if number > 0:
            boundaries.append(offset)
        entries += [{**e, "step": e["step"] + offset} for e in stage]
        if stage:
            offset += max(e["step"] for e in stage)
    return entries, boundaries


def parent_levels(rows: list[dict], names) -> dict[str, float]:
    """{curve name: the parent's F1 at that configuration} for the curves the parent rows cover
    (a row with ``length_config`` null is the full length)."""
    levels = {}
    for row in rows:
        config = row.get("length_config")
        name = FULL if config is None else label(config)
        if name in names:
            levels[name] = float(row["f1"])
    return levels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_results", type=Path)
    p.add_argument("--output", required=True, help="PNG")
    p.add_argument("--parent_f1", type=float, default=None, help="a horizontal line: the parent's F1")
    p.add_argument("--parent_label", default="parent")
    p.add_argument("--parent_eval", type=Path, default=None,
                   help="JSON with rows of length_config and f1: the parent at each tracked configuration")
    p.add_argument("--then", type=Path, action="append", default=[], metavar="EVAL_RESULTS",
                   help="a later stage's eval_results.json (trained from this stage's final model); repeatable")
    a = p.parse_args(argv)
    history, boundaries = chained([json.loads(path.read_text())["history"] for path in [a.eval_results, *a.then]])
    steps, lines, ratios = curves(history)
    if not steps:
        print(f"{a.eval_results}: no evaluation during training recorded", file=sys.stderr)
        return 2

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["configuration", "macs_ratio", *steps])
    for name, values in lines.items():
        writer.writerow([name, f"{ratios[name]:.3f}", *(f"{v:.2f}" for v in values)])
        print(f"{name:48s} {ratios[name]:5.2f}x  " + "  ".join(f"{v:6.2f}" for v in values))
    files.atomic_write_text(Path(a.output).with_suffix(".csv"), buffer.getvalue())

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = parent_levels(json.loads(a.parent_eval.read_text())["rows"], lines) if a.parent_eval else {}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, values in lines.items():
        if name == FULL and any(other != FULL and lines[other] == values for other in lines):
            continue  # drawn already: a tracked all-ones configuration scores the same
        line, = ax.plot(steps, values, marker="o", label=f"{name} ({ratios[name]:.2f}x fewer MACs)")
        if name in levels:
            ax.axhline(levels[name], color=line.get_color(), linestyle=":", linewidth=1)
    if levels:
        ax.plot([], [], color="grey", linestyle=":", label=f"{a.parent_label} at the same configuration")
    for boundary in boundaries:
        ax.axvline(boundary, color="black", linestyle="--", linewidth=0.8)
    if boundaries:
        ax.plot([], [], color="black", linestyle="--", linewidth=0.8, label="a new stage begins")
    if a.parent_f1 is not None:
        ax.axhline(a.parent_f1, color="grey", linestyle=":", label=f"{a.parent_label} ({a.parent_f1:.2f})")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("F1")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with files.atomic_path(a.output, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    print(f"wrote {a.output} and {Path(a.output).with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
