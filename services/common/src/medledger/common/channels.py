"""The one way to open a gRPC channel to a peer service.

Retries of idempotent failures (UNAVAILABLE) are left to gRPC's own retry policy,
declared in the service config, rather than hand-written loops.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from medledger.common.config import ServiceSettings
from medledger.common.telemetry import client_interceptors

RETRY_SERVICE_CONFIG: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


def channel_options(settings: ServiceSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", settings.keepalive_time_seconds * 1000),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_seconds * 1000),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)),
    ]


def channel_credentials(settings: ServiceSettings) -> grpc.ChannelCredentials | None:
    """mTLS credentials when certificates are configured, else ``None`` (plaintext)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=settings.tls_ca_file.read_bytes() if settings.tls_ca_file else None,
        private_key=settings.tls_key_file.read_bytes(),
        certificate_chain=settings.tls_cert_file.read_bytes(),
    )


def create_channel(
    target: str, settings: ServiceSettings, *, server_name: str = ""
) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` with tracing, retries, keepalive and size limits.

    server_name: with TLS, the name the server's certificate must carry, when ``target`` is
    not it (a pod's IP address, which no certificate names); "": the target's host.
    """
    options = channel_options(settings)
    interceptors = client_interceptors()
    credentials = channel_credentials(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
