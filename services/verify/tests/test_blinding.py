"""The offline verifier's blinding is the record service's (which derives its blinding salts
with :func:`record_blinding_salt` itself): the same blinded resource id as
``medledger.common.blinding.Opening``, and pinned known answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medledger.common.blinding import Opening
from medledger.verify.blinding import blinded_resource_id, record_blinding_salt

salts = st.binary(min_size=32, max_size=32)
names = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1)


@given(salts, names, names, st.integers(min_value=1, max_value=2**63 - 1))
def test_the_blinded_id_is_the_openings(
    salt: bytes, resource_type: str, resource_id: str, version: int
) -> None:
    opening = Opening(
        salt=salt,
        pseudonym=bytes(32),
        resource_type=resource_type,
        resource_id=resource_id,
        resource_version=version,
    )
    ref = opening.resource()
    assert ref is not None
    assert blinded_resource_id(salt, resource_type, resource_id, version) == ref.id


def test_a_known_answer() -> None:
    """Pinned, so a partner's re-implementation has a vector (docs/export-format.md)."""
    commitment_salt = bytes(range(32))
    salt = record_blinding_salt(commitment_salt)
    assert salt.hex() == "4921ded3d5132e6b9c64692a273070151f8e2431da255159c21851c4822f7d36"
    assert blinded_resource_id(salt, "Observation", "obs-1", 3) == (
        "f5d16ed53e1cacc3ba556dead1cf50e2f440410b1e88469b2f250bcb99da29f6"
    )


def test_any_change_changes_the_id() -> None:
    salt = record_blinding_salt(bytes(32))
    base = blinded_resource_id(salt, "Observation", "obs-1", 3)
    assert blinded_resource_id(salt, "Observation", "obs-1", 4) != base
    assert blinded_resource_id(salt, "Observation", "obs-2", 3) != base
    assert blinded_resource_id(salt, "Condition", "obs-1", 3) != base
    other_salt = record_blinding_salt(bytes(31) + b"\x01")
    assert blinded_resource_id(other_salt, "Observation", "obs-1", 3) != base


def test_a_salt_of_another_size_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes, not 31"):
        blinded_resource_id(bytes(31), "Observation", "obs-1", 1)
