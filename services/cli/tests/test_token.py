"""``medledger token`` without a server: key files, the client assertion it signs, and the
exit status of usage errors (2) and of an identity that does not answer (1)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey
from typer.testing import CliRunner

from medledger.cli.main import app
from medledger.cli.token import client_assertion, unverified_claims
from medledger.common.keyfiles import (
    KeyFileError,
    load_private_key,
    new_client_key,
    signing_algorithm,
    write_private,
)
from medledger.devstack.process import free_port

runner = CliRunner(env={"COLUMNS": "200"})
# Client assertions are EdDSA by default (what partners register); joserfc warns that
# RFC 9864 prefers the name "Ed25519".
pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")


def _key_file(tmp_path: Path, document: object, name: str = "client.jwk") -> Path:
    path = tmp_path / name
    write_private(path, json.dumps(document))
    return path


def test_assertion_follows_rfc_7523(tmp_path: Path) -> None:
    key = new_client_key()
    first = client_assertion("lab-app", key, token_endpoint="medledger://identity/token")
    second = client_assertion("lab-app", key)
    public = OKPKey.import_key(key.as_dict(private=False))
    decoded = jwt.decode(first, public, algorithms=["EdDSA"])
    claims = decoded.claims
    assert decoded.header["alg"] == "EdDSA"
    assert decoded.header["kid"] == key.kid == key.thumbprint()
    assert claims["iss"] == claims["sub"] == "lab-app"
    assert claims["aud"] == "medledger://identity/token"
    assert claims["exp"] - claims["iat"] == 60
    assert abs(claims["iat"] - time.time()) < 5
    assert claims["jti"] != unverified_claims(second)["jti"]  # every assertion usable once


@pytest.mark.parametrize(
    ("key", "algorithm"),
    [
        (ECKey.generate_key("P-256"), "ES256"),
        (RSAKey.generate_key(2048), "RS256"),
        (
            OKPKey.import_key({**new_client_key().as_dict(private=True), "alg": "Ed25519"}),
            "Ed25519",
        ),
    ],
)
def test_algorithm_suits_the_key(key: ECKey | RSAKey | OKPKey, algorithm: str) -> None:
    assert signing_algorithm(key) == algorithm
    token = client_assertion("lab-app", key)
    assert jwt.decode(token, key, algorithms=[algorithm]).claims["sub"] == "lab-app"


def test_key_file_may_be_a_one_key_jwks(tmp_path: Path) -> None:
    key = new_client_key()
    path = _key_file(tmp_path, {"keys": [key.as_dict(private=True)]})
    assert load_private_key(path).thumbprint() == key.thumbprint()


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: "not json", "not a JWK (not JSON)"),
        (lambda: {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}, "not a valid OKP key"),
        (lambda: new_client_key().as_dict(private=False), "holds a public key"),
        (
            lambda: ECKey.generate_key("P-384").as_dict(private=True),
            "must be OKP Ed25519, EC P-256 or RSA",
        ),
        (lambda: {"kty": "oct", "k": "c2VjcmV0"}, "must be OKP Ed25519, EC P-256 or RSA"),
        (lambda: {"keys": []}, "exactly one key"),
        (lambda: RSAKey.generate_key(1024).as_dict(private=True), "at least 2048 bits"),
    ],
)
def test_unusable_key_files_are_named(tmp_path: Path, make: Callable[[], object], why: str) -> None:
    document = make()
    path = tmp_path / "bad.jwk"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(KeyFileError, match=re.escape(why)):
        load_private_key(path)
    result = runner.invoke(
        app, ["token", "--client-id", "lab-app", "--key", str(path), "--scope", "ledger.read"]
    )
    assert result.exit_code == 2
    assert why in " ".join(result.output.split())


def test_missing_key_file_and_missing_scope_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDLEDGER_SCOPE", raising=False)
    missing = runner.invoke(
        app, ["token", "--client-id", "a-app", "--key", str(tmp_path / "x.jwk"), "--scope", "s"]
    )
    assert missing.exit_code == 2
    assert "no such file" in missing.output
    key = _key_file(tmp_path, new_client_key().as_dict(private=True))
    no_scope = runner.invoke(app, ["token", "--client-id", "a-app", "--key", str(key)])
    assert no_scope.exit_code == 2
    assert "--scope" in no_scope.output


def test_identity_that_does_not_answer_exits_1(tmp_path: Path) -> None:
    key = _key_file(tmp_path, new_client_key().as_dict(private=True))
    address = f"127.0.0.1:{free_port()}"
    result = runner.invoke(
        app,
        ["token", "--client-id", "a-app", "--key", str(key), "--scope", "ledger.read",
         "--identity", address, "--timeout", "3"],
    )  # fmt: skip
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert f"no token: IssueToken at {address}: UNAVAILABLE" in output
    assert "is the service up?" in output


def test_unverified_claims_refuses_what_is_not_a_jwt() -> None:
    with pytest.raises(ValueError, match="not a JWT"):
        unverified_claims("abc")
    with pytest.raises(ValueError, match="not base64url JSON"):
        unverified_claims("a.!!!.c")
