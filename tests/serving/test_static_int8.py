"""Static int8 (``--int8 --int8_calibration FILE``): activation scales fixed from calibration
features (QDQ, no run-time range computation left in the graph), close to float32, recorded in the
file's metadata and the cache key, and refused for another model or configuration as dynamic files
are."""
import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest

import inference
from core.errors import UsageError
from helpers import TINY_SQUAD_DIR, make_tiny_tokenizer, run_inference_cli, save_tiny_bert, tiny_bert_config, \
    tiny_squad_texts
from serving.onnx import calibration as onnx_calibration
from serving.onnx import cache as onnx_cache
from serving.onnx import export as onnx_export
from serving.onnx.backend import load_metadata
from serving.onnx.int8 import Int8Settings, quantize_int8
from serving.settings import ServingSettings

WINDOW = {"max_seq_length": 128, "doc_stride": 32, "max_query_length": 64}
LENGTHS = ["--max_seq_length", "128", "--doc_stride", "32"]
TRAIN = TINY_SQUAD_DIR / "train-v1.1.json"
RELATIVE = (1.0, 0.6, 0.3)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("static-int8")
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    config = tiny_bert_config(len(tok), num_hidden_layers=3, max_position_embeddings=128)
    folder = save_tiny_bert(root / "model", config, seed=3, tokenizer=tok)
    other = save_tiny_bert(root / "other", config, seed=4, tokenizer=tok)  # same shape, other weights
    return {"root": root, "folder": folder, "other": other, "tok": inference.load_tokenizer(folder)}


def calibration_of(ws, count=24, seed=0, same_shape=False):
    return onnx_calibration.calibration_features(TRAIN, ws["tok"], count, **WINDOW, seed=seed, same_shape=same_shape)


def test_calibration_is_a_seeded_sample_of_the_file_in_sorted_batches(ws):
    a, b = calibration_of(ws), calibration_of(ws)
    assert a.sha256 == b.sha256 and a.count == 24
    assert sum(len(batch[0]) for batch in a.batches) == 24
    widths = [batch[0].shape[1] for batch in a.batches]
    assert widths == sorted(widths, reverse=True)  # longest first, each batch cut to its longest
    for ids, mask, types in a.batches:
        assert mask[:, -1].any() and ids.dtype == np.int64 and ((ids != 0) >= mask.astype(bool)).all()
    same = calibration_of(ws, same_shape=True)  # the histogram calibrators' batches
    assert {batch[0].shape for batch in same.batches} == {(1, 128)} and same.sha256 != a.sha256
    assert calibration_of(ws, seed=1).sha256 != a.sha256 and calibration_of(ws, count=23).sha256 != a.sha256
    with pytest.raises(UsageError, match="fewer than --int8_calibration_count 100000"):
        calibration_of(ws, count=100000)


def test_static_graph_has_fixed_scales_and_stays_close_to_float32(ws):
    """QuantizeLinear/DequantizeLinear with constant scales around each of the 6 linear layers per
    encoder layer, no DynamicQuantizeLinear; the QA head float32; the settings' key names the
    calibration; logits within a tenth of their spread of float32's, and not equal to them."""
    qa32 = inference.onnx_question_answerer(ws["folder"], RELATIVE, cache_dir=ws["root"] / "cache", **WINDOW)
    qa8 = inference.onnx_question_answerer(ws["folder"], RELATIVE, int8=True, int8_calibration=str(TRAIN),
                                           int8_calibration_count=24, cache_dir=ws["root"] / "cache", **WINDOW)
    path = qa8.provider.path
    proto = onnx.load(str(path))
    ops = [node.op_type for node in proto.graph.node]
    assert "DynamicQuantizeLinear" not in ops and "MatMulInteger" not in ops
    constants = {i.name for i in proto.graph.initializer}
    dequantized_weights = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants
                           and len(next(i for i in proto.graph.initializer if i.name == n.input[0]).dims) == 2]
    assert len(dequantized_weights) == 5 * 3  # the encoder's linear weights but the feed-forward output's, int8
    ffn_out = onnx_export.nodes_of_modules(proto, ["model.bert.encoder.layer.*[0-9].output.dense"])
    assert [n.op_type for n in proto.graph.node if n.name in ffn_out] == ["MatMul"] * 3  # float weights
    assert all(n.input[1] in constants for n in proto.graph.node if n.op_type == "QuantizeLinear")  # fixed scales
    meta = load_metadata(path)
    key = json.loads(meta.int8_settings)
    assert meta.precision == "int8" and key[3:6] == ["static", "minmax", 24]
    assert key[6] == calibration_of(ws).sha256
    features = qa32.features(inference.utils_squad.read_squad_examples(TINY_SQUAD_DIR / "dev-v1.1.json", False))
    real = np.asarray(features.attention_mask, dtype=bool)
    for f, q in zip(qa32.logits(features), qa8.logits(features)):
        diff = np.abs(f[real] - q[real])
        assert 0 < diff.mean() < 0.1 * f[real].std()


def test_static_needs_its_own_calibration(ws, tmp_path):
    fp32 = onnx_cache.exported_file(ws["folder"], None, cache_dir=tmp_path)
    calibration = calibration_of(ws)
    settings = Int8Settings(method="static", calibration_count=24, calibration_sha256=calibration.sha256)
    with pytest.raises(ValueError, match="needs the calibration features"):
        quantize_int8(fp32, tmp_path / "a.onnx", settings)
    with pytest.raises(ValueError, match="needs the calibration features"):
        quantize_int8(fp32, tmp_path / "a.onnx", settings, calibration_of(ws, seed=1))
    assert not (tmp_path / "a.onnx").exists()


def test_cache_holds_one_file_per_calibration(ws, tmp_path):
    """Asked again with the same calibration: the same file; another count or method: another."""
    def path(**flags):
        return inference.onnx_question_answerer(ws["folder"], int8=True, int8_calibration=str(TRAIN),
                                                cache_dir=tmp_path, **WINDOW, **flags).provider.path
    first = path(int8_calibration_count=24)
    assert path(int8_calibration_count=24) == first
    assert len({first, path(int8_calibration_count=20), path(int8_calibration_count=24,
                                                            int8_calibration_method="percentile")}) == 3
    dynamic = inference.onnx_question_answerer(ws["folder"], int8=True, cache_dir=tmp_path, **WINDOW).provider.path
    assert dynamic not in {first} and json.loads(load_metadata(dynamic).int8_settings)[3:] == []


def test_static_files_are_refused_for_another_model_or_configuration(ws, tmp_path, capsys):
    exported = tmp_path / "static.onnx"
    done = run_inference_cli("--model", ws["folder"], "--length_config", json.dumps(list(RELATIVE)), "--export_onnx",
                             exported, "--int8", "--int8_calibration", TRAIN, "--int8_calibration_count", 24, *LENGTHS)
    assert done.returncode == 0, done.stderr
    assert "(int8, " in done.stdout and json.loads(load_metadata(exported).int8_settings)[3] == "static"
    q = ["--question", "Who?", "--context", "Jane Austen wrote it.", *LENGTHS]
    other = run_inference_cli("--model", ws["other"], "--backend", "onnxruntime", "--onnx", exported, *q)
    assert other.returncode == 2 and "weights" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    config = run_inference_cli("--model", ws["folder"], "--backend", "onnxruntime", "--onnx", exported,
                               "--length_config", "[1.0, 0.5, 0.5]", *q)
    assert config.returncode == 2 and "length" in config.stderr
    ok = run_inference_cli("--model", ws["folder"], "--backend", "onnxruntime", "--onnx", exported, *q)
    assert ok.returncode == 0, ok.stderr
    # the same static settings run the file as it is; other ones are refused, not run as if they were its
    same = run_inference_cli("--model", ws["folder"], "--backend", "onnxruntime", "--onnx", exported, "--int8",
                             "--int8_calibration", TRAIN, "--int8_calibration_count", 24, *q)
    assert same.returncode == 0 and same.stdout == ok.stdout, same.stderr
    again = run_inference_cli("--model", ws["folder"], "--backend", "onnxruntime", "--onnx", exported, "--int8",
                              "--int8_calibration", TRAIN, "--int8_calibration_count", 20, *q)
    assert again.returncode == 2 and "already int8" in again.stderr


@pytest.mark.parametrize("flags, message", [
    (dict(int8_calibration=str(TRAIN)), "--int8_calibration calibrates static int8: it needs --int8"),
    (dict(int8=True, int8_calibration="no-such.json"), "--int8_calibration no-such.json: no such file"),
    (dict(int8=True, int8_calibration=str(TRAIN), int8_calibration_count=0), "--int8_calibration_count must be"),
    (dict(int8=True, int8_calibration=str(TRAIN), int8_calibration_method="kl"), "--int8_calibration_method must"),
    (dict(int8=True, int8_calibration_count=10), "--int8_calibration_count need --int8_calibration FILE"),
])
def test_bad_static_flags_are_refused_before_anything_loads(flags, message):
    with pytest.raises(UsageError, match=message):
        ServingSettings(**flags)


def test_static_flags_reach_the_settings():
    argv = ["--model", "m", "--int8", "--int8_calibration", str(TRAIN), "--int8_calibration_count", "64",
            "--int8_calibration_method", "entropy"]
    settings = ServingSettings.from_args(inference.build_parser().parse_args(argv))
    assert dataclasses.replace(settings.quantization(), calibration_sha256="x") == Int8Settings.static(
        calibration_method="entropy", calibration_count=64, calibration_sha256="x")
    plain = ServingSettings.from_args(inference.build_parser().parse_args(["--model", "m", "--int8"]))
    assert plain.quantization() == Int8Settings() and plain.quantization().method == "dynamic"


def test_an_edited_calibration_file_makes_another_file(ws, tmp_path):
    """The key holds the features' hash, not the file's name: the same name with other questions is
    another calibration."""
    train = tmp_path / "train.json"
    shutil.copy(TRAIN, train)
    first = calibration_of(ws).sha256
    data = json.loads(train.read_text())
    data["data"] = data["data"][::-1]
    train.write_text(json.dumps(data))
    assert onnx_calibration.calibration_features(train, ws["tok"], 24, **WINDOW).sha256 != first
