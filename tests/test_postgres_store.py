"""PostgresStore against a real PostgreSQL server: both store contracts, then queues across
processes and a server killed mid-run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from durableq import CommandStore, PostgresStore, Store

from . import server_store_cases
from .server_store_cases import ServerCases
from .servers import PostgresServer
from .test_command_store_contract import CommandStoreContract
from .test_store_contract import StoreContract


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url


def fresh(url: str, **options: Any) -> PostgresStore:
    return server_store_cases.fresh(PostgresStore, url, **options)  # type: ignore[no-any-return]


class TestPostgresStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _url(self, postgres_url: str) -> None:
        self.url = postgres_url

    def make_store(self, tmp_path: Path) -> Store:
        return fresh(self.url)


class TestPostgresCommandStore(CommandStoreContract):
    @pytest.fixture(autouse=True)
    def _url(self, postgres_url: str) -> None:
        self.url = postgres_url

    def make_store(self, tmp_path: Path) -> CommandStore:
        return fresh(self.url)


def test_missing_psycopg_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from durableq import ConfigurationError

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigurationError, match=r'pip install "durableq\[postgres\]"'):
        PostgresStore("postgresql://127.0.0.1:1/x")




class TestPostgresQueues(ServerCases):
    """Queues, peers, a server down or killed mid-run: the cases every server store passes."""

    store_class = PostgresStore

    @pytest.fixture
    def server(self, postgres_server: PostgresServer) -> PostgresServer:
        return postgres_server


def test_replay_records_of_puts_and_leases_are_swept(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    from durableq.store import _postgres

    monkeypatch.setattr(_postgres, "_SWEEP_EVERY", 3)
    monkeypatch.setattr(_postgres, "_REQUEST_KEEP", -60.0)  # every record is old enough
    s = fresh(postgres_url)
    for _ in range(5):
        s.put_many([b"x"])
    s.lease("me", 5, now=1e12, ttl=30)
    with psycopg.connect(postgres_url) as con:
        (left,) = con.execute("SELECT count(*) FROM durableq_request WHERE queue = %s",
                              (s.name,)).fetchone() or (0,)
    assert left == 0, "the sixth record swept all six"
    s.close()
