"""The ``streamexport`` management command, in process and as a subprocess writing to a pipe."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import body, make_records, parse_csv, parse_ndjson
from tests.servers import PYTHONPATH
from tests.testapp.models import Record

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db(transaction=True)


def test_writes_the_filtered_fields_to_a_file(tmp_path):
    records = make_records("default")
    target = tmp_path / "records.csv"
    call_command(
        "streamexport",
        "testapp.Record",
        "--format=csv",
        "--fields=id,title,author__name",
        "--filter=status=p",
        f"--output={target}",
        verbosity=0,
    )
    rows = parse_csv(target.read_bytes())
    assert rows[0] == ["ID", "Record title", "Author name"]
    expected = [r for r in records if r.status == "p"]
    assert [int(row[0]) for row in rows[1:]] == [r.id for r in expected]
    assert not (tmp_path / "records.csv.part").exists()


def test_in_and_isnull_filters(tmp_path):
    records = make_records("default")
    wanted = [records[1].id, records[4].id]
    out = io.StringIO()
    call_command(
        "streamexport",
        "testapp.Record",
        "--format=ndjson",
        "--fields=id,count",
        f"--filter=id__in={wanted[0]},{wanted[1]}",
        "--filter=count__isnull=false",
        stdout=out,
    )
    lines = parse_ndjson(out.getvalue().encode())
    rows = [line for line in lines if "id" in line]
    expected = [r for r in records if r.id in wanted and r.count is not None]
    assert [(row["id"], row["count"]) for row in rows] == [(r.id, r.count) for r in expected]


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_view_option_gives_the_same_bytes_as_the_web(client, tmp_path, fmt):
    make_records("default")
    web = body(client.get(f"/records/export/?format={fmt}"))
    target = tmp_path / f"records.{fmt}"
    call_command(
        "streamexport",
        "--view=tests.testapp.views.RecordExport",
        f"--format={fmt}",
        f"--output={target}",
        verbosity=0,
    )
    assert target.read_bytes() == web
    assert len(web) > 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["testapp.Nope", "--fields=id"], "Unknown model 'testapp.Nope'"),
        (["nodot", "--fields=id"], "Unknown model 'nodot'"),
        (["testapp.Record", "--fields=id,nope"], "Cannot export 'nope'"),
        (["testapp.Record", "--fields=id", "--filter=status"], "Malformed --filter 'status'"),
        (["testapp.Record", "--fields=id", "--filter=nope=1"], "Invalid --filter"),
        (["testapp.Record", "--fields=id", "--filter=count=abc"], "Invalid --filter"),
        (["testapp.Record", "--fields=id", "--filter=day=notadate"], "Invalid --filter"),
        (["testapp.Record", "--fields=id", "--format=xls"], "Unknown export format 'xls'"),
        (["testapp.Record"], "--fields is required"),
        ([], "Name a model"),
        (["--view=tests.testapp.views.Nope"], "Cannot import the view"),
        (["--view=tests.testapp.models.Record"], "is not a StreamingExportMixin"),
        (["testapp.Record", "--view=tests.testapp.views.RecordExport"], "not both"),
    ],
)
def test_bad_input_is_a_command_error(args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(".", r"\.")):
        call_command("streamexport", *args, stdout=io.StringIO())


def test_progress_reports_rows_and_megabytes_per_second(capsys, tmp_path):
    make_records("default", count=50)
    call_command(
        "streamexport",
        "testapp.Record",
        "--fields=id,title",
        f"--output={tmp_path / 'x.csv'}",
        "--progress",
        verbosity=0,
    )
    err = capsys.readouterr().err
    assert re.search(r"\b50(\.0)? rows \[", err), err
    assert "MB/s" in err


#: The environment of a ``python -m django`` subprocess on the test database.
ENV = {
    **os.environ,
    "PYTHONPATH": PYTHONPATH,
    "DJANGO_SETTINGS_MODULE": "tests.asgi_project.settings",
}
COMMAND = [sys.executable, "-m", "django", "streamexport"]


def _run(*args: str | bytes, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("stdout", subprocess.PIPE)  # pipes, not terminals
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([*COMMAND, *args], cwd=ROOT, env=ENV, timeout=120, **kwargs)


def test_subprocess_writes_to_a_pipe_without_progress_bar():
    records = make_records("default", count=3000)
    result = _run("testapp.Record", "--format=csv", "--fields=id,title")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    rows = parse_csv(result.stdout)
    assert rows[1:] == [[str(r.id), r.title] for r in records]


def test_subprocess_bad_input_exits_non_zero_with_the_message():
    result = _run("testapp.Nope", "--fields=id")
    assert result.returncode != 0
    assert b"Unknown model 'testapp.Nope'" in result.stderr
    assert result.stdout == b""
    assert Record.objects.count() == 0


def test_keyset_mode_gives_the_same_file(tmp_path):
    make_records("default", count=120)
    outputs = []
    for mode in ("cursor", "keyset"):
        target = tmp_path / f"{mode}.csv"
        call_command(
            "streamexport",
            "--view=tests.testapp.views.RecordExport",
            f"--mode={mode}",
            f"--output={target}",
            verbosity=0,
        )
        outputs.append(target.read_bytes())
    assert outputs[0] == outputs[1]
    assert len(parse_csv(outputs[0])) == 121


def test_a_repeated_filter_applies_every_value(tmp_path):
    """Two --filter with the same lookup are both applied (AND), not the last one only."""
    make_records("default")
    target = tmp_path / "both.csv"
    call_command(
        "streamexport",
        "testapp.Record",
        "--fields=id,count",
        "--filter=count__gte=2000",
        "--filter=count__gte=-10000",  # dict() of the filters kept only this one
        f"--output={target}",
        verbosity=0,
    )
    ids = [int(row[0]) for row in parse_csv(target.read_bytes())[1:]]
    expected = list(
        Record.objects.filter(count__gte=2000).order_by("pk").values_list("id", flat=True)
    )
    assert expected  # the second filter narrows the first
    assert sorted(ids) == expected


class BinaryOut(io.BytesIO):
    """A stdout whose bytes go to ``buffer``, as sys.stdout's do."""

    def __init__(self):
        super().__init__()
        self.buffer = self

    def write(self, data):  # a text write would raise: bytes only
        assert isinstance(data, (bytes, bytearray, memoryview)), type(data)
        return super().write(data)


def test_stdout_gets_bytes_through_its_buffer_and_text_streams_get_text():
    make_records("default")
    binary = BinaryOut()
    call_command("streamexport", "testapp.Record", "--fields=id,title", stdout=binary)
    text = io.StringIO()
    call_command("streamexport", "testapp.Record", "--fields=id,title", stdout=text)
    assert binary.getvalue() == text.getvalue().encode()
    assert len(parse_csv(binary.getvalue())) == Record.objects.count() + 1


# --- where --output writes -------------------------------------------------------------------


def _rows(records) -> list[list[str]]:
    """The CSV rows of ``--fields=id,title`` (``make_records(count=...)`` has no formulas)."""
    return [[str(r.id), r.title] for r in records]


def test_a_fifo_is_written_straight_to_its_reader(tmp_path):
    """Renaming a file over the FIFO would leave its reader waiting for a writer forever."""
    records = make_records("default", count=3000)  # more than a pipe holds
    fifo = tmp_path / "records.csv"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        call_command(
            "streamexport", "testapp.Record", "--fields=id,title", f"-o{fifo}", verbosity=0
        )
        received, _ = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert parse_csv(received)[1:] == _rows(records)
    assert [path.name for path in tmp_path.iterdir()] == ["records.csv"]


def test_a_device_is_written_straight_not_replaced(tmp_path):
    make_records("default")
    device = tmp_path / "null"
    try:  # a character device with /dev/null's numbers (needs root, CAP_MKNOD)
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs root")
    call_command("streamexport", "testapp.Record", "--fields=id,title", f"-o{device}", verbosity=0)
    status = device.lstat()
    assert stat.S_ISCHR(status.st_mode)
    assert status.st_rdev == os.makedev(1, 3)
    assert [path.name for path in tmp_path.iterdir()] == ["null"]


def test_a_symlink_is_followed_and_its_target_replaced(tmp_path):
    records = make_records("default", count=50)
    (tmp_path / "data").mkdir()
    (tmp_path / "links").mkdir()
    target = tmp_path / "data" / "records.csv"
    target.write_bytes(b"old\n")
    target.chmod(0o640)
    link = tmp_path / "links" / "records.csv"
    link.symlink_to("../data/records.csv")
    dangling = tmp_path / "links" / "new.csv"
    dangling.symlink_to("../data/new.csv")
    for output in (link, dangling):
        call_command(
            "streamexport", "testapp.Record", "--fields=id,title", f"-o{output}", verbosity=0
        )
    assert os.readlink(link) == "../data/records.csv"
    assert os.readlink(dangling) == "../data/new.csv"
    assert parse_csv(target.read_bytes())[1:] == _rows(records)
    assert parse_csv((tmp_path / "data" / "new.csv").read_bytes())[1:] == _rows(records)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the file's permissions are kept
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["new.csv", "records.csv"]


@pytest.mark.parametrize("name", ["/dev/stdout", "/dev/fd/1"])
def test_dev_stdout_is_written_where_stdout_goes(tmp_path, name):
    """To a pipe, and to a file opened for appending (``>>``): after what it holds."""
    records = make_records("default", count=50)
    piped = _run("testapp.Record", "--fields=id,title", "-o", name, "-v0")
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == b""
    assert parse_csv(piped.stdout)[1:] == _rows(records)
    appended = tmp_path / "appended.csv"
    appended.write_bytes(b"before\n")
    with open(appended, "ab") as stdout:
        result = _run("testapp.Record", "--fields=id,title", "-o", name, "-v0", stdout=stdout)
    assert result.returncode == 0, result.stderr
    data = appended.read_bytes()
    assert data.startswith(b"before\n")
    assert parse_csv(data[len(b"before\n") :])[1:] == _rows(records)
