"""Real Redis, PostgreSQL and RabbitMQ servers for the server-store tests, started once per
session.

Each runs from the Debian packages that ``make servers`` installs, on 127.0.0.1 and a free
port, with its data in a temporary directory removed at the end. A fixture waits (bounded)
until its server answers. A missing binary or a server that does not start fails every
test that needs it, with the reason and the server's log: never a silent skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: How long a server may take to answer after it starts.
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerError(RuntimeError):
    """A test server could not be started; the message says why."""


class _Server:
    name = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "server.log"

    def _spawn(self) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        """Make what the server acknowledged so far survive a kill now, as some time in
        service would (nothing to do for a server that writes before it replies)."""

    def _answers(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.proc.returncode} at start:\n{self._tail()}"
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.name} did not answer within {START_TIMEOUT:g} s:\n{self._tail()}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def restart(self) -> None:
        """Kill the server and start it again on the same port and data."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError as exc:
            return f"(no log: {exc})"


class RedisServer(_Server):
    """``redis-server`` with AOF on (``appendfsync everysec``): a killed server loses no
    acknowledged write, since each is written to the file before the reply."""

    name = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerError("redis-server is not installed: run `make servers` "
                              "(apt-get install redis-server)")
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]))
    if not found:
        raise ServerError("PostgreSQL is not installed: run `make servers` "
                          "(apt-get install postgresql)")
    return Path(found[-1]).parent


class PostgresServer(_Server):
    """A private PostgreSQL cluster (``initdb``, trust auth on loopback). As root it runs as
    the ``postgres`` user, since PostgreSQL refuses to run as root."""

    name = "postgres"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.bin = _postgres_bin()
        self.data = root / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerError("running as root and there is no `postgres` user to run "
                                  "PostgreSQL as (the Debian package creates it)") from None
            self.user = "postgres"
            os.chown(root, entry.pw_uid, entry.pw_gid)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                   "postgres", "-E", "UTF8", "--no-sync"], "initdb")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_user(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else args

    def _run(self, args: list[str], what: str) -> None:
        done = subprocess.run(self._as_user(args), capture_output=True, timeout=START_TIMEOUT)
        if done.returncode:
            out = (done.stdout + done.stderr).decode(errors="replace")[-3000:]
            raise ServerError(f"{what} failed with {done.returncode}:\n{out}")

    def _spawn(self) -> None:
        # fsync off: a killed server still loses nothing (its WAL is in the page cache);
        # only a machine crash would, and the tests make none.
        args = [
            str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            "-c", "full_page_writes=off", "-c", "max_connections=200",
        ]
        log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            self.proc = subprocess.Popen(self._as_user(args), stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            os.close(log)

    def _answers(self) -> bool:
        done = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", "postgres"],
            capture_output=True, timeout=10,
        )
        return done.returncode == 0

    def kill(self) -> None:
        # runuser forwards no SIGKILL: kill the postmaster itself; runuser reaps it and
        # exits (killing runuser too would leave a zombie postmaster, whose pid in the
        # lock file would keep the next one from starting).
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                super().kill()

    def stop(self) -> None:
        # SIGINT: PostgreSQL's fast shutdown (SIGTERM would wait for every session to end).
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
        if self.proc is not None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def start(self) -> None:
        # After a kill, the old backends exit once they notice the postmaster is gone; until
        # then a new postmaster refuses the data directory (its shared memory is in use).
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                super().start()
                return
            except ServerError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


class RabbitMQServer(_Server):
    """A private ``rabbitmq-server`` node: its own node name, AMQP port, distribution port
    and epmd port (all free ports on 127.0.0.1), its database and logs under ``root``.

    It runs through Debian's script in ``/usr/lib/rabbitmq/bin`` (the one in ``/usr/sbin``
    switches to the ``rabbitmq`` user and the system-wide node), as the current user: the
    node needs no privilege. Starting takes about 4 s. The default ``guest`` user may log
    in from loopback.
    """

    name = "rabbitmq-server"
    _BIN = Path("/usr/lib/rabbitmq/bin")

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        if not (self._BIN / "rabbitmq-server").exists():
            raise ServerError("rabbitmq-server is not installed: run `make servers` "
                              "(apt-get install rabbitmq-server)")
        self.dist_port, self.epmd_port = free_port(), free_port()
        self._streams_ready = False
        (root / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(root),  # the Erlang cookie goes here
            "RABBITMQ_NODENAME": f"durableq-test-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
            "RABBITMQ_PID_FILE": str(root / "rabbitmq.pid"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _spawn(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self._BIN / "rabbitmq-server")], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True,
            )

    def _answers(self) -> bool:
        # The AMQP handshake, not just an open port: the listener opens before the broker
        # can serve a connection.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                if s.recv(8)[:1] != b"\x01":  # a Connection.Start frame
                    return False
        except OSError:
            return False
        return not self._streams_ready or self._serves_streams()

    def _serves_streams(self) -> bool:
        """After a restart the broker answers before its streams are back (~0.5 s)."""
        import pika

        try:
            con = pika.BlockingConnection(pika.URLParameters(self.url))
        except pika.exceptions.AMQPError:
            return False
        try:
            con.channel().queue_declare("durableq-test.first-stream", passive=True)
            return True
        except pika.exceptions.AMQPError:
            return False
        finally:
            if con.is_open:
                con.close()

    def start(self) -> None:
        super().start()
        if not self._streams_ready:
            self._register_stream_coordinator()
            self._streams_ready = True

    def _register_stream_coordinator(self) -> None:
        """Make the broker's first stream survive a kill, as on a broker in service.

        RabbitMQ 3.10 starts its stream coordinator with the first stream ever declared
        and records it in a dets table that is written to disk every 3 minutes: a broker
        killed before that forgets the coordinator and serves no stream after a restart
        ("home node ... is down or inaccessible"). Declaring a stream and syncing the
        tables now is what 3 minutes of service would do.
        """
        import pika

        con = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            con.channel().queue_declare("durableq-test.first-stream", durable=True,
                                        arguments={"x-queue-type": "stream"})
        finally:
            con.close()
        self.sync()

    def sync(self) -> None:
        """Write the broker's metadata to disk now. RabbitMQ 3.10 logs a queue's declaration
        to Mnesia asynchronously and syncs its dets tables every few minutes: a broker
        killed within about a second of declaring a durable queue can restart without the
        queue and the confirmed messages in it (reproduced: ~1 early kill in 8). A broker in
        service has long written both; this does it at once."""
        done = subprocess.run(
            [str(self._BIN / "rabbitmqctl"), "eval",
             "mnesia:sync_log(), [dets:sync(T) || T <- dets:all()], ok."],
            capture_output=True, timeout=START_TIMEOUT, env=self.env,
        )
        if done.returncode:
            out = (done.stdout + done.stderr).decode(errors="replace")[-3000:]
            raise ServerError(f"rabbitmqctl eval failed with {done.returncode}:\n{out}")

    def kill(self) -> None:
        # The script runs the VM as its child: kill the whole session (epmd daemonizes
        # into its own and outlives the node, like on any host).
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        try:
            super().stop()  # SIGTERM: the script stops the node cleanly
        finally:
            # The script may exit before the VM it started: leave nothing of the session.
            if self.proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            epmd = shutil.which("epmd") or "/usr/bin/epmd"
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"],
                               capture_output=True, timeout=10, env=self.env)


@contextlib.contextmanager
def _running(cls: type[_Server]) -> Iterator[_Server]:
    root = Path(tempfile.mkdtemp(prefix=f"durableq-{cls.name}-"))
    server: _Server | None = None
    try:
        try:
            server = cls(root)
            server.start()
        except (ServerError, OSError, subprocess.SubprocessError) as exc:
            pytest.fail(f"cannot start {cls.name} for the server-store tests: {exc}",
                        pytrace=False)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with _running(RedisServer) as server:
        assert isinstance(server, RedisServer)
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with _running(PostgresServer) as server:
        assert isinstance(server, PostgresServer)
        yield server


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    with _running(RabbitMQServer) as server:
        assert isinstance(server, RabbitMQServer)
        yield server
