"""Just enough of the protobuf wire format to read ONNX files and the health protocol.

The client does not depend on the `onnx` package (not installed by scripts/setup.sh) nor
compile onnx.proto; it only needs to find which external data files a model references,
which is a walk over a few nested fields. Decoding follows
https://protobuf.dev/programming-guides/encoding/: a key varint (field << 3 | wire type),
then a varint (0), 8 bytes (1), a length-prefixed payload (2) or 4 bytes (5).
"""
from __future__ import annotations

from typing import Iterator, Tuple, Union

VARINT, I64, LEN, I32 = 0, 1, 2, 5

FieldValue = Union[int, memoryview]


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    """Decodes the varint at `pos`; returns (value, position after it)."""
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def fields(buf: memoryview) -> Iterator[Tuple[int, int, FieldValue]]:
    """Yields (field number, wire type, value) for every field of one message.

    The value is an int for VARINT/I64/I32 fields and a memoryview (no copy) of the payload
    for LEN fields. Groups (wire types 3/4, unused by ONNX) are refused.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == VARINT:
            value, pos = read_varint(buf, pos)
            yield number, wire, value
        elif wire == LEN:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise WireError("length-delimited field runs past the end")
            yield number, wire, buf[pos:pos + size]
            pos += size
        elif wire == I64:
            if pos + 8 > end:
                raise WireError("truncated fixed64")
            yield number, wire, int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wire == I32:
            if pos + 4 > end:
                raise WireError("truncated fixed32")
            yield number, wire, int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire}")


def encode_varint(value: int) -> bytes:
    """The varint encoding of a non-negative int."""
    if value < 0:
        raise ValueError("negative varint")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_len(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, sub-message)."""
    return encode_varint(number << 3 | LEN) + encode_varint(len(payload)) + payload


def encode_int(number: int, value: int) -> bytes:
    """A varint field (int32/int64 >= 0, bool, enum)."""
    return encode_varint(number << 3 | VARINT) + encode_varint(value)
