"""The TCP server: MLLP connections in, one acknowledgement per message out.

Each connection is served in order, one message at a time (MLLP is request and answer: an
engine waits for the ACK before it sends the next message), so a sender's messages are
applied in the order sent. Limits: a frame larger than ``max_message_bytes`` is answered AR
and the connection closed (its end cannot be found without reading it all); a connection
silent for ``idle_timeout`` is closed; past ``max_connections`` a new connection is closed
at once. With mTLS the peer certificate's names say which facility is sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import Any

from opentelemetry import trace

from medledger.mllp.domain.conditions import Condition
from medledger.mllp.domain.exchange import BROKEN_FRAME, TOO_LARGE, Answer, Exchange
from medledger.mllp.domain.framing import BrokenFrame, Frame, MllpDecoder, Oversize, encode_frame

log = logging.getLogger("medledger.mllp")
tracer = trace.get_tracer("medledger.mllp")
READ_SIZE = 64 * 1024


def certificate_names(certificate: Any) -> tuple[str, ...]:
    """The subject common names and DNS/URI subjectAltNames of a peer certificate (the dict
    ``ssl`` gives)."""
    if not isinstance(certificate, dict):
        return ()
    names: list[str] = []
    for kind, value in certificate.get("subjectAltName", ()):
        if kind in {"DNS", "URI"}:
            names.append(str(value))
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(str(value))
    return tuple(names)


def server_tls(cert_file: str, key_file: str, client_ca_file: str) -> ssl.SSLContext:
    """TLS 1.2+ that demands a client certificate chaining to ``client_ca_file``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class MllpListener:
    """Serves MLLP on ``host:port`` until stopped."""

    def __init__(
        self,
        exchange: Exchange,
        *,
        host: str,
        port: int,
        max_message_bytes: int,
        idle_timeout: float,
        max_connections: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._exchange = exchange
        self._host = host
        self._port = port
        self._max_message_bytes = max_message_bytes
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port bound (the configured one, or the one chosen for port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, ssl=self._tls, limit=READ_SIZE
        )
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop accepting; let each connection finish the message it is on for up to
        ``grace`` seconds, then close them."""
        if self._server is None:
            return
        self._server.close()
        pending = set(self._connections)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self._max_connections:
            log.warning("connection refused: too many open", extra={"open": self.connections})
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
            return
        self._connections.add(task)
        try:
            await self._converse(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as error:
            log.info("connection dropped", extra={"error": type(error).__name__})
        except asyncio.CancelledError:
            # stop() after its grace. The handler ends instead of passing the cancellation
            # on: Python 3.11's stream server reports a cancelled handler as an error.
            log.info("connection closed: the listener is stopping")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        names = None if self._tls is None else _peer_names(writer.get_extra_info("ssl_object"))
        decoder = MllpDecoder(self._max_message_bytes)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), self._idle_timeout)
            except TimeoutError:
                log.info("connection idle: closed", extra={"idle_seconds": self._idle_timeout})
                return
            if not data:
                if decoder.in_frame:
                    log.info("connection closed inside a frame: its message is dropped")
                return
            discarded = decoder.discarded
            for event in decoder.feed(data):
                if isinstance(event, Frame):
                    answer = await self._answer(event.payload, names)
                elif isinstance(event, BrokenFrame):
                    answer = self._exchange.refuse(Condition.SEGMENT_SEQUENCE, BROKEN_FRAME)
                    log.info("broken frame answered AR", extra={"frame_bytes": event.length})
                else:
                    assert isinstance(event, Oversize)
                    answer = self._exchange.refuse(Condition.INTERNAL_ERROR, TOO_LARGE)
                    log.warning("message too large: AR and closed", extra={"limit": event.limit})
                if answer.wire:  # enhanced mode may ask for no acknowledgement
                    writer.write(encode_frame(answer.wire))
                    await writer.drain()
                if isinstance(event, Oversize):
                    return
            if decoder.discarded > discarded:
                log.info(
                    "bytes outside any frame dropped",
                    extra={"bytes": decoder.discarded - discarded},
                )

    async def _answer(self, payload: bytes, names: tuple[str, ...] | None) -> Answer:
        started = time.monotonic()
        with tracer.start_as_current_span("mllp.message") as span:
            answer = await self._exchange.answer(payload, names)
            header = answer.header
            span.set_attribute("hl7.ack_code", answer.ack.code.value)
            if header is not None:
                span.set_attribute("hl7.message_type", header.message_type)
        # Header routing fields only: the control id, type and facility are not patient data.
        log.info(
            "message answered",
            extra={
                "ack": answer.ack.code.value,
                "facility": answer.facility_id,
                "message_type": header.message_type if header else "",
                "control_id": header.control_id if header else "",
                "errors": len(answer.ack.errors),
                "sent": bool(answer.wire),
                "seconds": round(time.monotonic() - started, 4),
            },
        )
        return answer


def _peer_names(ssl_object: Any) -> tuple[str, ...]:
    certificate = ssl_object.getpeercert() if ssl_object is not None else None
    return certificate_names(certificate)
