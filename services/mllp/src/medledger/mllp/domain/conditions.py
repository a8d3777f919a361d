"""HL7 table 0357 (message error condition codes), the codes an ERR-3 carries, and table 0516
(error severity) for ERR-4."""

from __future__ import annotations

import enum


class Condition(enum.Enum):
    """An HL7 table 0357 code and its name."""

    ACCEPTED = ("0", "Message accepted")
    SEGMENT_SEQUENCE = ("100", "Segment sequence error")
    REQUIRED_FIELD_MISSING = ("101", "Required field missing")
    DATA_TYPE = ("102", "Data type error")
    TABLE_VALUE_NOT_FOUND = ("103", "Table value not found")
    UNSUPPORTED_MESSAGE_TYPE = ("200", "Unsupported message type")
    UNSUPPORTED_EVENT = ("201", "Unsupported event code")
    UNSUPPORTED_PROCESSING_ID = ("202", "Unsupported processing id")
    UNSUPPORTED_VERSION = ("203", "Unsupported version id")
    UNKNOWN_KEY = ("204", "Unknown key identifier")
    DUPLICATE_KEY = ("205", "Duplicate key identifier")
    RECORD_LOCKED = ("206", "Application record locked")
    INTERNAL_ERROR = ("207", "Application internal error")

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def text(self) -> str:
        return self.value[1]


class Severity(enum.StrEnum):
    """HL7 table 0516. v2.5 has no fatal level: a FATAL issue is reported as E."""

    ERROR = "E"
    WARNING = "W"
    INFORMATION = "I"
