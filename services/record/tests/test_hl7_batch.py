"""HL7 v2 batch envelopes (FHS/BHS ... BTS/FTS) split into their messages, and refused whole
when they do not add up."""

from __future__ import annotations

from medledger.record.domain.hl7_batch import MAX_BATCH_MESSAGES, split_batch

MSH = "MSH|^~\\&|LAB|HOSP-A|MEDLEDGER|ML|20261129101500||ORU^R01|{}|P|2.5"


def message(control: str) -> str:
    return "\r".join([MSH.format(control), "PID|1||MRN1^^^HOSP-A^MR||Doe^J", "OBR|1"])


def blocking(text: str) -> list[str]:
    return [i.location for i in split_batch(text).issues if i.blocking]


def test_messages_without_an_envelope_are_a_batch() -> None:
    batch = split_batch("\n".join([message("1"), "", message("2")]))
    assert batch.issues == []
    assert batch.messages == [message("1"), message("2")]


def test_a_file_of_batches_is_split_at_each_msh() -> None:
    text = "\r\n".join(
        [
            "FHS|^~\\&|LAB|HOSP-A",
            "BHS|^~\\&|LAB|HOSP-A",
            message("1"),
            message("2"),
            "BTS|2",
            "BHS|^~\\&|LAB|HOSP-A",
            message("3"),
            "BTS|1",
            "FTS|2",
        ]
    )
    batch = split_batch(text)
    assert batch.issues == []
    assert batch.messages == [message("1"), message("2"), message("3")]


def test_counts_that_differ_refuse_the_batch() -> None:
    one_batch = ["BHS|^~\\&", message("1"), message("2")]
    assert blocking("\r".join([*one_batch, "BTS|3"])) == ["BTS-1"]
    assert blocking("\r".join([*one_batch, "BTS|2"])) == []
    assert blocking("\r".join([*one_batch, "BTS|two"])) == ["BTS-1"]
    second = ["BHS|^~\\&", message("3"), "BTS|7"]
    assert blocking("\r".join([*one_batch, "BTS|2", *second])) == ["BTS[2]-1"]
    filed = ["FHS|^~\\&", *one_batch, "BTS|2"]
    assert blocking("\r".join([*filed, "FTS|1"])) == []
    assert blocking("\r".join([*filed, "FTS|2"])) == ["FTS-1"]


def test_a_cut_or_joined_file_is_refused() -> None:
    assert blocking("\r".join(["BHS|^~\\&", message("1")])) == ["BHS"]  # no BTS
    assert blocking("\r".join(["FHS|^~\\&", message("1")])) == ["FHS"]  # no FTS
    assert blocking("\r".join([message("1"), "BTS|1"])) == ["BTS"]  # no BHS
    assert blocking("\r".join(["PID|1||X", message("1")])) == ["PID"]  # outside a message
    assert blocking("\r".join([message("1"), "FTS|0"])) == ["FTS"]  # no FHS
    after_end = ["FHS|^~\\&", message("1"), "FTS|0", message("2"), message("3")]
    assert blocking("\r".join(after_end)) == ["FTS"]  # said once
    assert blocking("\r".join([message("1"), "FHS|^~\\&"])) == ["FHS", "FHS"]  # late, no FTS
    assert blocking("FHS|^~\\&\rFTS|0") == ["MSH"]  # no message at all


def test_issues_never_repeat_the_file_and_size_is_bounded() -> None:
    text = "\r".join(["BHS|^~\\&", message("1"), "BTS|Doe-Smith"])
    assert all("Doe" not in i.diagnostics for i in split_batch(text).issues)
    many = "\r".join(message(str(n)) for n in range(MAX_BATCH_MESSAGES + 1))
    assert [i.code for i in split_batch(many).issues] == ["too-long"]
    assert split_batch("\r".join(message(str(n)) for n in range(MAX_BATCH_MESSAGES))).issues == []
