"""The serving side (inference.py, ONNX export, cache and ONNX Runtime, the length menu) under bad
input and faults: nothing clobbered, nothing silently wrong, one error line naming the flag.

References are independent of the code under test: the PyTorch model's own logits, files' bytes
and kinds as the operating system reports them, and hand-written menus."""
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
import torch

from core import files
import inference
import length_drop
from serving.onnx import cache as onnx_cache
from serving.onnx import export as onnx_export
from core.errors import UsageError
from helpers import (REPO_ROOT, TINY_SQUAD_DIR, SharedExports, make_tiny_tokenizer, save_tiny_bert, seed_cache,
                     shared_export, tiny_bert_config, tiny_squad_texts)
from core.models import load_model
from serving.onnx.backend import OrtLogits
from search_helpers import MENU

CONFIG = (60, 40, 30)
SIZES = ["--max_seq_length", "128", "--doc_stride", "32"]
QUESTION = ["--question", "Who wrote it?", "--context", "The book was written by Anna in Paris."]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A tiny 3-layer model, a second one of the same shape (other weights), each exported once
    when a test first asks (the run's shared store: test_onnx.py exports the same model at the
    same configuration)."""
    root = tmp_path_factory.mktemp("serving")
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    config = tiny_bert_config(len(tok), num_hidden_layers=3, max_position_embeddings=128)
    folder = save_tiny_bert(root / "model", config, seed=3, tokenizer=tok)
    other = save_tiny_bert(root / "other", config, seed=4, tokenizer=tok)
    # the other weights at full length: which configuration that file holds does not matter to the
    # test that refuses it, and a full-length export takes half the time
    exported = SharedExports({"model": (folder, CONFIG), "other": (other, None)})
    return {"root": root, "model_dir": folder, "other_dir": other, "onnx": exported,
            "dev": TINY_SQUAD_DIR / "dev-v1.1.json"}


@pytest.fixture
def nothing_loads(monkeypatch):
    """Errors must come before any weights or data load."""
    def refuse(*args, **kwargs):
        raise AssertionError("loaded before the flags were checked")
    monkeypatch.setattr(inference, "load_model_checked", refuse)
    monkeypatch.setattr(inference.QuestionAnswerer, "from_pretrained", refuse)
    monkeypatch.setattr(inference.utils_squad, "read_squad_examples", refuse)


def cli_error(capsys, *args) -> str:
    code = inference.main([str(a) for a in args])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("inference.py: error:"), captured.err[-3000:]
    return lines[0]


def torch_logits(folder, batch, length_config=CONFIG):
    model = load_model(str(folder)).eval()
    with torch.no_grad():
        out = model(input_ids=batch[0], attention_mask=batch[1], token_type_ids=batch[2], length_config=length_config)
    return out.start_logits.numpy(), out.end_logits.numpy()


def a_batch(vocab_size=60, width=40):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (2, width), generator=g)
    return ids, torch.ones(2, width, dtype=torch.long), (torch.arange(width) >= 10).long().expand(2, width)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- output is never clobbered or lost ----------------------------------------------------------

def test_outputs_that_are_not_regular_files_are_refused_before_any_work(ws, tmp_path, capsys, nothing_loads):
    fifo = tmp_path / "pipe"  # stands for /dev/null and /dev/stdout, which are no regular files
    os.mkfifo(fifo)
    target = tmp_path / "kept.json"
    target.write_text("kept")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    under_file = target / "p.json"
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)  # mode bits: refused even for root
    dev = tmp_path / "dev.json"
    dev.write_text(ws["dev"].read_text())
    cases = [(fifo, "not a regular file"), (link, "is a link"), (tmp_path, "is a folder"),
             (under_file, "is not a folder"), (read_only / "p.json", "is not writable"),
             (dev, "is the input file")]
    for output, words in cases:
        line = cli_error(capsys, "--model", ws["model_dir"], "--input", dev, "--output", output, *SIZES)
        assert f"--output {output}" in line and words in line, line
    for output, words in cases[:2]:
        line = cli_error(capsys, "--model", ws["model_dir"], "--export_onnx", output, *SIZES)
        assert f"--export_onnx {output}" in line and words in line, line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink() and target.read_text() == "kept"
    assert dev.read_text() == ws["dev"].read_text() and list(read_only.iterdir()) == []
    with pytest.raises(FileExistsError):  # the last guard, for any writer
        files.atomic_write_json(fifo, {})
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_question_with_output_writes_the_answer_there(ws, tmp_path, capsys):
    assert inference.main([str(a) for a in ("--model", ws["model_dir"], *QUESTION, *SIZES)]) == 0
    printed = json.loads(capsys.readouterr().out)
    out = tmp_path / "answer.json"
    assert inference.main([str(a) for a in ("--model", ws["model_dir"], *QUESTION, *SIZES, "--output", out)]) == 0
    assert capsys.readouterr().out == "" and json.loads(out.read_text()) == printed
    context = QUESTION[3]
    assert context[printed["start"]:printed["end"]] == printed["answer"]


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)  # a process that has ended (kill -9 leaves the same)
    target = tmp_path / "p.json"
    stale = tmp_path / f".p.json.{dead_pid}.abc123.tmp"
    live = tmp_path / f".p.json.{os.getpid()}.def456.tmp"  # a writer still running: kept
    other = tmp_path / f".q.json.{dead_pid}.abc123.tmp"    # another file's: not this write's business
    for path in (stale, live, other):
        path.write_text("half")
    files.atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert not stale.exists() and live.exists() and other.exists()


def test_an_unwritable_place_is_not_called_a_full_disk(tmp_path):
    assert not files.is_disk_full(PermissionError(errno.EACCES, "Permission denied"), "/proc/x")
    assert not files.is_disk_full(RuntimeError("unexpected pos 64"), "/proc/self/x")  # size 0: no disk at all
    with pytest.raises(UsageError, match="cannot write"):
        files.writing("/proc", "--output /proc/p.json", lambda: files.atomic_write_json("/proc/p.json", {}))
    assert files.output_problem("/proc/p.json") == "/proc is not writable"


# ---- cached and exported files are checked before use ------------------------------------------

def test_an_edited_or_truncated_cache_file_is_rebuilt_with_a_warning(ws, tmp_path, caplog, monkeypatch):
    """At full length: which configuration is cached does not matter here. The rebuilds go through
    the cache's own export call, which copies the run's shared export of the same model (the real
    export into a cache runs in every test that asks the shared store for a file)."""
    cache = tmp_path / "cache"
    seed_cache(cache, ws["model_dir"])
    path = onnx_cache.exported_file(ws["model_dir"], cache_dir=cache)
    batch = a_batch()
    expected = torch_logits(ws["model_dir"], batch, None)
    proto = onnx.load(str(path))
    head = next(i for i in proto.graph.initializer if len(i.dims) == 2 and i.raw_data)  # a weight matrix
    data = bytearray(path.read_bytes())
    raw = bytes(head.raw_data)
    at = bytes(data).find(raw)
    assert at > 0
    data[at:at + len(raw)] = bytes(len(raw))  # a weight matrix zeroed: valid ONNX, same size
    path.write_bytes(bytes(data))
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    edited = session.run(None, {name: t.numpy() for name, t in zip(onnx_export.INPUT_NAMES, batch)})
    assert not np.allclose(edited[0], expected[0], atol=1e-3)  # would answer wrongly if used
    with pytest.raises(UsageError, match="edited after export"):  # and is never run as it is
        OrtLogits(path)
    pristine, exports = shared_export(ws["model_dir"]), []

    def export_onnx(model, destination, length_config=None):
        exports.append(length_config)
        shutil.copyfile(pristine, destination)
    monkeypatch.setattr(onnx_export, "export_onnx", export_onnx)
    for damage in ("edited", "truncated"):
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:5000])
        with caplog.at_level(logging.WARNING, logger="onnx_cache"):
            again = onnx_cache.exported_file(ws["model_dir"], cache_dir=cache)
        assert again == path and "building it again" in caplog.text
        caplog.clear()
        for got, want in zip(OrtLogits(again)(*batch), expected):
            np.testing.assert_allclose(got, want, atol=1e-4)
    assert exports == [None, None]  # one rebuild per damage, at full length
    assert onnx_cache.exported_file(ws["model_dir"], cache_dir=cache) == path and len(exports) == 2  # whole now


def test_one_cache_file_per_key_with_concurrent_writers(tmp_path):
    """Two writers of one key: the second waits for the first and uses its file (one build)."""
    builds = []

    def build(path):
        builds.append(path)
        time.sleep(0.3)  # long enough for the other writer to arrive
        path.write_bytes(b"x" * 10)

    threads = [threading.Thread(target=onnx_cache._cached, args=(tmp_path, "k", build, {})) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.json", "k.lock", "k.onnx"]


def test_the_int8_file_is_keyed_by_what_it_is_made_from_not_the_float32_bytes(ws, tmp_path):
    cache = tmp_path / "cache"
    seed_cache(cache, ws["model_dir"], int8=True)  # full length, as an earlier run left it
    int8 = onnx_cache.exported_file(ws["model_dir"], int8=True, cache_dir=cache)
    fp32 = onnx_cache.exported_file(ws["model_dir"], cache_dir=cache)
    assert sorted(p.name for p in cache.glob("*.onnx")) == sorted([int8.name, fp32.name])  # the seeded pair, no other
    data = bytearray(fp32.read_bytes())
    data[-1] ^= 1  # another export's bytes (a flipped byte: the record no longer matches)
    fp32.write_bytes(bytes(data))
    assert onnx_cache.exported_file(ws["model_dir"], int8=True, cache_dir=cache) == int8
    assert [p.name for p in cache.glob("*-int8.onnx")] == [int8.name]
    assert onnx_export.read_metadata(onnx.load(str(int8))).precision == "int8"


def test_the_cache_is_per_user_and_can_be_listed_and_cleared(ws, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(onnx_cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = tmp_path / "xdg" / "dynamic_tinybert" / "onnx"
    assert onnx_cache.default_cache_dir() == cache
    path = onnx_cache.exported_file(ws["model_dir"])  # full length: half the export time
    assert path.parent == cache and stat.S_IMODE(cache.stat().st_mode) == 0o700
    stray = cache / f".{path.name}.999999999.x.onnx"  # a killed writer's temporary
    stray.write_bytes(b"half")
    keep = cache / "notes.txt"  # not ours: never deleted
    keep.write_text("mine")
    assert inference.main(["--list_cache"]) == 0
    out = capsys.readouterr().out
    assert str(path) in out and '"length_config": null' in out and "1 files" in out
    assert inference.main(["--clear_cache"]) == 0
    assert f"cleared {cache}" in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]


def test_a_file_of_other_weights_of_the_same_shape_is_refused(ws, capsys):
    line = cli_error(capsys, "--model", ws["model_dir"], "--backend", "onnxruntime", "--onnx", ws["onnx"]["other"],
                     *QUESTION, *SIZES)
    assert f"--onnx {ws['onnx']['other']}" in line and "other weights" in line
    meta = onnx_export.read_metadata(onnx.load(str(ws["onnx"]["model"])))
    from core.hashing import weights_sha256
    assert meta.weights_sha256 == weights_sha256(load_model(str(ws["model_dir"])))
    assert set(json.loads(meta.made_with)) == {"torch", "transformers", "onnx"}


def test_a_menu_of_other_weights_is_refused_on_every_backend(ws, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path / "cache"))
    menu = tmp_path / "menu.json"
    menu.write_text(json.dumps(dict(MENU, weights_sha256="0" * 64)))
    budget = ["--max_f1_drop", "100", "--menu", menu]  # picks [64, 40, 30]
    for extra in (["--int8", *QUESTION], ["--export_onnx", tmp_path / "x.onnx"],
                  ["--backend", "onnxruntime", "--onnx", ws["onnx"]["model"], *QUESTION]):
        line = cli_error(capsys, "--model", ws["model_dir"], *budget, *extra, *SIZES)
        assert "measured on other weights" in line, line
    assert not (tmp_path / "x.onnx").exists()


# ---- settings checked before anything loads ----------------------------------------------------

@pytest.mark.parametrize("flag, value", [
    ("--n_best_size", "0"), ("--n_best_size", "-1"), ("--max_answer_length", "0"), ("--max_query_length", "0"),
    ("--max_query_length", "-1"), ("--doc_stride", "0"), ("--max_seq_length", "129"), ("--threads", "0"),
    ("--device", "banana")])
def test_bad_numbers_and_devices_are_refused_first(ws, capsys, nothing_loads, flag, value):
    exports = [] if flag == "--max_seq_length" else [["--export_onnx", ws["root"] / "never.onnx"]]
    for mode in [QUESTION, *exports]:  # an export runs at any width up to the model's positions
        line = cli_error(capsys, "--model", ws["model_dir"], *mode, *SIZES, flag, value)
        assert f"{flag} {value}" in line or f"{flag} must" in line, line
    assert not (ws["root"] / "never.onnx").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_cuda_torch_is_one_line(ws, capsys, nothing_loads):
    assert "no CUDA device" in cli_error(capsys, "--model", ws["model_dir"], *QUESTION, *SIZES, "--device", "cuda")


def test_run_squad_shares_the_window_rules():
    import run_squad
    from training import settings

    args = run_squad.build_parser().parse_args(["--model_name_or_path", "x", "--output_dir", "y", "--do_eval",
                                                "--n_best_size", "0"])
    with pytest.raises(UsageError, match="--n_best_size must"):
        settings.check_window_flags(args.max_seq_length, args.doc_stride, args.max_query_length, args.n_best_size,
                                    args.max_answer_length)
    with pytest.raises(UsageError, match="--threads must"):
        settings.check_numbers(run_squad.build_parser().parse_args(
            ["--model_name_or_path", "x", "--output_dir", "y", "--do_eval", "--threads", "0"]))


def test_text_that_is_not_utf8_or_blank_is_refused(ws, tmp_path, capsys):
    bad = os.fsdecode(b"Who\xff?")  # how a command line carries a byte that is not UTF-8
    line = cli_error(capsys, "--model", ws["model_dir"], "--question", bad, "--context", "C.", *SIZES)
    assert "--question" in line and "not UTF-8" in line
    invisible = "\u200b\u200b \u200b"
    line = cli_error(capsys, "--model", ws["model_dir"], "--question", "Who?", "--context", invisible, *SIZES)
    assert "--context" in line and "empty context" in line
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": invisible, "qas": [{"id": "q1", "question": "Who?", "answers": []}]}]}]}
    source = tmp_path / "in.json"
    source.write_text(json.dumps(data))
    line = cli_error(capsys, "--model", ws["model_dir"], "--input", source, "--output", tmp_path / "p.json", *SIZES)
    assert "empty context of question 'q1'" in line and not (tmp_path / "p.json").exists()


def test_the_api_checks_its_inputs_types(ws):
    qa = inference.QuestionAnswerer.from_pretrained(ws["model_dir"], max_seq_length=128, doc_stride=32)
    for pairs, words in (([{"question": "Who?", "context": "Anna."}], "pair 0: expected a (question, context) "
                                                                     "pair of two strings, got dict"),
                         (["ab", "xy"], "pair 0: expected a (question, context) pair of two strings, got str"),
                         ("ab", "got str"), ([("Who?", b"Anna.")], "the context must be a string"),
                         ([("Who?", "\u200b")], "pair 0: empty context")):
        with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
            qa.answer_batch(pairs)
    for bad in (dict(n_best_size=0), dict(max_query_length=0), dict(max_seq_length=200)):
        with pytest.raises(UsageError, match=f"--{next(iter(bad))} "):
            inference.QuestionAnswerer(qa.model, qa.tokenizer, **{"max_seq_length": 128, **bad})


# ---- messages that name the right thing --------------------------------------------------------

def test_a_menu_choice_outside_max_seq_length_names_the_menu(ws, tmp_path, capsys):
    menu = tmp_path / "menu.json"
    menu.write_text(json.dumps(MENU))
    line = cli_error(capsys, "--model", ws["model_dir"], *QUESTION, "--max_f1_drop", "0", "--menu", menu,
                     "--max_seq_length", "100")  # the choice is full length, [128, 128, 128]
    assert line.startswith("inference.py: error: --max_f1_drop 0: the choice [128, 128, 128] of")
    assert "--max_seq_length 100" in line and "--length_config" not in line.split("):")[0]


def test_menu_folder_and_huge_length_configs_are_one_short_line(ws, tmp_path, capsys):
    line = cli_error(capsys, "--model", ws["model_dir"], *QUESTION, *SIZES, "--speedup", "2", "--menu", tmp_path)
    assert f"--menu {tmp_path}: is a folder" in line and "MODEL_DIR" not in line
    for value in ("[" * 50_000 + "]" * 50_000, json.dumps(list(range(40_000)))):
        line = cli_error(capsys, "--model", ws["model_dir"], *QUESTION, *SIZES, "--length_config", value)
        assert "--length_config" in line and len(line) < 1000
    with pytest.raises(ValueError, match="nested too deeply"):
        length_drop.parse_length_config("[" * 50_000 + "]" * 50_000, 3, 128)


# ---- the import circle --------------------------------------------------------------------------

def test_onnx_cache_does_not_import_inference():
    code = "import sys; from serving.onnx import backend, cache; assert 'inference' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_export_metadata_round_trips_and_older_formats_are_named(ws, tmp_path, capsys):
    proto = onnx.load(str(ws["onnx"]["model"]))
    for prop in proto.metadata_props:
        if prop.key == onnx_export.METADATA_PREFIX + "format_version":
            prop.value = "1"
    old = tmp_path / "old.onnx"
    onnx.save_model(proto, str(old))
    line = cli_error(capsys, "--model", ws["model_dir"], "--backend", "onnxruntime", "--onnx", old, *QUESTION, *SIZES)
    assert "export format 1" in line and "export it again" in line


def test_run_squad_checks_the_search_menu_place_first(tmp_path, monkeypatch):
    import run_squad
    from training import settings

    fifo = tmp_path / "menu"
    os.mkfifo(fifo)
    args = run_squad.build_parser().parse_args(
        ["--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--do_search",
         "--search_menu", str(fifo)])
    # only the menu place is under test: no model or data files needed
    monkeypatch.setattr(settings, "check_flags", lambda a: None)
    monkeypatch.setattr(settings, "resolve_data_file", lambda a, name: tmp_path / "dev.json")
    monkeypatch.setattr(settings, "read_model_shape", lambda a: {"num_hidden_layers": 3,
                                                                 "max_position_embeddings": 512})
    with pytest.raises(UsageError, match="--search_menu .*: exists and is not a regular file"):
        settings.build_settings(args)
