"""``manage.py streamexport_deploy``: the deployment templates, written from the package.

The package's ``deploy_templates`` directory is the one copy of the files; the repository's
``deploy/`` links to it, so the files the end-to-end tests run (tests/test_deploy.py) are the
files the command writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from django_streamexport.management.commands.streamexport_deploy import TEMPLATES
from tests.servers import PYTHONPATH

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PACKAGE_TEMPLATES = ROOT / "django_streamexport" / "deploy_templates"


def _files(directory: Path) -> list[str]:
    """Relative paths of the files under ``directory``, without documentation and caches."""
    return sorted(
        path.relative_to(directory).as_posix()
        for path in directory.rglob("*")
        if path.is_file() and path.suffix != ".md" and "__pycache__" not in path.parts
    )


def test_deploy_directory_and_package_hold_the_same_files():
    assert _files(DEPLOY) == sorted(TEMPLATES)
    assert _files(PACKAGE_TEMPLATES) == sorted(TEMPLATES)
    for name in TEMPLATES:
        assert (DEPLOY / name).read_bytes() == (PACKAGE_TEMPLATES / name).read_bytes(), name


def test_writes_every_template_into_a_new_directory(tmp_path, capsys):
    target = tmp_path / "site" / "deploy"
    call_command("streamexport_deploy", str(target))
    assert _files(target) == sorted(TEMPLATES)
    for name in TEMPLATES:
        assert (target / name).read_bytes() == (DEPLOY / name).read_bytes(), name
    out = capsys.readouterr().out
    for name in TEMPLATES:
        assert f"Wrote {target / name}" in out
    assert f"gunicorn -c {target / 'gunicorn.conf.py'}" in out


def test_refuses_to_overwrite_and_writes_nothing(tmp_path):
    (tmp_path / "nginx").mkdir()
    mine = tmp_path / "nginx" / "streamexport.conf"
    mine.write_text("# my site\n")
    with pytest.raises(CommandError, match=r"Not overwriting .*streamexport\.conf.*--force"):
        call_command("streamexport_deploy", str(tmp_path), verbosity=0)
    assert mine.read_text() == "# my site\n"
    assert _files(tmp_path) == ["nginx/streamexport.conf"]


def test_force_overwrites(tmp_path):
    call_command("streamexport_deploy", str(tmp_path), verbosity=0)
    (tmp_path / "gunicorn.conf.py").write_text("workers = 1\n")
    call_command("streamexport_deploy", str(tmp_path), "--force", verbosity=0)
    assert (tmp_path / "gunicorn.conf.py").read_bytes() == (
        DEPLOY / "gunicorn.conf.py"
    ).read_bytes()


def test_a_file_as_directory_is_a_command_error(tmp_path):
    path = tmp_path / "deploy"
    path.write_text("not a directory")
    with pytest.raises(CommandError, match="exists and is not a directory"):
        call_command("streamexport_deploy", str(path), verbosity=0)
    with pytest.raises(CommandError, match=r"Cannot write .*deploy"):
        call_command("streamexport_deploy", str(path / "sub"), verbosity=0)


def test_a_template_path_taken_by_a_directory_is_a_command_error(tmp_path):
    (tmp_path / "gunicorn.conf.py").mkdir()
    with pytest.raises(CommandError, match=r"Cannot write .*gunicorn\.conf\.py"):
        call_command("streamexport_deploy", str(tmp_path), "--force", verbosity=0)


def test_bad_directory_on_the_command_line_exits_1_without_a_traceback(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "django", "streamexport_deploy", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": PYTHONPATH, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        timeout=120,
    )
    assert result.returncode == 1
    assert "CommandError: " in result.stderr
    assert "Traceback" not in result.stderr
