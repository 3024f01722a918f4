"""The project's hashes, each written once.

* ``file_sha256``: the bytes of a file (data files, ONNX files, cache entries).
* ``tensors_sha256``: every tensor's name, dtype, shape and bytes, in name order ("name|dtype|shape|"
  then the raw bytes). A model's ``weights_sha256`` is this hash of its state dict; a search's rows,
  a length menu and an ONNX file record it, and the feature cache records it of its tensors.
* ``safetensors_weights_sha256``: the same hash of safetensors files, read without torch (the
  quick ONNX path). It equals the model's ``weights_sha256`` when loading the files changes and adds
  no tensor.

torch is imported only by the functions that take tensors, so the torch-free serving path can
import this module.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import struct

_CHUNK = 1 << 20

# safetensors dtype codes -> the dtype names ``tensors_sha256`` hashes (str of a torch dtype)
SAFETENSORS_DTYPES = {"F64": "torch.float64", "F32": "torch.float32", "F16": "torch.float16",
                      "BF16": "torch.bfloat16", "I64": "torch.int64", "I32": "torch.int32", "I16": "torch.int16",
                      "I8": "torch.int8", "U8": "torch.uint8", "BOOL": "torch.bool"}


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _update(digest, name: str, dtype: str, shape: tuple, data) -> None:
    digest.update(f"{name}|{dtype}|{tuple(shape)}|".encode("utf-8"))
    digest.update(data)


def tensors_sha256(tensors: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        _update(digest, name, str(tensor.dtype), tuple(tensor.shape), data)
    return digest.hexdigest()


def weights_sha256(model) -> str:
    """``tensors_sha256`` of a model's state dict (every parameter and buffer), inside a
    DistributedDataParallel wrapper if there is one: what a search's rows, a length menu and an
    ONNX export were made from."""
    return tensors_sha256(getattr(model, "module", model).state_dict())


def safetensors_weights_sha256(*paths) -> str | None:
    """``weights_sha256`` of a model whose state dict is exactly these safetensors files together
    (model.safetensors, and the learned criterion's token scorers beside it), read without torch;
    None for a dtype it does not know or a tensor name in two files."""
    entries = {}
    with contextlib.ExitStack() as stack:
        for path in paths:
            handle = stack.enter_context(open(path, "rb"))
            data = stack.enter_context(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
            (size,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8:8 + size])
            header.pop("__metadata__", None)
            for name, entry in header.items():
                if name in entries:
                    return None
                entries[name] = (data, 8 + size, entry)
        digest = hashlib.sha256()
        for name in sorted(entries):
            data, base, entry = entries[name]
            dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
            if dtype is None:
                return None
            begin, end = entry["data_offsets"]
            _update(digest, name, dtype, tuple(entry["shape"]), data[base + begin:base + end])
    return digest.hexdigest()
