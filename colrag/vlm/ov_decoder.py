"""The generator's decoder on OpenVINO with its k/v cache kept in the infer request's state.

The decoder graph takes the past k/v as inputs and returns the present k/v as outputs. Passed
in and out as arrays at every step, OpenVINO converts and copies the whole cache twice per token
(to bf16 and back), which made its decode step slower than onnxruntime's. Here OpenVINO's
make-stateful pass turns each past/present pair into a state variable of the request: the
cache stays inside the request, in the precision it computes in.

It keeps the Session interface (colrag.backends): `run` takes the past k/v as feeds and returns
the present k/v as outputs, only the outputs are handles (`StateValue`) on the request's state.
Handed back to the next `run` of the same session, nothing is copied. Anything else is
loaded into the state first: an empty past (length 0) resets it, arrays (a prefix cache hit, or
k/v another runtime computed) are copied in. `as_numpy(handle)` copies a state out (what the
prefix cache stores), valid until the session runs again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError

PAST_PREFIX = "past_"
PRESENT_PREFIX = "present_"


class StaleStateError(RuntimeError):
    """A state handle was read after its session ran again (a bug in the caller, never bad input)."""


class StateValue:
    """One present k/v tensor, living in the session's request state."""

    __slots__ = ("_generation", "_name", "_session", "shape")

    def __init__(self, session: OpenvinoStatefulDecoder, name: str, generation: int, shape: tuple[int, ...]):
        self._session, self._name, self._generation, self.shape = session, name, generation, shape

    def numpy(self) -> np.ndarray:
        return self._session._read_state(self._name, self._generation)


class OpenvinoStatefulDecoder:
    """The decoder compiled by OpenVINO with each past/present k/v pair made a state variable."""

    backend = "openvino"

    def __init__(self, path: Path, core: Any, config: dict[str, Any], precision: str):
        from openvino._offline_transformations import apply_make_stateful_transformation

        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            raise BundleError(f"OpenVINO cannot load {path.name}: {str(exc).strip().splitlines()[0]}") from exc
        self.inputs = {p.get_any_name(): _partial_shape(p) for p in model.inputs}
        self.outputs = {p.get_any_name(): _partial_shape(p) for p in model.outputs}
        params = {p.get_output_tensor(0).get_any_name(): p for p in model.get_parameters()}
        results = {r.input_value(0).get_any_name(): r for r in model.get_results()}
        self._past = [n for n in self.inputs if n.startswith(PAST_PREFIX)]
        pairs = []
        for name in self._past:
            present = PRESENT_PREFIX + name[len(PAST_PREFIX) :]
            if present not in results:
                raise BundleError(f"{path.name}: input {name} has no output {present}")
            pairs.append((params[name], results[present]))
        # OpenVINO names each variable after its pair: the parameter's then the result's friendly name
        self._variable = {
            p.get_output_tensor(0).get_any_name(): p.get_friendly_name() + r.get_friendly_name() for p, r in pairs
        }
        apply_make_stateful_transformation(model, pairs)
        try:
            self._compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise BundleError(f"OpenVINO cannot compile {path.name}: {str(exc).strip().splitlines()[0]}") from exc
        self.precision = precision
        self._request = self._compiled.create_infer_request()
        self._out_index = {name: i for i, p in enumerate(self._compiled.outputs) for name in p.get_names()}
        self._generation = 0  # bumped by every run: older handles are stale
        self._length = 0  # tokens in the state

    # -- state -------------------------------------------------------------------------
    def _states(self) -> dict[str, Any]:
        return {s.name: s for s in self._request.query_state()}

    def _read_state(self, name: str, generation: int) -> np.ndarray:
        if generation != self._generation:
            raise StaleStateError(f"the k/v of {name} were overwritten by a later run")
        return np.array(self._states()[self._variable[name]].state.data, dtype=np.float32)

    def _load_past(self, past: Mapping[str, Any]) -> None:
        """Make the request's state hold `past` (no copy when it already does)."""
        values = [past[name] for name in self._past]
        if all(isinstance(v, StateValue) and v._session is self and v._generation == self._generation for v in values):
            return
        import openvino as ov

        # an empty past is set explicitly too: reset_state() would start each state at shape
        # (0, kv, 0, hd), its dynamic batch axis 0 instead of 1
        states = self._states()
        for name, value in zip(self._past, values, strict=True):
            array = np.ascontiguousarray(value.numpy() if not isinstance(value, np.ndarray) else value, np.float32)
            states[self._variable[name]].state = ov.Tensor(array)
        self._length = int(values[0].shape[2])

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> list[Any]:
        self._load_past({name: feeds[name] for name in self._past})
        arrays = {n: np.ascontiguousarray(v) for n, v in feeds.items() if not n.startswith(PAST_PREFIX)}
        result = self._request.infer(arrays, share_inputs=True, share_outputs=False)
        self._generation += 1
        self._length += int(arrays["inputs_embeds"].shape[1])
        out: list[Any] = []
        for name in outputs or self.outputs:
            if name.startswith(PRESENT_PREFIX):
                past = PAST_PREFIX + name[len(PRESENT_PREFIX) :]
                shape = (1, int(self.inputs[past][1] or 0), self._length, int(self.inputs[past][3] or 0))
                out.append(StateValue(self, past, self._generation, shape))
            else:
                out.append(result[self._out_index[name]])
        return out


def _partial_shape(port) -> tuple:
    return tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
