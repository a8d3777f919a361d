"""Predictions and their offline proof (docs/prediction-format.md).

Each prediction of the inference service is one **prediction document**: which model (name,
version, the SHA-256 of its ONNX file, its tensors), from which inputs (each feature's value in
its unit, where it came from, the row the model scored) and what came out (score, base score,
per-feature contributions, label). The ledger's INFERENCE_MADE entry commits to it, salted:
``content_commitment = commit(salt, canonical_json(document))``
(:mod:`medledger.verify.commitment`), and names the RiskAssessment written for it by the
prediction's id, blinded with a salt derived from the commitment salt
(:func:`~medledger.verify.blinding.prediction_blinding_salt`). No PHI is in the entry.

The **opening** (a ``prediction.json`` file) is the document with the salt, the exact entry
bytes and the entry's receipt. :func:`verify_prediction` runs, in order (the first failure
stops, naming the check):

1. ``"commitment"``: salt and document open the entry's content commitment;
2. ``"ledger entry"``: the entry is INFERENCE_MADE, about a ``RiskAssessment`` whose id is
   this prediction's, blinded; no subject;
3. ``"receipt ..."``: the receipt proves these entry bytes in a checkpoint the trust policy
   accepts (:func:`~medledger.verify.receipt.verify_receipt`);
4. ``"inputs"``: each input the model scored is its feature's value after the feature's
   transform, as float32;
5. ``"contributions"``: ``base_score + sum(contributions) = score`` within
   :func:`additivity_tolerance`.

And, given the ONNX file: 6. ``"model digest"`` (:func:`check_model_file`): its SHA-256 is the
document's. Running that file on ``input_row`` to reproduce the score is the CLI's (this
package runs no model).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, cast

from google.protobuf.message import DecodeError

from medledger.api.ledger.v1 import ledger_pb2
from medledger.verify.blinding import blinded_resource_id, prediction_blinding_salt
from medledger.verify.commitment import (
    SALT_SIZE,
    NotCanonicalizable,
    OpeningMismatch,
    canonical_json,
    check_opening,
)
from medledger.verify.receipt import ReceiptInvalid, VerifiedReceipt, verify_receipt
from medledger.verify.trust import TrustPolicy

PREDICTION_SCHEMA: Final = "https://medledger.dev/schemas/prediction/v1"
OPENING_SCHEMA: Final = "https://medledger.dev/schemas/prediction-opening/v1"
RESOURCE_TYPE: Final = "RiskAssessment"
"""The ``resource.type`` of an INFERENCE_MADE entry: what the prediction is written as."""
RESOURCE_VERSION: Final = 0
"""The version blinded into the entry's resource id (and its ``resource.version``): a
prediction has none."""
ADDITIVITY_TOLERANCE: Final = 1e-9
"""Relative: contributions add up to within this times the largest of 1, |score|,
|base_score| and the sum of |contribution| (exact Shapley values from one batch leave float64
rounding, about 1e-15 of that)."""
REPRODUCTION_TOLERANCE: Final = 1e-5
"""Relative (to max(1, |score|)): how close another ONNX Runtime must come to the score; they
may sum a float32 tree ensemble in another order."""

KINDS: Final = ("regression", "probability")
SPACES: Final = {"regression": "score", "probability": "probability"}
"""The contribution space of each score kind."""
TRANSFORMS: Final = ("identity", "ln")

CHECK_COMMITMENT: Final = "commitment"
CHECK_LEDGER_ENTRY: Final = "ledger entry"
CHECK_RECEIPT: Final = "receipt"
CHECK_INPUTS: Final = "inputs"
CHECK_CONTRIBUTIONS: Final = "contributions"
CHECK_MODEL_DIGEST: Final = "model digest"
CHECK_MODEL_OUTPUT: Final = "model output"
CHECKS: Final = (
    CHECK_COMMITMENT,
    CHECK_LEDGER_ENTRY,
    *(
        f"{CHECK_RECEIPT} {check}"
        for check in ("checkpoint", "leaf hash", "inclusion proof", "entry")
    ),
    CHECK_INPUTS,
    CHECK_CONTRIBUTIONS,
    CHECK_MODEL_DIGEST,
    CHECK_MODEL_OUTPUT,
)
"""Every name :attr:`PredictionInvalid.check` takes, in the order they run."""

_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_INSTANT: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_NAME: Final = re.compile(r"[^\s]+( [^\s]+)*")
_REFERENCE: Final = re.compile(
    r"[A-Z][A-Za-z]{0,63}/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?"
)
_PATIENT: Final = re.compile(r"Patient/[A-Za-z0-9\-.]{1,64}")
_MAX_FEATURES: Final = 64
_MAX_INTEGER: Final = 2**53 - 1


class PredictionFormatError(ValueError):
    """The file is not a prediction opening, or its document is not a prediction document;
    the message names the member (``prediction.features[2].unit``) and what is wrong."""


class PredictionInvalid(Exception):
    """A check failed: ``check`` (one of :data:`CHECKS`) names it, the message says precisely
    what differs."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(check, message)
        self.check = check
        self.message = message

    def __str__(self) -> str:
        return f"{self.check} check failed: {self.message}"


# --- the document --------------------------------------------------------------------------


@dataclass(frozen=True)
class Code:
    """A code in a code system (FHIR Coding's system and code)."""

    system: str
    code: str

    def to_json(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code}


@dataclass(frozen=True)
class ModelRef:
    """The model that made the prediction: ``sha256`` of its ONNX file (hex), the input tensor
    and where the score is (``score_tensor[:, score_column]``), and what it is."""

    name: str
    version: int
    sha256: str
    input: str
    score_tensor: str
    score_column: int
    score_kind: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "input": self.input,
            "score": {
                "tensor": self.score_tensor,
                "column": self.score_column,
                "kind": self.score_kind,
            },
        }


@dataclass(frozen=True)
class FeatureInput:
    """One feature as the model got it: ``value`` in ``unit`` before the transform (a coded
    feature: its category's number, unit ``1``, ``category`` the code), the versions it came
    from, and the derivation used when the record had no Observation of it."""

    name: str
    code: Code
    value: float
    unit: str
    category: Code | None
    transform: str
    sources: tuple[str, ...]
    derivation: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "code": self.code.to_json(),
            "value": self.value,
            "unit": self.unit,
            "category": None if self.category is None else self.category.to_json(),
            "transform": self.transform,
            "sources": list(self.sources),
            "derivation": self.derivation,
        }


@dataclass(frozen=True)
class PredictionDocument:
    """What the INFERENCE_MADE entry commits to (see docs/prediction-format.md)."""

    prediction_id: str
    made_at: str
    subject: str
    model: ModelRef
    features: tuple[FeatureInput, ...]
    input_row: tuple[float, ...]
    reference_row: tuple[float, ...]
    basis: tuple[str, ...]
    score: float
    base_score: float
    contributions: tuple[float, ...]
    contribution_space: str
    label: str | None

    def to_json(self) -> dict[str, Any]:
        """The document as JSON (commit to its RFC 8785 form)."""
        return {
            "schema": PREDICTION_SCHEMA,
            "prediction_id": self.prediction_id,
            "made_at": self.made_at,
            "subject": self.subject,
            "model": self.model.to_json(),
            "features": [f.to_json() for f in self.features],
            "input_row": list(self.input_row),
            "reference_row": list(self.reference_row),
            "basis": list(self.basis),
            "score": self.score,
            "base_score": self.base_score,
            "contributions": list(self.contributions),
            "contribution_space": self.contribution_space,
            "label": self.label,
        }

    @classmethod
    def from_json(cls, value: object) -> PredictionDocument:
        """The document in ``value`` (parsed JSON); :class:`PredictionFormatError` for the
        first member that breaks the format."""
        return _read_document(value, "prediction")

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())


def is_float32(value: float) -> bool:
    """Whether ``value`` is exactly a float32 (as every input the model scored is)."""
    try:
        return bool(struct.unpack("<f", struct.pack("<f", value))[0] == value)
    except OverflowError:
        return False


def _nearest_float32(value: float) -> float | None:
    try:
        return float(struct.unpack("<f", struct.pack("<f", value))[0])
    except OverflowError:
        return None


def float32_ulp(value: float) -> float:
    """The gap between the float32 ``value`` and the next one away from zero."""
    bits = struct.unpack("<I", struct.pack("<f", abs(value)))[0]
    following = struct.unpack("<f", struct.pack("<I", bits + 1))[0]
    return float(following) - abs(value)


def additivity_tolerance(document: PredictionDocument) -> float:
    """How far ``base_score + sum(contributions)`` may lie from ``score``."""
    scale = max(
        1.0,
        abs(document.score),
        abs(document.base_score),
        math.fsum(abs(c) for c in document.contributions),
    )
    return ADDITIVITY_TOLERANCE * scale


def additivity_residual(document: PredictionDocument) -> float:
    """``score - base_score - sum(contributions)``, summed exactly (math.fsum)."""
    return math.fsum((document.score, -document.base_score, *(-c for c in document.contributions)))


# --- the opening -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionOpening:
    """A ``prediction.json``: the document as committed (``committed``: the parsed JSON, which
    is what is canonicalised and checked), the salt, the entry's exact bytes and its receipt."""

    document: PredictionDocument
    committed: Mapping[str, Any]
    salt: bytes
    entry_bytes: bytes
    entry: ledger_pb2.LedgerEntry
    receipt: ledger_pb2.Receipt


def opening_json(
    document: PredictionDocument | Mapping[str, Any],
    salt: bytes,
    entry: bytes,
    receipt: ledger_pb2.Receipt,
) -> bytes:
    """The ``prediction.json`` bytes for a committed document (UTF-8 JSON, indented)."""
    if len(salt) != SALT_SIZE:
        raise ValueError(f"a commitment salt is {SALT_SIZE} bytes, not {len(salt)}")
    committed = document.to_json() if isinstance(document, PredictionDocument) else document

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    opening = {
        "schema": OPENING_SCHEMA,
        "prediction": committed,
        "commitment_salt": b64(salt),
        "entry": b64(entry),
        "receipt": b64(receipt.SerializeToString(deterministic=True)),
    }
    return (json.dumps(opening, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def parse_opening(data: bytes) -> PredictionOpening:
    """The opening in ``data``; :class:`PredictionFormatError` saying why it is not one.
    Refuses an object with two members of one name, and NaN and Infinity."""
    try:
        value = json.loads(
            data.decode("utf-8"), object_pairs_hook=_unique_members, parse_constant=_no_constant
        )
    except UnicodeDecodeError as error:
        raise PredictionFormatError(f"not UTF-8 text: {error}") from None
    except PredictionFormatError:
        raise
    except (ValueError, RecursionError) as error:
        raise PredictionFormatError(f"not JSON: {error}") from None
    opening = _object(value, "(file)")
    _members(opening, "(file)", {"schema", "prediction", "commitment_salt", "entry", "receipt"})
    if opening["schema"] != OPENING_SCHEMA:
        _refuse("schema", f"must be {OPENING_SCHEMA}")
    document = PredictionDocument.from_json(opening["prediction"])
    salt = _base64(opening, "commitment_salt")
    if len(salt) != SALT_SIZE:
        _refuse("commitment_salt", f"is {len(salt)} bytes, not {SALT_SIZE}")
    entry_bytes = _base64(opening, "entry")
    entry = ledger_pb2.LedgerEntry()
    try:
        entry.ParseFromString(entry_bytes)
    except DecodeError as error:
        _refuse("entry", f"not a ledger LedgerEntry: {error}")
    receipt = ledger_pb2.Receipt()
    try:
        receipt.ParseFromString(_base64(opening, "receipt"))
    except DecodeError as error:
        _refuse("receipt", f"not a ledger Receipt: {error}")
    return PredictionOpening(document, opening["prediction"], salt, entry_bytes, entry, receipt)


# --- verifying -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedPrediction:
    document: PredictionDocument
    entry: ledger_pb2.LedgerEntry
    receipt: VerifiedReceipt
    residual: float
    tolerance: float

    @property
    def leaf_index(self) -> int:
        return self.receipt.leaf_index


def verify_prediction(opening: PredictionOpening, policy: TrustPolicy) -> VerifiedPrediction:
    """Checks 1 to 5 of the module's documentation, in order; :class:`PredictionInvalid`
    for the first that fails."""
    document, entry = opening.document, opening.entry

    def refuse(check: str, message: str) -> NoReturn:
        raise PredictionInvalid(check, message)

    try:
        canonical = canonical_json(opening.committed)
        check_opening(entry.content_commitment, opening.salt, canonical)
    except (NotCanonicalizable, RecursionError):
        refuse(CHECK_COMMITMENT, "the document has no RFC 8785 canonical form")
    except OpeningMismatch as error:
        refuse(
            CHECK_COMMITMENT,
            f"{error}: the prediction document (canonical JSON, {len(canonical)} bytes) is not "
            "what the ledger entry committed to",
        )

    if entry.kind != ledger_pb2.EVENT_KIND_INFERENCE_MADE:
        refuse(
            CHECK_LEDGER_ENTRY,
            f"the entry records {_kind_name(entry.kind)}, not INFERENCE_MADE",
        )
    if not entry.HasField("resource") or entry.resource.type != RESOURCE_TYPE:
        about = repr(entry.resource.type) if entry.HasField("resource") else "no resource"
        refuse(CHECK_LEDGER_ENTRY, f"the entry is about {about}, not a {RESOURCE_TYPE!r}")
    blinded = blinded_resource_id(
        prediction_blinding_salt(opening.salt),
        RESOURCE_TYPE,
        document.prediction_id,
        RESOURCE_VERSION,
    )
    if entry.resource.id != blinded or entry.resource.version != RESOURCE_VERSION:
        refuse(
            CHECK_LEDGER_ENTRY,
            f"the entry's resource is {entry.resource.id!r} version {entry.resource.version}, "
            f"not {blinded} version {RESOURCE_VERSION}, prediction {document.prediction_id} "
            "blinded with this salt: the entry is about another prediction",
        )
    if entry.subject:
        refuse(CHECK_LEDGER_ENTRY, "an INFERENCE_MADE entry names no subject; this one does")

    try:
        receipt = verify_receipt(opening.receipt, policy, opening.entry_bytes)
    except ReceiptInvalid as failure:
        refuse(f"{CHECK_RECEIPT} {failure.check}", failure.message)

    for index, (feature, scored) in enumerate(
        zip(document.features, document.input_row, strict=True)
    ):
        expected = feature.value if feature.transform == "identity" else math.log(feature.value)
        nearest = _nearest_float32(expected)
        # ln is computed in double, then rounded: another libm may land one float32 apart.
        slack = 0.0 if feature.transform == "identity" or nearest is None else float32_ulp(nearest)
        if nearest is None or not abs(scored - nearest) <= slack:
            refuse(
                CHECK_INPUTS,
                f"input_row[{index}] ({feature.name}) is {scored!r}; {feature.transform} of the "
                f"feature's value as float32 is {nearest!r}",
            )

    residual = additivity_residual(document)
    tolerance = additivity_tolerance(document)
    if not abs(residual) <= tolerance:
        refuse(
            CHECK_CONTRIBUTIONS,
            f"base_score + sum(contributions) differs from the score by {residual:.6g} "
            f"(tolerance {tolerance:.3g}, in {document.contribution_space})",
        )
    return VerifiedPrediction(document, entry, receipt, residual, tolerance)


def check_model_file(document: PredictionDocument, model: bytes) -> str:
    """Check 6: the SHA-256 of the ONNX file ``model`` is the document's; returns it (hex)."""
    digest = hashlib.sha256(model).hexdigest()
    if not hmac.compare_digest(digest, document.model.sha256):
        raise PredictionInvalid(
            CHECK_MODEL_DIGEST,
            f"the file's SHA-256 is {digest}; the prediction was made by "
            f"{document.model.name} version {document.model.version} with SHA-256 "
            f"{document.model.sha256}",
        )
    return digest


def check_model_output(document: PredictionDocument, reproduced: float) -> None:
    """Check 7, for whoever ran the model on ``input_row``: ``reproduced`` is the score to
    within :data:`REPRODUCTION_TOLERANCE`."""
    tolerance = REPRODUCTION_TOLERANCE * max(1.0, abs(document.score))
    if not abs(reproduced - document.score) <= tolerance:
        raise PredictionInvalid(
            CHECK_MODEL_OUTPUT,
            f"the model scores input_row {reproduced!r}, the document says {document.score!r} "
            f"(tolerance {tolerance:.3g})",
        )


# --- reading the document --------------------------------------------------------------------


def _refuse(path: str, message: str) -> NoReturn:
    raise PredictionFormatError(f"{path}: {message}")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            # Parsers disagree on which of two equal names wins: a viewer could show one
            # value while this verifier checked the other.
            raise PredictionFormatError(f"member name {name!r} appears twice in one object")
        document[name] = value
    return document


def _no_constant(name: str) -> NoReturn:
    raise PredictionFormatError(f"{name} is not a JSON value")


def _object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _refuse(path, "an object is required")
    return cast("dict[str, Any]", value)


def _members(value: Mapping[str, Any], path: str, names: set[str]) -> None:
    missing = sorted(names - set(value))
    unknown = sorted(set(value) - names)
    if missing:
        _refuse(path, f"lacks {', '.join(missing)}")
    if unknown:
        _refuse(path, f"has members the format does not define: {', '.join(unknown)}")


def _string(value: object, path: str, pattern: re.Pattern[str] = _NAME) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        _refuse(path, f"a string matching {pattern.pattern} is required")
    return value


def _number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _refuse(path, "a number is required")
    number = float(value)
    if not math.isfinite(number):
        _refuse(path, "a finite number is required")
    return number


def _integer(value: object, path: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_INTEGER:
        _refuse(path, f"an integer from {low} to 2^53 - 1 is required")
    return value


def _array(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        _refuse(path, "an array is required")
    return value


def _code(value: object, path: str) -> Code:
    concept = _object(value, path)
    _members(concept, path, {"system", "code"})
    return Code(
        _string(concept["system"], f"{path}.system"), _string(concept["code"], f"{path}.code")
    )


def _base64(opening: Mapping[str, Any], name: str) -> bytes:
    value = opening[name]
    if not isinstance(value, str):
        _refuse(name, "base64 text is required")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        _refuse(name, f"not base64 (RFC 4648 §4, padded): {error}")


def _row(value: object, path: str, n: int) -> tuple[float, ...]:
    row = _array(value, path)
    if len(row) != n:
        _refuse(path, f"one number a feature ({n})")
    numbers = tuple(_number(v, f"{path}[{i}]") for i, v in enumerate(row))
    for index, number in enumerate(numbers):
        if not is_float32(number):
            _refuse(f"{path}[{index}]", "the model scores float32: this is not one")
    return numbers


def _model(value: object, path: str) -> ModelRef:
    model = _object(value, path)
    _members(model, path, {"name", "version", "sha256", "input", "score"})
    score = _object(model["score"], f"{path}.score")
    _members(score, f"{path}.score", {"tensor", "column", "kind"})
    kind = score["kind"]
    if kind not in KINDS:
        _refuse(f"{path}.score.kind", f"must be one of {', '.join(KINDS)}")
    return ModelRef(
        name=_string(model["name"], f"{path}.name"),
        version=_integer(model["version"], f"{path}.version", 1),
        sha256=_string(model["sha256"], f"{path}.sha256", _SHA256),
        input=_string(model["input"], f"{path}.input"),
        score_tensor=_string(score["tensor"], f"{path}.score.tensor"),
        score_column=_integer(score["column"], f"{path}.score.column", 0),
        score_kind=kind,
    )


def _feature(value: object, path: str, basis: Sequence[str]) -> FeatureInput:
    feature = _object(value, path)
    _members(
        feature,
        path,
        {"name", "code", "value", "unit", "category", "transform", "sources", "derivation"},
    )
    transform = feature["transform"]
    if transform not in TRANSFORMS:
        _refuse(f"{path}.transform", f"must be one of {', '.join(TRANSFORMS)}")
    number = _number(feature["value"], f"{path}.value")
    if transform == "ln" and number <= 0:
        _refuse(f"{path}.value", "ln needs a positive value")
    sources = tuple(
        _string(s, f"{path}.sources[{i}]", _REFERENCE)
        for i, s in enumerate(_array(feature["sources"], f"{path}.sources"))
    )
    if not sources:
        _refuse(f"{path}.sources", "at least one source")
    for index, source in enumerate(sources):
        if source not in basis:
            _refuse(f"{path}.sources[{index}]", "must be in the basis")
    category = feature["category"]
    derivation = feature["derivation"]
    return FeatureInput(
        name=_string(feature["name"], f"{path}.name"),
        code=_code(feature["code"], f"{path}.code"),
        value=number,
        unit=_string(feature["unit"], f"{path}.unit"),
        category=None if category is None else _code(category, f"{path}.category"),
        transform=transform,
        sources=sources,
        derivation=None if derivation is None else _string(derivation, f"{path}.derivation"),
    )


def _read_document(value: object, path: str) -> PredictionDocument:
    document = _object(value, path)
    _members(
        document,
        path,
        {
            "schema",
            "prediction_id",
            "made_at",
            "subject",
            "model",
            "features",
            "input_row",
            "reference_row",
            "basis",
            "score",
            "base_score",
            "contributions",
            "contribution_space",
            "label",
        },
    )
    if document["schema"] != PREDICTION_SCHEMA:
        _refuse(f"{path}.schema", f"must be {PREDICTION_SCHEMA}")
    model = _model(document["model"], f"{path}.model")
    basis = tuple(
        _string(b, f"{path}.basis[{i}]", _REFERENCE)
        for i, b in enumerate(_array(document["basis"], f"{path}.basis"))
    )
    if not basis or len(set(basis)) != len(basis):
        _refuse(f"{path}.basis", "one or more references, each once")
    rows = _array(document["features"], f"{path}.features")
    if not 1 <= len(rows) <= _MAX_FEATURES:
        _refuse(f"{path}.features", f"1 to {_MAX_FEATURES} features")
    features = tuple(_feature(row, f"{path}.features[{i}]", basis) for i, row in enumerate(rows))
    if len({f.name for f in features}) != len(features):
        _refuse(f"{path}.features", "each feature's name once")
    subject = _string(document["subject"], f"{path}.subject", _PATIENT)
    used = {source for feature in features for source in feature.sources}
    for index, reference in enumerate(basis):
        if reference not in used:
            _refuse(f"{path}.basis[{index}]", "is no feature's source")
        if reference.startswith("Patient/") and reference.split("/_history/")[0] != subject:
            _refuse(f"{path}.basis[{index}]", "a Patient in the basis is the subject")
    n = len(features)
    space = document["contribution_space"]
    if space != SPACES[model.score_kind]:
        _refuse(
            f"{path}.contribution_space",
            f"must be {SPACES[model.score_kind]!r} for a {model.score_kind} score",
        )
    label = document["label"]
    contributions = _array(document["contributions"], f"{path}.contributions")
    if len(contributions) != n:
        _refuse(f"{path}.contributions", f"one number a feature ({n})")
    return PredictionDocument(
        prediction_id=_string(document["prediction_id"], f"{path}.prediction_id", _UUID),
        made_at=_string(document["made_at"], f"{path}.made_at", _INSTANT),
        subject=subject,
        model=model,
        features=features,
        input_row=_row(document["input_row"], f"{path}.input_row", n),
        reference_row=_row(document["reference_row"], f"{path}.reference_row", n),
        basis=basis,
        score=_number(document["score"], f"{path}.score"),
        base_score=_number(document["base_score"], f"{path}.base_score"),
        contributions=tuple(
            _number(c, f"{path}.contributions[{i}]") for i, c in enumerate(contributions)
        ),
        contribution_space=space,
        label=None if label is None else _string(label, f"{path}.label"),
    )


def _kind_name(kind: ledger_pb2.EventKind.ValueType) -> str:
    try:
        return ledger_pb2.EventKind.Name(kind).removeprefix("EVENT_KIND_")
    except ValueError:
        return f"event kind {kind}"
