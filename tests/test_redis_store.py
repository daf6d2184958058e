"""RedisStore against a real redis-server: both store contracts, then queues across
processes and a server killed mid-run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import durableq
from durableq import CommandStore, RedisStore, Store

from . import server_store_cases
from .server_store_cases import ServerCases
from .servers import RedisServer
from .test_command_store_contract import CommandStoreContract
from .test_store_contract import StoreContract


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def fresh(url: str, **options: Any) -> RedisStore:
    return server_store_cases.fresh(RedisStore, url, **options)  # type: ignore[no-any-return]


class TestRedisStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _url(self, redis_url: str) -> None:
        self.url = redis_url

    def make_store(self, tmp_path: Path) -> Store:
        return fresh(self.url)


class TestRedisCommandStore(CommandStoreContract):
    @pytest.fixture(autouse=True)
    def _url(self, redis_url: str) -> None:
        self.url = redis_url

    def make_store(self, tmp_path: Path) -> CommandStore:
        return fresh(self.url)


def test_the_password_stays_out_of_repr_and_errors() -> None:
    store = RedisStore("redis://user:s3cret@127.0.0.1:1/0", timeout=0.1)
    assert "s3cret" not in repr(store) and "***" in repr(store)
    with pytest.raises(durableq.StoreError) as err:
        store.counts()
    assert "s3cret" not in str(err.value)
    store.close()


def test_missing_redis_py_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from durableq import ConfigurationError

    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigurationError, match=r'pip install "durableq\[redis\]"'):
        RedisStore("redis://127.0.0.1:1/0")





class TestRedisQueues(ServerCases):
    """Queues, peers, a server down or killed mid-run: the cases every server store passes."""

    store_class = RedisStore

    @pytest.fixture
    def server(self, redis_server: RedisServer) -> RedisServer:
        return redis_server

