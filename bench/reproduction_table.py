"""Assemble the reproduction's table (docs/reproduction_results.json) and its plot from the
files the GPU runs and the CPU speed benchmark left in docs/reproduction/.

    python -m bench.reproduction_table --speed docs/reproduction/speed_cpu.json \\
        --speed-sweeps docs/reproduction/speed_cpu_sweeps.json

Inputs (docs/reproduction/): training_runs.json (each run's best full-length dev score),
scores_sweeps.json and scores_ablations.json (whole dev set at length configurations),
search_results.csv (the step-4 search on a dev subset), and the speed JSON files written by
bench/bench_reproduction.py. F1 and EM are the official metric's; speedups are the CPU's.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

import utils_squad

DOCS = REPO_ROOT / "docs" / "reproduction"
GPU = "1x NVIDIA H100 80GB, bf16 autocast (F1)"


def load_speed(paths, batch_size: int) -> dict:
    """(model, length_config tuple or None, batching) -> row, from one or more speed files."""
    rows = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for r in data["rows"]:
            if r["batch_size"] == batch_size:
                key = (r["model"], tuple(r["length_config"]) if r["length_config"] else None, r["batching"])
                rows[key] = dict(r, threads=data["threads"], features=data["features"])
    return rows


def speed_columns(speed: dict, model: str, config) -> dict:
    """Speedups of ``model`` at ``config`` (on sorted, longest-padded batches, the faster way to
    run it) against the teacher padded to max_seq_length and the teacher on sorted batches."""
    key = (model, tuple(config) if config else None, "sorted")
    if key not in speed:
        return {"speedup_vs_teacher_padded": None, "speedup_vs_teacher_sorted": None}
    r = speed[key]
    return {"speedup_vs_teacher_padded": round(r["speedup_vs_teacher_padded"], 2),
            "speedup_vs_teacher_sorted": round(r["speedup_vs_teacher_sorted"], 2),
            "speedup_padded_to_max": round(speed[key[:2] + ("padded",)]["speedup_vs_teacher_padded"], 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speed", nargs="+", required=True, help="bench_reproduction.py JSON files")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--output", default=str(REPO_ROOT / "docs" / "reproduction_results.json"))
    p.add_argument("--plot", default=str(DOCS / "f1_vs_speedup.png"))
    a = p.parse_args(argv)
    runs = {r["run"]: r for r in json.loads((DOCS / "training_runs.json").read_text())}
    sweeps = json.loads((DOCS / "scores_sweeps.json").read_text())
    with open(DOCS / "search_results.csv", newline="") as f:
        search = list(csv.DictReader(f))
    speed = load_speed(a.speed, a.batch_size)
    some = next(iter(speed.values()))
    hardware = (f"{GPU}; speed: CPU, {some['threads']} threads, batch {a.batch_size}, "
                f"{some['features']} dev features")

    def row(name, model, run, config=None, f1=None, em=None, questions=None, macs=None, arch="student"):
        r = runs.get(run, {})
        if config is not None and all(c >= 384 for c in config):
            config = None  # full length
        return dict(row=name, model=model, length_config=config,
                    f1=round(f1 if f1 is not None else r["f1"], 2),
                    exact_match=round(em if em is not None else r["exact_match"], 2),
                    questions=questions or r.get("questions"), macs_ratio=macs,
                    **speed_columns(speed, arch, config), hardware=hardware)

    student_full_vs_teacher = speed[("student", None, "padded")]["macs_ratio_vs_teacher_padded"]
    full_row = next(r for r in search if r["backend"] == "full")
    full_f1 = float(full_row["f1"])
    within = [r for r in search if float(r["f1"]) >= 0.99 * full_f1]
    fastest = max(within, key=lambda r: float(r["macs_ratio"]))
    teacher_sweep_1f1 = [s for s in sweeps if s["label"].startswith("teacher")
                         and s["f1"] >= runs["teacher"]["f1"] - 1.0]
    best_teacher_cfg = max(teacher_sweep_1f1, key=lambda s: s["macs_ratio"])
    rows = [
        row("teacher", "all-MiniLM-L6-v2 fine-tuned (step 1), 6 layers", "teacher",
            config=None, macs=1.0, arch="teacher"),
        row("student, fine-tuned only", "3-layer student (layers 2,4,6), step 1's flags, no distillation",
            "student_finetuned", macs=round(student_full_vs_teacher, 2)),
        row("student after steps 2 and 3", "TinyBERT row: intermediate then prediction-layer distillation",
            "step3", macs=round(student_full_vs_teacher, 2)),
        row("student after step 4", "Dynamic-TinyBERT, the paper's flags, full length", "step4",
            macs=round(student_full_vs_teacher, 2)),
        row("student after step 4, --sandwich_full_weight 0.5", "best step-4 setting measured", "step4_full_weight_half",
            macs=round(student_full_vs_teacher, 2)),
        row("searched, within 1 F1 of the teacher: none; the teacher's own configuration instead",
            "teacher at a constant-rate configuration (not LengthDrop-trained)", "teacher",
            config=best_teacher_cfg["length_config"], f1=best_teacher_cfg["f1"], em=best_teacher_cfg["exact_match"],
            questions=best_teacher_cfg["questions"], macs=round(best_teacher_cfg["macs_ratio"], 2), arch="teacher"),
        row("searched, within 1% of the student's own full-length F1",
            f"step-4 student, fastest searched configuration within 1% of its full-length F1 "
            f"({full_f1:.2f}) on the search's {full_row['questions']} questions", "step4",
            config=json.loads(fastest["length_config"]), f1=float(fastest["f1"]), em=float(fastest["exact_match"]),
            questions=int(fastest["questions"]),
            macs=round(float(fastest["macs_ratio"]) * student_full_vs_teacher, 2)),
    ]
    utils_squad.atomic_write_json(a.output, rows)
    for r in rows:
        print(f"{r['row'][:60]:60s} F1 {r['f1']:6.2f} MACs x{r['macs_ratio'] or 0:5.2f} "
              f"vs padded {r['speedup_vs_teacher_padded']} vs sorted {r['speedup_vs_teacher_sorted']}")
    write_plot(a.plot, runs, sweeps, search, speed)
    return 0


def write_plot(path, runs, sweeps, search, speed) -> None:
    """F1 against measured speedup over the teacher padded to max_seq_length: left, every model
    padded to max_seq_length (the paper's setting); right, batches sorted and padded to their
    longest (what a user would run)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def measured(arch, config, batching):
        full = config is None or all(c >= 384 for c in config)
        key = (arch, None if full else tuple(config), batching)
        return speed.get(key, {}).get("speedup_vs_teacher_padded")

    series = [("teacher, length configurations", "teacher",
               [(s["length_config"], s["f1"]) for s in sweeps if s["label"].startswith("teacher")], "o"),
              ("student after step 3, length configurations", "student",
               [(s["length_config"], s["f1"]) for s in sweeps if s["label"].startswith("step3")], "o"),
              ("student after step 4, searched front (1,000 q.)", "student",
               [(json.loads(r["length_config"]), float(r["f1"])) for r in search if r["pareto"] == "1"], "s")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, batching, title in ((axes[0], "padded", "every feature padded to 384"),
                                (axes[1], "sorted", "sorted batches, padded to their longest")):
        for label, arch, points, marker in series:
            pts = [(measured(arch, c, batching), f1) for c, f1 in points]
            pts = [(x, y) for x, y in pts if x is not None]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("measured speedup over the teacher padded to 384 (CPU, batch 16)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("SQuAD dev F1")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
