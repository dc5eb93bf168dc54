"""The documentation's generated parts and links (docs/_ext/streamexport_docs.py).

``nox -s docs`` builds the site with warnings as errors; these tests run the same
generators without Sphinx, so a setting, a check, a page's section or an included README
section that the site would lose fails the test suite too.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

from django_streamexport.conf import DEFAULT_FORMATS, Settings

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "streamexport_docs", ROOT / "docs" / "_ext" / "streamexport_docs.py"
)
assert _spec is not None and _spec.loader is not None
docs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("streamexport_docs", docs)  # dataclasses look their module up
_spec.loader.exec_module(docs)

PROPERTIES = [name for name, value in vars(Settings).items() if isinstance(value, property)]


def test_settings_reference_has_every_setting_with_its_type_and_default():
    settings = {doc.name: doc for doc in docs.settings_docs()}
    assert list(settings) == [f"STREAMEXPORT_{name}" for name in PROPERTIES]
    assert settings["STREAMEXPORT_CHUNK_SIZE"].default == 2000
    assert settings["STREAMEXPORT_CHUNK_SIZE"].type == "int"
    assert settings["STREAMEXPORT_FORMATS"].default == DEFAULT_FORMATS
    assert settings["STREAMEXPORT_COPY_MODE"].type == "bool | str"
    assert settings["STREAMEXPORT_MAX_ROWS"].default is None
    assert all(doc.doc for doc in settings.values())
    rst = "\n".join(docs.settings_rst())
    for name in settings:
        assert f".. setting:: {name}\n" in rst
    assert ":Checked by: :check:`django_streamexport.E001`" in rst


def test_settings_reference_refuses_a_set_setting(settings):
    settings.STREAMEXPORT_CHUNK_SIZE = 10
    with pytest.raises(RuntimeError, match="STREAMEXPORT_CHUNK_SIZE is set"):
        docs.settings_docs()


def test_each_setting_has_one_check_with_its_message_and_hint():
    checks = docs.setting_checks()
    assert sorted(check.setting for check in checks) == sorted(
        f"STREAMEXPORT_{name}" for name in PROPERTIES
    )
    assert len({check.id for check in checks}) == len(checks)
    by_id = {check.id: check for check in checks}
    assert by_id["django_streamexport.E001"].message == (
        "STREAMEXPORT_CHUNK_SIZE must be a positive integer, not <value>."
    )
    assert by_id["django_streamexport.E101"].setting == "STREAMEXPORT_ADMIN_EXPORT_PERMISSION"
    assert all(check.hint for check in checks)


def test_every_check_id_in_the_source_is_documented_and_no_other():
    generated = {check.id for check in docs.setting_checks()}
    by_hand = set(
        re.findall(
            r"^\.\. check:: (\S+)$",
            (ROOT / "docs" / "reference" / "checks.rst").read_text(),
            re.MULTILINE,
        )
    )
    assert not generated & by_hand
    assert generated | by_hand == docs.source_check_ids()
    assert {"django_streamexport.W001", "django_streamexport.W101"} <= by_hand


def test_every_readme_section_and_link_of_the_site_resolves():
    includes = docs.all_includes()
    sections = {(include.path, include.section) for include in includes}
    # Only the set-up commands and the deployment guide live outside docs/.
    assert sections == {("README.md", "Try it: two commands"), ("deploy/README.md", None)}
    pages = docs.anchor_pages(includes)
    assert pages[("README.md", "try-it-two-commands")] == "quickstart.md"
    assert pages[("deploy/README.md", "check-your-proxy-chain")] == "deployment.md"
    for path in sorted((ROOT / "docs").glob("*.md")):
        text = docs.expand(path.name, path.read_text(), pages)  # raises on a lost link
        assert "{readme-section}" not in text


def test_a_missing_readme_section_and_an_unplaced_link_are_errors():
    pages = docs.anchor_pages(docs.all_includes())
    missing = "```{readme-section} README.md\n:section: No such section\n```\n"
    with pytest.raises(ValueError, match="has 0 headings 'No such section'"):
        docs.expand("x.md", missing, pages)
    with pytest.raises(ValueError, match="no page shows"):
        docs.expand("x.md", "[x](../README.md#license)\n", pages)
    expanded = docs.expand("x.md", "[Try it](../README.md#try-it-two-commands)\n", pages)
    assert expanded == "[Try it](quickstart.md#try-it-two-commands)\n"
    expanded = docs.expand("x.md", "[COPY](performance.md#copy-mode-csv-on-postgresql)\n", pages)
    assert expanded == "[COPY](performance.md#copy-mode-csv-on-postgresql)\n"


#: README sections whose text lives in the docs (README.md is a short front page): a page
#: of docs/ must hold each heading, so moving text out of a page fails here.
MOVED_SECTIONS = {
    "quickstart.md": ["Requirements", "Install", "Example project"],
    "views.md": [
        "A view",
        "Fields, labels and choices",
        "Other entry points",
        "The command line",
        "django-filter",
        "Django REST Framework",
        "ASGI",
        "PgBouncer, replicas and very long exports (keyset mode)",
    ],
    "admin.md": ["The admin", "Translations"],
    "formats.md": ["Formats and values", "JSON array", "Parquet", "Time zones", "Responses"],
    "pipeline.md": [
        "One pipeline: the export plan and its reader",
        "How the stream is made",
        "Failures and limits",
    ],
    "performance.md": ["Performance", "COPY mode (CSV on PostgreSQL)"],
    "deployment.md": ["Deployment"],
    "development.md": ["Development", "Supported matrix (nox)"],
}


@pytest.mark.parametrize("page", sorted(MOVED_SECTIONS))
def test_each_page_owns_its_sections(page):
    lines = (ROOT / "docs" / page).read_text().splitlines()
    titles = [title for _, _, title in docs.headings(lines)]
    for section in MOVED_SECTIONS[page]:
        assert section in titles, f"docs/{page} has no heading {section!r}"


def test_readme_is_a_front_page_that_links_every_guide():
    """README.md (also the PyPI description) stays short and links each page of docs/."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    linked = set(re.findall(r"\]\(docs/([^)#\s]+)", readme))
    pages = {
        path.relative_to(ROOT / "docs").as_posix()
        for path in (ROOT / "docs").rglob("*")
        if path.suffix in {".md", ".rst"} and "_build" not in path.parts
    }
    assert pages - linked == {"index.md"}


#: The repository's own documents, whose relative links must lead to files that exist.
DOCUMENTS = [
    "README.md",
    "CHANGELOG.md",
    "deploy/README.md",
    *sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md")),
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documents_link_only_to_files_of_the_repository(document):
    text = (ROOT / document).read_text()
    lines = text.splitlines()
    for line, fenced in zip(lines, docs._fences(lines), strict=True):
        if fenced:
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            path = (ROOT / document).parent / target.partition("#")[0]
            assert path.exists(), f"{document} links to {target}, which does not exist"


#: Documents of the project's planning notes, outside the repository: a citation of one
#: means nothing to a reader (spelled in pieces so this file does not cite them).
OUTSIDE = [
    "streaming" + "-facts",
    "shared" + "/reference",
    "formats-and-jobs" + "-facts",
    "landscape" + ".md",
]
SKIPPED_DIRS = {
    ".git",
    ".nox",
    ".venv",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "_build",
    "__pycache__",
    "var",
}
SKIPPED_SUFFIXES = {".png", ".json", ".pyc", ".sqlite3", ".whl", ".gz", ".csv"}


def test_no_file_cites_a_document_outside_the_repository():
    citing = []
    for directory, subdirectories, names in os.walk(ROOT):
        subdirectories[:] = [name for name in subdirectories if name not in SKIPPED_DIRS]
        for name in names:
            path = Path(directory, name)
            if path.suffix in SKIPPED_SUFFIXES or not path.is_file():
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            citing += [f"{path.relative_to(ROOT)}: {cited}" for cited in OUTSIDE if cited in text]
    assert citing == []
