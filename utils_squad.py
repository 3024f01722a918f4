"""SQuAD v1.1 data pipeline: reading, windowed features, a safe feature cache, and
post-processing of start/end logits into answer texts.

transformers 5 removed ``squad_convert_examples_to_features``, the SQuAD processors and
``squad_metrics``; this module replaces them on top of a fast tokenizer's offset mappings while
keeping the reference windowing (``doc_stride`` is the step between window starts), the
reference training labels (CLS when the answer is not fully inside a window) and the reference
n-best search (top-k starts x top-k ends, max-context rule, length limit, de-duplicated texts).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 3  # 2: the tensors' sha256 is stored and checked; 3: caches built by
# tokenizers 0.23.1/0.23.2 may lack the tail of long contexts (check_overflow_covers_context)
CLS_INDEX = 0  # the reference labels an answer outside the window with the [CLS] position


from core.hashing import tensors_sha256
from core.errors import DiskFullError, SquadFormatError, UsageError  # noqa: E402,F401  (re-exported)
# Re-exported: their homes are files.py and postprocess.py; callers of utils_squad keep working.
from core.files import (  # noqa: E402,F401
    atomic_path, atomic_write_json, atomic_write_text, free_bytes, is_disk_full, new_file_mode)
from core.postprocess import postprocess_predictions, write_predictions  # noqa: E402,F401
from core import windows  # noqa: E402
from core.windows import check_overflow_covers_context, window_overlap  # noqa: E402,F401  (re-exported)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

@dataclass
class SquadExample:
    """One question. ``answers``: every gold answer for evaluation, the first one for training."""

    qas_id: str
    title: str
    question: str
    context: str
    answers: list[dict]


def _read_squad_json(path) -> tuple[bytes, Any]:
    """The raw bytes (for the cache key) and the parsed JSON of a SQuAD file."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise SquadFormatError(f"{path}: file does not exist") from None
    except OSError as err:
        raise SquadFormatError(f"{path}: cannot read file: {err}") from None
    try:
        return raw, json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SquadFormatError(f"{path}: not a JSON file: {err}") from None


def _field(obj: Any, key: str, kind: type | tuple, path, place: str) -> Any:
    """``obj[key]``, checked to exist and to be of ``kind`` (bools are not ints)."""
    if not isinstance(obj, dict):
        raise SquadFormatError(f"{path}: {place}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise SquadFormatError(f"{path}: {place}: missing '{key}'")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise SquadFormatError(f"{path}: {place}.{key}: expected {names}, "
                               f"got {type(value).__name__}")
    return value


def _reject_squad2(qa: dict, answers: list, path, place: str, require_answers: bool = True) -> None:
    if qa.get("is_impossible") or "plausible_answers" in qa or (require_answers and not answers):
        raise SquadFormatError(f"{path}: {place}: unanswerable question (SQuAD 2.0 data); "
                               "only SQuAD 1.1 is supported")


def _is_reference_whitespace(ch: str) -> bool:
    return ch in " \t\r\n" or ord(ch) == 0x202F


def _reference_words(context: str) -> tuple[list[str], list[int]]:
    """The reference's white-space words of a context and each character's word index
    (a white-space character belongs to the word before it)."""
    words, char_to_word = [], []
    previous_is_space = True
    for ch in context:
        if _is_reference_whitespace(ch):
            previous_is_space = True
        else:
            if previous_is_space:
                words.append(ch)
            else:
                words[-1] += ch
            previous_is_space = False
        char_to_word.append(len(words) - 1)
    return words, char_to_word


def _answer_matches_context(words: list[str], char_to_word: list[int], text: str, start: int) -> bool:
    """The reference check for training answers: the words covering the answer's characters,
    joined by single spaces, must contain the white-space-normalised answer text."""
    if not 0 <= start < len(char_to_word) or not text.strip():
        return False
    first = max(char_to_word[start], 0)
    last = char_to_word[min(start + len(text) - 1, len(char_to_word) - 1)]
    return " ".join(words[first:last + 1]).find(" ".join(text.split())) != -1


def _parse_answers(answers: list, path, place: str) -> list[dict]:
    """[{"text", "answer_start"}] with both fields checked."""
    parsed = []
    for i, answer in enumerate(answers):
        where = f"{place}.answers[{i}]"
        parsed.append({"text": _field(answer, "text", str, path, where),
                       "answer_start": _field(answer, "answer_start", int, path, where)})
    return parsed


def _parse_examples(data: Any, path, is_training: bool, require_answers: bool = True) -> list[SquadExample]:
    """Validate a parsed SQuAD v1.1 JSON and turn it into examples (file order)."""
    articles = _field(data, "data", list, path, "top level")
    examples, misaligned, seen_ids = [], [], set()
    for a, article in enumerate(articles):
        place_a = f"data[{a}]"
        paragraphs = _field(article, "paragraphs", list, path, place_a)
        title = _field(article, "title", str, path, place_a) if "title" in article else ""
        for p, paragraph in enumerate(paragraphs):
            place_p = f"{place_a}.paragraphs[{p}]"
            context = _field(paragraph, "context", str, path, place_p)
            words = None  # the reference's word split, built once per paragraph when needed
            for q, qa in enumerate(_field(paragraph, "qas", list, path, place_p)):
                place = f"{place_p}.qas[{q}]"
                qas_id = _field(qa, "id", str, path, place)
                question = _field(qa, "question", str, path, place)
                if require_answers or "answers" in qa:
                    answers = _field(qa, "answers", list, path, place)
                else:
                    answers = []  # questions to answer (inference): no gold needed
                _reject_squad2(qa, answers, path, place, require_answers)
                if qas_id in seen_ids:
                    raise SquadFormatError(f"{path}: {place}.id: duplicate question id {qas_id!r}")
                seen_ids.add(qas_id)
                gold = _parse_answers(answers, path, place)
                if is_training:
                    # The reference trains on the first answer only and skips misaligned ones.
                    gold = gold[:1]
                    if words is None:
                        words = _reference_words(context)
                    if not _answer_matches_context(*words, gold[0]["text"], gold[0]["answer_start"]):
                        misaligned.append(qas_id)
                        continue
                examples.append(SquadExample(qas_id, title, question, context, gold))
    if misaligned:
        logger.warning("%s: skipped %d training question(s) whose answer text does not match "
                       "the context at answer_start: %s", path, len(misaligned), ", ".join(misaligned))
    return examples


def read_squad_examples(path, is_training: bool, require_answers: bool = True) -> list[SquadExample]:
    """Read a SQuAD v1.1 JSON file into examples, one per question, in file order.

    Raises SquadFormatError (naming the file and the place) for a missing file, a file that is
    not JSON or not SQuAD, and for SQuAD 2.0 data. For training, questions whose first answer
    does not match the context are skipped with one warning listing their ids.
    ``require_answers=False`` (inference on new questions) accepts questions without "answers"
    or with an empty list; training always needs them.
    """
    if is_training and not require_answers:
        raise ValueError("training needs gold answers (require_answers=True)")
    _, data = _read_squad_json(path)
    return _parse_examples(data, path, is_training, require_answers)


# --------------------------------------------------------------------------------------------
# Tokenizer checks
# --------------------------------------------------------------------------------------------

def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return {}
    try:
        return json.loads(backend.to_str())
    except Exception:  # a backend without a JSON form: fall back to the Python attributes
        return {}


def tokenizer_lower_case(tokenizer) -> bool | None:
    """Whether ``tokenizer`` lower-cases its input (from its backend normaliser, else from
    ``do_lower_case``); None when it cannot be told."""
    found = windows.normalizer_lowercases(_backend_json(tokenizer).get("normalizer"))
    if found is not None:
        return found
    flag = getattr(tokenizer, "do_lower_case", None)
    if flag is None:
        flag = getattr(tokenizer, "init_kwargs", {}).get("do_lower_case")
    return None if flag is None else bool(flag)


def check_lower_case(tokenizer, do_lower_case: bool) -> None:
    """Warn when ``--do_lower_case`` disagrees with the tokenizer, which decides lower-casing."""
    actual = tokenizer_lower_case(tokenizer)
    if actual is None:
        logger.warning("cannot tell whether the tokenizer lower-cases; --do_lower_case=%s is not "
                       "applied (the tokenizer decides)", do_lower_case)
    elif actual != bool(do_lower_case):
        logger.warning("--do_lower_case=%s but the tokenizer %s lower-case; the tokenizer's "
                       "setting is used", do_lower_case, "does" if actual else "does not")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides tokenisation: class, lower-casing, vocabulary (in id order),
    special tokens and the backend normaliser / pre-tokeniser."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    backend = _backend_json(tokenizer)
    summary = {
        "class": type(tokenizer).__name__,
        "lower_case": tokenizer_lower_case(tokenizer),
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "normalizer": backend.get("normalizer"),
        "pre_tokenizer": backend.get("pre_tokenizer"),
    }
    digest = hashlib.sha256(json.dumps(summary, sort_keys=True).encode("utf-8"))
    digest.update("\n".join(f"{token}\t{index}" for token, index in vocab).encode("utf-8"))
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------

@dataclass
class SquadFeatures:
    """Tokenised windows (one row per window) aligned with a list of examples.

    ``offset_mapping`` (evaluation only): per feature, the (start_char, end_char) of each
    context token in the example's context, and None for every other token.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    start_positions: torch.Tensor | None
    end_positions: torch.Tensor | None
    example_index: torch.Tensor
    offset_mapping: list | None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def train_dataset(self) -> TensorDataset:
        """(input_ids, attention_mask, token_type_ids, start_positions, end_positions)."""
        if self.start_positions is None or self.end_positions is None:
            raise ValueError("these features were built for evaluation: no answer positions")
        return TensorDataset(self.input_ids, self.attention_mask, self.token_type_ids,
                             self.start_positions, self.end_positions)

    def eval_dataset(self) -> TensorDataset:
        """(input_ids, attention_mask, token_type_ids, feature_index)."""
        return TensorDataset(self.input_ids, self.attention_mask, self.token_type_ids,
                             torch.arange(len(self), dtype=torch.long))

    def context_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """(start_chars, end_chars) as int arrays [N, L], -1 where the token is not context."""
        cached = self.__dict__.get("_context_offsets")
        if cached is None:
            if self.offset_mapping is None:
                raise ValueError("these features were built for training: no offset mapping")
            cached = _offset_lists_to_arrays(self.offset_mapping, self.input_ids.shape[1])
            self.__dict__["_context_offsets"] = cached
        return cached


def _offset_lists_to_arrays(offset_mapping: list, length: int) -> tuple[np.ndarray, np.ndarray]:
    starts = np.full((len(offset_mapping), length), -1, dtype=np.int64)
    ends = np.full_like(starts, -1)
    for row, offsets in enumerate(offset_mapping):
        for col, span in enumerate(offsets):
            if span is not None:
                starts[row, col], ends[row, col] = span
    return starts, ends


def _offset_arrays_to_lists(starts: np.ndarray, ends: np.ndarray) -> list:
    """Per feature, a list with (start, end) for context tokens and None elsewhere; the context
    tokens of a window are one contiguous run, which makes this a few slices per row."""
    length = starts.shape[1]
    is_context = starts >= 0
    first = np.where(is_context.any(1), is_context.argmax(1), 0)
    count = is_context.sum(1)
    rows = []
    for start_row, end_row, a, n in zip(starts.tolist(), ends.tolist(), first.tolist(), count.tolist()):
        b = a + n
        rows.append([None] * a + list(zip(start_row[a:b], end_row[a:b])) + [None] * (length - b))
    return rows


def _answer_char_spans(examples: list[SquadExample]) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) character span of each example's first answer, without edge white space."""
    starts, ends = [], []
    for example in examples:
        answer = example.answers[0]
        text = answer["text"]
        start = answer["answer_start"] + (len(text) - len(text.lstrip()))
        starts.append(start)
        ends.append(max(start + len(text.strip()), start + 1))
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def _answer_token_positions(starts, ends, answer_start, answer_end):
    """Start/end token of the answer in each window, or CLS when it is not fully inside.

    ``starts``/``ends`` [N, L]: char offsets of context tokens (-1 elsewhere); ``answer_*`` [N]:
    the answer's character span for each window's example."""
    is_context = starts >= 0
    big = np.iinfo(np.int64).max
    window_first_char = np.where(is_context, starts, big).min(1)
    window_last_char = np.where(is_context, ends, -1).max(1)
    inside = (window_first_char <= answer_start) & (window_last_char >= answer_end)
    # First context token ending after the answer start; last one starting before its end.
    start_hits = is_context & (ends > answer_start[:, None])
    end_hits = is_context & (starts < answer_end[:, None])
    start_tok = start_hits.argmax(1)
    end_tok = starts.shape[1] - 1 - end_hits[:, ::-1].argmax(1)
    start_tok = np.where(inside, start_tok, CLS_INDEX)
    end_tok = np.where(inside, end_tok, CLS_INDEX)
    return start_tok, end_tok


def convert_examples_to_features(examples: list[SquadExample], tokenizer, max_seq_length: int = 384,
                                 doc_stride: int = 128, max_query_length: int = 64,
                                 is_training: bool = False) -> SquadFeatures:
    """Tokenise examples into ``[CLS] question [SEP] context-window [SEP]`` features.

    Questions are cut to ``max_query_length`` tokens; contexts are split into windows that
    start every ``doc_stride`` context tokens (the reference windowing). Training features carry
    the answer's token positions (CLS when the answer is not fully inside the window);
    evaluation features carry the context tokens' character offsets.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError("a fast (Rust-backed) tokenizer is required for offset mappings")
    if doc_stride <= 0:
        raise UsageError(f"doc_stride must be positive, got {doc_stride}")
    if not examples:
        return _empty_features(max_seq_length, is_training)
    arrays = windows.encode_windows(tokenizer.backend_tokenizer, [e.question for e in examples],
                                    [e.context for e in examples], max_seq_length, doc_stride,
                                    max_query_length, tokenizer.pad_token_id)
    return _features_from_arrays(arrays, examples, is_training)


def _empty_features(max_seq_length: int, is_training: bool) -> SquadFeatures:
    empty = torch.zeros((0, max_seq_length), dtype=torch.long)
    positions = (lambda: torch.zeros(0, dtype=torch.long)) if is_training else (lambda: None)
    features = SquadFeatures(empty, empty.clone(), empty.clone(), positions(), positions(),
                             torch.zeros(0, dtype=torch.long), None if is_training else [])
    if not is_training:
        no_offsets = np.zeros((0, max_seq_length), dtype=np.int64)
        features.__dict__["_context_offsets"] = (no_offsets, no_offsets.copy())
    return features


def _features_from_arrays(arrays: dict, examples: list[SquadExample], is_training: bool) -> SquadFeatures:
    example_index = arrays["example_index"]
    start_positions = end_positions = offset_mapping = None
    if is_training:
        answer_start, answer_end = _answer_char_spans(examples)
        start_tok, end_tok = _answer_token_positions(arrays["starts"], arrays["ends"],
                                                     answer_start[example_index],
                                                     answer_end[example_index])
        start_positions = torch.as_tensor(start_tok, dtype=torch.long)
        end_positions = torch.as_tensor(end_tok, dtype=torch.long)
    else:
        offset_mapping = _offset_arrays_to_lists(arrays["starts"], arrays["ends"])
    features = SquadFeatures(
        input_ids=torch.as_tensor(arrays["input_ids"], dtype=torch.long),
        attention_mask=torch.as_tensor(arrays["attention_mask"], dtype=torch.long),
        token_type_ids=torch.as_tensor(arrays["token_type_ids"], dtype=torch.long),
        start_positions=start_positions,
        end_positions=end_positions,
        example_index=torch.as_tensor(example_index, dtype=torch.long),
        offset_mapping=offset_mapping,
    )
    if not is_training:
        features.__dict__["_context_offsets"] = (arrays["starts"].astype(np.int64),
                                                 arrays["ends"].astype(np.int64))
    return features


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------

def _cache_key(raw: bytes, tokenizer, max_seq_length, doc_stride, max_query_length,
               is_training, max_examples) -> dict:
    return {
        "format": CACHE_FORMAT_VERSION,
        "data_sha256": hashlib.sha256(raw).hexdigest(),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_seq_length": max_seq_length,
        "doc_stride": doc_stride,
        "max_query_length": max_query_length,
        "split": "train" if is_training else "eval",
        "max_examples": max_examples,
    }


def _cache_path(cache_dir, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()
    return Path(cache_dir) / f"cached_squad_{key['split']}_{digest[:24]}.safetensors"


def _save_cache(path: Path, key: dict, features: SquadFeatures) -> None:
    from safetensors.torch import save_file

    tensors = {"input_ids": features.input_ids, "attention_mask": features.attention_mask,
               "token_type_ids": features.token_type_ids, "example_index": features.example_index}
    if features.start_positions is not None:
        tensors["start_positions"] = features.start_positions
        tensors["end_positions"] = features.end_positions
    if features.offset_mapping is not None:
        starts, ends = features.context_offsets()
        tensors["offset_starts"] = torch.as_tensor(starts, dtype=torch.int32)
        tensors["offset_ends"] = torch.as_tensor(ends, dtype=torch.int32)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"key": json.dumps(key, sort_keys=True),
                                               "tensors_sha256": tensors_sha256(tensors)})


def _load_cache(path: Path, key: dict, num_examples: int, is_training: bool) -> SquadFeatures:
    """Features from a cache file; ValueError when it is stale or inconsistent."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if json.loads(metadata.get("key", "null")) != key:
            raise ValueError("cache key does not match")
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    # The header check cannot see flipped bytes inside the tensors; the checksum can.
    if metadata.get("tensors_sha256") != tensors_sha256(tensors):
        raise ValueError("the tensors' checksum does not match")
    n, length = tensors["input_ids"].shape
    names = ["attention_mask", "token_type_ids"] + (
        ["start_positions", "end_positions"] if is_training else ["offset_starts", "offset_ends"])
    for name in names:
        expected = (n,) if name.endswith("positions") else (n, length)
        if name not in tensors or tuple(tensors[name].shape) != expected:
            raise ValueError(f"tensor {name!r} is missing or has the wrong shape")
    example_index = tensors["example_index"].long()
    if tuple(example_index.shape) != (n,) or (n and (example_index.min() < 0
                                                     or example_index.max() >= num_examples)):
        raise ValueError("example_index does not fit the examples")
    features = SquadFeatures(
        input_ids=tensors["input_ids"].long(), attention_mask=tensors["attention_mask"].long(),
        token_type_ids=tensors["token_type_ids"].long(),
        start_positions=tensors["start_positions"].long() if is_training else None,
        end_positions=tensors["end_positions"].long() if is_training else None,
        example_index=example_index, offset_mapping=None)
    if not is_training:
        starts = tensors["offset_starts"].numpy().astype(np.int64)
        ends = tensors["offset_ends"].numpy().astype(np.int64)
        features.offset_mapping = _offset_arrays_to_lists(starts, ends)
        features.__dict__["_context_offsets"] = (starts, ends)
    return features


def load_or_build_features(data_file, tokenizer, *, max_seq_length: int = 384, doc_stride: int = 128,
                           max_query_length: int = 64, is_training: bool, cache_dir=None,
                           overwrite_cache: bool = False, max_examples: int | None = None):
    """Read ``data_file`` and featurise it, through a cache when ``cache_dir`` is given.

    Returns (examples, features). ``max_examples`` keeps the first N questions. The cache is
    keyed by the data's sha256, the tokenizer fingerprint, the lengths, the split and
    ``max_examples``; a corrupt or stale cache is rebuilt with a warning, and a cache that
    cannot be written only warns.
    """
    raw, data = _read_squad_json(data_file)
    examples = _parse_examples(data, data_file, is_training)
    if max_examples is not None:
        if max_examples < 0:
            raise UsageError(f"max_examples must be >= 0, got {max_examples}")
        examples = examples[:max_examples]
    build = lambda: convert_examples_to_features(  # noqa: E731
        examples, tokenizer, max_seq_length, doc_stride, max_query_length, is_training)
    if cache_dir is None:
        return examples, build()

    key = _cache_key(raw, tokenizer, max_seq_length, doc_stride, max_query_length,
                     is_training, max_examples)
    path = _cache_path(cache_dir, key)
    if path.exists() and not overwrite_cache:
        try:
            features = _load_cache(path, key, len(examples), is_training)
            logger.info("loaded features from cache %s", path)
            return examples, features
        except Exception as err:  # any unreadable cache is rebuilt, never trusted
            logger.warning("feature cache %s is corrupt or stale (%s); rebuilding it", path, err)
    features = build()
    try:
        _save_cache(path, key, features)
        logger.info("saved features to cache %s", path)
    except OSError as err:
        logger.warning("could not write the feature cache %s: %s", path, err)
    return examples, features
