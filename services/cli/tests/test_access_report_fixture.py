"""The fixed access report (medledger.cli.access_report_fixture) the README's picture is drawn
from: it verifies offline under the fixtures' key, lists exactly the fixture patient's entries
(the record's opened, identity's found by their nonce, the break-glass flagged), and makes the
same JSON and PDF on every run."""

from __future__ import annotations

from medledger.cli.access_report_fixture import fixture_access_report
from medledger.cli.access_report_pdf import render_pdf
from medledger.cli.report_fixtures import fixture_policy
from medledger.verify.access_report import (
    FOUND_BY_NONCE,
    parse_access_report,
    scan_report,
    verify_access_report,
)


def test_the_fixture_report_verifies_and_is_the_same_every_time() -> None:
    report = fixture_access_report()
    verified = verify_access_report(parse_access_report(report.to_json()), fixture_policy())
    assert verified.size == len(report.leaves) == 17
    assert (verified.untestable, verified.legacy) == (0, 0)
    assert [e.leaf_index for e in report.entries] == sorted(scan_report(report))
    assert {e.found_by for e in report.entries} == {FOUND_BY_NONCE}
    assert [e.event for e in report.entries if e.break_glass] == ["BREAK_GLASS"]
    assert any(e.actor == "patient" for e in report.entries)
    assert {e.organization for e in report.entries} == {"hospital-a", "hospital-b"}
    opened = [e for e in report.entries if e.salt]
    unopened = [e for e in report.entries if not e.salt]
    assert {e.event for e in unopened} == {"BREAK_GLASS", "CONSENT_GRANTED", "USER_LOGIN"}
    assert all(e.resource_id or e.resource_type == "AuditEvent" for e in opened)
    again = fixture_access_report()
    assert again.to_json() == report.to_json()
    hint = "medledger verify access-report access.json --vkey LEDGER_VKEY"
    assert render_pdf(again, untestable=0, verify_hint=hint) == render_pdf(
        report, untestable=0, verify_hint=hint
    )
