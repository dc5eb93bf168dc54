"""Translations: the admin pages, actions, 4xx bodies and failure messages in the user's language.

The catalogs shipped in ``django_streamexport/locale`` (fr, de, es, pt_BR) are checked
for completeness (no empty or fuzzy entry, the same placeholders and HTML as the
English) and the compiled ``.mo`` files against their ``.po`` sources.
"""

# French writes the apostrophe as U+2019, which RUF001 takes for a typo.
# ruff: noqa: RUF001

from __future__ import annotations

import ast
import gettext
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.test.utils import override_settings
from django.utils import translation

import django_streamexport
from django_streamexport.exceptions import RowLimitExceeded, TooManyExports
from django_streamexport.failures import MESSAGES, ROW_LIMIT, describe_failure
from django_streamexport.jobs.models import ExportJob
from django_streamexport.limits import ExportSlots
from tests.conftest import make_records

LOCALE = Path(django_streamexport.__file__).parent / "locale"
LANGUAGES = ["de", "es", "fr", "pt_BR"]

CHANGELIST = "/admin/testapp/record/"
EXPORT = "/admin/testapp/record/export/"

#: The test settings' middleware plus LocaleMiddleware, which picks Accept-Language.
LOCALE_MIDDLEWARE = [
    *settings.MIDDLEWARE[:2],
    "django.middleware.locale.LocaleMiddleware",
    *settings.MIDDLEWARE[2:],
]


# --- the catalogs -----------------------------------------------------------------------


def read_po(path: Path) -> list[dict]:
    """Parse a ``.po`` file into entries: ``flags``, ``msgid``, ``msgid_plural``, ``msgstr``.

    ``msgstr`` is a list (one string, or one per plural form).  PO strings are
    C-escaped (``\\n``, ``\\"``, ``\\\\``), which Python literals read alike.
    """
    entries = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        entry: dict = {"flags": set(), "msgid_plural": None, "msgstr": []}
        key = None
        for line in block.strip().splitlines():
            if line.startswith("#,"):
                entry["flags"].update(flag.strip() for flag in line[2:].split(","))
            elif line.startswith("#~"):
                raise AssertionError(f"{path}: obsolete entry left in the catalog: {line}")
            elif line.startswith("#"):
                continue
            elif line.startswith('"'):
                text = ast.literal_eval(line)
                if key == "msgstr":
                    entry["msgstr"][-1] += text
                else:
                    entry[key] += text
            else:
                keyword, _, literal = line.partition(" ")
                text = ast.literal_eval(literal)
                if keyword.startswith("msgstr"):
                    key = "msgstr"
                    entry["msgstr"].append(text)
                else:
                    key = keyword
                    entry[key] = text
        if "msgid" in entry:
            entries.append(entry)
    return entries


#: Placeholders and HTML tags, which a translation keeps (in any order).
TOKENS = re.compile(r"%\(\w+\)[sdr]|%[sd]|\{\w*\}|</?\w+[^>]*>|\n")


def tokens(text: str) -> list[str]:
    return sorted(TOKENS.findall(text))


@pytest.mark.parametrize("language", LANGUAGES)
def test_catalog_is_complete(language):
    entries = read_po(LOCALE / language / "LC_MESSAGES" / "django.po")
    header, messages = entries[0], entries[1:]
    assert header["msgid"] == ""
    assert f"Language: {language}\n" in header["msgstr"][0]
    nplurals = int(re.search(r"nplurals=(\d+)", header["msgstr"][0]).group(1))
    assert len(messages) > 80  # every message of the package, not a stub
    problems = []
    for entry in [header, *messages]:
        if "fuzzy" in entry["flags"]:
            problems.append(("fuzzy", entry["msgid"]))
    for entry in messages:
        if not entry["msgstr"] or not all(entry["msgstr"]):
            problems.append(("untranslated", entry["msgid"]))
        if entry["msgid_plural"] is not None and len(entry["msgstr"]) != nplurals:
            problems.append(("plural forms", entry["msgid"]))
        for translated in entry["msgstr"]:
            source = entry["msgid_plural"] or entry["msgid"]
            if tokens(translated) != tokens(source):
                problems.append(("placeholders", entry["msgid"], translated))
    assert problems == []


@pytest.mark.parametrize("language", LANGUAGES)
def test_compiled_catalog_matches_its_source(language):
    """The shipped ``.mo`` holds exactly the ``.po``'s messages (compilemessages was run)."""
    directory = LOCALE / language / "LC_MESSAGES"
    expected = {}
    for entry in read_po(directory / "django.po"):
        if entry["msgid_plural"] is None:
            expected[entry["msgid"]] = entry["msgstr"][0]
        else:
            for form, text in enumerate(entry["msgstr"]):
                expected[(entry["msgid"], form)] = text
    with open(directory / "django.mo", "rb") as mo:
        compiled = dict(gettext.GNUTranslations(mo)._catalog)
    # msgfmt leaves POT-Creation-Date out of the compiled header; the plural rule is kept.
    plural_forms = re.compile(r"^Plural-Forms: .*$", re.MULTILINE)
    assert plural_forms.findall(compiled.pop("")) == plural_forms.findall(expected.pop(""))
    assert compiled == expected


# --- the admin ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@override_settings(MIDDLEWARE=LOCALE_MIDDLEWARE)
def test_admin_changelist_and_export_page_follow_accept_language(admin_client):
    make_records("default", 3)
    changelist = admin_client.get(CHANGELIST, headers={"accept-language": "fr"})
    assert changelist.status_code == 200
    text = changelist.content.decode()
    # The action choices, with Django's verbose_name_plural filled in.
    assert ">Exporter les records sélectionné(e)s en CSV</option>" in text
    assert ">Exporter les records sélectionné(e)s en NDJSON</option>" in text
    assert ">Exporter les records sélectionné(e)s en Excel</option>" in text
    assert 'class="streamexport-link">Exporter</a>' in text

    page = admin_client.get(EXPORT, headers={"accept-language": "fr"})
    assert page.status_code == 200
    text = page.content.decode()
    assert 'value="Télécharger"' in text
    assert 'value="Lancer en arrière-plan"' in text
    assert "<h2>Colonnes</h2>" in text
    assert "Les colonnes cochées sont exportées, dans cet ordre." in text
    assert "Exporter records" in text  # the title

    german = admin_client.get(EXPORT, headers={"accept-language": "de"})
    assert 'value="Herunterladen"' in german.content.decode()
    english = admin_client.get(EXPORT, headers={"accept-language": "en"})
    assert 'value="Download"' in english.content.decode()


@pytest.mark.django_db(transaction=True)
def test_admin_export_page_error_is_translated(admin_client):
    with translation.override("fr"):
        response = admin_client.get(EXPORT, {"format": "xls", "fields": "id"})
    assert response.status_code == 400
    text = response.content.decode()
    assert "Format d’export inconnu" in text
    assert "Choisissez parmi : csv, json, ndjson, parquet, xlsx." in text

    with translation.override("fr"):
        response = admin_client.get(EXPORT, {"format": "csv", "fields": ["id", "nope"]})
    assert response.status_code == 400
    assert "Impossible d’exporter le champ" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_jobs_strings_come_from_the_package_catalog():
    """The jobs app has no catalog of its own: ``django_streamexport``'s (installed) serves it."""
    with translation.override("fr"):
        assert str(ExportJob._meta.verbose_name_plural) == "exports en arrière-plan"
        assert str(ExportJob.Status.CANCELLED.label) == "Annulé"


# --- 4xx bodies and failure messages -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_view_400_body_is_translated(client):
    with translation.override("fr"):
        response = client.get("/records/export/?format=xls")
    assert response.status_code == 400
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode() == (
        "Format d’export inconnu 'xls'. Choisissez parmi : csv, json, ndjson, parquet, xlsx.\n"
    )
    with translation.override("en"):
        response = client.get("/records/export/?format=xls")
    assert response.content.decode().startswith("Unknown export format 'xls'.")


def test_admission_refusals_are_translated():
    slots = ExportSlots()
    slot = slots.acquire("alice", limit=5, per_user_limit=1, retry_after=7)
    with translation.override("de"), pytest.raises(TooManyExports) as refused:
        slots.acquire("alice", limit=5, per_user_limit=1, retry_after=7)
    assert str(refused.value) == (
        "Sie haben bereits 1 laufende Exporte; warten Sie, bis einer fertig ist, und versuchen "
        "Sie es erneut."
    )
    with translation.override("pt-br"), pytest.raises(TooManyExports) as refused:
        slots.acquire("bob", limit=1, per_user_limit=1, retry_after=7)
    assert str(refused.value) == (
        "Há exportações demais em execução (no máximo 1); tente novamente em 7 segundos."
    )
    slot.release()


def test_failure_messages_are_translated_when_described():
    """The messages are lazy: each failure is told in the language active when it happens."""
    with translation.override("es"):
        failure = describe_failure(RowLimitExceeded(7))
    assert failure.code == ROW_LIMIT
    assert type(failure.message) is str  # written into NDJSON error records as it is
    assert failure.message == (
        "La exportación tiene más filas que su límite de 7 y se ha detenido."
    )
    with translation.override("en"):
        assert describe_failure(RowLimitExceeded(7)).message == (
            "The export has more rows than its limit of 7 and was stopped."
        )
        assert str(MESSAGES[ROW_LIMIT]).endswith("{limit} and was stopped.")
