"""Answer questions with a trained model: the command line of the inference API (``serving/api.py``).

    python inference.py --model DIR --question Q --context C
    python inference.py --model DIR --input dev-v1.1.json --output predictions.json
    python inference.py --model DIR --length_config "[1.0, 0.8, 0.6]" --export_onnx model.onnx [--int8]
    python inference.py --model DIR --backend onnxruntime --onnx model.onnx --input dev.json --output p.json

Nothing heavy is imported before the flags are checked. One question on an ONNX file
(``--backend onnxruntime --onnx F --question Q --context C``) is answered by ``quick_answer``
without torch or transformers; everything else by ``serving.api.QuestionAnswerer``. The API is
re-exported here: ``from inference import QuestionAnswerer``.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from core import files
from serving import menu as length_menu
from serving.onnx import cache as onnx_cache
from core.checks import (WINDOW_DEFAULTS, check_tokenizer_folder, check_window_flags, read_model_config,
                         token_selection, window_settings)
from serving.settings import BACKENDS, ServingSettings, check_text
from core.errors import PROJECT_ERRORS, UsageError, exit_code


def __getattr__(name):
    """The API (``QuestionAnswerer``, ``onnx_question_answerer``, ...) from ``serving/api.py``,
    imported on first use so the command line starts without torch."""
    from serving import api as answering

    try:
        return getattr(answering, name)
    except AttributeError:
        raise AttributeError(f"module 'inference' has no attribute {name!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Answer questions with a Dynamic-TinyBERT model.")
    p.add_argument("--model", help="folder of a saved model and its tokenizer (needed except with "
                   "--list_cache/--clear_cache)")
    p.add_argument("--question", help="one question (with --context); prints the answer as JSON")
    p.add_argument("--context", help="the text the answer is taken from")
    p.add_argument("--input", help="a SQuAD v1.1 JSON file of questions")
    p.add_argument("--output", help="where to write the predictions {id: answer} (with --input) or the answer "
                   "(with --question); '-' for standard output. A new or regular file, never --input")
    lengths = p.add_mutually_exclusive_group()
    lengths.add_argument("--length_config", help="JSON list, tokens kept per layer, or keep fractions of each "
                         "batch's longest sequence, e.g. [1.0, 0.8, 0.6]")
    lengths.add_argument("--speedup", type=float, help="the most accurate configuration of the model's length "
                         "menu at least this many times faster than full length")
    lengths.add_argument("--max_f1_drop", type=float, help="the fastest configuration of the model's length menu "
                         "whose F1 is within this many points of full length")
    p.add_argument("--menu", help="the length menu for --speedup/--max_f1_drop (default "
                   "<model>/length_configs.json, written by the search)")
    for name, default in WINDOW_DEFAULTS.items():
        p.add_argument(f"--{name}", type=int, help=f"default: the model's training_args.json, else {default}")
    p.add_argument("--n_best_size", type=int, default=20, help="start and end candidates per window")
    p.add_argument("--max_answer_length", type=int, default=30, help="longest answer, in tokens")
    p.add_argument("--batch_size", type=int, default=32, help="windows per forward pass")
    p.add_argument("--threads", type=int, help="CPU threads (torch and ONNX Runtime; default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device of the torch backend, e.g. cuda")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 weights on the torch backend (token scorers float32; about 3.5x faster than float32 on "
                        "CPUs with AMX, faster than autocast; slower on CPUs without bfloat16 instructions, said in one line)")
    p.add_argument("--pad_to_max_length", action="store_true",
                   help="pad batches to --max_seq_length: exactly run_squad.py --do_eval's answers (slower)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch: the folder's weights; onnxruntime: the ONNX file --onnx (the folder gives "
                        "the tokenizer and config)")
    p.add_argument("--onnx", help="ONNX file to run with --backend onnxruntime (from --export_onnx)")
    p.add_argument("--export_onnx", metavar="PATH",
                   help="write the model at --length_config to this ONNX file (int8 with --int8) and exit")
    p.add_argument("--int8", action="store_true",
                   help="int8 on the CPU: ONNX Runtime dynamic quantisation of the exported model (with the "
                        "torch backend the model is exported into the ONNX cache folder first)")
    p.add_argument("--int8_calibration", metavar="FILE",
                   help="with --int8: static int8, activation scales calibrated on this SQuAD v1.1 file's questions "
                        "(training questions, never those reported on); without it --int8 is dynamic")
    p.add_argument("--int8_calibration_count", type=int, default=256, help="features calibrated on (static int8)")
    p.add_argument("--int8_calibration_method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="how the activations' ranges are read from the calibration features (static int8)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--list_cache", action="store_true", help="list the ONNX cache folder's files and exit")
    cache.add_argument("--clear_cache", action="store_true", help="delete the ONNX cache folder's files and exit")
    return p


def check_flags(args) -> ServingSettings:
    """Every flag and output place, before anything loads (the input file included); the settings
    the answers run with."""
    if args.model is None:
        raise UsageError("--model is required (except with --list_cache or --clear_cache)")
    settings = ServingSettings.from_args(args)  # torch's threads are set when the torch backend loads
    config = read_model_config(args.model)
    check_tokenizer_folder(args.model, "--model", config.get("vocab_size"))
    # an export runs at any width up to the model's positions: --max_seq_length only bounds counts
    positions = None if args.export_onnx else config.get("max_position_embeddings")
    window = window_settings(args.model, args.max_seq_length, args.doc_stride, args.max_query_length)
    check_window_flags(*window.values(), args.n_best_size, args.max_answer_length, positions)
    for flag in ("question", "context"):
        if getattr(args, flag) is not None:
            check_text(getattr(args, flag), f"--{flag}", flag)
    if args.output is not None and args.output != "-":
        files.check_output_file(args.output, "--output", inputs=(args.input, args.onnx, args.menu,
                                                                 args.int8_calibration))
    if args.export_onnx is not None:
        files.check_output_file(args.export_onnx, "--export_onnx", inputs=(args.onnx, args.menu,
                                                                           args.int8_calibration))
    if args.int8 and not args.export_onnx:
        cache = onnx_cache.default_cache_dir()
        problem = files.folder_problem(cache)
        if problem is not None:
            raise UsageError(f"the ONNX cache folder {cache} (for --int8): {problem}; set "
                             f"${onnx_cache.CACHE_ENV} to another folder")
    return settings


def run_export(args, settings: ServingSettings) -> None:
    if args.question is not None or args.context is not None or args.input or args.output:
        raise UsageError("--export_onnx writes a file and answers nothing: drop --question/--context/--input/--output")
    if args.backend != "torch" or args.onnx:
        raise UsageError("--export_onnx exports the --model folder's weights: drop --backend onnxruntime/--onnx")
    length_config = args.length_config
    config = read_model_config(args.model)
    layers = config["num_hidden_layers"]
    choice = length_menu.pick(args.model, layers, length_config, args.speedup, args.max_f1_drop, args.menu,
                              selection=token_selection(config))
    if choice is not None:  # export the menu's choice
        max_seq_length = window_settings(args.model, args.max_seq_length)["max_seq_length"]
        length_config = length_menu.choice_config(choice, layers, max_seq_length)
    from serving.api import export_model

    metadata = export_model(args.model, args.export_onnx, length_config, args.max_seq_length, args.int8,
                            menu_choice=choice, settings=settings)
    if choice is not None:
        print(f"inference.py: {choice.describe()}", file=sys.stderr)
    config = "full length" if metadata.length_config is None else json.dumps(list(metadata.length_config))
    print(f"wrote {args.export_onnx} ({metadata.precision}, {config})")


def write_output(path: str, obj, indent=2) -> None:
    """``obj`` as JSON to standard output (``-``) or atomically to the file ``path``."""
    if path == "-":
        print(json.dumps(obj, indent=indent, ensure_ascii=False))
        return
    files.writing(Path(path).absolute().parent, f"--output {path}", lambda: files.atomic_write_json(path, obj))


def run_cache_command(args) -> None:
    """``--list_cache`` / ``--clear_cache``: the ONNX cache folder (``onnx_cache``)."""
    cache = onnx_cache.default_cache_dir()
    if args.clear_cache:
        freed = onnx_cache.clear_cache(cache)
        print(f"cleared {cache} ({freed / 1e6:.1f} MB freed)")
        return
    entries = onnx_cache.list_cache(cache)
    for entry in entries:
        made_from = "no record (rebuilt before use)" if entry.made_from is None else json.dumps(entry.made_from)
        print(f"{entry.path}\t{entry.bytes / 1e6:.1f} MB\t{made_from}")
    print(f"{len(entries)} files, {sum(e.bytes for e in entries) / 1e6:.1f} MB in {cache}")


def takes_quick_path(args) -> bool:
    """One question on a given ONNX file at its own configuration: ``quick_answer``'s case."""
    return (args.backend == "onnxruntime" and not args.int8 and not args.pad_to_max_length
            and args.length_config is None and args.speedup is None and args.max_f1_drop is None
            and args.menu is None)


def answered_quickly(args) -> bool:
    """Write ``quick_answer``'s answer and say True, or False when the full path must answer."""
    from serving import quick_answer

    window = window_settings(args.model, args.max_seq_length, args.doc_stride, args.max_query_length)
    answer = quick_answer.answer(args.model, args.onnx, args.question, args.context, **window,
                                 n_best_size=args.n_best_size, max_answer_length=args.max_answer_length,
                                 batch_size=args.batch_size, threads=args.threads)
    if answer is not None:
        write_output(args.output or "-", answer, indent=None)
    return answer is not None


def run(args) -> None:
    if args.list_cache or args.clear_cache:
        run_cache_command(args)
        return
    settings = check_flags(args)
    if args.export_onnx:
        run_export(args, settings)
        return
    single = args.question is not None or args.context is not None
    if single and args.input:
        raise UsageError("give --question/--context or --input, not both")
    if not single and not args.input:
        raise UsageError("give --question and --context, or --input FILE")
    if args.input and not args.output:
        raise UsageError("--input needs --output")
    if single and (args.question is None or args.context is None):
        raise UsageError("empty " + ("question" if args.question is None else "context"))
    if single and takes_quick_path(args) and answered_quickly(args):
        return
    import utils_squad
    from serving.api import QuestionAnswerer

    examples = (utils_squad.read_squad_examples(args.input, is_training=False, require_answers=False)
                if args.input else None)
    if examples is not None and not examples:
        raise UsageError(f"--input {args.input}: no questions")
    for example in examples or ():
        check_text(example.question, f"--input {args.input}", f"question {example.qas_id!r}")
        check_text(example.context, f"--input {args.input}", f"context of question {example.qas_id!r}")
    qa = QuestionAnswerer.from_settings(args.model, settings)
    if args.int8 and args.backend == "torch":
        print("inference.py: --int8 runs an int8 ONNX Runtime copy of the model (exported once into "
              f"{onnx_cache.default_cache_dir()})", file=sys.stderr)
    if qa.menu_choice is not None:
        print(f"inference.py: {qa.menu_choice.describe()}", file=sys.stderr)
    if single:
        write_output(args.output or "-", qa.answer(args.question, args.context), indent=None)
        return
    predictions, _ = qa.predict(examples, progress=True)
    write_output(args.output, predictions)


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"inference.py: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = one_line_warning  # the API's warnings (bfloat16 without hardware) as one line
        try:
            run(args)
        except PROJECT_ERRORS as e:
            print(f"inference.py: error: {e}", file=sys.stderr)
            return exit_code(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
