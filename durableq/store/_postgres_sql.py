"""The PostgreSQL schema of ``PostgresStore`` and its migrations, applied on first use.

One table holds every queue's messages, with their state (``durableq._records.State``);
partial indexes serve each way a state is looked for (ready by band, due time and id;
leases by deadline; finished by time). Counters live in one row per queue. Commands have
their own table; a partial unique index keeps one ready upsert per (queue, target, type)
(latest intent wins). Migrations run in one transaction under an advisory lock, so
concurrent first uses apply each once.
"""

from __future__ import annotations

from typing import Final

#: Any value, the same in every process: serializes migrations.
MIGRATION_LOCK: Final = 0x6471_6D69

MIGRATIONS: Final = (
    # 1: messages, counters, results, failure and fault logs, request replay, commands.
    """
    CREATE TABLE durableq_queue (
        queue text PRIMARY KEY,
        last_id bigint NOT NULL DEFAULT 0,
        acked bigint NOT NULL DEFAULT 0,
        late bigint NOT NULL DEFAULT 0,
        command_last_id bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE durableq_message (
        queue text NOT NULL,
        id bigint NOT NULL,
        state smallint NOT NULL DEFAULT 0,
        priority smallint NOT NULL,
        due double precision NOT NULL,
        created double precision NOT NULL,
        deadline double precision,
        bump double precision,
        expires double precision,
        attempts integer NOT NULL DEFAULT 0,
        lease_deadline double precision,
        finished double precision,
        late boolean NOT NULL DEFAULT false,
        failed_error integer NOT NULL DEFAULT 0,
        failed_crash integer NOT NULL DEFAULT 0,
        failed_timeout integer NOT NULL DEFAULT 0,
        payload bytea NOT NULL,
        PRIMARY KEY (queue, id)
    );
    CREATE INDEX durableq_message_ready ON durableq_message (queue, priority, due, id)
        WHERE state = 0;
    CREATE INDEX durableq_message_leased ON durableq_message (queue, lease_deadline)
        WHERE state = 3;
    CREATE INDEX durableq_message_finished ON durableq_message (queue, state, finished, id)
        WHERE finished IS NOT NULL;
    CREATE INDEX durableq_message_bump ON durableq_message (queue, bump)
        WHERE bump IS NOT NULL;
    CREATE INDEX durableq_message_expires ON durableq_message (queue, expires)
        WHERE expires IS NOT NULL AND state = 0;
    CREATE TABLE durableq_result (
        queue text NOT NULL,
        id bigint NOT NULL,
        result bytea NOT NULL,
        PRIMARY KEY (queue, id)
    );
    CREATE TABLE durableq_failure (
        seq bigserial PRIMARY KEY,
        queue text NOT NULL,
        time double precision NOT NULL,
        id bigint NOT NULL,
        name text NOT NULL,
        attempt integer NOT NULL,
        cause text NOT NULL,
        type text NOT NULL,
        message text NOT NULL,
        traceback text NOT NULL,
        pid integer NOT NULL
    );
    CREATE INDEX durableq_failure_queue ON durableq_failure (queue, seq);
    CREATE TABLE durableq_fault (
        seq bigserial PRIMARY KEY,
        queue text NOT NULL,
        kind text NOT NULL,
        time double precision NOT NULL,
        detail text NOT NULL
    );
    CREATE INDEX durableq_fault_queue ON durableq_fault (queue, seq);
    CREATE TABLE durableq_request (
        queue text NOT NULL,
        request text NOT NULL,
        ids bigint[] NOT NULL,
        attempts integer[] NOT NULL,
        made double precision NOT NULL,
        PRIMARY KEY (queue, request)
    );
    CREATE INDEX durableq_request_made ON durableq_request (queue, made);
    CREATE TABLE durableq_command (
        queue text NOT NULL,
        id bigint NOT NULL,
        target text NOT NULL,
        type text,
        payload bytea NOT NULL,
        created double precision NOT NULL,
        expires double precision,
        hold boolean NOT NULL,
        state smallint NOT NULL,
        attempt integer NOT NULL DEFAULT 0,
        keyed boolean NOT NULL,
        holder integer,
        holder_host text,
        deadline double precision NOT NULL DEFAULT 0,
        PRIMARY KEY (queue, id)
    );
    CREATE INDEX durableq_command_target ON durableq_command (queue, target, id);
    CREATE INDEX durableq_command_expires ON durableq_command (queue, expires)
        WHERE expires IS NOT NULL;
    CREATE UNIQUE INDEX durableq_command_latest ON durableq_command (queue, target, type)
        WHERE keyed AND state = 0;
    """,
)

#: Ready messages, best first, locked for this transaction; others skip them.
LEASE: Final = """
WITH picked AS (
    SELECT id FROM durableq_message
    WHERE queue = %(q)s AND state = 0 AND priority <= %(maxp)s AND due <= %(now)s
      AND (expires IS NULL OR expires > %(now)s)
    ORDER BY priority, due, id LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
)
UPDATE durableq_message AS m
SET state = 3, attempts = m.attempts + 1, lease_deadline = %(until)s,
    late = m.late OR (m.deadline IS NOT NULL AND m.deadline < %(now)s)
FROM picked WHERE m.queue = %(q)s AND m.id = picked.id
RETURNING m.id, m.attempts, m.payload, m.priority, m.due,
          (m.deadline IS NOT NULL AND m.deadline < %(now)s)
"""

#: Leased messages named by (id, attempt) tokens, locked.
LEASED: Final = """
SELECT m.id FROM durableq_message AS m
JOIN unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS t(id, attempt)
  ON m.id = t.id AND m.attempts = t.attempt
WHERE m.queue = %(q)s AND m.state = 3
FOR UPDATE OF m
"""

COUNTS: Final = """
SELECT state, priority, due <= %(now)s, count(*), min(created) FROM durableq_message
WHERE queue = %(q)s AND (state <> 0 OR expires IS NULL OR expires > %(now)s)
GROUP BY 1, 2, 3
"""

NEXT_DUE: Final = """
SELECT min(t) FROM (
    SELECT min(due) AS t FROM durableq_message WHERE queue = %(q)s AND state = 0
       AND priority = 0 AND due > %(now)s
    UNION ALL (SELECT min(due) FROM durableq_message WHERE queue = %(q)s AND state = 0
       AND priority = 1 AND due > %(now)s)
    UNION ALL (SELECT min(due) FROM durableq_message WHERE queue = %(q)s AND state = 0
       AND priority = 2 AND due > %(now)s)
    UNION ALL (SELECT min(bump) FROM durableq_message WHERE queue = %(q)s AND bump IS NOT NULL)
    UNION ALL (SELECT min(expires) FROM durableq_message WHERE queue = %(q)s AND state = 0
       AND expires IS NOT NULL AND expires > %(now)s)
    UNION ALL (SELECT min(lease_deadline) FROM durableq_message WHERE queue = %(q)s
       AND state = 3 AND lease_deadline > %(now)s)
) AS events
"""
