"""Take jobs from a queue that lives in a server until it stays empty; run one or more on
each host. Each job is acked after its work: a worker killed mid-job leaves it to another.

    python examples/multi_host/worker.py amqp://app:secret@mq-host/%2F --idle 30
"""

from __future__ import annotations

import argparse
import os
import queue

from _stores import open_store

import durableq


def work(job: dict[str, int]) -> int:
    return job["x"] * job["x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="redis://, postgresql:// or amqp:// URL of the server")
    parser.add_argument("--queue", default="multi-host-demo", help="the queue's name")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="exit after this many seconds without a job")
    args = parser.parse_args()
    q = durableq.Queue(store=open_store(args.url, args.queue), ack="manual")
    done = 0
    while True:
        try:
            msg = q.get_message(timeout=args.idle)
        except queue.Empty:
            break
        with msg:  # acked when the block ends; an exception nacks it for a retry
            print(f"done {msg.body['id']} {work(msg.body)} pid={os.getpid()}", flush=True)
            done += 1
    print(f"worker {os.getpid()}: {done} jobs, idle for {args.idle:g} s: exiting", flush=True)
    q.close()


if __name__ == "__main__":
    main()
