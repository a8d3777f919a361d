"""The model registry: the model versions the inference service scores with, each one
checked against what Triton serves and ledgered as MODEL_REGISTERED.

Registering (admin):

1. The registration is validated (:func:`~.registration.validate_registration`): every bad
   field at once, INVALID_ARGUMENT.
2. A registration stored under the same name and version: the same model (same
   :meth:`~.registration.ModelRegistration.fingerprint`) is answered as stored, without a
   second ledger entry; another model is ALREADY_EXISTS (MODEL_VERSION_TAKEN). A version is
   never re-pointed at other bytes: predictions ledgered against it must keep meaning one
   file.
3. Triton must serve it (:class:`ServedModels`): the version is ready and its tensors are
   the card's (else FAILED_PRECONDITION MODEL_NOT_SERVED), and the SHA-256 of the ONNX file
   Triton loads equals the digest (MODEL_DIGEST_MISMATCH). Triton reports no file hashes,
   so the service hashes the file in the model repository Triton serves (:class:`ModelFiles`,
   the same folder or volume). Triton not answering is UNAVAILABLE.
4. Never a registered model without its ledger entry, and never two entries for one
   registration: the registration is stored pending together with the exact bytes of its
   entry, the entry is appended under an idempotency key of those bytes, then the
   registration is marked registered with the receipt. A crash or a ledger that does not
   answer leaves it pending (unseen by GetModel and ListModels); registering the same model
   again re-appends those same bytes, which the ledger answers with the first receipt. The
   entry names resource ``Model/<name>`` at the version, its content commitment is the
   digest (anyone holding the ONNX file can check it; no PHI), its time is the
   registration's ``register_time``.

Reading (admin or inference.predict): :meth:`ModelRegistry.get` (version 0: the latest
registered), :meth:`ModelRegistry.list_models` by name then version, paged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

from medledger.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from medledger.common.paging import Listing, Page, page, page_size
from medledger.inference.domain.registration import (
    MODEL_FILE,
    ModelRegistration,
    ModelTensors,
    check_model_name,
    validate_registration,
)

MODEL_NOT_SERVED: Final = "MODEL_NOT_SERVED"
MODEL_DIGEST_MISMATCH: Final = "MODEL_DIGEST_MISMATCH"
MODEL_VERSION_TAKEN: Final = "MODEL_VERSION_TAKEN"
MODEL_NOT_FOUND: Final = "MODEL_NOT_FOUND"
LATEST: Final = 0

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_millis(when: datetime) -> datetime:
    """``when`` at MongoDB's precision, so a stored time reads back equal to the entry's."""
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class Registrant:
    """Who registers: the authenticated caller, as the ledger entry names it."""

    subject: str
    organization: str


@dataclass(frozen=True)
class StoredModel:
    """A registration as stored: ``entry`` is its ledger entry's bytes, ``receipt`` the
    serialised receipt once appended (None: still pending)."""

    registration: ModelRegistration
    fingerprint: str
    register_time: datetime
    entry: bytes
    receipt: bytes | None = None

    @property
    def registered(self) -> bool:
        return self.receipt is not None


@dataclass(frozen=True)
class RegisteredModel:
    """A model version in force and the receipt of its MODEL_REGISTERED entry."""

    registration: ModelRegistration
    register_time: datetime
    receipt: bytes


class ModelStorage(Protocol):
    async def find(self, name: str, version: int) -> StoredModel | None:
        """The registration stored under ``name``/``version``, pending or registered."""
        ...

    async def insert_pending(self, model: StoredModel) -> StoredModel | None:
        """Stores ``model`` pending; the one stored already under its name and version
        instead, when there is one (nothing is then written)."""
        ...

    async def mark_registered(self, model: StoredModel, receipt: bytes) -> StoredModel:
        """Sets the receipt of the pending ``model`` (same fingerprint); a model already
        registered is returned as it is."""
        ...

    async def registered(self, name: str, version: int) -> StoredModel | None:
        """The registered model ``name``/``version``; ``version`` 0: its latest."""
        ...

    async def list_registered(
        self, after: tuple[str, int] | None, limit: int
    ) -> Sequence[StoredModel]:
        """Registered models by name then version, from the one after ``after``."""
        ...


class ServedModels(Protocol):
    """What Triton serves; Unavailable("triton") when it does not answer."""

    async def served_tensors(self, name: str, version: int) -> ModelTensors | None:
        """The version's tensors when Triton reports it ready; None when it does not serve
        it."""
        ...


class ModelFiles(Protocol):
    """The model repository Triton serves, as this service reads it."""

    async def sha256(self, name: str, version: int) -> bytes | None:
        """SHA-256 of the version's ONNX file; None when the file is not there."""
        ...


class RegistryLedger(Protocol):
    def model_registered(
        self, registration: ModelRegistration, registrant: Registrant, time: datetime
    ) -> bytes:
        """The MODEL_REGISTERED entry's bytes (nothing is sent)."""
        ...

    async def append(self, entry: bytes) -> bytes:
        """Appends ``entry`` under an idempotency key of its bytes; the serialised receipt
        (the first one when these bytes were appended before)."""
        ...


class ModelRegistry:
    def __init__(
        self,
        store: ModelStorage,
        served: ServedModels,
        files: ModelFiles,
        ledger: RegistryLedger,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._served = served
        self._files = files
        self._ledger = ledger
        self._clock = clock

    async def register(
        self, registrant: Registrant, registration: ModelRegistration
    ) -> RegisteredModel:
        tensors = validate_registration(registration)
        fingerprint = registration.fingerprint()
        stored = await self._store.find(registration.name, registration.version)
        if stored is None:
            await self._check_served(registration, tensors)
            time = to_millis(self._clock())
            pending = StoredModel(
                registration,
                fingerprint,
                time,
                self._ledger.model_registered(registration, registrant, time),
            )
            stored = await self._store.insert_pending(pending) or pending
        if stored.fingerprint != fingerprint:
            raise AlreadyExists(
                "another model is registered under this name and version; register it as "
                "a new version",
                reason=MODEL_VERSION_TAKEN,
            )
        if stored.receipt is None:
            receipt = await self._ledger.append(stored.entry)
            stored = await self._store.mark_registered(stored, receipt)
        assert stored.receipt is not None
        return RegisteredModel(stored.registration, stored.register_time, stored.receipt)

    async def _check_served(self, registration: ModelRegistration, tensors: ModelTensors) -> None:
        served = await self._served.served_tensors(registration.name, registration.version)
        if served is None:
            raise FailedPrecondition(
                "Triton does not report this model version ready", reason=MODEL_NOT_SERVED
            )
        if not _same_tensors(served, tensors):
            raise FailedPrecondition(
                "the tensors Triton serves for this model version differ from the card's",
                reason=MODEL_NOT_SERVED,
            )
        digest = await self._files.sha256(registration.name, registration.version)
        if digest is None:
            raise FailedPrecondition(
                f"the model repository holds no {MODEL_FILE} for this version (is it the "
                "folder Triton serves?)",
                reason=MODEL_NOT_SERVED,
            )
        if digest != registration.digest:
            raise FailedPrecondition(
                f"the SHA-256 of the {MODEL_FILE} Triton serves differs from the digest",
                reason=MODEL_DIGEST_MISMATCH,
            )

    async def get(self, name: str, version: int = LATEST) -> RegisteredModel:
        problems: list[FieldViolation] = []
        check_model_name(problems, "name", name)
        if version < 0:
            problems.append(FieldViolation("version", "must be 0 (the latest) or a version"))
        if problems:
            raise InvalidArgument(problems)
        stored = await self._store.registered(name, version)
        if stored is None or stored.receipt is None:
            raise NotFound("no such registered model", reason=MODEL_NOT_FOUND)
        return RegisteredModel(stored.registration, stored.register_time, stored.receipt)

    async def list_models(self, requested_size: int, page_token: str) -> Page[RegisteredModel]:
        size = page_size(requested_size)
        listing = Listing("inference.ListModels")
        cursor = listing.cursor(page_token)
        found = await self._store.list_registered(_after(cursor), size + 1)
        models = [
            RegisteredModel(s.registration, s.register_time, s.receipt)
            for s in found
            if s.receipt is not None
        ]
        return page(models, size, _cursor, listing)


def _same_tensors(served: ModelTensors, card: ModelTensors) -> bool:
    def by_name(tensors: ModelTensors) -> tuple[dict[str, object], dict[str, object]]:
        return (
            {t.name: (t.datatype, t.shape) for t in tensors.inputs},
            {t.name: (t.datatype, t.shape) for t in tensors.outputs},
        )

    return by_name(served) == by_name(card)


def _cursor(model: RegisteredModel) -> str:
    # A model name holds no '/' (MODEL_NAME), so the last one splits the cursor.
    return f"{model.registration.name}/{model.registration.version}"


def _after(cursor: str | None) -> tuple[str, int] | None:
    if cursor is None:
        return None
    name, _, version = cursor.rpartition("/")
    if not name or not version.isascii() or not version.isdigit():  # built by hand
        raise InvalidArgument(
            [FieldViolation("page_token", "is not a token issued for this listing")]
        )
    return name, int(version)
