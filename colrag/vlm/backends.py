"""Where the model graphs run: one small interface, two runtimes.

    session = open_session(path, graph="vision", backend="auto", precision="auto", cache_key=bundle_id)
    (embeds,) = session.run({"pixel_values": pv, "rot_pos_ids": rot})
    session.backend, session.precision, session.inputs, session.outputs

- onnxruntime (always installed, the default where OpenVINO is absent or not measured
  faster): colrag.vlm.runtime.create_session, f32 activations.
- OpenVINO (`pip install 'colrag[openvino]'`): the same ONNX files read by OpenVINO's
  CPU plugin (MatMulNBits included), with `INFERENCE_PRECISION_HINT` f32 or bf16.
  Compiled models are cached under $COLRAG_HOME/cache/openvino/<bundle id>, so a second
  process skips compilation.

`auto` picks OpenVINO per graph role where it was measured faster on this kind of CPU
(x86 with AVX-512: docs/BENCHMARKS.md, "OpenVINO"): the vision tower, the retriever's
language model, and the generator's prefill (AUTO_OPENVINO_GRAPHS). The decode step stays on
onnxruntime: on a quiet machine its one-token step (int8 weights at accuracy level 4) was
faster than OpenVINO's, even with the k/v cache kept in OpenVINO's state (colrag.vlm.ov_decoder).
Prefill and decode are roles of their own: when they run on different backends, the decoder
is loaded twice and the prompt's k/v pass from one to the other once, after the prefill.
Precision `auto` is bf16 where the CPU computes it natively (avx512_bf16 or AMX) and
OpenVINO is the backend; f32 otherwise. onnxruntime always computes in f32.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import BundleError, ColragError

BACKEND_ENV = "COLRAG_BACKEND"  # auto | onnxruntime | openvino
PRECISION_ENV = "COLRAG_PRECISION"  # auto | f32 | bf16
BACKENDS = ("auto", "onnxruntime", "openvino")
PRECISIONS = ("auto", "f32", "bf16")
# Graph roles: the vision tower, the retriever's language model, and the generator's decoder
# used two ways: prefill (the prompt, many tokens at once) and decode (one token a step).
# Prefill and decode run the same decoder file; on different backends it is loaded twice.
GRAPHS = ("vision", "text", "prefill", "decode")
# Graphs that `auto` runs on OpenVINO (on a CPU of the measured kind): those measured faster there in
# bf16 at full size on a quiet machine. Not the decode step: 0.138 s/token on OpenVINO against 0.078 on
# onnxruntime (docs/BENCHMARKS.md, "Answering an indexed page on a quiet machine").
AUTO_OPENVINO_GRAPHS = frozenset({"vision", "text", "prefill"})
OPENVINO_HINT = "pip install 'colrag[openvino]'"


class Session(Protocol):
    """One loaded graph: named inputs in, named outputs out."""

    backend: str  # "onnxruntime" | "openvino"
    precision: str  # "f32" | "bf16": the precision the runtime computes in
    inputs: dict[str, tuple]  # name -> shape (ints; a str or None for a dynamic axis)
    outputs: dict[str, tuple]

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> list[Any]:
        """Run the graph. Feeds are numpy arrays, or values an earlier run of this session
        returned (passed on without a copy). One value per output (all outputs when None):
        a numpy array on the host; only with an accelerator a runtime's device value, which
        `as_numpy` brings to the host."""
        ...


def as_numpy(value: Any) -> np.ndarray:
    """A run's output as a numpy array (a no-op for host arrays)."""
    return value if isinstance(value, np.ndarray) else value.numpy()


# -- choosing ---------------------------------------------------------------------------


def requested_backend(backend: str | None = None) -> str:
    value = (backend or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
    if value not in BACKENDS:
        raise ColragError(f"unknown backend {value!r}: use {', '.join(BACKENDS)}")
    return value


def requested_precision(precision: str | None = None) -> str:
    value = (precision or os.environ.get(PRECISION_ENV) or "auto").strip().lower()
    if value not in PRECISIONS:
        raise ColragError(f"unknown precision {value!r}: use {', '.join(PRECISIONS)}")
    return value


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def openvino_version() -> str | None:
    if not openvino_installed():
        return None
    import openvino

    return str(openvino.__version__).split("-")[0]


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic: the CPU flags say so, and OpenVINO's CPU plugin lists BF16."""
    if not ({"avx512_bf16", "amx_bf16"} & cpu_flags()):
        return False
    if not openvino_installed():
        return True
    return "BF16" in _openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def graph_backend(graph: str, backend: str | None = None) -> str:
    """The runtime a graph runs on for a requested backend (None: COLRAG_BACKEND, else auto)."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}")
    wanted = requested_backend(backend)
    if wanted == "openvino" and not openvino_installed():
        raise ColragError(f"the openvino backend is not installed: {OPENVINO_HINT}")
    if wanted != "auto":
        return wanted
    measured_kind = "avx512f" in cpu_flags()  # the CPUs OpenVINO was measured faster on
    if graph in AUTO_OPENVINO_GRAPHS and measured_kind and openvino_installed():
        return "openvino"
    return "onnxruntime"


def graph_precision(backend: str, precision: str | None = None) -> str:
    """The precision a graph on `backend` computes in, for a requested precision."""
    wanted = requested_precision(precision)
    if backend == "onnxruntime":
        return "f32"
    if wanted == "bf16" and not cpu_has_bf16():
        raise ColragError("this CPU has no native bf16 (avx512_bf16 or AMX): use --precision f32 or auto")
    if wanted == "auto":
        return "bf16" if cpu_has_bf16() else "f32"
    return wanted


def runs_on(graph: str, backend: str | None = None, precision: str | None = None) -> tuple[str, str]:
    """(backend, precision) a graph role runs on for a request."""
    name = graph_backend(graph, backend)
    return name, graph_precision(name, precision)


def check_request(backend: str | None = None, precision: str | None = None) -> None:
    """Refuse a combination no graph can honour (bf16 asked of onnxruntime alone)."""
    if requested_backend(backend) == "onnxruntime" and requested_precision(precision) == "bf16":
        raise ColragError("bf16 needs the openvino backend: onnxruntime computes in f32 on the CPU")


def describe(backend: str | None = None, precision: str | None = None) -> dict[str, str]:
    """Per graph, what it runs on: {'vision': 'openvino 2026.4.1 bf16', ...} (for doctor and --stats)."""
    check_request(backend, precision)
    out = {}
    for graph in GRAPHS:
        name = graph_backend(graph, backend)
        out[graph] = f"{name} {runtime_version(name)} {graph_precision(name, precision)}"
    return out


def runtime_version(backend: str) -> str:
    if backend == "openvino":
        return openvino_version() or "?"
    import onnxruntime

    return str(onnxruntime.__version__)


# -- opening ---------------------------------------------------------------------------


def open_session(
    path: str | os.PathLike,
    *,
    graph: str,
    backend: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    device: str | None = None,
    cache_key: str | None = None,
) -> Session:
    """Load one graph on the backend chosen for it (see the module doc).

    cache_key names the compiled-model cache of OpenVINO (use the bundle id, so that a
    re-exported bundle never meets a stale cache)."""
    check_request(backend, precision)
    name = graph_backend(graph, backend)
    prec = graph_precision(name, precision)
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"model graph not found: {path}")
    if name == "openvino" and graph in ("prefill", "decode") and os.environ.get("COLRAG_OV_STATEFUL", "1") != "0":
        from .ov_decoder import OpenvinoStatefulDecoder

        return OpenvinoStatefulDecoder(path, _openvino_core(), openvino_config(prec, threads, cache_key), prec)
    if name == "openvino":
        return OpenvinoSession(path, precision=prec, threads=threads, cache_key=cache_key)
    return OnnxruntimeSession(path, threads=threads, device=device)


class LazyVision:
    """A model's vision-graph session, opened on first use: `_vision = LazyVision()` in the class.

    The instance keeps the session in `_vision_session` (None until then) and opens it with
    `_vision_factory()`; a query, or an answer from stored page features, never pays for it."""

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        if obj._vision_session is None:
            if obj._vision_factory is None:
                raise BundleError(f"{obj.bundle_dir}: no vision graph")
            obj._vision_session = obj._vision_factory()
        return obj._vision_session

    def __set__(self, obj: Any, session: Any) -> None:
        obj._vision_session = session


def _shape(dims) -> tuple:
    return tuple(d if isinstance(d, int) else (str(d) if d is not None else None) for d in dims)


class OnnxruntimeSession:
    """onnxruntime's InferenceSession, created by colrag.vlm.runtime.create_session."""

    backend = "onnxruntime"
    precision = "f32"

    def __init__(self, path: Path, *, threads: int | None = None, device: str | None = None):
        from .runtime import create_session

        self._session = create_session(path, threads=threads, device=device)
        self.inputs = {i.name: _shape(i.shape) for i in self._session.get_inputs()}
        self.outputs = {o.name: _shape(o.shape) for o in self._session.get_outputs()}
        self.providers = list(self._session.get_providers())

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> list[Any]:
        import onnxruntime as ort

        values = {
            name: v
            if isinstance(v, ort.OrtValue)
            else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(as_numpy(v)))
            for name, v in feeds.items()
        }
        outs = self._session.run_with_ort_values(list(outputs or self.outputs), values)
        # host values become numpy views (no copy); device values (CUDA) stay where they are
        return [v.numpy() if v.device_name().lower() == "cpu" else v for v in outs]


@lru_cache(maxsize=1)
def _openvino_core():
    import openvino as ov

    return ov.Core()


def openvino_cache_dir(cache_key: str | None, precision: str, threads: int) -> Path | None:
    """$COLRAG_HOME/cache/openvino/<key>/<precision>-t<threads>, created; None when there is no key
    or it cannot be created.

    One folder per precision and thread count: OpenVINO 2026.4 names a cached blob after the
    model file only, so a blob compiled for f32 was loaded for a bf16 request (and crashed)."""
    from ..paths import colrag_home

    if not cache_key:
        return None
    if not cache_key.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"bad cache key {cache_key!r}")
    folder = colrag_home() / "cache" / "openvino" / cache_key / f"{precision}-t{threads or 'auto'}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"warning: no OpenVINO model cache ({folder}: {exc.strerror}); every start compiles again", file=sys.stderr
        )
        return None
    return folder


def openvino_config(precision: str, threads: int | None, cache_key: str | None) -> dict[str, Any]:
    """compile_model's CPU config: precision hint, latency, threads, and the compiled-model cache."""
    from .runtime import configured_threads

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    n = configured_threads(threads)
    if n:
        config["INFERENCE_NUM_THREADS"] = n
    cache = openvino_cache_dir(cache_key, precision, n)
    if cache is not None:
        config["CACHE_DIR"] = str(cache)
    return config


class OpenvinoSession:
    """The ONNX graph compiled by OpenVINO's CPU plugin (OpenVINO's own API, not an onnxruntime EP)."""

    backend = "openvino"

    def __init__(self, path: Path, *, precision: str = "f32", threads: int | None = None, cache_key: str | None = None):
        core = _openvino_core()
        config = openvino_config(precision, threads, cache_key)
        try:
            self._compiled = core.compile_model(str(path), "CPU", config)
        except RuntimeError as exc:  # OpenVINO reports unreadable or unsupported graphs as RuntimeError
            raise BundleError(f"OpenVINO cannot load {path.name}: {str(exc).strip().splitlines()[0]}") from exc
        self.precision = precision
        self._request = self._compiled.create_infer_request()
        self.inputs = {p.get_any_name(): _partial_shape(p) for p in self._compiled.inputs}
        self.outputs = {p.get_any_name(): _partial_shape(p) for p in self._compiled.outputs}
        self._out_index = {name: i for i, p in enumerate(self._compiled.outputs) for name in p.get_names()}

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> list[Any]:
        arrays = {name: np.ascontiguousarray(as_numpy(v)) for name, v in feeds.items()}
        # share_outputs=False: the request reuses its output buffers, so each run's outputs are copied out
        result = self._request.infer(arrays, share_inputs=True, share_outputs=False)
        return [result[self._out_index[name]] for name in (outputs or self.outputs)]


def _partial_shape(port) -> tuple:
    return tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
