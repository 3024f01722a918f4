"""Checks every side makes before anything loads: a model folder and its config, the windows
features are cut into (and their defaults), threads, devices, a length configuration. No torch
(a check that needs it imports it only then), so a command's errors come before its imports.
"""
from __future__ import annotations

import json
from pathlib import Path

import length_drop
from core.errors import UsageError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
WINDOW_DEFAULTS = {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}  # the reference's
WINDOW_FLAGS = ("max_seq_length", "doc_stride", "max_query_length", "n_best_size", "max_answer_length")


def check_model_folder(folder, flag: str = "--model") -> Path:
    """The folder, or a UsageError naming what is missing or broken: a folder holding a JSON
    config.json and a weights file whose header is whole."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{flag} {folder}: not a folder")
    config = folder / "config.json"
    if not config.is_file():
        raise UsageError(f"{flag} {folder}: no config.json there (not a Hugging Face model folder)")
    read_json_object(config, flag)
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise UsageError(f"{flag} {folder}: no weights file there (expected one of {', '.join(WEIGHT_FILES)})")
    if (folder / "model.safetensors").is_file():
        from safetensors import safe_open
        try:
            with safe_open(str(folder / "model.safetensors"), "np"):  # "np": opening without torch
                pass  # the header and the file's length are checked on opening
        except Exception as e:  # SafetensorError: truncated or not a safetensors file
            raise UsageError(f"{flag}: {folder / 'model.safetensors'} is truncated or corrupt ({e})") from None
    return folder


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")  # what transformers builds a fast tokenizer from


def read_json_object(path: Path, flag: str) -> dict:
    """A JSON file that must hold an object, or a UsageError naming it."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise UsageError(f"{flag}: {path} is not a valid JSON file ({e})") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{flag}: {path} must hold a JSON object, got {type(loaded).__name__}")
    return loaded


def check_tokenizer_folder(folder, flag: str = "--model", vocab_size: int | None = None) -> Path:
    """The folder, or a UsageError naming the file and what was expected, checked without
    transformers: a ``tokenizer.json`` or ``vocab.txt`` (without either, transformers builds a
    tokenizer of the special tokens alone, and every word becomes [UNK]); ``tokenizer_config.json``,
    ``special_tokens_map.json`` and ``tokenizer.json``, where present, JSON objects; and, given the
    model's ``vocab_size``, no token id past its embeddings. run_squad.py, inference.py and the API
    all check a folder here before its tokenizer loads."""
    folder = Path(folder)
    if not folder.is_dir() or not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise UsageError(f"{flag} {folder}: no tokenizer there (tokenizer.json or vocab.txt); give a folder "
                         "that has one (run_squad.py: --tokenizer_name)")
    loaded = {name: read_json_object(folder / name, flag)
              for name in ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
              if (folder / name).is_file()}
    if vocab_size is None:
        return folder
    source, ids = tokenizer_ids(folder, loaded, flag)
    if ids > vocab_size:
        raise UsageError(f"{flag}: {source} has {ids} tokens (ids 0 to {ids - 1}) but the model's embeddings "
                         f"hold {vocab_size} (config.json vocab_size {vocab_size}): the tokenizer is not this "
                         "model's; give the model's own tokenizer")
    return folder


def tokenizer_ids(folder: Path, loaded: dict, flag: str) -> tuple[Path, int]:
    """(the file that sets them, how many token ids the folder's tokenizer gives: its highest + 1)."""
    def added_ids(spec) -> list:
        return [int(t["id"]) for t in spec.get("added_tokens", []) if isinstance(t, dict) and "id" in t]

    try:
        if "tokenizer.json" in loaded:  # transformers reads it first
            spec = loaded["tokenizer.json"]
            vocab = (spec.get("model") or {}).get("vocab") or {}
            ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))  # Unigram: a list
            return folder / "tokenizer.json", max([int(i) for i in ids] + added_ids(spec), default=-1) + 1
        path = folder / "vocab.txt"
        lines = path.read_text(encoding="utf-8").splitlines()
        decoder = loaded.get("tokenizer_config.json", {}).get("added_tokens_decoder") or {}
        return path, max([len(lines) - 1] + [int(i) for i in decoder], default=-1) + 1
    except (AttributeError, TypeError, ValueError, KeyError, OSError) as e:
        raise UsageError(f"{flag} {folder}: unreadable tokenizer vocabulary ({e})") from None


DROP_CRITERIA = ("attention", "learned")  # modeling_bert's: how a layer ranks the tokens it may drop
SCORERS_FILE = "token_scorers.safetensors"  # the learned criterion's scorers, beside model.safetensors


def token_selection(config) -> dict:
    """How the model chooses the tokens a layer keeps, from its config (a ``BertConfig`` or
    config.json's dict): ``{"drop_criterion": "attention" | "learned", "select_before_attention":
    bool}``, plus ``"token_scorer_input": "attention_output"`` for scorers reading that. What a length menu, a search and an ONNX file record, so that one made with one
    criterion is never used with the other."""
    get = config.get if isinstance(config, dict) else lambda name: getattr(config, name, None)
    criterion = get("drop_criterion") or "attention"
    if criterion not in DROP_CRITERIA:
        raise ValueError(f"config.drop_criterion must be one of {DROP_CRITERIA}, got {criterion!r}")
    selection = {"drop_criterion": criterion,
                 "select_before_attention": criterion == "learned" and bool(get("select_before_attention"))}
    # Recorded only where it differs from the scorers' original input, so records written before
    # the option existed still compare equal.
    if criterion == "learned" and (get("token_scorer_input") or "layer_input") != "layer_input":
        selection["token_scorer_input"] = get("token_scorer_input")
    return selection


def weight_files(folder, config: dict) -> list[Path]:
    """The safetensors files whose tensors together are the folder's model's state dict:
    model.safetensors, and under the learned criterion the token scorers beside it."""
    folder = Path(folder)
    learned = token_selection(config)["drop_criterion"] == "learned"
    return [folder / "model.safetensors"] + ([folder / SCORERS_FILE] if learned else [])


def describe_selection(selection: dict) -> str:
    """``token_selection``'s dict in words, for error messages."""
    words = f"the {selection['drop_criterion']} drop criterion"
    if selection.get("token_scorer_input", "layer_input") != "layer_input":
        words += f" (scorers reading the {selection['token_scorer_input'].replace('_', ' ')})"
    return words + " (selecting before attention)" if selection.get("select_before_attention") else words


def read_model_config(folder, flag: str = "--model") -> dict:
    """The folder's config.json (checked to name the layer count), or a UsageError."""
    path = check_model_folder(folder, flag)
    try:
        config = json.loads((path / "config.json").read_text())
        int(config["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{flag} {folder}: unreadable config.json ({err})") from None
    return config


def window_settings(folder, max_seq_length=None, doc_stride=None, max_query_length=None) -> dict:
    """The windows features are cut into: each setting as given, else as the model was trained
    (``training_args.json``, which every checkpoint of run_squad.py carries), else the reference's
    default (``WINDOW_DEFAULTS``). A model answers best on the windows it was trained and searched on."""
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


def check_window_flags(max_seq_length: int, doc_stride: int, max_query_length: int, n_best_size: int,
                       max_answer_length: int, max_position_embeddings: int | None = None) -> None:
    """Each at least 1 (0 would drop the question or every answer), and windows no longer than
    the model's position table (checked when it is known)."""
    values = (max_seq_length, doc_stride, max_query_length, n_best_size, max_answer_length)
    for flag, value in zip(WINDOW_FLAGS, values):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"--{flag} must be an integer of at least 1, got {value!r}")
    if max_position_embeddings is not None and max_seq_length > max_position_embeddings:
        raise UsageError(f"--max_seq_length {max_seq_length} exceeds the model's "
                         f"max_position_embeddings ({max_position_embeddings})")


def checked_length_config(value, num_hidden_layers: int, max_seq_length: int):
    """None, or the configuration validated by ``length_drop.parse_length_config``."""
    if value is None:
        return None
    try:
        return length_drop.parse_length_config(value, num_hidden_layers, max_seq_length)
    except ValueError as err:
        raise UsageError(f"--length_config: {err}") from None


def check_threads(threads) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--threads must be an integer of at least 1, got {threads!r}")


def check_device(device) -> None:
    """A device torch knows and this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    if device == "cpu":  # always there; answered without importing torch
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"--device {device}: not a device (expected cpu, cuda or cuda:N)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: this torch has no CUDA device (use --device cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here (use --device cpu)")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {device}: not supported (expected cpu, cuda or cuda:N)")
