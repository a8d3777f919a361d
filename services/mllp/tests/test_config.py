"""The listener's settings and facilities file: each mistake named, no key echoed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medledger.common.config import ConfigError, load_settings
from medledger.common.keyfiles import ensure_key_pair
from medledger.mllp.config import MllpSettings, load_facilities

VARIABLES = (
    "MEDLEDGER_MLLP_HOST",
    "MEDLEDGER_MLLP_PORT",
    "MEDLEDGER_MLLP_FACILITIES_FILE",
    "MEDLEDGER_MLLP_TLS_CERT_FILE",
    "MEDLEDGER_MLLP_TLS_KEY_FILE",
    "MEDLEDGER_MLLP_TLS_CLIENT_CA_FILE",
    "MEDLEDGER_MLLP_MAX_MESSAGE_BYTES",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def write_facilities(folder: Path, *entries: dict[str, object]) -> Path:
    path = folder / "facilities.json"
    path.write_text(json.dumps({"facilities": list(entries)}), encoding="utf-8")
    return path


def entry(folder: Path, facility: str = "hospital-a", **changes: object) -> dict[str, object]:
    ensure_key_pair(f"{facility}-hl7", folder / f"{facility}.jwk", folder / f"{facility}.jwks")
    document: dict[str, object] = {
        "id": facility,
        "client_id": f"{facility}-hl7",
        "key_file": f"{facility}.jwk",
        "sending_facilities": [facility.upper()],
    }
    document.update(changes)
    return document


def test_defaults_listen_on_loopback_2575(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("MEDLEDGER_MLLP_FACILITIES_FILE", str(write_facilities(tmp_path, entry(tmp_path))))
    (settings,) = load_settings(MllpSettings)
    assert (settings.mllp_host, settings.mllp_port) == ("127.0.0.1", 2575)
    assert settings.mllp_max_message_bytes == 1024 * 1024
    assert not settings.mutual_tls


def test_without_mtls_only_loopback(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("MEDLEDGER_MLLP_FACILITIES_FILE", str(write_facilities(tmp_path, entry(tmp_path))))
    env.setenv("MEDLEDGER_MLLP_HOST", "0.0.0.0")
    with pytest.raises(ConfigError) as raised:
        load_settings(MllpSettings)
    assert "MEDLEDGER_MLLP_HOST: without mTLS" in str(raised.value)


def test_tls_files_come_together(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("MEDLEDGER_MLLP_FACILITIES_FILE", str(write_facilities(tmp_path, entry(tmp_path))))
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    env.setenv("MEDLEDGER_MLLP_TLS_CERT_FILE", str(cert))
    with pytest.raises(ConfigError) as raised:
        load_settings(MllpSettings)
    assert "MEDLEDGER_MLLP_TLS_CERT_FILE: set it with" in str(raised.value)


def test_missing_file_and_bad_limit_are_named_together(env: pytest.MonkeyPatch) -> None:
    env.setenv("MEDLEDGER_MLLP_MAX_MESSAGE_BYTES", "10")
    with pytest.raises(ConfigError) as raised:
        load_settings(MllpSettings)
    message = str(raised.value)
    assert "MEDLEDGER_MLLP_FACILITIES_FILE: is required but not set" in message
    assert "MEDLEDGER_MLLP_MAX_MESSAGE_BYTES" in message


def test_facilities_are_loaded_with_their_keys(tmp_path: Path) -> None:
    path = write_facilities(
        tmp_path, entry(tmp_path), entry(tmp_path, "hospital-b", certificate_names=["b.example"])
    )
    directory, keys = load_facilities(path, mutual_tls=False)
    assert sorted(keys) == ["hospital-a", "hospital-b"]
    assert directory.authenticate(None, "HOSPITAL-A").client_id == "hospital-a-hl7"  # type: ignore[union-attr]
    assert directory.authenticate(None, "NOBODY") is None
    # Over mTLS the certificate decides, and MSH-4 must be the facility's own.
    assert directory.authenticate(["b.example"], "HOSPITAL-B").facility_id == "hospital-b"  # type: ignore[union-attr]
    assert directory.authenticate(["b.example"], "HOSPITAL-A") is None
    assert directory.authenticate(["unknown.example"], "HOSPITAL-A") is None


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"key_file": "missing.jwk"}, "missing.jwk: no such file"),
        ({"sending_facilities": []}, "sending_facilities"),
        ({"client": "x"}, "client: Extra inputs are not permitted"),
        ({"id": "has space"}, "facilities.0.id"),
    ],
)
def test_a_bad_entry_is_named(tmp_path: Path, changes: dict[str, object], problem: str) -> None:
    path = write_facilities(tmp_path, entry(tmp_path, **changes))
    with pytest.raises(ConfigError) as raised:
        load_facilities(path, mutual_tls=False)
    assert problem in str(raised.value)


def test_two_facilities_cannot_share_an_msh_4(tmp_path: Path) -> None:
    path = write_facilities(
        tmp_path, entry(tmp_path), entry(tmp_path, "hospital-b", sending_facilities=["HOSPITAL-A"])
    )
    with pytest.raises(ConfigError, match="given to two facilities"):
        load_facilities(path, mutual_tls=False)


def test_mtls_needs_certificate_names(tmp_path: Path) -> None:
    path = write_facilities(tmp_path, entry(tmp_path))
    with pytest.raises(ConfigError, match="no certificate_names"):
        load_facilities(path, mutual_tls=True)


def test_a_key_is_never_echoed(tmp_path: Path) -> None:
    path = write_facilities(tmp_path, entry(tmp_path))
    (tmp_path / "hospital-a.jwk").write_text('{"kty": "oct", "k": "c2VjcmV0LXZhbHVl"}')
    with pytest.raises(ConfigError) as raised:
        load_facilities(path, mutual_tls=False)
    assert "c2VjcmV0" not in str(raised.value)
