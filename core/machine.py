"""The machine a result was measured on, and what its CPU can do at each precision.

Timings differ more between the machines here (AMD EPYC with or without bfloat16 instructions,
Intel Xeon with AMX) than between most systems on one machine, so every bench result records
``machine_info()``: the CPU model, cores, the ISA flags that decide which kernels run, the
libraries' versions and, where it can be known, the kernels oneDNN picked (``onednn_kernels``).
No torch import here unless a probe asks for one (it runs in a child process).
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys

# The flags that decide the kernels: AVX2/AVX-512 float32, VNNI int8 dot products, bfloat16 dot
# products (AVX512_BF16) and the AMX tile units (bf16 and int8 matrix multiplies).
ISA_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")   # bfloat16 arithmetic in hardware
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
LIBRARIES = ("torch", "transformers", "tokenizers", "onnxruntime", "onnx", "numpy")


def _cpuinfo(path="/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none: not Linux)."""
    fields = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor only: the others repeat it
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return {}
    return fields


def cpu_flags(path="/proc/cpuinfo") -> set[str] | None:
    """The CPU's ISA flags (``flags`` on x86, ``Features`` on ARM), or None where unknown."""
    info = _cpuinfo(path)
    line = info.get("flags", info.get("Features"))
    return None if line is None else set(line.split())


def cpu_model(path="/proc/cpuinfo") -> str:
    info = _cpuinfo(path)
    return info.get("model name") or platform.processor() or platform.machine() or "unknown"


def bf16_problem(flags: set[str] | None = None) -> str | None:
    """None where the CPU does bfloat16 arithmetic in hardware; else one line saying what is
    missing and what it costs. ``flags``: ``cpu_flags()`` unless given."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None if platform.machine().lower() in ("arm64", "aarch64") and sys.platform == "darwin" else (
            "bfloat16 support of this CPU is unknown (no /proc/cpuinfo): bfloat16 may be slower than float32")
    if any(flag in flags for flag in BF16_FLAGS):
        return None
    if "bf16" in flags:  # ARMv8.6 BF16 (Graviton 3, Neoverse V1/N2)
        return None
    return ("this CPU has no bfloat16 instructions (neither avx512_bf16 nor amx_bf16 in its flags): bfloat16 "
            "is emulated, about 1.9x (AVX-512) to 4x (AVX2) slower than float32 (docs/serving.md)")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that decide the numbers (None: not installed)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# A small bfloat16 and float32 linear layer under oneDNN's verbose mode, in a child process (the
# variable is read once, at oneDNN's first use).
_ONEDNN_PROBE = """
import torch
torch.set_num_threads(1)
x, w = torch.randn(64, 384), torch.nn.Linear(384, 384)
with torch.no_grad():
    w(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w(x)
"""


def onednn_kernels(timeout: float = 120.0) -> dict[str, list[str]] | None:
    """The ISAs oneDNN's matrix-multiply primitives ran with, per data type, from its verbose log
    (e.g. {"bf16": ["brg_matmul:avx512_core_amx"], "f32": ["gemm:jit"]}); None where the probe
    cannot run (no torch, no oneDNN, timeout)."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE], env=env, capture_output=True, text=True,
                             timeout=timeout, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    kernels: dict[str, set[str]] = {}
    for line in out.splitlines():
        # onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_amx,undef,src:bf16::blocked:ab::f0 ...
        parts = line.split(",")
        if len(parts) < 9 or parts[2:4] != ["primitive", "exec"] or parts[5] not in ("matmul", "inner_product"):
            continue
        dtype = re.search(r"src(?:_\w+)?:(\w+)", line)
        kernels.setdefault(dtype.group(1) if dtype else "?", set()).add(f"{parts[5]}:{parts[6]}")
    return {dtype: sorted(names) for dtype, names in sorted(kernels.items())} or None


def machine_info(kernels: bool = False) -> dict:
    """What a bench result records of the machine. ``kernels``: also oneDNN's chosen kernels
    (``onednn_kernels``, a child process of a few seconds)."""
    flags = cpu_flags()
    info = {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa_flags": None if flags is None else [flag for flag in ISA_FLAGS if flag in flags],
        "bf16_in_hardware": bf16_problem(flags) is None,
        "int8_dot_products": None if flags is None else any(flag in flags for flag in INT8_FLAGS),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }
    if "torch" in sys.modules:  # already paid for: what torch itself dispatches to
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_threads"] = torch.get_num_threads()
    if kernels:
        info["onednn_kernels"] = onednn_kernels()
    return info


def cpu_line(info: dict | None = None) -> str:
    """One line for a table's caption: model, cores and the flags that matter."""
    info = info or machine_info()
    flags = " ".join(info["isa_flags"] or []) or "flags unknown"
    return f"{info['cpu']}, {info['usable_cpus']} CPUs ({flags})"
