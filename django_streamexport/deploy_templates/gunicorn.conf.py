"""gunicorn configuration for serving django-streamexport exports.

Write it into your project (with the nginx and systemd files beside it), then run it::

    python manage.py streamexport_deploy deploy
    gunicorn -c deploy/gunicorn.conf.py yourproject.wsgi:application

(django-streamexport's own example project: ``--chdir example_project config.wsgi:application``.)
The deployment guide that explains these files is deploy/README.md in django-streamexport's
source.

Every setting says why it has its value, and names its primary source: gunicorn's settings
documentation and source (gunicorn/workers/ggevent.py), Django's source, PEP 3333, the psycopg
documentation.

Rules for editing this file:

* Do not import Django, your project or anything that opens sockets here. gunicorn executes this
  file in the master before forking; gevent monkey-patches only later, in each worker's
  ``init_process()``. Whatever this file imports is imported unpatched (``GeventWorker.patch()``,
  called from ``init_process()`` in gunicorn/workers/ggevent.py, is the only
  ``monkey.patch_all()``).
* Environment variables are read here so one file serves development, CI and systemd
  (``EnvironmentFile=`` in deploy/streamexport-gunicorn.service).
"""

import os
import sys


def _env_int(name, default):
    """Return the integer in environment variable ``name``, or ``default`` when unset or empty."""
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _cpu_count():
    """Return the CPUs this process may run on (honours cgroup cpusets and taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- Socket --------------------------------------------------------------------------------

# Loopback by default: nginx on the same host is the only client that should reach gunicorn.
# Put "0.0.0.0:8000" (or a private address) here only when nginx runs on another host, and
# then set FORWARDED_ALLOW_IPS to that host so X-Forwarded-Proto is trusted (gunicorn reads that
# variable itself; its default "127.0.0.1,::1" matches a local nginx).
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")


# --- Worker processes ------------------------------------------------------------------------

# gevent: one greenlet per connection, so a 10-minute export costs one greenlet, not one whole
# process as with the sync worker. Test and document only "gevent", not "gevent_pywsgi", which uses
# gevent's HTTP handler (gunicorn/workers/__init__.py, SUPPORTED_WORKERS) and ignores max_requests
# (benoitc/gunicorn issue #1331).
worker_class = "gevent"

# One worker per CPU, not the usual 2*CPUs+1. That rule of thumb is for sync workers, which sit
# idle while they wait on the database and need spare processes to cover the wait. A gevent
# worker already overlaps its waits across greenlets; what it cannot do is use more than one
# core (the GIL), and turning rows into CSV/JSON is CPU work. So one process per core saturates
# the CPU, and every process beyond that only multiplies the database connections at stake
# (see worker_connections) and the baseline memory. GUNICORN_WORKERS wins, then
# WEB_CONCURRENCY (the variable gunicorn and PaaS platforms use), then the CPU count.
workers = _env_int("GUNICORN_WORKERS", _env_int("WEB_CONCURRENCY", _cpu_count()))

# Greenlets (concurrent connections) per worker, sized against the database, not the network.
# Every streaming export pins one database connection for its whole duration: Django checks it out
# when the query starts and returns it only at request_finished, after the last byte
# (django/http/response.py: close() sends request_finished, on which django/db/__init__.py closes
# the connection; the server calls close() after the last chunk, PEP 3333; connections are per
# thread, so per greenlet, Django docs ref/databases.txt "Persistent connections"; keep
# CONN_MAX_AGE = 0: a greenlet's kept connection is never reused by another client, and the
# deployment guide says what piles up otherwise). In the worst case every greenlet is an
# export, so
#     workers * worker_connections  <=  connections this app may open.
# That budget is PostgreSQL's max_connections (default 100) minus superuser_reserved_connections
# (3), migrations, cron jobs, psql sessions and the other app servers behind the same upstream;
# 80 for a single app server is the default here (STREAMEXPORT_DB_CONNECTION_BUDGET). With
# Django's psycopg 3 pool (OPTIONS["pool"]) the budget is the pool's max_size per worker instead.
# When every slot is taken gevent stops accepting and new requests queue in the listen backlog
# (nginx waits) instead of failing with "FATAL: too many clients" mid-request. Idle keep-alive
# connections from nginx also hold a slot each (gunicorn #2585), which is why the nginx
# upstream's "keepalive" is kept small (deploy/nginx/streamexport.conf).
# The gunicorn default, 1000, would let 2 workers open 2000 database connections.
_db_connection_budget = _env_int("STREAMEXPORT_DB_CONNECTION_BUDGET", 80)
worker_connections = _env_int(
    "GUNICORN_WORKER_CONNECTIONS", max(1, _db_connection_budget // workers)
)

# For gevent workers this is a heartbeat, not a request time limit: the worker's main loop
# checks in every second, so exports may run for hours. The arbiter kills a worker only when its
# event loop has not run for this long: a greenlet that never yields. The exports yield between
# chunks (a write that does not block would not), but a database call that waits outside gevent
# does not: with psycopg2 without psycogreen (or SQLite) one query or FETCH that takes longer than
# this, such as a big sort before the first row, gets the worker killed (gunicorn docs, setting
# "timeout"; psycopg2 docs, "Support for coroutine libraries"; the deployment guide). The arbiter
# logs "WORKER TIMEOUT".
# Killing a worker takes every stream in it down, so do not lower this to "catch slow
# requests"; 30 s (the default) recovers a stuck worker reasonably fast and tolerates long
# CPU-bound stretches such as encoding a big batch.
timeout = _env_int("GUNICORN_TIMEOUT", 30)

# On a restart or stop (HUP, TERM, a systemd reload) each old worker stops accepting and lets
# in-flight requests run for this long, then kills them: exports still running after it are cut,
# and clients see a truncated chunked body (gunicorn docs, setting "graceful_timeout";
# GeventWorker.run() in gunicorn/workers/ggevent.py). Set it to the longest export you promise to
# finish across a deploy. 300 s covers a few million rows to a slow client; on a HUP the new
# workers serve meanwhile, so a long drain does not block traffic, but old and new workers then
# hold database connections at the same time (budget up to twice the above for that window).
# deploy/streamexport-gunicorn.service sets TimeoutStopSec above this value.
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 300)

# Seconds to keep an idle keep-alive connection open, waiting for its next request. nginx keeps
# idle upstream connections for keepalive_timeout (60 s by default); gunicorn must hold them
# longer, so nginx is always the side that closes. If gunicorn closed first, nginx could send a
# request down a connection at the very moment gunicorn closes it and answer 502.
keepalive = 75

# Never recycle workers after N requests: a recycle is a graceful restart of that worker, and every
# export still running after graceful_timeout is cut (gunicorn docs, settings "max_requests" and
# "graceful_timeout"; measured in the deployment guide, "Footguns"). Fix memory leaks instead, or
# accept truncated exports and set a large value with max_requests_jitter.
max_requests = 0
max_requests_jitter = 0

# Load the application in each worker, after gevent has monkey-patched it. With preload the master
# imports Django before any patching, so ssl, threading and locks stay unpatched in every worker
# (MonkeyPatchWarning, hangs, "DatabaseWrapper objects created in a thread can only be used in that
# same thread"; gunicorn patches only in the worker's init_process(), gunicorn/workers/ggevent.py).
# The cost is a slower worker boot, not a memory leak.
preload_app = False

# The heartbeat above is a file whose mtime each worker touches every second. Keep it on tmpfs:
# on a container's overlay /tmp that touch can stall and get healthy workers killed.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# gunicorn >= 25.1 opens a control socket for `gunicornc` by default, at one path per user.
# Two instances started by the same user (the demo next to the test suite, or two sites on one
# host) would unlink each other's socket. Opt in with a path of its own per instance.
if os.environ.get("GUNICORN_CONTROL_SOCKET"):
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]
else:
    control_socket_disable = True

# Shown in ps/top, so the export workers are easy to tell apart from other Python processes.
proc_name = "streamexport"


# Parquet exports (pyarrow): allocate Arrow memory with malloc, not pyarrow's bundled mimalloc
# or jemalloc. pyarrow's Parquet writer takes its encoders' and pages' memory from the default
# pool whatever pool it is given (pyarrow passes its memory_pool to the Arrow side only), and
# mimalloc keeps freed pages for reuse: a 1M-row export then grew the worker by about 27 MB,
# 17 MB with malloc, in the same time (docs/performance.md). pyarrow reads this variable once,
# when it first needs the default pool (Arrow docs, "Memory Management", "Default memory pool"),
# so it is set here in the master and inherited by every worker; a value already in the
# environment wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


# --- Logging ---------------------------------------------------------------------------------

# Access log to stdout and error log to stderr ("-" means each stream). Under systemd both go to
# the journal, in a container both go to the container log: no log files to rotate.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")

# The default format plus the duration in milliseconds (%(M)s). For a stream the entry is
# written after the last byte, so the duration is the whole export and %(b)s is its size.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s %(M)sms "%(f)s" "%(a)s"'


# --- Hooks -----------------------------------------------------------------------------------


def post_fork(server, worker):
    """Make psycopg2 cooperate with gevent in this worker, before any connection is opened.

    psycopg2's libpq calls block in C, where monkey-patching cannot reach: without a wait callback
    one slow query freezes every greenlet in the worker, and a query longer than ``timeout`` gets
    the whole worker killed (psycopg2 docs, "Support for coroutine libraries"; gunicorn docs,
    setting ``timeout``). psycogreen registers that callback
    (``psycopg2.extensions.set_wait_callback``). psycopg 3, which Django prefers when both drivers
    are installed, cooperates on its own and ignores the callback (psycopg docs, "Gevent support",
    from 3.1.14; ``django/db/backends/postgresql/psycopg_any.py`` tries ``import psycopg`` first).

    Runs in the new worker process right after the fork, before the worker monkey-patches and
    loads the application, so no connection can exist yet. The order relative to gevent's
    ``patch_all()`` does not matter: the callback waits with ``gevent.socket.wait_read`` /
    ``wait_write``, which are gevent's own functions, and importing psycopg2 imports nothing
    that gevent patches. A ``GeventWorker`` subclass overriding ``patch()`` would work as well,
    but it would be silently lost whenever someone starts gunicorn with ``-k gevent``; this hook
    travels with the config file.

    ``STREAMEXPORT_NO_PSYCOGREEN=1`` skips the patch. It exists so a test can show what breaks
    without it (a concurrent request stalls behind a slow psycopg2 query); never set it in
    production.
    """
    # Only gevent workers have a hub to yield to; this avoids importing gevent otherwise.
    ggevent = sys.modules.get("gunicorn.workers.ggevent")
    if ggevent is None or not isinstance(worker, ggevent.GeventWorker):
        return
    if os.environ.get("STREAMEXPORT_NO_PSYCOGREEN") == "1":
        worker.log.warning(
            "psycogreen: skipped (STREAMEXPORT_NO_PSYCOGREEN=1); psycopg2 queries will block "
            "this worker's event loop (pid %s)",
            worker.pid,
        )
        return
    try:
        import psycopg2  # noqa: F401  (only to learn whether the driver is installed)
    except ImportError:
        return  # psycopg 3 only (or another database): nothing to patch.
    try:
        from psycogreen.gevent import patch_psycopg
    except ImportError:
        worker.log.error(
            "psycogreen: psycopg2 is installed but psycogreen is not; psycopg2 queries will "
            "block this worker's event loop (pid %s). Install django-streamexport[serve].",
            worker.pid,
        )
        return
    patch_psycopg()
    worker.log.info("psycogreen: psycopg2 wait callback installed (pid %s)", worker.pid)


def post_worker_init(worker):
    """Import the export formats, and pyarrow, in each worker at start.

    The format classes of ``STREAMEXPORT_FORMATS`` are imported at the first export
    otherwise (``django_streamexport.formats.default_format_classes()``, cached per process):
    about 10 ms of the first export's first byte on each worker, measured on a 2-core
    machine (docs/performance.md, "First byte and first row").

    pyarrow is imported at the first Parquet export otherwise, and stays: importing it and
    running its Parquet writer once costs about 46 MB of RSS per worker (pyarrow 26: 40 MB of
    modules and libraries, 6 MB of the writer's code paged in), which the first export would
    add on top of its own memory. Paying it here, once, when the worker starts keeps an
    export's growth to its row group's (docs/performance.md) and its first byte free of a
    0.4 s import. ``django_streamexport.formats.parquet.preload()`` writes a two-row file of
    every column type into nothing. Runs in the worker after the application is loaded
    (gunicorn docs, server hook ``post_worker_init``), so Django is set up.

    pyarrow is skipped when it is not installed (no Parquet exports), or with
    ``STREAMEXPORT_PRELOAD_PYARROW=0`` (a project that installs pyarrow but offers no
    Parquet export).
    """
    import importlib.util

    from django.core.exceptions import ImproperlyConfigured

    from django_streamexport.formats import default_format_classes

    try:
        default_format_classes()
    except ImproperlyConfigured as exc:
        # A bad STREAMEXPORT_FORMATS breaks exports (check E004 says so), not the worker.
        worker.log.error("streamexport: export formats not preloaded: %s", exc)
    if os.environ.get("STREAMEXPORT_PRELOAD_PYARROW") == "0":
        return
    if importlib.util.find_spec("pyarrow") is None:
        return
    from django_streamexport.formats.parquet import preload

    preload()
