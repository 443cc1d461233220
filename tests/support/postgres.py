"""A throwaway PostgreSQL cluster for tests: initdb into a temp dir, pg_ctl start on a free
loopback port with the socket in the temp dir, one fresh database per caller, stopped and
removed after. Debian's binaries live in /usr/lib/postgresql/<version>/bin (scripts/test.sh
installs them); initdb refuses to run as root, so as root the cluster runs as `nobody`."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.support.processes import free_port

_RUN_AS = "nobody"


def find_binaries() -> tuple[str, str] | None:
    """(initdb, pg_ctl), from PATH or Debian's versioned directory; None when absent."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    for bin_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(f"{bin_dir}/initdb", os.X_OK) and os.access(f"{bin_dir}/pg_ctl", os.X_OK):
            return f"{bin_dir}/initdb", f"{bin_dir}/pg_ctl"
    return None


class PostgresCluster:
    def __init__(self, initdb: str, pg_ctl: str) -> None:
        self._initdb, self._pg_ctl = initdb, pg_ctl
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="vlmgw-pg-"))
        self.data = self.root / "data"
        self._as_root = os.geteuid() == 0

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", _RUN_AS, "--"] if self._as_root else []
        subprocess.run([*prefix, *argv], check=True, capture_output=True, cwd=self.root)

    def start(self) -> PostgresCluster:
        if self._as_root:
            user = pwd.getpwnam(_RUN_AS)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run(self._initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        log = str(self.root / "server.log")
        self._run(self._pg_ctl, "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(self._pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL."""
        import psycopg

        name = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)
