"""The learned drop criterion on every serving path: the ONNX graph holds the token scorers and
their top-k (checked against the PyTorch model, itself checked against transformers in
tests/paper/test_learned_criterion.py), the torch-free quick path hashes the scorers with the
weights, and an ONNX file or a length menu made with one criterion is refused for the other."""
import json
import shutil

import numpy as np
import pytest
import torch

import inference
import utils_squad
from core import hashing
from core.checks import SCORERS_FILE, token_selection
from core.errors import UsageError
from core.hashing import weights_sha256
from core.models import load_model
from helpers import TINY_SQUAD_DIR, make_tiny_tokenizer, save_learned_tiny_bert, tiny_squad_texts
from serving import menu as length_menu
from serving import quick_answer
from serving.onnx import backend as ort_backend
from serving.onnx import cache as onnx_cache
from serving.onnx.export import export_onnx

RELATIVE = (1.0, 0.6, 0.3)
WINDOW = {"max_seq_length": 128, "doc_stride": 32, "max_query_length": 64}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("learned-onnx")
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    folders = {before: save_learned_tiny_bert(root, tok, before) for before in (False, True)}
    # the question-aware scorer reading each layer's attention output
    folders["bilinear"] = save_learned_tiny_bert(root, tok, name="bilinear", token_scorer="bilinear",
                                                 token_scorer_input="attention_output")
    models = {before: load_model(str(folder)).eval() for before, folder in folders.items()}
    assert all(m.drop_criterion == "learned" for m in models.values())
    onnx = {}
    for before, model in models.items():
        onnx[before] = root / f"learned-{before}.onnx"
        export_onnx(model, onnx[before], RELATIVE)
    return {"root": root, "folders": folders, "models": models, "onnx": onnx}


def random_batch(vocab_size, batch, width, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (batch,), generator=g)
    lengths[0] = width
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    ids = torch.randint(5, vocab_size, (batch, width), generator=g) * mask
    types = (torch.arange(width)[None] >= width // 3).long() * mask
    return ids, mask, types


@pytest.mark.parametrize("before", [False, True, "bilinear"])
def test_graph_holds_the_scorers_and_their_selection(ws, before):
    """The exported graph gives the PyTorch model's logits at widths and batch sizes it was not
    traced at (each example keeps its own share), and those differ from full length: the graph
    does select. A graph that ranked by attention, or ignored the scorers, would differ."""
    model, provider = ws["models"][before], ort_backend.OrtLogits(ws["onnx"][before], threads=1)
    want_selection = {"drop_criterion": "learned", "select_before_attention": before is True}
    if before == "bilinear":
        want_selection["token_scorer_input"] = "attention_output"
    assert provider.metadata.selection == want_selection
    for i, (size, width) in enumerate([(3, 100), (1, 37), (4, 20)]):
        batch = random_batch(model.config.vocab_size, size, width, seed=i)
        got = provider(*batch)
        with torch.no_grad():
            want = model(input_ids=batch[0], attention_mask=batch[1], token_type_ids=batch[2], length_config=RELATIVE)
            full = model(input_ids=batch[0], attention_mask=batch[1], token_type_ids=batch[2])
        real = batch[1].bool().numpy()
        np.testing.assert_allclose(got[0][real], want.start_logits.numpy()[real], atol=1e-5, rtol=0)
        np.testing.assert_allclose(got[1][real], want.end_logits.numpy()[real], atol=1e-5, rtol=0)
        assert np.abs(got[0][real] - full.start_logits.numpy()[real]).max() > 1e-3


def test_quick_path_hashes_the_scorers_with_the_weights(ws):
    """Without torch, the hash of model.safetensors and the scorers' file together is the loaded
    model's weights_sha256 (what the export records); model.safetensors alone is not. So the
    quick path answers a learned model, and gives QuestionAnswerer's answer."""
    folder, model = ws["folders"][False], ws["models"][False]
    both = hashing.safetensors_weights_sha256(folder / "model.safetensors", folder / SCORERS_FILE)
    assert both == weights_sha256(model)
    assert hashing.safetensors_weights_sha256(folder / "model.safetensors") != both
    assert hashing.safetensors_weights_sha256(folder / SCORERS_FILE, folder / SCORERS_FILE) is None  # names twice

    examples = utils_squad.read_squad_examples(TINY_SQUAD_DIR / "dev-v1.1.json", is_training=False)
    qa = inference.QuestionAnswerer.from_pretrained(folder, backend="onnxruntime", onnx_path=ws["onnx"][False],
                                                    **WINDOW)
    for example in examples[:4]:
        got = quick_answer.answer(folder, ws["onnx"][False], example.question, example.context, **WINDOW)
        assert got is not None and got == qa.answer(example.question, example.context)


def test_onnx_file_of_one_criterion_is_refused_for_the_other(ws, tmp_path):
    """The same weights with config.json saying the paper's criterion: the learned file is refused
    naming both criteria, and a file selecting after attention is refused for a model that
    selects before it."""
    attention = tmp_path / "attention"
    shutil.copytree(ws["folders"][False], attention)
    config = json.loads((attention / "config.json").read_text())
    (attention / "config.json").write_text(json.dumps({**config, "drop_criterion": "attention"}))
    with pytest.raises(UsageError, match="exported with the learned drop criterion, but --model's config.json "
                                         "asks for the attention drop criterion"):
        inference.QuestionAnswerer.from_pretrained(attention, backend="onnxruntime", onnx_path=ws["onnx"][False],
                                                   **WINDOW)
    with pytest.raises(UsageError, match=r"selecting before attention"):
        inference.QuestionAnswerer.from_pretrained(ws["folders"][True], backend="onnxruntime",
                                                   onnx_path=ws["onnx"][False], **WINDOW)


def test_onnx_file_of_scorers_reading_the_layer_input_refused_for_attention_output(ws, tmp_path):
    """The same weights with config.json saying the scorers read the attention output: the file,
    exported with scorers reading each layer's input, is refused naming both."""
    folder = tmp_path / "reads-attention"
    shutil.copytree(ws["folders"][False], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "token_scorer_input": "attention_output"}))
    with pytest.raises(UsageError, match="scorers reading the attention output"):
        inference.QuestionAnswerer.from_pretrained(folder, backend="onnxruntime", onnx_path=ws["onnx"][False],
                                                   **WINDOW)


def test_cache_fingerprint_covers_the_scorers(ws, tmp_path):
    """Scorers fitted again in place make another cache key (the export holds them)."""
    folder = tmp_path / "refit"
    shutil.copytree(ws["folders"][False], folder)
    before = onnx_cache.folder_fingerprint(folder)
    model = load_model(str(folder))
    with torch.no_grad():
        model.bert.encoder.token_scorers[1].net.bias.add_(1.0)
    model.save_pretrained(folder)
    assert onnx_cache.folder_fingerprint(folder) != before


def menu_of(selection: dict | None) -> dict:
    entry = {"length_config": [1.0, 1.0, 1.0], "f1": 80.0, "exact_match": 70.0, "macs_ratio": 1.0,
             "measured_speedup": None, "speedup": 1.0, "eval_seconds": 1.0, "source": "full"}
    fast = dict(entry, length_config=[1.0, 0.6, 0.3], f1=78.0, macs_ratio=1.6, speedup=1.6, source="optuna")
    menu = {"format": "dynamic-tinybert-length-menu", "version": 1, "length_space": "relative",
            "speedup_basis": "macs_ratio", "batching": "sorted", "batch_size": 32, "max_seq_length": 128,
            "num_hidden_layers": 3, "questions": 10, "full": entry, "configurations": [entry, fast]}
    return {**menu, **(selection or {})}


def test_menu_of_one_criterion_is_refused_for_the_other(tmp_path):
    """A menu records the criterion it was searched with; one of the other criterion is refused
    before any weights load, and a menu that says nothing is the paper's criterion's."""
    learned = {"drop_criterion": "learned", "select_before_attention": False}
    attention = token_selection({})
    path = tmp_path / "length_configs.json"
    path.write_text(json.dumps(menu_of(learned)))
    assert length_menu.pick(tmp_path, 3, speedup=1.5, selection=learned).entry.length_config == (1.0, 0.6, 0.3)
    with pytest.raises(UsageError, match="searched with the learned drop criterion, but the model's config.json "
                                         "asks for the attention drop criterion"):
        length_menu.pick(tmp_path, 3, speedup=1.5, selection=attention)
    path.write_text(json.dumps(menu_of(None)))
    assert length_menu.load_menu(path, 3).selection == attention
    with pytest.raises(UsageError, match="searched with the attention drop criterion"):
        length_menu.pick(tmp_path, 3, speedup=1.5, selection=learned)
    path.write_text(json.dumps(menu_of({"drop_criterion": "entropy"})))
    with pytest.raises(UsageError, match="drop_criterion"):
        length_menu.load_menu(path, 3)


def test_menu_writer_records_the_criterion():
    from search.menu import build_menu

    rows = [{"length_config": [1.0, 1.0, 1.0], "f1": 80.0, "exact_match": 70.0, "macs_ratio": 1.0,
             "eval_seconds": 1.0, "backend": "full", "questions": 10}]
    info = {"length_space": "relative", "batching": "sorted", "batch_size": 32, "max_seq_length": 128,
            "num_hidden_layers": 3, "drop_criterion": "learned", "select_before_attention": True}
    menu = build_menu(rows, (1.0, 1.0, 1.0), info)
    assert (menu["drop_criterion"], menu["select_before_attention"]) == ("learned", True)
    info.pop("drop_criterion"), info.pop("select_before_attention")
    assert build_menu(rows, (1.0, 1.0, 1.0), info)["drop_criterion"] == "attention"
