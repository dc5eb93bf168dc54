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
from django.db import connection

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
        (["--view=tests.testapp.models.Record"], "is not an export view"),
        (["testapp.Record", "--view=tests.testapp.views.RecordExport"], "not both"),
        (["--view=django_streamexport.views.StreamingExportMixin"], "is not an export view"),
        (["--view=django_streamexport.views.StreamingExportView"], "missing a queryset"),
        (
            ["testapp.Record", "--fields=id", "--database=nosuchdb"],
            "'nosuchdb' is not in DATABASES",
        ),
        (["testapp.Record", "--fields=id", "--mode=keyset", "--database=nope"], "not in DATABASES"),
        (["testapp.Record", "--fields=id,tags__name"], "follows the to-many relation"),
        (["testapp.Record", "--fields=id,data__x"], "is not a relation"),
        (["testapp.Record", "--fields=,"], "--fields names no field"),
        (["testapp.Record", "--fields=id", "--format=CSV"], "Unknown export format 'CSV'"),
        (["testapp.Record", "--fields=id", "--format=xlsx"], "format is binary"),
        (["testapp.Record", "--fields=id", "--filter==1"], "Malformed --filter '=1'"),
        (["testapp.Record", "--fields=id", "--filter=count__isnull=2"], "__isnull takes true"),
        (["testapp.Record", "--fields=id", "--filter=count__range=1"], "__range takes two values"),
        (["testapp.Record", "--fields=id", "--filter=count__range=1,2,3"], "__range takes two"),
        (["testapp.Record", "--fields=id", "--filter=count__range=,"], "Invalid --filter"),
        (["testapp.Record", "--fields=id", "--filter=count__gt=1.5"], "Invalid --filter"),
        (["testapp.Record", "--fields=id", "--filter=count__nope=1"], "Unsupported lookup 'nope'"),
        (["testapp.Record", "--fields=id", "--filter=title__search=x"], "Unsupported lookup"),
        (["testapp.Record", "--fields=id", "--filter=author__in=1,x"], "Invalid --filter"),
        (["testapp.Record", "--fields=id", "--filter=amount=NaN"], "Invalid --filter"),
        (["testapp.Record", "--fields=id", "--filter=key=nope"], "is not a valid UUID"),
        (["testapp.Record", "--fields=id", "--filter=at=25:00"], "Invalid --filter"),
        (["testapp.Record", "--fields=id", "--filter=day__iso_year=99999"], "out of range"),
        (["flights.Flight", "--fields=id", "--filter=time_hour__year=99999"], "out of range"),
        (["testapp.Record", "--fields=id", "--filter=title=\udcff"], "not text in the locale"),
        # Refused by the database when it plans the query (EXPLAIN), before a byte:
        (["testapp.Record", "--fields=id", "--filter=title__regex=("], "invalid regular exp"),
        (["testapp.Record", "--fields=id", "--filter=author__name__iregex=*"], "invalid regular"),
        (["testapp.Record", "--fields=id", "--mode=keyset", "--filter=title__regex=["], "regular"),
        (["testapp.Record", "--fields=id", "--filter=took=abc"], "invalid input syntax"),
        (["testapp.Record", "--fields=id", "--filter=took__gt=999999999999 days"], "out of range"),
        (["testapp.Record", "--fields=id", "--filter=amount=1e999999999"], "overflows numeric"),
        (["testapp.Record", "--fields=id", "--output="], "--output is empty"),
        (["testapp.Record", "--fields=id", "--output=/nonexistent/x.csv"], "no directory"),
        (["testapp.Record", "--fields=id", "--output=/proc/version"], "Cannot write '/proc/"),
        (["testapp.Record", "--fields=id", "--output=/sys/kernel/x.csv"], "Permission denied"),
        (["testapp.Record", "--fields=id", "--output=/dev/fd/999999"], "Bad file descriptor"),
    ],
)
def test_bad_input_is_a_command_error(args, message):
    with pytest.raises(CommandError, match=re.escape(message)) as caught:
        call_command("streamexport", *args, stdout=io.StringIO())
    assert "\n" not in str(caught.value)  # one line


def test_an_output_directory_is_a_command_error_and_stays_empty(tmp_path):
    for output in (str(tmp_path), f"{tmp_path}/", f"{tmp_path}/missing.csv/"):
        with pytest.raises(CommandError, match="Is a directory"):
            call_command("streamexport", "testapp.Record", "--fields=id", f"--output={output}")
    assert list(tmp_path.iterdir()) == []


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
    # "50 rows [" without a total, "50/<estimate> [" with the planner's estimate.
    assert re.search(r"\b50(\.0)?( rows|/\S+) \[", err), err
    assert "MB/s" in err


def test_progress_has_a_total_from_the_planner_or_an_exact_count(capsys, tmp_path):
    """The bar shows N/TOTAL (a percentage and an ETA): the planner's estimate after
    ANALYZE, or with --count the exact number of rows the filters select."""
    make_records("default", count=120)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE testapp_record")
    common = ["testapp.Record", "--fields=id", f"--output={tmp_path / 'x.csv'}", "--progress"]
    call_command("streamexport", *common, verbosity=0)
    # tqdm's unit_scale writes 60 as "60.0" and 120 as "120".
    assert re.search(r"100%\|.*\| 120(\.0)?/120(\.0)? \[", capsys.readouterr().err)
    call_command("streamexport", *common, "--filter", "status=p", "--count", verbosity=0)
    selected = Record.objects.filter(status="p").count()
    err = capsys.readouterr().err
    assert re.search(rf"100%\|.*\| {selected}(\.0)?/{selected}(\.0)? \[", err), err


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


# --- bad arguments on the command line: one line, exit status 1, no traceback ---------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--database=nosuchdb", "testapp.Record", "--fields=id"], "'nosuchdb' is not in DATA"),
        (["testapp.Record", "--fields=id", "-o", "/nonexistent/x.csv"], "no directory '/nonex"),
        (["testapp.Record", "--fields=id", "-o", ""], "--output is empty"),
        (["testapp.Record", "--fields=id", "-o", "{tmp}"], "Is a directory"),
        (["testapp.Record", "--fields=id", "-o", "/proc/version"], "Cannot write '/proc/version'"),
        (["testapp.Record", "--fields=id", "--filter", "id__range=1"], "__range takes two values"),
        (["testapp.Record", "--fields=id", "--filter", "id__range=1,2,3"], "__range takes two"),
        (["flights.Flight", "--fields=id", "--filter", "time_hour__year=99999"], "out of range"),
        (
            ["flights.Flight", "--fields=id", "--filter", "tailnum__regex=(", "-o", "{tmp}/x.csv"],
            "The database refused the export's query: invalid regular expression",
        ),
        (["testapp.Record", "--fields=id", "--filter=title__regex=("], "invalid regular exp"),
        (["--view=django_streamexport.views.StreamingExportMixin"], "is not an export view"),
        (["testapp.Record", "--fields=id", b"--filter=title=\xff"], "not text in the locale"),
    ],
)
def test_a_bad_invocation_exits_1_with_one_line_and_no_traceback(tmp_path, args, message):
    """Run as a user does: no traceback from Django, from the library's log or at exit."""
    args = [arg.replace("{tmp}", str(tmp_path)) if isinstance(arg, str) else arg for arg in args]
    result = _run(*args)
    errors = result.stderr.decode(errors="replace")
    assert result.returncode == 1, errors
    assert errors.startswith("CommandError: ") and errors.count("\n") == 1, errors
    assert message in errors
    assert result.stdout == b""
    assert list(tmp_path.iterdir()) == []  # no output file, no .part


def test_a_query_failing_at_its_first_fetch_writes_nothing(tmp_path):
    """Planned fine, refused on its first row: a CommandError, and no byte anywhere."""
    make_records("default")
    view = "--view=tests.fault_views.FirstFetchFailsExport"
    with pytest.raises(CommandError, match=r"^The export failed after 0 rows: division by zero$"):
        call_command("streamexport", view, f"--output={tmp_path / 'x.csv'}")
    assert list(tmp_path.iterdir()) == []
    out = BinaryOut()
    with pytest.raises(CommandError, match="division by zero"):
        call_command("streamexport", view, stdout=out)
    assert out.getvalue() == b""  # not a CSV header that looks like an export of no rows


@pytest.mark.parametrize("output", ["-", "/dev/stdout"])
def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path, output):
    """``streamexport ... | head -c 100``: no BrokenPipeError, no "Exception ignored" at exit."""
    make_records("default", count=5000)  # far more than a pipe holds
    errors = tmp_path / "stderr"
    with open(errors, "wb") as stderr:
        export = subprocess.Popen(
            [*COMMAND, "testapp.Record", "--fields=id,title,body", "-o", output],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        head = subprocess.run(
            ["head", "-c", "100"], stdin=export.stdout, capture_output=True, timeout=120
        )
        export.stdout.close()  # head, gone, held the only other end
        returncode = export.wait(timeout=120)
    finally:
        if export.poll() is None:
            export.kill()
            export.wait()
    assert len(head.stdout) == 100
    assert errors.read_bytes() == b""
    assert returncode == 0


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


def test_a_regular_file_is_replaced_only_when_complete(tmp_path):
    make_records("default")
    target = tmp_path / "records.csv"
    target.write_bytes(b"the previous export\n")
    with pytest.raises(CommandError, match="division by zero"):
        call_command(
            "streamexport", "--view=tests.fault_views.FirstFetchFailsExport", f"-o{target}"
        )
    assert target.read_bytes() == b"the previous export\n"
    assert [path.name for path in tmp_path.iterdir()] == ["records.csv"]


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
