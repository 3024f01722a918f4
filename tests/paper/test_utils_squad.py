"""The SQuAD data pipeline against explicit slow loops written here (the reference windowing,
labels and n-best search), hand-made bad files, and an oracle round trip through the official
metric."""
from __future__ import annotations

import json
import logging
import math
import unicodedata
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate_squad
import utils_squad
from helpers import TINY_SQUAD_DIR, build_vocab, make_tiny_tokenizer, require_minilm, require_shared_squad, tiny_squad_texts
from utils_squad import SquadFormatError

TRAIN = TINY_SQUAD_DIR / "train-v1.1.json"
DEV = TINY_SQUAD_DIR / "dev-v1.1.json"
SMALL = dict(max_seq_length=64, doc_stride=16, max_query_length=16)


def tiny_tokenizer(folder: Path, texts):
    """helpers.make_tiny_tokenizer, checked to hold its whole vocabulary (no [UNK] words)."""
    tokenizer = make_tiny_tokenizer(folder, texts)
    assert len(tokenizer.get_vocab()) == len(build_vocab(texts))
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"), tiny_squad_texts())


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    """Same texts plus one word: a different vocabulary."""
    return tiny_tokenizer(tmp_path_factory.mktemp("tok2"), tiny_squad_texts() + ["xylophone"])


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def one_question(qa_extra=None, answers=None, context="Paris is the capital of France."):
    qa = {"id": "q0", "question": "What is the capital of France?",
          "answers": answers if answers is not None else [{"text": "Paris", "answer_start": 0}]}
    qa.update(qa_extra or {})
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": [qa]}]}]}


# --- reading -------------------------------------------------------------------------------------

def test_read_tiny_files():
    dev = utils_squad.read_squad_examples(DEV, is_training=False)
    train = utils_squad.read_squad_examples(TRAIN, is_training=True)
    raw = json.loads(DEV.read_text(encoding="utf-8"))["data"]
    assert len(dev) == 15 and len(train) == 43
    first = raw[0]["paragraphs"][0]
    assert dev[0] == utils_squad.SquadExample(
        qas_id=first["qas"][0]["id"], title=raw[0]["title"], question=first["qas"][0]["question"],
        context=first["context"], answers=first["qas"][0]["answers"])
    several = [e for e in dev if len(e.answers) > 1]
    assert several and max(len(e.answers) for e in dev) == 3  # evaluation keeps every gold answer
    assert all(len(e.answers) == 1 for e in train)
    for e in dev + train:  # answers are exact substrings at answer_start
        for a in e.answers:
            assert e.context[a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]


def test_read_real_dev_counts():
    path = require_shared_squad()
    examples = utils_squad.read_squad_examples(path, is_training=False)
    assert len(examples) == 10570
    assert len(json.loads(path.read_text(encoding="utf-8"))["data"]) == 48
    assert len({e.title for e in examples}) == 48
    assert sum(len(e.answers) for e in examples) == 34726


def test_training_reads_first_answer_only(tmp_path):
    data = one_question(answers=[{"text": "Paris", "answer_start": 0},
                                 {"text": "France", "answer_start": 24}])
    path = write_json(tmp_path / "t.json", data)
    assert utils_squad.read_squad_examples(path, True)[0].answers == [{"text": "Paris", "answer_start": 0}]
    assert len(utils_squad.read_squad_examples(path, False)[0].answers) == 2


def test_misaligned_training_answers_skipped_with_one_warning(tmp_path, caplog):
    context = "Paris is the capital of France. Berlin is the capital of Germany."
    qas = [
        {"id": "good", "question": "a?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "bad1", "question": "b?", "answers": [{"text": "Berlin", "answer_start": 3}]},
        {"id": "bad2", "question": "c?", "answers": [{"text": "Rome", "answer_start": 500}]},
        # The reference accepts a start inside the right word (white-space words match).
        {"id": "loose", "question": "d?", "answers": [{"text": "Germany", "answer_start": 58}]},
    ]
    path = write_json(tmp_path / "t.json", {"version": "1.1", "data": [
        {"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]})
    with caplog.at_level(logging.WARNING, logger="utils_squad"):
        examples = utils_squad.read_squad_examples(path, is_training=True)
    assert [e.qas_id for e in examples] == ["good", "loose"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 training question" in warnings[0].getMessage()
    assert "bad1" in warnings[0].getMessage() and "bad2" in warnings[0].getMessage()
    caplog.clear()
    assert len(utils_squad.read_squad_examples(path, is_training=False)) == 4  # eval keeps all
    assert not caplog.records


@pytest.mark.parametrize("content, place", [
    ('{"version": "1.1"}', "top level: missing 'data'"),
    ('{"data": {}}', "top level.data: expected list"),
    ('{"data": [{"title": "T"}]}', "data[0]: missing 'paragraphs'"),
    ('{"data": [{"title": "T", "paragraphs": [{"context": "c"}]}]}', "data[0].paragraphs[0]: missing 'qas'"),
    ('{"data": [{"paragraphs": [{"qas": []}]}]}', "data[0].paragraphs[0]: missing 'context'"),
    ('{"data": [{"paragraphs": [{"context": 5, "qas": []}]}]}', "data[0].paragraphs[0].context: expected str"),
    ('{"data": [3]}', "data[0]: expected a JSON object"),
])
def test_not_squad_errors_name_the_place(tmp_path, content, place):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SquadFormatError) as err:
        utils_squad.read_squad_examples(path, is_training=False)
    assert str(path) in str(err.value) and place in str(err.value)


@pytest.mark.parametrize("qa_extra, answers, place", [
    ({"question": 7}, None, "data[0].paragraphs[0].qas[0].question: expected str"),
    ({"id": 12}, None, "qas[0].id: expected str"),
    ({}, [{"text": "Paris", "answer_start": "0"}], "qas[0].answers[0].answer_start: expected int"),
    ({}, [{"text": "Paris", "answer_start": True}], "answer_start: expected int"),
    ({}, [{"answer_start": 0}], "qas[0].answers[0]: missing 'text'"),
    ({}, "Paris", "qas[0].answers: expected list"),
])
def test_wrong_types_name_the_field(tmp_path, qa_extra, answers, place):
    path = write_json(tmp_path / "bad.json", one_question(qa_extra, answers))
    with pytest.raises(SquadFormatError, match=place.replace("[", r"\[").replace("]", r"\]")):
        utils_squad.read_squad_examples(path, is_training=False)


def test_missing_answers_field(tmp_path):
    data = one_question()
    del data["data"][0]["paragraphs"][0]["qas"][0]["answers"]
    with pytest.raises(SquadFormatError, match=r"data\[0\].paragraphs\[0\].qas\[0\]: missing 'answers'"):
        utils_squad.read_squad_examples(write_json(tmp_path / "b.json", data), is_training=True)


@pytest.mark.parametrize("qa_extra, answers", [
    ({"is_impossible": True}, []),
    ({"is_impossible": False, "plausible_answers": [{"text": "Paris", "answer_start": 0}]}, None),
    ({}, []),
])
def test_squad2_is_rejected(tmp_path, qa_extra, answers):
    path = write_json(tmp_path / "v2.json", one_question(qa_extra, answers))
    for is_training in (True, False):
        with pytest.raises(SquadFormatError, match="only SQuAD 1.1 is supported"):
            utils_squad.read_squad_examples(path, is_training)


def test_missing_and_not_json_files(tmp_path):
    with pytest.raises(SquadFormatError, match="does not exist"):
        utils_squad.read_squad_examples(tmp_path / "nope.json", False)
    bad = tmp_path / "bad.json"
    bad.write_text("{oops", encoding="utf-8")
    with pytest.raises(SquadFormatError, match="not a JSON file") as err:
        utils_squad.read_squad_examples(bad, False)
    assert str(bad) in str(err.value)


def test_failing_run_writes_nothing(tmp_path, tokenizer):
    bad = write_json(tmp_path / "v2.json", one_question({"is_impossible": True}, []))
    cache = tmp_path / "cache"
    with pytest.raises(SquadFormatError):
        utils_squad.load_or_build_features(bad, tokenizer, is_training=True, cache_dir=cache, **SMALL)
    assert not cache.exists()
    with pytest.raises(TypeError):
        utils_squad.atomic_write_json(tmp_path / "out" / "p.json", {"a": object()})
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# --- windows, masks, labels: against an explicit loop of the reference windowing --------------

def reference_windows(tokenizer, example, max_seq_length, doc_stride, max_query_length):
    """The reference's windows written as a plain loop: (input_ids, context offsets, doc
    start) per window, the context token offsets of the whole document."""
    query = tokenizer(example.question, add_special_tokens=False)["input_ids"][:max_query_length]
    doc = tokenizer(example.context, add_special_tokens=False, return_offsets_mapping=True)
    doc_ids, doc_offsets = doc["input_ids"], doc["offset_mapping"]
    window = max_seq_length - len(query) - 3
    windows, start = [], 0
    while True:
        ids = doc_ids[start:start + window]
        input_ids = [tokenizer.cls_token_id] + query + [tokenizer.sep_token_id] + ids + [tokenizer.sep_token_id]
        input_ids += [tokenizer.pad_token_id] * (max_seq_length - len(input_ids))
        windows.append((input_ids, doc_offsets[start:start + window], start, len(query)))
        if start + window >= len(doc_ids):
            break
        start += doc_stride
    return windows, doc_offsets


def answer_doc_tokens(doc_offsets, answer):
    """First and last document token overlapping the answer's characters (slow loop)."""
    s, e = answer["answer_start"], answer["answer_start"] + len(answer["text"])
    hits = [i for i, (a, b) in enumerate(doc_offsets) if a < e and b > s]
    return hits[0], hits[-1]


@pytest.mark.parametrize("is_training", [True, False])
def test_windows_match_the_reference_loop(tokenizer, is_training):
    path = TRAIN if is_training else DEV
    examples = utils_squad.read_squad_examples(path, is_training)
    features = utils_squad.convert_examples_to_features(examples, tokenizer, is_training=is_training, **SMALL)
    rows = defaultdict(list)
    for row, ex in enumerate(features.example_index.tolist()):
        rows[ex].append(row)
    assert sorted(rows) == list(range(len(examples)))
    n_multi = n_cls = 0
    for ex_id, example in enumerate(examples):
        windows, doc_offsets = reference_windows(tokenizer, example, **SMALL)
        assert len(rows[ex_id]) == len(windows)
        n_multi += len(windows) > 1
        covered = set()
        for k, (row, (ids, offsets, doc_start, q_len)) in enumerate(zip(rows[ex_id], windows)):
            assert features.input_ids[row].tolist() == ids
            n_real = 3 + q_len + len(offsets)
            assert features.attention_mask[row].tolist() == [1] * n_real + [0] * (64 - n_real)
            assert features.token_type_ids[row].tolist() == (
                [0] * (q_len + 2) + [1] * (len(offsets) + 1) + [0] * (64 - n_real))
            covered.update(range(doc_start, doc_start + len(offsets)))
            if k > 0:  # consecutive windows start doc_stride tokens apart and overlap
                assert doc_start == windows[k - 1][2] + 16 and doc_start < windows[k - 1][2] + len(windows[k - 1][1])
            if is_training:
                first, last = answer_doc_tokens(doc_offsets, example.answers[0])
                inside = doc_start <= first and last < doc_start + len(offsets)
                shift = q_len + 2 - doc_start
                expected = (first + shift, last + shift) if inside else (0, 0)
                got = (features.start_positions[row].item(), features.end_positions[row].item())
                assert got == expected
                n_cls += not inside
            else:
                context_part = features.offset_mapping[row][q_len + 2: q_len + 2 + len(offsets)]
                assert context_part == [tuple(o) for o in offsets]
                assert all(o is None for i, o in enumerate(features.offset_mapping[row])
                           if not q_len + 2 <= i < q_len + 2 + len(offsets))
        assert covered == set(range(len(doc_offsets)))  # every context token is in some window
    assert n_multi >= 2  # the long paragraphs need several windows at 64 tokens
    if is_training:
        assert n_cls >= 1 and features.offset_mapping is None
        assert len(features.train_dataset()[0]) == 5
    else:
        assert features.start_positions is None
        assert features.eval_dataset()[3][3].item() == 3


def test_overflow_that_loses_context_tokens_is_refused(tokenizer):
    """tokenizers 0.23.1/0.23.2 end the overflowing windows at the context's max_length-th token;
    such a tokenizer (imitated here by dropping the last window) is refused with a clear error
    instead of building features that silently miss the tail of long contexts."""
    utils_squad.check_overflow_covers_context(tokenizer.backend_tokenizer)  # the installed tokenizers is sound

    class Window:  # an encoding whose overflowing windows lack the last one
        def __init__(self, encoding):
            self.encoding = encoding

        def __getattr__(self, name):
            return getattr(self.encoding, name)

        @property
        def overflowing(self):
            return self.encoding.overflowing[:-1]

    class LosesLastWindow:
        backend = tokenizer.backend_tokenizer

        def __getattr__(self, name):
            return getattr(self.backend, name)

        def encode(self, *args, **kwargs):
            return Window(self.backend.encode(*args, **kwargs))

        def encode_batch(self, *args, **kwargs):
            return [Window(e) for e in self.backend.encode_batch(*args, **kwargs)]

    class Tokenizer:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        backend_tokenizer = LosesLastWindow()

    examples = utils_squad.read_squad_examples(DEV, is_training=False)
    with pytest.raises(RuntimeError, match="tokenizers>=0.23.3"):
        utils_squad.convert_examples_to_features(examples, Tokenizer(), **SMALL)


def test_training_positions_point_at_the_answer_text(tokenizer):
    examples = utils_squad.read_squad_examples(TRAIN, is_training=True)
    features = utils_squad.convert_examples_to_features(examples, tokenizer, is_training=True, **SMALL)
    for row in range(len(features)):
        start, end = features.start_positions[row].item(), features.end_positions[row].item()
        if start == 0:
            continue
        answer = examples[features.example_index[row].item()].answers[0]["text"]
        decoded = tokenizer.decode(features.input_ids[row, start:end + 1])
        assert decoded.replace(" ", "") == strip_accents(answer.lower()).replace(" ", "").replace("\u00a0", "")


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def test_offsets_map_back_to_the_token_text(tokenizer):
    examples = utils_squad.read_squad_examples(DEV, is_training=False) + \
        utils_squad.read_squad_examples(TRAIN, is_training=False)
    features = utils_squad.convert_examples_to_features(examples, tokenizer, **SMALL)
    checked = 0
    for row, offsets in enumerate(features.offset_mapping):
        context = examples[features.example_index[row].item()].context
        tokens = tokenizer.convert_ids_to_tokens(features.input_ids[row].tolist())
        for token, span in zip(tokens, offsets):
            if span is not None:
                assert strip_accents(context[span[0]:span[1]].lower()) == token.removeprefix("##")
                checked += 1
    assert checked > 1000


def test_question_truncated_to_max_query_length(tokenizer):
    example = utils_squad.read_squad_examples(DEV, False)[0]
    long_q = utils_squad.SquadExample("x", "t", " ".join([example.question] * 5), example.context, example.answers)
    features = utils_squad.convert_examples_to_features([long_q], tokenizer, **SMALL)
    full = tokenizer(long_q.question, add_special_tokens=False)["input_ids"]
    assert len(full) > 16
    assert features.input_ids[0, 1:18].tolist() == full[:16] + [tokenizer.sep_token_id]
    assert features.token_type_ids[0, :18].sum() == 0 and features.token_type_ids[0, 18] == 1
    with pytest.raises(ValueError, match="max_query_length"):
        utils_squad.convert_examples_to_features([long_q], tokenizer, max_seq_length=16,
                                                 doc_stride=4, max_query_length=16)


# --- cache ---------------------------------------------------------------------------------------

@pytest.fixture
def count_builds(monkeypatch):
    calls = []
    real = utils_squad.convert_examples_to_features

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(utils_squad, "convert_examples_to_features", counting)
    return calls


def assert_same_features(a, b):
    for name in ("input_ids", "attention_mask", "token_type_ids", "example_index"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    for name in ("start_positions", "end_positions"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y)
    assert a.offset_mapping == b.offset_mapping


@pytest.mark.parametrize("is_training", [True, False])
def test_cache_is_reused_only_for_the_same_inputs(tmp_path, tokenizer, other_tokenizer, count_builds, is_training):
    path, cache = (TRAIN if is_training else DEV), tmp_path / "cache"
    load = lambda tok, **kw: utils_squad.load_or_build_features(  # noqa: E731
        path, tok, is_training=is_training, cache_dir=cache, **{**SMALL, **kw})
    ex1, f1 = load(tokenizer)
    ex2, f2 = load(tokenizer)
    assert len(count_builds) == 1 and ex1 == ex2
    assert_same_features(f1, f2)
    assert_same_features(f2, utils_squad.convert_examples_to_features(ex1, tokenizer, is_training=is_training, **SMALL))
    load(other_tokenizer)  # another vocabulary never hits the first cache
    assert len(count_builds) == 3
    load(tokenizer, doc_stride=8)
    load(tokenizer, max_examples=5)
    assert len(count_builds) == 5
    assert len(list(cache.iterdir())) == 4  # one file per distinct key
    assert not list(cache.glob("*.tmp"))


def test_fingerprint_tells_tokenizers_apart(tmp_path, tokenizer, other_tokenizer):
    from transformers import BertTokenizerFast

    same = tiny_tokenizer(tmp_path / "same", tiny_squad_texts())
    cased = BertTokenizerFast(vocab=same.get_vocab(), do_lower_case=False)
    fp = utils_squad.tokenizer_fingerprint
    assert fp(same) == fp(tokenizer)
    assert len({fp(tokenizer), fp(other_tokenizer), fp(cased)}) == 3


def test_corrupt_or_stale_cache_is_rebuilt(tmp_path, tokenizer, count_builds, caplog):
    from safetensors.torch import load_file, save_file

    cache = tmp_path / "cache"
    load = lambda **kw: utils_squad.load_or_build_features(  # noqa: E731
        DEV, tokenizer, is_training=False, cache_dir=cache, **SMALL, **kw)
    _, fresh = load()
    (cache_file,) = cache.iterdir()
    cache_file.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="utils_squad"):
        _, rebuilt = load()
    assert len(count_builds) == 2 and "corrupt or stale" in caplog.text
    assert_same_features(fresh, rebuilt)
    caplog.clear()
    load()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(count_builds) == 2 and not warnings  # the rebuilt cache is good again
    # Stale: a valid file whose recorded key differs (e.g. written by another version).
    tensors = load_file(str(cache_file))
    save_file(tensors, str(cache_file), metadata={"key": json.dumps({"format": 0})})
    with caplog.at_level(logging.WARNING, logger="utils_squad"):
        _, rebuilt = load()
    assert len(count_builds) == 3 and "corrupt or stale" in caplog.text
    assert_same_features(fresh, rebuilt)
    load(overwrite_cache=True)
    assert len(count_builds) == 4


def test_flipped_bytes_inside_the_cached_tensors_are_caught(tmp_path, tokenizer, count_builds, caplog):
    """The safetensors header stays valid when bytes inside the tensors flip; the stored checksum
    notices, and the cache is rebuilt with the usual warning instead of changing the answers."""
    import struct

    cache = tmp_path / "cache"
    load = lambda: utils_squad.load_or_build_features(  # noqa: E731
        DEV, tokenizer, is_training=False, cache_dir=cache, **SMALL)
    _, fresh = load()
    (cache_file,) = cache.iterdir()
    data = bytearray(cache_file.read_bytes())
    header_end = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
    middle = header_end + (len(data) - header_end) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0x5A
    cache_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="utils_squad"):
        _, rebuilt = load()
    assert len(count_builds) == 2 and "corrupt or stale" in caplog.text
    assert_same_features(fresh, rebuilt)


def test_unwritable_cache_dir_only_warns(tmp_path, tokenizer, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="utils_squad"):
        examples, features = utils_squad.load_or_build_features(
            DEV, tokenizer, is_training=False, cache_dir=blocker / "cache", **SMALL)
    assert len(examples) == 15 and len(features) > 15
    assert "could not write the feature cache" in caplog.text


def test_max_examples_keeps_the_first_questions(tokenizer):
    all_examples, _ = utils_squad.load_or_build_features(TRAIN, tokenizer, is_training=True, **SMALL)
    examples, features = utils_squad.load_or_build_features(TRAIN, tokenizer, is_training=True,
                                                            max_examples=7, **SMALL)
    assert examples == all_examples[:7]
    assert features.example_index.max().item() == 6
    examples, features = utils_squad.load_or_build_features(DEV, tokenizer, is_training=False,
                                                            max_examples=0, **SMALL)
    assert examples == [] and len(features) == 0 and features.offset_mapping == []
    assert utils_squad.postprocess_predictions(examples, features, np.zeros((0, 64)), np.zeros((0, 64))) == ({}, {})


# --- lower-casing ----------------------------------------------------------------------------

def test_check_lower_case_warns_on_disagreement(tmp_path, tokenizer, caplog):
    from transformers import BertTokenizerFast

    cased = BertTokenizerFast(vocab=tokenizer.get_vocab(), do_lower_case=False)
    assert utils_squad.tokenizer_lower_case(tokenizer) is True
    assert utils_squad.tokenizer_lower_case(cased) is False
    with caplog.at_level(logging.WARNING, logger="utils_squad"):
        utils_squad.check_lower_case(tokenizer, True)
        utils_squad.check_lower_case(cased, False)
        assert not caplog.records
        utils_squad.check_lower_case(tokenizer, False)
        utils_squad.check_lower_case(cased, True)
    assert len(caplog.records) == 2 and "do_lower_case" in caplog.text


# --- post-processing: against the reference n-best search written as slow loops --------------

def reference_postprocess(examples, features, start_logits, end_logits, n_best_size, max_answer_length):
    by_example = defaultdict(list)
    for row, ex in enumerate(features.example_index.tolist()):
        by_example[ex].append(row)
    predictions, all_nbest = {}, {}
    for ex_id, example in enumerate(examples):
        rows = by_example[ex_id]
        doc_starts = sorted({o[0] for r in rows for o in features.offset_mapping[r] if o is not None})
        doc_pos = {s: i for i, s in enumerate(doc_starts)}
        spans = []
        for r in rows:
            ctx = [o for o in features.offset_mapping[r] if o is not None]
            spans.append((doc_pos[ctx[0][0]], len(ctx)))

        def is_max_context(span_index, position):
            best_score, best_index = None, None
            for i, (start, length) in enumerate(spans):
                end = start + length - 1
                if position < start or position > end:
                    continue
                score = min(position - start, end - position) + 0.01 * length
                if best_score is None or score > best_score:
                    best_score, best_index = score, i
            return span_index == best_index

        prelim = []
        for k, r in enumerate(rows):
            offsets = features.offset_mapping[r]
            sl, el = [float(x) for x in start_logits[r]], [float(x) for x in end_logits[r]]
            best_starts = [i for i, _ in sorted(enumerate(sl), key=lambda x: x[1], reverse=True)][:n_best_size]
            best_ends = [i for i, _ in sorted(enumerate(el), key=lambda x: x[1], reverse=True)][:n_best_size]
            for s in best_starts:
                for e in best_ends:
                    if offsets[s] is None or offsets[e] is None:
                        continue
                    if not is_max_context(k, doc_pos[offsets[s][0]]):
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim.append((r, s, e, sl[s], el[e]))
        prelim = sorted(prelim, key=lambda p: p[3] + p[4], reverse=True)
        nbest, seen = [], set()
        for r, s, e, a, b in prelim:
            if len(nbest) >= n_best_size:
                break
            text = example.context[features.offset_mapping[r][s][0]:features.offset_mapping[r][e][1]]
            if text in seen:
                continue
            seen.add(text)
            nbest.append((text, a, b))
        if not nbest:
            nbest.append(("empty", 0.0, 0.0))
        scores = [a + b for _, a, b in nbest]
        exps = [math.exp(x - max(scores)) for x in scores]
        all_nbest[example.qas_id] = [
            {"text": t, "probability": x / sum(exps), "start_logit": a, "end_logit": b}
            for (t, a, b), x in zip(nbest, exps)]
        predictions[example.qas_id] = nbest[0][0]
    return predictions, all_nbest


@pytest.mark.parametrize("seed, n_best_size, max_answer_length, ties, doc_stride", [
    (0, 20, 30, False, 16), (1, 5, 4, False, 16), (2, 20, 30, True, 16), (3, 3, 2, True, 16),
    (4, 20, 30, False, 7), (5, 20, 30, False, 10)])
def test_postprocess_matches_the_reference_loops(tokenizer, seed, n_best_size, max_answer_length, ties,
                                                 doc_stride):
    examples = utils_squad.read_squad_examples(DEV, False) + utils_squad.read_squad_examples(TRAIN, False)
    features = utils_squad.convert_examples_to_features(examples, tokenizer, **{**SMALL, "doc_stride": doc_stride})
    rng = np.random.default_rng(seed)
    shape = tuple(features.input_ids.shape)
    if ties:  # many equal logits exercise the reference's stable ordering
        start, end = rng.integers(0, 4, shape).astype(np.float32), rng.integers(0, 4, shape).astype(np.float32)
    else:
        start, end = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    got = utils_squad.postprocess_predictions(examples, features, torch.from_numpy(start), end,
                                              n_best_size, max_answer_length)
    expected = reference_postprocess(examples, features, start, end, n_best_size, max_answer_length)
    assert got[0] == expected[0]
    assert got[1].keys() == expected[1].keys()
    for qid in expected[1]:
        assert len(got[1][qid]) == len(expected[1][qid])
        for g, e in zip(got[1][qid], expected[1][qid]):
            assert g["text"] == e["text"] and g["start_logit"] == e["start_logit"]
            assert g["end_logit"] == e["end_logit"] and g["probability"] == pytest.approx(e["probability"])


def test_no_valid_span_gives_the_reference_placeholder(tokenizer):
    examples = utils_squad.read_squad_examples(DEV, False)[:2]
    features = utils_squad.convert_examples_to_features(examples, tokenizer, **SMALL)
    start = np.zeros(tuple(features.input_ids.shape))
    start[:, 0] = 100.0  # every top start is [CLS] and n_best_size=1
    predictions, nbest = utils_squad.postprocess_predictions(examples, features, start, start, n_best_size=1)
    assert set(predictions.values()) == {"empty"}
    assert nbest[examples[0].qas_id] == [{"text": "empty", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0}]


def test_write_predictions(tmp_path):
    predictions = {"q1": "café", "q2": ""}
    nbest = {"q1": [{"text": "café", "probability": 1.0, "start_logit": 1.5, "end_logit": 2.0}],
             "q2": [{"text": "", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0}]}
    pred_path, nbest_path = utils_squad.write_predictions(predictions, nbest, tmp_path / "out", prefix="dev_")
    assert pred_path.name == "dev_predictions.json" and nbest_path.name == "dev_nbest_predictions.json"
    assert json.loads(pred_path.read_text(encoding="utf-8")) == predictions
    assert json.loads(nbest_path.read_text(encoding="utf-8")) == nbest
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dev_nbest_predictions.json", "dev_predictions.json"]


# --- oracle round trip through the official metric ---------------------------------------------

def oracle_logits(examples, features):
    """Logits peaking on the first gold answer's first/last token in every window that holds
    its whole character span (explicit loop over the offset lists)."""
    n, length = features.input_ids.shape
    start, end = np.full((n, length), -10.0), np.full((n, length), -10.0)
    for row, offsets in enumerate(features.offset_mapping):
        answer = examples[features.example_index[row].item()].answers[0]
        s, e = answer["answer_start"], answer["answer_start"] + len(answer["text"])
        context = [(i, o) for i, o in enumerate(offsets) if o is not None]
        if not context or context[0][1][0] > s or context[-1][1][1] < e:
            continue
        start[row, next(i for i, o in context if o[1] > s)] = 10.0
        end[row, [i for i, o in context if o[0] < e][-1]] = 10.0
    return start, end


def test_oracle_round_trip_tiny(tokenizer):
    examples = utils_squad.read_squad_examples(DEV, False)
    features = utils_squad.convert_examples_to_features(examples, tokenizer, **SMALL)
    predictions, _ = utils_squad.postprocess_predictions(examples, features, *oracle_logits(examples, features))
    dataset = json.loads(DEV.read_text(encoding="utf-8"))["data"]
    assert evaluate_squad.evaluate(dataset, predictions) == {"exact_match": 100.0, "f1": 100.0}


@pytest.mark.long(17)
def test_oracle_round_trip_real_dev(capsys):
    from transformers import AutoTokenizer

    path = require_shared_squad()
    tokenizer = AutoTokenizer.from_pretrained(str(require_minilm()))
    examples = utils_squad.read_squad_examples(path, False)
    features = utils_squad.convert_examples_to_features(examples, tokenizer, 384, 128, 64)
    assert len(features) > len(examples)
    predictions, _ = utils_squad.postprocess_predictions(examples, features, *oracle_logits(examples, features))
    result = evaluate_squad.evaluate(json.loads(path.read_text(encoding="utf-8"))["data"], predictions)
    with capsys.disabled():
        print(f"\noracle round trip on the real dev set: {json.dumps(result)}")
    assert result["f1"] >= 99.0 and result["exact_match"] >= 99.0


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """mkstemp's files are 0600; results must be readable like any file the user writes."""
    import os
    import stat

    umask = os.umask(0o022)
    try:
        utils_squad.atomic_write_json(tmp_path / "r.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644
        assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
        assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left
    finally:
        os.umask(umask)


def test_windowing_leaves_the_tokenizers_own_settings_as_it_found_them(tokenizer):
    """windows.py sets truncation and padding on the tokenizer's backend for its calls: afterwards
    the backend's own settings are back, and transformers' calls on it give what they gave before."""
    backend = tokenizer.backend_tokenizer
    text = "the cat sat on the mat " * 20
    before = tokenizer(text)["input_ids"]
    backend.enable_truncation(12, stride=2, strategy="longest_first")
    backend.enable_padding(length=20, pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    truncation, padding = backend.truncation, backend.padding
    examples = utils_squad.read_squad_examples(DEV, is_training=False)
    utils_squad.convert_examples_to_features(examples, tokenizer, **SMALL)
    assert backend.truncation == truncation and backend.padding == padding
    backend.no_truncation()
    backend.no_padding()
    utils_squad.convert_examples_to_features(examples, tokenizer, **SMALL)
    assert backend.truncation is None and backend.padding is None
    assert tokenizer(text)["input_ids"] == before
