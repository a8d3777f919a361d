"""The models as ``make models`` builds them, served by a real tritonserver, for tests of what
uses them (the inference service's registry, the ``medledger models`` commands).

:func:`model_repository` builds the local layout into a folder of the test's (never the
checkout's ``build/models``, which a running local stack may be serving) and adds a version 2
of ``diabetes-progression`` (the same ONNX file, its card saying version 2), so that "the latest
version" has two to choose from. :func:`model_triton` starts a Triton serving it;
:func:`serving_models` does both for a module's fixture.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import pytest

from medledger.devstack.process import free_ports
from medledger.devstack.triton import TritonServer, TritonTls

SECOND_VERSION_OF: Final = "diabetes-progression"
CARD: Final = "model-card.json"


def model_repository(out: Path) -> Path:
    """Builds the models (fixed seeds) into ``out`` and returns the local model repository
    (``out/local``), with version 2 of :data:`SECOND_VERSION_OF` added."""
    # Imported here: building needs scikit-learn and skl2onnx, which the plugin must not load.
    from medledger.models.repository import build, build_models  # noqa: PLC0415

    build(out, models=build_models())
    local = out / "local"
    model = local / SECOND_VERSION_OF
    shutil.copytree(model / "1", model / "2")
    card = json.loads((model / "2" / CARD).read_text(encoding="utf-8"))
    card["model"]["version"] = 2
    (model / "2" / CARD).write_text(json.dumps(card, indent=2), encoding="utf-8")
    config = (model / "config.pbtxt").read_text(encoding="utf-8")
    (model / "config.pbtxt").write_text(
        config.replace("    versions: 1\n", "    versions: 1\n    versions: 2\n", 1),
        encoding="utf-8",
    )
    return local


def model_triton(repository: Path, state: Path, tls: TritonTls | None = None) -> TritonServer:
    """A tritonserver serving ``repository`` on free loopback ports (not started); its gRPC
    over TLS with ``tls``."""
    grpc_port, http_port, metrics_port = free_ports(3)
    return TritonServer(
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        state_dir=state,
        model_repository=repository,
        log_file=state / "triton.log",
        die_with_parent=True,
        # The first start on a machine builds Triton's virtualenv.
        start_timeout=300,
        tls=tls,
    )


@contextmanager
def serving_models(
    tmp_path_factory: pytest.TempPathFactory, label: str
) -> Iterator[tuple[Path, TritonServer]]:
    """The models built into a fresh folder and a tritonserver serving them, started; the
    repository and the server, stopped at the end."""
    repository = model_repository(tmp_path_factory.mktemp(f"{label}-models"))
    server = model_triton(repository, tmp_path_factory.mktemp(f"{label}-triton"))
    server.start()
    try:
        yield repository, server
    finally:
        server.stop()
