"""Fuzzing a running server from its reflection service alone, as an outside client would.

:func:`reflected_methods` reads the methods and request descriptors a server publishes;
:func:`request_bytes` builds requests from a descriptor with hypothesis (boundary integers,
out-of-range timestamps and enum values, huge, deeply nested and JOSE-shaped strings);
:func:`wire_mutants` damages them on the wire (invalid UTF-8, truncated and overlong varints,
lengths past the end, unbalanced groups, flipped bytes); :func:`call` sends raw bytes to any
call shape; :func:`defect` says whether an outcome is one a client must never see.
"""

from __future__ import annotations

import base64
import builtins
import random
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from hypothesis import strategies as st

# -- what the server publishes ------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    path: str  # "/package.Service/Method"
    request: Descriptor
    client_streaming: bool
    server_streaming: bool


def reflected_methods(address: str, service_prefix: str = "medledger.") -> list[Method]:
    """Every method of every service at ``address`` whose name starts with ``service_prefix``,
    with request descriptors from the server's reflection service (blocking: run it in a
    thread when the server shares the event loop)."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        methods = []
        for name in database.get_services():
            if not name.startswith(service_prefix):
                continue
            service = pool.FindServiceByName(name)
            for method in service.methods:
                _touch(method.input_type, set())  # load every nested type while connected
                methods.append(
                    Method(
                        f"/{name}/{method.name}",
                        method.input_type,
                        method.client_streaming,
                        method.server_streaming,
                    )
                )
    return methods


def _touch(descriptor: Descriptor, seen: set[str]) -> None:
    if descriptor.full_name in seen:
        return
    seen.add(descriptor.full_name)
    message_factory.GetMessageClass(descriptor)
    for field in descriptor.fields:
        if field.message_type is not None:
            _touch(field.message_type, seen)


# -- requests built from a descriptor -----------------------------------------------------

_INT_RANGES: Final = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_BOUNDARIES: Final = (0, 1, -1, 2**31 - 1, -(2**31), 2**32 - 1, 2**53 + 1, 2**63 - 1, 2**63)
_BOUNDARIES_WIDE: Final = (*_BOUNDARIES, -(2**63), 2**64 - 1)
# google.protobuf.Timestamp: valid is 0001-01-01..9999-12-31 and nanos 0..999999999.
_TIMESTAMP_SECONDS: Final = (
    0,
    1_700_000_000,
    -62_135_596_800,
    -62_135_596_801,
    253_402_300_799,
    253_402_300_800,
    2**63 - 1,
    -(2**63),
)
_NANOS: Final = (0, 999_999_999, 10**9, -1, 2**31 - 1, -(2**31))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _deep_json(opener: str, levels: int) -> str:
    closer = {"[": "]", "{": "}", '{"a":': "}"}[opener]
    return opener * levels + "1" * (opener == '{"a":') + closer * levels


def _deep_jws(levels: int) -> str:
    return f"{_b64url(b'[' * levels)}.{_b64url(b'[' * levels)}.{_b64url(bytes(64))}"


# Values that mean something to our servers: identifiers the stack creates, scope and
# grant syntax, JSON and JOSE shapes (deep ones too), page-token shapes.
_WORDS: Final = (
    "",
    " ",
    "\x00",
    "\u202e",
    "\U0001d518",
    "a" * 300,
    "..",
    "*",
    "-1",
    "9" * 40,
    "null",
    "{}",
    "[]",
    '{"keys":[]}',
    '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}',
    '{"kty":"RSA","n":"AQAB","e":"AQAB"}',
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    "medledger",
    "ops-admin",
    "fuzz-org",
    "medledger-ledger",
    "Patient",
    "Observation",
    "system/*.cruds",
    "patient/Consent.cu",
    "admin ledger.read",
    "TREAT",
    "eyJhbGciOiJub25lIn0.e30.",
    _b64url(b'{"l":"x","f":"","a":' * 2000),
    _b64url(b"\x01" + bytes(16) + b"9" * 30),
    _b64url(b"v1:99999999999999999999"),
)


def strings() -> st.SearchStrategy[str]:
    deep_json = st.builds(
        _deep_json,
        st.sampled_from(["[", "{", '{"a":']),
        st.sampled_from([33, 200, 1_100, 5_000, 10_000]),
    )
    huge = st.builds(
        lambda char, size: char * size,
        st.sampled_from(["a", "é", "\U0001f600", "[", "\\", '"']),
        st.sampled_from([256, 4_096, 40_000]),
    )
    return st.one_of(
        st.text(max_size=24),
        st.sampled_from(_WORDS),
        deep_json,
        huge,
        st.builds(_deep_jws, st.sampled_from([100, 2_000, 5_000])),
    )


def byte_strings() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=40),
        st.sampled_from([bytes(32), bytes(16), b"\xff" * 33]),
        st.builds(bytes, st.sampled_from([4_096, 40_000])),
    )


def _integers(field_type: int) -> st.SearchStrategy[int]:
    low, high = _INT_RANGES[field_type]
    edges = [v for v in _BOUNDARIES_WIDE if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _scalars(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), _integers(kind))
    if kind in _INT_RANGES:
        return _integers(kind)
    others: dict[int, Callable[[], st.SearchStrategy[Any]]] = {
        FieldDescriptor.TYPE_STRING: strings,
        FieldDescriptor.TYPE_BYTES: byte_strings,
        FieldDescriptor.TYPE_BOOL: st.booleans,
        FieldDescriptor.TYPE_FLOAT: lambda: st.floats(width=32),
        FieldDescriptor.TYPE_DOUBLE: st.floats,
    }
    return others[kind]()


def _time_like(descriptor: Descriptor) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    seconds = st.one_of(st.sampled_from(_TIMESTAMP_SECONDS), st.integers(-(2**63), 2**63 - 1))
    nanos = st.one_of(st.sampled_from(_NANOS), st.integers(-(2**31), 2**31 - 1))
    return st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, nanos)


MAX_NESTING: Final = 3


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``: each field present or not, with hostile values."""
    if descriptor.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return _time_like(descriptor)
    cls = message_factory.GetMessageClass(descriptor)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in descriptor.fields:
            if not draw(st.booleans()):
                continue
            _fill(draw, message, field, depth)
        return message

    return build()


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        if depth >= MAX_NESTING:
            return st.just(message_factory.GetMessageClass(field.message_type)())
        return messages(field.message_type, depth + 1)
    return _scalars(field)


def _small(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Values for a field repeated thousands of times (long lists, not huge messages)."""
    if field.message_type is not None:
        return st.just(message_factory.GetMessageClass(field.message_type)())
    if field.type == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=8)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=8)
    return _scalars(field)


def _fill(draw: st.DrawFn, message: Message, field: FieldDescriptor, depth: int) -> None:
    target = getattr(message, field.name)
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        for k, v in draw(st.dictionaries(_scalars(key), _value(value, depth), max_size=3)).items():
            if value.message_type is not None:
                target[k].CopyFrom(v)
            else:
                target[k] = v
        return
    if field.is_repeated:
        items = draw(
            st.one_of(
                st.lists(_value(field, depth), max_size=3),
                st.builds(lambda item, n: [item] * n, _small(field), st.just(2_000)),
            )
        )
        if entry is not None:
            for item in items:
                target.add().CopyFrom(item)
        else:
            target.extend(items)
        return
    value = draw(_value(field, depth))
    if entry is not None:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def request_bytes(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    return messages(descriptor).map(lambda m: m.SerializeToString())


# -- damage on the wire -------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _delimited(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


def _paths(
    descriptor: Descriptor, wanted: Callable[[FieldDescriptor], bool], depth: int = 0
) -> list[list[FieldDescriptor]]:
    """Field paths (message fields, then a field that ``wanted`` accepts), two levels deep."""
    found: list[list[FieldDescriptor]] = []
    for field in descriptor.fields:
        if wanted(field):
            found.append([field])
        if field.message_type is not None and depth < 2:
            found += [[field, *p] for p in _paths(field.message_type, wanted, depth + 1)]
    return found


def _nest(path: Sequence[FieldDescriptor], payload: bytes) -> bytes:
    """``payload`` (the encoded last field) wrapped in the message fields leading to it."""
    for field in reversed(path[:-1]):
        payload = _delimited(field.number, payload)
    return payload


_BAD_UTF8: Final = (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"ok\x80", b"\xf4\x90\x80\x80")


def wire_mutants(
    data: bytes, descriptor: Descriptor, rng: random.Random, count: int
) -> list[bytes]:
    """``count`` damaged variants of the encoded request ``data``."""
    strings_ = _paths(descriptor, lambda f: f.type == FieldDescriptor.TYPE_STRING)
    varints = _paths(
        descriptor,
        lambda f: (
            f.cpp_type
            in (
                FieldDescriptor.CPPTYPE_INT32,
                FieldDescriptor.CPPTYPE_INT64,
                FieldDescriptor.CPPTYPE_UINT32,
                FieldDescriptor.CPPTYPE_UINT64,
                FieldDescriptor.CPPTYPE_ENUM,
                FieldDescriptor.CPPTYPE_BOOL,
            )
        ),
    )
    delimited = _paths(descriptor, lambda f: f.type in _LENGTH_TYPES)

    def invalid_utf8() -> bytes:
        if not strings_:
            return data + _delimited(rng.randrange(1, 30), rng.choice(_BAD_UTF8))
        path = rng.choice(strings_)
        return data + _nest(path, _delimited(path[-1].number, rng.choice(_BAD_UTF8)))

    def truncated_varint() -> bytes:
        number = rng.choice(varints)[0].number if varints else rng.randrange(1, 30)
        return data + _tag(number, 0) + b"\xff" * rng.randrange(1, 10)

    def overlong_varint() -> bytes:
        path = rng.choice(varints) if varints else None
        if path is None:
            return data + _tag(1, 0) + b"\xff" * 10 + b"\x01"
        return data + _nest(path, _tag(path[-1].number, 0) + b"\xff" * 10 + b"\x01")

    def length_past_end() -> bytes:
        number = rng.choice(delimited)[0].number if delimited else 1
        return data + _tag(number, 2) + _varint(rng.choice([5, 2**31, 2**63])) + b"ab"

    def truncated() -> bytes:
        return data[: rng.randrange(len(data))] if data else b"\x0a"

    def flipped() -> bytes:
        if not data:
            return bytes([rng.randrange(256)])
        damaged = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        return bytes(damaged)

    def groups() -> bytes:
        number = rng.randrange(1, 20)
        return data + _tag(number, 3) * rng.choice([1, 50, 150]) + _tag(number + 1, 4)

    def bad_wire_type() -> bytes:
        return data + _tag(rng.randrange(1, 20), rng.choice([6, 7])) + b"\x00"

    def garbage() -> bytes:
        return rng.randbytes(rng.randrange(1, 64))

    shapes = (
        invalid_utf8,
        truncated_varint,
        overlong_varint,
        length_past_end,
        truncated,
        flipped,
        groups,
        bad_wire_type,
        garbage,
    )
    return [rng.choice(shapes)() for _ in range(count)]


_LENGTH_TYPES: Final = frozenset(
    {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE}
)


# -- sending and judging ------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    method: str
    request: bytes
    code: grpc.StatusCode
    details: str
    status: status_pb2.Status | None


async def call(
    channel: grpc.aio.Channel,
    method: Method,
    request: bytes,
    metadata: Sequence[tuple[str, str]],
    timeout: float,
) -> Outcome:
    """Sends ``request`` (raw bytes) as ``method`` does; a request stream carries it between
    two empty messages. Response streams are read to the end."""
    try:
        if method.client_streaming:

            async def stream() -> AsyncIterator[bytes]:
                for item in (b"", request, b""):
                    yield item

            if method.server_streaming:
                async for _ in channel.stream_stream(method.path, None, None)(
                    stream(), metadata=metadata, timeout=timeout
                ):
                    pass
            else:
                await channel.stream_unary(method.path, None, None)(
                    stream(), metadata=metadata, timeout=timeout
                )
        elif method.server_streaming:
            async for _ in channel.unary_stream(method.path, None, None)(
                request, metadata=metadata, timeout=timeout
            ):
                pass
        else:
            await channel.unary_unary(method.path, None, None)(
                request, metadata=metadata, timeout=timeout
            )
    except grpc.aio.AioRpcError as error:
        return Outcome(method.path, request, error.code(), error.details() or "", _status(error))
    return Outcome(method.path, request, grpc.StatusCode.OK, "", None)


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for item in cast(Sequence[tuple[str, Any]], error.trailing_metadata() or ()):
        key, value = item
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


_BUILTIN_EXCEPTIONS: Final = sorted(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)
_LEAK: Final = re.compile(
    r"\b[A-Z][A-Za-z0-9_]*(?:Error|Exception|Warning)\b|Traceback|<class '|\bFile \"|"
    + r"\b(?:"
    + "|".join(_BUILTIN_EXCEPTIONS)
    + r")\b"
)
NEVER: Final = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
# Error texts are fixed strings our code chooses; anything this long echoes the request.
MAX_ERROR_TEXT: Final = 2_000


def _texts(outcome: Outcome) -> list[str]:
    texts = [outcome.details]
    if outcome.status is not None:
        texts.append(outcome.status.message)
        for detail in outcome.status.details:
            info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
                texts += [info.reason, *info.metadata.values()]
            elif detail.Is(bad.DESCRIPTOR) and detail.Unpack(bad):
                texts += [f"{v.field} {v.description}" for v in bad.field_violations]
    return texts


def defect(outcome: Outcome) -> str | None:
    """Why ``outcome`` must never reach a client (INTERNAL, UNKNOWN, a message or error
    detail naming a Python exception or echoing the request, a status too large to deliver),
    or None when it is acceptable."""
    if outcome.code in NEVER:
        return f"{outcome.code.name}: {outcome.details}"
    if outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata" in outcome.details:
        return f"the status did not fit in the trailers: {outcome.details}"
    for text in _texts(outcome):
        if len(text) > MAX_ERROR_TEXT:
            return f"{outcome.code.name} with a {len(text)}-character error text: {text[:200]}"
        leaked = _LEAK.search(text)
        if leaked:
            return f"{outcome.code.name} names {leaked.group()!r}: {text[:200]}"
    return None
