"""inference.py: the QuestionAnswerer API and its command line."""
import json
import shutil

import numpy as np
import pytest
import torch

import inference
import run_squad
import utils_squad
from helpers import run_inference_cli as run_cli
from helpers import TINY_SQUAD_DIR, make_tiny_tokenizer, save_tiny_bert, tiny_bert_config, tiny_squad_texts

LENGTHS = ["--max_seq_length", "128", "--doc_stride", "32"]
FIXED = "[60, 40, 30]"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    squad = root / "squad"
    shutil.copytree(TINY_SQUAD_DIR, squad, ignore=shutil.ignore_patterns("cached_*"))
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    config = tiny_bert_config(len(tok), num_hidden_layers=3, max_position_embeddings=512)
    return {"squad": squad, "root": root, "model": save_tiny_bert(root / "model", config, seed=3, tokenizer=tok)}


def error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("inference.py: error:"), proc.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("length_config", [None, FIXED])
def test_cli_predictions_equal_run_squad_do_eval(ws, tmp_path, length_config):
    """With --pad_to_max_length, exactly --do_eval's predictions. Without it, the same except where
    --do_eval's top n-best held padding positions (a random model: there it answers "empty")."""
    extra = ["--length_config", length_config] if length_config else []
    out = tmp_path / "eval"
    assert run_squad.main([str(a) for a in ["--data_dir", ws["squad"], "--model_name_or_path", ws["model"],
                                            "--output_dir", out, *LENGTHS, "--do_lower_case", "--do_eval",
                                            *extra]]) == 0
    expected = json.loads((out / "predictions.json").read_text())
    pred = tmp_path / "p.json"
    proc = run_cli("--model", ws["model"], "--input", ws["squad"] / "dev-v1.1.json", "--output", pred,
                   *LENGTHS, "--batch_size", "3", "--pad_to_max_length", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batches" in proc.stderr  # the progress bar
    got = json.loads(pred.read_text())
    assert got == expected and len(got) > 1

    proc = run_cli("--model", ws["model"], "--input", ws["squad"] / "dev-v1.1.json", "--output", pred,
                   *LENGTHS, "--batch_size", "3", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(pred.read_text())
    assert got.keys() == expected.keys()
    assert all(got[k] == expected[k] for k in got if expected[k] != "empty")
    assert "empty" not in got.values()


@pytest.mark.parametrize("length_config", [None, (60, 40, 30)])
def test_sorted_batches_give_the_logits_of_full_padding(ws, length_config):
    qa = inference.QuestionAnswerer.from_pretrained(ws["model"], length_config, max_seq_length=128,
                                                    doc_stride=32, batch_size=3)
    examples = utils_squad.read_squad_examples(ws["squad"] / "dev-v1.1.json", False)
    features = qa.features(examples)
    lengths = features.attention_mask.sum(1)
    assert lengths.min() < lengths.max() < 128  # batches really are cut to different widths
    starts, ends = qa.logits(features)
    with torch.no_grad():
        full = qa.model(input_ids=features.input_ids, attention_mask=features.attention_mask,
                        token_type_ids=features.token_type_ids, length_config=qa.length_config)
    real = features.attention_mask.bool().numpy()
    np.testing.assert_allclose(starts[real], full.start_logits.numpy()[real], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ends[real], full.end_logits.numpy()[real], atol=1e-5, rtol=0)
    # Past a batch's width: -inf, never an answer; the longest feature's width is never cut.
    assert np.isneginf(starts).any() and not np.isneginf(starts[real]).any()
    assert np.all(np.isneginf(starts[:, lengths.max():])) and np.all(np.isneginf(ends[:, lengths.max():]))


def test_answer_offsets_and_long_contexts(ws):
    qa = inference.QuestionAnswerer.from_pretrained(ws["model"], max_seq_length=64, doc_stride=16)
    examples = utils_squad.read_squad_examples(ws["squad"] / "dev-v1.1.json", False)
    long_context = " ".join(e.context for e in examples[:6])
    question = examples[0].question
    assert len(qa.features([utils_squad.SquadExample("x", "", question, long_context, [])])) > 2
    results = qa.answer_batch([(e.question, e.context) for e in examples[:4]] + [(question, long_context)])
    assert len(results) == 5
    for (q, c), r in zip([(e.question, e.context) for e in examples[:4]] + [(question, long_context)], results):
        assert set(r) == {"answer", "score", "start", "end"}
        assert c[r["start"]:r["end"]] == r["answer"] and r["answer"]
        assert 0 < r["score"] <= 1
    assert qa.answer(question, long_context) == results[-1]
    with pytest.raises(inference.UsageError, match="empty question"):
        qa.answer("  ", long_context)
    with pytest.raises(inference.UsageError, match="empty context"):
        qa.answer(question, "")


def test_cli_single_question(ws):
    context = "The cat sat on the mat in Paris."
    proc = run_cli("--model", ws["model"], "--question", "Where did the cat sit?", "--context", context,
                   "--max_seq_length", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert context[result["start"]:result["end"]] == result["answer"]


def test_cli_errors_are_one_line(ws, tmp_path):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    (empty / "config.json").write_text((ws["model"] / "config.json").read_text())
    q = ["--question", "Who?", "--context", "Someone."]
    assert "no weights" in error_line(run_cli("--model", empty, *q))
    assert "not a folder" in error_line(run_cli("--model", tmp_path / "nothing", *q))
    (empty / "model.safetensors").write_bytes((ws["model"] / "model.safetensors").read_bytes()[:1000])
    line = error_line(run_cli("--model", empty, *q))  # checked as run_squad.py checks its folders
    assert "model.safetensors is truncated or corrupt" in line and line.startswith("inference.py: error: --model")
    line = error_line(run_cli("--model", ws["model"], *q, "--length_config", "[10, 10]"))
    assert "--length_config" in line and "3 integers" in line
    no_questions = tmp_path / "none.json"
    no_questions.write_text(json.dumps({"data": [{"title": "t", "paragraphs": []}]}))
    assert "no questions" in error_line(run_cli("--model", ws["model"], "--input", no_questions,
                                                "--output", tmp_path / "p.json"))
    assert "empty question" in error_line(run_cli("--model", ws["model"], "--question", " ", "--context", "C."))
    assert "empty context" in error_line(run_cli("--model", ws["model"], "--question", "Q?", "--context", ""))
    assert not (tmp_path / "p.json").exists()


def test_cli_answers_a_file_without_gold_answers(ws, tmp_path):
    """Questions to answer need no "answers": the predictions equal those for the same file with
    its gold answers (which inference never reads)."""
    dev = ws["squad"] / "dev-v1.1.json"
    data = json.loads(dev.read_text())
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for i, qa in enumerate(paragraph["qas"]):
                if i % 2:
                    del qa["answers"]
                else:
                    qa["answers"] = []
    bare = tmp_path / "questions.json"
    bare.write_text(json.dumps(data))
    outputs = []
    for source in (dev, bare):
        out = tmp_path / f"{source.stem}.predictions.json"
        proc = run_cli("--model", ws["model"], "--input", source, "--output", out, *LENGTHS)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs.append(json.loads(out.read_text()))
    assert outputs[0] == outputs[1] and len(outputs[0]) > 3
    with pytest.raises(utils_squad.SquadFormatError, match="answers"):
        utils_squad.read_squad_examples(bare, is_training=False)  # evaluation still needs gold


def test_windows_default_to_the_ones_the_model_was_trained_with(ws, tmp_path):
    """A checkpoint's training_args.json gives the windows; a flag overrides one; a folder without
    it gets the reference's 384/128/64."""
    model = tmp_path / "trained"
    shutil.copytree(ws["model"], model)
    (model / "training_args.json").write_text(json.dumps({"max_seq_length": 96, "doc_stride": 24,
                                                          "max_query_length": 20, "learning_rate": 1e-4}))
    qa = inference.QuestionAnswerer.from_pretrained(model)
    assert (qa.max_seq_length, qa.doc_stride, qa.max_query_length) == (96, 24, 20)
    qa = inference.QuestionAnswerer.from_pretrained(model, doc_stride=16)
    assert (qa.max_seq_length, qa.doc_stride, qa.max_query_length) == (96, 16, 20)
    assert inference.window_settings(ws["model"]) == {"max_seq_length": 384, "doc_stride": 128,
                                                      "max_query_length": 64}
    # the window decides the features: a 100-token context is one feature at 384, several at 96
    context = " ".join(["the cat sat on the mat"] * 17)
    example = utils_squad.SquadExample("q", "", "where did the cat sit", context, [])
    assert len(qa.features([example])) > 1
    assert len(inference.QuestionAnswerer.from_pretrained(ws["model"]).features([example])) == 1
    (model / "training_args.json").write_text("{not json")
    with pytest.raises(inference.UsageError, match="training_args.json"):
        inference.QuestionAnswerer.from_pretrained(model)
