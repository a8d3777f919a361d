"""One-shot health probes: each answers SERVING, NOT_SERVING or DOWN and never raises."""

from __future__ import annotations

import enum
import http.client
import socket
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pymongo import MongoClient
from pymongo.errors import PyMongoError

PROBE_TIMEOUT_S = 1.0


class Health(enum.StrEnum):
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    DOWN = "down"


def http_status(url: str, timeout: float = PROBE_TIMEOUT_S) -> int | None:
    """The HTTP status code of a GET (error codes included), or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback URL)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, http.client.HTTPException):
        return None


def http_health(url: str, timeout: float = PROBE_TIMEOUT_S) -> Health:
    """SERVING on 200, NOT_SERVING on any other answer, DOWN when nothing answers."""
    status = http_status(url, timeout)
    if status is None:
        return Health.DOWN
    return Health.SERVING if status == 200 else Health.NOT_SERVING


def tcp_health(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> Health:
    """SERVING when ``host:port`` accepts a TCP connection (a server without a health
    protocol, such as the MLLP listener)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return Health.SERVING
    except OSError:
        return Health.DOWN


def mongo_health(uri: str, timeout: float = PROBE_TIMEOUT_S) -> Health:
    """SERVING when the server answers ``ping``."""
    timeout_ms = int(timeout * 1000)
    client: MongoClient[dict[str, object]] = MongoClient(
        uri,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=timeout_ms,
    )
    try:
        client.admin.command("ping")
    except PyMongoError:
        return Health.DOWN
    finally:
        client.close()
    return Health.SERVING


def grpc_health(address: str, timeout: float = PROBE_TIMEOUT_S, service: str = "") -> Health:
    """The status a ``grpc.health.v1`` server reports for ``service`` ("" is the whole server)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}:
                return Health.DOWN
            return Health.NOT_SERVING
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return Health.SERVING
    return Health.NOT_SERVING
