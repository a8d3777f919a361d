"""``medledger consent`` input handling that needs no server: dates, purposes, grantees and
the usage errors (exit 2) raised before any call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import typer
from typer.testing import CliRunner

from medledger.api.common.v1 import purpose_pb2
from medledger.cli.consent import grantee_of, parse_when, purpose_value
from medledger.cli.main import app

runner = CliRunner(env={"COLUMNS": "200", "MEDLEDGER_TOKEN": None})


def test_dates_cover_whole_days_in_utc() -> None:
    assert parse_when("2026-12-31", end_of_day=True) == datetime(
        2026, 12, 31, 23, 59, 59, tzinfo=UTC
    )
    assert parse_when("2026-12-31", end_of_day=False) == datetime(2026, 12, 31, tzinfo=UTC)
    assert parse_when("2026-12-31T18:00:00Z", end_of_day=True) == datetime(
        2026, 12, 31, 18, tzinfo=UTC
    )
    assert parse_when("2026-12-31T18:00:00", end_of_day=True).tzinfo == UTC
    assert parse_when("2026-12-31T18:00:00+02:00", end_of_day=True).utcoffset() == timedelta(
        hours=2
    )
    assert parse_when("2026-12-31T18:00:00+02:00", end_of_day=True) == datetime(
        2026, 12, 31, 18, tzinfo=timezone(timedelta(hours=2))
    )
    with pytest.raises(typer.BadParameter, match="not a date"):
        parse_when("next tuesday", end_of_day=True)


def test_purposes_are_hl7_codes_in_any_case() -> None:
    assert purpose_value("TREAT") == purpose_pb2.PURPOSE_OF_USE_TREAT
    assert purpose_value("hresch") == purpose_pb2.PURPOSE_OF_USE_HRESCH
    assert purpose_value("PURPOSE_OF_USE_HPAYMT") == purpose_pb2.PURPOSE_OF_USE_HPAYMT
    with pytest.raises(typer.BadParameter, match="TREAT, ETREAT, HPAYMT, HRESCH"):
        purpose_value("UNSPECIFIED")


def test_exactly_one_grantee() -> None:
    grantee = grantee_of("hospital-b", None, None, required=True)
    assert grantee is not None
    assert grantee.organization == "hospital-b"
    assert grantee_of(None, None, None, required=False) is None
    with pytest.raises(typer.BadParameter, match="name one grantee"):
        grantee_of("hospital-b", "app", None, required=True)
    with pytest.raises(typer.BadParameter, match="a grantee is required"):
        grantee_of(None, None, None, required=True)


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["grant", "--patient", "p-1", "--purpose", "TREAT", "--grantee-org", "b", "--token", "t",
          "--grantee-client", "c"], "name one grantee"),
        (["grant", "--patient", "p-1", "--purpose", "TREAT", "--token", "t"],
         "a grantee is required"),
        (["grant", "--patient", "p-1", "--purpose", "CURIOSITY", "--grantee-org", "b",
          "--token", "t"], "'CURIOSITY' is not one of"),
        (["grant", "--patient", "p-1", "--purpose", "TREAT", "--grantee-org", "b", "--token", "t",
          "--until", "soon"], "'soon' is not a date"),
        (["grant", "--patient", "p-1", "--purpose", "TREAT", "--grantee-org", "b"],
         "an access token is required"),
        (["list", "--status", "pending", "--token", "t"], "'pending' is not one of active"),
        (["check", "--resource-type", "Observation", "--token", "abc"], "not a JWT"),
        (["check", "--resource-type", "Observation", "--action", "peek", "--token", "a.e30.c"],
         "'peek' is not one of read"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_before_any_call(args: list[str], why: str) -> None:
    # No identity listens on this address: a usage error must be found before any call.
    result = runner.invoke(app, ["consent", *args, "--identity", "127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert why in " ".join(result.output.split())
