"""Rendering the chart for the tests in this folder: ``chart(*helm_args)`` is what
``helm template`` renders (with the pinned helm that scripts/chart-check.sh installs), as a
:class:`Manifest`; ``chart.refuses(*helm_args)`` is the error of a render that must fail."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "medledger"
CI_VALUES = CHART / "ci"
RELEASE = "medledger"
NAMESPACE = "medledger"

Object = dict[str, Any]


class Manifest(list[Object]):
    """The objects a render produced."""

    def of_kind(self, kind: str) -> dict[str, Object]:
        """The objects of one kind, by name."""
        return {doc["metadata"]["name"]: doc for doc in self if doc["kind"] == kind}

    def get(self, kind: str, name: str) -> Object:
        found = self.of_kind(kind)
        assert name in found, f"no {kind} {name} (there are: {sorted(found)})"
        return found[name]

    def hooks(self) -> dict[str, Object]:
        """Objects that are Helm hooks (or tests), by kind/name."""
        return {
            f"{doc['kind']}/{doc['metadata']['name']}": doc
            for doc in self
            if "helm.sh/hook" in doc["metadata"].get("annotations", {})
        }

    @staticmethod
    def pod_spec(workload: Object) -> Object:
        """The pod spec of a Deployment, Job or Pod."""
        if workload["kind"] == "Pod":
            spec: Object = workload["spec"]
            return spec
        template: Object = workload["spec"]["template"]["spec"]
        return template

    @staticmethod
    def container(workload: Object, name: str | None = None) -> Object:
        """A workload's container: its only one, or the one named."""
        containers = Manifest.pod_spec(workload)["containers"]
        if name is None:
            (only,) = containers
            return dict(only)
        (found,) = [c for c in containers if c["name"] == name]
        return dict(found)

    @staticmethod
    def env(one: Object) -> dict[str, Any]:
        """A container's environment: name -> value (or valueFrom)."""
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in one.get("env", [])}


class Chart:
    def __init__(self, helm: str) -> None:
        self.helm = helm

    def _template(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def __call__(self, *args: str) -> Manifest:
        done = self._template(*args)
        assert done.returncode == 0, done.stderr
        return Manifest(doc for doc in yaml.safe_load_all(done.stdout) if doc)

    def refuses(self, *args: str) -> str:
        done = self._template(*args)
        assert done.returncode != 0, "the render should have failed"
        return done.stderr

    @staticmethod
    def values(name: str) -> tuple[str, str]:
        """``-f charts/medledger/ci/<name>-values.yaml``."""
        path = CI_VALUES / f"{name}-values.yaml"
        assert path.is_file(), path
        return ("-f", str(path))


@pytest.fixture(scope="session")
def helm() -> str:
    done = subprocess.run(
        [str(ROOT / "scripts" / "chart-check.sh"), "--helm-path"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot install helm: {done.stderr}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def chart(helm: str) -> Chart:
    return Chart(helm)
