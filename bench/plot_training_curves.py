"""F1 against training steps, at full length and at each configuration tracked during training
(``run_squad.py --track_length_configs``), from a run's ``eval_results.json``.

    python bench/plot_training_curves.py OUTPUT_DIR/eval_results.json --output curves.png \\
        [--parent_f1 68.47 --parent_label "step-1 parent"]

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
sys.path.insert(0, str(REPO_ROOT))

import files  # noqa: E402


def label(config) -> str:
    return "[" + ", ".join(f"{v:g}" for v in config) + "]"


def curves(history: list[dict]) -> tuple[list[int], dict[str, list[float]], dict[str, float]]:
    """(steps, {name: F1 per step}, {name: MACs ratio}) from eval_results.json's history."""
    entries = [e for e in history if e.get("step") is not None]
    steps = [e["step"] for e in entries]
    lines = {"full length (padded eval)": [e["f1"] for e in entries]}
    ratios = {"full length (padded eval)": 1.0}
    for entry in entries:
        for tracked in entry.get("tracked", ()):
            name = label(tracked["length_config"])
            lines.setdefault(name, []).append(tracked["f1"])
            ratios[name] = tracked["macs_ratio"]
    return steps, {k: v for k, v in lines.items() if len(v) == len(steps)}, ratios


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_results", type=Path)
    p.add_argument("--output", required=True, help="PNG")
    p.add_argument("--parent_f1", type=float, default=None, help="a horizontal line: the parent's F1")
    p.add_argument("--parent_label", default="parent")
    a = p.parse_args(argv)
    history = json.loads(a.eval_results.read_text())["history"]
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

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in lines.items():
        ax.plot(steps, values, marker="o", label=f"{name} ({ratios[name]:.2f}x fewer MACs)")
    if a.parent_f1 is not None:
        ax.axhline(a.parent_f1, color="grey", linestyle=":", label=f"{a.parent_label} ({a.parent_f1:.2f})")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("F1")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with files.atomic_path(a.output, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    print(f"wrote {a.output} and {Path(a.output).with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
