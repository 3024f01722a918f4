"""The features static int8 is calibrated on: a seeded sample of training questions, windowed as the
model serves them, in sorted batches padded to their longest (the widths the served graph sees).

Their sha256 (the token ids, masks and types, with their shapes) goes into the int8 settings' key,
so a static file records exactly what it was calibrated on: another file, count, sample, window or
tokenizer is another file.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from core import batching
from core.errors import UsageError

CALIBRATION_BATCH = 16  # features per calibration batch
CALIBRATION_SEED = 0


@dataclass(frozen=True, eq=False)
class Calibration:
    batches: tuple            # (input_ids, attention_mask, token_type_ids) int64 numpy, per batch
    sha256: str
    count: int                # features
    source: str               # the file they came from


def features_sha256(batches) -> str:
    digest = hashlib.sha256()
    for batch in batches:
        for array in batch:
            digest.update(f"{array.dtype}|{array.shape}|".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def calibration_features(path, tokenizer, count: int, max_seq_length: int, doc_stride: int,
                         max_query_length: int, seed: int = CALIBRATION_SEED, same_shape: bool = False) -> Calibration:
    """``count`` features of questions drawn at random (``seed``) from the SQuAD file ``path``
    (``--int8_calibration``: training questions, never the questions reported on). ``same_shape``:
    one feature per batch, padded to ``max_seq_length`` (ONNX Runtime's histogram calibrators,
    entropy and percentile, stack every batch's activations into one array)."""
    import utils_squad

    examples = utils_squad.read_squad_examples(path, is_training=False, require_answers=False)
    if not examples:
        raise UsageError(f"--int8_calibration {path}: no questions")
    order = np.random.default_rng(seed).permutation(len(examples))
    chunks, have = [], 0
    for first in range(0, len(order), 64):  # window questions until there are enough features
        chosen = [examples[i] for i in order[first:first + 64]]
        features = utils_squad.convert_examples_to_features(chosen, tokenizer, max_seq_length, doc_stride,
                                                            max_query_length, is_training=False)
        chunks.append(tuple(np.asarray(t, dtype=np.int64) for t in
                            (features.input_ids, features.attention_mask, features.token_type_ids)))
        have += len(chunks[-1][0])
        if have >= count:
            break
    if have < count:
        raise UsageError(f"--int8_calibration {path}: {len(examples)} questions give {have} features, fewer than "
                         f"--int8_calibration_count {count}")
    inputs = tuple(np.concatenate([chunk[i] for chunk in chunks])[:count] for i in range(3))
    plan = batching.batch_plan(inputs[1].sum(axis=1), max_seq_length, 1 if same_shape else CALIBRATION_BATCH,
                               pad_to_max_length=same_shape)
    batches = tuple(batching.batch_inputs(inputs, index, width) for index, width in plan)
    return Calibration(batches, features_sha256(batches), count, str(path))
