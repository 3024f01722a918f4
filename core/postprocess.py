"""Post-processing: start/end logits of every feature -> the best answer text per question
(the reference's n-best rules), and the official prediction files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from core.batching import to_numpy
from core.files import atomic_write_json

# --------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------

def _max_context_mask(starts: np.ndarray, example_index: np.ndarray) -> np.ndarray:
    """[N, L] True where the window is the token's "max context" window (reference rule:
    score = min(left, right context) + 0.01 * window length; the first window wins ties)."""
    is_context = starts >= 0
    result = is_context.copy()
    # Only tokens of examples with several windows can have a better window elsewhere.
    if example_index.size == 0:
        return result
    counts = np.bincount(example_index)
    multi = np.flatnonzero(counts[example_index] > 1)
    if multi.size == 0:
        return result
    ctx = is_context[multi]
    position = np.cumsum(ctx, axis=1) - 1
    length = ctx.sum(1, keepdims=True)
    score = np.minimum(position, length - 1 - position) + 0.01 * length
    rows, cols = np.nonzero(ctx)
    feature = multi[rows]
    token_key = starts[feature, cols]  # a context token is identified by its start character
    order = np.lexsort((feature, -score[rows, cols], token_key, example_index[feature]))
    key_ex, key_tok = example_index[feature][order], token_key[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = (key_ex[1:] != key_ex[:-1]) | (key_tok[1:] != key_tok[:-1])
    result[multi] = False
    result[feature[order[first]], cols[order[first]]] = True
    return result


def _softmax(scores: list[float]) -> list[float]:
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def postprocess_predictions(examples: list, features, start_logits,
                            end_logits, n_best_size: int = 20, max_answer_length: int = 30,
                            with_offsets: bool = False):
    """Answer text and n-best list for every example from per-feature start/end logits [N, L].

    As the reference: the top ``n_best_size`` start and end positions of each window are
    paired; a pair is kept when both are context tokens, the start's window is its max-context
    window, start <= end and the span is at most ``max_answer_length`` tokens. Pairs of all
    windows of an example are ranked by start + end logit; texts are cut from the original
    context by character offsets and de-duplicated. ``with_offsets``: each n-best entry also
    has the answer's character ``start`` and ``end`` in the context (None for the placeholder).
    """
    start_logits, end_logits = to_numpy(start_logits, np.float64), to_numpy(end_logits, np.float64)
    starts, ends = features.context_offsets()
    if start_logits.shape != starts.shape or end_logits.shape != starts.shape:
        raise ValueError(f"logits must have the features' shape {starts.shape}, got "
                         f"{start_logits.shape} and {end_logits.shape}")
    example_index = np.asarray(features.example_index)  # a torch tensor or an array
    k = min(n_best_size, starts.shape[1])
    top_start = np.argsort(-start_logits, axis=1, kind="stable")[:, :k]
    top_end = np.argsort(-end_logits, axis=1, kind="stable")[:, :k]

    is_context = starts >= 0
    can_start = np.take_along_axis(is_context & _max_context_mask(starts, example_index),
                                   top_start, axis=1)
    can_end = np.take_along_axis(is_context, top_end, axis=1)
    span = top_end[:, None, :] - top_start[:, :, None]
    valid = can_start[:, :, None] & can_end[:, None, :] & (span >= 0) & (span < max_answer_length)
    # Row-major nonzero = the reference's loop order (feature, start rank, end rank).
    feat, i, j = np.nonzero(valid)
    s_tok, e_tok = top_start[feat, i], top_end[feat, j]
    s_logit, e_logit = start_logits[feat, s_tok], end_logits[feat, e_tok]
    cand_example = example_index[feat]
    order = np.lexsort((np.arange(feat.size), -(s_logit + e_logit), cand_example))
    cand_example = cand_example[order]
    bounds = np.searchsorted(cand_example, np.arange(len(examples) + 1))
    char_start = starts[feat, s_tok][order].tolist()
    char_end = ends[feat, e_tok][order].tolist()
    s_logit, e_logit = s_logit[order].tolist(), e_logit[order].tolist()

    predictions, all_nbest = {}, {}
    for ex_id, example in enumerate(tqdm(examples, desc="post-processing", leave=False,
                                         disable=len(examples) < 2000)):
        nbest, seen = [], set()
        for c in range(bounds[ex_id], bounds[ex_id + 1]):
            text = example.context[char_start[c]:char_end[c]]
            if text in seen:
                continue
            seen.add(text)
            nbest.append({"text": text, "start_logit": s_logit[c], "end_logit": e_logit[c],
                          "start": char_start[c], "end": char_end[c]})
            if len(nbest) >= n_best_size:
                break
        if not nbest:  # the reference's placeholder when no span is valid
            nbest.append({"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "start": None, "end": None})
        probs = _softmax([n["start_logit"] + n["end_logit"] for n in nbest])
        all_nbest[example.qas_id] = [
            {"text": n["text"], "probability": p, "start_logit": n["start_logit"],
             "end_logit": n["end_logit"],
             **({"start": n["start"], "end": n["end"]} if with_offsets else {})}
            for n, p in zip(nbest, probs)]
        predictions[example.qas_id] = nbest[0]["text"]
    return predictions, all_nbest


def best_answer(nbest: list[dict]) -> dict:
    """``{"answer", "score", "start", "end"}`` of an n-best list (``with_offsets``): its first
    entry; an empty answer at 0 when no span was valid (the reference's "empty" placeholder)."""
    best = nbest[0]
    if best["start"] is None:
        return {"answer": "", "score": 0.0, "start": 0, "end": 0}
    return {"answer": best["text"], "score": best["probability"], "start": best["start"], "end": best["end"]}


def write_predictions(predictions: dict, nbest: dict, output_dir, prefix: str = ""):
    """Write ``{prefix}predictions.json`` ({id: text}) and ``{prefix}nbest_predictions.json``."""
    output_dir = Path(output_dir)
    pred_path = output_dir / f"{prefix}predictions.json"
    nbest_path = output_dir / f"{prefix}nbest_predictions.json"
    atomic_write_json(pred_path, predictions)
    atomic_write_json(nbest_path, nbest)
    return pred_path, nbest_path
