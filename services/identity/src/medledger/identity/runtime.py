"""The identity service wired from its settings: domain, adapters, servicer, runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from medledger.api.identity.v1 import identity_pb2_grpc
from medledger.common.auth import JwksTokenVerifier
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.ledger_client import LedgerClient
from medledger.common.mongo import create_mongo_client
from medledger.common.patient_log import PatientLog
from medledger.common.patient_log_mongo import MongoPatientLeafStore
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.service_tokens import client_jwks
from medledger.common.subject import SubjectHasher
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import SERVICE_CLIENT_KEYS
from medledger.identity.adapters.consent_store import ConsentStore
from medledger.identity.adapters.ledger_events import LedgerEvents
from medledger.identity.adapters.login_attempts import LoginAttemptStore
from medledger.identity.adapters.mongo_store import IdentityStore
from medledger.identity.adapters.vault_sealer import VaultSealer
from medledger.identity.adapters.vault_signer import VaultTokenSigner
from medledger.identity.bootstrap import Bootstrapper, BootstrapPlan, plan_from_config
from medledger.identity.config import IdentityConfig, IdentitySettings
from medledger.identity.consent_rpc import ConsentRpcs
from medledger.identity.domain.access import AccessControl, BreakGlassPolicy
from medledger.identity.domain.assertions import AssertionPolicy, AssertionVerifier
from medledger.identity.domain.consent_registry import ConsentRegistry
from medledger.identity.domain.directory import Directory, utc_now
from medledger.identity.domain.login_throttle import LoginThrottle, ThrottlePolicy
from medledger.identity.domain.passwords import Passwords
from medledger.identity.domain.patient_directory import PatientDirectory
from medledger.identity.domain.tokens import TokenPolicy, TokenService
from medledger.identity.login_source import trusted_networks
from medledger.identity.server import IDENTITY_ACCESS, IdentityServiceServicer


@dataclass
class IdentityRuntime(ServiceRuntime):
    """The runtime; identity verifies tokens with its own signer's keys (read from Vault,
    no network hop to itself). ``bootstrapper.done`` tells in-process tests the first admin
    exists."""

    bootstrapper: Bootstrapper | None = field(default=None, repr=False)


def identity_runtime(
    settings: IdentitySettings,
    config: IdentityConfig,
    mongo_settings: MongoSettings,
    vault_settings: VaultSettings,
    peers: PeerSettings,
    bootstrap: BootstrapPlan | None = None,
) -> IdentityRuntime:
    """Identity wired from its settings; ``bootstrap`` is the first admin and the services'
    own clients to register (tests give theirs; :func:`from_settings` the configured one)."""
    mongo = create_mongo_client(mongo_settings, app_name="medledger-identity")
    vault = VaultTransit(vault_settings)
    store = IdentityStore(mongo, mongo_settings.mongodb_database)
    signer = VaultTokenSigner(vault, config.signing_key)
    sealer = VaultSealer(vault, config.secrets_key)
    leeway = timedelta(seconds=config.leeway_seconds)
    # identity's own appends carry a token it signs itself; late-bound, as tokens needs ledger.
    ledger = LedgerClient(
        peers.ledger_addr,
        settings,
        token=lambda: tokens.service_token(),  # noqa: PLW0108 (tokens is assigned below)
    )
    # Patients' leaf indexes are sealed under data keys wrapped by identity's own AES key.
    leaf_store = MongoPatientLeafStore(mongo, mongo_settings.mongodb_database, "identity")
    patients = PatientLog(ledger, SubjectHasher(vault), leaf_store, vault, config.secrets_key)
    events = LedgerEvents(ledger, patients)
    passwords = Passwords(workers=config.password_hash_workers, queue=config.password_hash_queue)
    attempts = LoginAttemptStore(mongo, mongo_settings.mongodb_database)
    throttle = LoginThrottle(
        attempts,
        ThrottlePolicy(
            free_failures=config.login_free_failures,
            first_delay=timedelta(seconds=config.login_first_delay_seconds),
            max_delay=timedelta(seconds=config.login_max_delay_seconds),
            source_attempts=config.login_source_attempts_per_minute,
            source_window=timedelta(minutes=1),
        ),
        utc_now,
    )
    tokens = TokenService(
        store,
        signer,
        sealer,
        events,
        AssertionVerifier(
            store,
            AssertionPolicy(
                token_endpoint=config.token_endpoint,
                max_lifetime=timedelta(seconds=config.assertion_max_lifetime_seconds),
                leeway=leeway,
            ),
        ),
        TokenPolicy(
            issuer=config.issuer,
            default_audience=config.default_audience,
            lifetime=timedelta(seconds=config.token_lifetime_seconds),
            service_organization=config.operator_organization,
            failed_login_floor=timedelta(seconds=config.failed_login_seconds),
        ),
        passwords,
        throttle,
    )
    directory = Directory(store, sealer, passwords, totp_issuer=config.totp_issuer)
    consent_store = ConsentStore(mongo, mongo_settings.mongodb_database)
    access = AccessControl(
        consent_store,
        consent_store,
        events,
        store,
        break_glass=BreakGlassPolicy(limit=config.break_glass_per_hour),
    )
    consents = ConsentRpcs(
        ConsentRegistry(consent_store, consent_store, events, store, access), access
    )

    async def service_jwks(service: str) -> str:
        return client_jwks(await vault.public_keys(SERVICE_CLIENT_KEYS[service]))

    bootstrapper = Bootstrapper(
        directory,
        bootstrap or BootstrapPlan(organization=config.operator_organization),
        service_jwks=service_jwks,
    )
    verifier = JwksTokenVerifier(
        signer.jwks,
        issuer=config.issuer,
        audience=config.default_audience,
        leeway_seconds=config.leeway_seconds,
        cache_seconds=config.jwks_cache_seconds,
    )
    return IdentityRuntime(
        name="identity",
        settings=settings,
        servicers=[
            Servicer(
                IdentityServiceServicer(
                    directory,
                    tokens,
                    consents,
                    PatientDirectory(store, consent_store, consent_store, patients),
                    trusted_proxies=trusted_networks(config.trusted_proxies),
                ),
                identity_pb2_grpc.add_IdentityServiceServicer_to_server,
                IDENTITY_ACCESS,
            )
        ],
        mongo=mongo,
        vault=vault,
        startup=[
            store.ensure_indexes,
            consent_store.ensure_indexes,
            attempts.ensure_indexes,
            leaf_store.ensure_indexes,
            bootstrapper.start,
        ],
        shutdown=[bootstrapper.stop, ledger.aclose, passwords.aclose],
        verifier=verifier,
        bootstrapper=bootstrapper,
    )


def from_settings(
    settings: IdentitySettings,
    config: IdentityConfig,
    mongo_settings: MongoSettings,
    vault_settings: VaultSettings,
    peers: PeerSettings,
) -> IdentityRuntime:
    """Identity as ``python -m medledger.identity`` runs it, bootstrapped as configured."""
    return identity_runtime(
        settings, config, mongo_settings, vault_settings, peers, plan_from_config(config)
    )
