"""A private PostgreSQL primary, its streaming replica and a PgBouncer, on loopback.

Standard library and psycopg only, so that ``python -m tests.topology`` (and the
scale-out benchmark through it) can use it outside pytest.  Every server runs in
the foreground as a child of this process (``subprocess.Popen``), is known by its
pid, and is stopped by that pid; nothing is daemonised.  PostgreSQL and PgBouncer
both refuse to run as root: as root, each is started as the ``postgres`` user
through ``setpriv``, in directories that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

PG_BINDIR = Path(os.environ.get("ASYNC_ORM_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
PGBOUNCER = os.environ.get("ASYNC_ORM_PGBOUNCER", "pgbouncer")
RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
#: the primary's settings: fast (no fsync: throwaway data) and ready for a replica
PRIMARY_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "hot_standby": "on",
    # the replica (which copies these) reconnects within 0.1 s of a primary restart
    "wal_retrieve_retry_interval": "'100ms'",
    "log_min_messages": "warning",
}


def missing_binaries() -> str | None:
    """None if the topology can start here, else why not."""
    for name in ("initdb", "postgres", "pg_basebackup"):
        path = PG_BINDIR / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"no PostgreSQL server binaries at {PG_BINDIR} (set ASYNC_ORM_PG_BINDIR)"
    if shutil.which(PGBOUNCER) is None:
        return (
            f"no {PGBOUNCER!r} on PATH (Debian: apt-get install -y pgbouncer; "
            "or set ASYNC_ORM_PGBOUNCER)"
        )
    if RUNNING_AS_ROOT and shutil.which("setpriv") is None:
        return "running as root and setpriv is missing: cannot run the servers as postgres"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_server_user(argv: list[str]) -> list[str]:
    if not RUNNING_AS_ROOT:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


def _give_to_server_user(path: Path) -> None:
    if RUNNING_AS_ROOT:
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)


def _run(argv: list[str]) -> None:
    done = subprocess.run(_as_server_user(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
        )


def wait_until_accepting(port: int, dbname: str = "postgres", timeout: float = 30.0) -> None:
    """Return once a server (PostgreSQL or PgBouncer) on ``port`` runs a query."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(
                host="127.0.0.1", port=port, user="postgres", dbname=dbname, connect_timeout=2
            ) as conn:
                conn.execute("select 1")
            return
        except psycopg.OperationalError as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no server answered on port {port}: {error}") from error
            time.sleep(0.02)  # polling a starting server, not synchronising a test


@dataclass
class Server:
    """One foreground server process: started by :meth:`start`, stopped by pid."""

    name: str
    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        assert self.process is None, f"{self.name} is already running"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                _as_server_user(self.argv()),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_until_accepting(self.port)
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"{error}\n{self.name}'s log:\n{self.log.read_text()}") from None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop the server (SIGINT: PostgreSQL's fast shutdown, PgBouncer's safe one)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Postgres(Server):
    @property
    def data(self) -> Path:
        return self.root / f"{self.name}-data"

    def argv(self) -> list[str]:
        return [
            str(PG_BINDIR / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.root),  # its Unix socket, away from the shared server's
        ]

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def init_primary(self) -> None:
        _run(
            [
                str(PG_BINDIR / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",  # loopback only, and initdb's pg_hba allows replication
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ]
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in PRIMARY_SETTINGS.items())

    def init_replica_of(self, primary: Postgres) -> None:
        """A hot standby streaming from ``primary`` (``pg_basebackup -R``)."""
        _run(
            [
                str(PG_BINDIR / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                str(self.data),
                "-R",  # standby.signal and primary_conninfo
                "-X",
                "stream",
                "--no-sync",
                "-c",
                "fast",
            ]
        )


@dataclass
class PgBouncer(Server):
    """PgBouncer in transaction-pooling mode in front of ``target_port``."""

    target_port: int = 0
    pool_size: int = 20

    @property
    def config(self) -> Path:
        return self.root / f"{self.name}.ini"

    def argv(self) -> list[str]:
        return [PGBOUNCER, str(self.config)]

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def write_config(self) -> None:
        users = self.root / f"{self.name}-users.txt"
        users.write_text('"postgres" ""\n')  # auth_type = trust still needs the user listed
        _give_to_server_user(users)
        self.config.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.target_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            "admin_users = postgres\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 1000\n"
            # a server that went away is retried quickly (PostgreSQL restarts)
            "server_login_retry = 1\n"
            f"pidfile = {self.root / (self.name + '.pid')}\n"
            "logfile =\n"
        )


@dataclass
class Topology:
    """The primary, its replica and a bouncer in front of the primary."""

    root: Path
    primary: Postgres
    replica: Postgres | None
    bouncer: PgBouncer

    @classmethod
    def start(cls, *, replica: bool = True, pool_size: int = 20) -> Topology:
        root = Path(tempfile.mkdtemp(prefix="async_orm-topology-"))
        _give_to_server_user(root)
        primary = Postgres("primary", root)
        topology = cls(root, primary, None, PgBouncer("pgbouncer", root, pool_size=pool_size))
        try:
            primary.init_primary()
            primary.start()
            if replica:
                topology.replica = Postgres("replica", root)
                topology.replica.init_replica_of(primary)
                topology.replica.start()
            topology.bouncer.target_port = primary.port
            topology.bouncer.write_config()
            topology.bouncer.start()
        except BaseException:
            topology.stop()
            raise
        return topology

    def servers(self) -> list[Server]:
        found: list[Server | None] = [self.bouncer, self.replica, self.primary]
        return [server for server in found if server is not None]

    def stop(self) -> None:
        for server in self.servers():
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> None:
        """A database on the primary (the replica gets it through streaming)."""
        with psycopg.connect(
            host="127.0.0.1", port=self.primary.port, user="postgres", autocommit=True
        ) as conn:
            conn.execute(f'create database "{name}"')
