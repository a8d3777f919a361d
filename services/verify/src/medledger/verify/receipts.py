"""Receipt files: the one format medledger writes and ``medledger verify receipt`` reads.

A receipt file is the ``ledger.v1.Receipt`` message as protobuf JSON
(``json_format.MessageToJson``), or with ``binary`` its protobuf wire bytes. Services, tests and
partners write receipts with :func:`write_receipt` so every verifier reads the same thing.
Reading also accepts, in JSON, any service response that carries one receipt (an
``AppendResponse``, a ``GrantConsentResponse``, a record write...) as a gRPC client such as
grpcurl or buf curl prints it: the receipt is the one object under a ``receipt`` key.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


_RECEIPT_FIELDS = frozenset({"leafIndex", "leafHash", "checkpoint", "inclusionProof", "entry"})


def _receipts_inside(document: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """``(path, object)`` for each object under a key named ``receipt`` or ``...Receipt``."""
    if isinstance(document, dict):
        for key, value in document.items():
            where = f"{path}.{key}" if path else str(key)
            if str(key).lower().endswith("receipt") and isinstance(value, dict):
                yield where, value
            else:
                yield from _receipts_inside(value, where)
    elif isinstance(document, list):
        for number, item in enumerate(document):
            yield from _receipts_inside(item, f"{path}[{number}]")


def _the_receipt(document: dict[str, Any]) -> dict[str, Any]:
    """The receipt object itself, or the one receipt a service response carries."""
    if document and set(document) <= _RECEIPT_FIELDS | {"leaf_index", "leaf_hash"}:
        return document
    found = list(_receipts_inside(document))
    if len(found) == 1:
        return found[0][1]
    if not found:
        raise ReceiptFormatError(
            "not a protobuf JSON Receipt, and no object under a 'receipt' key in it"
        )
    paths = ", ".join(where for where, _ in found)
    raise ReceiptFormatError(f"more than one receipt in this response ({paths}): save one")


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
    if not isinstance(document, dict):
        raise ReceiptFormatError("not a protobuf JSON Receipt: the JSON is not an object")
    document = _the_receipt(document)
    try:
        json_format.ParseDict(document, receipt)
    except json_format.ParseError as error:
        raise ReceiptFormatError(f"not a protobuf JSON Receipt: {error}") from None
    return receipt


def read_receipt(path: Path | str, *, binary: bool = False) -> ledger_pb2.Receipt:
    """The receipt in the file at ``path`` (see :func:`parse_receipt`)."""
    return parse_receipt(Path(path).read_bytes(), binary=binary)
