"""Settings of the identity service (see the README's configuration table)."""

from __future__ import annotations

from pydantic import Field, FilePath, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medledger.common.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from medledger.common.config import Port, ServiceSettings
from medledger.common.vault_layout import IDENTITY_TOKEN_KEY

URI = r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]{1,255}$"
KEY_NAME = r"^[A-Za-z0-9_-]{1,128}$"


SERVICE_LIST = r"^$|^(ledger|record|inference)(,(ledger|record|inference))*$"


class IdentitySettings(ServiceSettings):
    grpc_port: Port = 50051


class IdentityConfig(BaseSettings):
    """The ``IDENTITY_*`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="IDENTITY_", extra="ignore", frozen=True, case_sensitive=False
    )

    # "iss" of every access token; verifiers are configured with the same value.
    issuer: str = Field(default=DEFAULT_ISSUER, pattern=URI)
    # The "aud" client assertions must carry (RFC 7523 §3: the token endpoint).
    token_endpoint: str = Field(default="medledger://identity/token", pattern=URI)
    # "aud" of tokens that ask for none; the audience every medledger service accepts.
    default_audience: str = Field(default=DEFAULT_AUDIENCE, pattern=r"^[^\s]{1,255}$")
    token_lifetime_seconds: int = Field(default=300, ge=30, le=3600)
    # Clock skew tolerated on client assertions and access tokens.
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    # Longest a client assertion may live (RFC 7523 asks for a short one).
    assertion_max_lifetime_seconds: int = Field(default=300, ge=10, le=3600)
    # Password logins: failures in a row that lock the account, and for how long.
    max_login_failures: int = Field(default=5, ge=1, le=100)
    lockout_seconds: int = Field(default=900, ge=1, le=86400)
    # Vault transit keys: the Ed25519 key that signs tokens, the AES key that seals TOTP secrets.
    signing_key: str = Field(default=IDENTITY_TOKEN_KEY, pattern=KEY_NAME)
    secrets_key: str = Field(default="identity-secrets", pattern=KEY_NAME)
    # Issuer name shown by authenticator apps for TOTP enrolments.
    totp_issuer: str = Field(default="medledger", pattern=r"^[^:]{1,64}$")
    # How long a verifier inside identity caches the JWKS before reading it again.
    jwks_cache_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Break-glass attempts one principal may make in any hour.
    break_glass_per_hour: int = Field(default=10, ge=1, le=1000)

    # The operators' organisation: the bootstrap admin belongs to it, and identity acts for
    # it in the ledger (its own appends, key rotations by principals without one).
    operator_organization: str = Field(
        default="medledger", pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
    )
    # First-start bootstrap (see bootstrap.py): an admin client holding the key in this
    # public JWK/JWKS file and/or an admin user whose password is in a file. Applied once;
    # never overwrites what exists.
    bootstrap_client_id: str = ""
    bootstrap_client_jwks_file: FilePath | None = None
    bootstrap_admin_username: str = ""
    bootstrap_admin_password_file: FilePath | None = None
    # The medledger services that call others (ledger, record, inference): each becomes a
    # client ``medledger-<service>`` whose key is its Vault transit key (no private key leaves
    # Vault), with the scopes its calls need. Comma-separated.
    service_clients: str = Field(
        default="", pattern=r"^$|^(ledger|record|inference)(,(ledger|record|inference))*$"
    )

    @model_validator(mode="after")
    def _bootstrap_pairs(self) -> IdentityConfig:
        if bool(self.bootstrap_client_id) != (self.bootstrap_client_jwks_file is not None):
            raise ValueError(
                "IDENTITY_BOOTSTRAP_CLIENT_JWKS_FILE must be set together with "
                "IDENTITY_BOOTSTRAP_CLIENT_ID"
            )
        if bool(self.bootstrap_admin_username) != (self.bootstrap_admin_password_file is not None):
            raise ValueError(
                "IDENTITY_BOOTSTRAP_ADMIN_PASSWORD_FILE must be set together with "
                "IDENTITY_BOOTSTRAP_ADMIN_USERNAME"
            )
        return self
