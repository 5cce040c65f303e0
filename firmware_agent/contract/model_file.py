"""A TFLite model file, read without an interpreter: checked, and its metadata.

Every file is checked here, in Python, before an interpreter sees it: tflite-runtime 2.14
does not verify the flatbuffer and dies with SIGSEGV on a truncated file (LiteRT verifies,
but the agent must not crash on whichever backend it has). The check covers the part of
the TFLite schema an MLP uses (the tables :mod:`cloud_ingest.eta.tflite_export` writes,
plus optional float-model fields such as ``Tensor.quantization``, ``shape_signature`` and
signature defs); a file using anything else (another operator's options, sparsity,
buffers outside the flatbuffer) is refused as unsupported rather than handed over
unchecked. Both sides run it: the van before it loads a model, ingest before it signs one.

Standard library only (the tflite-runtime environment of the tests runs it with
nothing else installed).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from firmware_agent.contract.errors import ModelError

#: An ETA model is a few KB; the bound keeps a bad download from filling a Pi's memory.
MAX_MODEL_BYTES = 16 * 1024 * 1024

_FILE_IDENTIFIER = b"TFL3"
_SCHEMA_VERSION = 3


# --- The flatbuffer check and the metadata reader -----------------------------------
#
# LiteRT's Interpreter does not expose Model.metadata, tflite-runtime neither, and the
# `tflite` schema package is a cloud-side dependency (as is the `flatbuffers` runtime's
# generated code built on it). The `flatbuffers` runtime's Table does no bounds checks
# (a negative index even wraps around in Python), so the checker reads with `struct`
# and checks every offset itself, as the C++ flatbuffers Verifier does.


class _Field(NamedTuple):
    slot: int
    # A scalar ("i8", "u32", ...), "string", "[<scalar>]", "table", "[table]" or "union".
    kind: str
    # The table's schema ("table", "[table]"), or for a union its type field's name and
    # the table schema of each type this runner accepts.
    table: _Table | None = None
    union: tuple[str, Mapping[int, _Table]] | None = None


class _Table(NamedTuple):
    name: str
    fields: Mapping[str, _Field]


_SCALARS = {
    "bool": "<B",
    "i8": "<b",
    "u8": "<B",
    "i32": "<i",
    "u32": "<I",
    "i64": "<q",
    "u64": "<Q",
    "f32": "<f",
}

# The slots are the TFLite schema's field ids (tests/test_eta_tflite.py holds them
# against the `tflite` package's generated code); a field absent here is refused.
_FULLY_CONNECTED_OPTIONS = _Table(
    "FullyConnectedOptions",
    {
        "fused_activation_function": _Field(0, "i8"),
        "weights_format": _Field(1, "i8"),
        "keep_num_dims": _Field(2, "bool"),
        "asymmetric_quantize_inputs": _Field(3, "bool"),
        "quantized_bias_type": _Field(4, "i8"),
    },
)
_BUILTIN_OPTIONS_FULLY_CONNECTED = 8  # BuiltinOptions.FullyConnectedOptions
_QUANTIZATION = _Table(
    "QuantizationParameters",
    {
        "min": _Field(0, "[f32]"),
        "max": _Field(1, "[f32]"),
        "scale": _Field(2, "[f32]"),
        "zero_point": _Field(3, "[i64]"),
        "details_type": _Field(4, "u8"),
        "quantized_dimension": _Field(6, "i32"),
    },
)
_TENSOR = _Table(
    "Tensor",
    {
        "shape": _Field(0, "[i32]"),
        "type": _Field(1, "i8"),
        "buffer": _Field(2, "u32"),
        "name": _Field(3, "string"),
        "quantization": _Field(4, "table", table=_QUANTIZATION),
        "is_variable": _Field(5, "bool"),
        "shape_signature": _Field(7, "[i32]"),
        "has_rank": _Field(8, "bool"),
    },
)
_OPERATOR = _Table(
    "Operator",
    {
        "opcode_index": _Field(0, "u32"),
        "inputs": _Field(1, "[i32]"),
        "outputs": _Field(2, "[i32]"),
        "builtin_options_type": _Field(3, "u8"),
        "builtin_options": _Field(
            4,
            "union",
            union=(
                "builtin_options_type",
                {_BUILTIN_OPTIONS_FULLY_CONNECTED: _FULLY_CONNECTED_OPTIONS},
            ),
        ),
        "custom_options": _Field(5, "[u8]"),
        "custom_options_format": _Field(6, "i8"),
        "mutating_variable_inputs": _Field(7, "[bool]"),
        "intermediates": _Field(8, "[i32]"),
        "debug_metadata_index": _Field(13, "i32"),
    },
)
_SUBGRAPH = _Table(
    "SubGraph",
    {
        "tensors": _Field(0, "[table]", table=_TENSOR),
        "inputs": _Field(1, "[i32]"),
        "outputs": _Field(2, "[i32]"),
        "operators": _Field(3, "[table]", table=_OPERATOR),
        "name": _Field(4, "string"),
        "debug_metadata_index": _Field(5, "i32"),
    },
)
_OPERATOR_CODE = _Table(
    "OperatorCode",
    {
        "deprecated_builtin_code": _Field(0, "i8"),
        "custom_code": _Field(1, "string"),
        "version": _Field(2, "i32"),
        "builtin_code": _Field(3, "i32"),
    },
)
_BUFFER = _Table(
    "Buffer",
    {"data": _Field(0, "[u8]"), "offset": _Field(1, "u64"), "size": _Field(2, "u64")},
)
_METADATA = _Table("Metadata", {"name": _Field(0, "string"), "buffer": _Field(1, "u32")})
_TENSOR_MAP = _Table("TensorMap", {"name": _Field(0, "string"), "tensor_index": _Field(1, "u32")})
_SIGNATURE_DEF = _Table(
    "SignatureDef",
    {
        "inputs": _Field(0, "[table]", table=_TENSOR_MAP),
        "outputs": _Field(1, "[table]", table=_TENSOR_MAP),
        "signature_key": _Field(2, "string"),
        "subgraph_index": _Field(4, "u32"),
    },
)
_MODEL = _Table(
    "Model",
    {
        "version": _Field(0, "u32"),
        "operator_codes": _Field(1, "[table]", table=_OPERATOR_CODE),
        "subgraphs": _Field(2, "[table]", table=_SUBGRAPH),
        "description": _Field(3, "string"),
        "buffers": _Field(4, "[table]", table=_BUFFER),
        "metadata_buffer": _Field(5, "[i32]"),
        "metadata": _Field(6, "[table]", table=_METADATA),
        "signature_defs": _Field(7, "[table]", table=_SIGNATURE_DEF),
    },
)


class _TableAt(NamedTuple):
    pos: int
    vtable: int
    vtable_size: int
    table_size: int


class _Flatbuffer:
    """Bounds-checked reads of a TFLite flatbuffer; any violation raises ModelError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._verified: set[tuple[int, str]] = set()

    def int_at(self, fmt: str, pos: int) -> int:
        """The integer of struct format ``fmt`` at ``pos``."""
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise ModelError(f"truncated or corrupt model: read of {size} bytes at {pos}")
        return int(struct.unpack_from(fmt, self.data, pos)[0])

    def deref(self, pos: int) -> int:
        """The position a uoffset stored at ``pos`` points to."""
        offset = self.int_at("<I", pos)
        target = pos + offset
        if offset == 0 or offset >= 2**31 or target >= len(self.data) or target % 4:
            raise ModelError(f"truncated or corrupt model: bad offset {offset} at {pos}")
        return target

    def table(self, pos: int) -> _TableAt:
        if pos % 4:
            raise ModelError(f"corrupt model: misaligned table at {pos}")
        vtable = pos - self.int_at("<i", pos)
        if vtable % 2:
            raise ModelError(f"corrupt model: misaligned vtable at {vtable}")
        vtable_size = self.int_at("<H", vtable)
        table_size = self.int_at("<H", vtable + 2)
        if vtable_size < 4 or vtable_size % 2 or table_size < 4:
            raise ModelError(f"corrupt model: bad vtable at {vtable}")
        if vtable + vtable_size > len(self.data) or pos + table_size > len(self.data):
            raise ModelError(f"truncated or corrupt model: table at {pos} runs past the end")
        return _TableAt(pos, vtable, vtable_size, table_size)

    def present_slots(self, t: _TableAt) -> list[int]:
        n_slots = (t.vtable_size - 4) // 2
        return [i for i in range(n_slots) if self.int_at("<H", t.vtable + 4 + 2 * i)]

    def field(self, t: _TableAt, slot: int, size: int) -> int | None:
        """The position of the field in ``slot`` (``size`` bytes), or None if absent."""
        if 4 + 2 * slot >= t.vtable_size:
            return None
        offset = self.int_at("<H", t.vtable + 4 + 2 * slot)
        if offset == 0:
            return None
        if offset + size > t.table_size or (t.pos + offset) % min(size, 8):
            raise ModelError(f"corrupt model: bad field {slot} in the table at {t.pos}")
        return t.pos + offset

    def vector(self, pos: int, element_size: int) -> tuple[int, int]:
        """(position of the first element, length) of the vector at ``pos``."""
        n = self.int_at("<I", pos)
        if pos + 4 + n * element_size > len(self.data):
            raise ModelError(f"truncated or corrupt model: vector of {n} at {pos}")
        return pos + 4, n

    def byte_vector(self, pos: int) -> bytes:
        start, n = self.vector(pos, 1)
        return self.data[start : start + n]

    def string(self, pos: int) -> bytes:
        start, n = self.vector(pos, 1)
        if self.int_at("<B", start + n) != 0:
            raise ModelError(f"corrupt model: string at {pos} is not terminated")
        return self.data[start : start + n]

    def verify(self, pos: int, schema: _Table) -> None:
        """Check the table at ``pos`` and everything it refers to, as ``schema``."""
        if (pos, schema.name) in self._verified:
            return  # a table shared by many offsets is checked once: linear time
        self._verified.add((pos, schema.name))
        t = self.table(pos)
        known = {f.slot for f in schema.fields.values()}
        for slot in self.present_slots(t):
            if slot not in known:
                raise ModelError(f"unsupported model: {schema.name} field {slot} is set")
        for f in schema.fields.values():
            self._verify_field(t, f, schema)

    def _verify_field(self, t: _TableAt, f: _Field, schema: _Table) -> None:
        if f.kind in _SCALARS:
            self.field(t, f.slot, struct.calcsize(_SCALARS[f.kind]))
            return
        at = self.field(t, f.slot, 4)
        if at is None:
            return
        target = self.deref(at)
        if f.kind == "string":
            self.string(target)
        elif f.kind.startswith("[") and f.kind[1:-1] in _SCALARS:
            self.vector(target, struct.calcsize(_SCALARS[f.kind[1:-1]]))
        elif f.kind == "table" and f.table is not None:
            self.verify(target, f.table)
        elif f.kind == "[table]" and f.table is not None:
            start, n = self.vector(target, 4)
            for i in range(n):
                self.verify(self.deref(start + 4 * i), f.table)
        elif f.kind == "union" and f.union is not None:
            type_field, tables = f.union
            type_at = self.field(t, schema.fields[type_field].slot, 1)
            union_type = 0 if type_at is None else self.int_at("<B", type_at)
            if union_type not in tables:
                raise ModelError(f"unsupported model: {schema.name} union type {union_type}")
            self.verify(target, tables[union_type])
        else:  # pragma: no cover - a mistake in the schema tables above
            raise AssertionError(f"unknown field kind {f.kind!r}")

    def get(self, t: _TableAt, schema: _Table, name: str) -> Any:
        """A scalar field's value (0 when absent), or the position a reference points to
        (None when absent); only on tables :meth:`verify` accepted."""
        f = schema.fields[name]
        if f.kind in _SCALARS:
            at = self.field(t, f.slot, struct.calcsize(_SCALARS[f.kind]))
            return 0 if at is None else self.int_at(_SCALARS[f.kind], at)
        at = self.field(t, f.slot, 4)
        return None if at is None else self.deref(at)

    def tables(self, vector_pos: int | None) -> list[_TableAt]:
        if vector_pos is None:
            return []
        start, n = self.vector(vector_pos, 4)
        return [self.table(self.deref(start + 4 * i)) for i in range(n)]


def read_metadata(model_bytes: bytes) -> dict[str, str]:
    """Check that ``model_bytes`` is a well-formed TFLite model this runner supports and
    return its ``Model.metadata`` entries (name -> the buffer's bytes as UTF-8).

    Needs no interpreter: the agent can report a model's version even without one.
    Raises :class:`ModelError` as :meth:`TfliteRunner.open` does for a bad file.
    """
    return read_model(model_bytes).metadata


Shape = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelFile:
    """What a checked model file says without an interpreter: its metadata, and the
    shapes of its first subgraph's input and output tensors."""

    metadata: dict[str, str]
    inputs: tuple[Shape, ...]
    outputs: tuple[Shape, ...]


def read_model(model_bytes: bytes) -> ModelFile:
    """:func:`read_metadata`, and the input and output shapes; :class:`ModelError` for
    a file this reader refuses."""
    if len(model_bytes) > MAX_MODEL_BYTES:
        raise ModelError(f"model of {len(model_bytes)} bytes, the limit is {MAX_MODEL_BYTES}")
    if len(model_bytes) < 8 or model_bytes[4:8] != _FILE_IDENTIFIER:
        raise ModelError(
            f"not a TFLite model: file identifier {bytes(model_bytes[4:8])!r}, "
            f"expected {_FILE_IDENTIFIER!r}"
        )
    fb = _Flatbuffer(model_bytes)
    root = fb.deref(0)
    fb.verify(root, _MODEL)
    model = fb.table(root)
    version = fb.get(model, _MODEL, "version")
    if version != _SCHEMA_VERSION:
        raise ModelError(f"TFLite schema version {version}, this runner reads {_SCHEMA_VERSION}")

    buffers = fb.tables(fb.get(model, _MODEL, "buffers"))
    for buffer in buffers:
        if fb.get(buffer, _BUFFER, "offset") > 1:
            # Data outside the flatbuffer is for models over 2 GB; never an ETA MLP.
            raise ModelError("unsupported model: a buffer stored outside the flatbuffer")
    metadata: dict[str, str] = {}
    for entry in fb.tables(fb.get(model, _MODEL, "metadata")):
        name_at = fb.get(entry, _METADATA, "name")
        buffer_index = fb.get(entry, _METADATA, "buffer")
        if name_at is None or buffer_index >= len(buffers):
            raise ModelError("corrupt model: metadata entry without a name or buffer")
        data_at = fb.get(buffers[buffer_index], _BUFFER, "data")
        value = b"" if data_at is None else fb.byte_vector(data_at)
        try:
            name = fb.string(name_at).decode("utf-8")
            metadata_value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ModelError(f"model metadata is not UTF-8: {err}") from err
        if name in metadata:
            raise ModelError(f"model metadata name {name!r} appears twice")
        metadata[name] = metadata_value
    subgraphs = fb.tables(fb.get(model, _MODEL, "subgraphs"))
    if not subgraphs:
        raise ModelError("corrupt model: no subgraph")
    graph = subgraphs[0]
    tensors = fb.tables(fb.get(graph, _SUBGRAPH, "tensors"))

    def shapes(name: str) -> tuple[Shape, ...]:
        out = []
        for index in _ints(fb, fb.get(graph, _SUBGRAPH, name)):
            if not 0 <= index < len(tensors):
                raise ModelError(f"corrupt model: subgraph {name} names tensor {index}")
            out.append(tuple(_ints(fb, fb.get(tensors[index], _TENSOR, "shape"))))
        return tuple(out)

    return ModelFile(metadata, shapes("inputs"), shapes("outputs"))


def _ints(fb: _Flatbuffer, vector_pos: int | None) -> list[int]:
    if vector_pos is None:
        return []
    start, n = fb.vector(vector_pos, 4)
    return [fb.int_at("<i", start + 4 * i) for i in range(n)]
