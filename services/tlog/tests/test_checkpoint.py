"""C2SP tlog-checkpoint bodies: exact format, strict parsing."""

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medledger.tlog import Checkpoint, CheckpointError

# The example checkpoint of C2SP tlog-checkpoint.
SPEC_BODY = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
ROOT = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")


def test_the_spec_example_parses_and_formats_back() -> None:
    checkpoint = Checkpoint.parse(SPEC_BODY)
    assert checkpoint == Checkpoint("example.com/behind-the-sofa", 20852163, ROOT)
    assert checkpoint.body() == SPEC_BODY
    assert Checkpoint.parse(SPEC_BODY.decode()) == checkpoint


def test_extension_lines_follow_the_root() -> None:
    checkpoint = Checkpoint("log", 0, ROOT, ("ext one", "two"))
    assert checkpoint.body().endswith(b"\next one\ntwo\n")
    assert Checkpoint.parse(checkpoint.body()) == checkpoint


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"log\n5\n" + base64.b64encode(ROOT), "does not end with a newline"),
        (b"log\n5\n", "needs at least 3"),
        (b"\n5\n" + base64.b64encode(ROOT) + b"\n", "origin is empty"),
        (b"log\n05\n" + base64.b64encode(ROOT) + b"\n", "leading zeros"),
        (b"log\n+5\n" + base64.b64encode(ROOT) + b"\n", "decimal"),
        (b"log\n 5\n" + base64.b64encode(ROOT) + b"\n", "decimal"),
        (b"log\n\xd9\xa5\n" + base64.b64encode(ROOT) + b"\n", "decimal"),  # Arabic-Indic 5
        (b"log\n" + b"9" * 5000 + b"\n" + base64.b64encode(ROOT) + b"\n", "decimal"),
        (b"log\n18446744073709551616\n" + base64.b64encode(ROOT) + b"\n", "64-bit"),
        (b"log\n5\n" + base64.b64encode(ROOT[:31]) + b"\n", "31 bytes"),
        (b"log\n5\nnot base64!\n", "not base64"),
        (b"log\n5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2J=\n", "not canonical"),
        (b"log\n5\n" + base64.b64encode(ROOT) + b"\n\n", "extension line 0 is empty"),
        (b"lo\tg\n5\n" + base64.b64encode(ROOT) + b"\n", "control character"),
        (b"\xfflog\n5\n" + base64.b64encode(ROOT) + b"\n", "UTF-8"),
    ],
)
def test_malformed_checkpoints_are_rejected(body: bytes, reason: str) -> None:
    with pytest.raises(CheckpointError, match=reason):
        Checkpoint.parse(body)


def test_constructor_checks_fields() -> None:
    with pytest.raises(CheckpointError, match="root hash is 3 bytes"):
        Checkpoint("log", 1, b"abc")
    with pytest.raises(CheckpointError, match="64-bit"):
        Checkpoint("log", -1, ROOT)
    with pytest.raises(CheckpointError, match="origin contains a control character"):
        Checkpoint("log\n5", 1, ROOT)


line = st.text(
    st.characters(min_codepoint=0x20, blacklist_characters="\x7f", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=40,
)


@given(
    line,
    st.integers(0, (1 << 64) - 1),
    st.binary(min_size=32, max_size=32),
    st.lists(line, max_size=3),
)
def test_round_trip(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    checkpoint = Checkpoint(origin, size, root, tuple(extensions))
    assert Checkpoint.parse(checkpoint.body()) == checkpoint


@given(st.binary(max_size=120))
def test_parse_only_raises_checkpoint_error(data: bytes) -> None:
    try:
        checkpoint = Checkpoint.parse(data)
    except CheckpointError:
        return
    assert checkpoint.body() == data
