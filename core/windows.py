"""SQuAD feature windows on a ``tokenizers.Tokenizer``: ``[CLS] question [SEP] context-window [SEP]``.

The one windowing of the project (``utils_squad.convert_examples_to_features`` runs it on a
transformers tokenizer's ``backend_tokenizer``; ``quick_answer`` on a ``tokenizer.json`` loaded by
``tokenizers`` alone). It needs numpy and tokenizers only, so a one-question answer from an ONNX
file starts without torch or transformers.

Questions are cut to ``max_query_length`` tokens; contexts are split into windows that start every
``doc_stride`` context tokens (the reference windowing), each padded to ``max_seq_length``.
"""
from __future__ import annotations

import contextlib
import itertools

import numpy as np
from tqdm.auto import tqdm

from core.errors import UsageError


def normalizer_lowercases(normalizer) -> bool | None:
    """Whether a tokenizer.json ``normalizer`` lower-cases; None when it cannot be told."""
    if not isinstance(normalizer, dict):
        return None
    kind = normalizer.get("type")
    if kind == "BertNormalizer":
        return bool(normalizer.get("lowercase"))
    if kind == "Lowercase":
        return True
    if kind == "Sequence":
        found = [normalizer_lowercases(n) for n in normalizer.get("normalizers", [])]
        return True if any(found) else (False if found else None)
    return False


def window_overlap(max_seq_length: int, doc_stride: int, query_length: int,
                   num_special_tokens: int = 3) -> int:
    """The tokenizer's ``stride`` (an OVERLAP in tokens) that makes windows start every
    ``doc_stride`` context tokens, as the reference's windowing does.

    Each window holds ``max_seq_length - query_length - num_special_tokens`` context tokens;
    consecutive windows overlap by that minus ``doc_stride`` (never below 0)."""
    window = max_seq_length - query_length - num_special_tokens
    if window <= 0:
        raise UsageError(f"max_seq_length={max_seq_length} leaves no room for the context after a "
                         f"{query_length}-token question; lower max_query_length")
    return max(window - doc_stride, 0)


@contextlib.contextmanager
def truncating(backend, max_length: int | None = None, stride: int = 0, pad_id: int | None = None):
    """The backend with ``only_second`` truncation at ``max_length`` (None: none), padded to
    ``max_length`` with ``pad_id`` when given; its own truncation and padding come back
    afterwards (a transformers tokenizer shares its backend)."""
    saved_truncation, saved_padding = backend.truncation, backend.padding
    try:
        backend.no_padding()
        if max_length is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(max_length, stride=stride, strategy="only_second", direction="right")
        if pad_id is not None:
            backend.enable_padding(length=max_length, pad_id=pad_id, pad_type_id=0,
                                   pad_token=backend.id_to_token(pad_id) or "[PAD]")
        yield backend
    finally:
        if saved_truncation is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(**saved_truncation)
        if saved_padding is None:
            backend.no_padding()
        else:
            backend.enable_padding(**saved_padding)


def check_overflow_covers_context(backend) -> None:
    """Raise when the tokenizer's overflowing windows do not cover the whole second sequence.

    tokenizers 0.23.1 and 0.23.2 stop tokenising a truncated input after ``max_length`` tokens
    (a "truncation early exit", upstream issue huggingface/tokenizers#2091, fixed in 0.23.3), so
    overflowing windows silently end at the context's ``max_length``-th token and the rest of a
    long context (with any answer in it) is lost. A tiny probe: a 24-word context in 8-token
    windows without overlap must give all its tokens back."""
    context = " ".join(["a"] * 24)
    with truncating(backend) as tok:
        n_tokens = len(tok.encode(context, add_special_tokens=False).ids)
    with truncating(backend, 8) as tok:
        encoding = tok.encode("a", context)
    got = sum(window.sequence_ids.count(1) for window in [encoding, *encoding.overflowing])
    if got != n_tokens:
        import tokenizers

        raise RuntimeError(
            f"tokenizers {tokenizers.__version__} drops context tokens from overflowing windows "
            f"({got} of {n_tokens} came back): long contexts would be cut silently. tokenizers "
            "0.23.1 and 0.23.2 have this bug; install tokenizers>=0.23.3 (pip install -r requirements.txt)")


def truncate_questions(backend, questions: list[str], max_query_length: int):
    """Questions cut after their ``max_query_length``-th token, and their token counts.

    Cutting the text at the end of the last kept token re-tokenises to the same tokens
    (WordPiece's greedy longest match keeps the first piece of a cut word)."""
    with truncating(backend) as tok:
        encodings = tok.encode_batch(questions, add_special_tokens=False)
    texts, lengths = [], []
    for question, encoding in zip(questions, encodings):
        offsets = encoding.offsets
        if len(offsets) > max_query_length:
            question = question[:offsets[max_query_length - 1][1]] if max_query_length > 0 else ""
        texts.append(question)
        lengths.append(min(len(offsets), max_query_length))
    return texts, np.asarray(lengths, dtype=np.int64)


def encode_group(backend, questions, contexts, query_length: int, max_seq_length: int, doc_stride: int,
                 pad_id: int) -> dict[str, np.ndarray]:
    """One batched call for questions of the same (truncated) token length: every window of every
    pair, padded to ``max_seq_length`` with ``pad_id`` (token type 0, attention 0). Arrays
    ``input_ids``, ``attention_mask``, ``token_type_ids``, ``special_tokens_mask``, ``offsets``
    [N, L, 2] and ``sample`` (the pair each window comes from)."""
    overlap = window_overlap(max_seq_length, doc_stride, query_length, backend.num_special_tokens_to_add(True))
    with truncating(backend, max_seq_length, overlap, pad_id) as tok:
        encodings = tok.encode_batch(list(zip(questions, contexts)))
    windows = [w for encoding in encodings for w in (encoding, *encoding.overflowing)]
    sample = [i for i, encoding in enumerate(encodings) for _ in range(1 + len(encoding.overflowing))]
    n = len(windows)

    def field(name: str) -> np.ndarray:  # every window is max_seq_length long: one flat read
        values = itertools.chain.from_iterable(getattr(w, name) for w in windows)
        return np.fromiter(values, dtype=np.int64, count=n * max_seq_length).reshape(n, max_seq_length)

    offsets = itertools.chain.from_iterable(itertools.chain.from_iterable(w.offsets for w in windows))
    return {"input_ids": field("ids"), "attention_mask": field("attention_mask"),
            "token_type_ids": field("type_ids"), "special_tokens_mask": field("special_tokens_mask"),
            "offsets": np.fromiter(offsets, dtype=np.int64, count=2 * n * max_seq_length).reshape(n, max_seq_length, 2),
            "sample": np.asarray(sample, dtype=np.int64)}


def encode_windows(backend, questions: list[str], contexts: list[str], max_seq_length: int, doc_stride: int,
                   max_query_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Every window of every (question, context) pair, in pair order and windows in context order:
    ``input_ids``, ``attention_mask``, ``token_type_ids`` [N, max_seq_length]; ``starts``/``ends``
    the character offsets of context tokens (-1 elsewhere); ``example_index`` [N] the pair."""
    if doc_stride <= 0:
        raise UsageError(f"doc_stride must be positive, got {doc_stride}")
    check_overflow_covers_context(backend)
    questions, query_lengths = truncate_questions(backend, questions, max_query_length)
    parts = {"input_ids": [], "attention_mask": [], "token_type_ids": [], "starts": [],
             "ends": [], "example_index": []}
    # The overlap depends on the question length, so tokenise each length in its own batch.
    for query_length in tqdm(np.unique(query_lengths), desc="features", leave=False,
                             disable=len(questions) < 2000):
        group = np.flatnonzero(query_lengths == query_length)
        enc = encode_group(backend, [questions[i] for i in group], [contexts[i] for i in group],
                           int(query_length), max_seq_length, doc_stride, pad_id)
        # Context tokens: the non-special tokens after the question's ``query_length`` ones.
        content = (enc["special_tokens_mask"] == 0) & (enc["attention_mask"] == 1)
        is_context = content & (np.cumsum(content, axis=1) > query_length)
        parts["starts"].append(np.where(is_context, enc["offsets"][..., 0], -1))
        parts["ends"].append(np.where(is_context, enc["offsets"][..., 1], -1))
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            parts[name].append(enc[name])
        parts["example_index"].append(group[enc["sample"]])
    merged = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(merged["example_index"], kind="stable")  # pair order, windows in order
    return {k: v[order] for k, v in merged.items()}
