"""A state machine drives random put / get / ack / nack sequences against a real queue and
checks the contract after every step: a message is never handed to two holders at once,
an acked message never comes back, a nacked one does (with its attempt count raised), and
at the end everything put is either acked or still there."""

from __future__ import annotations

import queue as pyqueue
import tempfile
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import durableq


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.q = durableq.Queue(path=self.dir.name + "/q", ack="manual")
        self.next = 0
        self.put_ids: set[int] = set()
        self.held: dict[int, durableq.Message[Any]] = {}
        self.acked: set[int] = set()
        self.attempts: dict[int, int] = {}

    @rule(n=st.integers(min_value=1, max_value=5))
    def put(self, n: int) -> None:
        items = list(range(self.next, self.next + n))
        self.next += n
        if n == 1:
            self.q.put(items[0])
        else:
            self.q.put_many(items)
        self.put_ids.update(items)

    @rule()
    def get(self) -> None:
        try:
            msg = self.q.get_message(block=False)
        except pyqueue.Empty:
            return
        assert msg.body not in self.held, "handed out twice at once"
        assert msg.body not in self.acked, "an acked message came back"
        assert msg.attempts == self.attempts.get(msg.body, 0) + 1
        self.attempts[msg.body] = msg.attempts
        self.held[msg.body] = msg

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def ack(self, data: Any) -> None:
        body = data.draw(st.sampled_from(sorted(self.held)))
        self.held.pop(body).ack()
        self.acked.add(body)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def nack(self, data: Any) -> None:
        body = data.draw(st.sampled_from(sorted(self.held)))
        self.held.pop(body).nack(requeue=True)

    @invariant()
    def counts_add_up(self) -> None:
        stats = self.q.stats()  # a barrier: every ack and nack above is applied
        assert stats["acked_total"] == len(self.acked)
        assert stats["ready"] + stats["in_flight"] == len(self.put_ids) - len(self.acked)

    def teardown(self) -> None:
        for msg in self.held.values():
            msg.nack()
        rest: set[int] = set()
        while True:
            try:
                msg = self.q.get_message(block=False)
            except pyqueue.Empty:
                break
            rest.add(msg.body)
            msg.ack()
        assert not rest & self.acked
        assert rest | self.acked == self.put_ids, "everything put is acked or still there"
        del self.q
        self.dir.cleanup()


TestQueueModel = QueueMachine.TestCase
TestQueueModel.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
