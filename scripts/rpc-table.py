"""Print the table of every RPC, the scope its token needs and its page size, as
Markdown, from the services' own ``*_ACCESS`` declarations (the policies the auth
interceptor enforces), so docs/partners.md cannot drift from them.

    .venv/bin/python scripts/rpc-table.py           # print the table
    .venv/bin/python scripts/rpc-table.py --write   # replace it in docs/partners.md

tests/test_partner_docs.py fails when docs/partners.md holds another table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

from google.protobuf.descriptor import MethodDescriptor

from medledger.common.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from medledger.common.policy import (
    AnyOf,
    MethodPolicy,
    Public,
    ResourceAccess,
    Scopes,
    ServiceAccess,
)
from medledger.identity.server import IDENTITY_ACCESS
from medledger.inference.server import INFERENCE_ACCESS
from medledger.ledger.server import LEDGER_ACCESS
from medledger.record.server import RECORD_ACCESS
from medledger.witness.server import WITNESS_ACCESS

DECLARATIONS: Final = (
    IDENTITY_ACCESS,
    LEDGER_ACCESS,
    RECORD_ACCESS,
    INFERENCE_ACCESS,
    WITNESS_ACCESS,
)
DOC: Final = Path(__file__).resolve().parent.parent / "docs" / "partners.md"
START: Final = "<!-- rpc-table:start (scripts/rpc-table.py --write) -->"
END: Final = "<!-- rpc-table:end -->"


def _policy_text(policy: MethodPolicy | None) -> str:
    """How the doc writes what a token must hold (its notation is explained there)."""
    if policy is None:
        return "nobody (not declared: denied)"
    if isinstance(policy, Public):
        return "no token"
    if isinstance(policy, Scopes):
        return " or ".join(f"`{scope}`" for scope in sorted(policy.any_of))
    if isinstance(policy, ResourceAccess):
        resource = "T" if policy.resource == "*" else policy.resource
        if not policy.permissions:
            return f"any `ctx/{resource}.p`"
        return f"`ctx/{resource}.{policy.permissions}`"
    if isinstance(policy, AnyOf):
        return " or ".join(_policy_text(rule) for rule in policy.rules)
    raise TypeError(f"unknown policy {policy!r}")


def _page_size(method: MethodDescriptor) -> str:
    """The one rule of medledger.common.paging, for the methods whose request is paged."""
    if "page_size" not in method.input_type.fields_by_name:
        return ""
    return f"{DEFAULT_PAGE_SIZE} / {MAX_PAGE_SIZE}"


def _streaming(method: MethodDescriptor) -> str:
    client, server = method.client_streaming, method.server_streaming
    if client and server:
        return " (bidi stream)"
    if client or server:
        return " (client stream)" if client else " (server stream)"
    return ""


def rows(access: ServiceAccess) -> list[str]:
    """One row per method of the service, in the proto's order, declared or not."""
    service = access.service
    return [
        f"| `{service.full_name}/{method.name}`{_streaming(method)} "
        f"| {_policy_text(access.methods.get(method))} | {_page_size(method)} |"
        for method in service.methods
    ]


def rpc_table() -> str:
    lines = ["| RPC | the token must hold | page size (default / max) |", "|---|---|---|"]
    for access in DECLARATIONS:
        lines += rows(access)
    return "\n".join(lines) + "\n"


def documented_table(text: str) -> str:
    """The table between the markers of docs/partners.md; ValueError without them."""
    head, start, rest = text.partition(START + "\n")
    table, end, _ = rest.partition(END)
    if not (head and start and end):
        raise ValueError(f"{DOC.name} lacks the markers {START} ... {END}")
    return table


def write_table(path: Path = DOC) -> None:
    text = path.read_text(encoding="utf-8")
    old = documented_table(text)
    path.write_text(text.replace(START + "\n" + old + END, START + "\n" + rpc_table() + END))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_table()
    elif sys.argv[1:]:
        sys.exit("usage: rpc-table.py [--write]")
    else:
        sys.stdout.write(rpc_table())
