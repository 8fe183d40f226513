"""Read the protobuf wire format without a protobuf library: varints, and the fields of a serialized message.

Used by :mod:`model_export.savedmodel` (``saved_model.pb`` without TensorFlow) and by the predict client (the
packed values of a ``TensorProto``, read without a copy; the varint lengths of a string ``tensor_content``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

# bytes in, bytes slices out; a memoryview in, zero-copy memoryview slices out.
Buffer = TypeVar("Buffer", bytes, memoryview)


class UnsupportedWireType(ValueError):
    """A field of a wire type other than varint (0), 64-bit (1), length-delimited (2) or 32-bit (5)."""

    def __init__(self, wire: int) -> None:
        super().__init__(f"unsupported wire type {wire}")
        self.wire = wire


def varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; ``ValueError`` when truncated or longer than 64 bits."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(buf: Buffer) -> Iterator[tuple[int, int | Buffer]]:
    """Yield ``(field_number, value)``: ints for varints and fixed widths, slices of ``buf`` for length-delimited
    fields. ``ValueError`` for a truncated field, ``UnsupportedWireType`` (a ``ValueError``) for a group."""
    pos = 0
    while pos < len(buf):
        tag, pos = varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = varint(buf, pos)
            yield number, value
        elif wire == 2:
            size, pos = varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            yield number, buf[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            yield number, int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        else:
            raise UnsupportedWireType(wire)
