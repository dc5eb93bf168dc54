"""HTTP details of an export response: a safe ``Content-Disposition``.

Django's ``content_disposition_header()`` (RFC 6266) sends only
``filename*`` for non-ASCII names and leaves ``/`` unescaped, so this module
cleans the name first and adds the ASCII ``filename`` fallback that RFC 6266
section 4.3 and appendix D recommend.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from django.utils.http import content_disposition_header

#: Longest file name sent, in characters, extension included (common file
#: systems allow 255 bytes; UTF-8 may need 4 bytes a character).
MAX_FILENAME_LENGTH = 120

# Path separators, characters Windows forbids, and anything that could end or
# split a header; replaced by "-".
_UNSAFE = re.compile(r'[\\/:*?"<>|;\x00-\x1f\x7f-\x9f]+')
_ASCII_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str, extension: str, default: str = "export") -> str:
    """Return ``name`` cleaned for use as a download name, ending in ``.extension``.

    Removes path separators, control and invisible format characters (bidi
    overrides), quotes and characters that file systems reject; collapses
    whitespace; strips leading dots (no hidden or relative names); normalises
    to NFC; cuts the stem so the whole name
    fits :data:`MAX_FILENAME_LENGTH`.  An empty result becomes ``default``.
    A trailing ``.extension`` already present is not doubled.
    """
    suffix = f".{extension}" if extension else ""
    stem = unicodedata.normalize("NFC", str(name))
    if suffix and stem.lower().endswith(suffix.lower()):
        stem = stem[: -len(suffix)]
    stem = _UNSAFE.sub("-", stem)
    # Invisible format characters (bidi overrides such as U+202E make
    # "evil\u202ecsv.exe" display as "evilexe.csv"), line and paragraph separators.
    stem = "".join("-" if unicodedata.category(ch) in ("Cf", "Zl", "Zp") else ch for ch in stem)
    stem = " ".join(stem.split())
    stem = stem.strip(" .-")
    stem = stem[: MAX_FILENAME_LENGTH - len(suffix)].rstrip(" .-")
    return (stem or default) + suffix


def ascii_fallback(filename: str) -> str:
    """Return an ASCII-only version of ``filename`` for clients that ignore ``filename*``."""
    decomposed = unicodedata.normalize("NFKD", filename)
    ascii_name = decomposed.encode("ascii", "ignore").decode("ascii")
    stem, dot, extension = ascii_name.rpartition(".")
    if not dot:
        stem, extension = ascii_name, ""
    stem = _ASCII_UNSAFE.sub("_", stem).strip("._") or "export"
    return f"{stem}.{extension}" if extension else stem


def attachment_header(filename: str) -> str:
    """Return a ``Content-Disposition: attachment`` value for a cleaned ``filename``.

    ASCII names use Django's ``content_disposition_header()``; other names get
    ``filename="<ASCII fallback>"`` plus ``filename*=UTF-8''<percent-encoded>``
    (RFC 6266 section 4.3, RFC 8187), with every reserved character encoded.
    """
    if filename.isascii() and filename.isprintable():
        return content_disposition_header(True, filename)
    fallback = ascii_fallback(filename)
    encoded = quote(filename, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
