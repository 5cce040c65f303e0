"""ETA models as .tflite files: written without TensorFlow, run by the agent's wrapper.

The exporter (cloud_ingest.eta.tflite_export) writes numpy MLPs; the runner
(firmware_agent.eta.interpreter) runs them on the installed LiteRT interpreter and, in a
venv of its own (it needs NumPy < 2), on tflite-runtime. The interpreter's outputs must
equal the numpy reference's within 1e-4.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import tflite

from cloud_ingest.eta.tflite_export import (
    RESERVED_METADATA_NAMES,
    Dense,
    export_mlp,
    mlp_forward,
)
from firmware_agent.contract import model_file as runner_module
from firmware_agent.contract.errors import ModelError
from firmware_agent.contract.model_file import read_metadata
from firmware_agent.errors import AgentError, ModelUnavailableError
from firmware_agent.eta import interpreter as interpreter_module
from firmware_agent.eta.interpreter import TfliteRunner, available_backend, trial_crash

REPO = Path(__file__).resolve().parents[1]
MAX_ABS_ERROR = 1e-4
METADATA = {
    "model_version": "eta-2026.11.21-1",
    "features": json.dumps(["remaining_m", "stops_before", "speed_mps", "hour_sin"]),
    "note": "Zürich → Liverpool, ÿ",  # non-ASCII survives the round trip
}


def random_mlp(sizes: list[int], *, seed: int, last_relu: bool = False) -> list[Dense]:
    """He-initialised layers: hidden layers ReLU, the last one linear unless asked."""
    rng = np.random.default_rng(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        last = i == len(sizes) - 2
        layers.append(
            Dense(
                weights=rng.normal(0.0, np.sqrt(2.0 / n_in), (n_out, n_in)).astype(np.float32),
                bias=rng.normal(0.0, 0.1, n_out).astype(np.float32),
                activation="relu" if (not last or last_relu) else "none",
            )
        )
    return layers


@pytest.fixture
def litert() -> None:
    # The project's dependencies install LiteRT on every platform CI and developers use;
    # elsewhere (a 32-bit Pi) these tests skip, but CI must run them.
    if available_backend() != "ai-edge-litert":
        reason = "ai-edge-litert does not import (no wheel for this platform?)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the LiteRT tests must run)")
        pytest.skip(reason)


@pytest.mark.usefixtures("litert")
@pytest.mark.parametrize(
    ("sizes", "seed", "batch", "last_relu"),
    [
        ([16, 32, 32, 2], 0, 256, False),
        ([16, 32, 32, 2], 1, 256, True),
        ([3, 1], 2, 7, False),
        ([8, 64, 1], 3, 1, False),
        ([20, 16, 16, 16, 4], 4, 150, False),
        ([40, 128, 3], 5, 32, True),
    ],
)
def test_litert_output_equals_the_numpy_reference(
    sizes: list[int], seed: int, batch: int, last_relu: bool
) -> None:
    layers = random_mlp(sizes, seed=seed, last_relu=last_relu)
    runner = TfliteRunner.open(export_mlp(layers, batch=batch, metadata=METADATA))
    assert (runner.backend, runner.batch) == ("ai-edge-litert", batch)
    assert (runner.n_inputs, runner.n_outputs) == (sizes[0], sizes[-1])

    rng = np.random.default_rng(100 + seed)
    x = rng.normal(0.0, 2.0, (2 * batch + 5, sizes[0])).astype(np.float32)
    expected = mlp_forward(layers, x)
    # A full batch, a partial one (padded), one row, and more than a batch (chunked).
    for n in (batch, batch // 3 + 1, 1, len(x)):
        y = runner.predict(x[:n])
        assert y.shape == (n, sizes[-1])
        assert y.dtype == np.float32
        assert np.abs(y - expected[:n]).max() <= MAX_ABS_ERROR
    if last_relu:
        assert (runner.predict(x) >= 0).all()


@pytest.mark.usefixtures("litert")
def test_padding_never_changes_a_real_row() -> None:
    layers = random_mlp([16, 32, 32, 2], seed=7)
    runner = TfliteRunner.open(export_mlp(layers, batch=256, metadata={}))
    x = np.random.default_rng(7).normal(size=(256, 16))
    full = runner.predict(x)
    for n in (1, 13, 255):
        np.testing.assert_array_equal(runner.predict(x[:n]), full[:n])
    assert runner.predict(np.empty((0, 16))).shape == (0, 2)


def test_the_file_is_a_tflite_model_as_the_schema_says() -> None:
    layers = random_mlp([16, 32, 32, 2], seed=8)
    data = export_mlp(layers, batch=256, metadata=METADATA, description="test model")
    assert data[4:8] == b"TFL3"
    model = tflite.Model.GetRootAs(data)
    assert model.Version() == 3
    assert model.Description() == b"test model"
    assert model.BuffersLength() == 1 + 2 * len(layers) + len(METADATA)
    assert model.Buffers(0).DataLength() == 0  # the empty sentinel
    assert model.SubgraphsLength() == 1
    graph = model.Subgraphs(0)
    assert model.OperatorCodes(0).BuiltinCode() == tflite.BuiltinOperator.FULLY_CONNECTED
    assert graph.OperatorsLength() == len(layers)
    features = graph.Tensors(graph.Inputs(0))
    outputs = graph.Tensors(graph.Outputs(0))
    assert (features.Name(), features.ShapeAsNumpy().tolist()) == (b"features", [256, 16])
    assert (outputs.Name(), outputs.ShapeAsNumpy().tolist()) == (b"outputs", [256, 2])
    for i, layer in enumerate(layers):
        op = graph.Operators(i)
        assert op.BuiltinOptionsType() == tflite.BuiltinOptions.FullyConnectedOptions
        options = tflite.FullyConnectedOptions()
        options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        fused = {"relu": tflite.ActivationFunctionType.RELU, "none": 0}[layer.activation]
        assert options.FusedActivationFunction() == fused
        x_index, w_index, b_index = op.InputsAsNumpy().tolist()
        for index, array in ((w_index, layer.weights), (b_index, layer.bias)):
            tensor = graph.Tensors(index)
            assert tensor.Type() == tflite.TensorType.FLOAT32
            assert tensor.Buffer() != 0
            buffer = model.Buffers(tensor.Buffer())
            stored = buffer.DataAsNumpy().view("<f4")
            np.testing.assert_array_equal(stored.reshape(array.shape), array)
            # Aligned to 16 as TFLite's own writer does: kernels read floats in place.
            assert buffer._tab.Vector(buffer._tab.Offset(4)) % 16 == 0
        assert graph.Tensors(x_index).Buffer() == 0  # computed, not constant
    signature = model.SignatureDefs(0)
    assert signature.SignatureKey() == b"serving_default"


@pytest.mark.usefixtures("litert")
def test_metadata_round_trips() -> None:
    data = export_mlp(random_mlp([4, 2], seed=9), batch=8, metadata=METADATA)
    assert read_metadata(data) == METADATA
    assert TfliteRunner.open(data).metadata == METADATA
    # The schema package (cloud side) reads the same entries as the agent's reader.
    model = tflite.Model.GetRootAs(data)
    by_schema = {}
    for j in range(model.MetadataLength()):
        entry = model.Metadata(j)
        value = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
        by_schema[entry.Name().decode()] = value.decode()
    assert by_schema == METADATA
    assert read_metadata(export_mlp(random_mlp([4, 2], seed=9), batch=8, metadata={})) == {}


def test_export_is_deterministic() -> None:
    layers = random_mlp([16, 32, 32, 2], seed=10)
    assert export_mlp(layers, batch=256, metadata=METADATA) == export_mlp(
        layers, batch=256, metadata=METADATA
    )


def test_a_16_32_32_2_model_is_a_few_kb() -> None:
    data = export_mlp(random_mlp([16, 32, 32, 2], seed=11), batch=256, metadata=METADATA)
    weights_bytes = 4 * (16 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2)
    assert weights_bytes < len(data) < 16 * 1024


@pytest.mark.usefixtures("litert")
def test_a_model_opens_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "eta.tflite"
    path.write_bytes(export_mlp(random_mlp([5, 3], seed=12), batch=4, metadata=METADATA))
    assert TfliteRunner.open(path).metadata == METADATA
    with pytest.raises(ModelError, match="cannot read"):
        TfliteRunner.open(tmp_path / "missing.tflite")


def _bad_files(data: bytes) -> Iterator[tuple[str, bytes]]:
    yield "empty", b""
    yield "garbage", b"not a model at all, just text" * 10
    yield "identifier only", b"TFL3" * 40
    yield "random bytes", bytes(np.random.default_rng(13).integers(0, 256, 4096, dtype=np.uint8))
    for n in range(1, len(data), 37):
        yield f"truncated to {n}", data[:n]


@pytest.mark.usefixtures("litert")
def test_garbage_and_truncated_files_raise_model_error() -> None:
    data = export_mlp(random_mlp([16, 32, 2], seed=13), batch=16, metadata=METADATA)
    for label, bad in _bad_files(data):
        for check in (TfliteRunner.open, read_metadata):
            try:
                check(bad)
            except ModelError:
                continue
            pytest.fail(f"{check.__qualname__} accepted a bad file: {label}")


@pytest.mark.usefixtures("litert")
def test_corrupted_files_raise_only_model_error() -> None:
    # Flipped bytes anywhere: the checker or the interpreter may accept a file whose
    # weights changed, but nothing else than ModelError may come out, and no crash.
    data = export_mlp(random_mlp([3, 4, 2], seed=14), batch=4, metadata={"v": "1"})
    rng = random.Random(14)
    for _ in range(150):
        bad = bytearray(data)
        for _ in range(rng.choice((1, 2, 4))):
            bad[rng.randrange(8, len(bad))] = rng.randrange(256)
        with contextlib.suppress(ModelError):
            TfliteRunner.open(bytes(bad)).predict(np.ones((2, 3)))


@pytest.mark.usefixtures("litert")
def test_a_non_finite_model_is_refused() -> None:
    layers = random_mlp([3, 2], seed=15)
    layers[0].weights[0, 0] = np.nan  # after Dense checked it: as a corrupt file would
    with pytest.raises(ModelError, match="not finite"):
        TfliteRunner.open(export_mlp(layers, batch=4, metadata={}))


@pytest.mark.usefixtures("litert")
def test_wrong_feature_count_is_a_model_error() -> None:
    runner = TfliteRunner.open(export_mlp(random_mlp([6, 2], seed=16), batch=4, metadata={}))
    with pytest.raises(ModelError, match=r"\(n, 6\)"):
        runner.predict(np.zeros((3, 5)))
    with pytest.raises(ModelError):
        runner.predict(np.zeros(6))


@pytest.mark.usefixtures("litert")
def test_what_the_checker_does_not_know_is_refused_before_the_interpreter() -> None:
    # A table field the checker has no schema for: it could point anywhere.
    b = flatbuffers.Builder(64)
    b.StartObject(10)
    tflite.ModelAddVersion(b, 3)
    b.PrependInt32Slot(9, 7, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    with pytest.raises(ModelError, match="unsupported model: Model field 9 is set"):
        read_metadata(bytes(b.Output()))

    # Operator options of a type the checker has no schema for (AddOptions).
    data = bytearray(export_mlp(random_mlp([3, 2], seed=17), batch=4, metadata={}))
    op = tflite.Model.GetRootAs(bytes(data)).Subgraphs(0).Operators(0)
    options_type_at = op._tab.Pos + op._tab.Offset(10)  # Operator.builtin_options_type
    assert data[options_type_at] == tflite.BuiltinOptions.FullyConnectedOptions
    data[options_type_at] = tflite.BuiltinOptions.AddOptions
    with pytest.raises(ModelError, match="unsupported model: Operator union type"):
        TfliteRunner.open(bytes(data))


def test_export_refuses_bad_layers_and_metadata() -> None:
    layers = random_mlp([4, 3, 2], seed=18)
    with pytest.raises(ValueError, match="layer 1 takes"):
        export_mlp([layers[0], layers[0]], batch=4, metadata={})
    with pytest.raises(ValueError, match="at least one layer"):
        export_mlp([], batch=4, metadata={})
    with pytest.raises(ValueError, match="batch"):
        export_mlp(layers, batch=0, metadata={})
    for name in RESERVED_METADATA_NAMES:
        with pytest.raises(ValueError, match="reserved"):
            export_mlp(layers, batch=4, metadata={name: "x"})
    with pytest.raises(ValueError, match="bias"):
        Dense(weights=np.zeros((2, 3), np.float32), bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="finite"):
        Dense(weights=np.full((2, 3), np.inf, np.float32), bias=np.zeros(2, np.float32))


def test_the_checker_schema_matches_the_tflite_schema_package() -> None:
    # The agent's checker carries its own copy of the schema's field ids (it must not
    # depend on the `tflite` package); hold each against the package's generated code.
    flags = {
        "bool": "BoolFlags",
        "i8": "Int8Flags",
        "u8": "Uint8Flags",
        "i32": "Int32Flags",
        "u32": "Uint32Flags",
        "i64": "Int64Flags",
        "u64": "Uint64Flags",
        "f32": "Float32Flags",
    }
    seen = set()
    todo = [runner_module._MODEL]
    while todo:
        table = todo.pop()
        if table.name in seen:
            continue
        seen.add(table.name)
        generated = getattr(tflite, table.name)
        for name, field in table.fields.items():
            accessor = "".join(part.capitalize() for part in name.split("_"))
            source = inspect.getsource(getattr(generated, accessor))
            offset = re.search(r"Offset\((\d+)\)", source)
            assert offset, f"{table.name}.{accessor}"
            assert int(offset.group(1)) == 4 + 2 * field.slot, f"{table.name}.{name}"
            scalar = field.kind.strip("[]")
            if scalar in flags:
                assert flags[scalar] in source, f"{table.name}.{name} is not {field.kind}"
            if field.table is not None:
                todo.append(field.table)
            if field.union is not None:
                todo.extend(field.union[1].values())
    assert len(seen) >= 10


# --- Which interpreter --------------------------------------------------------------


def _block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    # None in sys.modules makes `import x` raise ImportError, as if x were not installed.
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def _fake_tflite_runtime(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    """tflite_runtime, played by LiteRT's Interpreter (the same C++ API)."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    package = types.ModuleType("tflite_runtime")
    package.__version__ = version  # type: ignore[attr-defined]
    submodule = types.ModuleType("tflite_runtime.interpreter")
    submodule.Interpreter = Interpreter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tflite_runtime", package)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", submodule)


def test_without_any_interpreter_opening_raises_model_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = export_mlp(random_mlp([4, 2], seed=19), batch=4, metadata=METADATA)
    _block(monkeypatch, "ai_edge_litert", "ai_edge_litert.interpreter")
    _block(monkeypatch, "tflite_runtime", "tflite_runtime.interpreter")
    assert available_backend() is None
    with pytest.raises(ModelUnavailableError, match=r"ai-edge-litert: .*tflite-runtime: ") as err:
        TfliteRunner.open(data)
    # Callers may catch it as the agent's error or as a missing module, never as a bad
    # file (which would make the agent roll back a good model).
    assert isinstance(err.value, AgentError)
    assert isinstance(err.value, ImportError)
    assert not isinstance(err.value, ModelError)
    # The model's metadata is still readable, for the agent's status.
    assert read_metadata(data) == METADATA


@pytest.mark.usefixtures("litert")
def test_falls_back_to_tflite_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    layers = random_mlp([16, 32, 32, 2], seed=20)
    _fake_tflite_runtime(monkeypatch, "2.99.0")
    _block(monkeypatch, "ai_edge_litert", "ai_edge_litert.interpreter")
    assert available_backend() == "tflite-runtime"
    runner = TfliteRunner.open(export_mlp(layers, batch=256, metadata=METADATA))
    assert runner.backend == "tflite-runtime"
    x = np.random.default_rng(20).normal(size=(40, 16))
    assert np.abs(runner.predict(x) - mlp_forward(layers, x)).max() <= MAX_ABS_ERROR


@pytest.mark.usefixtures("litert")
@pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2, reason="needs NumPy >= 2")
def test_tflite_runtime_under_numpy_2_counts_as_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_tflite_runtime(monkeypatch, "2.14.0")
    _block(monkeypatch, "ai_edge_litert", "ai_edge_litert.interpreter")
    assert available_backend() is None
    with pytest.raises(ModelUnavailableError, match="needs NumPy < 2"):
        TfliteRunner.open(export_mlp(random_mlp([4, 2], seed=21), batch=4, metadata={}))


def test_a_backend_that_crashes_its_trial_process_is_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime dying of SIGSEGV in native code (LiteRT's aarch64 build did, under
    qemu-user) is tried in a child process first and skipped: the agent lives on."""
    (tmp_path / "crashing_interpreter.py").write_text(
        "import ctypes\n\nclass Interpreter:\n    def __init__(self, **kw):\n"
        "        ctypes.string_at(0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("FLEET_ETA_PROBE", "1")
    monkeypatch.setattr(
        interpreter_module, "BACKENDS", (("ai-edge-litert", "crashing_interpreter"),)
    )
    trial_crash.cache_clear()
    try:
        assert available_backend() is None
        with pytest.raises(ModelUnavailableError, match=r"crashed \(SIGSEGV\)"):
            TfliteRunner.open(export_mlp(random_mlp([4, 2], seed=22), batch=4, metadata={}))
        # Skipped on x86-64 unless asked (the suite would pay a process per agent).
        monkeypatch.delenv("FLEET_ETA_PROBE")
        trial_crash.cache_clear()
        if os.uname().machine == "x86_64":
            assert trial_crash("crashing_interpreter") is None  # not tried
        else:
            assert "crashed" in (trial_crash("crashing_interpreter") or "")
    finally:
        trial_crash.cache_clear()


@pytest.mark.usefixtures("litert")
def test_a_sound_backend_passes_its_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ETA_PROBE", "1")
    trial_crash.cache_clear()
    try:
        assert trial_crash("ai_edge_litert.interpreter") is None
        assert available_backend() == "ai-edge-litert"
    finally:
        trial_crash.cache_clear()


# --- tflite-runtime, for real, in its own venv ----------------------------------------

RUNTIME_VENV = REPO / ".venv-tflite-runtime"
# tflite-runtime's last release; it is built against NumPy 1.
RUNTIME_REQUIREMENTS = ("tflite-runtime==2.14.0", "numpy<2")


def _runtime_python() -> Path:
    """The venv's python, made on first use (kept; remade when the pins change).

    Cannot be made (no PyPI, no wheel for this Python): skip with the reason, but fail
    under CI (``CI`` non-empty), which must run this check, not pass by skipping it.
    """
    python = RUNTIME_VENV / "bin" / "python"
    stamp = RUNTIME_VENV / ".requirements"
    wanted = "\n".join(RUNTIME_REQUIREMENTS)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(RUNTIME_VENV, ignore_errors=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(RUNTIME_VENV)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        subprocess.run(
            [*pip, "--retries", "2", "--timeout", "30", *RUNTIME_REQUIREMENTS],
            check=True,
            capture_output=True,
            text=True,
            timeout=240,
        )
    except (OSError, subprocess.SubprocessError) as err:
        shutil.rmtree(RUNTIME_VENV, ignore_errors=True)
        detail = getattr(err, "stderr", None) or str(err)
        reason = f"cannot make {RUNTIME_VENV.name} with {' '.join(RUNTIME_REQUIREMENTS)}: "
        reason += "\n".join(str(detail).strip().splitlines()[-4:])
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the tflite-runtime check must run)")
        pytest.skip(reason)
    stamp.write_text(wanted)
    return python


@pytest.mark.slow
def test_tflite_runtime_runs_the_model(tmp_path: Path) -> None:
    python = _runtime_python()
    layers = random_mlp([16, 32, 32, 2], seed=22)
    batch = 256
    model = tmp_path / "eta.tflite"
    model.write_bytes(export_mlp(layers, batch=batch, metadata=METADATA))
    x = np.random.default_rng(22).normal(0.0, 2.0, (batch + 40, 16)).astype(np.float32)
    np.savez(tmp_path / "cases.npz", x=x, expected=mlp_forward(layers, x))
    (tmp_path / "metadata.json").write_text(json.dumps(METADATA), encoding="utf-8")

    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONHOME", "VIRTUAL_ENV"}}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [
            str(python),
            str(REPO / "tests/tflite_runtime_check.py"),
            str(model),
            str(tmp_path / "cases.npz"),
            str(tmp_path / "metadata.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "tflite-runtime"
    assert report["numpy"].startswith("1.")
    assert report["metadata"] == METADATA
    assert max(report["max_abs_error"].values()) <= MAX_ABS_ERROR
