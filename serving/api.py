"""Answer questions with a trained model: the user-facing inference API (``inference.py`` is its
command line and re-exports it: ``from inference import QuestionAnswerer``).

    qa = QuestionAnswerer.from_pretrained("output/step3", length_config=[260, 220, 180, 140, 100, 60])
    qa.answer("Who wrote it?", context)     # {"answer", "score", "start", "end"}
    qa.answer_batch([(question, context), ...])
    qa = QuestionAnswerer.from_pretrained("output/step4", speedup=2.0)   # from the model's length menu

``speedup=X`` / ``max_f1_drop=D`` (``--speedup``, ``--max_f1_drop``) choose a configuration from the
menu the search stored with the checkpoint (``serving/menu.py``): the most accurate one at least X
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

Logits come from a logits provider: the PyTorch model (``core.forward.TorchLogits``) or an exported ONNX file
run by ONNX Runtime (``ort_backend.OrtLogits``); batching, windows and answers are the same.
``--int8`` runs ONNX Runtime's dynamic quantisation of the exported model (with the torch
backend the model is exported into a cache folder first, ``serving.onnx.cache``).
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from core import files
from serving import menu as length_menu
from serving.onnx import export as onnx_export
from serving.onnx import backend as ort_backend
from core import postprocess
import utils_squad
from core import batching
from core.forward import TorchLogits
from core.checks import (check_threads, check_tokenizer_folder, check_window_flags, checked_length_config,
                         read_model_config, token_selection, window_settings)
from core.hashing import weights_sha256
from serving.settings import ServingSettings, check_precision, check_text
from core.errors import UsageError
from core.models import load_model_checked, load_tokenizer
from serving.onnx.calibration import calibration_features
from serving.onnx.int8 import Int8Settings

def set_threads(threads) -> None:
    """torch's threads (ONNX Runtime's are set per session from the same number)."""
    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)


class LogitsProvider(Protocol):
    """What ``QuestionAnswerer`` gets its logits from: one batch of features (int64 ``[B, W]``,
    padded to its longest) -> start and end logits, float32 numpy ``[B, W]``."""

    length_config: tuple | None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]: ...


class QuestionAnswerer:
    """A logits provider (the PyTorch model, or an ONNX file run by ONNX Runtime), its tokenizer
    and the windowing/n-best settings; answers (question, context) pairs."""

    def __init__(self, model, tokenizer, length_config=None, max_seq_length=384, doc_stride=128,
                 max_query_length=64, n_best_size=20, max_answer_length=30, batch_size=32, device="cpu",
                 pad_to_max_length=False, precision="fp32"):
        """``model``: a ``modeling_bert.BertForQuestionAnswering`` (run at ``length_config`` on
        ``device`` in ``precision``, "fp32" or "bf16": bfloat16 weights) or any ``LogitsProvider`` (which brings
        its own length configuration and precision)."""
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
            check_precision(precision, "torch", False)
            self.length_config = checked_length_config(length_config, model.config.num_hidden_layers, max_seq_length)
            self.provider = TorchLogits(model, self.length_config, device, precision)
            self.model = self.provider.model
        else:
            if length_config is not None or precision != "fp32":
                raise UsageError("a logits provider brings its own length configuration and precision; give none")
            self.provider, self.model, self.length_config = model, None, model.length_config
            ort_backend.check_onnx_padding(self.length_config, pad_to_max_length)
        self.menu_choice = None  # the length_menu.Choice from_pretrained made, if any

    @classmethod
    def from_pretrained(cls, folder, length_config=None, settings: ServingSettings | None = None,
                        **flags) -> "QuestionAnswerer":
        """The folder's model as ``settings`` say (``ServingSettings``), or as its keywords say
        (``max_seq_length=128, backend="onnxruntime", onnx_path=..., speedup=2.0``, ...: the
        defaults of ``ServingSettings`` otherwise). The folder gives the tokenizer and model config.
        ``backend="torch"`` runs its weights (``int8=True``: an int8 ONNX Runtime copy, exported into
        ``cache_dir``, see ``serving.onnx.cache``); ``backend="onnxruntime"`` runs the ONNX file
        ``onnx_path`` (``int8=True`` quantises a float32 file into ``cache_dir`` first).
        ``speedup``/``max_f1_drop`` (one at most, instead of ``length_config``): the length
        configuration chosen from ``menu`` (default ``<folder>/length_configs.json``)."""
        settings = settings or ServingSettings()
        if length_config is not None or flags:
            settings = dataclasses.replace(settings, **flags, **(
                {"length_config": length_config} if length_config is not None else {}))
        return cls.from_settings(folder, settings)

    @classmethod
    def from_settings(cls, folder, settings: ServingSettings, export_onnx: bool = False) -> "QuestionAnswerer":
        """``from_pretrained``'s work. ``export_onnx``: run the folder's weights with ONNX Runtime
        (float32, or int8 with ``settings.int8``), exported into the cache first."""
        set_threads(settings.threads)
        config = read_model_config(folder)  # wrong settings are said before any weights load
        check_tokenizer_folder(folder, "--model", config.get("vocab_size"))
        windows = settings.windows(folder, config.get("max_position_embeddings"))
        layers = config["num_hidden_layers"]
        length_config = checked_length_config(settings.length_config, layers, windows["max_seq_length"])
        choice = length_menu.pick(folder, layers, length_config, settings.speedup, settings.max_f1_drop,
                                  settings.menu, selection=token_selection(config))
        if choice is not None:
            length_config = length_menu.choice_config(choice, layers, windows["max_seq_length"])
        runs_onnx = export_onnx or settings.exports_onnx
        if runs_onnx:
            ort_backend.check_onnx_padding(length_config, settings.pad_to_max_length)
        tokenizer = load_tokenizer(folder)
        answering = dict(windows, n_best_size=settings.n_best_size, max_answer_length=settings.max_answer_length,
                         batch_size=settings.batch_size, device=settings.device,
                         pad_to_max_length=settings.pad_to_max_length)
        if not runs_onnx:
            warning = settings.precision_warning()
            if warning is not None:
                warnings.warn(warning, RuntimeWarning, stacklevel=3)
            model = load_model_checked(str(folder), "--model")
            if choice is not None:
                length_menu.check_choice_fits(choice, weights_sha256(model), windows["max_seq_length"],
                                              windows["doc_stride"], windows["max_query_length"], settings.batch_size)
            qa = cls(model, tokenizer, length_config, precision=settings.precision, **answering)
        else:
            weights = ort_backend.folder_weights_sha256(folder)  # what every ONNX file is checked against
            if choice is not None:  # before any export: a menu of other weights is refused on every backend
                length_menu.check_choice_fits(choice, weights, windows["max_seq_length"], windows["doc_stride"],
                                              windows["max_query_length"], settings.batch_size)
            int8_settings, calibration = calibrated(settings, tokenizer, windows)
            provider = ort_backend.onnx_provider(folder, config, length_config, settings.onnx_path, settings.int8,
                                                 int8_settings, settings.threads, settings.cache_dir, weights,
                                                 calibration)
            qa = cls(provider, tokenizer, None, **answering)
        qa.menu_choice = choice
        return qa

    # ---- features and logits -------------------------------------------------------------------

    def features(self, examples):
        return utils_squad.convert_examples_to_features(
            examples, self.tokenizer, self.max_seq_length, self.doc_stride, self.max_query_length,
            is_training=False)

    def logits(self, features, progress: bool = False):
        """Start/end logits [N, max_seq_length] in the features' order. Features are run longest
        first, each batch padded to its own longest feature; the rest of a row is
        ``batching.PAST_WIDTH_LOGIT`` (``batching.sorted_batch_logits``, the batching the search
        evaluates relative configurations on)."""
        inputs = (features.input_ids, features.attention_mask, features.token_type_ids)
        out = batching.sorted_batch_logits(self.provider, inputs, self.batch_size, self.pad_to_max_length, progress)
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
        return [postprocess.best_answer(nbest[example.qas_id]) for example in examples]

    def answer(self, question: str, context: str) -> dict:
        return self.answer_batch([(question, context)])[0]


def calibrated(settings: ServingSettings, tokenizer, windows: dict):
    """(int8 settings, calibration features or None): static int8's features, windowed as served,
    their sha256 recorded in the settings."""
    int8_settings = settings.quantization()
    if not settings.int8 or int8_settings.method != "static":
        return int8_settings, None
    calibration = calibration_features(settings.int8_calibration, tokenizer, int8_settings.calibration_count,
                                       windows["max_seq_length"], windows["doc_stride"], windows["max_query_length"],
                                       same_shape=int8_settings.calibration_method != "minmax")
    return dataclasses.replace(int8_settings, calibration_sha256=calibration.sha256), calibration


def onnx_question_answerer(folder, length_config=None, int8: bool = False, **flags) -> "QuestionAnswerer":
    """A ``QuestionAnswerer`` running the folder's model with ONNX Runtime, float32 or int8,
    exported (and quantised) into ``cache_dir`` (default: the ONNX cache folder) unless already
    there. ``flags``: ``ServingSettings``' (max_seq_length, batch_size, threads, cache_dir, ...)."""
    settings = ServingSettings(length_config=length_config, int8=int8, **flags)
    return QuestionAnswerer.from_settings(folder, settings, export_onnx=True)


def export_model(folder, path, length_config=None, max_seq_length=None, int8=False,
                 int8_settings: Int8Settings = Int8Settings(), menu_choice=None, settings: ServingSettings | None = None):
    """``--export_onnx``: write the folder's model at ``length_config`` to the ONNX file ``path``
    (float32, or int8 with ``int8``: dynamic, or static with ``settings.int8_calibration``).
    ``menu_choice``: the ``length_menu.Choice`` the configuration came from (its menu must describe
    these weights). Returns the file's metadata."""
    config = read_model_config(folder)
    settings = settings or ServingSettings(int8=int8, int8_settings=int8_settings, max_seq_length=max_seq_length)
    windows = settings.windows(folder)
    max_seq_length = window_settings(folder, max_seq_length)["max_seq_length"]
    check_window_flags(max_seq_length, 1, 1, 1, 1)
    length_config = checked_length_config(length_config, config["num_hidden_layers"], max_seq_length)
    files.check_output_file(path, "--export_onnx")
    model = load_model_checked(str(folder), "--model")
    if menu_choice is not None:
        length_menu.check_menu_weights(menu_choice.menu, weights_sha256(model))
    int8_settings, calibration = calibrated(dataclasses.replace(settings, int8=int8), load_tokenizer(folder), windows)

    def write():
        if not int8:
            return onnx_export.export_onnx(model, path, length_config)
        with files.temporary_beside(path, ".fp32.onnx") as fp32:  # the float32 export, quantised into path
            onnx_export.export_onnx(model, fp32, length_config)
            return onnx_export.quantize_int8(fp32, path, int8_settings, calibration)
    return files.writing(Path(path).absolute().parent, f"--export_onnx {path}", write)
