"""A throwaway PostgreSQL server for the production-backend tests.

Started from the local PostgreSQL binaries (Debian: /usr/lib/postgresql/<version>/bin) on
127.0.0.1 at a free port, with trust authentication and durability switched off (it is
deleted at the end of the session). Tests that use `postgres_server` skip, with the reason,
on a machine without PostgreSQL. Set CXR_PG_BIN to the folder holding initdb/pg_ctl to use
another installation.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

DATABASES = ("dagster", "mlflow")
SUPERUSER = "postgres"


@dataclass(frozen=True)
class PostgresServer:
    """Where the throwaway server listens, and the connection strings each client wants."""

    host: str
    port: int
    user: str
    password: str
    data_dir: Path
    bin_dir: Path

    def url(self, db: str, driver: str | None = None) -> str:
        """SQLAlchemy URL: `url("mlflow", "psycopg2")` -> postgresql+psycopg2://...@host:port/mlflow."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        auth = quote(self.user) + (f":{quote(self.password)}" if self.password else "")
        return f"{scheme}://{auth}@{self.host}:{self.port}/{db}"

    def dsn(self, db: str) -> str:
        """libpq keyword DSN for psycopg2.connect / psql."""
        parts = f"host={self.host} port={self.port} user={self.user} dbname={db}"
        return parts + (f" password={self.password}" if self.password else "")

    def dagster_env(self, db: str = "dagster") -> dict[str, str]:
        """The DAGSTER_PG_* variables infra/dagster/dagster.yaml reads."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port),
                "DAGSTER_PG_USERNAME": self.user, "DAGSTER_PG_PASSWORD": self.password,
                "DAGSTER_PG_DB": db}

    def query(self, db: str, sql: str, *args) -> list[tuple]:
        """Rows of one statement, read through psycopg2 (a plain SQL client, not Dagster/MLflow)."""
        import psycopg2

        with psycopg2.connect(self.dsn(db)) as conn, conn.cursor() as cur:
            cur.execute(sql, args or None)
            rows = cur.fetchall()
        conn.close()
        return rows


def _find_bin_dir() -> Path | None:
    candidates = []
    if os.environ.get("CXR_PG_BIN"):
        candidates.append(Path(os.environ["CXR_PG_BIN"]))
    on_path = shutil.which("initdb")
    if on_path:  # often a symlink into the versioned folder that also holds createdb/psql
        candidates += [Path(on_path).resolve().parent, Path(on_path).parent]

    def version(path: str) -> tuple:
        name = Path(path).parts[-3]  # /usr/lib/postgresql/<version>/bin/initdb
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for pattern in ("/usr/lib/postgresql/*/bin/initdb", "/usr/pgsql-*/bin/initdb",
                    "/usr/local/pgsql/bin/initdb", "/opt/homebrew/opt/postgresql*/bin/initdb"):
        found = glob.glob(pattern)
        if pattern.startswith("/usr/lib/postgresql"):
            found.sort(key=version, reverse=True)
        candidates += [Path(p).parent for p in found]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _world_traversable(folder: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in (folder, *folder.parents))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A running PostgreSQL with empty `dagster` and `mlflow` databases; removed afterwards."""
    bin_dir = _find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL "
                    "(Debian: apt-get install postgresql) or set CXR_PG_BIN to their folder")

    # initdb refuses to run as root: run the server as the `postgres` account then.
    run_as: dict = {}
    if os.name == "posix" and os.geteuid() == 0:
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no `postgres` user exists to own the test server "
                        "(initdb refuses root)")
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    parent = Path(tempfile.gettempdir())
    if run_as and not _world_traversable(parent):
        parent = Path("/tmp")  # the postgres account must reach its data folder
    base = Path(tempfile.mkdtemp(prefix="cxr-pg-", dir=parent))
    if run_as:
        os.chown(base, run_as["user"], run_as["group"])
    data_dir, log_file = base / "data", base / "server.log"
    port = _free_port()
    server = PostgresServer("127.0.0.1", port, SUPERUSER, "", data_dir, bin_dir)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}

    def run(*cmd: str, **kwargs):
        return subprocess.run([str(c) for c in cmd], cwd=base, env=env, check=True,
                              capture_output=True, text=True, timeout=120, **run_as, **kwargs)

    started = False
    try:
        run(bin_dir / "initdb", "-D", data_dir, "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--no-instructions")
        with open(data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# cxr test server\n"
                       f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{base}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 200\n")
        # pg_ctl's server child keeps inherited pipes open: send its output to a file, not a pipe.
        with open(os.devnull, "w") as devnull:
            subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file),
                            "-w", "-t", "60", "start"], cwd=base, env=env, check=True,
                           stdout=devnull, stderr=devnull, timeout=120, **run_as)
        started = True
        createdb = bin_dir / "createdb"
        for db in DATABASES:
            if createdb.is_file():
                cmd = [str(createdb), "-h", server.host, "-p", str(port), "-U", SUPERUSER, db]
            else:
                cmd = [str(bin_dir / "psql") if (bin_dir / "psql").is_file() else "psql",
                       "-h", server.host, "-p", str(port), "-U", SUPERUSER, "-d", "postgres",
                       "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{db}"']
            subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        log = log_file.read_text()[-3000:] if log_file.exists() else ""
        detail = getattr(err, "stderr", "") or ""
        if started:
            _stop(bin_dir, data_dir, base, env, run_as)
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start the test PostgreSQL ({bin_dir}): {err}\n{detail}\n{log}")

    try:
        yield server
    finally:
        _stop(bin_dir, data_dir, base, env, run_as)
        shutil.rmtree(base, ignore_errors=True)


def _stop(bin_dir: Path, data_dir: Path, base: Path, env: dict, run_as: dict) -> None:
    with open(os.devnull, "w") as devnull:
        done = subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w",
                               "-t", "60", "stop"], cwd=base, env=env, check=False,
                              stdout=devnull, stderr=devnull, timeout=120, **run_as)
    if done.returncode != 0:  # last resort: the postmaster's pid is the first line of its pid file
        pid_file = data_dir / "postmaster.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), 9)
                time.sleep(0.5)
            except (OSError, ValueError):
                pass
