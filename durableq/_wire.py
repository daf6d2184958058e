"""What consumers, producers and the owner say to each other over their connection.

Each thread of each process that uses a queue has its own connection to the owner (a Unix
socket carrying ``multiprocessing.connection`` frames). A consumer has at most one ``WANT``
outstanding; the owner answers it with one frame holding up to ``n`` messages, so a fast
consumer reads batches from its own buffer instead of paying a round trip per ``get``.
No lock is shared between processes, so a process killed mid-call cannot wedge anyone else,
and the owner tells a crash (the socket closes without ``BYE``) from a clean exit.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import sys
from multiprocessing.connection import Connection
from typing import Any, Final

# client -> owner. The first frame is raw bytes (hello), every later one a pickled tuple.
HELLO_SIZE: Final = 40  # 32-byte secret + 8-byte pid
WANT: Final = 2      # (WANT, n, acks, nowait)  up to n messages: reply MSGS, or EMPTY if nowait
CANCEL: Final = 3    # (CANCEL,)                                  reply CANCELLED (after any MSGS)
ACK: Final = 4       # (ACK, tokens)                              no reply
NACK: Final = 5      # (NACK, tokens, requeue, delay, error)      a failed attempt: no reply
PUT: Final = 6       # (PUT, n, due, event)  n messages due at `due` committed: no reply
RPUT: Final = 7      # (RPUT, payloads, timing)  commit for me (group commit): RESULT ids
CALL: Final = 8      # (CALL, name, args)  stats / qsize / reads and repairs: reply RESULT
JOIN: Final = 9      # (JOIN,)         reply JOINED once nothing is unacked
BYE: Final = 10      # (BYE, acks, unread)  clean exit: ack acks, requeue unread
HAND: Final = 11     # (HAND, payloads, timing)  store for me, no reply (a store not durable)

# owner -> client
MSGS: Final = 20      # (MSGS, [(token, payload), ...])  one frame answers one WANT
EMPTY: Final = 21     # (EMPTY,)
CANCELLED: Final = 22 # (CANCELLED,)
RESULT: Final = 23    # (RESULT, value) or (RESULT, None, exception)
JOINED: Final = 24    # (JOINED,)


def send(conn: Connection, frame: tuple[Any, ...]) -> None:
    """Send one frame. Plain pickle: frames hold only tuples, lists, ints and bytes, and
    ``Connection.send``'s ForkingPickler costs a few microseconds more on every put."""
    conn.send_bytes(pickle.dumps(frame, pickle.HIGHEST_PROTOCOL))


def recv(conn: Connection) -> Any:
    return loads(conn.recv_bytes())


def loads(frame: bytes) -> Any:
    """A frame's tuple, from the bytes ``send`` wrote (read by a ``FrameReader``)."""
    return pickle.loads(frame)


def hello(secret: bytes) -> bytes:
    return secret + struct.pack("!q", os.getpid())


def parse_hello(data: bytes) -> tuple[bytes, int]:
    if len(data) != HELLO_SIZE:
        return b"", 0
    return data[:32], struct.unpack("!q", data[32:])[0]


def new_address() -> str | bytes:
    """A fresh socket address: Linux's abstract namespace (no file to clean up), else a path."""
    tag = os.urandom(8).hex()
    if sys.platform.startswith("linux"):
        return f"\0durableq-{os.getpid()}-{tag}"
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"dq-{tag}.sock")


def listen(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen(128)
    return sock


def connect(address: str | bytes) -> Connection:
    """Connect to the owner; raises OSError when nobody listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return Connection(sock.detach())


def accept(listener: socket.socket) -> Connection:
    sock, _ = listener.accept()
    return Connection(sock.detach())
