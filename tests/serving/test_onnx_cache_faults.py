"""ONNX files and cache entries checked against what is asked for, and the cache folder's locks
under planted links and a concurrent ``--clear_cache``.

References are independent of the code under test: the configuration and settings each entry
was asked for, the bytes and kinds of files as the operating system reports them, and another
thread or process holding a lock."""
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace

import onnx
import pytest

import inference
from core.errors import UsageError
from helpers import (TINY_SQUAD_DIR, SharedExports, make_tiny_tokenizer, save_tiny_bert, seed_cache, shared_export,
                     tiny_bert_config, tiny_squad_texts)
from serving.onnx import cache as onnx_cache
from serving.onnx import export as onnx_export
from serving.onnx import int8 as onnx_int8
from serving.onnx.backend import OrtLogits
from serving.onnx.int8 import Int8Settings

CONFIG = (60, 40, 30)
OTHER = (64, 40, 30)
SIZES = ["--max_seq_length", "128", "--doc_stride", "32"]
QUESTION = ["--question", "Who wrote it?", "--context", "The book was written by Anna in Paris."]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The tiny 3-layer model of test_serving_faults.py (same seed and tokenizer: the same bytes,
    so the run's shared store holds one export of it at ``CONFIG``)."""
    root = tmp_path_factory.mktemp("onnx_cache")
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    config = tiny_bert_config(len(tok), num_hidden_layers=3, max_position_embeddings=128)
    folder = save_tiny_bert(root / "model", config, seed=3, tokenizer=tok)
    return {"root": root, "model_dir": folder, "onnx": SharedExports({"model": (folder, CONFIG)}),
            "dev": TINY_SQUAD_DIR / "dev-v1.1.json"}


def cli_error(capsys, *args) -> str:
    code = inference.main([str(a) for a in args])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("inference.py: error:"), (code, captured.err[-3000:])
    return lines[0]


def relabelled(source, destination, **changes) -> None:
    """``source`` with its metadata changed (``length_config=...``): a stand-in for another
    entry's file, built without an export."""
    proto = onnx.load(str(source))
    metadata = onnx_export.read_metadata(proto)
    onnx_export.set_metadata(proto, replace(metadata, **{k: v for k, v in changes.items() if hasattr(metadata, k)}))
    onnx.save_model(proto, str(destination))


def copy_entry(source, destination) -> None:
    """An entry's file and record copied over another's (as a copy between entries or a restore
    from a backup leaves them: the record still matches its file)."""
    for suffix in (".onnx", ".json"):
        shutil.copyfile(source.with_suffix(suffix), destination.with_suffix(suffix))


# ---- an entry is what was asked for -------------------------------------------------------------

def test_a_cache_entry_of_another_configuration_precision_or_int8_kind_is_rebuilt(ws, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    seed_cache(cache, ws["model_dir"], CONFIG, int8=True)
    held = onnx_cache.exported_file(ws["model_dir"], CONFIG, int8=True, cache_dir=cache)  # the seeded entry
    fp32_held = onnx_cache.exported_file(ws["model_dir"], CONFIG, cache_dir=cache)
    builds = []

    def export_onnx(model, destination, length_config=None):  # a file labelled as asked, without an export
        builds.append(("export", tuple(length_config)))
        relabelled(fp32_held, destination, length_config=tuple(length_config))

    def quantize_int8(source, destination, settings=Int8Settings(), calibration=None):
        builds.append(("int8", settings.key()))
        relabelled(held, destination, length_config=onnx_export.read_metadata(onnx.load(str(source))).length_config,
                   int8_settings=settings.key())
    monkeypatch.setattr(onnx_export, "export_onnx", export_onnx)
    monkeypatch.setattr(onnx_int8, "quantize_int8", quantize_int8)
    wanted = onnx_cache.exported_file(ws["model_dir"], OTHER, int8=True, cache_dir=cache)
    per_tensor = Int8Settings(per_channel=False)
    other_kind = onnx_cache.exported_file(ws["model_dir"], CONFIG, int8=True, int8_settings=per_tensor, cache_dir=cache)
    assert builds == [("export", OTHER), ("int8", Int8Settings().key()), ("int8", per_tensor.key())]
    assert OrtLogits(wanted).length_config == OTHER

    record = json.loads(held.with_suffix(".json").read_text())
    edited_record = dict(record, made_from=dict(record["made_from"], length_config=list(OTHER)))
    # the per-tensor entry holds CONFIG: labelled OTHER (file and record) so that only the kind differs
    relabelled(other_kind, tmp_path / "kind.onnx", length_config=OTHER)
    kind_record = json.loads(other_kind.with_suffix(".json").read_text())
    kind_record["made_from"]["length_config"] = list(OTHER)
    kind_record["sha256"] = onnx_cache.file_sha256(tmp_path / "kind.onnx")

    def another_kind():
        shutil.copyfile(tmp_path / "kind.onnx", wanted)
        wanted.with_suffix(".json").write_text(json.dumps(kind_record))

    def float32_file():
        relabelled(fp32_held, wanted, length_config=OTHER)
        fp32_record = json.loads(fp32_held.with_suffix(".json").read_text())
        fp32_record["made_from"]["length_config"] = list(OTHER)
        wanted.with_suffix(".json").write_text(json.dumps(dict(fp32_record, sha256=onnx_cache.file_sha256(wanted))))
    cases = {"copied from another configuration": lambda: copy_entry(held, wanted),
             "record says the configuration, the file another": lambda: (
                 copy_entry(held, wanted), wanted.with_suffix(".json").write_text(json.dumps(edited_record))),
             "a float32 file in an int8 entry": float32_file,
             "another int8 kind": another_kind}
    for name, damage in cases.items():
        damage()
        builds.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_cache"):
            again = onnx_cache.exported_file(ws["model_dir"], OTHER, int8=True, cache_dir=cache)
        assert again == wanted and builds == [("int8", Int8Settings().key())], (name, builds)
        assert "building it again" in caplog.text, name
        metadata = OrtLogits(again).metadata
        assert (metadata.length_config, metadata.precision, getattr(metadata, "int8_settings", None)) == (
            OTHER, "int8", Int8Settings().key()), name


def test_an_int8_entry_of_another_float32_file_is_rebuilt(ws, tmp_path, monkeypatch):
    """``--onnx fp32.onnx --int8``: the entry is keyed by the float32 file's bytes; a copy of
    another file's int8 entry over it is not used."""
    cache = tmp_path / "cache"
    seed_cache(cache, ws["model_dir"], CONFIG, int8=True)
    held = onnx_cache.exported_file(ws["model_dir"], CONFIG, int8=True, cache_dir=cache)
    source = tmp_path / "other.onnx"
    relabelled(shared_export(ws["model_dir"], CONFIG), source, length_config=OTHER)
    builds = []

    def quantize_int8(fp32, destination, settings=Int8Settings(), calibration=None):
        builds.append(fp32)
        relabelled(held, destination, length_config=OTHER)
    monkeypatch.setattr(onnx_int8, "quantize_int8", quantize_int8)
    wanted = onnx_cache.int8_file(source, cache_dir=cache)
    copy_entry(held, wanted)  # CONFIG's int8 file, with its record
    assert onnx_cache.int8_file(source, cache_dir=cache) == wanted and len(builds) == 2
    assert OrtLogits(wanted).length_config == OTHER


# ---- a given file holds the weights its metadata names -----------------------------------------

def edited_weights(source, destination) -> None:
    """``source`` with one weight matrix zeroed in place: valid ONNX, the same size, its metadata
    (and the weights' hash it claims) kept."""
    proto = onnx.load(str(source))
    head = next(i for i in proto.graph.initializer if len(i.dims) == 2 and i.raw_data)
    data = bytearray(source.read_bytes())
    at = bytes(data).find(bytes(head.raw_data))
    assert at > 0
    data[at:at + len(head.raw_data)] = bytes(len(head.raw_data))
    destination.write_bytes(bytes(data))


def test_an_onnx_file_whose_weights_were_edited_after_export_is_refused(ws, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path / "cache"))
    edited = tmp_path / "edited.onnx"
    edited_weights(ws["onnx"]["model"], edited)
    length = ["--length_config", json.dumps(list(CONFIG))]
    runs = {"the quick path": [*QUESTION],
            "the full path": ["--input", ws["dev"], "--output", tmp_path / "p.json"],
            "int8 from it": ["--int8", *QUESTION]}
    for name, extra in runs.items():
        line = cli_error(capsys, "--model", ws["model_dir"], "--backend", "onnxruntime", "--onnx", edited, *length,
                         *extra, *SIZES)
        assert f"--onnx {edited}" in line and "edited after export" in line, (name, line)
    assert not (tmp_path / "p.json").exists()
    assert not list((tmp_path / "cache").glob("*.onnx")) if (tmp_path / "cache").exists() else True
    with pytest.raises(UsageError, match="edited after export"):
        inference.QuestionAnswerer.from_pretrained(ws["model_dir"], backend="onnxruntime", onnx_path=edited,
                                                   max_seq_length=128, doc_stride=32)
    # the untouched export still runs (the check reads the same graph the writer hashed)
    assert inference.main([str(a) for a in ("--model", ws["model_dir"], "--backend", "onnxruntime", "--onnx",
                                            ws["onnx"]["model"], *QUESTION, *SIZES)]) == 0
    assert json.loads(capsys.readouterr().out)["answer"]


# ---- the cache folder's locks -------------------------------------------------------------------

def test_a_link_planted_at_a_lock_file_is_not_followed_and_clear_cache_removes_it(tmp_path, monkeypatch, capsys):
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    cache.mkdir()
    outside.mkdir()
    victim, kept = outside / "victim", outside / "kept"
    kept.write_text("mine")
    (cache / "k.lock").symlink_to(victim)
    (cache / "j.lock").symlink_to(kept)
    built = []
    with pytest.raises(UsageError, match=r"k\.lock: is a link"):
        onnx_cache._cached(cache, "k", lambda path: built.append(path), {})
    assert not victim.exists() and not os.path.lexists(cache / "k.onnx") and built == []
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(cache))
    assert inference.main(["--clear_cache"]) == 0
    capsys.readouterr()
    assert list(cache.iterdir()) == [] and kept.read_text() == "mine" and not victim.exists()
    onnx_cache._cached(cache, "k", lambda path: path.write_bytes(b"x"), {})  # disarmed: an ordinary build
    assert (cache / "k.lock").is_file() and not (cache / "k.lock").is_symlink()


def test_clear_cache_leaves_a_live_writer_alone(tmp_path):
    """``--clear_cache`` while another run builds an entry: that entry's lock and temporary stay,
    the build ends whole; idle entries and dead writers' temporaries go."""
    cache = tmp_path / "cache"
    cache.mkdir()
    onnx_cache._cached(cache, "idle", lambda path: path.write_bytes(b"i" * 10), {})
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = cache / f".idle.onnx.{int(gone.stdout)}.abc.onnx"  # a killed writer's temporary
    stale.write_bytes(b"half")
    writing, finish = threading.Event(), threading.Event()

    def build(path):
        from core import files
        with files.atomic_path(path, suffix=".onnx") as tmp:
            tmp.write_bytes(b"w" * 10)
            writing.set()
            assert finish.wait(30)
    errors = []

    def writer():
        try:
            onnx_cache._cached(cache, "live", build, {})
        except Exception as err:  # the test below says what it was
            errors.append(err)
    thread = threading.Thread(target=writer)
    thread.start()
    assert writing.wait(30)
    temporaries = [p.name for p in cache.glob(".live.onnx.*")]
    onnx_cache.clear_cache(cache)
    left = sorted(p.name for p in cache.iterdir())
    finish.set()
    thread.join()
    assert errors == [] and left == sorted(["live.lock", *temporaries])
    assert sorted(p.name for p in cache.iterdir()) == ["live.json", "live.lock", "live.onnx"]
    assert (cache / "live.onnx").read_bytes() == b"w" * 10


def test_a_lock_file_removed_while_waited_on_is_not_shared(tmp_path):
    """A waiter that gets the lock of a file ``--clear_cache`` removed meanwhile locks the file now
    at that name instead, so a later run cannot hold the same key at the same time."""
    lock = tmp_path / "k.lock"
    seen = []

    def waiter():
        with onnx_cache._locked(lock):
            seen.append(os.path.lexists(lock) and os.stat(lock).st_size == 0)
    with onnx_cache._locked(lock):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.5)  # the waiter has opened the file and waits for it
        lock.unlink()    # as clear_cache does, holding the lock
    thread.join()
    assert seen == [True]
