"""The message header (MSH) of an HL7 v2 message, read as far as the listener needs it:
who sent the message, its type, control id, version and character set.

The listener reads nothing past the MSH segment: the clinical content is the record
service's to parse. Each problem is a :class:`HeaderError` that locates the field, so the
acknowledgement can point at it.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Final

from medledger.mllp.domain.conditions import Condition

DEFAULT_ENCODING_CHARACTERS: Final = "^~\\&"
# MSH-18 values (HL7 table 0211) we decode, by Python codec. Empty MSH-18 means the
# "default" character set, which in practice is ASCII or, as most engines send, UTF-8.
CHARACTER_SETS: Final = {
    "": "utf-8",
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/15": "iso8859-15",
}


# HL7 table 0155 (accept/application acknowledgement conditions), "" when not valued.
ACK_CONDITIONS: Final = frozenset({"", "AL", "NE", "ER", "SU"})


@dataclass(frozen=True)
class HeaderError(Exception):
    """The header cannot be read: which field (MSH-``field``; 0 the segment) and why."""

    condition: Condition
    field: int
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class MessageHeader:
    """MSH fields as sent (escaped form; components joined by the message's own separator)."""

    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str
    control_id: str
    processing_id: str
    version: str
    character_set: str
    accept_ack_type: str = ""  # MSH-15 (table 0155: AL, NE, ER, SU), upper case
    application_ack_type: str = ""  # MSH-16

    @property
    def enhanced_mode(self) -> bool:
        """HL7 enhanced acknowledgement mode: MSH-15 or MSH-16 valued (both empty: original)."""
        return bool(self.accept_ack_type or self.application_ack_type)

    @property
    def component_separator(self) -> str:
        return self.encoding_characters[0]

    def component(self, value: str, index: int) -> str:
        """Component ``index`` (1-based) of field ``value``, unescaped."""
        parts = value.split(self.component_separator)
        return (
            unescape(parts[index - 1], self.encoding_characters, self.field_separator)
            if (index <= len(parts))
            else ""
        )

    @property
    def sending_facility_id(self) -> str:
        """MSH-4.1, the namespace id a facility is known by."""
        return self.component(self.sending_facility, 1)

    @property
    def sending_application_id(self) -> str:
        return self.component(self.sending_application, 1)

    @property
    def trigger_event(self) -> str:
        """MSH-9.2 (``A01`` of ``ADT^A01``)."""
        return self.component(self.message_type, 2)

    @property
    def message_code(self) -> str:
        """MSH-9.1 (``ADT`` of ``ADT^A01``)."""
        return self.component(self.message_type, 1)


def unescape(value: str, encoding_characters: str, field_separator: str) -> str:
    """``value`` with HL7 delimiter escapes (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``) decoded; other
    escape sequences (formatting, hexadecimal) are kept as written."""
    escape = encoding_characters[2] if len(encoding_characters) > 2 else "\\"
    if escape not in value:
        return value
    delimiters = {
        "F": field_separator,
        "S": encoding_characters[0],
        "R": encoding_characters[1],
        "E": escape,
        "T": encoding_characters[3] if len(encoding_characters) > 3 else "&",
    }
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == escape:
            end = value.find(escape, i + 1)
            name = value[i + 1 : end] if end > i else ""
            if name in delimiters:
                out.append(delimiters[name])
                i = end + 1
                continue
        out.append(value[i])
        i += 1
    return "".join(out)


def escape_text(value: str, header: MessageHeader | None) -> str:
    """``value`` with the message's delimiters escaped, for a field of the acknowledgement."""
    field_separator = header.field_separator if header else "|"
    characters = header.encoding_characters if header else DEFAULT_ENCODING_CHARACTERS
    escape = characters[2]
    names = {escape: "E", field_separator: "F", characters[0]: "S", characters[1]: "R"}
    if len(characters) > 3:
        names[characters[3]] = "T"
    out = []
    for char in value:
        if char in names:
            out.append(f"{escape}{names[char]}{escape}")
        elif char in "\r\n":
            out.append(" ")  # a segment break inside a field would end the segment
        else:
            out.append(char)
    return "".join(out)


def normalise_segments(text: str) -> str:
    """Segments separated by CR only: senders also use LF or CRLF, and both parsers read
    only CR (a message with LF would be one segment)."""
    return text.replace("\r\n", "\n").replace("\n", "\r")


def _first_segment(payload: bytes) -> bytes:
    cut = len(payload)
    for mark in (b"\r", b"\n"):
        at = payload.find(mark)
        if 0 <= at < cut:
            cut = at
    return payload[:cut]


def read_header(payload: bytes) -> MessageHeader:
    """The MSH of a framed message; :class:`HeaderError` when it cannot be read."""
    # The header is ASCII in every character set HL7 allows on the wire here; latin-1 maps
    # each byte to one character, so the offsets hold whatever the rest is.
    segment = _first_segment(payload.lstrip(b"\r\n")).decode("iso8859-1")
    if not segment.startswith("MSH") or len(segment) < 8:
        raise HeaderError(
            Condition.SEGMENT_SEQUENCE, 0, "the message does not start with an MSH segment"
        )
    separator = segment[3]
    if separator.isalnum() or separator in " \r\n":
        raise HeaderError(Condition.DATA_TYPE, 1, "MSH-1 is not a field separator")
    fields = segment.split(separator)
    # fields[0] is "MSH", fields[1] MSH-2: MSH-n is fields[n - 1] for n >= 2.
    characters = fields[1]
    if (
        not 2 <= len(characters) <= 5
        or len(set(characters + separator)) != len(characters) + 1
        or any(c.isalnum() or c.isspace() for c in characters)
    ):
        raise HeaderError(Condition.DATA_TYPE, 2, "MSH-2 does not hold the encoding characters")
    if len(characters) < 3:
        raise HeaderError(Condition.DATA_TYPE, 2, "MSH-2 lacks the escape character")

    def field(number: int) -> str:
        index = number - 1
        return fields[index] if index < len(fields) else ""

    header = MessageHeader(
        field_separator=separator,
        encoding_characters=characters,
        sending_application=field(3),
        sending_facility=field(4),
        receiving_application=field(5),
        receiving_facility=field(6),
        message_type=field(9),
        control_id=field(10),
        processing_id=field(11),
        version=field(12).split(characters[0])[0],
        character_set=field(18).split(characters[1])[0].strip(),
        accept_ack_type=field(15).strip().upper(),
        application_ack_type=field(16).strip().upper(),
    )
    for number, value in ((15, header.accept_ack_type), (16, header.application_ack_type)):
        if value not in ACK_CONDITIONS:
            raise HeaderError(
                Condition.TABLE_VALUE_NOT_FOUND,
                number,
                f"MSH-{number} is not an acknowledgement condition (AL, NE, ER or SU)",
            )
    if not header.control_id:
        raise HeaderError(Condition.REQUIRED_FIELD_MISSING, 10, "MSH-10 (control id) is empty")
    if not header.message_type:
        raise HeaderError(Condition.REQUIRED_FIELD_MISSING, 9, "MSH-9 (message type) is empty")
    if not header.sending_facility_id:
        raise HeaderError(Condition.REQUIRED_FIELD_MISSING, 4, "MSH-4 (sending facility) is empty")
    return header


def decode_message(payload: bytes, header: MessageHeader) -> str:
    """The message as text in its MSH-18 character set, segments separated by CR."""
    codec = CHARACTER_SETS.get(header.character_set.upper())
    if codec is None:
        raise HeaderError(
            Condition.TABLE_VALUE_NOT_FOUND, 18, "MSH-18 names a character set not supported"
        )
    try:
        text = payload.decode(codec)
    except UnicodeDecodeError:
        if header.character_set:
            raise HeaderError(
                Condition.DATA_TYPE, 18, "the message is not in the character set MSH-18 names"
            ) from None
        # No MSH-18: older engines send Latin-1 without saying so; every byte is a character.
        text = payload.decode("iso8859-1")
    return normalise_segments(text.strip("\r\n"))


def encoding_for(header: MessageHeader | None) -> str:
    """The codec the acknowledgement is written in: the message's own, else UTF-8 (an
    acknowledgement we write is ASCII unless diagnostics say otherwise)."""
    if header is None:
        return "utf-8"
    codec = CHARACTER_SETS.get(header.character_set.upper(), "utf-8")
    return codecs.lookup(codec).name
