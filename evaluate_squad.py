"""The official SQuAD v1.1 metric (exact match and token F1), as in the official ``evaluate-v1.1.py``.

Scores are bit-exact with the official script: the same answer normalisation (lower-case, drop
``string.punctuation``, drop the articles a/an/the, collapse white space), the same token-level
F1, the maximum over the gold answers, every question of the data set counted (a missing
prediction scores 0 and is reported on stderr), and the same summation order.

Command line, as the official script::

    python evaluate_squad.py dev-v1.1.json predictions.json
    {"exact_match": 81.2, "f1": 88.5}
"""
from __future__ import annotations

import argparse
import json
import re
import string
import sys
from collections import Counter
from typing import Callable, Iterable, Mapping

EXPECTED_VERSION = "1.1"

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra white space (official order)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 between the normalised prediction and one normalised gold answer."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """True when the normalised prediction equals the normalised gold answer."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn: Callable[[str, str], float], prediction: str,
                                  ground_truths: Iterable[str]) -> float:
    """The best score of ``prediction`` against any of the gold answers."""
    return max(metric_fn(prediction, ground_truth) for ground_truth in ground_truths)


def _score(questions: Iterable[tuple[str, list[str]]], predictions: Mapping[str, str]) -> dict:
    """EM and F1 (in %) summed in the official order over (question id, gold texts) pairs."""
    f1 = exact_match = total = 0
    for qid, ground_truths in questions:
        total += 1
        if qid not in predictions:
            print("Unanswered question " + qid + " will receive score 0.", file=sys.stderr)
            continue
        prediction = predictions[qid]
        exact_match += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
        f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)
    if total == 0:
        raise ValueError("no questions to evaluate")
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def per_question_f1(gold: dict, predictions: dict) -> list:
    """Each question's F1 (0-100), in ``gold``'s order (a question without a prediction scores 0)."""
    return [100.0 * metric_max_over_ground_truths(f1_score, predictions.get(q, ""), answers)
            for q, answers in gold.items()]


def evaluate_answers(gold: Mapping[str, list[str]], predictions: Mapping[str, str]) -> dict:
    """EM and F1 (in %) of ``predictions`` over the questions of ``gold`` ({id: [gold texts]}).

    Every question of ``gold`` counts; a question without a prediction scores 0 and is
    reported on stderr, as in the official script. Use it to score a subset of a data set.
    """
    return _score(gold.items(), predictions)


def _dataset_questions(dataset: list):
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                yield qa["id"], [answer["text"] for answer in qa["answers"]]


def evaluate(dataset: list, predictions: Mapping[str, str]) -> dict:
    """The official ``evaluate``: EM and F1 (in %) of ``predictions`` on a SQuAD ``data`` list."""
    return _score(_dataset_questions(dataset), predictions)


def _load_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise SystemExit(f"error: {what} {path!r} does not exist")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: {what} {path!r} is not readable JSON: {err}")


def _check_predictions(predictions, path: str) -> None:
    if not isinstance(predictions, dict):
        raise SystemExit(f"error: prediction file {path!r} must hold a JSON object "
                         f"{{question id: answer text}}, got {type(predictions).__name__}")
    for qid, text in predictions.items():
        if not isinstance(text, str):
            raise SystemExit(f"error: prediction file {path!r}: the answer of {qid!r} must be "
                             f"a string, got {type(text).__name__}")


def main(argv: list[str] | None = None) -> int:
    """``evaluate_squad.py DATASET PREDICTIONS``: print the official JSON result."""
    parser = argparse.ArgumentParser(description="Evaluation for SQuAD " + EXPECTED_VERSION)
    parser.add_argument("dataset_file", help="Dataset file")
    parser.add_argument("prediction_file", help="Prediction File")
    args = parser.parse_args(argv)

    dataset_json = _load_json(args.dataset_file, "dataset file")
    if not isinstance(dataset_json, dict) or not isinstance(dataset_json.get("data"), list):
        raise SystemExit(f"error: dataset file {args.dataset_file!r} is not SQuAD: expected a "
                         "JSON object with a 'data' list")
    version = dataset_json.get("version")
    if version != EXPECTED_VERSION:
        print("Evaluation expects v-" + EXPECTED_VERSION + ", but got dataset with v-"
              + str(version), file=sys.stderr)
    predictions = _load_json(args.prediction_file, "prediction file")
    _check_predictions(predictions, args.prediction_file)
    try:
        result = evaluate(dataset_json["data"], predictions)
    except (KeyError, TypeError, ValueError) as err:
        raise SystemExit(f"error: dataset file {args.dataset_file!r} is not SQuAD v1.1 "
                         f"(missing or wrong field: {err})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
