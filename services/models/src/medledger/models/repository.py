"""``make models``: train, export and lay out every model as Triton model repositories.

One build makes the bytes of every file in memory (the same bytes every time), then writes
only the files whose bytes changed: a Triton polling the repository reloads nothing when
nothing changed. Each model directory holds ``config.pbtxt`` and ``<version>/`` with
``model.onnx``, the card (``model-card.json``, ``model-card.md``) and, in the local layout,
the Python-backend ``model.py``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from medledger.models import card as cards
from medledger.models.catalogue import MODELS, ModelSpec
from medledger.models.export import sha256_hex, to_onnx
from medledger.models.training import TrainedModel, train
from medledger.models.triton_config import (
    LAYOUTS,
    ONNX_FILE,
    PYTHON_MODEL_FILE,
    Layout,
    model_config,
    render,
)

CARD_JSON: Final = "model-card.json"
CARD_MARKDOWN: Final = "model-card.md"
_PYTHON_MODEL_SOURCE: Final = Path(__file__).with_name("triton_python_model.py")


@dataclass(frozen=True)
class BuiltModel:
    spec: ModelSpec
    trained: TrainedModel
    onnx: bytes
    card: dict[str, Any]
    card_markdown: str

    @property
    def sha256(self) -> str:
        return sha256_hex(self.onnx)


@dataclass
class WriteReport:
    """What a write changed under its repository (paths relative to it)."""

    root: Path
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def build_model(spec: ModelSpec) -> BuiltModel:
    trained = train(spec)
    onnx_bytes = to_onnx(trained)
    card = cards.model_card(trained, onnx_bytes, cards.base_score(trained, onnx_bytes))
    card_markdown = cards.markdown(card)
    return BuiltModel(
        spec, trained, onnx_bytes, cards.with_fhir(card, card_markdown), card_markdown
    )


def build_models(specs: Iterable[ModelSpec] = MODELS) -> list[BuiltModel]:
    return [build_model(spec) for spec in specs]


def repository_files(models: Iterable[BuiltModel], layout: Layout) -> dict[str, bytes]:
    """Every file of one layout's model repository, by path relative to its root."""
    files: dict[str, bytes] = {}
    for model in models:
        spec = model.spec
        version = f"{spec.name}/{spec.version}"
        files[f"{spec.name}/config.pbtxt"] = render(model_config(spec, layout)).encode()
        files[f"{version}/{ONNX_FILE}"] = model.onnx
        files[f"{version}/{CARD_JSON}"] = cards.card_json(model.card)
        files[f"{version}/{CARD_MARKDOWN}"] = model.card_markdown.encode()
        if layout == "local":
            files[f"{version}/{PYTHON_MODEL_FILE}"] = _PYTHON_MODEL_SOURCE.read_bytes()
    return files


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One writer at a time (``make up`` and a test session may build together); the lock
    file sits beside ``out``, outside any model repository."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_name(out.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_repository(root: Path, files: Mapping[str, bytes], models: Iterable[str]) -> WriteReport:
    """Make ``root`` hold ``files``: changed files are replaced atomically, unchanged ones left
    alone. Stale files are removed only inside the named models' directories (nothing else
    under ``root`` is ours to delete)."""
    report = WriteReport(root)
    for relative, data in sorted(files.items()):
        path = root / relative
        if path.is_file() and path.read_bytes() == data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)
        report.written.append(relative)
    for name in models:
        for path in sorted((root / name).rglob("*"), reverse=True):
            relative = path.relative_to(root).as_posix()
            if path.is_dir():
                if not any(path.iterdir()):
                    path.rmdir()
            elif relative not in files:
                path.unlink()
                report.removed.append(relative)
    return report


def build(
    out: Path, layouts: Iterable[Layout] = LAYOUTS, models: list[BuiltModel] | None = None
) -> tuple[list[BuiltModel], list[WriteReport]]:
    """Build every model (unless given) and write the layouts: one layout straight into
    ``out``, or, for several, each into ``out/<layout>``."""
    chosen = list(layouts)
    models = build_models() if models is None else models
    names = [model.spec.name for model in models]
    reports = []
    with _exclusive(out):
        for layout in chosen:
            root = out if len(chosen) == 1 else out / layout
            reports.append(write_repository(root, repository_files(models, layout), names))
    return models, reports
