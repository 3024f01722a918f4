"""The SQuAD v1.1 metric against hand-computed values and a literal transcription of the
official evaluate-v1.1.py (written in this file, independent of evaluate_squad.py)."""
from __future__ import annotations

import json
import random
import re
import string
import subprocess
import sys
from collections import Counter

import pytest

import evaluate_squad as ev
from helpers import REPO_ROOT, TINY_SQUAD_DIR, require_shared_squad


# --- the official evaluate-v1.1.py, transcribed literally -----------------------------------

def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def official_exact_match_score(prediction, ground_truth):
    return (official_normalize_answer(prediction) == official_normalize_answer(ground_truth))


def official_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def official_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article['paragraphs']:
            for qa in paragraph['qas']:
                total += 1
                if qa['id'] not in predictions:
                    continue
                ground_truths = list(map(lambda x: x['text'], qa['answers']))
                prediction = predictions[qa['id']]
                exact_match += official_metric_max_over_ground_truths(
                    official_exact_match_score, prediction, ground_truths)
                f1 += official_metric_max_over_ground_truths(
                    official_f1_score, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {'exact_match': exact_match, 'f1': f1}


# --- helpers ---------------------------------------------------------------------------------

def load_dataset(path):
    return json.loads(path.read_text(encoding="utf-8"))["data"]


def first_gold_predictions(dataset):
    return {qa["id"]: qa["answers"][0]["text"]
            for article in dataset for p in article["paragraphs"] for qa in p["qas"]}


def perturbed_predictions(dataset, count, seed):
    """Predictions for ``count`` random questions: gold answers edited in the ways a model
    errs (cut, extended, re-cased, punctuated, articles, empty, unrelated text); the other
    questions are left unanswered."""
    rng = random.Random(seed)
    qas = [(qa, p["context"]) for a in dataset for p in a["paragraphs"] for qa in p["qas"]]
    predictions = {}
    for qa, context in rng.sample(qas, min(count, len(qas))):
        gold = rng.choice(qa["answers"])
        text, start = gold["text"], gold["answer_start"]
        kind = rng.randrange(9)
        if kind == 0:
            words = text.split()
            text = " ".join(words[: max(1, len(words) // 2)])
        elif kind == 1:
            text = context[max(0, start - rng.randrange(1, 30)): start + len(text) + rng.randrange(0, 30)]
        elif kind == 2:
            text = text.upper()
        elif kind == 3:
            text = "The " + text + "."
        elif kind == 4:
            text = ""
        elif kind == 5:
            begin = rng.randrange(len(context))
            text = context[begin: begin + rng.randrange(1, 40)]
        elif kind == 6:
            text = "  " + text.replace(" ", "  \t") + " ,"
        elif kind == 7:
            text = text + " " + text
        predictions[qa["id"]] = text
    return predictions


# --- normalisation rules, hand-computed --------------------------------------------------------

@pytest.mark.parametrize("raw, normalised", [
    ("Hello World", "hello world"),                      # case
    ("Denver Broncos!", "denver broncos"),               # punctuation
    ("U.S.-led (1990s), $5,000", "usled 1990s 5000"),    # punctuation inside words
    ("the Cat and a dog, an owl", "cat and dog owl"),    # articles
    ("There then theatre anthem", "there then theatre anthem"),  # not inside words
    ("The  quick\tbrown\n fox ", "quick brown fox"),      # white space
    ("Café ÉCOLE", "café école"),                        # unicode lower, accents kept
    ("“the Candle”", "“ candle”"),                       # curly quotes are not string.punctuation
    ("a", ""),
])
def test_normalize_answer_rules(raw, normalised):
    assert ev.normalize_answer(raw) == normalised
    assert official_normalize_answer(raw) == normalised


def test_exact_match_and_f1_hand_computed():
    assert ev.exact_match_score("The Denver Broncos", "denver broncos!") is True
    assert ev.exact_match_score("cafe", "café") is False  # accents are not stripped
    # "big red dog" vs "red dog ran": 2 common tokens, P = R = 2/3.
    assert ev.f1_score("the big red dog", "a red dog ran") == pytest.approx(2 / 3)
    assert ev.f1_score("x x y", "x y y z") == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    assert ev.f1_score("", "anything") == 0
    assert ev.f1_score("the", "a") == 0  # both normalise to nothing: the official 0
    assert ev.exact_match_score("the", "a") is True


def test_several_gold_answers_take_the_maximum():
    golds = ["Denver Broncos", "the Broncos", "Broncos team of Denver"]
    assert ev.metric_max_over_ground_truths(ev.exact_match_score, "broncos", golds) is True
    # best F1: vs "Broncos team of Denver" -> 2 common, P=1, R=2/4 -> 2/3; vs "Denver Broncos" -> 1.
    assert ev.metric_max_over_ground_truths(ev.f1_score, "Denver Broncos", golds) == 1.0
    assert ev.metric_max_over_ground_truths(ev.f1_score, "team Denver", golds) == pytest.approx(
        2 * 1.0 * (2 / 4) / (1.0 + 2 / 4))


def test_evaluate_counts_empty_and_missing_predictions(capsys):
    dataset = [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": "red dog", "answer_start": 0}]},
        {"id": "q2", "question": "?", "answers": [{"text": "blue", "answer_start": 0},
                                                   {"text": "navy blue", "answer_start": 0}]},
        {"id": "q3", "question": "?", "answers": [{"text": "green", "answer_start": 0}]},
    ]}]}]
    result = ev.evaluate(dataset, {"q1": "the red dog", "q2": ""})
    assert result == {"exact_match": 100.0 * 1 / 3, "f1": 100.0 * 1 / 3}
    assert "Unanswered question q3 will receive score 0." in capsys.readouterr().err
    result = ev.evaluate(dataset, {"q1": "dog", "q2": "blue", "q3": "green"})
    assert result["exact_match"] == pytest.approx(200 / 3)
    assert result["f1"] == pytest.approx(100 * (2 / 3 + 1 + 1) / 3)  # "dog": P=1, R=1/2
    gold = {"q1": ["red dog"], "q3": ["green"]}
    assert ev.evaluate_answers(gold, {"q1": "red dog"}) == {"exact_match": 50.0, "f1": 50.0}


# --- gold answers and the official script on real and tiny data -------------------------------

def test_gold_answers_score_100_on_tiny_dev():
    dataset = load_dataset(TINY_SQUAD_DIR / "dev-v1.1.json")
    assert ev.evaluate(dataset, first_gold_predictions(dataset)) == {"exact_match": 100.0, "f1": 100.0}


def test_gold_answers_score_100_on_real_dev():
    dataset = load_dataset(require_shared_squad())
    assert ev.evaluate(dataset, first_gold_predictions(dataset)) == {"exact_match": 100.0, "f1": 100.0}


def test_equals_official_script_on_perturbed_tiny_dev():
    dataset = load_dataset(TINY_SQUAD_DIR / "dev-v1.1.json")
    for seed in range(20):
        predictions = perturbed_predictions(dataset, 12, seed)
        assert ev.evaluate(dataset, predictions) == official_evaluate(dataset, predictions)


def test_equals_official_script_on_perturbed_real_dev():
    dataset = load_dataset(require_shared_squad())
    for seed in range(3):
        predictions = perturbed_predictions(dataset, 400, seed)
        ours, official = ev.evaluate(dataset, predictions), official_evaluate(dataset, predictions)
        assert ours == official  # equal to the last digit
        assert 0 < ours["exact_match"] < ours["f1"] < 100 * 400 / 10570


# --- command line --------------------------------------------------------------------------------

def test_cli_prints_the_official_json(tmp_path):
    dev = TINY_SQUAD_DIR / "dev-v1.1.json"
    dataset = load_dataset(dev)
    predictions = perturbed_predictions(dataset, 15, seed=1)
    pred_file = tmp_path / "predictions.json"
    pred_file.write_text(json.dumps(predictions), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "evaluate_squad.py"), str(dev),
                           str(pred_file)], capture_output=True, text=True, check=True)
    assert proc.stdout == json.dumps(official_evaluate(dataset, predictions)) + "\n"


def test_cli_warns_on_other_versions(tmp_path, capsys):
    data = json.loads((TINY_SQUAD_DIR / "dev-v1.1.json").read_text(encoding="utf-8"))
    data["version"] = "v2.0"
    dev, pred = tmp_path / "dev.json", tmp_path / "pred.json"
    dev.write_text(json.dumps(data), encoding="utf-8")
    pred.write_text(json.dumps(first_gold_predictions(data["data"])), encoding="utf-8")
    assert ev.main([str(dev), str(pred)]) == 0
    out = capsys.readouterr()
    assert "Evaluation expects v-1.1, but got dataset with v-v2.0" in out.err
    assert json.loads(out.out) == {"exact_match": 100.0, "f1": 100.0}


@pytest.mark.parametrize("case, message", [
    ("missing_dataset", "does not exist"),
    ("missing_predictions", "does not exist"),
    ("dataset_not_json", "not readable JSON"),
    ("predictions_not_json", "not readable JSON"),
    ("predictions_not_object", "must hold a JSON object"),
    ("dataset_not_squad", "is not SQuAD"),
])
def test_cli_bad_files_exit_non_zero(tmp_path, case, message):
    dev, pred = tmp_path / "dev.json", tmp_path / "pred.json"
    dev.write_text((TINY_SQUAD_DIR / "dev-v1.1.json").read_text(encoding="utf-8"), encoding="utf-8")
    pred.write_text("{}", encoding="utf-8")
    if case == "missing_dataset":
        dev.unlink()
    elif case == "missing_predictions":
        pred.unlink()
    elif case == "dataset_not_json":
        dev.write_text("{not json", encoding="utf-8")
    elif case == "predictions_not_json":
        pred.write_text("", encoding="utf-8")
    elif case == "predictions_not_object":
        pred.write_text("[1, 2]", encoding="utf-8")
    elif case == "dataset_not_squad":
        dev.write_text('{"version": "1.1", "data": [{"title": "x"}]}', encoding="utf-8")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "evaluate_squad.py"), str(dev),
                           str(pred)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert proc.stdout == ""
