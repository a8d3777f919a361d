"""Requests whose bytes do not decode as the method's request message.

gRPC decodes a request before any interceptor behaviour runs, and a decoder that raises
makes grpc.aio answer UNKNOWN with the exception's class and message. The decoder is
wrapped instead: a unary request that does not decode becomes :data:`MALFORMED` (refused
as INVALID_ARGUMENT once the caller is authenticated, by the request decoding interceptor),
and a message of a request stream raises the same error inside the handler.

The error names the field where the bytes go wrong, found by walking the protobuf wire
format against the message descriptor without recursion deeper than protobuf's own limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from medledger.common.errors import FieldViolation, InvalidArgument

MALFORMED_REQUEST: Final = "MALFORMED_REQUEST"
# upb refuses messages nested deeper than this; so does the walk.
MAX_NESTING: Final = 100

_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = range(6)
_FIXED_SIZES: Final = {
    FieldDescriptor.TYPE_FIXED64: 8,
    FieldDescriptor.TYPE_SFIXED64: 8,
    FieldDescriptor.TYPE_DOUBLE: 8,
    FieldDescriptor.TYPE_FIXED32: 4,
    FieldDescriptor.TYPE_SFIXED32: 4,
    FieldDescriptor.TYPE_FLOAT: 4,
}


@dataclass(frozen=True)
class DecodeProblem:
    """Where a request stops decoding: a field path (``entry.resource.type``; empty when no
    declared field is to blame) and what is wrong there."""

    field: str
    description: str


class _Bad(Exception):
    def __init__(self, description: str) -> None:
        self.description = description


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise _Bad("ends inside a varint")
        if shift >= 70:
            raise _Bad("has a varint longer than 10 bytes")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _take(data: bytes, pos: int, size: int) -> int:
    if size > len(data) - pos:
        raise _Bad("ends inside a value")
    return pos + size


def _skip_group(data: bytes, pos: int, number: int, depth: int) -> int:
    if depth > MAX_NESTING:
        raise _Bad("nests too deeply")
    while True:
        tag, pos = _varint(data, pos)
        field_number, wire_type = tag >> 3, tag & 7
        if wire_type == _END_GROUP:
            if field_number != number:
                raise _Bad("has a group end that does not match its start")
            return pos
        pos = _skip(data, pos, field_number, wire_type, depth)


def _skip(data: bytes, pos: int, number: int, wire_type: int, depth: int) -> int:
    if number == 0:
        raise _Bad("has a field number 0")
    if wire_type == _VARINT:
        return _varint(data, pos)[1]
    if wire_type == _FIXED64:
        return _take(data, pos, 8)
    if wire_type == _FIXED32:
        return _take(data, pos, 4)
    if wire_type == _LENGTH:
        size, pos = _varint(data, pos)
        return _take(data, pos, size)
    if wire_type == _START_GROUP:
        return _skip_group(data, pos, number, depth + 1)
    raise _Bad("has an invalid wire type")


def _check_packed(field: FieldDescriptor, payload: bytes) -> None:
    size = _FIXED_SIZES.get(field.type)
    if size is not None:
        if len(payload) % size:
            raise _Bad("ends inside a packed value")
        return
    pos = 0
    while pos < len(payload):
        pos = _varint(payload, pos)[1]


def _walk(descriptor: Descriptor, data: bytes, depth: int) -> DecodeProblem | None:
    """The first problem in ``data`` read as ``descriptor``, or None if none is found."""
    if depth > MAX_NESTING:
        return DecodeProblem("", "nests too deeply")
    pos = 0
    while pos < len(data):
        try:
            tag, pos = _varint(data, pos)
        except _Bad as bad:
            return DecodeProblem("", bad.description)
        number, wire_type = tag >> 3, tag & 7
        field = descriptor.fields_by_number.get(number)
        name = field.name if field is not None else ""
        try:
            if wire_type == _LENGTH and field is not None:
                size, start = _varint(data, pos)
                pos = _take(data, start, size)
                problem = _check_payload(field, data[start:pos], depth)
                if problem is not None:
                    return DecodeProblem(_join(name, problem.field), problem.description)
            else:
                pos = _skip(data, pos, number, wire_type, depth)
        except _Bad as bad:
            return DecodeProblem(name, bad.description)
    return None


def _check_payload(field: FieldDescriptor, payload: bytes, depth: int) -> DecodeProblem | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return DecodeProblem("", "is not valid UTF-8")
    elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
        return _walk(field.message_type, payload, depth + 1)
    elif field.is_repeated and field.type != FieldDescriptor.TYPE_BYTES:
        try:
            _check_packed(field, payload)
        except _Bad as bad:
            return DecodeProblem("", bad.description)
    return None


def _join(name: str, inner: str) -> str:
    return f"{name}.{inner}" if inner else name


def locate_decode_problem(descriptor: Descriptor, data: bytes) -> DecodeProblem:
    """Why ``data`` does not decode as ``descriptor``; a problem the walk cannot place is
    reported against the whole message."""
    return _walk(descriptor, data, 0) or DecodeProblem("", "is not a valid encoding")


def malformed_request(descriptor: Descriptor | None, data: bytes) -> InvalidArgument:
    problem = (
        locate_decode_problem(descriptor, data)
        if descriptor is not None
        else DecodeProblem("", "is not a valid encoding")
    )
    field = problem.field or "request"
    return InvalidArgument(
        [FieldViolation(field, problem.description)],
        message=f"the request message does not decode: {field} {problem.description}",
        reason=MALFORMED_REQUEST,
    )


@dataclass(frozen=True)
class MalformedRequest:
    """What a unary request that does not decode is handed on as."""

    error: InvalidArgument


Deserializer = Callable[[bytes], Any]


def tolerant_deserializer(deserializer: Deserializer, *, streaming: bool) -> Deserializer:
    """``deserializer`` that never lets a ``DecodeError`` reach grpc: a unary request becomes
    a :class:`MalformedRequest`; a message of a request stream raises ``InvalidArgument``."""
    # Generated handlers pass ``RequestMessage.FromString``: its class has the descriptor.
    descriptor: Descriptor | None = getattr(
        getattr(deserializer, "__self__", None), "DESCRIPTOR", None
    )

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            error = malformed_request(descriptor, data)
            if streaming:
                raise error from None
            return MalformedRequest(error)

    return deserialize
