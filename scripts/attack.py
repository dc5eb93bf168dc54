#!/usr/bin/env python3
"""Attack the example project on real servers and count what breaks (the hardening check).

Sets everything up on loopback, runs every attack with a fixed random seed, prints a summary
table, writes the figures as JSON and stops everything it started::

    scripts/attack                     # the full run (about 2 minutes on 2 cores)
    scripts/attack --quick             # small counts (under a minute): the smoke test's run
    scripts/attack --only fuzz         # one attack (repeatable)
    scripts/attack --seed 7 --json var/attack-7.json

What it starts, each on a free 127.0.0.1 port, all stopped at the end (even on Ctrl-C):

- a private PostgreSQL cluster (``initdb``/``pg_ctl`` from ``/usr/lib/postgresql/*/bin``) in
  a temporary directory, never the machine's own server, because one attack restarts it; a
  database ``attack`` filled by the example project's ``migrate``, ``loadflights`` (all
  336,776 flights; 100,000 with ``--quick``) and ``ensure_demo_user``;
- PgBouncer in transaction pooling (tests/servers.py);
- three gunicorns with deploy/gunicorn.conf.py (gevent) serving the example project with
  scripts/attack_site's extra routes (COPY, keyset, timeouts, row limit): psycopg 3;
  psycopg2 with the psycogreen hook (``STREAMEXPORT_EXAMPLE_DRIVER=psycopg2``); psycopg 3
  through PgBouncer with ``DATABASE_DISABLE_SERVER_SIDE_CURSORS=1``;
- nginx with deploy/nginx/streamexport-locations.conf (scripts/nginx_test_conf.py) in front
  of the psycopg 3 gunicorn.

The attacks, and what counts as a defect:

- ``disconnects``: clients that go away mid-transfer (after the headers and 0 to 2 MB of
  body; a close or a reset) on every reader path: cursor (psycopg 3, through nginx), COPY,
  keyset, PgBouncer (COPY and keyset), psycopg2 + psycogreen.  Afterwards every session on
  the database must be gone or be one of PgBouncer's pooled server connections, idle outside
  a transaction (so no cursor, no portal): a *leak* otherwise.
- ``faults``: ``pg_terminate_backend()`` of the export's session mid-stream, a PostgreSQL
  restart mid-stream (``pg_ctl restart -m fast``), a statement timeout, an
  idle-in-transaction timeout with a paused client, a row limit.  The client must see each
  one (a cut transfer or an error status, never a complete-looking file), nothing may be left
  in the database, and the next export through the same server must complete.
- ``fuzz``: random query strings to ``/exports/flights/`` and ``/exports/flights/filtered/``
  (through nginx) and random ``_changelist_filters`` on the admin's export page as the staff
  user ``viewer``.  Defects: a 500, a cut transfer (a refused filter must be a 400 before the
  body), an ERROR line or a traceback in the server log.  A 200 is read up to 256 KiB, then
  the client hangs up.
- ``cli``: bad invocations of ``manage.py streamexport``, one error each (each must exit 1
  with a message about that error and no traceback; argparse's own usage errors exit 2),
  random ``--filter`` values (exit 0 or 1, no traceback) and ``| head -c 100`` (exit 0,
  nothing on stderr but the example project's log lines).

Exit status: 0 when no attack found a defect, 1 otherwise, 2 when the set-up failed.  The
servers' logs stay in ``--logs`` (default ``var/attack/``).  Needs nginx and PgBouncer
(scripts/install-servers), PostgreSQL's server binaries and the development virtualenv.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import html
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import servers  # noqa: E402  (the servers' helpers, shared with the e2e tests)

HOST = servers.HOST
DB = "attack"
#: The counts of a full run and of ``--quick``.
FULL = {
    "flights": None,
    "disconnects": 120,
    "terminate": 12,
    "restart": 3,
    "statement_timeout": 2,
    "idle_timeout": 2,
    "row_limit": 2,
    "public_fuzz": 1000,
    "filtered_fuzz": 200,
    "admin_fuzz": 400,
    "cli_fuzz": 20,
}
QUICK = {
    "flights": 100_000,
    "disconnects": 12,
    "terminate": 5,
    "restart": 1,
    "statement_timeout": 1,
    "idle_timeout": 1,
    "row_limit": 1,
    "public_fuzz": 60,
    "filtered_fuzz": 20,
    "admin_fuzz": 30,
    "cli_fuzz": 0,
}
#: The attacks, in the order they run (``--only`` picks some).
ATTACKS = ["disconnects", "faults", "fuzz", "cli"]
#: How much of a 200 the fuzz clients read before hanging up.
FUZZ_READ_CAP = 256 * 1024
#: A small export that must complete after every fault: Hawaiian Airlines in January.
SMALL = "/exports/flights/?format=csv&month=1&carrier=HA"


def log(message: str) -> None:
    print(f"[attack {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the private PostgreSQL cluster -----------------------------------------------------------


@dataclass
class Cluster:
    port: int
    bindir: Path
    data: Path
    socket_dir: Path
    as_owner: list[str]

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses={HOST}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=100"
        )
        subprocess.run(
            [
                *self.as_owner,
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.data.parent / "postgresql.log"),
                "-o",
                options,
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def restart(self) -> None:
        """Restart it: ``-m fast`` ends every session (as a server restart does)."""
        self.pg_ctl("-m", "fast", "restart")


def postgres_bindir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not found:
        raise SystemExit("attack: no /usr/lib/postgresql/*/bin/initdb (PostgreSQL server)")
    return Path(found[-1]).parent


@contextlib.contextmanager
def private_cluster(directory: Path):
    """Create and start a PostgreSQL cluster in ``directory`` on a free port; yield a Cluster.

    ``initdb`` refuses to run as root: as root, the cluster belongs to ``postgres``.  Trust
    authentication on loopback only; durability off (fsync) since it is thrown away.  Stopped
    (``-m immediate``) and removed on exit.
    """
    bindir = postgres_bindir()
    as_owner: list[str] = []
    if os.geteuid() == 0:
        as_owner = ["runuser", "-u", "postgres", "--"]
        shutil.chown(directory, "postgres", "postgres")
    data = directory / "data"
    socket_dir = directory
    subprocess.run(
        [
            *as_owner,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster = Cluster(servers.free_port(), bindir, data, socket_dir, as_owner)
    cluster.pg_ctl("start")
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.pg_ctl("-m", "immediate", "stop")


def pg(dbname: str = "postgres"):
    """A new autocommit connection to the private cluster (PGPORT is set to it)."""
    return servers.pg_connect(dbname)


def database_url(**options: str) -> str:
    url = servers.database_url(DB)
    if options:
        url += "?" + "&".join(f"{k}={v}" for k, v in options.items())
    return url


def manage(*args: str | bytes, url: str | None = None, timeout: float = 600, **kw: Any):
    env = {**os.environ, "DATABASE_URL": url or database_url(), "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "manage.py"), *args],
        env=env,
        capture_output=True,
        timeout=timeout,
        **kw,
    )


def load_data(flights: int | None) -> int:
    with pg() as admin:
        admin.execute(f'CREATE DATABASE "{DB}"')
    limit = ["--limit", str(flights)] if flights else []
    for args in (
        ["migrate", "--noinput", "-v", "0"],
        ["loadflights", *limit],
        ["ensure_demo_user"],
    ):
        done = manage(*args)
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stderr.decode()}")
    with pg(DB) as conn:
        return conn.execute("SELECT count(*) FROM flights_flight").fetchone()[0]


# --- what is left in the database -------------------------------------------------------------


class Database:
    """The attack database seen from outside, and PgBouncer's pooled server connections."""

    def __init__(self, bouncer: servers.PgBouncer) -> None:
        self.bouncer = bouncer

    def sessions(self) -> list[dict]:
        with contextlib.suppress(Exception):
            return servers.sessions_on(DB)
        return []  # the cluster is restarting

    def pooled_pids(self) -> set[int]:
        with contextlib.suppress(Exception):
            rows = self.bouncer.admin("SHOW SERVERS")
            return {int(row["remote_pid"]) for row in rows if row["database"] == DB}
        return set()

    def leftovers(self) -> list[dict]:
        """Sessions that should not be there: any but PgBouncer's idle pooled ones."""
        pooled = self.pooled_pids()
        return [
            s
            for s in self.sessions()
            if s["pid"] not in pooled or s["in_transaction"] or s["state"] != "idle"
        ]

    def settle(self, timeout: float = 20) -> list[dict]:
        """Wait (bounded) until nothing is left; return what is still left then."""
        deadline = time.monotonic() + timeout
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def terminate(self, pid: int) -> bool:
        with pg() as admin:
            return bool(admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0])


# --- HTTP -------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    complete: bool  # the transfer ended properly (terminating chunk / Content-Length)
    capped: bool  # the client stopped reading at its cap (a long 200)
    body: bytes
    headers: dict = field(default_factory=dict)

    @property
    def cut(self) -> bool:
        return not self.complete and not self.capped


def open_request(port: int, target: bytes, *, rcvbuf: int | None = None, headers: bytes = b""):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(60)
    sock.connect((HOST, port))
    sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
    response = http.client.HTTPResponse(sock, method="GET")
    response.begin()
    return sock, response


def read_answer(
    sock, response, *, cap: int | None = None, body: bytearray | None = None, close: bool = True
) -> Answer:
    """Read ``response`` into ``body`` until its end, a cut, or ``cap`` bytes of body."""
    body = bytearray() if body is None else body
    complete, capped = False, False
    while True:
        try:
            data = response.read(65536 if cap is None else max(1, min(65536, cap - len(body))))
        except http.client.IncompleteRead as exc:
            body += exc.partial
            break
        except (ConnectionError, TimeoutError, OSError):
            break
        if not data:
            complete = True
            break
        body += data
        if cap is not None and len(body) >= cap:
            capped = True
            break
    if close:
        sock.close()
    return Answer(response.status, complete, capped, bytes(body), dict(response.getheaders()))


def get(port: int, target: str | bytes, *, cap: int | None = None, headers: bytes = b"") -> Answer:
    target = target.encode() if isinstance(target, str) else target
    sock, response = open_request(port, target, headers=headers)
    return read_answer(sock, response, cap=cap)


def last_ndjson_record(body: bytes) -> dict | None:
    with contextlib.suppress(Exception):
        return json.loads(body.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    return None


# --- the servers ------------------------------------------------------------------------------


@dataclass
class Servers:
    cluster: Cluster
    bouncer: servers.PgBouncer
    apps: dict[str, servers.Server]  # "psycopg", "psycopg2", "pgbouncer"
    nginx: servers.Nginx
    db: Database
    rows: int

    def logs(self) -> dict[str, str]:
        return {name: app.log() for name, app in self.apps.items()}


@contextlib.contextmanager
def start_servers(stack: contextlib.ExitStack, work: Path, logs: Path, flights: int | None):
    cluster_dir = Path(tempfile.mkdtemp(prefix="streamexport-attack-pg-"))
    stack.callback(shutil.rmtree, cluster_dir, ignore_errors=True)
    log("starting a private PostgreSQL cluster (initdb)")
    cluster = stack.enter_context(private_cluster(cluster_dir))
    os.environ.update(PGHOST=HOST, PGPORT=str(cluster.port), PGUSER="postgres", PGPASSWORD="")
    log(f"PostgreSQL {cluster.bindir.parent.name} on {HOST}:{cluster.port}; loading the flights")
    rows = load_data(flights)
    log(f"{rows} flights loaded; starting PgBouncer, gunicorn x3, nginx")
    bouncer = stack.enter_context(servers.pgbouncer(servers.free_port()))
    common = {
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "scripts")]),
        "DJANGO_SETTINGS_MODULE": "attack_site.settings",
        "GUNICORN_GRACEFUL_TIMEOUT": "3",
    }
    specs = {
        "psycopg": {
            "DATABASE_URL": database_url(application_name="attack-psycopg"),
            "GUNICORN_WORKERS": "2",
        },
        "psycopg2": {
            "DATABASE_URL": database_url(application_name="attack-psycopg2"),
            "STREAMEXPORT_EXAMPLE_DRIVER": "psycopg2",
        },
        "pgbouncer": {
            "DATABASE_URL": servers.database_url(DB).replace(
                f":{cluster.port}/", f":{bouncer.port}/"
            ),
            "DATABASE_DISABLE_SERVER_SIDE_CURSORS": "1",
        },
    }
    apps = {}
    for name, env in specs.items():
        apps[name] = stack.enter_context(
            servers.run_gunicorn(
                servers.free_port(),
                logs / f"gunicorn-{name}.log",
                "config.wsgi:application",
                {**common, **env},
                chdir=ROOT / "example_project",
            )
        )
    nginx_dir = work / "nginx"
    nginx_dir.mkdir()
    proxy = stack.enter_context(servers.nginx(servers.free_port(), apps["psycopg"].port, nginx_dir))
    yield Servers(cluster, bouncer, apps, proxy, Database(bouncer), rows)
    for name in ("error.log", "access.log"):
        with contextlib.suppress(OSError):
            shutil.copy(nginx_dir / name, logs / f"nginx-{name}")


class LogWatch:
    """Count new ERROR lines, tracebacks and worker timeouts in the gunicorn logs."""

    def __init__(self, srv: Servers) -> None:
        self.srv = srv
        self.offsets = {name: len(text) for name, text in srv.logs().items()}

    def counts(self) -> dict[str, Any]:
        errors, tracebacks, timeouts, samples = 0, 0, 0, []
        for name, text in self.srv.logs().items():
            new = text[self.offsets[name] :]
            for line in new.splitlines():
                if " ERROR " in line:
                    errors += 1
                    if len(samples) < 5:
                        samples.append(f"{name}: {line[:300]}")
                if line.startswith("Traceback"):
                    tracebacks += 1
                if "WORKER TIMEOUT" in line:
                    timeouts += 1
        return {
            "error_lines": errors,
            "tracebacks": tracebacks,
            "worker_timeouts": timeouts,
            "error_samples": samples,
        }


# --- attack: disconnects ----------------------------------------------------------------------


def disconnect_paths(srv: Servers) -> list[tuple[str, int, list[str]]]:
    """(name, port, targets) of every reader path a client can disconnect from."""
    via_nginx, green, bounced = (
        srv.nginx.port,
        srv.apps["psycopg2"].port,
        srv.apps["pgbouncer"].port,
    )
    return [
        (
            "cursor (psycopg 3, nginx)",
            via_nginx,
            [f"/exports/flights/?format={f}" for f in ("csv", "ndjson", "json", "xlsx")],
        ),
        ("COPY (nginx)", via_nginx, ["/attack/flights/copy/?format=csv"]),
        (
            "keyset (nginx)",
            via_nginx,
            ["/attack/flights/keyset/?format=csv", "/attack/flights/keyset/?format=ndjson"],
        ),
        ("PgBouncer COPY", bounced, ["/exports/flights/?format=csv"]),
        ("PgBouncer keyset", bounced, ["/attack/flights/keyset/?format=ndjson"]),
        (
            "psycopg2 + psycogreen",
            green,
            ["/exports/flights/?format=csv", "/exports/flights/?format=ndjson"],
        ),
    ]


def disconnect_once(port: int, target: str, read: int, reset: bool, pause: float) -> int:
    """GET, read ``read`` body bytes (after the headers), pause, hang up; return bytes read."""
    sock = socket.create_connection((HOST, port), timeout=60)
    try:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        received = bytearray()
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            if not data:
                return 0
            received += data
        body = len(received) - received.index(b"\r\n\r\n") - 4
        while body < read:
            data = sock.recv(min(65536, read - body))
            if not data:
                break
            body += len(data)
        time.sleep(pause)
        if reset:  # SO_LINGER 0: close with a RST, as a crashed client or a dropped route
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        return body
    finally:
        sock.close()


def attack_disconnects(srv: Servers, rng: random.Random, count: int) -> dict:
    paths = disconnect_paths(srv)
    trials = []
    for i in range(count):
        name, port, targets = paths[i % len(paths)] if i < len(paths) else rng.choice(paths)
        read = 0 if rng.random() < 0.1 else int(2 ** rng.uniform(8, 21))  # 256 B .. 2 MiB
        trials.append(
            (
                name,
                port,
                rng.choice(targets),
                read,
                rng.random() < 0.5,
                rng.choice([0, 0, 0.05, 0.3]),
            )
        )
    baseline = len(srv.db.sessions())
    watch = LogWatch(srv)
    per_path: Counter = Counter()
    errors: list[str] = []

    def run(trial):
        name, port, target, read, reset, pause = trial
        try:
            disconnect_once(port, target, read, reset, pause)
            per_path[name] += 1
        except Exception as exc:
            errors.append(f"{name} {target}: {exc!r}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, trials))
    left = srv.db.settle()
    after = srv.db.sessions()
    followups = [get(port, SMALL) for port in {p for _, p, _ in paths}]
    return {
        "disconnects": sum(per_path.values()),
        "per_path": dict(per_path),
        "client_errors": errors,
        "sessions_before": baseline,
        "sessions_after": len(after),
        "pooled_after": len(srv.db.pooled_pids()),
        "leaks": len(left),
        "leaked": [str(s) for s in left],
        "next_export_ok": all(a.status == 200 and a.complete for a in followups),
        "log": watch.counts(),
    }


# --- attack: faults ---------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    path: str
    port: int
    target: str
    inject: Callable[[Servers, Answer | None], None] | None = None
    pause: float = 0.0  # seconds the client stops reading after its first 4 KiB


def wait_for_export_session(srv: Servers, pooled: bool, timeout: float = 15) -> int:
    """Return the pid of the export's session (the only one outside PgBouncer's pool, or the
    pooled one in a transaction)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool = srv.db.pooled_pids()
        for s in srv.db.sessions():
            if pooled and s["pid"] in pool and (s["in_transaction"] or s["state"] == "active"):
                return s["pid"]
            if not pooled and s["pid"] not in pool:
                return s["pid"]
        time.sleep(0.05)
    raise RuntimeError(f"no export session: {srv.db.sessions()}")


def run_fault(srv: Servers, fault: Fault) -> dict:
    sock, response = open_request(fault.port, fault.target.encode(), rcvbuf=4096)
    body = bytearray()
    first = read_answer(sock, response, cap=4096, body=body, close=False)
    if first.capped:  # mid-stream: inject the fault, pause, read the rest
        if fault.inject is not None:
            fault.inject(srv, None)
        if fault.pause:
            time.sleep(fault.pause)
        answer = read_answer(sock, response, body=body)
    else:  # over (or cut) within its first 4 KiB
        sock.close()
        answer = first
        if fault.inject is not None:
            raise RuntimeError(f"the export ended before the fault: {answer.status}, {len(body)} B")
    record = last_ndjson_record(answer.body) if "ndjson" in fault.target else None
    visible = answer.status >= 400 or not answer.complete
    left = srv.db.settle()
    after = get(fault.port, SMALL)
    return {
        "kind": fault.kind,
        "path": fault.path,
        "status": answer.status,
        "cut": not answer.complete,
        "bytes": len(answer.body),
        "error_record": (record or {}).get("error", {}).get("code") if record else None,
        "visible": visible,
        "leaks": len(left),
        "next_export_ok": after.status == 200 and after.complete,
    }


def terminate(pooled: bool):
    def inject(srv: Servers, _answer) -> None:
        pid = wait_for_export_session(srv, pooled)
        srv.db.terminate(pid)

    return inject


def restart(srv: Servers, _answer) -> None:
    wait_for_export_session(srv, pooled=False)
    srv.cluster.restart()


def fault_plan(srv: Servers, counts: dict) -> list[Fault]:
    nx, green, bounced = srv.nginx.port, srv.apps["psycopg2"].port, srv.apps["pgbouncer"].port
    # The idle timeouts go straight to gunicorn: nginx's buffers and the sockets' between them
    # hold megabytes, and an export that fits in them ends before the client pauses.
    direct = srv.apps["psycopg"].port
    faults = []
    terminate_paths = [
        ("cursor csv (nginx)", nx, "/exports/flights/?format=csv", False),
        ("cursor ndjson (nginx)", nx, "/exports/flights/?format=ndjson", False),
        ("COPY (nginx)", nx, "/attack/flights/copy/?format=csv", False),
        ("keyset (nginx)", nx, "/attack/flights/keyset/?format=ndjson", False),
        ("psycopg2 + psycogreen", green, "/exports/flights/?format=ndjson", False),
        ("PgBouncer COPY", bounced, "/exports/flights/?format=csv", True),
    ]
    for i in range(counts["terminate"]):
        name, port, target, pooled = terminate_paths[i % len(terminate_paths)]
        faults.append(Fault("pg_terminate_backend", name, port, target, terminate(pooled)))
    restart_paths = terminate_paths[:5]
    for i in range(counts["restart"]):
        name, port, target, _ = restart_paths[i % len(restart_paths)]
        faults.append(Fault("PostgreSQL restart", name, port, target, restart))
    for _ in range(counts["statement_timeout"]):
        faults += [
            Fault("statement timeout", "cursor (nginx)", nx, "/attack/flights/slow/?format=ndjson"),
            Fault("statement timeout", "COPY (nginx)", nx, "/attack/flights/slow-copy/?format=csv"),
            Fault("statement timeout", "psycopg2", green, "/attack/flights/slow/?format=ndjson"),
        ]
    for _ in range(counts["idle_timeout"]):
        faults += [
            Fault(
                "idle-in-transaction timeout",
                "cursor",
                direct,
                "/attack/flights/idle/?format=ndjson",
                pause=3,
            ),
            Fault(
                "idle-in-transaction timeout",
                "COPY",
                direct,
                "/attack/flights/idle-copy/?format=csv",
                pause=3,
            ),
            Fault(
                "idle-in-transaction timeout",
                "psycopg2",
                green,
                "/attack/flights/idle/?format=csv",
                pause=3,
            ),
        ]
    for _ in range(counts["row_limit"]):
        faults += [
            Fault("row limit", "cursor (nginx)", nx, "/attack/flights/row-limit/?format=ndjson"),
            Fault("row limit", "cursor xlsx (nginx)", nx, "/attack/flights/row-limit/?format=xlsx"),
            Fault("row limit", "psycopg2", green, "/attack/flights/row-limit/?format=csv"),
            Fault(
                "row limit",
                "PgBouncer keyset",
                bounced,
                "/attack/flights/row-limit-keyset/?format=csv",
            ),
        ]
    return faults


def attack_faults(srv: Servers, counts: dict) -> dict:
    watch = LogWatch(srv)
    trials = []
    for fault in fault_plan(srv, counts):
        try:
            trials.append(run_fault(srv, fault))
        except Exception as exc:
            trials.append({"kind": fault.kind, "path": fault.path, "harness_error": repr(exc)})
    kinds: dict[str, dict] = {}
    for trial in trials:
        kind = kinds.setdefault(
            trial["kind"],
            {
                "trials": 0,
                "visible": 0,
                "leaks": 0,
                "next_export_ok": 0,
                "harness_errors": 0,
                "statuses": Counter(),
                "error_records": Counter(),
            },
        )
        kind["trials"] += 1
        if "harness_error" in trial:
            kind["harness_errors"] += 1
            continue
        kind["visible"] += trial["visible"]
        kind["leaks"] += trial["leaks"]
        kind["next_export_ok"] += trial["next_export_ok"]
        kind["statuses"][f"{trial['status']}{' cut' if trial['cut'] else ''}"] += 1
        if trial["error_record"]:
            kind["error_records"][trial["error_record"]] += 1
    for kind in kinds.values():
        kind["statuses"] = dict(kind["statuses"])
        kind["error_records"] = dict(kind["error_records"])
    return {"kinds": kinds, "trials": trials, "log": watch.counts()}


# --- attack: fuzzed query strings -------------------------------------------------------------

NASTY = [
    "",
    " ",
    "0",
    "-1",
    "13",
    "00",
    "1.5",
    "1e3",
    "NaN",
    "inf",
    "-0",
    "+1",
    "0x1",
    "99999999999999999999999",
    "-99999999999999999999",
    "2147483648",
    "32768",
    "-32769",
    "\x00",
    "a\x00b",
    "\x7f",
    "\u202e",
    "\ufeff",
    "\U0001f600",
    "é",
    "١٢",
    "\uff2a\uff26\uff2b",
    "\ud7ff",
    "'",
    '"',
    "\\",
    "' OR 1=1 --",
    "%",
    "%%",
    "_",
    "*",
    "(",
    "[",
    ")",
    "(?",
    "[[:foo:]]",
    "a" * 5000,
    "JFK" * 300,
    "null",
    "None",
    "true",
    "false",
    "[]",
    "{}",
    "1,2",
    "1,2,3",
    ",",
    "2013-01-01",
    "2013-13-45",
    "9999-12-31",
    "0000-00-00",
    "10000",
    "-1 days",
    "<script>",
    "../../etc/passwd",
    "\r\n",
    "\t",
    "=",
    "&",
    "#",
    "?",
    "+",
    ";",
]
GOOD = {
    "format": ["csv", "ndjson", "json", "xlsx", "parquet", "csv-excel", "CSV"],
    "carrier": ["B6", "ha", "AA", "ZZ"],
    "origin": ["JFK", "lga", "EWR", "XXX"],
    "month": [str(m) for m in range(1, 13)],
    "dep_delay__gte": ["60", "-5", "1000"],
    "dep_delay__lte": ["0", "30"],
}


def fuzz_text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.45:
        return rng.choice(NASTY)
    if roll < 0.6:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(1, 12)))
    if roll < 0.75:
        return rng.choice(NASTY) + rng.choice(NASTY)
    if roll < 0.9:
        return str(rng.choice([rng.randrange(-(10**6), 10**6), 10 ** rng.randrange(1, 40)]))
    return "".join(rng.choice("0123456789-:T. ") for _ in range(rng.randrange(1, 25)))


def encode(rng: random.Random, text: str) -> str:
    """Percent-encode ``text`` (UTF-8), sometimes with broken escapes or non-UTF-8 bytes."""
    encoded = quote(
        text.encode("utf-8", "surrogatepass"), safe="" if rng.random() < 0.7 else "=&,()"
    )
    roll = rng.random()
    if roll < 0.05:
        encoded += rng.choice(["%", "%z", "%zz", "%F", "%FF%FE", "%C0%AF", "%ED%A0%80", "%80"])
    elif roll < 0.08:
        encoded = "%00" + encoded
    return encoded


def fuzz_query(rng: random.Random, keys: list[str], narrow: str, junk: float = 0.15) -> str:
    """Return a query string: often ``narrow`` (so a 200 is short), then one to four
    ``keys`` (a random name with probability ``junk``) with fuzzed or good values."""
    parts = [narrow] if narrow and rng.random() < 0.7 else []
    for _ in range(rng.randrange(1, 5)):
        key = rng.choice(keys) if rng.random() >= junk else fuzz_text(rng)
        if key in GOOD and rng.random() < 0.35:
            value = rng.choice(GOOD[key])
        else:
            value = fuzz_text(rng)
        parts.append(f"{encode(rng, key)}={encode(rng, value)}")
    if rng.random() < 0.05:
        parts.append(rng.choice(["&&&", "=", "==", "format", "&format=", "a=b=c"]))
    if rng.random() < 0.3:
        rng.shuffle(parts)
    return "&".join(parts)


PUBLIC_KEYS = ["format", "carrier", "origin", "month", "fields", "page", "o", "q"]
FILTERED_KEYS = [*PUBLIC_KEYS, "dep_delay__gte", "dep_delay__lte", "dep_delay", "id__in"]
CHANGELIST_KEYS = [
    "carrier__carrier__exact",
    "origin__faa__exact",
    "month__exact",
    "q",
    "o",
    "p",
    "e",
    "all",
    "time_hour__year",
    "time_hour__month",
    "time_hour__day",
    "time_hour__gte",
    "time_hour__lt",
    "time_hour__year__gt",
    "time_hour__date",
    "id__range",
    "id__in",
    "id__gt",
    "tailnum__regex",
    "tailnum__iregex",
    "dep_delay__gte",
    "flight_number__exact",
    "distance__lt",
    "month__in",
    "carrier",
    "_popup",
]
#: Names the changelist refuses as a whole ("The changelist's filters are not valid", or
#: Django's own 400 for _to_field and for relations list_filter does not name): half of the
#: admin's requests use none of them.
CHANGELIST_JUNK = [
    *("nonexistent__field", "_changelist_filters", "_to_field", "carrier__nope"),
    *("carrier__name__icontains", "plane__year__gte", "dest__faa__exact"),
]


def staff_session(port: int) -> bytes:
    """Log in as the view-only staff user ``viewer``; return the Cookie header line."""
    page = get(port, "/admin/login/?next=/admin/")
    cookie = page.headers.get("Set-Cookie", "").split(";", 1)[0]
    token = page.body.split(b'name="csrfmiddlewaretoken" value="', 1)[1].split(b'"', 1)[0]
    form = b"csrfmiddlewaretoken=" + token + b"&username=viewer&password=viewer&next=/admin/"
    sock = socket.create_connection((HOST, port), timeout=30)
    sock.sendall(
        b"POST /admin/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: "
        + cookie.encode()
        + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: "
        + str(len(form)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + form
    )
    response = http.client.HTTPResponse(sock, method="POST")
    response.begin()
    cookies = [v.split(";", 1)[0] for k, v in response.getheaders() if k.lower() == "set-cookie"]
    sock.close()
    if response.status != 302:
        raise RuntimeError(f"admin login failed: {response.status}")
    session = next(c for c in cookies if c.startswith("sessionid="))
    return f"Cookie: {session}; {cookie}\r\n".encode()


#: Query strings that were a 500 or a cut 200 before the hardening, sent on every run (not
#: left to chance) as the family "known refusals": each must be a 400.
KNOWN_PUBLIC = [
    "carrier=%00",
    "origin=J%00FK&format=ndjson",
    "month=1&carrier=B%006",
    "month=13",
    "format=docx",
]
KNOWN_ADMIN_FILTERS = [
    "tailnum=%00",
    "origin__faa__exact=J%00FK",
    "tailnum__regex=(",
    "tailnum__iregex=[",
    "id__range=1",
    "id__range=123",
    "id__range=100000000000000000000000000000000",
    "time_hour__year__gt=99999",
    "time_hour__iso_year=99999",
    "time_hour__year=9999",
    "time_hour__year=9999&time_hour__month=12&time_hour__day=31",
    "month__exact=x",
]
KNOWN_FILTERED = ["dep_delay__gte=soon", "origin=J%00FK"]


def fuzz_targets(rng: random.Random, counts: dict) -> list[tuple[str, str, bool]]:
    """(family, target, is_admin) of every fuzzed request, in a fixed order for the seed."""
    known = "known refusals (must be 400)"
    targets = [(known, f"/exports/flights/?{query}", False) for query in KNOWN_PUBLIC]
    targets += [(known, f"/exports/flights/filtered/?{query}", False) for query in KNOWN_FILTERED]
    targets += [
        (known, f"/admin/flights/flight/export/?format=csv&_changelist_filters={quote(f)}", True)
        for f in KNOWN_ADMIN_FILTERS
    ]
    for _ in range(counts["public_fuzz"]):
        query = fuzz_query(rng, PUBLIC_KEYS, "month=1&carrier=HA")
        targets.append(("public /exports/flights/", f"/exports/flights/?{query}", False))
    for _ in range(counts["filtered_fuzz"]):
        query = fuzz_query(rng, FILTERED_KEYS, "month=1&carrier=HA")
        targets.append(
            ("public /exports/flights/filtered/", f"/exports/flights/filtered/?{query}", False)
        )
    for _ in range(counts["admin_fuzz"]):
        narrow = "month__exact=1&carrier__carrier__exact=HA"
        if rng.random() < 0.5:  # only lookups the changelist applies: the query gets built
            filters = fuzz_query(rng, CHANGELIST_KEYS, narrow, junk=0)
        else:
            filters = fuzz_query(rng, CHANGELIST_KEYS + CHANGELIST_JUNK, narrow)
        outer = [
            f"_changelist_filters={quote(filters, safe='') if rng.random() < 0.85 else filters}"
        ]
        outer.append(
            "format="
            + (rng.choice(GOOD["format"]) if rng.random() < 0.85 else encode(rng, fuzz_text(rng)))
        )
        if rng.random() < 0.3:
            outer += [
                f"fields={rng.choice(['id', 'carrier__name', 'time_hour', 'nope', '', 'password'])}"
                for _ in range(rng.randrange(1, 4))
            ]
        rng.shuffle(outer)
        targets.append(
            ("admin export page", "/admin/flights/flight/export/?" + "&".join(outer), True)
        )
    return targets


def refusal(body: bytes) -> str:
    """What a 400 says, with quoted values blanked so that refusals of one kind count as one:
    a plain-text body's first line, or the admin export page's error note."""
    text = body.decode("utf-8", "replace")
    if note := re.search(r'<p class="errornote">(.*?)</p>', text, re.S):
        text = html.unescape(note.group(1))
    elif "<html" in text.lower():  # a server's own error page (nginx, gunicorn)
        text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    return re.sub(r"'[^']*'|\"[^\"]*\"|“[^”]*”", "'…'", text)[:120]


def attack_fuzz(srv: Servers, rng: random.Random, counts: dict) -> dict:
    port = srv.nginx.port
    cookie = staff_session(port)
    targets = fuzz_targets(rng, counts)
    watch = LogWatch(srv)
    results: dict[str, dict] = {}
    lock = threading.Lock()

    def run(item):
        family, target, admin = item
        reason = None
        try:
            answer = get(port, target, cap=FUZZ_READ_CAP, headers=cookie if admin else b"")
            status, cut = answer.status, answer.cut
            if status == 400:
                reason = refusal(answer.body)
        except Exception as exc:
            status, cut = f"no answer ({type(exc).__name__})", True
        with lock:
            family_results = results.setdefault(
                family,
                {"requests": 0, "statuses": Counter(), "cut": 0, "500s": [], "cuts": [],
                 "refusals": Counter()},
            )  # fmt: skip
            family_results["requests"] += 1
            family_results["statuses"][str(status)] += 1
            if reason:
                family_results["refusals"][reason] += 1
            if cut:
                family_results["cut"] += 1
                family_results["cuts"].append(f"{status} {target[:300]}")
            if status == 500:
                family_results["500s"].append(target[:300])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, targets))
    left = srv.db.settle()
    for family_results in results.values():
        family_results["refusals"] = dict(family_results["refusals"].most_common())
        family_results["statuses"] = dict(sorted(family_results["statuses"].items()))
        family_results["500s"] = family_results["500s"][:20]
        family_results["cuts"] = family_results["cuts"][:20]
    return {"families": results, "leaks": len(left), "log": watch.counts()}


# --- attack: bad command lines ----------------------------------------------------------------


def cli_cases(tmp: Path) -> list[tuple[str, list[str | bytes], int, str]]:
    """(name, arguments, expected exit status, a fragment of the expected message) of every
    bad invocation of streamexport: each is otherwise valid, so the message must be about
    what is wrong in it."""
    model = ["flights.Flight", "--fields", "id,carrier__name,tailnum", "--no-progress"]
    narrow = ["--filter", "month=1", "--filter", "carrier=HA"]
    out = ["-o", "/dev/null"]
    m, o = model, out

    def bad_filter(text: str | bytes) -> list[str | bytes]:
        return [*m, *o, *narrow, b"--filter" if isinstance(text, bytes) else "--filter", text]

    return [
        ("--database unknown", [*m, *o, "--database", "nope"], 1, "nope"),
        ("--database in capitals", [*m, *o, "--database", "DEFAULT"], 1, "DEFAULT"),
        ("--database with a space", [*m, *o, "--database", "de fault"], 1, "de fault"),
        ("-o in a missing directory", [*m, *narrow, "-o", str(tmp / "missing" / "x.csv")], 1,
         "missing"),
        ("-o a directory", [*m, *narrow, "-o", str(tmp)], 1, "directory"),
        ("-o empty", [*m, *narrow, "-o", ""], 1, "--output is empty"),
        ("-o /proc/version", [*m, *narrow, "-o", "/proc/version"], 1, "/proc/version"),
        ("-o /proc", [*m, *narrow, "-o", "/proc"], 1, "directory"),
        ("-o under a file", [*m, *narrow, "-o", "/etc/hostname/x.csv"], 1, "/etc/hostname"),
        ("-o a name too long", [*m, *narrow, "-o", str(tmp / ("x" * 300))], 1, "too long"),
        ("--filter without =", bad_filter("month"), 1, "Malformed --filter"),
        ("--filter empty", bad_filter(""), 1, "Malformed --filter"),
        ("--filter =1", bad_filter("=1"), 1, "Malformed --filter"),
        ("--filter unknown field", bad_filter("nope=1"), 1, "nope"),
        ("--filter unknown lookup", bad_filter("month__nope=1"), 1, "nope"),
        ("--filter month=abc", bad_filter("month=abc"), 1, "abc"),
        ("--filter month=1.5", bad_filter("month=1.5"), 1, "1.5"),
        ("--filter id__range=1", bad_filter("id__range=1"), 1, "__range takes two values"),
        ("--filter id__range=1,2,3", bad_filter("id__range=1,2,3"), 1, "__range takes two"),
        ("--filter id__range=a,b", bad_filter("id__range=a,b"), 1, "'a'"),
        ("--filter id__in=a,b", bad_filter("id__in=a,b"), 1, "'a'"),
        ("--filter id__isnull=maybe", bad_filter("id__isnull=maybe"), 1, "true or false"),
        ("--filter tailnum__regex=(", bad_filter("tailnum__regex=("), 1, "regular expression"),
        ("--filter tailnum__regex=[", bad_filter("tailnum__regex=["), 1, "regular expression"),
        ("--filter time_hour__year__gt=99999", bad_filter("time_hour__year__gt=99999"), 1,
         "out of range"),
        ("--filter time_hour=yesterday", bad_filter("time_hour=yesterday"), 1, "yesterday"),
        ("--filter time_hour__date=2013-13-45", bad_filter("time_hour__date=2013-13-45"), 1,
         "2013-13-45"),
        ("--filter time_hour__iso_year=99999", bad_filter("time_hour__iso_year=99999"), 1,
         "out of range"),
        ("--filter carrier__name__gt=<not UTF-8>", bad_filter(b"carrier__name__gt=\xff\xfe"), 1,
         "not text in the locale's encoding"),
        ("--filter origin=<UTF-8 of a surrogate>", bad_filter(b"origin=\xed\xa0\x80"), 1,
         "not text in the locale's encoding"),
        ("--filter password=1 (no such field)", bad_filter("password=1"), 1, "password"),
        ("--fields unknown", ["flights.Flight", *o, "--fields", "nope"], 1, "no field named"),
        ("--fields empty", ["flights.Flight", *o, "--fields", ""], 1, "--fields"),
        ("--fields ,", ["flights.Flight", *o, "--fields", ","], 1, "--fields names no field"),
        ("--fields a reverse relation", ["flights.Flight", *o, "--fields", "id,carrier__flights"],
         1, "to-many"),
        ("--fields too deep", ["flights.Flight", *o, "--fields", "carrier__name__nope"], 1,
         "carrier__name__nope"),
        ("--fields a private attribute", ["flights.Flight", *o, "--fields", "_state"], 1,
         "no field named '_state'"),
        ("--format unknown", [*m, *o, "--format", "docx"], 1, "docx"),
        ("--format empty", [*m, *o, *narrow, "--format", ""], 1, "format"),
        ("--format with a space", [*m, *o, "--format", "c sv"], 1, "c sv"),
        ("unknown model", ["flights.Nope", "--fields", "id", *o], 1, "Nope"),
        ("unknown app", ["nope.Flight", "--fields", "id", *o], 1, "nope"),
        ("model without app", ["Flight", "--fields", "id", *o], 1, "Flight"),
        ("model empty", ["", "--fields", "id", *o], 1, "Name a model"),
        ("no model and no --view", [*o], 1, "Name a model"),
        ("--view unknown module", ["--view", "nope.views.Export", *o], 1, "No module named"),
        ("--view unknown class", ["--view", "flights.views.Nope", *o], 1, "Nope"),
        ("--view not a view", ["--view", "flights.views.FlightFilter", *o], 1,
         "is not an export view"),
        ("--view a module", ["--view", "flights", *o], 1, "Cannot import the view"),
        ("--view and a model", ["flights.Flight", "--view", "flights.views.FlightExport", *o], 1,
         "not both"),
        ("--user without --background", [*m, *o, "--user", "viewer"], 1,
         "--user goes with --background"),
        ("--background without --user", [*m, "--background"], 1, "--user"),
        ("--background --user unknown", [*m, "--background", "--user", "nobody"], 1, "nobody"),
        ("--background with -o", [*m, *o, "--background", "--user", "demo"], 1, "--output"),
        ("--mode keyset with a bad filter", [*m, *o, "--mode", "keyset", "--filter", "id__gt=x"],
         1, "'x'"),
        ("--mode bogus (argparse)", [*m, *o, "--mode", "bogus"], 2, "invalid choice"),
        ("unknown option (argparse)", [*m, *o, "--nope"], 2, "unrecognized arguments"),
    ]  # fmt: skip


def run_cli(name: str, args: list, expected: int, fragment: str = "") -> dict:
    done = manage("streamexport", *args, timeout=300)
    stderr = done.stderr.decode("utf-8", "replace")
    message = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    ok = (
        done.returncode == expected
        and bool(message)
        and fragment.lower() in message.lower()
        and "Traceback" not in stderr
    )
    return {
        "name": name,
        "exit": done.returncode,
        "expected": expected,
        "expected_message": fragment,
        "traceback": "Traceback" in stderr,
        "message": message[:300],
        "ok": ok,
    }


def broken_pipe(url: str) -> dict:
    """``streamexport | head -c 100`` on all the flights: exit 0, nothing on stderr but log
    lines."""
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    script = (
        f'"{sys.executable}" "{ROOT}/example_project/manage.py" streamexport '
        '--view flights.views.FlightExport --no-progress 2>"$ERR" | head -c 100 >/dev/null; '
        'exit "${PIPESTATUS[0]}"'
    )
    with tempfile.NamedTemporaryFile() as err:
        done = subprocess.run(["bash", "-c", script], env={**env, "ERR": err.name}, timeout=300)
        stderr = Path(err.name).read_text(errors="replace")
    return {
        "name": "| head -c 100 (broken pipe)",
        "exit": done.returncode,
        "expected": 0,
        "traceback": "Traceback" in stderr,
        "message": stderr.strip()[:300],
        # The example project logs the library's INFO lines to stderr ("Export ...
        # disconnected"); anything else there (BrokenPipeError, "Exception ignored") is not quiet.
        "ok": done.returncode == 0 and not noise(stderr),
    }


def noise(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not the example project's INFO log lines."""
    return [line for line in stderr.splitlines() if line.strip() and " INFO " not in line]


def attack_cli(srv: Servers, rng: random.Random, counts: dict, work: Path, quick: bool) -> dict:
    tmp = work / "cli"
    tmp.mkdir()
    cases = cli_cases(tmp)
    if quick:
        cases = rng.sample(cases, 8)
    fuzz = []
    lookups = [
        "tailnum",
        "tailnum__regex",
        "carrier__name__icontains",
        "time_hour__date",
        "dep_delay__gte",
        "distance__in",
        "id__range",
        "time_hour__year__gt",
        "dest_faa__gt",
    ]
    for _ in range(counts["cli_fuzz"]):
        value = fuzz_text(rng).replace("\x00", "")
        raw = f"{rng.choice(lookups)}={value}".encode("utf-8", "surrogatepass")
        if rng.random() < 0.2:
            raw += b"\xff"
        fuzz.append(
            (
                f"--filter {raw[:60]!r}",
                [
                    "flights.Flight",
                    "--fields",
                    "id,tailnum",
                    "-o",
                    "/dev/null",
                    "--no-progress",
                    "--filter",
                    "month=1",
                    "--filter",
                    "carrier=HA",
                    b"--filter",
                    raw,
                ],
                -1,
            )
        )
    with ThreadPoolExecutor(2) as pool:
        bad = list(pool.map(lambda case: run_cli(*case), cases))
        fuzzed = list(pool.map(lambda case: run_cli(*case), fuzz))
    for result in fuzzed:  # exit 0 (the filter is valid) or 1 (refused), never a traceback
        result["ok"] = result["exit"] in (0, 1) and not result["traceback"]
        result["expected"] = "0 or 1"
    piped = broken_pipe(database_url())
    return {
        "bad_invocations": len(bad),
        "bad_ok": sum(r["ok"] for r in bad),
        "fuzzed_filters": len(fuzzed),
        "fuzzed_ok": sum(r["ok"] for r in fuzzed),
        "exit_statuses": dict(Counter(str(r["exit"]) for r in bad)),
        "fuzzed_exit_statuses": dict(Counter(str(r["exit"]) for r in fuzzed)),
        "tracebacks": sum(r["traceback"] for r in [*bad, *fuzzed, piped]),
        "broken_pipe": piped,
        "failures": [r for r in [*bad, *fuzzed, piped] if not r["ok"]],
        "cases": bad + fuzzed,
    }


# --- the run and the summary ------------------------------------------------------------------


def defects(report: dict) -> list[str]:
    found = []
    d = report.get("disconnects")
    if d and (
        d["leaks"] or not d["next_export_ok"] or d["log"]["tracebacks"] or d["client_errors"]
    ):
        found.append(
            f"disconnects: {d['leaks']} leaks, {d['log']['tracebacks']} tracebacks, "
            f"{len(d['client_errors'])} client errors, next export ok: {d['next_export_ok']}"
        )
    for name, kind in report.get("faults", {}).get("kinds", {}).items():
        if (
            kind["visible"] != kind["trials"]
            or kind["leaks"]
            or kind["next_export_ok"] != kind["trials"]
        ):
            found.append(f"faults/{name}: {kind}")
    f = report.get("fuzz", {"families": {}, "leaks": 0, "log": {}})
    for family, r in f["families"].items():
        if r["500s"] or r["cut"]:
            found.append(f"fuzz/{family}: {len(r['500s'])} x 500, {r['cut']} cut")
        if family.startswith("known") and set(r["statuses"]) != {"400"}:
            found.append(f"fuzz/{family}: {r['statuses']}")
    if f["leaks"] or f["log"].get("error_lines") or f["log"].get("tracebacks"):
        found.append(f"fuzz: {f['leaks']} leaks, log {f['log']}")
    c = report.get("cli")
    if c and c["failures"]:
        found.append(f"cli: {len(c['failures'])} failures: {[r['name'] for r in c['failures']]}")
    return found


def summary(report: dict) -> str:
    rows = [("attack", "count", "outcome", "defects")]
    if d := report.get("disconnects"):
        paths = ", ".join(f"{n} {p}" for p, n in d["per_path"].items())
        rows.append(
            (
                "client disconnects",
                str(d["disconnects"]),
                f"{paths}; sessions before {d['sessions_before']}, after {d['sessions_after']} "
                f"(PgBouncer's pool {d['pooled_after']}); next export ok: {d['next_export_ok']}",
                f"{d['leaks']} leaks, {d['log']['tracebacks']} tracebacks",
            )
        )
    for name, kind in report.get("faults", {}).get("kinds", {}).items():
        statuses = ", ".join(f"{v} x {k}" for k, v in kind["statuses"].items())
        records = ", ".join(f"{v} x {k}" for k, v in kind["error_records"].items())
        rows.append(
            (
                name,
                str(kind["trials"]),
                f"visible {kind['visible']}/{kind['trials']} ({statuses}"
                f"{'; records: ' + records if records else ''}); "
                f"next export ok {kind['next_export_ok']}",
                f"{kind['trials'] - kind['visible']} hidden, {kind['leaks']} leaks, "
                f"{kind['harness_errors']} not injected",
            )
        )
    if f := report.get("fuzz"):
        for family, r in f["families"].items():
            statuses = ", ".join(f"{v} x {k}" for k, v in r["statuses"].items())
            rows.append(
                (
                    f"fuzz: {family}",
                    str(r["requests"]),
                    statuses,
                    f"{len(r['500s'])} x 500, {r['cut']} cut",
                )
            )
        rows.append(
            (
                "fuzz: server log",
                "",
                f"{f['leaks']} sessions left",
                f"{f['log']['error_lines']} ERROR lines, {f['log']['tracebacks']} tracebacks",
            )
        )
    if c := report.get("cli"):
        rows.append(
            (
                "streamexport: bad invocations",
                str(c["bad_invocations"]),
                f"{c['bad_ok']} exit as expected with the expected message; "
                f"exits {c['exit_statuses']}",
                f"{c['bad_invocations'] - c['bad_ok']} wrong, {c['tracebacks']} tracebacks",
            )
        )
        if c["fuzzed_filters"]:
            rows.append(
                (
                    "streamexport: fuzzed --filter",
                    str(c["fuzzed_filters"]),
                    f"{c['fuzzed_ok']} exit 0/1 without traceback; "
                    f"exits {c['fuzzed_exit_statuses']}",
                    f"{c['fuzzed_filters'] - c['fuzzed_ok']} wrong",
                )
            )
        p = c["broken_pipe"]
        rows.append(
            (
                "streamexport | head -c 100",
                "1",
                f"exit {p['exit']}, stderr {p['message']!r}",
                "0" if p["ok"] else "1",
            )
        )
    widths = [min(60, max(len(r[i]) for r in rows)) for i in range(4)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Attack the example project on real servers; see the module docstring."
    )
    parser.add_argument("--quick", action="store_true", help="small counts (the smoke test)")
    parser.add_argument("--seed", type=int, default=15, help="random seed (default 15)")
    parser.add_argument(
        "--json", type=Path, help="write the report here (default: --logs/attack.json)"
    )
    parser.add_argument("--logs", type=Path, default=ROOT / "var" / "attack", help="server logs")
    parser.add_argument(
        "--only",
        action="append",
        choices=ATTACKS,
        help="run only this attack (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    only = args.only or ATTACKS
    counts = QUICK if args.quick else FULL

    def rng(attack: str) -> random.Random:
        # One generator per attack, so an attack's trials do not depend on which ran before.
        return random.Random(f"{args.seed}-{attack}")

    args.logs.mkdir(parents=True, exist_ok=True)
    json_path = args.json or args.logs / "attack.json"
    started = time.monotonic()
    report: dict[str, Any] = {"seed": args.seed, "quick": args.quick, "counts": counts}
    with contextlib.ExitStack() as stack:
        stack.callback(log, "stopped every server")
        work = Path(tempfile.mkdtemp(prefix="streamexport-attack-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        try:
            srv = stack.enter_context(start_servers(stack, work, args.logs, counts["flights"]))
        except Exception as exc:
            log(f"set-up failed: {exc}")
            return 2
        report["flights"] = srv.rows
        report["postgresql"] = srv.cluster.bindir.parent.name
        if "disconnects" in only:
            log(f"disconnects: {counts['disconnects']} clients hang up mid-transfer")
            report["disconnects"] = attack_disconnects(
                srv, rng("disconnects"), counts["disconnects"]
            )
        if "faults" in only:
            log("faults: terminate, restart, statement and idle timeouts, row limit")
            report["faults"] = attack_faults(srv, counts)
        if "fuzz" in only:
            log("fuzz: public export views and the admin export page")
            report["fuzz"] = attack_fuzz(srv, rng("fuzz"), counts)
        if "cli" in only:
            log("cli: bad invocations of manage.py streamexport")
            report["cli"] = attack_cli(srv, rng("cli"), counts, work, args.quick)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["defects"] = defects(report)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print()
    print(summary(report))
    print()
    print(f"{len(report['defects'])} defects; report: {json_path}; logs: {args.logs}/")
    for defect in report["defects"]:
        print(f"  DEFECT {defect}")
    return 1 if report["defects"] else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        sys.exit(main())
    sys.exit(130)
