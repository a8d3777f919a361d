"""The models, trained once per test session, and their repositories written to a temporary
folder (never the checkout's build/models, which a running local stack may be serving)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medledger.models.repository import BuiltModel, build, build_models


@pytest.fixture(scope="session")
def built_models() -> list[BuiltModel]:
    return build_models()


@pytest.fixture(scope="session")
def model_repositories(
    tmp_path_factory: pytest.TempPathFactory, built_models: list[BuiltModel]
) -> Path:
    """``make models``'s output for this session: ``local/`` and ``production/``."""
    out = tmp_path_factory.mktemp("models")
    build(out, models=built_models)
    return out
