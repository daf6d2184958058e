"""The dispatcher's waiting and reading helpers: a kept poll object and a frame reader
that must agree with ``multiprocessing`` connections byte for byte."""

from __future__ import annotations

import multiprocessing
import os
import struct
import threading

import pytest

from durableq._wakeup import FrameReader, Waiter, Wakeup, readable


def test_frames_of_every_size_come_out_whole_and_in_order() -> None:
    ours, theirs = multiprocessing.Pipe()
    sizes = [0, 1, 3, 4, 100, 70_000, 5, 300_000]
    frames = [bytes([i % 251]) * n for i, n in enumerate(sizes)]

    def send() -> None:  # a thread: the large frames fill the pipe while we read
        for f in frames:
            theirs.send_bytes(f)
        theirs.close()

    sender = threading.Thread(target=send)
    sender.start()
    reader, got = FrameReader(ours.fileno()), []
    with pytest.raises(EOFError):
        while True:
            got += reader.read()
    sender.join()
    assert got == frames


def test_a_sender_that_dies_mid_frame_leaves_the_frames_before_it_then_eof() -> None:
    r, w = os.pipe()
    # What send_bytes writes: a 4-byte big-endian length, then the bytes; the second
    # frame is cut short, as by a worker killed while writing it.
    os.write(w, struct.pack("!i", 5) + b"whole" + struct.pack("!i", 1000) + b"x" * 10)
    os.close(w)
    reader = FrameReader(r)
    assert reader.read() == [b"whole"]
    with pytest.raises(EOFError):
        reader.read()
    os.close(r)


def test_the_waiter_reports_what_is_ready_and_follows_a_changed_set() -> None:
    a, b = Wakeup(), Wakeup()
    waiter = Waiter()
    assert waiter.wait([a, b], 0) == []
    b.set()
    assert waiter.wait([a, b], 1) == [b]
    assert readable(b.fileno())
    b.clear()
    c = Wakeup()
    c.set()
    assert waiter.wait([a, c], 1) == [c]  # a new object set: a new poll object
    for w in (a, b, c):
        w.close()
