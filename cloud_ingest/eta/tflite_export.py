"""Write a small float32 MLP as a TFLite flatbuffer, without TensorFlow.

The file is built with the generated flatbuffers builders of the TFLite schema (the
``tflite`` package) and the ``flatbuffers`` runtime: the ingest service trains with numpy
and must not pull in TensorFlow (hundreds of MB) only to serialise a few KB of weights.
:func:`mlp_forward` is the numpy reference the interpreter's output is checked against.

The graph is one subgraph: ``features`` ``[batch, n_in]`` float32, then one
``FULLY_CONNECTED`` operator per :class:`Dense` layer (activation fused), ending in
``outputs`` ``[batch, n_out]`` float32. The batch is fixed in the file: the agent predicts
every remaining stop of a route in one invoke and pads the unused rows (rows of a dense
layer are independent, so padding never changes a real row's answer).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import flatbuffers
import numpy as np
import numpy.typing as npt
import tflite

#: Schema version of the files TFLite reads today (``TFLITE_SCHEMA_VERSION``).
SCHEMA_VERSION = 3
#: The 4-byte file identifier of a TFLite flatbuffer.
FILE_IDENTIFIER = b"TFL3"
INPUT_NAME = "features"
OUTPUT_NAME = "outputs"
SIGNATURE_KEY = "serving_default"
DEFAULT_DESCRIPTION = "fleet-gateway ETA MLP (cloud_ingest.eta.tflite_export)"

# Model.metadata names the runtime or the converter give a meaning to: LiteRT parses
# CONVERSION_METADATA and model_control_dependencies when it loads a model (a value of
# ours there could make the file fail to load), and the converter writes
# min_runtime_version, which tools read.
RESERVED_METADATA_NAMES = frozenset(
    {"CONVERSION_METADATA", "model_control_dependencies", "min_runtime_version"}
)

# TFLite kernels read constant data in place; the C++ builders align Buffer.data to 16
# (schema: force_align: 16), which keeps float loads aligned on every CPU.
_BUFFER_ALIGNMENT = 16

Activation = Literal["relu", "none"]
_FUSED_ACTIVATION: dict[str, int] = {
    "relu": tflite.ActivationFunctionType.RELU,
    "none": tflite.ActivationFunctionType.NONE,
}

FloatArray = npt.NDArray[np.float32]
# A generated ``...StartXxxVector(builder, n)`` function of the schema package.
_VectorStart = Callable[[Any, int], Any]


@dataclass(frozen=True)
class Dense:
    """One fully connected layer: ``y = activation(x @ weights.T + bias)``.

    ``weights`` is ``(out, in)``, TFLite ``FULLY_CONNECTED``'s layout (the transpose of a
    Keras kernel), ``bias`` is ``(out,)``. Both are stored as C-contiguous float32; a
    shape mismatch or a non-finite value raises ``ValueError``.
    """

    weights: FloatArray
    bias: FloatArray
    activation: Activation = "none"

    def __post_init__(self) -> None:
        weights = np.ascontiguousarray(self.weights, dtype=np.float32)
        bias = np.ascontiguousarray(self.bias, dtype=np.float32)
        if weights.ndim != 2 or min(weights.shape) < 1:
            raise ValueError(f"weights must be a non-empty (out, in) matrix, got {weights.shape}")
        if bias.shape != (weights.shape[0],):
            raise ValueError(f"bias must be ({weights.shape[0]},) for weights {weights.shape}")
        if not (np.isfinite(weights).all() and np.isfinite(bias).all()):
            raise ValueError("weights and bias must be finite")
        if self.activation not in _FUSED_ACTIVATION:
            raise ValueError(f"activation must be 'relu' or 'none', got {self.activation!r}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "bias", bias)

    @property
    def n_in(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weights.shape[0])


def mlp_forward(layers: Sequence[Dense], x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The MLP's output for ``x`` (``(n, n_in)``), computed by numpy in float64.

    The reference ("the training framework's output") for the interpreter, which computes
    in float32: the difference between the two is the error the exported file adds.
    """
    check_layers(layers)
    y = np.asarray(x, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != layers[0].n_in:
        raise ValueError(f"x must be (n, {layers[0].n_in}), got {y.shape}")
    for layer in layers:
        y = y @ layer.weights.T.astype(np.float64) + layer.bias.astype(np.float64)
        if layer.activation == "relu":
            y = np.maximum(y, 0.0)
    return y


def check_layers(layers: Sequence[Dense]) -> None:
    """Raise ``ValueError`` unless ``layers`` is a non-empty chain of matching sizes."""
    if not layers:
        raise ValueError("an MLP needs at least one layer")
    for i, (prev, nxt) in enumerate(itertools.pairwise(layers)):
        if nxt.n_in != prev.n_out:
            raise ValueError(f"layer {i + 1} takes {nxt.n_in} inputs, layer {i} gives {prev.n_out}")


def export_mlp(
    layers: Sequence[Dense],
    *,
    batch: int,
    metadata: Mapping[str, str],
    description: str = DEFAULT_DESCRIPTION,
) -> bytes:
    """Serialise ``layers`` as a TFLite model (schema version 3) and return the file.

    - Input ``features`` ``[batch, n_in]`` and output ``outputs`` ``[batch, n_out]``, both
      float32, with a ``serving_default`` signature naming them. ``batch`` is fixed: the
      caller pads a partial batch (the agent predicts all remaining stops of a route,
      e.g. up to 256, in one invoke).
    - One ``FULLY_CONNECTED`` operator per layer, its activation fused (RELU or NONE).
    - Buffer 0 is the empty sentinel the schema requires; every weight and bias tensor
      points to its own buffer, every computed tensor to buffer 0.
    - Each ``metadata`` entry becomes a ``Model.metadata`` entry named by its key whose
      buffer holds the value's UTF-8 bytes, so the agent reads the model's version and
      feature list from the file itself. Names in :data:`RESERVED_METADATA_NAMES` are
      refused (``ValueError``), as are empty names.

    The output is deterministic: the same layers and metadata give the same bytes.
    """
    check_layers(layers)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    for name, value in metadata.items():
        if not name or not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"metadata must map non-empty str to str, got {name!r}: {value!r}")
        if name in RESERVED_METADATA_NAMES:
            raise ValueError(f"metadata name {name!r} is reserved by TFLite")

    b = flatbuffers.Builder(4096)

    # Buffers: 0 the empty sentinel, then weights and bias per layer, then metadata.
    buffer_payloads: list[bytes] = [b""]
    tensors: list[_TensorSpec] = [_TensorSpec(INPUT_NAME, (batch, layers[0].n_in), 0)]
    operators: list[tuple[list[int], list[int], int]] = []
    activations = 0  # index of the tensor feeding the next layer
    for i, layer in enumerate(layers):
        buffer_payloads.append(layer.weights.astype("<f4").tobytes())
        tensors.append(
            _TensorSpec(f"dense_{i}/weights", layer.weights.shape, len(buffer_payloads) - 1)
        )
        weights_index = len(tensors) - 1
        buffer_payloads.append(layer.bias.astype("<f4").tobytes())
        tensors.append(_TensorSpec(f"dense_{i}/bias", layer.bias.shape, len(buffer_payloads) - 1))
        bias_index = len(tensors) - 1
        last = i == len(layers) - 1
        out_name = OUTPUT_NAME if last else f"dense_{i}/output"
        tensors.append(_TensorSpec(out_name, (batch, layer.n_out), 0))
        output_index = len(tensors) - 1
        operators.append(
            (
                [activations, weights_index, bias_index],
                [output_index],
                _FUSED_ACTIVATION[layer.activation],
            )
        )
        activations = output_index
    metadata_buffers: list[tuple[str, int]] = []
    for name, value in metadata.items():
        buffer_payloads.append(value.encode("utf-8"))
        metadata_buffers.append((name, len(buffer_payloads) - 1))
    output_tensor = len(tensors) - 1

    # Flatbuffers are built bottom-up: children (strings, vectors, tables) before the
    # tables that refer to them, and no table may be open while another is built.
    buffer_offsets = [_build_buffer(b, payload) for payload in buffer_payloads]
    tensor_offsets = [_build_tensor(b, spec) for spec in tensors]
    operator_offsets = [
        _build_operator(b, inputs, outputs, fused) for inputs, outputs, fused in operators
    ]

    tflite.OperatorCodeStart(b)
    # FULLY_CONNECTED (9) fits the deprecated int8 field too; runtimes older than the
    # 32-bit builtin_code field read only that one.
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, tflite.BuiltinOperator.FULLY_CONNECTED)
    tflite.OperatorCodeAddBuiltinCode(b, tflite.BuiltinOperator.FULLY_CONNECTED)
    tflite.OperatorCodeAddVersion(b, 1)
    opcode = tflite.OperatorCodeEnd(b)

    subgraph_name = b.CreateString("main")
    tensors_vec = _offset_vector(b, tflite.SubGraphStartTensorsVector, tensor_offsets)
    inputs_vec = _int32_vector(b, tflite.SubGraphStartInputsVector, [0])
    outputs_vec = _int32_vector(b, tflite.SubGraphStartOutputsVector, [output_tensor])
    operators_vec = _offset_vector(b, tflite.SubGraphStartOperatorsVector, operator_offsets)
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors_vec)
    tflite.SubGraphAddInputs(b, inputs_vec)
    tflite.SubGraphAddOutputs(b, outputs_vec)
    tflite.SubGraphAddOperators(b, operators_vec)
    tflite.SubGraphAddName(b, subgraph_name)
    subgraph = tflite.SubGraphEnd(b)

    signature = _build_signature(b, output_tensor)

    metadata_offsets = []
    for name, buffer_index in metadata_buffers:
        name_offset = b.CreateString(name)
        tflite.MetadataStart(b)
        tflite.MetadataAddName(b, name_offset)
        tflite.MetadataAddBuffer(b, buffer_index)
        metadata_offsets.append(tflite.MetadataEnd(b))

    description_offset = b.CreateString(description)
    opcodes_vec = _offset_vector(b, tflite.ModelStartOperatorCodesVector, [opcode])
    subgraphs_vec = _offset_vector(b, tflite.ModelStartSubgraphsVector, [subgraph])
    buffers_vec = _offset_vector(b, tflite.ModelStartBuffersVector, buffer_offsets)
    metadata_vec = _offset_vector(b, tflite.ModelStartMetadataVector, metadata_offsets)
    signatures_vec = _offset_vector(b, tflite.ModelStartSignatureDefsVector, [signature])
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, SCHEMA_VERSION)
    tflite.ModelAddOperatorCodes(b, opcodes_vec)
    tflite.ModelAddSubgraphs(b, subgraphs_vec)
    tflite.ModelAddDescription(b, description_offset)
    tflite.ModelAddBuffers(b, buffers_vec)
    tflite.ModelAddMetadata(b, metadata_vec)
    tflite.ModelAddSignatureDefs(b, signatures_vec)
    model = tflite.ModelEnd(b)
    b.Finish(model, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


@dataclass(frozen=True)
class _TensorSpec:
    name: str
    shape: tuple[int, ...]
    buffer: int


def _build_buffer(b: flatbuffers.Builder, payload: bytes) -> int:
    data = None
    if payload:
        # CreateByteVector cannot align; this is its body with the 16-byte alignment.
        b.StartVector(1, len(payload), _BUFFER_ALIGNMENT)
        b.head = b.head - len(payload)
        b.Bytes[b.head : b.head + len(payload)] = payload
        data = b.EndVector()
    tflite.BufferStart(b)
    if data is not None:
        tflite.BufferAddData(b, data)
    return int(tflite.BufferEnd(b))


def _build_tensor(b: flatbuffers.Builder, spec: _TensorSpec) -> int:
    name = b.CreateString(spec.name)
    shape = _int32_vector(b, tflite.TensorStartShapeVector, list(spec.shape))
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    tflite.TensorAddType(b, tflite.TensorType.FLOAT32)
    tflite.TensorAddBuffer(b, spec.buffer)
    tflite.TensorAddName(b, name)
    return int(tflite.TensorEnd(b))


def _build_operator(
    b: flatbuffers.Builder, inputs: list[int], outputs: list[int], fused: int
) -> int:
    inputs_vec = _int32_vector(b, tflite.OperatorStartInputsVector, inputs)
    outputs_vec = _int32_vector(b, tflite.OperatorStartOutputsVector, outputs)
    tflite.FullyConnectedOptionsStart(b)
    tflite.FullyConnectedOptionsAddFusedActivationFunction(b, fused)
    options = tflite.FullyConnectedOptionsEnd(b)
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, inputs_vec)
    tflite.OperatorAddOutputs(b, outputs_vec)
    tflite.OperatorAddBuiltinOptionsType(b, tflite.BuiltinOptions.FullyConnectedOptions)
    tflite.OperatorAddBuiltinOptions(b, options)
    return int(tflite.OperatorEnd(b))


def _build_signature(b: flatbuffers.Builder, output_tensor: int) -> int:
    maps = []
    for name, index in ((INPUT_NAME, 0), (OUTPUT_NAME, output_tensor)):
        name_offset = b.CreateString(name)
        tflite.TensorMapStart(b)
        tflite.TensorMapAddName(b, name_offset)
        tflite.TensorMapAddTensorIndex(b, index)
        maps.append(tflite.TensorMapEnd(b))
    inputs_vec = _offset_vector(b, tflite.SignatureDefStartInputsVector, [maps[0]])
    outputs_vec = _offset_vector(b, tflite.SignatureDefStartOutputsVector, [maps[1]])
    key = b.CreateString(SIGNATURE_KEY)
    tflite.SignatureDefStart(b)
    tflite.SignatureDefAddInputs(b, inputs_vec)
    tflite.SignatureDefAddOutputs(b, outputs_vec)
    tflite.SignatureDefAddSignatureKey(b, key)
    tflite.SignatureDefAddSubgraphIndex(b, 0)
    return int(tflite.SignatureDefEnd(b))


def _offset_vector(b: flatbuffers.Builder, start: _VectorStart, offsets: Sequence[int]) -> int:
    """A vector of tables/strings; flatbuffers vectors are written last element first."""
    start(b, len(offsets))
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return int(b.EndVector())


def _int32_vector(b: flatbuffers.Builder, start: _VectorStart, values: Sequence[int]) -> int:
    start(b, len(values))
    for value in reversed(values):
        b.PrependInt32(value)
    return int(b.EndVector())
