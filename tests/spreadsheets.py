"""Read XLSX workbooks back as the tools people open them with do, and look inside the zip.

Three independent readers, because they disagree where it matters:

* :func:`read_openpyxl`: openpyxl in ``read_only`` mode.  It returns the cell text as
  stored: it does not decode ECMA-376's ``_xHHHH_`` escapes (ST_Xstring, Part 1
  §22.9.2.19), so compare text with it only where no escape is involved (or compare
  with the escaped spelling).
* :func:`read_calamine`: python-calamine (the Rust calamine reader), which decodes the
  escapes and returns dates and times as ``datetime`` objects by their number format.
* :func:`read_libreoffice`: LibreOffice Calc, headless, converting the first sheet to
  UTF-8 CSV: what a spreadsheet application makes of the file, formulas included.  Each
  ``soffice`` start costs a second or two: convert several workbooks in one call with
  :func:`read_libreoffice_many`.  ``soffice`` comes from ``scripts/install-servers``; a
  missing one fails the test (never a skip).

:func:`zip_facts` reads the zip container itself (APPNOTE.TXT, the PKWARE ZIP
specification): local headers from the raw bytes, ZIP64 records, member order.
"""

from __future__ import annotations

import csv
import io
import shutil
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from python_calamine import CalamineWorkbook

__all__ = [
    "LIBREOFFICE_CSV_FILTER",
    "ZipFacts",
    "read_calamine",
    "read_libreoffice",
    "read_libreoffice_many",
    "read_local_members",
    "read_openpyxl",
    "sheet_names",
    "zip_facts",
]

#: LibreOffice's CSV export filter: field separator 44 (``,``), text delimiter 34 (``"``),
#: character set 76 (UTF-8), first line 1 (LibreOffice's "Filter Options" for CSV).
LIBREOFFICE_CSV_FILTER = "csv:Text - txt - csv (StarCalc):44,34,76,1"
#: Seconds one ``soffice`` conversion may take (a cold start takes a few).
LIBREOFFICE_TIMEOUT = 300
#: Stands in for NUL while Python's csv module parses (Python 3.10's refuses NUL).
_NUL_STAND_IN = "\U0010fffd"


def read_openpyxl(data: bytes) -> list[list[list[Any]]]:
    """Return every sheet of the workbook ``data`` as a list of rows, read by openpyxl.

    ``read_only`` mode, values only: an empty ``<c/>`` is ``None``, text is returned as
    stored (``_xHHHH_`` escapes are not decoded), date formats give ``datetime``.
    """
    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    try:
        return [
            [list(row) for row in sheet.iter_rows(values_only=True)]
            for sheet in workbook.worksheets
        ]
    finally:
        workbook.close()


def read_calamine(data: bytes) -> list[list[list[Any]]]:
    """Return every sheet of the workbook ``data`` as a list of rows, read by calamine.

    Numbers are ``float``, booleans ``bool``, empty cells ``""``; cells with a date, a
    date-time or a time number format are ``date``, ``datetime`` or ``time``; escapes are
    decoded.  Rows are padded to the sheet's width.
    """
    workbook = CalamineWorkbook.from_filelike(io.BytesIO(data))
    try:
        return [
            workbook.get_sheet_by_name(name).to_python(skip_empty_area=False)
            for name in workbook.sheet_names
        ]
    finally:
        workbook.close()


def sheet_names(data: bytes) -> list[str]:
    """Return the sheet names of the workbook ``data``, as calamine reads them."""
    workbook = CalamineWorkbook.from_filelike(io.BytesIO(data))
    try:
        return list(workbook.sheet_names)
    finally:
        workbook.close()


def read_libreoffice_many(workbooks: Sequence[bytes], tmp_path: Path) -> list[list[list[str]]]:
    """Convert each workbook's first sheet to CSV in one ``soffice`` run; return their rows.

    Each result is a list of rows of cell texts as LibreOffice shows them (numbers in the
    cell's number format, ``TRUE``/``FALSE``, formulas computed).  ``soffice`` runs with a
    private user profile under ``tmp_path``, so it never joins another running instance.
    """
    soffice = shutil.which("soffice")
    if soffice is None:
        pytest.fail(
            "soffice (LibreOffice) is not installed: run scripts/install-servers", pytrace=False
        )
    work = Path(tmp_path) / "libreoffice"
    inbox, outbox = work / "in", work / "out"
    inbox.mkdir(parents=True, exist_ok=True)
    outbox.mkdir(parents=True, exist_ok=True)
    sources = []
    for number, data in enumerate(workbooks):
        source = inbox / f"workbook{number}.xlsx"
        source.write_bytes(data)
        sources.append(source)
    command = [
        soffice,
        f"-env:UserInstallation={(work / 'profile').as_uri()}",
        "--headless",
        "--norestore",
        "--convert-to",
        LIBREOFFICE_CSV_FILTER,
        "--outdir",
        str(outbox),
        *map(str, sources),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=LIBREOFFICE_TIMEOUT, check=False
    )
    results = []
    for source in sources:
        target = outbox / f"{source.stem}.csv"
        if not target.exists():
            pytest.fail(
                f"LibreOffice did not convert {source.name} (exit status {done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}",
                pytrace=False,
            )
        # Bytes, not read_text(): universal newlines would turn a cell's CR LF into LF.
        text = target.read_bytes().decode("utf-8").replace("\x00", _NUL_STAND_IN)
        rows = list(csv.reader(io.StringIO(text, newline="")))
        results.append([[cell.replace(_NUL_STAND_IN, "\x00") for cell in row] for row in rows])
    return results


def read_libreoffice(data: bytes, tmp_path: Path) -> list[list[str]]:
    """Return the first sheet of the workbook ``data`` as LibreOffice's CSV rows."""
    return read_libreoffice_many([data], tmp_path)[0]


@dataclass(frozen=True)
class ZipFacts:
    """What a zip container says about itself, from its raw bytes and its central directory."""

    #: ``ZipFile.testzip()``: the first member whose CRC or header is bad, else ``None``.
    testzip: str | None
    #: Member names in the order their local headers come in the file.
    names: list[str]
    #: "Version needed to extract" of each local header, in file order (20 means 2.0).
    versions_needed: list[int]
    #: The same field in each central directory header.
    central_versions_needed: list[int]
    #: General purpose bit flags of each local header (0x08: sizes in a data descriptor).
    flags: list[int]
    #: Whether any local or central header carries a ZIP64 extra field (header ID 0x0001).
    zip64_extra: bool
    #: Whether the end of central directory has ZIP64 records (locator signature PK\6\7).
    zip64_end: bool


def _extra_ids(extra: bytes) -> list[int]:
    """Return the header IDs of an extra field's blocks (ID, size, data; APPNOTE 4.5)."""
    ids, offset = [], 0
    while offset + 4 <= len(extra):
        header_id, size = struct.unpack_from("<HH", extra, offset)
        ids.append(header_id)
        offset += 4 + size
    return ids


def zip_facts(data: bytes) -> ZipFacts:
    """Return the :class:`ZipFacts` of the zip ``data`` (raises ``BadZipFile`` for no zip)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        testzip = archive.testzip()
        infos = sorted(archive.infolist(), key=lambda info: info.header_offset)
    names, versions, flags, zip64 = [], [], [], False
    for info in infos:
        offset = info.header_offset
        # Local file header (APPNOTE 4.3.7): signature, version needed (offset 4), flags
        # (6), ..., file name length (26), extra field length (28), then name and extra.
        assert data[offset : offset + 4] == b"PK\x03\x04", f"no local header at {offset}"
        version, flag = struct.unpack_from("<HH", data, offset + 4)
        name_length, extra_length = struct.unpack_from("<HH", data, offset + 26)
        name_start = offset + 30
        name = data[name_start : name_start + name_length].decode(
            "utf-8" if flag & 0x800 else "cp437"
        )
        extra = data[name_start + name_length : name_start + name_length + extra_length]
        names.append(name)
        versions.append(version)
        flags.append(flag)
        zip64 = zip64 or 0x0001 in _extra_ids(extra) or 0x0001 in _extra_ids(info.extra)
    end = data.rfind(b"PK\x05\x06")
    return ZipFacts(
        testzip=testzip,
        names=names,
        versions_needed=versions,
        central_versions_needed=[info.extract_version for info in infos],
        flags=flags,
        zip64_extra=zip64,
        zip64_end=end >= 20 and data[end - 20 : end - 16] == b"PK\x06\x07",
    )


def read_local_members(data: bytes) -> list[tuple[str, bytes]]:
    """Return ``(name, content)`` of each whole member at the start of ``data``, in order.

    Reads local headers and deflate streams only, never the central directory: what a
    client holds of a zip that is still arriving (or was cut).  Members written to a
    non-seekable file have their sizes in a data descriptor after the data (flag 0x08),
    so each deflate stream is inflated to find its end.  Stops at the first member that
    is not complete, and at the central directory.
    """
    members, offset = [], 0
    while data[offset : offset + 4] == b"PK\x03\x04" and len(data) >= offset + 30:
        flag, method = struct.unpack_from("<HH", data, offset + 6)
        (size,) = struct.unpack_from("<I", data, offset + 22)
        name_length, extra_length = struct.unpack_from("<HH", data, offset + 26)
        start = offset + 30 + name_length + extra_length
        name = data[offset + 30 : offset + 30 + name_length].decode(
            "utf-8" if flag & 0x800 else "cp437"
        )
        if method == zipfile.ZIP_DEFLATED:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            content = inflater.decompress(data[start:])
            if not inflater.eof:
                break  # the member was cut
            end = len(data) - len(inflater.unused_data)
        elif method == zipfile.ZIP_STORED and not flag & 0x08:
            content, end = data[start : start + size], start + size
            if len(content) < size:
                break
        else:
            raise ValueError(f"{name}: compression method {method} with flags {flag:#x}")
        if flag & 0x08:  # data descriptor: optional signature, CRC-32, sizes (APPNOTE 4.3.9)
            end += 4 if data[end : end + 4] == b"PK\x07\x08" else 0
            if len(data) < end + 12:
                break
            end += 12
        members.append((name, content))
        offset = end
    return members
