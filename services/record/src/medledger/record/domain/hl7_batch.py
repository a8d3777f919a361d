"""HL7 v2 batches: the messages of one batch file, as laboratories and interface engines send
a day's results (HL7 v2.5 section 2.10.3, the batch protocol).

A batch is an optional file header (FHS), then one or more batches, each a batch header
(BHS), its messages (each starting at its MSH) and a batch trailer (BTS), then an optional
file trailer (FTS). Messages one after another with no envelope at all are a batch too (the
common "file of messages"). The trailers' counts are checked when given: BTS-1, the number of
messages of its batch, and FTS-1, the number of batches of the file; a count that differs, a
header without its trailer, or a segment outside any message means the file was cut or
joined wrongly, and the whole batch is refused (nothing of it is written) rather than
written in part. Locations name the envelope segment as messages' issues do: ``BTS-1``,
``BTS[2]-1`` (the second batch's trailer), ``FTS-1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from medledger.record.domain.hl7_v2 import Hl7Issue, normalise_segments

# One batch request carries at most this many messages and bytes (under gRPC's default 4 MiB
# for a request).
MAX_BATCH_MESSAGES: Final = 1000
MAX_BATCH_BYTES: Final = 4_000_000
_ENVELOPE: Final = frozenset({"FHS", "BHS", "BTS", "FTS"})


@dataclass
class Hl7Batch:
    """The messages of a batch (each with CR between its segments), in file order, and
    what is wrong with its envelope."""

    messages: list[str] = field(default_factory=list)
    issues: list[Hl7Issue] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return any(issue.blocking for issue in self.issues)


def _located(segment: str, sequence: int, field_no: int | None = None) -> str:
    where = segment if sequence == 1 else f"{segment}[{sequence}]"
    return where if field_no is None else f"{where}-{field_no}"


class _Splitter:
    def __init__(self) -> None:
        self.batch = Hl7Batch()
        self.separator = "|"
        self.seen: dict[str, int] = dict.fromkeys(_ENVELOPE, 0)
        self.current: list[str] | None = None
        self.in_batch = -1  # messages since the open BHS; -1 when no batch is open
        self.after_end = False

    def error(self, code: str, location: str, diagnostics: str) -> None:
        self.batch.issues.append(Hl7Issue("fatal", code, location, diagnostics))

    def close_message(self) -> None:
        if self.current is not None:
            self.batch.messages.append("\r".join(self.current))
            self.current = None
            if self.in_batch >= 0:
                self.in_batch += 1

    def count(self, segment: str, line: str, expected: int) -> None:
        """Checks a trailer's count (field 1), when it gives one."""
        fields = line.split(self.separator)
        text = fields[1].strip() if len(fields) > 1 else ""
        if not text:
            return
        location = _located(segment, self.seen[segment], 1)
        if not text.isdigit():
            self.error("value", location, "is not a count")
        elif int(text) != expected:
            self.error(
                "incomplete", location, "differs from the count in the file: it was cut or joined"
            )

    def envelope(self, segment: str, line: str) -> None:
        self.close_message()
        self.seen[segment] += 1
        location = _located(segment, self.seen[segment])
        if segment in {"FHS", "BHS"} and len(line) > 3:
            self.separator = line[3]
        if segment == "FHS" and (self.batch.messages or self.seen["BHS"] or self.seen["FHS"] > 1):
            self.error("structure", location, "a file header comes first, once")
        elif segment == "BHS":
            if self.in_batch >= 0:
                self.error("structure", location, "the batch before has no trailer (BTS)")
            self.in_batch = 0
        elif segment == "BTS":
            if self.in_batch < 0:
                self.error("structure", location, "a batch trailer without its header (BHS)")
            else:
                self.count("BTS", line, self.in_batch)
            self.in_batch = -1
        elif segment == "FTS":
            if not self.seen["FHS"]:
                self.error("structure", location, "a file trailer without its header (FHS)")
            self.count("FTS", line, self.seen["BHS"])

    def segment(self, line: str) -> None:
        name = line[:3]
        if self.seen["FTS"]:
            if not self.after_end:
                self.error("structure", "FTS", "nothing may follow the file trailer")
            self.after_end = True
        elif name in _ENVELOPE:
            self.envelope(name, line)
        elif name == "MSH":
            self.close_message()
            self.current = [line]
        elif self.current is None:
            where = name if re.fullmatch(r"[A-Z][A-Z0-9]{2}", name) else "MSH"
            self.error("structure", where, "a segment outside any message (before its MSH)")
        else:
            self.current.append(line)

    def finish(self) -> Hl7Batch:
        self.close_message()
        if self.in_batch >= 0:
            self.error("incomplete", "BHS", "the last batch has no trailer (BTS): it was cut")
        if self.seen["FHS"] and not self.seen["FTS"]:
            self.error("incomplete", "FHS", "the file has no trailer (FTS): it was cut")
        if not self.batch.messages:
            self.error("required", "MSH", "a batch holds at least one message")
        return self.batch


def split_batch(text: str) -> Hl7Batch:
    """The messages of ``text`` (segments separated by CR, LF or CRLF), its envelope checked
    (module docstring)."""
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_BATCH_BYTES:
        return Hl7Batch(
            issues=[
                Hl7Issue("fatal", "too-long", "FHS", f"a batch is at most {MAX_BATCH_BYTES} bytes")
            ]
        )
    splitter = _Splitter()
    for line in normalise_segments(text).split("\r"):
        if line:
            splitter.segment(line)
        if len(splitter.batch.issues) >= 10:  # a file that is not a batch: enough said
            break
    batch = splitter.finish()
    if len(batch.messages) > MAX_BATCH_MESSAGES:
        batch.issues.append(
            Hl7Issue(
                "fatal",
                "too-long",
                "MSH",
                f"a batch holds at most {MAX_BATCH_MESSAGES} messages: send the file in parts",
            )
        )
    return batch
