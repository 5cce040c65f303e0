"""What the contract's two binary frames share: the telemetry batch
(:mod:`.telemetry`) and the events batch (:mod:`.eventbatch`) read and write unsigned
LEB128 varints, seqs and device ids the same way.

Hand-written rather than a library: the frames need shortest-form varints refused when
overlong and every read bounds-checked with an error naming the frame and the field
(``CodecError``), in a few lines; the varint libraries on PyPI check neither.
"""

from __future__ import annotations

from typing import Final

from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.topics import MAX_SEQ, check_device_id

MAX_VARINT_BYTES: Final = 10  # 70 bits; every field is range-checked after reading


def check_seq(value: int, what: str) -> None:
    """:class:`CodecError` unless ``value`` is a seq (1..MAX_SEQ, not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SEQ:
        raise CodecError(f"{what} {value!r:.40} out of range 1..{MAX_SEQ}")


def device_id_from(value: bytes) -> str:
    """The device id in ``value`` (ASCII, the contract's pattern), or :class:`CodecError`."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise CodecError(f"bad device id {value!r:.80}: not ASCII") from None
    return check_device_id(text)


def put_varint(out: bytearray, value: int) -> None:
    """Append ``value`` (>= 0) to ``out`` as an unsigned LEB128 varint."""
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


class Reader:
    """A cursor over ``buf`` whose reads raise :class:`CodecError` past the end, the
    errors prefixed with ``frame`` (e.g. ``"telemetry batch"``)."""

    __slots__ = ("buf", "frame", "pos")

    def __init__(self, buf: bytes, pos: int, frame: str) -> None:
        self.buf = buf
        self.pos = pos
        self.frame = frame

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise CodecError(f"{self.frame}: truncated in {what}")
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def varint(self, what: str) -> int:
        """An unsigned LEB128 value in its shortest form."""
        buf, pos = self.buf, self.pos
        if pos < len(buf) and buf[pos] < 0x80:  # one byte: most fields of most points
            self.pos = pos + 1
            return buf[pos]
        value = shift = 0
        for i in range(pos, min(pos + MAX_VARINT_BYTES, len(buf))):
            byte = buf[i]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if byte == 0 and i > pos:
                    raise CodecError(f"{self.frame}: overlong varint in {what}")
                self.pos = i + 1
                return value
            shift += 7
        if len(buf) - pos < MAX_VARINT_BYTES:
            raise CodecError(f"{self.frame}: truncated in {what}")
        raise CodecError(f"{self.frame}: varint longer than {MAX_VARINT_BYTES} in {what}")
