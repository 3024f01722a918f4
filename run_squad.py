"""Dynamic-TinyBERT on SQuAD 1.1: every paper step through one command line.

Step 1  fine-tune a teacher:                      --do_train
Step 2  intermediate-layer distillation:          --teacher_model_name_or_path T --state_loss_ratio 1 --att_loss_ratio 1 --att_mse
Step 3  prediction-layer distillation:            --teacher_model_name_or_path T --pred_distill
Step 4  LengthDrop training (sandwich rule):      ... --length_adaptive --num_sandwich 2 --length_drop_ratio_bound 0.2
Step 5  length-configuration search:              --do_search (see run-sigopt-search.sh)
Evaluation at any fixed length configuration:     --do_eval --length_config '[384, 320, 256, 192, 160, 128]'

All training steps share one loop (``train``); the flags only choose the objective (``Objective``).
Multi-GPU: ``torchrun --nproc_per_node N run_squad.py ...``.
"""
from __future__ import annotations

import sys

from core import files
from core.errors import cli_main
from training.flags import build_parser as _build_parser
from training.settings import TRAINING_STATE  # noqa: F401  (tests use it here)


def build_parser():
    return _build_parser(description=__doc__)


def main(argv=None) -> int:
    """Run; the project's own errors are one line on stderr (exit 2: usage, data or search
    backend; exit 1: disk full or the results file). Anything else keeps its traceback."""
    args = build_parser().parse_args(argv)

    def run():
        from training.pipeline import run  # torch and transformers load only now

        run(args)

    def disk_full(err: OSError) -> str | None:  # e.g. ENOSPC writing eval_results.json or the predictions
        if not files.is_disk_full(err, args.output_dir):
            return None
        return f"no space left on {args.output_dir} ({err}); files already written are complete"

    return cli_main("run_squad.py", run, disk_full)


if __name__ == "__main__":
    sys.exit(main())
