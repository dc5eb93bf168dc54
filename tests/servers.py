"""A real gunicorn (deploy/gunicorn.conf.py, one gevent worker) and a raw HTTP client.

The fault and load tests need what only a real server does: chunked transfer,
aborting a transfer when the app raises mid-stream, closing the response on a
disconnect, one process serving many greenlets.  Loopback only; every server
is stopped by its fixture, with bounded waits.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
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

    def worker_pid(self) -> int:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        pids = [int(pid) for pid in children.split()]
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
def gunicorn(port: int, tmp_path: Path, **env: str):
    """Run gunicorn -c deploy/gunicorn.conf.py with one gevent worker on ``port``."""
    db_name = connections["default"].settings_dict["NAME"]
    log_path = tmp_path / f"gunicorn-{port}.log"
    full_env = {
        **os.environ,
        "PYTHONPATH": PYTHONPATH,
        "DJANGO_SETTINGS_MODULE": "tests.server_settings",
        "STREAMEXPORT_SERVER_DB_NAME": db_name,
        "GUNICORN_BIND": f"{HOST}:{port}",
        "GUNICORN_WORKERS": "1",
        "GUNICORN_GRACEFUL_TIMEOUT": "3",
        "GUNICORN_LOGLEVEL": "info",
        **env,
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "deploy/gunicorn.conf.py",
                "tests.server_wsgi:application",
            ],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
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
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


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
