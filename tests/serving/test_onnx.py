"""ONNX export, the ONNX Runtime backend and int8 (onnx_export, ort_backend, onnx_cache, inference.py).

References are independent of the graph: the PyTorch model run eagerly (which decides per batch,
with concrete sizes, whether a layer drops), the full-length model where no layer may drop, and
keep counts computed here by hand from the fractions."""
import json
import shutil
import sys

import numpy as np
import onnx
import pytest
import torch

import inference
from serving.onnx import cache as onnx_cache
from serving.onnx import export as onnx_export
import utils_squad
from helpers import run_inference_cli as run_cli
from helpers import (TINY_SQUAD_DIR, SharedExports, make_tiny_tokenizer, require_minilm, save_tiny_bert,
                     seed_cache, tiny_bert_config, tiny_squad_texts)
from core.models import load_model
from serving.onnx.backend import OrtLogits

LENGTHS = ["--max_seq_length", "128", "--doc_stride", "32"]
ABSOLUTE = (60, 40, 30)
RELATIVE = (1.0, 0.6, 0.3)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The tiny data and a tiny 3-layer model, exported once per configuration when a test first
    asks (the run's shared store, so every worker and test_serving_faults.py use the same files)."""
    root = tmp_path_factory.mktemp("onnx")
    squad = root / "squad"
    shutil.copytree(TINY_SQUAD_DIR, squad, ignore=shutil.ignore_patterns("cached_*"))
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    config = tiny_bert_config(len(tok), num_hidden_layers=3, max_position_embeddings=128)
    folder = save_tiny_bert(root / "model", config, seed=3, tokenizer=tok)
    model = load_model(str(folder)).eval()
    exported = SharedExports({"full": (folder, None), "absolute": (folder, ABSOLUTE), "relative": (folder, RELATIVE)})
    return {"root": root, "squad": squad, "model_dir": folder, "model": model, "onnx": exported}


def random_batch(vocab_size, batch, width, seed):
    """Padded to its longest: row 0 is real throughout, the others random lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (batch,), generator=g)
    lengths[0] = width
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    ids = torch.randint(5, vocab_size, (batch, width), generator=g) * mask
    types = (torch.arange(width)[None] >= width // 3).long() * mask
    return ids, mask, types


def eager(model, batch, length_config):
    with torch.no_grad():
        out = model(input_ids=batch[0], attention_mask=batch[1], token_type_ids=batch[2], length_config=length_config)
    return out.start_logits.numpy(), out.end_logits.numpy()


def assert_close_on_real(got, expected, mask, atol):
    real = mask.bool().numpy()
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g[real], e[real], atol=atol, rtol=0)


def max_diff_on_real(got, expected, mask):
    real = mask.bool().numpy()
    return max(float(np.abs(g[real] - e[real]).max()) for g, e in zip(got, expected))


# ---- the graph ---------------------------------------------------------------------------------

# (batch, width): the export traced batch 2 x 64; widths below, between and above the counts
SHAPES = [(3, 100), (1, 128), (5, 50), (2, 35), (4, 20), (1, 1)]


@pytest.mark.parametrize("name, length_config", [("full", None), ("absolute", ABSOLUTE), ("relative", RELATIVE)])
def test_graph_equals_pytorch_at_other_batch_and_sequence_sizes(ws, name, length_config):
    provider = OrtLogits(ws["onnx"][name], threads=1)
    assert provider.length_config == length_config
    vocab = ws["model"].config.vocab_size
    for i, (size, width) in enumerate(SHAPES):
        batch = random_batch(vocab, size, width, seed=i)
        got = provider(*batch)
        assert got[0].shape == (size, width)
        assert_close_on_real(got, eager(ws["model"], batch, length_config), batch[1], atol=1e-5)


def test_absolute_counts_above_the_width_drop_nothing(ws):
    """Width 20 is below every count: the graph (traced at 64, where layers 1-2 drop) must give
    the full-length logits. At 100 every layer drops, so it must not."""
    provider = OrtLogits(ws["onnx"]["absolute"])
    model, vocab = ws["model"], ws["model"].config.vocab_size
    narrow = random_batch(vocab, 4, 20, seed=7)
    assert_close_on_real(provider(*narrow), eager(model, narrow, None), narrow[1], atol=1e-5)
    # width 35: layers 0 and 1 keep everything (35 <= 60, 40), layer 2 keeps 30
    middle = random_batch(vocab, 3, 35, seed=8)
    assert_close_on_real(provider(*middle), eager(model, middle, (35, 35, 30)), middle[1], atol=1e-5)
    assert max_diff_on_real(provider(*middle), eager(model, middle, None), middle[1]) > 1e-3
    wide = random_batch(vocab, 3, 100, seed=9)
    assert max_diff_on_real(provider(*wide), eager(model, wide, None), wide[1]) > 1e-3


def test_relative_fractions_resolve_against_each_examples_length(ws):
    """ceil(fraction * its own real length) tokens per example, computed here by hand, at widths
    the export never saw: each row's logits are those of the row run alone at its counts."""
    provider = OrtLogits(ws["onnx"]["relative"])
    for width in (97, 33, 7):
        batch = random_batch(ws["model"].config.vocab_size, 3, width, seed=width)
        got = provider(*batch)
        assert -(-round(RELATIVE[1] * 10) * width // 10) < width  # something is dropped
        for row, length in enumerate(batch[1].sum(1).tolist()):
            counts = tuple(-(-round(f * 10) * length // 10) for f in RELATIVE)  # ceil, in integers
            alone = tuple(t[row:row + 1, :length] for t in batch)
            want = eager(ws["model"], alone, counts)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g[row, :length], w[0], atol=1e-5, rtol=0)


def test_metadata_records_what_the_file_is(ws):
    meta = onnx_export.read_metadata(onnx.load(str(ws["onnx"]["relative"])))
    assert meta.length_config == RELATIVE and meta.precision == "fp32"
    assert (meta.num_hidden_layers, meta.vocab_size) == (3, ws["model"].config.vocab_size)
    onnx_export.check_length_config_of(meta, RELATIVE)
    for other in (None, (1.0, 0.6, 0.4), (1, 1, 1)):
        with pytest.raises(ValueError, match="exported at length configuration"):
            onnx_export.check_length_config_of(meta, other)
    graph = onnx.load(str(ws["onnx"]["absolute"])).graph
    assert [i.name for i in graph.input] == list(onnx_export.INPUT_NAMES)
    assert [o.name for o in graph.output] == list(onnx_export.OUTPUT_NAMES)
    for value in (*graph.input, *graph.output):  # both axes dynamic
        assert all(d.dim_param and not d.dim_value for d in value.type.tensor_type.shape.dim)


# ---- the ONNX Runtime backend --------------------------------------------------------------------

def test_onnxruntime_backend_gives_the_torch_backends_answers(ws):
    examples = utils_squad.read_squad_examples(ws["squad"] / "dev-v1.1.json", False)
    settings = dict(max_seq_length=128, doc_stride=32, batch_size=3)
    torch_qa = inference.QuestionAnswerer.from_pretrained(ws["model_dir"], RELATIVE, **settings)
    ort_qa = inference.QuestionAnswerer.from_pretrained(ws["model_dir"], RELATIVE, **settings, threads=1,
                                                        backend="onnxruntime", onnx_path=ws["onnx"]["relative"])
    assert ort_qa.model is None and ort_qa.length_config == RELATIVE
    features = torch_qa.features(examples)
    lengths = features.attention_mask.sum(1)
    assert lengths.min() < lengths.max() < 128  # batches of several widths
    expected, got = torch_qa.logits(features), ort_qa.logits(features)
    real = features.attention_mask.bool().numpy()
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g[real], e[real], atol=1e-5, rtol=0)
        assert np.array_equal(np.isneginf(g), np.isneginf(e))
    assert ort_qa.predict(examples)[0] == torch_qa.predict(examples)[0]
    pair = (examples[0].question, examples[0].context)
    assert ort_qa.answer(*pair) == pytest.approx(torch_qa.answer(*pair))


def test_cli_export_then_onnxruntime_predictions_equal_torch(ws, tmp_path):
    """At full length (half the export time; the int8 command-line test below exports a length
    configuration through the command line, and the graph tests above every configuration)."""
    path, dev = tmp_path / "full.onnx", ws["squad"] / "dev-v1.1.json"
    proc = run_cli("--model", ws["model_dir"], "--export_onnx", path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"wrote {path} (fp32, full length)"
    outputs = {}
    for backend in ("torch", "onnxruntime"):
        outputs[backend] = tmp_path / f"{backend}.json"
        extra = ["--onnx", path, "--threads", "1"] if backend == "onnxruntime" else []
        proc = run_cli("--model", ws["model_dir"], "--backend", backend, *extra, "--input", dev,
                       "--output", outputs[backend], *LENGTHS, "--batch_size", "3")
        assert proc.returncode == 0, proc.stderr[-3000:]
    expected = json.loads(outputs["torch"].read_text())
    assert json.loads(outputs["onnxruntime"].read_text()) == expected and len(expected) > 5


# ---- int8 ---------------------------------------------------------------------------------------

def test_int8_keeps_what_it_should_in_float32_and_stays_close(ws, tmp_path):
    path = tmp_path / "int8.onnx"
    meta = onnx_export.quantize_int8(ws["onnx"]["relative"], path)
    proto = onnx.load(str(path))
    assert meta.precision == "int8" == onnx_export.read_metadata(proto).precision
    ops = [node.op_type for node in proto.graph.node]
    # 6 linear layers per encoder layer in integer arithmetic, nothing else (attention matmuls float)
    assert ops.count("MatMulInteger") == 6 * 3 and "DynamicQuantizeLinear" in ops
    dims = {i.name: list(i.dims) for i in proto.graph.initializer}
    hidden = ws["model"].config.hidden_size
    weight_zero_points = [n.input[3] for n in proto.graph.node if n.op_type == "MatMulInteger"]
    assert all(dims[z] in ([hidden], [ws["model"].config.intermediate_size]) for z in weight_zero_points)  # per channel
    head = onnx_export.nodes_of_modules(proto, ["model.qa_outputs"])
    assert [n.op_type for n in proto.graph.node if n.name in head] == ["MatMul", "Add"]
    floats = {i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    tables = [n for n in proto.graph.node if n.op_type == "Gather"
              and n.name in onnx_export.nodes_of_modules(proto, ["model.bert.embeddings"])]
    assert len(tables) == 3 and all(n.input[0] in floats for n in tables)  # embeddings stay float32
    with pytest.raises(ValueError, match="already int8"):
        onnx_export.quantize_int8(path, tmp_path / "again.onnx")

    fp32, int8 = OrtLogits(ws["onnx"]["relative"]), OrtLogits(path)
    for i, (size, width) in enumerate([(4, 90), (3, 40)]):
        batch = random_batch(ws["model"].config.vocab_size, size, width, seed=20 + i)
        real = batch[1].bool().numpy()
        for f, q in zip(fp32(*batch), int8(*batch)):
            diff = np.abs(f[real] - q[real])
            assert 0 < diff.mean() < 0.1 * f[real].std() and diff.max() < 0.5 * f[real].std()

    examples = utils_squad.read_squad_examples(ws["squad"] / "dev-v1.1.json", False)
    tok = inference.load_tokenizer(ws["model_dir"])
    answers = [inference.QuestionAnswerer(provider, tok, max_seq_length=128, doc_stride=32).predict(examples)[0]
               for provider in (fp32, int8)]
    assert sum(answers[0][k] == answers[1][k] for k in answers[0]) >= 0.8 * len(answers[0])


@pytest.mark.long(30)
def test_int8_cli_with_either_backend_and_the_export_cache(ws, tmp_path, monkeypatch, capsys):
    """--int8 through inference.main, on either backend, and the export cache. The command line's
    int8 export quantises the shared store's float32 file of its configuration (the real export
    through the command line runs in test_cli_export_then_onnxruntime_predictions_equal_torch)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(cache))
    seed_cache(cache, ws["model_dir"], RELATIVE)  # the float32 export, as an earlier run left it
    dev = ws["squad"] / "dev-v1.1.json"
    config = json.dumps(list(RELATIVE))

    def main(*args):
        assert inference.main([str(a) for a in args]) == 0
        return capsys.readouterr()
    out = main("--model", ws["model_dir"], "--length_config", config, "--int8", "--input", dev,
               "--output", tmp_path / "torch_int8.json", *LENGTHS)
    assert f"--int8 runs an int8 ONNX Runtime copy of the model (exported once into {cache})" in out.err
    expected = json.loads((tmp_path / "torch_int8.json").read_text())
    cached = sorted(p.name for p in cache.glob("*.onnx"))
    assert len(cached) == 2 and sum(n.endswith("-int8.onnx") for n in cached) == 1  # fp32 export, int8 form
    assert all((cache / n).with_suffix(".json").is_file() for n in cached)  # each with its content record
    exported, export_calls = tmp_path / "int8.onnx", []

    def export_onnx(model, path, length_config=None):  # the shared store's export of this very config
        export_calls.append(length_config)
        shutil.copyfile(ws["onnx"]["relative"], path)
    with monkeypatch.context() as patch:  # the real export through the command line: the full-length test
        patch.setattr(onnx_export, "export_onnx", export_onnx)
        assert "(int8, " in main("--model", ws["model_dir"], "--length_config", config, "--export_onnx", exported,
                                 "--int8").out
    assert export_calls == [RELATIVE]  # the command line's configuration reached the exporter
    # an int8 file runs as it is; a float32 one with --int8 is quantised into the cache (keyed by its bytes)
    for onnx_file in (exported, ws["onnx"]["relative"]):
        main("--model", ws["model_dir"], "--backend", "onnxruntime", "--onnx", onnx_file, "--int8",
             "--input", dev, "--output", tmp_path / "ort_int8.json", *LENGTHS)
        assert json.loads((tmp_path / "ort_int8.json").read_text()) == expected
    added = sorted(set(p.name for p in cache.glob("*.onnx")) - set(cached))
    assert len(added) == 1 and added[0].endswith("-int8.onnx")
    # the API's cache: the same configuration is exported once
    first = onnx_cache.exported_file(ws["model_dir"], RELATIVE)
    mtime = first.stat().st_mtime_ns
    assert onnx_cache.exported_file(ws["model_dir"], RELATIVE) == first and first.stat().st_mtime_ns == mtime
    assert onnx_cache.exported_file(ws["model_dir"], RELATIVE, int8=True).name in cached
    seed_cache(cache, ws["model_dir"], ABSOLUTE)  # another configuration: another file
    assert onnx_cache.exported_file(ws["model_dir"], ABSOLUTE) != first
    qa = inference.onnx_question_answerer(ws["model_dir"], RELATIVE, int8=True, max_seq_length=128, doc_stride=32)
    assert qa.predict(utils_squad.read_squad_examples(dev, False))[0] == expected


# ---- the command line's errors --------------------------------------------------------------------

def cli_error(capsys, *args) -> str:
    assert inference.main([str(a) for a in args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("inference.py: error:"), captured.err[-3000:]
    return lines[0]


def test_cli_errors_are_one_line(ws, tmp_path, capsys):
    model, q = ws["model_dir"], ["--question", "Who?", "--context", "Someone.", *LENGTHS]
    assert "--backend onnxruntime needs --onnx" in cli_error(capsys, "--model", model, "--backend", "onnxruntime", *q)
    assert "no such file" in cli_error(capsys, "--model", model, "--backend", "onnxruntime",
                                       "--onnx", tmp_path / "missing.onnx", *q)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(ws["onnx"]["full"].read_bytes()[:5000])
    line = cli_error(capsys, "--model", model, "--backend", "onnxruntime", "--onnx", corrupt, *q)
    assert str(corrupt) in line and "not an ONNX file" in line
    foreign = tmp_path / "foreign.onnx"  # valid ONNX, not ours
    onnx.save_model(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(foreign))
    assert "no dynamic_tinybert metadata" in cli_error(capsys, "--model", model, "--backend", "onnxruntime",
                                                       "--onnx", foreign, *q)
    line = cli_error(capsys, "--model", model, "--length_config", "[10, 10]", "--export_onnx", tmp_path / "x.onnx")
    assert "--length_config" in line and "3 integers" in line and not (tmp_path / "x.onnx").exists()
    line = cli_error(capsys, "--model", model, "--backend", "onnxruntime", "--onnx", ws["onnx"]["relative"],
                     "--length_config", "[1.0, 0.6, 0.4]", *q)
    assert "exported at length configuration [1.0, 0.6, 0.3], not [1.0, 0.6, 0.4]" in line
    assert "--onnx needs --backend onnxruntime" in cli_error(capsys, "--model", model, "--onnx",
                                                             ws["onnx"]["full"], *q)
    line = cli_error(capsys, "--model", model, "--int8", "--device", "cuda", *q)
    assert ("drop --device cuda" if torch.cuda.is_available() else "this torch has no CUDA device") in line
    assert "answers nothing" in cli_error(capsys, "--model", model, "--export_onnx", tmp_path / "y.onnx", *q)
    assert "drop --pad_to_max_length" in cli_error(capsys, "--model", model, "--backend", "onnxruntime",
                                                   "--onnx", ws["onnx"]["relative"], "--pad_to_max_length", *q)
    assert "is a folder" in cli_error(capsys, "--model", model, "--export_onnx", tmp_path)
    other = tmp_path / "other"  # a model of another shape than the file's
    tok = make_tiny_tokenizer(other, tiny_squad_texts())
    save_tiny_bert(other, tiny_bert_config(len(tok), num_hidden_layers=2), tokenizer=tok)
    assert "num_hidden_layers 3, but --model has 2" in cli_error(
        capsys, "--model", other, "--backend", "onnxruntime", "--onnx", ws["onnx"]["full"], *q)


# ---- real weights ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, length_config", [("full", None),
                                                  ("absolute", (150, 120, 80)),
                                                  ("relative", (1.0, 0.8, 0.5))])
@pytest.mark.long(25)
def test_minilm_graphs_equal_pytorch_within_1e_4(tmp_path, name, length_config):
    """all-MiniLM-L6-v2's first 3 layers (real weights, 384 wide; QA head seeded; every layer adds
    seconds to an export), real SQuAD text, batches of sizes and widths the export never saw, full
    length and an absolute and a relative configuration. One export each, so that test workers
    share them."""
    folder = require_minilm()
    torch.manual_seed(0)
    model = load_model(str(folder), num_hidden_layers=3).eval()
    assert model.config.num_hidden_layers == 3
    tok = inference.load_tokenizer(folder)
    tiny = utils_squad.read_squad_examples(TINY_SQUAD_DIR / "dev-v1.1.json", False)
    contexts = list(dict.fromkeys(e.context for e in tiny))
    examples = [utils_squad.SquadExample(str(i), "", e.question, " ".join(contexts[i % 3:i % 3 + i % 4 + 1]), [])
                for i, e in enumerate(tiny)]  # contexts of 1 to 4 paragraphs
    features = utils_squad.convert_examples_to_features(examples, tok, 192, 64, 64, False)
    lengths = features.attention_mask.sum(1)
    order = torch.argsort(-lengths, stable=True).tolist()
    batches = []
    for first, size in ((0, 3), (len(order) // 2, 1), (len(order) - 5, 5)):  # each padded to its longest
        index = order[first:first + size]
        width = int(lengths[index].max())
        batches.append(tuple(t[index, :width] for t in (features.input_ids, features.attention_mask,
                                                          features.token_type_ids)))
    widths = [b[0].shape[1] for b in batches]
    assert len(set(widths)) == 3 and min(widths) < 120 < max(widths), widths
    path = tmp_path / f"{name}.onnx"
    onnx_export.export_onnx(model, path, length_config)
    provider = OrtLogits(path)
    for batch in batches:
        assert_close_on_real(provider(*batch), eager(model, batch, length_config), batch[1], atol=1e-4)
    if name in INT8_BOUNDS:  # int8 of real weights: close to float32, relative to the logits' spread
        onnx_export.quantize_int8(path, tmp_path / f"{name}-int8.onnx")
        int8 = OrtLogits(tmp_path / f"{name}-int8.onnx")
        errors, spreads = [], []
        for batch in batches:
            real = batch[1].bool().numpy()
            for f, q in zip(provider(*batch), int8(*batch)):
                errors.append(np.abs(f[real] - q[real]).mean())
                spreads.append(f[real].std())
        assert 0 < np.mean(errors) < INT8_BOUNDS[name] * np.mean(spreads)


# mean |int8 - fp32| logit over the logits' spread, on MiniLM's first 3 layers: measured 0.11 at full
# length and 0.14 at the relative configuration (int8 also changes some kept tokens); on all 6
# layers 0.12 and 0.19, with per-tensor scales 0.29 / 0.38
INT8_BOUNDS = {"full": 0.2, "relative": 0.3}


def test_full_length_export_is_fused_for_onnxruntime(ws, tmp_path):
    """Every attention of the full-length graph is one MultiHeadAttention node and every residual
    LayerNorm a SkipLayerNormalization (the fusions that make it no slower than transformers'
    TorchScript export); fuse=False keeps the exporter's plain ops, with the same logits."""
    ops = [n.op_type for n in onnx.load(str(ws["onnx"]["full"])).graph.node]
    assert ops.count("MultiHeadAttention") == 3 and ops.count("SkipLayerNormalization") == 6
    plain = tmp_path / "plain.onnx"
    onnx_export.export_onnx(ws["model"], plain, None, fuse=False)
    assert "MultiHeadAttention" not in [n.op_type for n in onnx.load(str(plain)).graph.node]
    batch = random_batch(ws["model"].config.vocab_size, 3, 40, seed=11)
    assert_close_on_real(OrtLogits(ws["onnx"]["full"])(*batch), OrtLogits(plain)(*batch), batch[1], atol=1e-5)


# ---- one answer without torch (quick_answer) ------------------------------------------------------

def quick_pairs(squad) -> list[tuple[str, str]]:
    """The tiny dev questions, plus a context four times as long (several windows at 128/32) and a
    question longer than max_query_length (cut to its first 64 tokens)."""
    examples = utils_squad.read_squad_examples(squad / "dev-v1.1.json", is_training=False)
    pairs = [(e.question, e.context) for e in examples[:6]]
    long_context = " ".join([examples[0].context] * 4)
    return pairs + [(examples[0].question, long_context), (" ".join([examples[1].question] * 12), examples[1].context)]


@pytest.mark.parametrize("name", ["full", "absolute", "relative"])
def test_quick_answer_is_the_question_answerers(ws, name):
    """quick_answer (tokenizers + ONNX Runtime + numpy) gives QuestionAnswerer's answers on the same
    ONNX file exactly: same windows, batches, logits and n-best, at every configuration."""
    from serving import quick_answer

    window = {"max_seq_length": 128, "doc_stride": 32, "max_query_length": 64}
    qa = inference.QuestionAnswerer.from_pretrained(ws["model_dir"], backend="onnxruntime",
                                                    onnx_path=ws["onnx"][name], **window)
    pairs = quick_pairs(ws["squad"])
    assert len(qa.features([utils_squad.SquadExample("x", "", *pairs[-2], [])])) >= 3  # several windows
    for question, context in pairs:
        got = quick_answer.answer(ws["model_dir"], ws["onnx"][name], question, context, **window)
        assert got is not None and got == qa.answer(question, context)


def test_quick_answer_command_imports_neither_torch_nor_transformers(ws):
    """`inference.py --backend onnxruntime --onnx F --question Q --context C`, in a fresh process,
    answers as QuestionAnswerer does and never imports torch or transformers."""
    import subprocess

    question, context = quick_pairs(ws["squad"])[-2]
    code = ("import json, sys; import inference; rc = inference.main(sys.argv[1:]); "
            "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)), file=sys.stderr); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "--model", str(ws["model_dir"]), "--backend", "onnxruntime",
                           "--onnx", str(ws["onnx"]["relative"]), "--question", question, "--context", context,
                           *LENGTHS], capture_output=True, text=True, cwd=str(inference.Path(inference.__file__).parent))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    qa = inference.QuestionAnswerer.from_pretrained(ws["model_dir"], backend="onnxruntime",
                                                    onnx_path=ws["onnx"]["relative"], max_seq_length=128, doc_stride=32)
    assert json.loads(proc.stdout) == qa.answer(question, context)


def test_quick_answer_leaves_other_weights_and_tokenizers_to_the_full_path(ws, tmp_path, capsys):
    """Where quick_answer cannot vouch for QuestionAnswerer's answer it returns None: weights other
    than the file's (the command line then says so, from the full path), a folder without
    tokenizer.json."""
    from serving import quick_answer

    window = {"max_seq_length": 128, "doc_stride": 32, "max_query_length": 64}
    question, context = quick_pairs(ws["squad"])[0]
    retrained = tmp_path / "retrained"  # same shape and tokenizer, other weights
    shutil.copytree(ws["model_dir"], retrained)
    save_tiny_bert(retrained, load_model(str(ws["model_dir"])).config, seed=4)
    assert quick_answer.answer(retrained, ws["onnx"]["full"], question, context, **window) is None
    capsys.readouterr()  # the saving's progress bars
    line = cli_error(capsys, "--model", retrained, "--backend", "onnxruntime", "--onnx", ws["onnx"]["full"],
                     "--question", question, "--context", context, *LENGTHS)
    assert "other weights" in line
    no_tokenizer_json = tmp_path / "no_tokenizer_json"
    shutil.copytree(ws["model_dir"], no_tokenizer_json)
    (no_tokenizer_json / "tokenizer.json").unlink()
    assert quick_answer.answer(no_tokenizer_json, ws["onnx"]["full"], question, context, **window) is None


def test_safetensors_hash_is_the_models_weights_sha256(ws):
    """The hash quick_answer reads from model.safetensors without torch equals
    core.hashing.weights_sha256 of the loaded model (what an export records): the tiny model and the
    real all-MiniLM-L6-v2 (with its QA head, as saved by save_pretrained)."""
    from core import hashing
    from core.hashing import weights_sha256

    folder = ws["model_dir"]
    assert hashing.safetensors_weights_sha256(folder / "model.safetensors") == weights_sha256(ws["model"])
    minilm = require_minilm()
    model = load_model(str(minilm))
    saved = ws["root"] / "minilm-qa"
    model.save_pretrained(saved)
    assert hashing.safetensors_weights_sha256(saved / "model.safetensors") == weights_sha256(model)


def test_raw_tokenizer_json_gives_transformers_windows_on_minilm(ws):
    """windows.encode_windows on all-MiniLM-L6-v2's tokenizer.json loaded by tokenizers alone (as
    quick_answer loads it) equals utils_squad's features from transformers' tokenizer, on the tiny
    data and, where present, the first 300 real dev questions."""
    from tokenizers import Tokenizer

    from serving import quick_answer
    from core import windows
    from helpers import SHARED_SQUAD_DIR
    from core.models import load_tokenizer

    folder = require_minilm()
    tokenizer = load_tokenizer(folder)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    pad_id = quick_answer.pad_token_id(folder, raw)
    assert pad_id == tokenizer.pad_token_id
    examples = utils_squad.read_squad_examples(ws["squad"] / "dev-v1.1.json", is_training=False)
    if (SHARED_SQUAD_DIR / "dev-v1.1.json").is_file():
        examples += utils_squad.read_squad_examples(SHARED_SQUAD_DIR / "dev-v1.1.json", is_training=False)[:300]
    for lengths in ((384, 128, 64), (128, 32, 16)):
        features = utils_squad.convert_examples_to_features(examples, tokenizer, *lengths)
        arrays = windows.encode_windows(raw, [e.question for e in examples], [e.context for e in examples],
                                        *lengths, pad_id)
        for name in ("input_ids", "attention_mask", "token_type_ids", "example_index"):
            np.testing.assert_array_equal(arrays[name], getattr(features, name).numpy())
        starts, ends = features.context_offsets()
        np.testing.assert_array_equal(arrays["starts"], starts)
        np.testing.assert_array_equal(arrays["ends"], ends)
