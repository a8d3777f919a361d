"""``medledger ledger vkey`` prints the keys a verifier needs, one per line, for the shell."""

from __future__ import annotations

from typing import Any

from medledger.api.ledger.v1 import ledger_pb2


async def test_the_ledger_key_is_the_one_the_ledger_publishes(
    serve_ledger: Any, run_cli: Any
) -> None:
    async with serve_ledger() as ledger:
        published = await ledger.stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())
        code, output = await run_cli("ledger", "vkey", "--ledger", ledger.address)
        assert code == 0, output
        assert output == published.vkey
        code, output = await run_cli("ledger", "vkey", "--ledger", ledger.address, "--previous")
        assert code == 0, output
        assert output.split() == [published.vkey, *published.previous_vkeys]


async def test_without_an_address_it_is_a_usage_error(run_cli: Any) -> None:
    code, output = await run_cli("ledger", "vkey")
    assert code == 2
    assert "give --ledger, --witness or both" in output


async def test_an_unreachable_ledger_exits_1_and_says_so(run_cli: Any) -> None:
    code, output = await run_cli("ledger", "vkey", "--ledger", "127.0.0.1:9", "--timeout", "2")
    assert code == 1
    assert "UNAVAILABLE" in output
