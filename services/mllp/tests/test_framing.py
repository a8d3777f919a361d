"""MLLP framing: frames found whatever pieces TCP delivers them in, noise dropped, broken
frames reported, oversize frames fatal."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.mllp.domain.framing import (
    BrokenFrame,
    Frame,
    MllpDecoder,
    Oversize,
    encode_frame,
)

ADT = b"MSH|^~\\&|ADT|HOSP_A|MEDLEDGER|ML|20260101120000||ADT^A01|MSG1|P|2.5\rPID|1||123"
ORU = b"MSH|^~\\&|LAB|HOSP_A|MEDLEDGER|ML|20260101120000||ORU^R01|MSG2|P|2.5\rOBX|1|NM"


def frames(events: list[object]) -> list[bytes]:
    return [e.payload for e in events if isinstance(e, Frame)]


def test_one_frame_in_one_read() -> None:
    decoder = MllpDecoder(1024)
    assert decoder.feed(encode_frame(ADT)) == [Frame(ADT)]
    assert not decoder.in_frame
    assert decoder.discarded == 0


def test_several_frames_in_one_read_come_out_in_order() -> None:
    decoder = MllpDecoder(1024)
    assert frames(decoder.feed(encode_frame(ADT) + encode_frame(ORU) + encode_frame(ADT))) == [
        ADT,
        ORU,
        ADT,
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_any_split_of_the_stream_gives_the_same_frames(cuts: list[int]) -> None:
    stream = b"noise\r\n" + encode_frame(ADT) + b"\n" + encode_frame(ORU)
    decoder = MllpDecoder(1024)
    found: list[bytes] = []
    position = 0
    for size in cuts:
        found += frames(decoder.feed(stream[position : position + size]))
        position += size
    found += frames(decoder.feed(stream[position:]))
    assert found == [ADT, ORU]
    # The noise before the first frame and the LF between the frames; not the CRs after
    # the end blocks.
    assert decoder.discarded == len(b"noise\r\n") + 1


def test_a_frame_split_byte_by_byte() -> None:
    decoder = MllpDecoder(1024)
    wire = encode_frame(ORU)
    events: list[object] = []
    for byte in wire[:-2]:
        events += decoder.feed(bytes([byte]))
    assert events == []
    assert decoder.feed(wire[-2:-1]) == [Frame(ORU)]  # the end block ends it
    assert decoder.feed(wire[-1:]) == []  # its CR is no noise
    assert decoder.discarded == 0


def test_garbage_before_the_start_block_is_dropped() -> None:
    decoder = MllpDecoder(1024)
    assert decoder.feed(b"GET / HTTP/1.1\r\n\r\n") == []
    assert decoder.discarded == 18
    assert decoder.feed(b"\x00\xff" + encode_frame(ADT)) == [Frame(ADT)]
    assert decoder.discarded == 20


def test_a_frame_cut_short_by_a_new_start_block_is_broken_and_the_next_is_read() -> None:
    decoder = MllpDecoder(1024)
    stub = b"\x0bMSH|^~\\&|ADT|HOSP_A"
    assert decoder.feed(stub + encode_frame(ORU)) == [BrokenFrame(len(stub) - 1), Frame(ORU)]


def test_a_frame_ended_without_the_final_cr_still_counts() -> None:
    decoder = MllpDecoder(1024)
    assert decoder.feed(b"\x0b" + ADT + b"\x1c" + b"\x0b" + ORU + b"\x1c\r") == [
        Frame(ADT),
        Frame(ORU),
    ]


def test_a_frame_over_the_limit_is_fatal_before_its_end_arrives() -> None:
    decoder = MllpDecoder(100)
    assert decoder.feed(b"\x0b" + b"A" * 100) == []
    assert decoder.feed(b"A") == [Oversize(100)]
    # Nothing more is read from that connection.
    assert decoder.feed(encode_frame(ADT[:50])) == []


def test_a_whole_frame_over_the_limit_is_oversize_and_one_at_the_limit_is_not() -> None:
    assert MllpDecoder(len(ADT)).feed(encode_frame(ADT)) == [Frame(ADT)]
    assert MllpDecoder(len(ADT) - 1).feed(encode_frame(ADT)) == [Oversize(len(ADT) - 1)]


def test_an_open_frame_is_known() -> None:
    decoder = MllpDecoder(1024)
    decoder.feed(b"\x0bMSH|")
    assert decoder.in_frame
