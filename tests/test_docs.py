"""The README stays a front door and the manual in docs/ stays true to the code.

These checks read files only (no Ray, no torch): the README's length, that its links and the
manual's cross-links lead somewhere, that the commands it shows match the repository (the
bundled sample exists, the test command is the one CI runs), and that docs/events.md names
exactly the events the code emits, so the event list cannot go stale again.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
EVENTS_PAGE = DOCS / "events.md"

README_MAX_LINES = 120
# events.emit(JobStart(...)) and self.events.emit(\n SegmentDone(...)): the event class constructed
EMIT_CALL = re.compile(r"""\.emit\(\s*([A-Za-z_][A-Za-z0-9_]*)\(""")
# any .emit( call, to catch one that passes something other than a constructed event
ANY_EMIT = re.compile(r"""\.emit\(""")
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a table row whose first cell is one backticked name: | `job_start` | ...
NAME_ROW = re.compile(r"^\|\s*`([a-z_]+)`\s*\|")


def emitted_events() -> dict[str, list[str]]:
    """Event name -> the source files under vsr/ that emit it (emit(EventClass(...)))."""
    from vsr.job.events import EVENT_TYPES

    by_class = {cls.__name__: cls.name for cls in EVENT_TYPES}
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "vsr").rglob("*.py")):
        for cls_name in EMIT_CALL.findall(path.read_text(encoding="utf-8")):
            assert cls_name in by_class, f"{path.relative_to(ROOT)} emits {cls_name}, which is not in EVENT_TYPES"
            found.setdefault(by_class[cls_name], []).append(str(path.relative_to(ROOT)))
    return found


def documented_rows() -> dict[str, str]:
    """Event name -> its row in docs/events.md's event tables (header `| event | ...`)."""
    rows: dict[str, str] = {}
    in_event_table = False
    for line in EVENTS_PAGE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            in_event_table = False
        elif re.match(r"^\|\s*event\s*\|", line):
            in_event_table = True
        elif in_event_table and (m := NAME_ROW.match(line)):
            rows[m.group(1)] = line
    return rows


def documented_events() -> set[str]:
    """The names in the first column of docs/events.md's event tables."""
    return set(documented_rows())


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)  # no headings in code
    return {github_anchor(h) for h in re.findall(r"^#{1,6}\s+(.+)$", text, flags=re.MULTILINE)}


def local_links(page: Path) -> list[str]:
    """Relative link targets of a Markdown page (web addresses left out)."""
    return [t for t in MARKDOWN_LINK.findall(page.read_text(encoding="utf-8"))
            if not re.match(r"^[a-z]+:", t)]


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move details into docs/")


def test_readme_links_every_manual_page():
    targets = {t.split("#")[0] for t in local_links(README)}
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    assert pages, "docs/ holds no pages"
    assert pages <= targets, f"README.md does not link {sorted(pages - targets)}"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_links_lead_somewhere(page: Path):
    broken = []
    for target in local_links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors_of(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.name}: broken links: {', '.join(broken)}"


def test_readme_sample_clip_exists():
    commands = re.findall(r"^vsr upscale (\S+) ", README.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert commands, "README.md shows no `vsr upscale` command"
    for clip in commands:
        assert (ROOT / clip).is_file(), f"README.md upscales {clip}, which is not in the repository"


def test_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    runs = [line.strip() for line in ci.splitlines() if "pytest" in line and not line.lstrip().startswith("#")]
    assert runs, ".ci/run runs no pytest command"
    readme = README.read_text(encoding="utf-8")
    for line in runs:
        assert line in readme, f"README.md does not show the test command .ci/run uses: {line}"


def test_every_emitted_event_is_documented():
    emitted = emitted_events()
    # the scan itself must work: these are emitted by every video job
    assert {"job_start", "job_done", "job_failed"} <= set(emitted), sorted(emitted)
    documented = documented_events()
    missing = {name: files for name, files in emitted.items() if name not in documented}
    assert not missing, f"events emitted but not documented in docs/events.md: {missing}"


def test_every_documented_event_is_emitted():
    documented = documented_events()
    assert documented, "docs/events.md documents no event (tables headed | event | ...)"
    stale = documented - set(emitted_events())
    assert not stale, f"docs/events.md documents events nothing emits: {sorted(stale)}"


def test_every_emit_passes_a_typed_event():
    """No emit("name", ...) left: every call constructs one of the event dataclasses."""
    untyped = []
    for path in sorted((ROOT / "vsr").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(ANY_EMIT.findall(text)) != len(EMIT_CALL.findall(text)):
            untyped.append(str(path.relative_to(ROOT)))
    assert not untyped, f"emit() called without an event dataclass in {untyped}"


def test_every_event_field_is_documented():
    """Each event's row in docs/events.md names every field of its dataclass (as `field`)."""
    import dataclasses

    from vsr.job.events import EVENT_TYPES

    rows = documented_rows()
    missing = {cls.name: [f.name for f in dataclasses.fields(cls) if f"`{f.name}`" not in rows.get(cls.name, "")]
               for cls in EVENT_TYPES}
    missing = {name: fields for name, fields in missing.items() if fields}
    assert not missing, f"docs/events.md does not name these fields: {missing}"


def test_committed_event_schema_is_the_generated_one():
    from vsr.job.events import events_schema_text

    committed = (DOCS / "events.schema.json").read_text(encoding="utf-8")
    assert committed == events_schema_text(), (
        "docs/events.schema.json is stale: python -m vsr.job.events > docs/events.schema.json")


def test_event_schema_is_valid_draft_2020_12_and_lists_every_event():
    import json

    import jsonschema

    from vsr.job.events import EVENT_TYPES, Event

    schema = json.loads((DOCS / "events.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["$defs"]) == {cls.name for cls in EVENT_TYPES} == documented_events()
    def descendants(cls: type) -> set[type]:
        return {d for c in cls.__subclasses__() for d in {c} | descendants(c)}

    # every event with a name is in the list (none defined but left out); the others are bases
    assert {cls for cls in descendants(Event) if cls.name} == set(EVENT_TYPES)
    assert len({cls.name for cls in EVENT_TYPES}) == len(EVENT_TYPES)


def exit_code_rows(page: Path) -> dict[int, str]:
    """Exit code -> meaning, from the page's table headed | code | meaning |."""
    text = page.read_text(encoding="utf-8")
    table = text[text.index("| code | meaning |"):].split("\n\n")[0]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\|\s*(\d+)\s*\|\s*(.+?)\s*\|$", table, re.MULTILINE)}


@pytest.mark.parametrize("page", [README, DOCS / "cli.md"], ids=lambda p: p.name)
def test_exit_code_tables_match_the_errors(page: Path):
    """A render farm reads the exit code: each page's table lists exactly the codes vsr exits with."""
    import vsr.errors as errors

    raised = {cls.exit_code for cls in vars(errors).values()
              if isinstance(cls, type) and issubclass(cls, errors.VsrError) and cls is not errors.VsrError}
    assert exit_code_rows(page).keys() == {0, *raised, errors.EXIT_INTERRUPTED}
