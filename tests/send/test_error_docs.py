"""The README's error table documents every ErrorReason the proto defines, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from igbutton.v1 import errors_pb2

README = Path(__file__).resolve().parents[2] / "README.md"
_CODE = re.compile(r"`([A-Z_]+)`")


def _error_table() -> list[list[str]]:
    """The cells of the table under "### Errors" whose header is status | reason | ..."""
    section = README.read_text(encoding="utf-8").split("### Errors", 1)[1].split("\n## ", 1)[0]
    rows: list[list[str]] = []
    in_table = False
    for line in section.splitlines():
        if line.startswith("| status | reason |"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        if in_table and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_every_error_reason_is_in_the_readme_table() -> None:
    rows = _error_table()
    assert rows, "no error table under ### Errors"
    documented = [name for row in rows for name in _CODE.findall(row[1])]
    values = errors_pb2.ErrorReason.DESCRIPTOR.values
    defined = [value.name.removeprefix("ERROR_REASON_") for value in values]
    assert sorted(set(defined) - set(documented)) == [], "reasons missing from the README"
    assert sorted(set(documented) - set(defined)) == [], "README names reasons the proto lacks"
    assert len(documented) == len(set(documented)), "a reason is listed twice"


def test_every_row_says_status_meaning_and_retry() -> None:
    for row in _error_table():
        assert len(row) == 4, row
        status, reason, meaning, retry = row
        assert all((status, meaning, retry)), row
        if reason != "`UNSPECIFIED`":
            assert re.match(r"`[A-Z_]+`", status), row
            assert retry.split(maxsplit=1)[0].rstrip(",:") in ("yes", "no"), row
