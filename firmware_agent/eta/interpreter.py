"""Run a TFLite ETA model on the van: one small wrapper over whichever interpreter loads.

:class:`TfliteRunner` prefers LiteRT (``ai_edge_litert``) and falls back to
``tflite_runtime`` (its predecessor, last released as 2.14, NumPy 1 only; for images that
already carry it). With neither installed (e.g. 32-bit Raspberry Pi OS: PyPI has armv7l
wheels of neither), :func:`available_backend` returns ``None`` and
:meth:`TfliteRunner.open` raises :class:`ModelUnavailableError`: the agent then publishes
the baseline ETA and says why in its status. A file that is not a usable model raises
:class:`ModelError`.

Every file is checked in Python before an interpreter sees it: tflite-runtime 2.14
does not verify the flatbuffer and dies with SIGSEGV on a truncated file (LiteRT verifies,
but the agent must not crash on whichever backend it has). The check covers the part of
the TFLite schema an MLP uses (the tables :mod:`cloud_ingest.eta.tflite_export` writes,
plus optional float-model fields such as ``Tensor.quantization``, ``shape_signature`` and
signature defs); a file using anything else (another operator's options, sparsity,
buffers outside the flatbuffer) is refused as unsupported rather than handed over
unchecked.

The check itself is the contract's (:mod:`firmware_agent.contract.model_file`: ingest
runs it too before it signs a model). This module imports only the standard library,
numpy, that reader and the error trees (the tflite-runtime environment of the tests
runs it with nothing else installed).
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from firmware_agent.contract.errors import ModelError
from firmware_agent.contract.model_file import MAX_MODEL_BYTES, read_metadata
from firmware_agent.errors import ModelUnavailableError

Backend = Literal["ai-edge-litert", "tflite-runtime"]

#: Interpreter modules in order of preference.
BACKENDS: tuple[tuple[Backend, str], ...] = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
)

# A runtime that crashes the process (SIGSEGV in native code) would take the agent down
# with it, into a restart loop with no uplink at all. LiteRT 2.3's aarch64 build did
# exactly that inside Interpreter() under qemu-user (tests/test_deb.py runs the arm64
# package there), and tflite-runtime's history has such crashes on Raspberry Pis. So
# on every machine but x86-64 (where the suite runs it thousands of times), each
# backend first loads and runs the shipped model in a child process, once per agent
# process; one that dies by a signal is skipped like a missing one, and the agent
# publishes the next backend's ETAs or the baseline, saying why. FLEET_ETA_PROBE=1
# forces the trial anywhere, =0 skips it.
_TRUSTED_MACHINES = frozenset({"x86_64", "AMD64"})
PROBE_TIMEOUT_S = 120.0
_PROBE = """
import importlib, sys
module = importlib.import_module(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    interpreter = module.Interpreter(model_content=f.read(), num_threads=1)
interpreter.allocate_tensors()
interpreter.invoke()
"""
_SHIPPED_MODEL = Path(__file__).with_name("models") / "default.tflite"

# One thread: the Pi also decodes GNSS, runs the uplink and the geofences, and an MLP
# of a few KB gains nothing from more.
NUM_THREADS = 1


class _Interpreter(Protocol):
    """The part of ``Interpreter`` (LiteRT and tflite-runtime alike) the runner uses."""

    def allocate_tensors(self) -> None: ...
    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def set_tensor(self, tensor_index: int, value: npt.NDArray[Any]) -> None: ...
    def invoke(self) -> None: ...
    def get_tensor(self, tensor_index: int) -> npt.NDArray[Any]: ...


@dataclass(frozen=True)
class _Found:
    backend: Backend
    interpreter_class: Any


def available_backend() -> Backend | None:
    """The interpreter :meth:`TfliteRunner.open` would use, or ``None`` if none loads."""
    try:
        return _find_interpreter().backend
    except ModelUnavailableError:
        return None


def _find_interpreter() -> _Found:
    reasons = []
    for backend, module_name in BACKENDS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            reasons.append(f"{backend}: {err}")
            continue
        if backend == "tflite-runtime" and (problem := _tflite_runtime_problem()):
            reasons.append(f"{backend}: {problem}")
            continue
        if crash := trial_crash(module_name):
            reasons.append(f"{backend}: {crash}")
            continue
        return _Found(backend, module.Interpreter)
    raise ModelUnavailableError("no TFLite interpreter is installed (" + "; ".join(reasons) + ")")


@functools.cache
def trial_crash(module_name: str) -> str | None:
    """Why the interpreter in ``module_name`` must not be loaded in this process (it
    crashed a child process loading and running the shipped model), else None. Cached:
    one trial per backend and process. A trial that fails without a crash (a Python
    error) is not held against the backend: loading in-process reports that properly."""
    wanted = os.environ.get("FLEET_ETA_PROBE", "")
    if wanted == "0" or (wanted != "1" and platform.machine() in _TRUSTED_MACHINES):
        return None
    if not _SHIPPED_MODEL.is_file():
        return None
    try:
        trial = subprocess.run(  # noqa: S603 (this interpreter, our own code)
            [sys.executable, "-c", _PROBE, module_name, str(_SHIPPED_MODEL)],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"a trial load hung for {PROBE_TIMEOUT_S:g} s in a child process"
    except OSError as err:
        return f"a trial load could not run ({err.strerror or err})"
    if trial.returncode < 0:
        try:
            name = signal.Signals(-trial.returncode).name
        except ValueError:
            name = f"signal {-trial.returncode}"
        return f"crashed ({name}) loading a model in a trial process, so it is not used"
    return None


def _tflite_runtime_problem() -> str | None:
    # tflite-runtime's last release (2.14) is built against NumPy 1: it imports under
    # NumPy 2 but its Interpreter() then fails with a SystemError, which would blame the
    # model file. Say so here instead, where it is a missing interpreter.
    try:
        version = importlib.import_module("tflite_runtime").__version__
        major_minor = tuple(int(part) for part in str(version).split(".")[:2])
    except (ImportError, AttributeError, ValueError):
        return None
    if major_minor <= (2, 14) and int(np.__version__.split(".")[0]) >= 2:
        return f"tflite-runtime {version} needs NumPy < 2, found NumPy {np.__version__}"
    return None


class TfliteRunner:
    """A loaded model with one float32 input ``[batch, n_inputs]`` and one float32
    output ``[batch, n_outputs]``; the batch is fixed in the file.

    Open with :meth:`open`. :meth:`predict` takes any number of rows: it pads them to the
    batch (one invoke for up to ``batch`` rows, so all remaining stops of a route in one
    call) and returns only the real rows. Not thread-safe: one runner per thread. A call
    blocks for the invoke (tens of microseconds for a few-KB MLP on a desktop CPU).
    """

    def __init__(
        self,
        *,
        interpreter: _Interpreter,
        backend: Backend,
        model_bytes: bytes,
        metadata: dict[str, str],
    ) -> None:
        """Use :meth:`open`; this wraps an interpreter whose tensors are allocated."""
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"the model must have one input and one output, has {len(inputs)} and "
                f"{len(outputs)}"
            )
        (batch, n_inputs) = _float_matrix_shape(inputs[0], "input")
        (out_batch, n_outputs) = _float_matrix_shape(outputs[0], "output")
        if out_batch != batch:
            raise ModelError(f"input batch {batch} != output batch {out_batch}")
        self._interpreter = interpreter
        # The interpreter reads weights in place from these bytes: keep them alive.
        self._model_bytes = model_bytes
        self._input_index = int(inputs[0]["index"])
        self._output_index = int(outputs[0]["index"])
        self._padded = np.zeros((batch, n_inputs), dtype=np.float32)
        self.backend: Backend = backend
        self.batch = batch
        self.n_inputs = n_inputs
        self.n_outputs = n_outputs
        self.metadata = metadata
        self.size_bytes = len(model_bytes)

    @classmethod
    def open(cls, model: bytes | Path) -> TfliteRunner:
        """Check and load a model (the file's bytes, or its path) with the preferred
        interpreter (:data:`BACKENDS`), on :data:`NUM_THREADS` thread.

        Raises :class:`ModelUnavailableError` when no interpreter loads (checked first:
        the file is not read then), :class:`ModelError` when the file cannot be read, is
        not a TFLite model, is truncated or corrupt, uses what this runner does not
        support, is not a one-input one-output float32 ``[batch, n]`` model, or fails a
        trial invoke (an interpreter error, or a non-finite answer for all-zero input).
        """
        found = _find_interpreter()
        model_bytes = _read_model(model)
        metadata = read_metadata(model_bytes)
        try:
            interpreter = found.interpreter_class(
                model_content=model_bytes, num_threads=NUM_THREADS
            )
            interpreter.allocate_tensors()
            runner = cls(
                interpreter=interpreter,
                backend=found.backend,
                model_bytes=model_bytes,
                metadata=metadata,
            )
            # One invoke now: a model that loads but cannot run (or answers NaN) is
            # refused here, while the agent can still keep its previous model.
            trial = runner.predict(np.zeros((1, runner.n_inputs), dtype=np.float32))
        except ModelError:
            raise
        # ValueError includes UnicodeDecodeError: a tensor name that is not UTF-8.
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"{found.backend} refused the model: {err}") from err
        if not np.isfinite(trial).all():
            raise ModelError("the model's output for an all-zero input is not finite")
        return runner

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The model's outputs ``(n, n_outputs)`` for the rows of ``x`` ``(n, n_inputs)``.

        Rows are padded with zeros to the batch; more than ``batch`` rows take one invoke
        per batch. ``n = 0`` returns an empty array without an invoke. A wrong number of
        columns raises :class:`ModelError` (the model and the features disagree), as does
        an interpreter error (which :meth:`open`'s trial invoke makes unlikely).
        """
        rows = np.asarray(x, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_inputs:
            raise ModelError(f"the model takes (n, {self.n_inputs}) inputs, got {rows.shape}")
        n = rows.shape[0]
        result = np.empty((n, self.n_outputs), dtype=np.float32)
        for start in range(0, n, self.batch):
            chunk = rows[start : start + self.batch]
            self._padded[: len(chunk)] = chunk
            # Zeros, not the previous call's rows: identical calls give identical bytes.
            self._padded[len(chunk) :] = 0.0
            try:
                self._interpreter.set_tensor(self._input_index, self._padded)
                self._interpreter.invoke()
                out = self._interpreter.get_tensor(self._output_index)
            except (ValueError, RuntimeError) as err:
                raise ModelError(f"the model failed to run on {self.backend}: {err}") from err
            result[start : start + len(chunk)] = out[: len(chunk)]
        return result


def _float_matrix_shape(details: Mapping[str, Any], what: str) -> tuple[int, int]:
    shape = tuple(int(d) for d in details["shape"])
    if details["dtype"] != np.float32 or len(shape) != 2 or min(shape) < 1:
        raise ModelError(
            f"the model's {what} must be float32 [batch, n], is "
            f"{np.dtype(details['dtype']).name} {list(shape)}"
        )
    return shape[0], shape[1]


def _read_model(model: bytes | Path) -> bytes:
    if isinstance(model, bytes):
        return model
    try:
        with model.open("rb") as f:
            data = f.read(MAX_MODEL_BYTES + 1)
    except OSError as err:
        raise ModelError(f"cannot read the model file {model}: {err}") from err
    return data
