"""Shared trees for the tlog tests: distinct leaves and a naive store of every perfect node."""

from collections.abc import Callable

import pytest

from medledger.tlog import NodeId, leaf_hash, node_hash

STORE_LEAVES = 5000

StoreBuilder = Callable[[list[bytes]], dict[NodeId, bytes]]


def _build_store(leaves: list[bytes]) -> dict[NodeId, bytes]:
    """Every perfect node of the tree over ``leaves``, computed level by level, no shortcuts."""
    store = {NodeId(0, index): value for index, value in enumerate(leaves)}
    row = leaves
    level = 0
    while len(row) > 1:
        row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row) - 1, 2)]
        level += 1
        store.update({NodeId(level, index): value for index, value in enumerate(row)})
    return store


@pytest.fixture(scope="session")
def build_store() -> StoreBuilder:
    """The naive store builder, for tests with their own leaves."""
    return _build_store


@pytest.fixture(scope="session")
def leaves() -> list[bytes]:
    """Leaf hashes of distinct entries, so no two subtrees share a hash."""
    return [leaf_hash(b"entry %d" % index) for index in range(STORE_LEAVES)]


@pytest.fixture(scope="session")
def store(leaves: list[bytes]) -> dict[NodeId, bytes]:
    return _build_store(leaves)
