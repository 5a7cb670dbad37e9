"""The SSE splitter and event reader, including random byte splits (hypothesis)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatgpt_apiserver.relay.sse import EventSplitter, EventTooLarge, MalformedEvent, event_data, read_event

STREAM = (b'data: {"a": 1}\n\n'
          b": keep-alive comment\n\n"
          b'data: {"b": "two\\nlines"}\n\n'
          b"event: message\ndata: {\"c\":\ndata: 3}\n\n"
          b"data: [DONE]\n\n")


def split_all(data: bytes, cuts: list[int]) -> list[bytes]:
    splitter = EventSplitter()
    events: list[bytes] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        events.extend(splitter.feed(data[last:cut]))
        last = cut
    return events


def test_whole_stream_splits_into_events() -> None:
    events = split_all(STREAM, [])
    assert len(events) == 5
    assert events[0] == b'data: {"a": 1}\n\n'
    assert event_data(events[1]) is None
    assert event_data(events[3]) == b'{"c":\n3}'
    assert event_data(events[4]) == b"[DONE]"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_byte_split_yields_the_same_events(cuts: list[int]) -> None:
    assert split_all(STREAM, cuts) == split_all(STREAM, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_crlf_streams_split_the_same_however_cut(cuts: list[int]) -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    assert split_all(crlf, cuts) == split_all(STREAM, [])


def test_blank_lines_between_events_are_skipped() -> None:
    assert split_all(b"\n\ndata: 1\n\n\n\ndata: 2\n\n", []) == [b"data: 1\n\n", b"data: 2\n\n"]


def test_incomplete_event_stays_pending() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: {") == []
    assert splitter.pending == b"data: {"


def test_data_without_space_is_read() -> None:
    assert event_data(b"data:{\"x\":1}\n\n") == b'{"x":1}'


def test_read_event_rejects_non_objects() -> None:
    assert read_event(b'{"x": 1}') == {"x": 1}
    for bad in (b"{", b"[1]", b"nope"):
        with pytest.raises(MalformedEvent):
            read_event(bad)


def test_an_event_over_the_limit_fails_whether_it_arrives_whole_or_in_pieces() -> None:
    with pytest.raises(EventTooLarge, match=r"over max_event_size \(100 bytes\)"):
        EventSplitter(100).feed(b"data: " + b"x" * 100 + b"\n\n")
    splitter = EventSplitter(100)
    assert splitter.feed(b"data: 1\n\ndata: ") == [b"data: 1\n\n"]
    with pytest.raises(EventTooLarge):
        for _ in range(20):
            splitter.feed(b"x" * 10)
    assert EventSplitter(100).feed(b"data: " + b"x" * 90 + b"\n\n")  # at the limit: fine


def test_an_event_that_never_ends_costs_linear_time() -> None:
    # Before, every read re-joined and re-scanned the whole pending event: 16k reads of 512 bytes took minutes.
    splitter = EventSplitter(16 * 1024 * 1024)
    piece = b"data: " + b"x" * 506
    started = time.monotonic()
    for _ in range(16 * 1024):
        assert splitter.feed(piece) == []
    assert splitter.feed(b"\n\n") == [piece * 16 * 1024 + b"\n\n"]
    assert time.monotonic() - started < 5


def test_crlf_split_between_two_reads_still_ends_an_event() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: 1\r\n\r") == []
    assert splitter.feed(b"\ndata: 2\r") == [b"data: 1\n\n"]
    assert splitter.feed(b"\n\r\n") == [b"data: 2\n\n"]
