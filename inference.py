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
    python inference.py --model DIR --length_config "[1.0, 0.8, 0.6]" --export_onnx model.onnx [--int8]
    python inference.py --model DIR --backend onnxruntime --onnx model.onnx --input dev.json --output p.json

Logits come from a logits provider: the PyTorch model (``TorchLogits``) or an exported ONNX file
run by ONNX Runtime (``ort_backend.OrtLogits``); batching, windows and answers are the same.
``--int8`` runs ONNX Runtime's dynamic quantisation of the exported model (with the torch
backend the model is exported into a cache folder first, ``onnx_cache``).
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace
from typing import Protocol

import numpy as np
import torch

import evaluation
import files
import length_drop
import length_menu
import onnx_cache
import onnx_export
import ort_backend
import postprocess
import utils_squad
from checkpoints import weights_sha256
from errors import PROJECT_ERRORS, UsageError, exit_code
from loading import load_model_checked, load_tokenizer
from onnx_export import Int8Settings
from settings import WINDOW_FLAGS, check_device, check_threads, check_window_flags  # noqa: F401
from settings import check_model_folder as check_saved_model

PAD_LOGIT = evaluation.PAD_LOGIT  # positions past a batch's width: never in the n-best
BACKENDS = ("torch", "onnxruntime")
WINDOW_DEFAULTS = {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}  # the reference's


def check_model_folder(folder) -> Path:
    """The folder, or a UsageError naming what is missing or broken (the rules run_squad.py
    applies to its model folders: a JSON config.json, a weights file whose header is whole)."""
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"--model {folder}: not a folder")
    check_saved_model(path, "--model")
    return path


def checked_length_config(value, num_hidden_layers: int, max_seq_length: int):
    """None, or the configuration validated by ``length_drop.parse_length_config``."""
    if value is None:
        return None
    try:
        return length_drop.parse_length_config(value, num_hidden_layers, max_seq_length)
    except ValueError as err:
        raise UsageError(f"--length_config: {err}") from None


def read_model_config(folder) -> dict:
    """The folder's config.json (checked to name the layer count), or a UsageError."""
    path = check_model_folder(folder)
    try:
        config = json.loads((path / "config.json").read_text())
        int(config["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--model {folder}: unreadable config.json ({err})") from None
    return config


def window_settings(folder, max_seq_length=None, doc_stride=None, max_query_length=None) -> dict:
    """The windows features are cut into: each setting as given, else as the model was trained
    (``training_args.json``, which every checkpoint of run_squad.py carries), else the reference's
    default (384, 128, 64). A model answers best on the windows it was trained and searched on."""
    trained = {}
    path = Path(folder) / "training_args.json"
    if path.is_file():
        try:
            trained = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UsageError(f"--model {folder}: unreadable training_args.json ({err})") from None
    given = {"max_seq_length": max_seq_length, "doc_stride": doc_stride, "max_query_length": max_query_length}
    settings = {}
    for name, value in given.items():
        if value is None:
            value = trained.get(name) if isinstance(trained, dict) else None
        if value is None:
            value = WINDOW_DEFAULTS[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value!r}")
        settings[name] = value
    return settings


def set_threads(threads) -> None:
    """torch's threads (ONNX Runtime's are set per session from the same number)."""
    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)


def check_text(text, where: str, what: str) -> None:
    """A question or context: a string, valid UTF-8 (a command line can carry other bytes), and
    not blank. Blank is what the tokenizer keeps nothing of: whitespace and invisible characters
    (zero-width spaces and other format or control characters, which BERT's tokenizer drops)."""
    if not isinstance(text, str):
        raise UsageError(f"{where}: the {what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UsageError(f"{where}: the {what} is not UTF-8 text (a byte that is not UTF-8 at character "
                         f"{err.start})") from None
    if all(c.isspace() or unicodedata.category(c).startswith("C") for c in text):
        raise UsageError(f"{where}: empty {what} (nothing but whitespace or invisible characters)")


class LogitsProvider(Protocol):
    """What ``QuestionAnswerer`` gets its logits from: one batch of features (int64 ``[B, W]``,
    padded to its longest) -> start and end logits, float32 numpy ``[B, W]``."""

    length_config: tuple | None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]: ...


class TorchLogits:
    """The PyTorch model at a length configuration, as a logits provider."""

    def __init__(self, model, length_config=None, device="cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.length_config = length_config

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                         token_type_ids=token_type_ids.to(self.device), length_config=self.length_config)
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()


class QuestionAnswerer:
    """A logits provider (the PyTorch model, or an ONNX file run by ONNX Runtime), its tokenizer
    and the windowing/n-best settings; answers (question, context) pairs."""

    def __init__(self, model, tokenizer, length_config=None, max_seq_length=384, doc_stride=128,
                 max_query_length=64, n_best_size=20, max_answer_length=30, batch_size=32, device="cpu",
                 pad_to_max_length=False):
        """``model``: a ``modeling_bert.BertForQuestionAnswering`` (run at ``length_config`` on
        ``device``) or any ``LogitsProvider`` (which brings its own length configuration)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"--batch_size must be an integer of at least 1, got {batch_size!r}")
        metadata = getattr(model, "metadata", None)  # an OrtLogits' file records the model's shape
        positions = (model.config.max_position_embeddings if isinstance(model, torch.nn.Module)
                     else getattr(metadata, "max_position_embeddings", None))
        check_window_flags(max_seq_length, doc_stride, max_query_length, n_best_size, max_answer_length, positions)
        self.tokenizer = tokenizer
        self.max_seq_length, self.doc_stride, self.max_query_length = max_seq_length, doc_stride, max_query_length
        self.n_best_size, self.max_answer_length, self.batch_size = n_best_size, max_answer_length, batch_size
        self.pad_to_max_length = pad_to_max_length
        if isinstance(model, torch.nn.Module):
            self.length_config = checked_length_config(length_config, model.config.num_hidden_layers, max_seq_length)
            self.provider = TorchLogits(model, self.length_config, device)
            self.model = self.provider.model
        else:
            if length_config is not None:
                raise UsageError("a logits provider brings its own length configuration; give none")
            self.provider, self.model, self.length_config = model, None, model.length_config
            ort_backend.check_onnx_padding(self.length_config, pad_to_max_length)
        self.menu_choice = None  # the length_menu.Choice from_pretrained made, if any

    @classmethod
    def from_pretrained(cls, folder, length_config=None, max_seq_length=None, doc_stride=None,
                        max_query_length=None, n_best_size=20, max_answer_length=30, batch_size=32,
                        device="cpu", threads=None, pad_to_max_length=False, *, backend="torch",
                        onnx_path=None, int8=False, int8_settings: Int8Settings = Int8Settings(),
                        cache_dir=None, speedup=None, max_f1_drop=None, menu=None) -> "QuestionAnswerer":
        """The folder gives the tokenizer and model config. ``backend="torch"`` runs its weights
        (``int8=True``: an int8 ONNX Runtime copy, exported into ``cache_dir``, see
        ``onnx_cache``); ``backend="onnxruntime"`` runs the ONNX file ``onnx_path``
        (``int8=True`` quantises a float32 file into ``cache_dir`` first).
        ``speedup``/``max_f1_drop`` (one at most, instead of ``length_config``): the length
        configuration chosen from ``menu`` (default ``<folder>/length_configs.json``). Window
        settings left None are the model's own (``window_settings``)."""
        set_threads(threads)
        check_backend(backend, onnx_path, int8, device)
        config = read_model_config(folder)  # wrong settings are said before any weights load
        max_seq_length, doc_stride, max_query_length = window_settings(
            folder, max_seq_length, doc_stride, max_query_length).values()
        check_window_flags(max_seq_length, doc_stride, max_query_length, n_best_size, max_answer_length,
                           config.get("max_position_embeddings"))
        layers = config["num_hidden_layers"]
        length_config = checked_length_config(length_config, layers, max_seq_length)
        choice = length_menu.pick(folder, layers, length_config, speedup, max_f1_drop, menu)
        if choice is not None:
            length_config = length_menu.choice_config(choice, layers, max_seq_length)
        if backend == "onnxruntime" or int8:
            ort_backend.check_onnx_padding(length_config, pad_to_max_length)
        tokenizer = load_tokenizer(SimpleNamespace(tokenizer_path=str(folder), do_lower_case=True))
        settings = (max_seq_length, doc_stride, max_query_length, n_best_size, max_answer_length, batch_size)
        if backend == "torch" and not int8:
            model = load_model_checked(str(folder), "--model")
            if choice is not None:
                length_menu.check_choice_fits(choice, weights_sha256(model), max_seq_length, doc_stride,
                                              max_query_length, batch_size)
            qa = cls(model, tokenizer, length_config, *settings, device, pad_to_max_length)
        else:
            weights = ort_backend.folder_weights_sha256(folder)  # what every ONNX file is checked against
            if choice is not None:  # before any export: a menu of other weights is refused on every backend
                length_menu.check_choice_fits(choice, weights, max_seq_length, doc_stride, max_query_length,
                                              batch_size)
            provider = ort_backend.onnx_provider(folder, config, length_config, onnx_path, int8, int8_settings,
                                                 threads, cache_dir, weights)
            qa = cls(provider, tokenizer, None, *settings, device, pad_to_max_length)
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
        out = evaluation.sorted_batch_logits(self.provider, features, self.batch_size, self.pad_to_max_length,
                                             progress)
        return out.starts, out.ends

    # ---- answers ------------------------------------------------------------------------------

    def predict(self, examples, progress: bool = False):
        """(predictions {qas_id: text}, nbest {qas_id: [entries with start/end offsets]})."""
        features = self.features(examples)
        starts, ends = self.logits(features, progress)
        return postprocess.postprocess_predictions(examples, features, starts, ends, self.n_best_size,
                                                   self.max_answer_length, with_offsets=True)

    def answer_batch(self, pairs) -> list[dict]:
        """[{"answer", "score", "start", "end"}] for (question, context) pairs (tuples or lists of
        two strings); context[start:end] is the answer (an empty answer at 0 when no span is valid)."""
        if isinstance(pairs, (str, bytes, dict)):
            raise UsageError(f"answer_batch takes a list of (question, context) pairs, got {type(pairs).__name__}")
        examples = []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise UsageError(f"pair {i}: expected a (question, context) pair of two strings, got "
                                 f"{type(pair).__name__}" + (f" of length {len(pair)}" if isinstance(pair, (tuple, list)) else ""))
            question, context = pair
            for name, text in (("question", question), ("context", context)):
                check_text(text, f"pair {i}", name)
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
# ONNX Runtime and export
# --------------------------------------------------------------------------------------------

def check_backend(backend: str, onnx_path, int8: bool, device: str) -> None:
    """The backend combinations that exist, or a UsageError naming the flags."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnxruntime" and onnx_path is None:
        raise UsageError("--backend onnxruntime needs --onnx FILE (write one with --export_onnx FILE)")
    if backend != "onnxruntime" and onnx_path is not None:
        raise UsageError("--onnx needs --backend onnxruntime")
    check_device(device)
    if (backend == "onnxruntime" or int8) and torch.device(device).type != "cpu":
        what = "--int8" if int8 else "--backend onnxruntime"
        raise UsageError(f"{what} runs on the CPU (ONNX Runtime's CPU provider); drop --device {device}")


def onnx_question_answerer(folder, length_config=None, int8: bool = False, *, threads=None, cache_dir=None,
                           int8_settings: Int8Settings = Int8Settings(), **settings) -> "QuestionAnswerer":
    """A ``QuestionAnswerer`` running the folder's model with ONNX Runtime, float32 or int8,
    exported (and quantised) into ``cache_dir`` (default: a temporary folder) unless already
    there. ``settings``: ``QuestionAnswerer.from_pretrained``'s (max_seq_length, batch_size, ...)."""
    set_threads(threads)
    config = read_model_config(folder)
    windows = {name: settings.pop(name, None) for name in WINDOW_DEFAULTS}
    settings.update(window_settings(folder, **windows))
    defaults = inspect.signature(QuestionAnswerer.__init__).parameters
    window = [settings.get(name, defaults[name].default) for name in WINDOW_FLAGS]
    check_window_flags(*window, config.get("max_position_embeddings"))
    length_config = checked_length_config(length_config, config["num_hidden_layers"], settings["max_seq_length"])
    ort_backend.check_onnx_padding(length_config, settings.get("pad_to_max_length", False))
    provider = ort_backend.onnx_provider(folder, config, length_config, None, int8, int8_settings, threads, cache_dir,
                                         ort_backend.folder_weights_sha256(folder))
    tokenizer = load_tokenizer(SimpleNamespace(tokenizer_path=str(folder), do_lower_case=True))
    return QuestionAnswerer(provider, tokenizer, **settings)


def export_model(folder, path, length_config=None, max_seq_length=None, int8=False,
                 int8_settings: Int8Settings = Int8Settings(), menu_choice=None):
    """``--export_onnx``: write the folder's model at ``length_config`` to the ONNX file ``path``
    (float32, or int8 with ``int8``). ``menu_choice``: the ``length_menu.Choice`` the
    configuration came from (its menu must describe these weights). Returns the file's metadata."""
    config = read_model_config(folder)
    max_seq_length = window_settings(folder, max_seq_length)["max_seq_length"]
    check_window_flags(max_seq_length, 1, 1, 1, 1)
    length_config = checked_length_config(length_config, config["num_hidden_layers"], max_seq_length)
    files.check_output_file(path, "--export_onnx")
    model = load_model_checked(str(folder), "--model")
    if menu_choice is not None:
        length_menu.check_menu_weights(menu_choice.menu, weights_sha256(model))

    def write():
        if not int8:
            return onnx_export.export_onnx(model, path, length_config)
        with files.temporary_beside(path, ".fp32.onnx") as fp32:  # the float32 export, quantised into path
            onnx_export.export_onnx(model, fp32, length_config)
            return onnx_export.quantize_int8(fp32, path, int8_settings)
    return files.writing(Path(path).absolute().parent, f"--export_onnx {path}", write)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

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
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--list_cache", action="store_true", help="list the ONNX cache folder's files and exit")
    cache.add_argument("--clear_cache", action="store_true", help="delete the ONNX cache folder's files and exit")
    return p


def check_flags(args) -> None:
    """Every flag and output place, before anything loads (the input file included)."""
    if args.model is None:
        raise UsageError("--model is required (except with --list_cache or --clear_cache)")
    set_threads(args.threads)
    check_backend(args.backend, args.onnx, args.int8, args.device)
    if isinstance(args.batch_size, int) and args.batch_size < 1:
        raise UsageError(f"--batch_size must be an integer of at least 1, got {args.batch_size}")
    config = read_model_config(args.model)
    # an export runs at any width up to the model's positions: --max_seq_length only bounds counts
    positions = None if args.export_onnx else config.get("max_position_embeddings")
    window = window_settings(args.model, args.max_seq_length, args.doc_stride, args.max_query_length)
    check_window_flags(*window.values(), args.n_best_size, args.max_answer_length, positions)
    for flag in ("question", "context"):
        if getattr(args, flag) is not None:
            check_text(getattr(args, flag), f"--{flag}", flag)
    if args.output is not None and args.output != "-":
        files.check_output_file(args.output, "--output", inputs=(args.input, args.onnx, args.menu))
    if args.export_onnx is not None:
        files.check_output_file(args.export_onnx, "--export_onnx", inputs=(args.onnx, args.menu))
    if args.int8 and not args.export_onnx:
        cache = onnx_cache.default_cache_dir()
        problem = files.folder_problem(cache)
        if problem is not None:
            raise UsageError(f"the ONNX cache folder {cache} (for --int8): {problem}; set "
                             f"${onnx_cache.CACHE_ENV} to another folder")


def run_export(args) -> None:
    if args.question is not None or args.context is not None or args.input or args.output:
        raise UsageError("--export_onnx writes a file and answers nothing: drop --question/--context/--input/--output")
    if args.backend != "torch" or args.onnx:
        raise UsageError("--export_onnx exports the --model folder's weights: drop --backend onnxruntime/--onnx")
    length_config = args.length_config
    layers = read_model_config(args.model)["num_hidden_layers"]
    choice = length_menu.pick(args.model, layers, length_config, args.speedup, args.max_f1_drop, args.menu)
    if choice is not None:  # export the menu's choice
        max_seq_length = window_settings(args.model, args.max_seq_length)["max_seq_length"]
        length_config = length_menu.choice_config(choice, layers, max_seq_length)
    metadata = export_model(args.model, args.export_onnx, length_config, args.max_seq_length, args.int8,
                            menu_choice=choice)
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


def run(args) -> None:
    if args.list_cache or args.clear_cache:
        run_cache_command(args)
        return
    check_flags(args)
    if args.export_onnx:
        run_export(args)
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
    examples = (utils_squad.read_squad_examples(args.input, is_training=False, require_answers=False)
                if args.input else None)
    if examples is not None and not examples:
        raise UsageError(f"--input {args.input}: no questions")
    for example in examples or ():
        check_text(example.question, f"--input {args.input}", f"question {example.qas_id!r}")
        check_text(example.context, f"--input {args.input}", f"context of question {example.qas_id!r}")
    qa = QuestionAnswerer.from_pretrained(
        args.model, args.length_config, args.max_seq_length, args.doc_stride, args.max_query_length,
        args.n_best_size, args.max_answer_length, args.batch_size, args.device, args.threads,
        args.pad_to_max_length, backend=args.backend, onnx_path=args.onnx, int8=args.int8,
        speedup=args.speedup, max_f1_drop=args.max_f1_drop, menu=args.menu)
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
