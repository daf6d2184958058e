"""Put N jobs on a queue that lives in a server; run it on any host.

    python examples/multi_host/producer.py amqp://app:secret@mq-host/%2F --jobs 1000
"""

from __future__ import annotations

import argparse

from _stores import open_store

import durableq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="redis://, postgresql:// or amqp:// URL of the server")
    parser.add_argument("--queue", default="multi-host-demo", help="the queue's name")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--first", type=int, default=0, help="id of the first job")
    args = parser.parse_args()
    q = durableq.Queue(store=open_store(args.url, args.queue))
    q.put_many({"id": i, "x": i} for i in range(args.first, args.first + args.jobs))
    print(f"put {args.jobs} jobs on {args.queue!r}", flush=True)
    q.close()


if __name__ == "__main__":
    main()
