"""``python -m medledger.models build --out DIR [--layout all|local|production]``.

``make models`` runs ``build --out build/models``: both layouts, in ``build/models/local``
(what the local stack's Triton serves) and ``build/models/production`` (what the Helm chart
ships). With one ``--layout`` the repository is written straight into ``DIR``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from medledger.models.repository import build
from medledger.models.triton_config import LAYOUTS, Layout


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m medledger.models",
        description="Train medledger's models reproducibly and lay them out for Triton.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_command = commands.add_parser(
        "build", help="train, export to ONNX, write model cards and Triton model repositories"
    )
    build_command.add_argument(
        "--out", type=Path, required=True, help="where to write (created if missing)"
    )
    build_command.add_argument(
        "--layout",
        choices=("all", *LAYOUTS),
        default="all",
        help="all: DIR/local and DIR/production; one layout: the repository is DIR itself",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    layouts: tuple[Layout, ...] = LAYOUTS if args.layout == "all" else (args.layout,)
    models, reports = build(args.out, layouts)
    for model in models:
        metrics = ", ".join(f"{name} {value:.3f}" for name, value in model.trained.metrics.items())
        print(f"{model.spec.name} v{model.spec.version}  sha256 {model.sha256}")
        print(f"  held out: {metrics}")
    for report in reports:
        changes = len(report.written) + len(report.removed)
        state = f"{changes} file(s) changed" if changes else "up to date"
        print(f"{report.root}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
