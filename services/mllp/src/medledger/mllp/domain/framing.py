"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2): each message travels as
``0x0B <message> 0x1C 0x0D``.

:class:`MllpDecoder` is sans-I/O: the connection feeds it the bytes it reads, in whatever
pieces TCP delivers them, and gets back what it found, in order. It resynchronises the way
interface engines expect a receiver to: bytes outside a frame (noise, a stray CR/LF between
frames) are dropped; a frame cut short by a new start block is reported as broken, so it can
be answered with a negative acknowledgement, and the new frame is read; a frame longer than
the limit is fatal, because the receiver cannot tell where it ends without reading it all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

START_BLOCK: Final = 0x0B
END_BLOCK: Final = 0x1C
CARRIAGE_RETURN: Final = 0x0D


@dataclass(frozen=True)
class Frame:
    """One whole message, the bytes between the start and end blocks."""

    payload: bytes


@dataclass(frozen=True)
class BrokenFrame:
    """A frame that a new start block cut short: its bytes are not a message."""

    length: int


@dataclass(frozen=True)
class Oversize:
    """A frame that passed the size limit before its end block: nothing more can be read."""

    limit: int


FramingEvent = Frame | BrokenFrame | Oversize


def encode_frame(payload: bytes) -> bytes:
    """``payload`` framed for the wire."""
    return bytes([START_BLOCK]) + payload + bytes([END_BLOCK, CARRIAGE_RETURN])


class MllpDecoder:
    """Turns a byte stream into frames (see the module's docstring)."""

    def __init__(self, max_message_bytes: int) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self._limit = max_message_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._scanned = 0  # bytes of the open frame already searched for a block mark
        self._after_end = False  # the last byte seen closed a frame: a CR may follow
        self._failed = False
        self.discarded = 0
        """Bytes dropped outside any frame (the CR after an end block not counted)."""

    @property
    def in_frame(self) -> bool:
        """Whether a frame has started and not ended (a connection closing now cuts it)."""
        return self._in_frame

    def feed(self, data: bytes) -> list[FramingEvent]:
        """What ``data``, read after everything fed before, completes. After an
        :class:`Oversize` the decoder takes nothing more."""
        if self._failed:
            return []
        self._buffer += data
        events: list[FramingEvent] = []
        while self._buffer:
            if not self._in_frame:
                if not self._open_frame():
                    break
                continue
            event = self._close_frame()
            if event is None:
                break
            events.append(event)
            if isinstance(event, Oversize):
                self._failed = True
                self._buffer.clear()
                break
        return events

    def _open_frame(self) -> bool:
        """Drops what precedes the next start block; whether one was found."""
        if self._after_end and self._buffer[0] == CARRIAGE_RETURN:
            del self._buffer[0]
        self._after_end = False
        start = self._buffer.find(START_BLOCK)
        if start < 0:
            self.discarded += len(self._buffer)
            self._buffer.clear()
            return False
        self.discarded += start
        del self._buffer[: start + 1]
        self._in_frame = True
        self._scanned = 0
        return True

    def _close_frame(self) -> FramingEvent | None:
        """The event that ends the open frame, or None while it goes on."""
        end = self._buffer.find(END_BLOCK, self._scanned)
        restart = self._buffer.find(START_BLOCK, self._scanned)
        if restart >= 0 and (end < 0 or restart < end):
            # A sender that gave up on a frame and started again: report the stub, keep
            # the new start block for the next frame.
            del self._buffer[:restart]
            self._in_frame = False
            return BrokenFrame(restart)
        if end < 0:
            if len(self._buffer) > self._limit:
                return Oversize(self._limit)
            self._scanned = len(self._buffer)
            return None
        if end > self._limit:
            return Oversize(self._limit)
        payload = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._in_frame = False
        self._after_end = True
        return Frame(payload)
