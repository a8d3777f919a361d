"""Settings of the identity service (see the README's configuration table)."""

from __future__ import annotations

from pydantic import Field, FilePath, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medledger.common.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from medledger.common.config import Port, ServiceSettings
from medledger.common.vault_layout import IDENTITY_TOKEN_KEY
from medledger.identity.login_source import trusted_networks

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
    # Password logins (see domain/login_throttle.py): failures a source may make on one
    # username at once, then waits doubling from the first delay up to the longest; attempts
    # a source may make per minute whatever the username.
    login_free_failures: int = Field(default=5, ge=1, le=100)
    login_first_delay_seconds: float = Field(default=1.0, gt=0, le=3600)
    login_max_delay_seconds: float = Field(default=900.0, gt=0, le=86400)
    login_source_attempts_per_minute: int = Field(default=60, ge=1, le=1_000_000)
    # A failed login answers no sooner than this after it began (uniform timing).
    failed_login_seconds: float = Field(default=0.5, ge=0, le=10)
    # argon2id hashes at once (64 MiB and about one CPU core each) and logins waiting for
    # one; more are refused (LOGIN_BUSY).
    password_hash_workers: int = Field(default=1, ge=1, le=16)
    password_hash_queue: int = Field(default=16, ge=0, le=1000)
    # Comma-separated networks of the proxies in front of identity, whose x-forwarded-for
    # tells the caller's address (see login_source.py); empty: the peer is the caller.
    trusted_proxies: str = ""
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
    # public JWK/JWKS file and/or an admin user whose password and TOTP secret (base32, as
    # authenticator apps take it) are in files. Applied once; never overwrites what exists.
    bootstrap_client_id: str = ""
    bootstrap_client_jwks_file: FilePath | None = None
    bootstrap_admin_username: str = ""
    bootstrap_admin_password_file: FilePath | None = None
    bootstrap_admin_totp_secret_file: FilePath | None = None
    # The medledger services that call others (ledger, record, inference): each becomes a
    # client ``medledger-<service>`` whose key is its Vault transit key (no private key leaves
    # Vault), with the scopes its calls need. Comma-separated.
    service_clients: str = Field(
        default="", pattern=r"^$|^(ledger|record|inference)(,(ledger|record|inference))*$"
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        trusted_networks(value)
        return value

    @model_validator(mode="after")
    def _bootstrap_pairs(self) -> IdentityConfig:
        if bool(self.bootstrap_client_id) != (self.bootstrap_client_jwks_file is not None):
            raise ValueError(
                "IDENTITY_BOOTSTRAP_CLIENT_JWKS_FILE must be set together with "
                "IDENTITY_BOOTSTRAP_CLIENT_ID"
            )
        admin_user = bool(self.bootstrap_admin_username)
        if admin_user != (self.bootstrap_admin_password_file is not None) or admin_user != (
            self.bootstrap_admin_totp_secret_file is not None
        ):
            raise ValueError(
                "IDENTITY_BOOTSTRAP_ADMIN_PASSWORD_FILE and "
                "IDENTITY_BOOTSTRAP_ADMIN_TOTP_SECRET_FILE must be set together with "
                "IDENTITY_BOOTSTRAP_ADMIN_USERNAME (admins log in with a second factor)"
            )
        return self
