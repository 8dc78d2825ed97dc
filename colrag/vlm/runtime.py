"""The one place that creates onnxruntime sessions.

Threads come from the `threads` argument, else OMP_NUM_THREADS, else onnxruntime's
default (all physical cores). CUDA is used when the installed onnxruntime has it;
asking for it explicitly when it is missing warns and falls back to the CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import BundleError, ColragError, InputError

DEVICE_ENV = "COLRAG_DEVICE"  # auto | cpu | cuda


THREADS_PER_CORE_LIMIT = 4  # more threads than 4 per core only adds contention (and thousands hang onnxruntime)


def max_threads() -> int:
    """The most threads colrag accepts: a few per core this process may run on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return THREADS_PER_CORE_LIMIT * max(1, cores)


def check_threads(threads: int | None) -> int | None:
    """`threads` unchanged when it is None or sane; InputError in one line above the limit."""
    if threads is not None and int(threads) > max_threads():
        raise InputError(
            f"--threads {threads} is too many: this machine gives colrag "
            f"{max_threads() // THREADS_PER_CORE_LIMIT} cores, "
            f"the limit is {max_threads()} threads ({THREADS_PER_CORE_LIMIT} per core)"
        )
    return threads


def configured_threads(threads: int | None = None) -> int:
    """`threads`, else OMP_NUM_THREADS, else 0 (= let onnxruntime decide: all physical cores)."""
    if threads is not None:
        return max(0, int(check_threads(threads) or 0))
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit():  # set for other programs too (HPC modules do): clamped, not refused
        return min(int(env), max_threads())
    return 0  # onnxruntime decides


def choose_providers(device: str | None = None) -> list[str]:
    import onnxruntime as ort

    device = (device or os.environ.get(DEVICE_ENV) or "auto").lower()
    if device not in ("auto", "cpu", "cuda"):
        raise ColragError(f"unknown device {device!r}: use auto, cpu or cuda")
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        print(
            "warning: CUDA was requested but this onnxruntime has no CUDA provider; "
            "running on the CPU (pip install onnxruntime-gpu for CUDA)",
            file=sys.stderr,
        )
    return ["CPUExecutionProvider"]


def create_session(path: str | os.PathLike, *, threads: int | None = None, device: str | None = None):
    """An onnxruntime InferenceSession for `path`, configured the same way everywhere."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"model graph not found: {path}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    n = configured_threads(threads)
    if n:
        opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=choose_providers(device))
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise BundleError(f"cannot load {path.name}: {str(exc).splitlines()[0]}") from exc
