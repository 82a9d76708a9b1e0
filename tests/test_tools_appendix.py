"""The Tools appendix names every pinned library with the version requirements files pin."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "appendix" / "tools.md"


def _pins():
    pins = {}
    for name in ("requirements.txt", "requirements-nodeps.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                package, version = line.split("==")
                pins[package.strip().lower()] = version.strip()
    return pins


def _table():
    """{package: version} from the rows `| `pkg`[, `pkg`] | v[, v] | why |` of the page."""
    rows = {}
    for line in PAGE.read_text().splitlines():
        match = re.match(r"^\| (`[^|]+`) \| ([0-9][^|]*?) \|", line)
        if not match:
            continue
        names = re.findall(r"`([^`]+)`", match.group(1))
        versions = [v.strip() for v in match.group(2).split(",")]
        assert len(names) == len(versions), line
        rows.update({n.lower(): v for n, v in zip(names, versions, strict=True)})
    return rows


def test_every_pin_is_in_the_table_with_its_version():
    pins, table = _pins(), _table()
    missing = sorted(set(pins) - set(table))
    assert not missing, f"tools.md does not list {missing}"
    wrong = {p: (table[p], v) for p, v in pins.items() if table[p] != v}
    assert not wrong, f"tools.md versions differ from the requirements pins: {wrong}"


def test_the_table_lists_nothing_that_is_not_pinned():
    extra = sorted(set(_table()) - set(_pins()))
    assert not extra, (
        f"tools.md lists versions for packages that are not pinned: {extra}"
    )
