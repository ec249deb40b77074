"""A PostgreSQL server for the tests: the one named by the environment, or a throw-away cluster.

``TEST_DATABASE_URL`` (or ``LEADERBOARD_TEST_POSTGRES``) names a server whose user may create
databases; each test gets a fresh database on it. Without it, a cluster is started from the
installed PostgreSQL (``initdb``/``pg_ctl`` from ``/usr/lib/postgresql/*/bin`` or ``PATH``) in a
temporary directory, listening on 127.0.0.1 only, as the ``postgres`` user when run as root
(PostgreSQL refuses to run as root), and removed at the end.

Also a script, for a shell (CI, benchmarks)::

    python tests/pg.py start DIR   # prints the URL; the cluster lives in DIR until `stop DIR`
    python tests/pg.py stop DIR
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ENV_URLS = ("TEST_DATABASE_URL", "LEADERBOARD_TEST_POSTGRES")
# CI sets this so that a PostgreSQL that cannot be reached fails the run instead of skipping tests.
REQUIRE_ENV = "LEADERBOARD_REQUIRE_POSTGRES"


class NoServer(Exception):
    """No PostgreSQL server could be found or started; the message says why."""


def _bin_dir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3].split(".")[0])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise NoServer(
        "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH): "
        "`apt-get install postgresql`, or set TEST_DATABASE_URL=postgresql://user@host/db"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    if shutil.which("runuser") is None:
        raise NoServer("running as root without runuser: cannot start PostgreSQL as the postgres user")
    return ["runuser", "-u", "postgres", "--", *command]


@dataclass
class Cluster:
    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        pg_ctl = str(_bin_dir() / "pg_ctl")
        subprocess.run(
            _as_server_user([pg_ctl, "-D", str(self.directory / "data"), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster(directory: Path | None = None) -> Cluster:
    """initdb and start a cluster in ``directory`` (a new temporary one by default)."""
    bin_dir = _bin_dir()
    root = directory or Path(tempfile.mkdtemp(prefix="leaderboard-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        try:
            shutil.chown(root, "postgres", "postgres")
        except (LookupError, OSError) as error:
            raise NoServer(f"running as root and there is no usable postgres user ({error})") from None
    port = _free_port()
    data, log = root / "data", root / "server.log"
    steps = [
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
        [
            str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start", "-o",
            # Throw-away data: no fsync. Local TCP only, its socket in its own directory.
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off "
            "-c max_connections=200",
        ],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run(_as_server_user(step), capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            if log.exists():
                detail += log.read_text(errors="replace").strip().splitlines()[-3:]
            shutil.rmtree(root, ignore_errors=True)
            raise NoServer(f"{Path(step[0]).name} failed: {' | '.join(detail[-4:])}")
    return Cluster(root, port)


def configured_url() -> str | None:
    for name in ENV_URLS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


_names = itertools.count(1)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def create_database(admin_url: str, prefix: str = "lb_test") -> str:
    """A new empty database on the server; returns its URL."""
    import psycopg

    name = f"{prefix}_{os.getpid()}_{next(_names)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    return with_database(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def check_server(url: str) -> None:
    try:
        import psycopg
    except ImportError:
        raise NoServer("the PostgreSQL driver is not installed: pip install '.[postgres]'") from None
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        raise NoServer(f"cannot connect to the PostgreSQL server: {' '.join(str(error).split())}") from None


@contextmanager
def server(spec: str) -> Iterator[str]:
    """For scripts (bench/): ``spec`` is a server URL whose user may create databases, or ``pg``
    for a throw-away cluster, stopped and removed at the end. Yields the URL."""
    if spec != "pg":
        yield spec
        return
    cluster = start_cluster()
    try:
        yield cluster.url
    finally:
        cluster.stop()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python tests/pg.py start|stop DIR", file=sys.stderr)
        return 2
    directory = Path(argv[1]).resolve()
    if argv[0] == "start":
        try:
            cluster = start_cluster(directory)
        except NoServer as error:
            print(error, file=sys.stderr)
            return 1
        (directory / "port").write_text(str(cluster.port))
        print(cluster.url)
    else:
        port = int((directory / "port").read_text()) if (directory / "port").exists() else 0
        Cluster(directory, port).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
