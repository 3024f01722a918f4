"""Absolute against relative length configurations, on the batching inference runs.

On one model and the same dev questions, searches both spaces with the time objective on sorted,
longest-padded batches (``run_squad.py --do_search --search_batching sorted --search_objective
time``, once with ``--search_length_space absolute`` and once with ``relative``), takes each
search's Pareto front of F1 against measured speedup (its length menu), then times every front
configuration of both spaces and the full-length model again, interleaved in one loop (median of
``--repeats``), so that both fronts are measured under the same machine load. Prints and writes
the two fronts (F1 against time relative to the full-length model on sorted batches) as JSON, CSV
and a plot.

    python -m bench.bench_spaces --model CKPT --dev_file dev-v1.1.json --max_questions 500 \\
        --budget 40 --threads 2 --batch_size 32

Outputs in ``--output_dir`` (default ``local/bench_spaces``): ``absolute/`` and ``relative/`` (each a
search folder: search_results.csv, pareto.png, length_configs.json, ...), ``bench_spaces.json``,
``bench_spaces.csv``, ``bench_spaces.png``. Searches resume from their CSVs when run again.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

from training import evaluation
from core import batching, files
from core import machine
from core.forward import TorchLogits
from serving import menu as length_menu
import run_squad
from core.errors import PROJECT_ERRORS, exit_code
from core.models import load_model_checked, load_tokenizer
from training.runtime import setup_runtime
from training.settings import build_settings

SPACES = ("absolute", "relative")
CSV_FIELDS = ("space", "length_config", "f1", "exact_match", "macs_ratio", "search_speedup", "seconds",
              "relative_time", "speedup", "source")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a trained (step-4) checkpoint folder")
    p.add_argument("--dev_file", required=True, help="SQuAD v1.1 dev file")
    p.add_argument("--max_questions", type=int, default=500, help="first N dev questions (both spaces)")
    p.add_argument("--budget", type=int, default=40, help="configurations each space's search evaluates")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=32, help="sorted batches of this size (as inference.py)")
    p.add_argument("--output_dir", default=str(REPO_ROOT / "local" / "bench_spaces"))
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--backend", default="optuna", choices=["optuna", "evolution", "constant"])
    p.add_argument("--min_length", type=int, default=91, help="absolute space: --search_min_length")
    p.add_argument("--min_fraction", type=float, default=0.25, help="relative space: --search_min_fraction")
    p.add_argument("--fraction_step", type=float, default=0.01, help="relative space: --search_fraction_step")
    p.add_argument("--rates", default="1.0,0.95,0.9,0.85,0.8,0.75,0.7", help="constant-rate sweep (both spaces)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats (median)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--front", default="time", choices=["time", "macs"],
                   help="which front to re-time: each search's menu (F1 against the search's timed speedup) "
                   "or the rows' front of F1 against MACs (when the search's one-by-one timings were "
                   "disturbed by other load)")
    return p.parse_args(argv)


def search_argv(a, space: str, out: Path) -> list[str]:
    return [str(x) for x in [
        "--model_name_or_path", a.model, "--predict_file", a.dev_file, "--do_lower_case",
        "--max_seq_length", a.max_seq_length, "--doc_stride", a.doc_stride,
        "--per_gpu_eval_batch_size", a.batch_size, "--cache_dir", out / "cache",
        "--output_dir", out / space, "--overwrite_output_dir", "--do_search",
        "--search_length_space", space, "--search_batching", "sorted", "--search_objective", "time",
        "--search_backend", a.backend, "--search_budget", a.budget, "--search_subset", a.max_questions,
        "--search_min_length", a.min_length, "--search_min_fraction", a.min_fraction,
        "--search_fraction_step", a.fraction_step, "--search_rates", a.rates, "--search_seed", a.seed,
        "--search_menu", out / space / length_menu.MENU_FILE,
        *(["--threads", a.threads] if a.threads else [])]]


def dev_features(a, out: Path):
    """The searches' dev features (the same questions, lengths and cache), and the device."""
    args = run_squad.build_parser().parse_args(search_argv(a, "absolute", out))
    settings = build_settings(args)
    runtime = setup_runtime(settings.runtime)
    evaluator = evaluation.DevEvaluator(settings.eval, settings.data, load_tokenizer(settings.model.tokenizer_path, settings.model.do_lower_case),
                                        runtime,
                                        a.max_questions, sorted_batches=True)
    return evaluator.features, runtime.device


def macs_front(csv_path: Path) -> list:
    """The search rows' Pareto front of F1 against MACs ratio, as menu entries."""
    from search import pareto_flags  # the search's own dominance rule

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    flags = pareto_flags([(float(r["f1"]), -float(r["macs_ratio"])) for r in rows])
    return [length_menu.MenuEntry(length_config=tuple(json.loads(r["length_config"])), f1=float(r["f1"]),
                                  exact_match=float(r["exact_match"]), macs_ratio=float(r["macs_ratio"]),
                                  measured_speedup=None, speedup=float(r["macs_ratio"]), source=r["backend"])
            for r, keep in zip(rows, flags) if keep]


def retime(model, features, device, batch_size: int, configs: list, repeats: int) -> list[float]:
    """Median forward seconds of each configuration on sorted batches, repeats interleaved."""
    times = [[] for _ in configs]
    for repeat in range(repeats):
        for i, config in enumerate(configs):
            out = batching.sorted_batch_logits(TorchLogits(model, config, device), evaluation.model_inputs(features),
                                               batch_size, warm_up=True)
            times[i].append(out.forward_seconds)
        print(f"timing: repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)
    return [statistics.median(t) for t in times]


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for space, style in zip(SPACES, ("-o", "-s")):
        front = sorted((r for r in rows if r["space"] == space), key=lambda r: r["relative_time"])
        ax.plot([r["relative_time"] for r in front], [r["f1"] for r in front], style, ms=4,
                label=f"{space} (token counts)" if space == "absolute" else f"{space} (keep fractions)")
    full = next(r for r in rows if r["source"] == "full")
    ax.scatter([1.0], [full["f1"]], marker="*", s=160, color="tab:red", zorder=5, label="full length")
    ax.set_xlabel("forward time relative to full length (sorted, longest-padded batches)")
    ax.set_ylabel("F1")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        with files.atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.output_dir)
    for space in SPACES:
        print(f"== searching the {space} space", file=sys.stderr, flush=True)
        code = run_squad.main(search_argv(a, space, out))
        if code:
            return code
    try:
        menus = {space: length_menu.load_menu(out / space / length_menu.MENU_FILE) for space in SPACES}
        features, device = dev_features(a, out)
        model = load_model_checked(a.model, "--model").to(device).eval()
    except PROJECT_ERRORS as e:
        print(f"bench_spaces.py: error: {e}", file=sys.stderr)
        return exit_code(e)
    full = menus["absolute"].full
    fronts = {space: macs_front(out / space / "search_results.csv") if a.front == "macs" else menus[space].entries
              for space in SPACES}
    entries = [("absolute", full)] + [(space, e) for space in SPACES for e in fronts[space]
                                      if e.length_config != menus[space].full.length_config]
    seconds = retime(model, features, device, a.batch_size, [None] + [e.length_config for _, e in entries[1:]],
                     a.repeats)
    rows = []
    for (space, e), s in zip(entries, seconds):
        rows.append({"space": space, "length_config": list(e.length_config), "f1": e.f1, "exact_match": e.exact_match,
                     "macs_ratio": e.macs_ratio, "search_speedup": e.speedup, "seconds": s,
                     "relative_time": s / seconds[0], "speedup": seconds[0] / s,
                     "source": "full" if e is full else e.source})
    result = {"model": a.model, "dev_file": a.dev_file, "questions": menus["absolute"].questions,
              "features": len(features), "mean_real_tokens": float(features.attention_mask.sum(1).float().mean()),
              "batch_size": a.batch_size, "max_seq_length": a.max_seq_length, "threads": torch.get_num_threads(),
              "budget": a.budget, "backend": a.backend, "repeats": a.repeats,
              "relative_time": "median forward seconds / the full-length model's, interleaved, sorted batches",
              "machine": machine.machine_info(), "rows": rows}
    files.atomic_write_json(out / "bench_spaces.json", result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.atomic_write_text(out / "bench_spaces.csv", buffer.getvalue())
    write_plot(rows, out / "bench_spaces.png")

    print(f"{result['features']} features ({result['questions']} questions, mean {result['mean_real_tokens']:.0f} "
          f"real tokens), batch {a.batch_size}, {result['threads']} threads, median of {a.repeats}")
    print(f"{'space':<9} {'F1':>6} {'time':>6} {'speedup':>8} {'search':>7} {'MACs x':>7}  length_config")
    for r in sorted(rows, key=lambda r: (r["space"] != "absolute" or r["source"] != "full", r["space"],
                                         r["relative_time"])):
        print(f"{r['space']:<9} {r['f1']:>6.2f} {r['relative_time']:>6.2f} {r['speedup']:>8.2f} "
              f"{r['search_speedup']:>7.2f} {r['macs_ratio']:>7.2f}  {r['length_config']}")
    print(f"written: {out / 'bench_spaces.json'}, {out / 'bench_spaces.csv'}, {out / 'bench_spaces.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
