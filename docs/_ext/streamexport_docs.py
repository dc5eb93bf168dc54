"""Sphinx extension of the django-streamexport documentation: pages that cannot drift.

* ``.. streamexport-settings::`` writes the settings reference from
  :class:`django_streamexport.conf.Settings`: every property, as ``STREAMEXPORT_<NAME>``,
  with its type (the return annotation), its default (the value read while the setting is
  unset) and its docstring.
* ``.. streamexport-setting-checks::`` writes the checks of the settings from
  :func:`django_streamexport.checks.check_settings`, run with every setting set to an
  invalid value: each error's id, setting, message and hint, as Django prints them.
* The build warns (an error with ``-W``) when a check id found in the package's source has
  no ``.. check::`` entry in the documentation, or the other way round.
* In Markdown pages, a fenced ``{readme-section}`` block is replaced, before parsing, by a
  section of a Markdown file of the repository, so the site shows text that lives outside
  ``docs/`` without a copy to keep up to date: the README's two set-up commands
  (``quickstart.md``) and the deployment guide next to the shipped files,
  ``deploy/README.md`` (``deployment.md``).  Every other page owns its text::

      ```{readme-section} README.md
      :section: Try it: two commands
      ```

  ``:section:`` names a ``##`` heading (the section runs to the next heading of the same
  level); without it the whole file is taken.  ``:drop-heading:`` leaves out the section's
  (or the file's) own heading; ``:heading-level: 1`` makes it the page's title (its
  subsections move up with it).  Links are rewritten for the site: ``#anchor`` and
  ``README.md#anchor`` to the page that includes that section, ``docs/x`` to ``x``,
  ``deploy/README.md`` to the page that includes it.  A section that is not there, or a link
  to a README section that no page includes and :data:`ANCHOR_PAGES` does not place, stops
  the build.

The functions that compute the references import nothing from Sphinx, so the test suite
runs them (tests/test_docs.py).  Roles and directives added: ``setting`` and ``check``
(cross-reference targets, as in Django's documentation: ``:setting:`STREAMEXPORT_MAX_ROWS```).
"""

from __future__ import annotations

import inspect
import os
import pprint
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "django_streamexport"

#: README anchors that no page includes as a section, and the page that covers them.
ANCHOR_PAGES = {
    "django-streamexport": "index.md",  # the README as a whole
}

# --- Settings reference ---------------------------------------------------------------------


@dataclass(frozen=True)
class SettingDoc:
    """One ``STREAMEXPORT_*`` setting, as :class:`~django_streamexport.conf.Settings` defines it."""

    name: str  # STREAMEXPORT_<NAME>
    type: str  # the property's return annotation, as written
    default: Any
    doc: str  # the property's docstring, dedented (reST)


def settings_docs() -> list[SettingDoc]:
    """Return every setting of ``Settings`` in definition order, with its default.

    The default is the property's value while the setting is unset, so Django must be
    configured with settings that define no ``STREAMEXPORT_*`` name (``RuntimeError``
    otherwise: the value read would not be the default).
    """
    from django.conf import settings

    from django_streamexport.conf import Settings

    reader = Settings()
    docs = []
    for attribute, value in vars(Settings).items():
        if not isinstance(value, property):
            continue
        name = f"STREAMEXPORT_{attribute}"
        if hasattr(settings, name):
            raise RuntimeError(f"{name} is set, so its default cannot be read.")
        docs.append(
            SettingDoc(
                name=name,
                type=str(inspect.signature(value.fget).return_annotation),
                default=getattr(reader, attribute),
                doc=inspect.getdoc(value) or "",
            )
        )
    return docs


@dataclass(frozen=True)
class CheckDoc:
    """One error of :func:`~django_streamexport.checks.check_settings`."""

    id: str  # django_streamexport.E001
    setting: str  # STREAMEXPORT_<NAME>
    message: str  # with "<value>" for the invalid value
    hint: str


class _Invalid:
    """A value no setting accepts, spelled ``<value>`` in the messages."""

    def __repr__(self) -> str:
        return "<value>"


def setting_checks() -> list[CheckDoc]:
    """Return the errors ``check_settings()`` gives when every setting is invalid, by id."""
    from django.test import override_settings

    from django_streamexport.checks import check_settings

    invalid = {doc.name: _Invalid() for doc in settings_docs()}
    with override_settings(**invalid):
        errors = check_settings()
    checks = []
    for error in errors:
        setting = error.msg.split(" ", 1)[0]
        if setting not in invalid:
            raise RuntimeError(f"{error.id} does not start with the setting's name: {error.msg}")
        checks.append(CheckDoc(error.id, setting, error.msg, error.hint or ""))
    missing = set(invalid) - {check.setting for check in checks}
    if missing:
        raise RuntimeError(f"No check refuses an invalid {', '.join(sorted(missing))}.")
    return sorted(checks, key=lambda check: check.id)


def source_check_ids() -> set[str]:
    """Return every check id named in the package's source (``django_streamexport.X000``)."""
    ids = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        ids.update(re.findall(r"django_streamexport\.([EWIJ]\d{3})\b", text))
        ids.update(re.findall(r"""["']([EWIJ]\d{3})["']""", text))
    return {f"django_streamexport.{check_id}" for check_id in ids}


def _rst_text(text: str) -> str:
    """Escape ``text`` so reST shows it as written."""
    return re.sub(r"([^\w\s])", r"\\\1", text)


def _rst_default(value: Any) -> list[str]:
    """Return the field list lines of a default value."""
    text = repr(value)
    if len(text) <= 60:
        return [f":Default: ``{text}``"]
    return [
        ":Default:",
        "",
        "   .. code-block:: python",
        "",
        *(f"      {line}" for line in pprint.pformat(value, width=80).splitlines()),
    ]


def settings_rst() -> list[str]:
    """Return the settings reference as reST lines: a titled section per setting."""
    checks = {check.setting: check.id for check in setting_checks()}
    lines: list[str] = []
    for doc in settings_docs():
        title = f"``{doc.name}``"
        lines += [f".. setting:: {doc.name}", "", title, "-" * len(title), ""]
        lines += [f":Type: ``{doc.type}``", *_rst_default(doc.default)]
        if doc.name in checks:
            lines.append(f":Checked by: :check:`{checks[doc.name]}`")
        lines += ["", *doc.doc.splitlines(), ""]
    return lines


def setting_checks_rst() -> list[str]:
    """Return the checks of the settings as a reST table: id, setting, message, hint."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 14 26 32 28",
        "",
        "   * - Id",
        "     - Setting",
        "     - Message",
        "     - Hint",
    ]
    for check in setting_checks():
        lines += [
            f"   * - .. check:: {check.id}",
            "",
            f"       ``{check.id.rsplit('.', 1)[1]}``",
            f"     - :setting:`{check.setting}`",
            f"     - {_rst_text(check.message)}",
            f"     - {_rst_text(check.hint)}",
        ]
    return lines


# --- README sections in Markdown pages ------------------------------------------------------

_BLOCK = re.compile(
    r"^```\{readme-section\}[ \t]+(?P<path>\S+)[ \t]*\n(?P<options>(?::[^\n]*\n)*)```[ \t]*$",
    re.MULTILINE,
)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*$")
_LINK = re.compile(r"(\]\()([^)\s]+)(\))")


@dataclass(frozen=True)
class Include:
    """One ``{readme-section}`` block of a page."""

    page: str  # the including page, relative to docs/ ("views.md")
    path: str  # the included file, relative to the repository ("README.md")
    section: str | None
    drop_heading: bool
    heading_level: int | None = None  # the level the section's own heading takes


def slug(title: str) -> str:
    """Return the anchor GitHub and MyST (``myst_heading_anchors``) give a heading."""
    text = re.sub(r"[`*]", "", title).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _fences(lines: list[str]) -> Iterator[bool]:
    """Yield, per line, whether it is inside a fenced code block (fence lines included)."""
    fence = ""
    for line in lines:
        stripped = line.lstrip()
        if fence:
            yield True
            if stripped.startswith(fence):
                fence = ""
        elif stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            yield True
        else:
            yield False


def headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """Return the (line index, level, title) of each Markdown heading outside code blocks."""
    found = []
    for index, (line, fenced) in enumerate(zip(lines, _fences(lines), strict=True)):
        match = None if fenced else _HEADING.match(line)
        if match:
            found.append((index, len(match[1]), match[2]))
    return found


def parse_includes(page: str, text: str) -> list[tuple[re.Match[str], Include]]:
    """Return the ``{readme-section}`` blocks of a page's text."""
    found = []
    for match in _BLOCK.finditer(text):
        options = dict(
            re.match(r":([\w-]+):\s*(.*)", line).groups()  # type: ignore[union-attr]
            for line in match["options"].splitlines()
        )
        unknown = set(options) - {"section", "drop-heading", "heading-level"}
        if unknown:
            raise ValueError(f"{page}: unknown readme-section option(s) {sorted(unknown)}")
        found.append(
            (
                match,
                Include(
                    page,
                    match["path"],
                    options.get("section"),
                    "drop-heading" in options,
                    int(options["heading-level"]) if "heading-level" in options else None,
                ),
            )
        )
    return found


def all_includes(docs: Path = DOCS) -> list[Include]:
    """Return the ``{readme-section}`` blocks of every Markdown page under ``docs``."""
    includes = []
    for path in sorted(docs.rglob("*.md")):
        if "_build" in path.parts:
            continue
        page = path.relative_to(docs).as_posix()
        includes += [include for _, include in parse_includes(page, path.read_text("utf-8"))]
    return includes


def section_lines(include: Include) -> list[str]:
    """Return the lines an include takes from its file (``ValueError`` if not found)."""
    lines = (ROOT / include.path).read_text(encoding="utf-8").splitlines()
    found = headings(lines)
    if include.section is None:
        start, end = 0, len(lines)
        first = found[0] if found and found[0][0] == 0 else None
    else:
        matches = [h for h in found if h[2] == include.section]
        if len(matches) != 1:
            raise ValueError(
                f"{include.page}: {include.path} has {len(matches)} headings "
                f"{include.section!r} (expected one)"
            )
        first = matches[0]
        start = first[0]
        end = next((i for i, level, _ in found if i > start and level <= first[1]), len(lines))
    if include.drop_heading and first is not None:
        start = first[0] + 1
    taken = lines[start:end]
    if include.heading_level is not None and first is not None:
        shift = include.heading_level - first[1]
        for index, level, title in headings(taken):
            taken[index] = "#" * (level + shift) + " " + title
    return taken


def anchor_pages(includes: list[Include]) -> dict[tuple[str, str], str]:
    """Map (file, anchor) to the page showing that heading, for every included heading."""
    pages: dict[tuple[str, str], str] = {}
    for include in includes:
        lines = (ROOT / include.path).read_text(encoding="utf-8").splitlines()
        taken = section_lines(include)
        # Headings inside the taken lines, and the dropped heading itself (its anchor still
        # means this page).
        titles = [title for _, _, title in headings(taken)]
        if include.section is not None:
            titles.append(include.section)
        elif headings(lines):
            titles.append(headings(lines)[0][2])
        for title in titles:
            pages.setdefault((include.path, slug(title)), include.page)
    return pages


def rewrite_link(target: str, include: Include, pages: dict[tuple[str, str], str]) -> str:
    """Return the site's link for ``target``, a link found in ``include``'s file."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
        return target
    path, _, anchor = target.partition("#")
    base = Path(include.path).parent
    source = include.path if not path else os.path.normpath(base / path)
    if source.startswith("docs/"):
        return _relative(source.removeprefix("docs/"), include.page) + (
            f"#{anchor}" if anchor else ""
        )
    if source.endswith(".md"):
        name = anchor or slug(_first_title(source))
        page = pages.get((source, name))
        if page is None and source == "README.md" and name in ANCHOR_PAGES:
            return _relative(ANCHOR_PAGES[name], include.page)
        if page is None:
            raise ValueError(
                f"{include.page}: the link {target!r} in {include.path} leads to a part of "
                f"{source} that no page shows (add a readme-section or an ANCHOR_PAGES entry)"
            )
        return _relative(page, include.page) + (f"#{anchor}" if anchor else "")
    raise ValueError(f"{include.page}: no page for the link {target!r} in {include.path}")


def _first_title(path: str) -> str:
    found = headings((ROOT / path).read_text(encoding="utf-8").splitlines())
    return found[0][2] if found else ""


def _relative(page: str, from_page: str) -> str:
    """Return ``page`` (relative to docs/) as a link from ``from_page``."""
    depth = from_page.count("/")
    return "../" * depth + page


def _rewrite_links(lines: list[str], include: Include, pages: dict[tuple[str, str], str]) -> str:
    """Return ``lines`` (from ``include.path``) joined, with links rewritten for the site."""
    out = []
    for line, in_fence in zip(lines, list(_fences(lines)), strict=True):
        if not in_fence:
            line = _LINK.sub(
                lambda m: m[1] + rewrite_link(m[2], include, pages) + m[3],
                line,
            )
        out.append(line)
    return "\n".join(out)


def expand(page: str, text: str, pages: dict[tuple[str, str], str]) -> str:
    """Return a page's text for the site: links rewritten, ``{readme-section}`` blocks expanded.

    The page's own links are rewritten too, so a page in docs/ may link to
    ``../README.md#section`` (which GitHub follows) and reach the site's page on the site.
    """
    own = Include(page, f"docs/{page}", None, False)
    text = _rewrite_links(text.split("\n"), own, pages)
    for match, include in reversed(parse_includes(page, text)):
        body = _rewrite_links(section_lines(include), include, pages)
        text = text[: match.start()] + body + text[match.end() :]
    return text


# --- Sphinx glue ----------------------------------------------------------------------------


def setup(app: Any) -> dict[str, Any]:
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util import logging
    from sphinx.util.docutils import SphinxDirective
    from sphinx.util.nodes import nested_parse_with_titles

    logger = logging.getLogger(__name__)

    class _Generated(SphinxDirective):
        def lines(self) -> list[str]:
            raise NotImplementedError

        def run(self) -> list[Any]:
            node = nodes.section()
            node.document = self.state.document
            source = f"<{self.name}>"
            try:
                lines = self.lines()
            except RuntimeError as exc:  # a setting without a check, a setting set
                logger.warning("%s: %s", self.name, exc, location=self.get_location())
                return []
            content = StringList(lines, source=source)
            nested_parse_with_titles(self.state, content, node)
            self.env.note_dependency(str(PACKAGE / "conf.py"))
            self.env.note_dependency(str(PACKAGE / "checks.py"))
            return node.children

    class SettingsDirective(_Generated):
        def lines(self) -> list[str]:
            return settings_rst()

    class SettingChecksDirective(_Generated):
        def lines(self) -> list[str]:
            return setting_checks_rst()

    app.add_crossref_type("setting", "setting", indextemplate="pair: %s; setting")
    app.add_crossref_type("check", "check", indextemplate="pair: %s; system check")
    app.add_directive("streamexport-settings", SettingsDirective)
    app.add_directive("streamexport-setting-checks", SettingChecksDirective)

    state: dict[str, Any] = {}

    def on_builder_inited(app: Any) -> None:
        state["pages"] = anchor_pages(all_includes(Path(app.srcdir)))

    def on_source_read(app: Any, docname: str, source: list[str]) -> None:
        path = Path(app.env.doc2path(docname))
        if path.suffix != ".md":
            return
        page = path.relative_to(app.srcdir).as_posix()
        for _, include in parse_includes(page, source[0]):
            app.env.note_dependency(str(ROOT / include.path))
        try:
            source[0] = expand(page, source[0], state["pages"])
        except (ValueError, OSError) as exc:
            logger.warning("readme-section: %s", exc, location=docname)

    def on_consistency(app: Any, env: Any) -> None:
        documented = {name for kind, name in env.get_domain("std").objects if kind == "check"}
        in_source = source_check_ids()
        for check_id in sorted(in_source - documented):
            logger.warning("check %s is in the package's source but not documented", check_id)
        for check_id in sorted(documented - in_source):
            logger.warning("check %s is documented but not in the package's source", check_id)

    app.connect("builder-inited", on_builder_inited)
    app.connect("source-read", on_source_read)
    app.connect("env-check-consistency", on_consistency)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
