"""Receipt files: the one format medledger writes and ``medledger verify receipt`` reads.

A receipt file is the ``ledger.v1.Receipt`` message as protobuf JSON
(``json_format.MessageToJson``), or with ``binary`` its protobuf wire bytes. Services, tests and
partners write receipts with :func:`write_receipt` so every verifier reads the same thing.
Reading also accepts an ``AppendResponse`` in JSON (``{"receipt": {...}}``), which is what a
gRPC client such as grpcurl prints for ``Append``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from medledger.api.ledger.v1 import ledger_pb2


class ReceiptFormatError(ValueError):
    """The file does not hold a receipt in a format medledger reads."""


def receipt_json(receipt: ledger_pb2.Receipt) -> str:
    """The receipt as the JSON text a receipt file holds (with a final newline)."""
    return json_format.MessageToJson(receipt) + "\n"


def write_receipt(path: Path | str, receipt: ledger_pb2.Receipt, *, binary: bool = False) -> None:
    """Writes ``receipt`` to ``path`` (JSON, or protobuf bytes with ``binary``), atomically."""
    path = Path(path)
    data = receipt.SerializeToString() if binary else receipt_json(receipt).encode("utf-8")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def parse_receipt(data: bytes, *, binary: bool = False) -> ledger_pb2.Receipt:
    """The receipt in ``data``; raises ``ReceiptFormatError`` saying why it is not one."""
    receipt = ledger_pb2.Receipt()
    if binary:
        try:
            receipt.ParseFromString(data)
        except DecodeError as error:
            raise ReceiptFormatError(f"not a binary protobuf Receipt: {error}") from None
        return receipt
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        hint = " (is it a binary receipt? use --binary)" if b"\x00" in data[:64] else ""
        raise ReceiptFormatError(f"not JSON{hint}: {error}") from None
    if isinstance(document, dict) and set(document) == {"receipt"}:
        document = document["receipt"]  # an AppendResponse, as grpcurl prints it
    if not isinstance(document, dict):
        raise ReceiptFormatError("not a protobuf JSON Receipt: the JSON is not an object")
    try:
        json_format.ParseDict(document, receipt)
    except json_format.ParseError as error:
        raise ReceiptFormatError(f"not a protobuf JSON Receipt: {error}") from None
    return receipt


def read_receipt(path: Path | str, *, binary: bool = False) -> ledger_pb2.Receipt:
    """The receipt in the file at ``path`` (see :func:`parse_receipt`)."""
    return parse_receipt(Path(path).read_bytes(), binary=binary)
