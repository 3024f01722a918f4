"""A model folder's tokenizer files, checked before anything loads, by inference.py (both paths)
and the API alike: a folder without tokenizer.json or vocab.txt, a tokenizer_config.json that is
JSON but not an object, a tokenizer whose ids run past the model's embeddings. Each is one line
naming the file and what was expected, exit 2, instead of answers from a tokenizer of special
tokens alone or a traceback from inside transformers, ONNX Runtime or ``torch.embedding``.

References: the files' own contents (ids counted from tokenizer.json by hand) and the model's
config.json."""
import json
import shutil

import pytest

import inference
from core.errors import UsageError
from helpers import make_tiny_tokenizer, save_tiny_bert, tiny_bert_config, tiny_squad_texts
from serving import api

SIZES = ["--max_seq_length", "64", "--doc_stride", "32"]
QUESTION = ["--question", "Who wrote it?", "--context", "The book was written by Anna in Paris."]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A tiny model with its tokenizer, and one whose embeddings are 10 rows short of the ids its
    tokenizer gives (a tokenizer copied from another model)."""
    root = tmp_path_factory.mktemp("tokenizers")
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    model = save_tiny_bert(root / "model", tiny_bert_config(len(tok), num_hidden_layers=2), seed=0, tokenizer=tok)
    short = save_tiny_bert(root / "short", tiny_bert_config(len(tok) - 10, num_hidden_layers=2), seed=0,
                           tokenizer=tok)
    return {"root": root, "model": model, "short": short, "tokens": len(tok)}


def variant(ws, tmp_path, how: str):
    folder = tmp_path / how
    shutil.copytree(ws["model"], folder)
    if how == "no_tokenizer_json":
        (folder / "tokenizer.json").unlink()
    elif how == "config_not_object":
        (folder / "tokenizer_config.json").write_text('["[PAD]", "[UNK]"]')
    elif how == "config_not_json":
        (folder / "tokenizer_config.json").write_text('{"do_lower_case": tr')
    return folder


@pytest.fixture
def nothing_loads(monkeypatch):
    """The refusal must come before the tokenizer, any weights or the ONNX file load."""
    def refuse(*args, **kwargs):
        raise AssertionError("loaded before the tokenizer files were checked")
    monkeypatch.setattr(api, "load_tokenizer", refuse)
    monkeypatch.setattr(api, "load_model_checked", refuse)
    monkeypatch.setattr(api.ort_backend, "OrtLogits", refuse)
    from serving import quick_answer
    monkeypatch.setattr(quick_answer, "load_backend", refuse)


def cli_error(capsys, *args) -> str:
    code = inference.main([str(a) for a in args])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("inference.py: error:"), captured.err[-3000:]
    assert captured.out == ""  # no answer
    return lines[0]


CASES = [("no_tokenizer_json", "no tokenizer there (tokenizer.json or vocab.txt)"),
         ("config_not_object", "tokenizer_config.json must hold a JSON object, got list"),
         ("config_not_json", "tokenizer_config.json is not a valid JSON file")]


@pytest.mark.parametrize("how, words", CASES)
@pytest.mark.parametrize("path", ["torch", "quick"])
def test_broken_tokenizer_files_are_one_line_before_anything_loads(ws, tmp_path, capsys, nothing_loads, how,
                                                                   words, path):
    folder = variant(ws, tmp_path, how)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not read: the tokenizer is refused first")
    backend = ["--backend", "onnxruntime", "--onnx", onnx] if path == "quick" else []
    line = cli_error(capsys, "--model", folder, *QUESTION, *SIZES, *backend)
    assert words in line and str(folder) in line, line


@pytest.mark.parametrize("how, words", CASES)
def test_the_api_refuses_the_same_folders(ws, tmp_path, nothing_loads, how, words):
    folder = variant(ws, tmp_path, how)
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        api.QuestionAnswerer.from_pretrained(folder, max_seq_length=64)


def tokenizer_json_ids(folder) -> int:
    """How many ids the folder's tokenizer.json gives (its vocabulary's and added tokens'), by hand."""
    spec = json.loads((folder / "tokenizer.json").read_text())
    ids = list(spec["model"]["vocab"].values()) + [t["id"] for t in spec["added_tokens"]]
    return max(ids) + 1


def test_a_tokenizer_larger_than_the_embeddings_is_one_line(ws, capsys, nothing_loads):
    embeddings = json.loads((ws["short"] / "config.json").read_text())["vocab_size"]
    assert tokenizer_json_ids(ws["short"]) == ws["tokens"] == embeddings + 10
    for backend in ([], ["--backend", "onnxruntime", "--onnx", ws["short"] / "model.safetensors"]):
        line = cli_error(capsys, "--model", ws["short"], *QUESTION, *SIZES, *backend)
        assert str(ws["short"] / "tokenizer.json") in line, line
        assert f"{ws['tokens']} tokens" in line and f"vocab_size {embeddings}" in line, line
    with pytest.raises(UsageError, match=f"{ws['tokens']} tokens .*vocab_size {embeddings}"):
        api.QuestionAnswerer.from_pretrained(ws["short"], max_seq_length=64)


def test_intact_and_vocab_txt_folders_still_answer(ws, tmp_path, capsys):
    """The checks refuse only what cannot work: the model's own folder answers, and so does one
    whose tokenizer is a vocab.txt alone (transformers builds the same WordPiece from it)."""
    expected = api.QuestionAnswerer.from_pretrained(ws["model"], max_seq_length=64).answer(*QUESTION[1::2])
    folder = tmp_path / "vocab_txt"
    shutil.copytree(ws["model"], folder)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    (folder / "tokenizer.json").unlink()
    assert api.QuestionAnswerer.from_pretrained(folder, max_seq_length=64).answer(*QUESTION[1::2]) == expected
    assert inference.main([str(a) for a in ["--model", folder, *QUESTION, *SIZES]]) == 0
    assert json.loads(capsys.readouterr().out) == expected
