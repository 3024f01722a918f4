"""Answer questions with a trained model: the user-facing inference API and its command line.

    qa = QuestionAnswerer.from_pretrained("output/step3", length_config=[260, 220, 180, 140, 100, 60])
    qa.answer("Who wrote it?", context)     # {"answer", "score", "start", "end"}
    qa.answer_batch([(question, context), ...])
    qa = QuestionAnswerer.from_pretrained("output/step4", speedup=2.0)   # from the model's length menu

``speedup=X`` / ``max_f1_drop=D`` (``--speedup``, ``--max_f1_drop``) choose a configuration from the
menu the search stored with the checkpoint (``length_menu.py``): the most accurate one at least X
times faster than full length, or the fastest within D F1 points of it.

Contexts longer than ``max_seq_length`` are cut into the training windows
(``utils_squad.convert_examples_to_features``); answers are chosen by the evaluation's n-best rules
(``postprocess.postprocess_predictions``). Features are sorted by length and each batch is padded
only to its longest feature: significance ignores padding, so real tokens' logits are those of
padding to ``max_seq_length``; positions past a batch's width get -inf (never an answer).

The evaluation (``run_squad.py --do_eval``) pads every feature to ``max_seq_length`` and, as the
reference, ranks padding positions' logits in each window's top ``n_best_size`` too, where they can
push real tokens out (a random model even answers "empty"). So answers equal ``--do_eval``'s
wherever no padding logit ranks there; ``pad_to_max_length=True`` (``--pad_to_max_length``) pads
every batch to ``max_seq_length`` and reproduces ``--do_eval``'s predictions exactly.

    python inference.py --model DIR --question Q --context C
    python inference.py --model DIR --input dev-v1.1.json --output predictions.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

import evaluation
import files
import length_drop
import length_menu
import postprocess
import utils_squad
from errors import PROJECT_ERRORS, UsageError, exit_code
from loading import load_model_checked, load_tokenizer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
PAD_LOGIT = evaluation.PAD_LOGIT  # positions past a batch's width: never in the n-best


def check_model_folder(folder) -> Path:
    """The folder, or a UsageError naming what is missing."""
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"--model {folder}: not a folder")
    if not (path / "config.json").is_file():
        raise UsageError(f"--model {folder}: no config.json (not a saved model folder)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise UsageError(f"--model {folder}: no weights (model.safetensors or pytorch_model.bin)")
    return path


def checked_length_config(value, num_hidden_layers: int, max_seq_length: int):
    """None, or the configuration validated by ``length_drop.parse_length_config``."""
    if value is None:
        return None
    try:
        return length_drop.parse_length_config(value, num_hidden_layers, max_seq_length)
    except ValueError as err:
        raise UsageError(f"--length_config: {err}") from None


class QuestionAnswerer:
    """A model, its tokenizer and the windowing/n-best settings; answers (question, context) pairs."""

    def __init__(self, model, tokenizer, length_config=None, max_seq_length=384, doc_stride=128,
                 max_query_length=64, n_best_size=20, max_answer_length=30, batch_size=32, device="cpu",
                 pad_to_max_length=False):
        if batch_size < 1:
            raise UsageError(f"--batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_seq_length, self.doc_stride, self.max_query_length = max_seq_length, doc_stride, max_query_length
        self.n_best_size, self.max_answer_length, self.batch_size = n_best_size, max_answer_length, batch_size
        self.pad_to_max_length = pad_to_max_length
        self.length_config = checked_length_config(length_config, model.config.num_hidden_layers, max_seq_length)
        self.menu_choice = None  # the length_menu.Choice from_pretrained made, if any

    @classmethod
    def from_pretrained(cls, folder, length_config=None, max_seq_length=384, doc_stride=128,
                        max_query_length=64, n_best_size=20, max_answer_length=30, batch_size=32,
                        device="cpu", threads=None, pad_to_max_length=False, speedup=None, max_f1_drop=None,
                        menu=None) -> "QuestionAnswerer":
        """``speedup``/``max_f1_drop`` (one at most, instead of ``length_config``): the length
        configuration chosen from ``menu`` (default ``<folder>/length_configs.json``)."""
        if threads is not None:
            if threads < 1:
                raise UsageError(f"--threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)
        path = check_model_folder(folder)
        try:  # a wrong length configuration is said before any weights load
            layers = json.loads((path / "config.json").read_text())["num_hidden_layers"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UsageError(f"--model {folder}: unreadable config.json ({err})") from None
        checked_length_config(length_config, layers, max_seq_length)
        choice = length_menu.pick(path, layers, length_config, speedup, max_f1_drop, menu)
        if choice is not None:
            length_config = checked_length_config(choice.entry.length_config, layers, max_seq_length)
        model = load_model_checked(str(folder), "--model")
        if choice is not None:
            length_menu.check_choice_fits(choice, model, max_seq_length, doc_stride, max_query_length, batch_size)
        tokenizer = load_tokenizer(SimpleNamespace(tokenizer_path=str(folder), do_lower_case=True))
        qa = cls(model, tokenizer, length_config, max_seq_length, doc_stride, max_query_length,
                 n_best_size, max_answer_length, batch_size, device, pad_to_max_length)
        qa.menu_choice = choice
        return qa

    # ---- features and logits -------------------------------------------------------------------

    def features(self, examples):
        return utils_squad.convert_examples_to_features(
            examples, self.tokenizer, self.max_seq_length, self.doc_stride, self.max_query_length,
            is_training=False)

    def logits(self, features, progress: bool = False):
        """Start/end logits [N, max_seq_length] in the features' order. Features are run longest
        first, each batch padded to its own longest feature; the rest of a row is PAD_LOGIT
        (``evaluation.sorted_batch_logits``, the batching the search evaluates relative
        configurations on)."""
        forward = evaluation.torch_forward(self.model, self.device, self.length_config)
        out = evaluation.sorted_batch_logits(forward, features, self.batch_size, self.pad_to_max_length, progress)
        return out.starts, out.ends

    # ---- answers ------------------------------------------------------------------------------

    def predict(self, examples, progress: bool = False):
        """(predictions {qas_id: text}, nbest {qas_id: [entries with start/end offsets]})."""
        features = self.features(examples)
        starts, ends = self.logits(features, progress)
        return postprocess.postprocess_predictions(examples, features, starts, ends, self.n_best_size,
                                                   self.max_answer_length, with_offsets=True)

    def answer_batch(self, pairs) -> list[dict]:
        """[{"answer", "score", "start", "end"}] for (question, context) pairs; context[start:end]
        is the answer (an empty answer at 0 when no span is valid)."""
        examples = []
        for i, pair in enumerate(pairs):
            question, context = pair
            for name, text in (("question", question), ("context", context)):
                if not isinstance(text, str) or not text.strip():
                    raise UsageError(f"pair {i}: empty {name}")
            examples.append(utils_squad.SquadExample(str(i), "", question, context, []))
        if not examples:
            return []
        _, nbest = self.predict(examples)
        results = []
        for example in examples:
            best = nbest[example.qas_id][0]
            if best["start"] is None:  # the reference's "empty" placeholder: no valid span
                results.append({"answer": "", "score": 0.0, "start": 0, "end": 0})
            else:
                results.append({"answer": best["text"], "score": best["probability"],
                                "start": best["start"], "end": best["end"]})
        return results

    def answer(self, question: str, context: str) -> dict:
        return self.answer_batch([(question, context)])[0]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Answer questions with a Dynamic-TinyBERT model.")
    p.add_argument("--model", required=True, help="folder of a saved model and its tokenizer")
    p.add_argument("--question")
    p.add_argument("--context")
    p.add_argument("--input", help="a SQuAD v1.1 JSON file of questions")
    p.add_argument("--output", help="where to write the predictions {id: answer} (with --input)")
    lengths = p.add_mutually_exclusive_group()
    lengths.add_argument("--length_config", help="JSON list, tokens kept per layer, or keep fractions of each "
                         "batch's longest sequence, e.g. [1.0, 0.8, 0.6]")
    lengths.add_argument("--speedup", type=float, help="the most accurate configuration of the model's length "
                         "menu at least this many times faster than full length")
    lengths.add_argument("--max_f1_drop", type=float, help="the fastest configuration of the model's length menu "
                         "whose F1 is within this many points of full length")
    p.add_argument("--menu", help="the length menu for --speedup/--max_f1_drop (default "
                   "<model>/length_configs.json, written by the search)")
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--max_query_length", type=int, default=64)
    p.add_argument("--n_best_size", type=int, default=20)
    p.add_argument("--max_answer_length", type=int, default=30)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--pad_to_max_length", action="store_true",
                   help="pad batches to --max_seq_length: exactly run_squad.py --do_eval's answers (slower)")
    return p


def run(args) -> None:
    single = args.question is not None or args.context is not None
    if single and args.input:
        raise UsageError("give --question/--context or --input, not both")
    if not single and not args.input:
        raise UsageError("give --question and --context, or --input FILE")
    if args.input and not args.output:
        raise UsageError("--input needs --output")
    if single and (not (args.question or "").strip() or not (args.context or "").strip()):
        raise UsageError("empty " + ("question" if not (args.question or "").strip() else "context"))
    examples = (utils_squad.read_squad_examples(args.input, is_training=False, require_answers=False)
                if args.input else None)
    if examples is not None and not examples:
        raise UsageError(f"--input {args.input}: no questions")
    qa = QuestionAnswerer.from_pretrained(
        args.model, args.length_config, args.max_seq_length, args.doc_stride, args.max_query_length,
        args.n_best_size, args.max_answer_length, args.batch_size, args.device, args.threads,
        args.pad_to_max_length, args.speedup, args.max_f1_drop, args.menu)
    if qa.menu_choice is not None:
        print(f"inference.py: {qa.menu_choice.describe()}", file=sys.stderr)
    if single:
        print(json.dumps(qa.answer(args.question, args.context), ensure_ascii=False))
        return
    for example in examples:
        if not example.question.strip():
            raise UsageError(f"--input {args.input}: question {example.qas_id!r} is empty")
        if not example.context.strip():
            raise UsageError(f"--input {args.input}: the context of question {example.qas_id!r} is empty")
    predictions, _ = qa.predict(examples, progress=True)
    files.atomic_write_json(args.output, predictions)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # stderr keeps only our progress bar and errors
    try:
        run(args)
    except PROJECT_ERRORS as e:
        print(f"inference.py: error: {e}", file=sys.stderr)
        return exit_code(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
