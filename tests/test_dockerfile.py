"""The one Dockerfile builds every service process, and only those (no Docker engine here:
this checks the recipe against the workspace instead of building it)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def service_scripts() -> set[str]:
    """Services whose package installs a ``medledger-<service>`` console script."""
    found = set()
    for pyproject in ROOT.glob("services/*/pyproject.toml"):
        project = tomllib.loads(pyproject.read_text())["project"]
        for script in project.get("scripts", {}):
            if script == f"medledger-{pyproject.parent.name}":
                found.add(pyproject.parent.name)
    return found


def test_the_dockerfile_accepts_exactly_the_service_processes() -> None:
    text = (ROOT / "Dockerfile").read_text()
    (accepted,) = re.findall(r'case "\$\{SERVICE\}" in ([a-z|]+)\)', text)
    assert set(accepted.split("|")) == service_scripts()
    assert 'ENTRYPOINT ["medledger-service"]' in text
    assert "USER 10001:10001" in text


def test_no_service_keeps_a_dockerfile_of_its_own() -> None:
    assert sorted(ROOT.glob("services/*/Dockerfile")) == []
