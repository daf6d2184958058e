"""Submit N tasks to the executors serving a server store and print each result as it
comes back, whichever host ran it; run it on any host.

    durableq worker --store redis://db-host:6379/0 --name multi-host-tasks \
        --import-path examples/multi_host          # on each worker host
    python examples/multi_host/submit.py redis://db-host:6379/0 --tasks 100
"""

from __future__ import annotations

import argparse
from concurrent.futures import as_completed

from tasks import square

import durableq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="redis://, postgresql:// or amqp:// URL of the server")
    parser.add_argument("--queue", default="multi-host-tasks", help="the queue's name")
    parser.add_argument("--tasks", type=int, default=100)
    args = parser.parse_args()
    store = durableq.open_store(args.url, name=args.queue)
    # max_workers=0: this host only submits; `durableq worker --store` hosts run the tasks.
    with durableq.Executor(0, store=store) as ex:
        futures = {ex.submit(square, i): i for i in range(args.tasks)}
        for fut in as_completed(futures, timeout=600):
            value, pid = fut.result()
            print(f"result {futures[fut]} {value} pid={pid}", flush=True)
    print(f"{args.tasks} results from {args.queue!r}", flush=True)


if __name__ == "__main__":
    main()
