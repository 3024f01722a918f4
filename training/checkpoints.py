"""Checkpoints that survive a crash: written aside, then swapped into place by renames; the
training state (optimizer, scheduler, every RNG) that makes a resumed run equal an
uninterrupted one."""
from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from core import files
from core.errors import DiskFullError, UsageError, first_line
from training.settings import TRAINING_STATE  # noqa: F401  (the file name, re-exported)

CHECKPOINT_INFO = "checkpoint_info.json"  # the step a checkpoint was saved at, and the best F1 then

logger = logging.getLogger("run_squad")


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def keeps_training_state(retention: str, name: str) -> bool:
    """Whether checkpoint ``name`` keeps ``training_state.pt`` under ``--save_training_state``:
    ``resume`` the checkpoints a run is resumed from (checkpoint-last, checkpoint-N) but not
    checkpoint-best, a model to use; ``all`` every checkpoint; ``none`` none. The optimizer's
    moments are twice the model's size."""
    return retention == "all" or (retention == "resume" and name != "checkpoint-best")


def save_checkpoint(folder: Path, model, tokenizer, training_args: dict,
                    training_state: dict | None = None, keep_training_state: bool = True) -> None:
    """Write a Hugging Face checkpoint into a temporary folder, then swap it in by renames, so a
    crash never leaves a broken checkpoint at ``folder`` (``recover_checkpoints`` finishes a swap
    cut short). A failed write leaves nothing behind; a full disk is said as such. With a
    ``training_state``, its step and best F1 go into ``checkpoint_info.json`` and, if
    ``keep_training_state``, the whole state into ``training_state.pt``. Files get the mode the
    umask gives (transformers writes its weights 0600)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        unwrap(model).save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        files.atomic_write_json(tmp / "training_args.json", training_args)
        if training_state is not None:
            files.atomic_write_json(tmp / CHECKPOINT_INFO, {k: training_state[k] for k in ("global_step", "best_f1")})
            if keep_training_state:
                torch.save(training_state, tmp / TRAINING_STATE)
        files.follow_umask(tmp)
    except BaseException as err:
        disk_full = files.is_disk_full(err, folder.parent)  # before the partial copy is freed
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full:
            kept = f"the previous {folder.name} is kept" if folder.exists() else f"no {folder.name} was written"
            raise DiskFullError(f"no space left on {folder.parent} while writing {folder.name}; "
                                            f"{kept}") from err
        raise
    swap_into_place(tmp, folder, old)


def swap_into_place(tmp: Path, folder: Path, old: Path) -> None:
    if folder.exists():
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


HIDDEN_CHECKPOINT = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def recover_checkpoints(folder: Path) -> None:
    """Finish or undo the checkpoint swaps of processes that died in ``save_checkpoint``.

    A kill between its two renames leaves no ``checkpoint-X`` but ``.checkpoint-X.old-PID`` (the
    previous copy) and ``.checkpoint-X.tmp-PID`` (the new one, complete: the old copy is moved
    aside only after it was written): the new copy is moved into place. Every other leftover is
    an unfinished write or an already replaced copy, and is deleted."""
    if not folder.is_dir():
        return
    leftovers = defaultdict(dict)
    for path in folder.iterdir():
        match = HIDDEN_CHECKPOINT.match(path.name)
        if match and path.is_dir() and not files.process_alive(int(match["pid"])):
            leftovers[(match["name"], match["pid"])][match["kind"]] = path
    for (name, _), paths in sorted(leftovers.items()):
        target = folder / name
        # Several processes (torchrun ranks) may recover at once: a vanished path is fine.
        with contextlib.suppress(FileNotFoundError):
            if not target.exists() and "old" in paths:
                os.replace(paths.get("tmp", paths["old"]), target)
                logger.warning("recovered %s from an interrupted checkpoint save", target)
        for path in paths.values():
            if path.exists():
                logger.warning("removing %s, left by an interrupted checkpoint save", path)
                shutil.rmtree(path, ignore_errors=True)


# What ``resume_training_state`` reads of a training state; a file without one of them is refused.
TRAINING_STATE_KEYS = {"optimizer": dict, "scheduler": dict, "global_step": int, "rng": dict}
RNG_STATE_KEYS = ("torch", "python", "sandwich", "numpy")


def load_training_state(folder, flag: str = "--resume_from_checkpoint", mmap: bool = False) -> dict:
    """``folder``'s ``training_state.pt``, or a UsageError naming the file: empty, torn (cut short,
    not a torch file) or incomplete (without the optimizer, schedule, step or random states a
    resumption restores). ``mmap``: map the tensors without reading them, for a check before any
    work."""
    path = Path(folder) / TRAINING_STATE
    hint = "resume from another checkpoint (checkpoint-last or checkpoint-N), or start anew with --model_name_or_path"
    try:
        if path.stat().st_size == 0:
            raise UsageError(f"{flag}: {path} is empty (a save cut short); {hint}")
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except UsageError:
        raise
    except Exception as err:  # a torn zip archive, a pickle that is not one, an unreadable file
        raise UsageError(f"{flag}: {path} cannot be read ({first_line(err)}); {hint}") from None
    if not isinstance(state, dict):
        raise UsageError(f"{flag}: {path} is not a training state (a {type(state).__name__}, not a dict); {hint}")
    for key, kind in TRAINING_STATE_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise UsageError(f"{flag}: {path} is incomplete (no {key!r} {kind.__name__}); {hint}")
    for key in RNG_STATE_KEYS:
        if key not in state["rng"]:
            raise UsageError(f"{flag}: {path} is incomplete (no 'rng.{key}' state); {hint}")
    return state


def rng_state(sandwich_rng: random.Random) -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(map(_jsonable, random.getstate())),
             "sandwich": list(map(_jsonable, sandwich_rng.getstate())),
             "numpy": [torch.from_numpy(np.random.get_state()[1].astype(np.int64))]
             + [float(x) if isinstance(x, float) else int(x) for x in np.random.get_state()[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _jsonable(x):
    return list(x) if isinstance(x, tuple) else x


def restore_rng_state(state: dict, sandwich_rng: random.Random) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    sandwich_rng.setstate((state["sandwich"][0], tuple(state["sandwich"][1]), state["sandwich"][2]))
    keys = state["numpy"][0].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, *state["numpy"][1:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
