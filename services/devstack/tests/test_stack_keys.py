"""How the stack wires trust: the witnesses follow the ledger's key, the ledger knows both
witnesses' cosignature keys; all computed from the public keys of Vault's transit keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from medledger.common.config import VaultSettings
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import (
    LEDGER_CHECKPOINT_KEY,
    TRANSIT_MOUNT,
    WITNESS_A_KEY,
    WITNESS_B_KEY,
)
from medledger.devstack.process import StackError
from medledger.devstack.services import (
    LEDGER_ORIGIN,
    WITNESSES,
    ServiceServer,
    StackEndpoints,
    StackKeys,
    read_stack_keys,
    service_env,
    service_module,
)
from medledger.tlog import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    Checkpoint,
    Cosigner,
    Ed25519Signer,
    NoteSignature,
    VerifierKey,
    cosigned_message,
    format_note,
    verify_checkpoint,
)

ENDPOINTS = StackEndpoints(
    mongo_uri="mongodb://127.0.0.1:27018/?directConnection=true",
    vault_addr="http://127.0.0.1:8201",
    vault_tokens={"witness-a": "s.witness-a", "witness-b": "s.witness-b", "ledger": "s.ledger"},
    triton_url="127.0.0.1:8011",
)
LEDGER = Ed25519Signer.generate(LEDGER_ORIGIN)
WITNESS_A = Cosigner.generate("witness-a.medledger.local")
WITNESS_B = Cosigner.generate("witness-b.medledger.local")
KEYS = StackKeys.from_public_keys(
    {
        LEDGER_CHECKPOINT_KEY: LEDGER.public_key,
        WITNESS_A_KEY: WITNESS_A.public_key,
        WITNESS_B_KEY: WITNESS_B.public_key,
    }
)
WIRED = dataclasses.replace(ENDPOINTS, keys=KEYS)
NOW = 1_750_000_000


def test_the_two_witnesses_are_two_organisations() -> None:
    assert {name: (w.key, w.name, w.mount) for name, w in WITNESSES.items()} == {
        "witness-a": ("witness-a", "witness-a.medledger.local", "transit-witness-a"),
        "witness-b": ("witness-b", "witness-b.medledger.local", "transit-witness-b"),
    }
    assert len({w.database for w in WITNESSES.values()} | {"medledger"}) == 3
    assert len({w.mount for w in WITNESSES.values()} | {TRANSIT_MOUNT}) == 3
    assert service_module("witness-a") == service_module("witness-b") == "witness"
    assert service_module("ledger") == "ledger"


def test_vkeys_are_the_keys_signers_and_verifiers_agree_on() -> None:
    assert KEYS.ledger_vkey == str(LEDGER.verifier_key)
    assert dict(KEYS.witness_vkeys) == {
        "witness-a": str(WITNESS_A.verifier_key),
        "witness-b": str(WITNESS_B.verifier_key),
    }
    assert VerifierKey.parse(KEYS.ledger_vkey).signature_type == SIG_ED25519
    assert VerifierKey.parse(KEYS.ledger_vkey).name == LEDGER_ORIGIN
    for vkey in KEYS.witness_vkeys.values():
        assert VerifierKey.parse(vkey).signature_type == SIG_COSIGNATURE_V1


def test_each_witness_gets_its_identity_and_the_ledger_key() -> None:
    for name, port in (("witness-a", "50055"), ("witness-b", "50056")):
        env = service_env(name, WIRED, base={"WITNESS_NAME": "from-the-shell"})
        witness = WITNESSES[name]
        assert env["MEDLEDGER_GRPC_PORT"] == port
        assert env["WITNESS_NAME"] == witness.name
        assert env["WITNESS_KEY"] == witness.key
        assert env["WITNESS_LOG_VKEYS"] == KEYS.ledger_vkey
        assert env["MEDLEDGER_MONGODB_DATABASE"] == witness.database
        assert env["OTEL_SERVICE_NAME"] == name
        # Its own Vault token and transit mount: another organisation's Vault.
        assert env["VAULT_TOKEN"] == f"s.{name}"
        assert env["VAULT_TRANSIT_MOUNT"] == witness.mount
    # Until the keys are known a witness gets no log key (and would refuse to start).
    assert "WITNESS_LOG_VKEYS" not in service_env("witness-a", ENDPOINTS, base={})


def test_the_ledger_gets_both_witnesses_with_their_keys_in_the_same_order() -> None:
    env = service_env("ledger", WIRED, base={})
    assert env["LEDGER_ORIGIN"] == LEDGER_ORIGIN
    assert env["LEDGER_WITNESSES"] == "127.0.0.1:50055,127.0.0.1:50056"
    assert env["LEDGER_WITNESS_VKEYS"] == (f"{WITNESS_A.verifier_key},{WITNESS_B.verifier_key}")
    assert env["MEDLEDGER_MONGODB_DATABASE"] == "medledger_ledger"
    assert "WITNESS_KEY" not in env


def test_a_witness_runs_the_witness_module() -> None:
    server = ServiceServer("witness-b", endpoints=WIRED, log_file=Path("/dev/null"))
    assert server.argv()[-2:] == ["-m", "medledger.witness"]
    assert server.address == "127.0.0.1:50056"


async def test_keys_read_from_vault_verify_what_vault_signs(vault_server: Any) -> None:
    keys = read_stack_keys(vault_server.addr, vault_server.operator_token)

    def transit(service: str, mount: str = TRANSIT_MOUNT) -> VaultTransit:
        token = vault_server.token_for(service)
        return VaultTransit(VaultSettings(addr=vault_server.addr, token=token, transit_mount=mount))

    ledger_transit = transit("ledger")
    body = Checkpoint(LEDGER_ORIGIN, 1, bytes(32)).body()
    ledger = VerifierKey.parse(keys.ledger_vkey)
    signed_by_log = await ledger_transit.sign(LEDGER_CHECKPOINT_KEY, body)
    log_line = NoteSignature(LEDGER_ORIGIN, ledger.key_id, signed_by_log.signature)
    assert verify_checkpoint(format_note(body, [log_line]), [keys.ledger_vkey], [], 0).size == 1
    ledger_transit.close()
    for name, vkey in keys.witness_vkeys.items():
        witness = WITNESSES[name]
        own = transit(name, witness.mount)  # each witness signs on its own mount, own token
        signed = await own.sign(witness.key, cosigned_message(body, NOW))
        own.close()
        line = NoteSignature(
            witness.name,
            VerifierKey.parse(vkey).key_id,
            NOW.to_bytes(8, "big") + signed.signature,
        )
        note = format_note(body, [log_line, line])
        verify_checkpoint(note, [keys.ledger_vkey], [vkey], 1)


def test_unreadable_keys_say_what_is_wrong(vault_server: Any) -> None:
    with pytest.raises(StackError, match="cannot read the public keys of ledger-checkpoint"):
        read_stack_keys(vault_server.addr, "not-a-token")
